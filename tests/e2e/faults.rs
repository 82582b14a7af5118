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

/// How a request through a faulty upstream must end.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    /// Answered by the good target after the faulty one failed.
    FailedOver,
    /// A stream that began and was cut: one error event, no `[DONE]`.
    StreamError,
    /// Answered by whichever target the routing picked (flapping health).
    Answered,
}

fn event(text: &str) -> String {
    format!(
        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn every_upstream_fault_fails_over_or_ends_clearly_and_is_metered_once() {
    let good = Mock::start(&["--completion-tokens", "5"]);
    let refused = dead_port();
    // Reads the request, then closes without a byte.
    let reset = Scripted::start(vec![]);
    let errors = Mock::start(&["--error-rate", "1", "--error-status", "500"]);
    let throttled = Mock::start(&[
        "--error-rate",
        "1",
        "--error-status",
        "429",
        "--retry-after",
        "1",
    ]);
    let silent = Scripted::start(vec![Step::Hang]);
    // Header lines, one every 100 ms, never the blank line that ends them.
    let mut endless_head = vec![send(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n",
    )];
    for i in 0..100 {
        endless_head.push(send(format!("x-more-{i}: yes\r\n")));
        endless_head.push(Step::Sleep(Duration::from_millis(100)));
    }
    let endless_head = Scripted::start(endless_head);
    // A megabyte of headers at once.
    let huge_head = Scripted::start(vec![send(format!(
        "HTTP/1.1 200 OK\r\n{}\r\n",
        (0..1000)
            .map(|i| format!("x-h{i}: {}\r\n", "v".repeat(1000)))
            .collect::<String>()
    ))]);
    let stall = Scripted::start(vec![
        send(SSE_HEAD),
        chunk(event("Hello")),
        chunk(event(" there")),
        Step::Hang,
    ]);
    let dropper = Mock::start(&["--drop-after-chunks", "3", "--tokens-per-sec", "100"]);
    // Bytes a few at a time, each well within the idle timeout, for longer than `total`.
    let mut trickle = vec![send(SSE_HEAD)];
    for _ in 0..40 {
        for piece in event("slow ").as_bytes().chunks(8) {
            trickle.push(chunk(piece));
            trickle.push(Step::Sleep(Duration::from_millis(30)));
        }
    }
    let trickle = Scripted::start(trickle);
    let mut endless_line = vec![
        send(SSE_HEAD),
        chunk("data: {\"choices\":[{\"delta\":{\"content\":\""),
    ];
    endless_line.extend((0..160).map(|_| chunk("a".repeat(64 * 1024))));
    let endless_line = Scripted::start(endless_line);
    let flapping = Mock::start(&[]);

    let quick = "timeouts: { first_token: 500ms, idle: 500ms, total: 1500ms }";
    let faults: Vec<(&str, String, Outcome)> = vec![
        (
            "refused",
            format!("http://127.0.0.1:{refused}"),
            Outcome::FailedOver,
        ),
        ("reset", reset.url(), Outcome::FailedOver),
        ("errors", errors.url(), Outcome::FailedOver),
        ("throttled", throttled.url(), Outcome::FailedOver),
        ("silent", silent.url(), Outcome::FailedOver),
        ("endless_head", endless_head.url(), Outcome::FailedOver),
        ("huge_head", huge_head.url(), Outcome::FailedOver),
        ("stall", stall.url(), Outcome::StreamError),
        ("dropper", dropper.url(), Outcome::StreamError),
        ("trickle", trickle.url(), Outcome::StreamError),
        ("endless_line", endless_line.url(), Outcome::StreamError),
        ("flapping", flapping.url(), Outcome::Answered),
    ];
    let mut providers = provider("good", &good.url());
    let mut models = String::new();
    for (name, url, _) in &faults {
        let health = if *name == "flapping" {
            ", health_check: { path: /health, every: 100ms, unhealthy_after: 1, healthy_after: 1 }"
        } else {
            ""
        };
        providers += &format!(
            "  - {{ name: {name}, kind: openai, base_url: \"{url}\", api_key: k, {quick}{health} }}\n"
        );
        models += &format!(
            "  - name: {name}\n    retry: {{ attempts: 2, on: [connect, timeout, \"429\", 5xx] }}\n    targets: [{{ provider: {name}, model: a }}, {{ provider: good, model: b }}]\n"
        );
    }
    let dir = TempDir::new("faults");
    let db = dir.0.join("usage.db");
    let gw = Gateway::start(&format!(
        "providers:\n{providers}models:\n{models}plugins:\n  ledger: {{ path: \"{}\", flush_every: 10ms }}\n",
        db.display()
    ))
    .await;
    let rss_before = gw.rss_mib();

    // Flaps every 150 ms, throughout.
    let flap = tokio::spawn({
        let url = flapping.url();
        async move {
            let client = reqwest::Client::new();
            for i in 0.. {
                let _ = client
                    .post(format!("{url}/mock/config"))
                    .json(&serde_json::json!({"healthy": i % 2 == 1}))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    });

    let client = reqwest::Client::new();
    let mut sent = Vec::new();
    for round in 0..3 {
        for (name, _, outcome) in &faults {
            for stream in [false, true] {
                // A stream cut after it began cannot fail over: only streams show those.
                if *outcome == Outcome::StreamError && !stream {
                    continue;
                }
                let id = format!("{name}-{round}-{stream}");
                let started = Instant::now();
                let r = client
                    .post(gw.url("/v1/chat/completions"))
                    .header("x-request-id", &id)
                    .json(&chat_body(name, stream))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let provider = r
                    .headers()
                    .get("x-tollgate-provider")
                    .map(|v| v.to_str().unwrap().to_string());
                let text = r.text().await.unwrap_or_default();
                let took = started.elapsed();
                assert!(took < Duration::from_secs(5), "{id} took {took:?}");
                match outcome {
                    Outcome::FailedOver => {
                        assert_eq!(status, 200, "{id}: {text}");
                        assert_eq!(provider.as_deref(), Some("good"), "{id}");
                    }
                    Outcome::Answered => assert_eq!(status, 200, "{id}: {text}"),
                    Outcome::StreamError => {
                        assert_eq!(status, 200, "{id}");
                        assert!(!text.contains("[DONE]"), "{id}: {text}");
                        let last = text
                            .lines()
                            .rev()
                            .find(|l| l.starts_with("data: "))
                            .unwrap();
                        assert!(last.contains("\"error\""), "{id}: {last}");
                    }
                }
                if stream && *outcome != Outcome::StreamError {
                    assert!(text.ends_with("data: [DONE]\n\n"), "{id}: {text}");
                }
                sent.push(id);
            }
        }
    }
    flap.abort();

    // Every request settled, each exactly once in the ledger.
    let settled = eventually(Duration::from_secs(10), || async {
        metric_sum(&gw.metrics().await, "tollgate_requests_in_flight", &[]) == 0.0
    })
    .await;
    assert!(settled, "{}", gw.log());
    let rows = eventually(Duration::from_secs(5), || async {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM requests", [], |r| r.get::<_, i64>(0)))
            .is_ok_and(|n| n as usize >= sent.len())
    })
    .await;
    assert!(rows);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut query = conn
        .prepare("SELECT id, count(*), sum(output_tokens) FROM requests GROUP BY id")
        .unwrap();
    let ledger: std::collections::HashMap<String, (i64, i64)> = query
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for id in &sent {
        let (count, output) = ledger.get(id).copied().unwrap_or_default();
        assert_eq!(count, 1, "{id} has {count} ledger rows");
        // What reached the client was generated, and is billed; a line that never ended
        // carried no event to count.
        assert!(
            output > 0 || id.starts_with("endless_line"),
            "{id} billed no output"
        );
    }
    assert_eq!(ledger.len(), sent.len());
    let grown = gw.rss_mib() - rss_before;
    eprintln!(
        "fault matrix: {} requests over {} faults, RSS {rss_before:.1} MiB before, +{grown:.1} MiB after",
        sent.len(),
        faults.len()
    );
    assert!(grown < 200.0, "RSS grew by {grown:.0} MiB");
}
