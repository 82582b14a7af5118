//! Provider kinds the README promises, each against a mock of its own wire format: Azure
//! OpenAI's deployment paths and `api-key`, Ollama's OpenAI-compatible API and health path.

use crate::harness::*;
use crate::metering::metric_sum;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn azure_openai_deployments_answer_chat_streams_and_embeddings() {
    let mock = Mock::start(&["--api-key", UPSTREAM_KEY, "--completion-tokens", "6"]);
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: azure, kind: azure-openai, base_url: \"{}\", api_key: \"${{{UPSTREAM_KEY_VAR}}}\", api_version: \"2024-10-21\" }}\n\
         models:\n  - {{ name: gpt, targets: [{{ provider: azure, model: prod-gpt4o }}] }}\n\
         \x20 - {{ name: embed, targets: [{{ provider: azure, model: prod-embed }}] }}\n",
        mock.url(),
    ))
    .await;
    let client = reqwest::Client::new();
    for stream in [false, true] {
        let r = gw.chat("gpt", stream).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-tollgate-provider"], "azure");
        assert_eq!(r.headers()["x-tollgate-model"], "prod-gpt4o");
        let text = r.text().await.unwrap();
        if stream {
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["usage"]["completion_tokens"], 6, "{v}");
        }
    }
    let r = client
        .post(gw.url("/v1/embeddings"))
        .json(&json!({"model": "embed", "input": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["data"][0]["embedding"].is_array(), "{v}");

    let requests = mock.requests().await;
    let paths: Vec<(&str, &str)> = requests
        .iter()
        .filter(|r| r["method"] == "POST")
        .map(|r| {
            (
                r["path"].as_str().unwrap(),
                r["query"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            (
                "/openai/deployments/prod-gpt4o/chat/completions",
                "api-version=2024-10-21"
            ),
            (
                "/openai/deployments/prod-gpt4o/chat/completions",
                "api-version=2024-10-21"
            ),
            (
                "/openai/deployments/prod-embed/embeddings",
                "api-version=2024-10-21"
            ),
        ]
    );
    for r in requests.iter().filter(|r| r["method"] == "POST") {
        assert_eq!(r["headers"]["api-key"], UPSTREAM_KEY, "{r}");
        assert!(r["headers"].get("authorization").is_none(), "{r}");
    }
    // Both chats metered from Azure's own usage (the stream's usage chunk asked for), once
    // each has settled (after its last byte reached the client).
    let output = || async {
        metric_sum(
            &gw.metrics().await,
            "tollgate_tokens_total",
            &["direction=\"output\"", "model=\"gpt\""],
        )
    };
    eventually(Duration::from_secs(5), || async { output().await >= 12.0 }).await;
    assert_eq!(output().await, 12.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_is_health_checked_on_its_own_path_and_serves_chat() {
    let mock = Mock::start(&["--kind", "ollama"]);
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: local, kind: ollama, base_url: \"{}\", health_check: {{ every: 100ms, unhealthy_after: 1, healthy_after: 1 }} }}\n\
         models:\n  - {{ name: llama, targets: [{{ provider: local, model: \"llama3.1:8b\" }}] }}\n",
        mock.url(),
    ))
    .await;
    for stream in [false, true] {
        let r = gw.chat("llama", stream).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-tollgate-model"], "llama3.1:8b");
        r.bytes().await.unwrap();
    }
    let requests = mock.requests().await;
    let chats: Vec<&Value> = requests.iter().filter(|r| r["method"] == "POST").collect();
    assert_eq!(chats.len(), 2);
    assert!(chats
        .iter()
        .all(|r| r["path"] == "/v1/chat/completions" && r["model"] == "llama3.1:8b"));

    // A failing health check takes it out, a passing one brings it back.
    mock.configure(json!({"healthy": false})).await;
    let down = eventually(Duration::from_secs(3), || async {
        gw.endpoint_state("local", mock.addr).await["healthy"] == false
    })
    .await;
    assert!(down);
    let r = gw.chat("llama", false).await;
    expect_error(r, 503, Some("no_eligible_target")).await;
    mock.configure(json!({"healthy": true})).await;
    let up = eventually(Duration::from_secs(3), || async {
        gw.endpoint_state("local", mock.addr).await["healthy"] == true
    })
    .await;
    assert!(up);
    assert_eq!(gw.chat("llama", false).await.status(), 200);
}
