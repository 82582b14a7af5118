//! Metering: every answer's tokens as the provider reported them, whether or not the client
//! asked to see them.

use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The sum of a counter's samples whose labels include every one of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_did_not_ask_for_usage_gets_none_yet_is_metered() {
    let mock = Mock::start(&["--completion-tokens", "7"]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: support\n    targets: [{{ provider: up, model: gpt-4o }}]\nkeys:\n  - {{ id: app, key: sk-app, team: support }}\n",
        provider("up", &mock.url())
    ))
    .await;
    let client = reqwest::Client::new();
    let stream = |options: Option<Value>| {
        let mut body = chat_body("support", true);
        if let Some(options) = options {
            body["stream_options"] = options;
        }
        client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("sk-app")
            .json(&body)
            .send()
    };

    let quiet = stream(None).await.unwrap().text().await.unwrap();
    let events = sse_data(&quiet);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{quiet}");
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert!(
            chunk["usage"].is_null(),
            "a usage the client never asked for: {event}"
        );
        assert_eq!(
            chunk["choices"].as_array().map(Vec::len),
            Some(1),
            "{event}"
        );
    }
    let asked = mock.requests().await;
    assert_eq!(asked[0]["stream_options"], json!({"include_usage": true}));

    let told = stream(Some(json!({"include_usage": true})))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let usage_chunks: Vec<Value> = sse_data(&told)
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|c| c["usage"].is_object())
        .collect();
    assert_eq!(usage_chunks.len(), 1, "{told}");
    assert_eq!(usage_chunks[0]["usage"]["completion_tokens"], 7);

    // Both requests settle (mock and gateway) just after their last byte reached us.
    let settled = eventually(Duration::from_secs(5), || async {
        mock.stats().await["usage"]["answers"] == 2
            && gw.metrics().await.contains(
                "tollgate_time_to_first_token_seconds_count{model=\"support\",provider=\"up\"} 2",
            )
    })
    .await;
    assert!(settled);
    let reported = mock.stats().await["usage"].clone();
    let metrics = gw.metrics().await;
    let tokens = |direction: &str| {
        metric_sum(
            &metrics,
            "tollgate_tokens_total",
            &[&format!("direction=\"{direction}\""), "team=\"support\""],
        )
    };
    assert_eq!(tokens("input"), reported["input_tokens"].as_f64().unwrap());
    assert_eq!(tokens("output"), 14.0);
    // gpt-4o's catalog prices: $2.50 in, $10 out per million tokens.
    let cost = metric_sum(&metrics, "tollgate_cost_usd_total", &["model=\"support\""]);
    let expected = (tokens("input") * 2.5 + 14.0 * 10.0) / 1e6;
    assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
    assert!(metrics.contains(
        "tollgate_time_to_first_token_seconds_count{model=\"support\",provider=\"up\"} 2"
    ));
    // Where the gateway's own time went, per stage, for both requests.
    for stage in [
        "auth",
        "parse",
        "admission",
        "routing",
        "translate",
        "meter",
        "log",
    ] {
        let count = metric_sum(
            &metrics,
            "tollgate_stage_duration_seconds_count",
            &[&format!("stage=\"{stage}\"")],
        );
        assert_eq!(count, 2.0, "{stage}");
    }
}
