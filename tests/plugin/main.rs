//! A custom build of Tollgate with one plugin of its own (`memo.rs`, one file, configured
//! by one section under `plugins:`), tested end to end: this test's binary is also that
//! build. Run with `serve` or `check` as its first argument it is the gateway; run by
//! `cargo test` it starts itself as the gateway beside a mock provider and talks HTTP to it.

#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;
mod memo;

use harness::{Gateway, Mock, UPSTREAM_KEY};
use serde_json::{json, Value};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use tollgate::pipeline::Extensions;

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    if matches!(command.as_deref(), Some("serve" | "check")) {
        return tollgate::cli::main(Extensions::new(vec![Arc::new(memo::MemoFactory)]));
    }
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(async {
            a_plugin_answers_rewrites_and_masks().await;
            a_bad_plugin_section_is_a_config_error();
        });
    println!("test plugin::memo ... ok");
    ExitCode::SUCCESS
}

fn this_build() -> String {
    std::env::current_exe()
        .expect("this executable")
        .display()
        .to_string()
}

const REWRITE_FROM: &str = "Kubernetes";
const REWRITE_TO: &str = "Kubernetes (the container orchestrator)";

fn config(mock: &Mock) -> String {
    format!(
        "providers:\n  - {{ name: up, kind: openai, base_url: \"{}\", api_key: \"{UPSTREAM_KEY}\" }}\n\
         models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\n\
         plugins:\n  memo:\n    answers: {{ \"ping\": \"pong\" }}\n    rewrite: {{ \"{REWRITE_FROM}\": \"{REWRITE_TO}\" }}\n    mask: [\"Tollgate\"]\n    end_after: \"provider.\"\n",
        mock.url()
    )
}

async fn chat(gw: &Gateway, prompt: &str, stream: bool) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": "m", "stream": stream,
            "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .unwrap()
}

/// The text of a whole answer, or of a stream's deltas.
async fn answer_text(resp: reqwest::Response, stream: bool) -> String {
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    if !stream {
        let v: Value = serde_json::from_str(&body).unwrap();
        return v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
    }
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

async fn a_plugin_answers_rewrites_and_masks() {
    let mock = Mock::start(&["--kind", "openai"]);
    let gw = Gateway::start_bin(&this_build(), &config(&mock), "", &[]).await;

    // Answered from memory, whole and streamed: the provider never hears of it.
    for stream in [false, true] {
        let resp = chat(&gw, "ping", stream).await;
        assert!(resp.headers().contains_key("x-request-id"));
        assert_eq!(answer_text(resp, stream).await, "pong");
    }
    assert!(mock.requests().await.is_empty());

    // Rewritten before routing: the provider gets the longer prompt. The control prompt
    // has the same length and no word to rewrite.
    let rewritten = chat(&gw, "What is Kubernetes?", false).await;
    assert_eq!(rewritten.status(), 200);
    let control = chat(&gw, "What is Kubernetez?", false).await;
    assert_eq!(control.status(), 200);
    let sizes: Vec<u64> = mock
        .requests()
        .await
        .iter()
        .map(|r| r["body_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes.len(), 2);
    assert_eq!(
        sizes[0] - sizes[1],
        (REWRITE_TO.len() - REWRITE_FROM.len()) as u64
    );

    // Masked on the way out, whole and streamed (the mock's answers name "Tollgate"); a
    // stream ends early where the plugin says, a whole answer is left whole.
    let whole = answer_text(chat(&gw, "hello", false).await, false).await;
    assert!(
        whole.contains("********") && !whole.contains("Tollgate"),
        "{whole}"
    );
    assert!(whole.contains("provider. Every"), "{whole}");
    let streamed = answer_text(chat(&gw, "hello", true).await, true).await;
    assert!(
        streamed.contains("********") && !streamed.contains("Tollgate"),
        "{streamed}"
    );
    assert!(streamed.ends_with("provider."), "{streamed}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "tollgate_requests_total{cache=\"off\",model=\"m\",provider=\"\",status=\"200\"} 2"
        ),
        "the remembered answers are counted: {metrics}"
    );
}

fn a_bad_plugin_section_is_a_config_error() {
    let dir = harness::TempDir::new("plugin");
    for (section, says) in [
        (
            "memo: { answer: {} }",
            "plugins.memo: unknown field `answer`",
        ),
        (
            "memo: { mask: [\"\"] }",
            "plugins.memo: mask: a word to mask cannot be empty",
        ),
        (
            "nosuch: {}",
            "plugins.nosuch: unknown plugin (known: access_log, cache, ledger, shared_state, memo)",
        ),
    ] {
        let path = dir.0.join("bad.yaml");
        std::fs::write(
            &path,
            format!("providers:\n  - {{ name: up, kind: openai, base_url: \"http://127.0.0.1:9\" }}\nmodels:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\nplugins:\n  {section}\n"),
        )
        .unwrap();
        let out = Command::new(this_build())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{section}: {stderr}");
        assert!(stderr.contains(says), "{section}: {stderr}");
    }
}
