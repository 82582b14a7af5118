//! Any provider, one API: an OpenAI client served by an Anthropic target, streaming included.

use crate::harness::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

async fn gateway(anthropic: &Mock) -> (Gateway, Mock) {
    let failing = Mock::start(&["--error-rate", "1", "--error-status", "503"]);
    let gw = Gateway::start(&format!(
        "providers:\n{}  - {{ name: claude, kind: anthropic, base_url: \"{}\", api_key: \"{UPSTREAM_KEY}\" }}\nmodels:\n  - name: m\n    targets:\n      - {{ provider: first, model: gpt-4o }}\n      - {{ provider: claude, model: claude-sonnet-4-5, max_tokens_default: 512 }}\n",
        provider("first", &failing.url()),
        anthropic.url()
    ))
    .await;
    (gw, failing)
}

async fn sse_data(resp: reqwest::Response) -> Vec<String> {
    let mut text = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_openai_client_gets_openai_json_from_an_anthropic_failover() {
    let claude = Mock::start(&["--kind", "anthropic", "--api-key", UPSTREAM_KEY]);
    let (gw, _failing) = gateway(&claude).await;
    let r = gw.chat("m", false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-attempts"], "2");
    assert_eq!(r.headers()["x-tollgate-provider"], "claude");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Hello"),
        "{body}"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        body["usage"]["total_tokens"].as_u64().unwrap(),
        body["usage"]["prompt_tokens"].as_u64().unwrap()
            + body["usage"]["completion_tokens"].as_u64().unwrap()
    );

    let seen = claude.requests().await;
    assert_eq!(seen[0]["path"], "/v1/messages");
    assert_eq!(seen[0]["headers"]["x-api-key"], UPSTREAM_KEY);
    assert_eq!(seen[0]["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(seen[0]["model"], "claude-sonnet-4-5");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_openai_client_gets_openai_chunks_from_an_anthropic_stream() {
    let claude = Mock::start(&[
        "--kind",
        "anthropic",
        "--tokens-per-sec",
        "200",
        "--completion-tokens",
        "6",
    ]);
    let (gw, _failing) = gateway(&claude).await;
    let mut body = chat_body("m", true);
    body["stream_options"] = json!({"include_usage": true});
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(r).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text.split_whitespace().count(), 6, "{text}");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 6, "{usage}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_calls_survive_openai_to_anthropic_and_back_in_a_stream() {
    let claude = Mock::start(&["--kind", "anthropic"]);
    let (gw, _failing) = gateway(&claude).await;
    let body = json!({
        "model": "m",
        "stream": true,
        "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}],
    });
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let data = sse_data(r).await;
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(calls[0]["id"].is_string());
    let arguments: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"location": "Paris"})
    );
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    // What went upstream was Anthropic's tool format.
    let seen = claude.requests().await;
    assert_eq!(seen.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_errors_reach_an_openai_client_in_openai_shape() {
    let claude = Mock::start(&[
        "--kind",
        "anthropic",
        "--error-rate",
        "1",
        "--error-status",
        "400",
    ]);
    let (gw, _failing) = gateway(&claude).await;
    let r = gw.chat("m", false).await;
    let e = expect_error(r, 400, None).await;
    assert_eq!(e["type"], "invalid_request_error", "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anthropic_error_event_mid_stream_ends_the_openai_stream_with_one_error() {
    let claude = Mock::start(&["--kind", "anthropic", "--error-event-after-chunks", "5"]);
    let (gw, _failing) = gateway(&claude).await;
    let r = gw.chat("m", true).await;
    assert_eq!(r.status(), 200);
    let data = sse_data(r).await;
    assert!(!data.contains(&"[DONE]".to_string()), "{data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["message"], "Overloaded", "{last}");
    assert!(data.len() >= 2, "the text before the error was relayed");
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_529_overloaded_fails_over() {
    let claude = Mock::start(&[
        "--kind",
        "anthropic",
        "--error-rate",
        "1",
        "--error-status",
        "529",
    ]);
    let backup = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: claude, kind: anthropic, base_url: \"{}\" }}\n{}models:\n  - name: m\n    targets: [{{ provider: claude, model: claude-sonnet-4-5 }}, {{ provider: backup, model: gpt-4o }}]\n",
        claude.url(),
        provider("backup", &backup.url())
    ))
    .await;
    let r = gw.chat("m", false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-provider"], "backup");
    assert_eq!(r.headers()["x-tollgate-attempts"], "2");
}

/// A model whose first target (OpenAI-like) answers 503 and whose second is `kind`.
async fn failover_to(kind: &str, extra: &str) -> (Gateway, Mock, Mock) {
    let failing = Mock::start(&["--error-rate", "1", "--error-status", "503"]);
    let second = Mock::start(&[
        "--kind",
        kind,
        "--tokens-per-sec",
        "200",
        "--completion-tokens",
        "5",
    ]);
    let gw = Gateway::start(&format!(
        "providers:\n{}  - {{ name: second, kind: {kind}, base_url: \"{}\", api_key: \"{UPSTREAM_KEY}\" }}\nmodels:\n  - name: m\n    targets:\n      - {{ provider: first, model: gpt-4o }}\n      - {{ provider: second, model: upstream-model{extra} }}\n",
        provider("first", &failing.url()),
        second.url()
    ))
    .await;
    (gw, failing, second)
}

async fn check_both_ways(kind: &str, extra: &str, expect_usage: bool) {
    let (gw, _failing, second) = failover_to(kind, extra).await;
    let r = gw.chat("m", false).await;
    assert_eq!(r.status(), 200, "{kind}");
    assert_eq!(r.headers()["x-tollgate-provider"], "second");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion", "{kind}: {body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 5, "{kind}: {text}");
    assert!(
        body["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{kind}: {body}"
    );

    let mut request = chat_body("m", true);
    request["stream_options"] = json!({"include_usage": true});
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let data = sse_data(r).await;
    assert_eq!(data.last().unwrap(), "[DONE]", "{kind}: {data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed.split_whitespace().count(), 5, "{kind}: {streamed}");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop"),
        "{kind}"
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert!(
        usage["completion_tokens"].as_u64().unwrap() > 0,
        "{kind}: {usage}"
    );
    if expect_usage {
        assert_eq!(usage["completion_tokens"], 5, "{kind}: {usage}");
    }
    assert_eq!(second.requests().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn gemini_second_target_answers_in_openai_format() {
    check_both_ways("gemini", "", true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn triton_second_target_answers_in_openai_format() {
    // Triton reports no usage: the gateway counts it, so only its presence is checked.
    check_both_ways("triton", ", prompt_template: plain", false).await;
}

async fn messages(gw: &Gateway, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_clients_are_served_by_any_target() {
    let openai = Mock::start(&["--tokens-per-sec", "200", "--completion-tokens", "4"]);
    let claude = Mock::start(&["--kind", "anthropic", "--completion-tokens", "4"]);
    let gw = Gateway::start(&format!(
        "providers:\n{}  - {{ name: claude, kind: anthropic, base_url: \"{}\" }}\nmodels:\n  - name: via-openai\n    targets: [{{ provider: up, model: gpt-4o }}]\n  - name: via-claude\n    targets: [{{ provider: claude, model: claude-sonnet-4-5 }}]\n",
        provider("up", &openai.url()),
        claude.url()
    ))
    .await;
    let body = |model: &str, stream: bool| {
        json!({"model": model, "max_tokens": 50, "stream": stream, "system": "Be brief.",
               "messages": [{"role": "user", "content": "Say hello"}]})
    };
    for model in ["via-openai", "via-claude"] {
        let r = messages(&gw, body(model, false)).await;
        assert_eq!(r.status(), 200, "{model}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "message", "{model}: {v}");
        assert_eq!(v["content"][0]["type"], "text");
        assert_eq!(
            v["content"][0]["text"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .count(),
            4,
            "{model}: {v}"
        );
        assert!(
            v["usage"]["output_tokens"].as_u64().unwrap() > 0,
            "{model}: {v}"
        );

        let r = messages(&gw, body(model, true)).await;
        assert_eq!(r.status(), 200);
        let mut events = Vec::new();
        let mut text = String::new();
        for chunk in sse_events(r).await {
            if let Some(delta) = chunk.1["delta"]["text"].as_str() {
                text.push_str(delta);
            }
            events.push(chunk.0);
        }
        assert_eq!(
            events.first().map(String::as_str),
            Some("message_start"),
            "{model}: {events:?}"
        );
        assert_eq!(
            events.last().map(String::as_str),
            Some("message_stop"),
            "{model}: {events:?}"
        );
        assert!(events.contains(&"message_delta".to_string()));
        assert_eq!(text.split_whitespace().count(), 4, "{model}: {text}");
    }
    // The OpenAI-style target got an OpenAI request with usage asked for.
    let seen = openai.requests().await;
    assert_eq!(seen[0]["path"], "/v1/chat/completions");
    assert_eq!(claude.requests().await[0]["path"], "/v1/messages");

    // Errors answer in Anthropic's shape.
    let r = messages(&gw, body("nope", false)).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
}

/// (event type, data JSON) of an SSE response.
async fn sse_events(resp: reqwest::Response) -> Vec<(String, Value)> {
    let text = resp.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|block| {
            let mut kind = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = Some(k.to_string());
                }
                if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).ok();
                }
            }
            Some((kind?, data?))
        })
        .collect()
}
