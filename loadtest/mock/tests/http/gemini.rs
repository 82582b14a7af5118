//! The Gemini kind over loopback: generateContent, CRLF-framed streams,
//! function calls, errors, keys and drops.

use std::net::SocketAddr;

use serde_json::{json, Value};
use tollgate_mock::{MockConfig, MockKind};

use crate::client::{chunk_texts, get_json, open_stream, send, start, wait_for_stat, Reply};

const MODEL: &str = "gemini-test";
const KEY: (&str, &str) = ("x-goog-api-key", "g-key");

fn gemini(cfg: MockConfig) -> SocketAddr {
    start(MockConfig {
        kind: MockKind::Gemini,
        ..cfg
    })
}

fn generate_path() -> String {
    format!("/v1beta/models/{MODEL}:generateContent")
}

fn stream_path() -> String {
    format!("/v1beta/models/{MODEL}:streamGenerateContent?alt=sse")
}

fn content_body() -> Value {
    json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
           "contents": [{"role": "user", "parts": [{"text": "Say hello to me"}]}]})
}

fn tool_body() -> Value {
    json!({"tools": [{"functionDeclarations": [{"name": "get_weather", "parameters": {}}]}],
           "contents": [{"role": "user", "parts": [{"text": "What is the weather in Paris?"}]}]})
}

async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    send(addr, "POST", path, headers, body.to_string().as_bytes()).await
}

/// The JSON of each event; panics unless each chunk holds one CRLF-framed event.
fn crlf_events(reply: &Reply) -> Vec<Value> {
    chunk_texts(reply)
        .iter()
        .map(|text| {
            let data = text
                .strip_prefix("data: ")
                .and_then(|t| t.strip_suffix("\r\n\r\n"))
                .unwrap_or_else(|| panic!("not one CRLF event: {text:?}"));
            serde_json::from_str(data).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn generate_content() {
    let addr = gemini(MockConfig::default());
    let reply = post(addr, &generate_path(), &[], &content_body()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let answer = reply.json();
    let text = answer["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap();
    assert_eq!(text.split(' ').count(), 16);
    // "Be brief." + "Say hello to me" is 24 bytes: 6 tokens.
    assert_eq!(
        answer,
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                               "finishReason": "STOP", "index": 0}],
               "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 16,
                                 "totalTokenCount": 22},
               "modelVersion": MODEL})
    );

    let mut capped = content_body();
    capped["generationConfig"] = json!({"maxOutputTokens": 2, "temperature": 0.5});
    let answer = post(addr, &generate_path(), &[], &capped).await.json();
    assert_eq!(answer["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(answer["usageMetadata"]["candidatesTokenCount"], 2);

    // The model comes from the path.
    let recorded = get_json(addr, "/mock/requests").await;
    assert_eq!(recorded["requests"][0]["model"], MODEL);
    assert_eq!(
        recorded["requests"][0]["path"],
        "/v1beta/models/gemini-test:generateContent"
    );
}

#[tokio::test]
async fn stream_generate_content() {
    let addr = gemini(MockConfig {
        completion_tokens: 3,
        ..MockConfig::default()
    });
    let reply = post(addr, &stream_path(), &[], &content_body()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert!(reply.complete, "the stream ends by closing, properly");
    let events = crlf_events(&reply);
    assert_eq!(events.len(), 3);
    let mut text = String::new();
    for (i, event) in (1..).zip(&events) {
        text.push_str(
            event["candidates"][0]["content"]["parts"][0]["text"]
                .as_str()
                .unwrap(),
        );
        assert_eq!(
            event["usageMetadata"],
            json!({"promptTokenCount": 6, "candidatesTokenCount": i, "totalTokenCount": 6 + i})
        );
        assert_eq!(event["modelVersion"], MODEL);
    }
    assert_eq!(text, "Hello from the");
    assert!(events[1]["candidates"][0].get("finishReason").is_none());
    assert_eq!(events[2]["candidates"][0]["finishReason"], "STOP");
    wait_for_stat(addr, "streams_completed", 1).await;

    // Only `alt=sse` streams are imitated.
    let path = format!("/v1beta/models/{MODEL}:streamGenerateContent");
    let reply = post(addr, &path, &[], &content_body()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["status"], "INVALID_ARGUMENT");
}

#[tokio::test]
async fn function_calls() {
    let addr = gemini(MockConfig::default());
    let call = json!({"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}});
    let answer = post(addr, &generate_path(), &[], &tool_body()).await.json();
    assert_eq!(answer["candidates"][0]["content"]["parts"], json!([call]));
    assert_eq!(answer["candidates"][0]["finishReason"], "STOP");

    let reply = post(addr, &stream_path(), &[], &tool_body()).await;
    let events = crlf_events(&reply);
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["candidates"][0]["content"]["parts"],
        json!([call])
    );
    assert_eq!(events[0]["candidates"][0]["finishReason"], "STOP");
}

#[tokio::test]
async fn api_keys_as_gemini_checks_them() {
    let addr = gemini(MockConfig {
        api_key: Some("g-key".into()),
        ..MockConfig::default()
    });
    let body = content_body();
    let missing = post(addr, &generate_path(), &[], &body).await;
    assert_eq!(missing.status, 403);
    assert_eq!(missing.json()["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(missing.json()["error"]["code"], 403);
    let wrong = post(addr, &generate_path(), &[("x-goog-api-key", "no")], &body).await;
    assert_eq!(wrong.status, 400);
    assert_eq!(
        wrong.json(),
        json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                         "status": "INVALID_ARGUMENT"}})
    );
    assert_eq!(
        post(addr, &generate_path(), &[KEY], &body).await.status,
        200
    );
    let in_query = format!("{}&key=g-key", stream_path());
    assert_eq!(post(addr, &in_query, &[], &body).await.status, 200);
}

#[tokio::test]
async fn injected_errors_as_rpc_status() {
    let addr = gemini(MockConfig {
        error_rate: 1.0,
        error_status: 503,
        ..MockConfig::default()
    });
    let reply = post(addr, &stream_path(), &[], &content_body()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        reply.json(),
        json!({"error": {"code": 503, "message": "Overloaded (injected by tollgate-mock).",
                         "status": "UNAVAILABLE"}})
    );
    for (status, name) in [(429, "RESOURCE_EXHAUSTED"), (500, "INTERNAL")] {
        let update = json!({"error_status": status}).to_string();
        send(addr, "POST", "/mock/config", &[], update.as_bytes()).await;
        let reply = post(addr, &generate_path(), &[], &content_body()).await;
        assert_eq!(reply.status, status);
        assert_eq!(reply.json()["error"]["status"], name);
    }
}

#[tokio::test]
async fn invalid_requests_and_unknown_paths() {
    let addr = gemini(MockConfig::default());
    let reply = post(addr, &generate_path(), &[], &json!({"contents": []})).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["status"], "INVALID_ARGUMENT");
    let not_json = send(addr, "POST", &generate_path(), &[], b"{").await;
    assert_eq!(not_json.status, 400);
    let missing = send(addr, "GET", "/v1/models", &[], b"").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["status"], "NOT_FOUND");
}

#[tokio::test]
async fn drops_and_cancellation() {
    let addr = gemini(MockConfig {
        drop_after_chunks: Some(2),
        ..MockConfig::default()
    });
    let reply = post(addr, &stream_path(), &[], &content_body()).await;
    assert!(!reply.complete, "a dropped stream must not end properly");
    assert_eq!(crlf_events(&reply).len(), 2);

    let addr = gemini(MockConfig {
        tokens_per_sec: 10.0,
        completion_tokens: 1000,
        ..MockConfig::default()
    });
    drop(open_stream(addr, &stream_path(), &[], &content_body()).await);
    wait_for_stat(addr, "streams_cancelled", 1).await;
}
