//! Upstream faults: each ends in a failover or a clear error within its timeout, and the
//! request is settled once.

use crate::harness::*;
use crate::metering::metric_sum;
use crate::scripted::{chunk, send, Scripted, Step, SSE_HEAD};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_never_answers_times_out_and_fails_over() {
    let silent = Scripted::start(vec![Step::Hang]);
    let good = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: silent, kind: openai, base_url: \"{}\", api_key: k, timeouts: {{ first_token: 300ms }} }}\n{}\
         models:\n  - name: m\n    retry: {{ attempts: 2, on: [timeout] }}\n    targets: [{{ provider: silent, model: a }}, {{ provider: good, model: b }}]\n\
         \x20 - name: only\n    targets: [{{ provider: silent, model: a }}]\n",
        silent.url(),
        provider("good", &good.url()),
    ))
    .await;
    for stream in [false, true] {
        let started = Instant::now();
        let r = gw.chat("m", stream).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-tollgate-provider"], "good");
        assert_eq!(r.headers()["x-tollgate-attempts"], "2");
        r.bytes().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let r = gw.chat("only", false).await;
    expect_error(r, 504, Some("upstream_timeout")).await;
    assert_eq!(silent.requests(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_answers_too_big_to_hold_end_with_a_clear_error_and_bounded_memory() {
    // An event stream whose one line never ends: 16 MiB without a newline.
    let mut endless = vec![
        send(SSE_HEAD),
        chunk("data: {\"choices\":[{\"delta\":{\"content\":\""),
    ];
    let piece = "a".repeat(64 * 1024);
    endless.extend((0..256).map(|_| chunk(&piece)));
    let endless = Scripted::start(endless);
    // A whole answer to translate, larger than the gateway translates.
    let huge_len = 20 * 1024 * 1024;
    let mut huge = vec![send(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {huge_len}\r\n\r\n"
    ))];
    let block = "b".repeat(1024 * 1024);
    huge.extend((0..20).map(|_| send(&block)));
    let huge = Scripted::start(huge);
    let gw = Gateway::start(&format!(
        "providers:\n{}  - {{ name: claude, kind: anthropic, base_url: \"{}\", api_key: k }}\n\
         models:\n  - {{ name: endless, targets: [{{ provider: endless, model: gpt-4o }}] }}\n\
         \x20 - {{ name: huge, targets: [{{ provider: claude, model: claude-sonnet-4-5 }}] }}\n",
        provider("endless", &endless.url()),
        huge.url(),
    ))
    .await;
    let before = gw.rss_mib();

    let r = gw.chat("endless", true).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.ends_with("\n\n") && text.contains("larger than"),
        "{}",
        &text[text.len() - 300..]
    );

    let r = gw.chat("huge", false).await;
    let e = expect_error(r, 502, Some("upstream_failed")).await;
    assert!(e["message"].as_str().unwrap().contains("too large"), "{e}");

    // Passed through whole: relayed as it comes, kept for metering only up to a bound.
    let r = gw.chat("endless", false).await;
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    let grown = gw.rss_mib() - before;
    eprintln!("too-big answers: RSS {before:.1} MiB before, +{grown:.1} MiB after");
    assert!(grown < 200.0, "RSS grew by {grown:.0} MiB");
    let settled = eventually(Duration::from_secs(5), || async {
        metric_sum(&gw.metrics().await, "tollgate_requests_in_flight", &[]) == 0.0
    })
    .await;
    assert!(settled);
}

#[tokio::test(flavor = "multi_thread")]
async fn when_every_endpoint_is_ejected_traffic_goes_to_them_rather_than_503() {
    let a = Mock::start(&["--error-rate", "1", "--error-status", "500"]);
    let b = Mock::start(&["--error-rate", "1", "--error-status", "500"]);
    let outlier = "outlier: { consecutive_failures: 1, ejection: 60s }";
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: a, kind: openai, base_url: \"{}\", {outlier} }}\n\
         \x20 - {{ name: b, kind: openai, base_url: \"{}\", {outlier} }}\n\
         models:\n  - name: m\n    retry: {{ attempts: 2, on: [5xx] }}\n    targets: [{{ provider: a, model: x }}, {{ provider: b, model: x }}]\n\
         \x20 - name: strict\n    panic_threshold: 0\n    targets: [{{ provider: a, model: x }}, {{ provider: b, model: x }}]\n",
        a.url(),
        b.url(),
    ))
    .await;
    // One failure each ejects both for a minute.
    let r = gw.chat("m", false).await;
    expect_error(r, 502, Some("upstream_failed")).await;
    for mock in [&a, &b] {
        mock.configure(serde_json::json!({"error_rate": 0.0})).await;
    }
    // Panic routing off: the whole ejection is a 503.
    let r = gw.chat("strict", false).await;
    expect_error(r, 503, Some("no_eligible_target")).await;
    // On (the default, half): the ejected endpoints take traffic again.
    let r = gw.chat("m", false).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["x-tollgate-route"]
            .to_str()
            .unwrap()
            .contains("panic"),
        "{:?}",
        r.headers()
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "tollgate_panic_routes_total", &["model=\"m\""]),
        1.0
    );
}
