//! Failover across targets: which failures move on, which do not, and large bodies replayed
//! byte-exact.

use crate::harness::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn two_targets(first_url: &str, second_url: &str, extra: &str) -> String {
    format!(
        "providers:\n{}{}models:\n  - name: m\n    targets:\n      - {{ provider: first, model: model-a }}\n      - {{ provider: second, model: model-b }}\n{extra}",
        provider("first", first_url),
        provider("second", second_url)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn fails_over_on_500_429_and_connection_refused() {
    let good = Mock::start(&[]);
    let e500 = Mock::start(&["--error-rate", "1", "--error-status", "500"]);
    let e429 = Mock::start(&["--error-rate", "1", "--error-status", "429"]);
    let refused = format!("http://127.0.0.1:{}", dead_port());
    for (failing, expected_kind) in [
        (e500.url(), "5xx"),
        (e429.url(), "429"),
        (refused, "connect"),
    ] {
        let gw = Gateway::start(&two_targets(&failing, &good.url(), "")).await;
        let r = gw.chat("m", false).await;
        assert_eq!(r.status(), 200, "after a {expected_kind} failure");
        assert_eq!(r.headers()["x-tollgate-attempts"], "2");
        assert_eq!(r.headers()["x-tollgate-provider"], "second");
        assert_eq!(r.headers()["x-tollgate-model"], "model-b");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["model"], "model-b");
        let metrics = gw.metrics().await;
        assert!(
            metrics.contains(&format!(
                "tollgate_upstream_errors_total{{kind=\"{expected_kind}\",provider=\"first\"}} 1"
            )),
            "{metrics}"
        );
        assert!(metrics
            .contains("tollgate_fallbacks_total{from=\"first\",model=\"m\",to=\"second\"} 1"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn does_not_fail_over_on_400() {
    let bad_request = Mock::start(&["--error-rate", "1", "--error-status", "400"]);
    let good = Mock::start(&[]);
    let gw = Gateway::start(&two_targets(&bad_request.url(), &good.url(), "")).await;
    let r = gw.chat("m", false).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-tollgate-attempts"], "1");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"].is_string(),
        "the provider's error is relayed: {body}"
    );
    assert!(good.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_on_limits_what_fails_over() {
    let e500 = Mock::start(&["--error-rate", "1", "--error-status", "500"]);
    let good = Mock::start(&[]);
    let gw = Gateway::start(&two_targets(
        &e500.url(),
        &good.url(),
        "    retry: { attempts: 2, on: [connect] }\n",
    ))
    .await;
    let r = gw.chat("m", false).await;
    assert_eq!(
        r.status(),
        500,
        "5xx is not in retry.on: the upstream answer is relayed"
    );
    assert!(good.requests().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn all_targets_down_is_502_and_timeouts_are_504() {
    let gw = Gateway::start(&two_targets(
        &format!("http://127.0.0.1:{}", dead_port()),
        &format!("http://127.0.0.1:{}", dead_port()),
        "",
    ))
    .await;
    let r = gw.chat("m", false).await;
    assert_eq!(r.headers()["x-tollgate-attempts"], "2");
    let e = expect_error(r, 502, Some("upstream_failed")).await;
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("first") && message.contains("second"),
        "{message}"
    );

    // Streaming requests that fail before the first byte get the same JSON error.
    let r = gw.chat("m", true).await;
    expect_error(r, 502, Some("upstream_failed")).await;

    let slow = Mock::start(&["--latency-ms", "3000"]);
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: slow, kind: openai, base_url: \"{}\", timeouts: {{ first_token: 300ms }} }}\nmodels:\n  - name: m\n    targets: [{{ provider: slow, model: x }}]\n",
        slow.url()
    ))
    .await;
    let r = gw.chat("m", false).await;
    expect_error(r, 504, Some("upstream_timeout")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_mib_prompt_routes_and_fails_over_byte_exact() {
    let failing = Mock::start(&["--error-rate", "1", "--error-status", "503"]);
    let good = Mock::start(&[]);
    let gw = Gateway::start(&two_targets(&failing.url(), &good.url(), "")).await;

    // Varied text, with escapes, so a re-serialisation would show.
    let prompt: String = (0..1024 * 1024 / 64)
        .map(|i| format!("line {i:06} \"quoted\" \\ tab\t ünïcode {:>24}\n", i * 7919))
        .collect();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": prompt}], "temperature": 0.2});
    let body = serde_json::to_vec(&body).unwrap();
    assert!(body.len() > 1024 * 1024);

    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-attempts"], "2");

    let text = String::from_utf8(body).unwrap();
    for (mock, model) in [(&failing, "model-a"), (&good, "model-b")] {
        let expected = text.replacen("\"model\":\"m\"", &format!("\"model\":\"{model}\""), 1);
        let seen = mock.requests().await;
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0]["body_bytes"], expected.len());
        assert_eq!(
            seen[0]["body_sha256"],
            hex::encode(Sha256::digest(expected.as_bytes())),
            "the body reached {model} altered"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_refusing_our_credential_fails_over_and_is_never_relayed() {
    // The mock demands another key than the one the gateway holds.
    let wrong_key = Mock::start(&["--api-key", "sk-some-other-key"]);
    let good = Mock::start(&[]);
    let gw = Gateway::start(&two_targets(&wrong_key.url(), &good.url(), "")).await;
    let r = gw.chat("m", false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-provider"], "second");

    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: only, model: x }}]\n",
        provider("only", &wrong_key.url())
    ))
    .await;
    let e = expect_error(gw.chat("m", false).await, 502, Some("upstream_failed")).await;
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("refused the gateway's credential"),
        "{message}"
    );
    assert!(!message.contains("sk-"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_stalls_before_its_first_token_fails_over() {
    // Headers at once, then nothing for 3 s: without a first token nothing is committed.
    let stalled = Mock::start(&["--ttft-ms", "3000"]);
    let good = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: first, kind: openai, base_url: \"{}\", timeouts: {{ first_token: 300ms }} }}\n{}models:\n  - name: m\n    targets: [{{ provider: first, model: a }}, {{ provider: second, model: b }}]\n",
        stalled.url(),
        provider("second", &good.url())
    ))
    .await;
    let r = gw.chat("m", true).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-attempts"], "2");
    assert_eq!(r.headers()["x-tollgate-provider"], "second");
    let text = r.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(gw
        .metrics()
        .await
        .contains("tollgate_upstream_errors_total{kind=\"timeout\",provider=\"first\"} 1"));
}
