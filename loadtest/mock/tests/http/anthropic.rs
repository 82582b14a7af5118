//! The Anthropic kind over loopback: messages whole and streamed, tool use,
//! errors, keys, drops, in-stream errors and cancellation.

use std::net::SocketAddr;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tollgate_mock::{MockConfig, MockKind};

use crate::client::{chunk_texts, get_json, open_stream, send, start, wait_for_stat, Reply};

const VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");
const PATH: &str = "/v1/messages";

fn anthropic(cfg: MockConfig) -> SocketAddr {
    start(MockConfig {
        kind: MockKind::Anthropic,
        ..cfg
    })
}

fn message_body(stream: bool) -> Value {
    json!({"model": "claude-test", "max_tokens": 1024, "stream": stream,
           "system": "Be brief.",
           "messages": [{"role": "user", "content": "Say hello to me"}]})
}

fn tool_body(stream: bool) -> Value {
    json!({"model": "claude-test", "max_tokens": 1024, "stream": stream,
           "tools": [{"name": "get_weather", "description": "Weather by city",
                      "input_schema": {"type": "object"}}],
           "messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
}

async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &Value) -> Reply {
    send(addr, "POST", PATH, headers, body.to_string().as_bytes()).await
}

/// Each event as (name, data); panics unless each chunk holds one event.
fn named_events(reply: &Reply) -> Vec<(String, Value)> {
    chunk_texts(reply)
        .iter()
        .map(|text| {
            let (name, data) = text
                .strip_prefix("event: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .and_then(|t| t.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not one named event: {text:?}"));
            (name.to_owned(), serde_json::from_str(data).unwrap())
        })
        .collect()
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn non_stream_message() {
    let addr = anthropic(MockConfig::default());
    let body = message_body(false);
    let reply = post(addr, &[VERSION, ("x-trace", "t1")], &body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let answer = reply.json();
    assert!(answer["id"].as_str().unwrap().starts_with("msg_"));
    let text = completion(16);
    // "Be brief." + "Say hello to me" is 24 bytes: 6 tokens.
    assert_eq!(
        answer,
        json!({"id": answer["id"], "type": "message", "role": "assistant", "model": "claude-test",
               "content": [{"type": "text", "text": text}],
               "stop_reason": "end_turn", "stop_sequence": null,
               "usage": {"input_tokens": 6, "cache_creation_input_tokens": 0,
                         "cache_read_input_tokens": 0, "output_tokens": 16}})
    );

    let mut capped = body.clone();
    capped["max_tokens"] = json!(2);
    let answer = post(addr, &[VERSION], &capped).await.json();
    assert_eq!(answer["content"][0]["text"], "Hello from");
    assert_eq!(answer["stop_reason"], "max_tokens");
    assert_eq!(answer["usage"]["output_tokens"], 2);

    let recorded = get_json(addr, "/mock/requests").await;
    let first = &recorded["requests"][0];
    assert_eq!(first["path"], PATH);
    assert_eq!(first["model"], "claude-test");
    assert_eq!(first["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(first["headers"]["x-trace"], "t1");
    let sent = body.to_string();
    assert_eq!(first["body_sha256"], hex::encode(Sha256::digest(&sent)));
}

/// The text the mock generates for `tokens` tokens.
fn completion(tokens: usize) -> String {
    let words = [
        "Hello",
        "from",
        "the",
        "Tollgate",
        "mock",
        "provider.",
        "Every",
        "answer",
        "repeats",
        "these",
        "same",
        "words.",
    ];
    (0..tokens)
        .map(|i| words[i % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test]
async fn text_stream() {
    let addr = anthropic(MockConfig {
        completion_tokens: 3,
        ..MockConfig::default()
    });
    let reply = post(addr, &[VERSION], &message_body(true)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert!(reply.complete);
    let events = named_events(&reply);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &events[0].1["message"];
    assert_eq!(start["model"], "claude-test");
    assert_eq!(start["usage"]["input_tokens"], 6);
    assert_eq!(start["usage"]["output_tokens"], 1);
    let text: String = events[3..6]
        .iter()
        .map(|(_, e)| e["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello from the");
    assert_eq!(
        events[7].1,
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": 3}})
    );
    let stats = wait_for_stat(addr, "streams_completed", 1).await;
    assert_eq!(stats["streams_started"], 1);
}

#[tokio::test]
async fn tool_use_whole_and_streamed() {
    let addr = anthropic(MockConfig::default());
    let answer = post(addr, &[VERSION], &tool_body(false)).await.json();
    assert_eq!(
        answer["content"],
        json!([{"type": "text", "text": "Let me check."},
               {"type": "tool_use", "id": "toolu_mock1", "name": "get_weather",
                "input": {"location": "Paris"}}])
    );
    assert_eq!(answer["stop_reason"], "tool_use");

    let reply = post(addr, &[VERSION], &tool_body(true)).await;
    assert!(reply.complete);
    let events = named_events(&reply);
    let stop_of_text = events
        .iter()
        .position(|(n, e)| n == "content_block_stop" && e["index"] == 0)
        .unwrap();
    assert_eq!(events[stop_of_text + 1].0, "content_block_start");
    assert_eq!(
        events[stop_of_text + 1].1["content_block"],
        json!({"type": "tool_use", "id": "toolu_mock1", "name": "get_weather", "input": {}})
    );
    let partial: String = events
        .iter()
        .filter(|(_, e)| e["delta"]["type"] == "input_json_delta")
        .map(|(_, e)| {
            assert_eq!(e["index"], 1);
            e["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    let input: Value = serde_json::from_str(&partial).unwrap();
    assert_eq!(input, json!({"location": "Paris"}));
    let tail: Vec<&str> = names(&events).into_iter().rev().take(3).collect();
    assert_eq!(
        tail,
        ["message_stop", "message_delta", "content_block_stop"]
    );
    assert_eq!(
        events[events.len() - 2].1["delta"]["stop_reason"],
        "tool_use"
    );

    // Without tools the same question gets text.
    let mut no_tools = tool_body(false);
    no_tools.as_object_mut().unwrap().remove("tools");
    let answer = post(addr, &[VERSION], &no_tools).await.json();
    assert_eq!(answer["stop_reason"], "end_turn");
}

#[tokio::test]
async fn invalid_requests_get_400() {
    let addr = anthropic(MockConfig::default());
    let no_version = post(addr, &[], &message_body(false)).await;
    assert_eq!(no_version.status, 400);
    assert_eq!(
        no_version.json(),
        json!({"type": "error", "error": {"type": "invalid_request_error",
               "message": "anthropic-version: header is required"}})
    );
    let mut no_max = message_body(false);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let reply = post(addr, &[VERSION], &no_max).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    assert_eq!(
        reply.json()["error"]["message"],
        "max_tokens: Field required"
    );
    let not_json = send(addr, "POST", PATH, &[VERSION], b"{nope").await;
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["type"], "error");

    let missing = send(addr, "GET", "/v1/models", &[], b"").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["type"], "not_found_error");
    let wrong = send(addr, "GET", PATH, &[], b"").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
}

#[tokio::test]
async fn api_key_in_x_api_key() {
    let addr = anthropic(MockConfig {
        api_key: Some("sk-ant".into()),
        ..MockConfig::default()
    });
    let body = message_body(false);
    let reply = post(addr, &[VERSION], &body).await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.json(),
        json!({"type": "error", "error": {"type": "authentication_error",
               "message": "x-api-key header is required"}})
    );
    let wrong = post(addr, &[VERSION, ("x-api-key", "nope")], &body).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["type"], "authentication_error");
    let bearer = post(addr, &[VERSION, ("authorization", "Bearer sk-ant")], &body).await;
    assert_eq!(bearer.status, 401, "Anthropic keys go in x-api-key");
    let right = post(addr, &[VERSION, ("x-api-key", "sk-ant")], &body).await;
    assert_eq!(right.status, 200);
}

#[tokio::test]
async fn injected_errors_in_anthropic_shape() {
    let addr = anthropic(MockConfig {
        error_rate: 1.0,
        error_status: 529,
        retry_after_secs: 3,
        ..MockConfig::default()
    });
    let reply = post(addr, &[VERSION], &message_body(true)).await;
    assert_eq!(reply.status, 529);
    assert_eq!(reply.header("retry-after"), Some("3"));
    assert_eq!(reply.header("retry-after-ms"), Some("3000"));
    assert_eq!(
        reply.json(),
        json!({"type": "error", "error": {"type": "overloaded_error",
               "message": "Overloaded (injected by tollgate-mock)."}})
    );
    let update = json!({"error_status": 429}).to_string();
    send(addr, "POST", "/mock/config", &[], update.as_bytes()).await;
    let reply = post(addr, &[VERSION], &message_body(false)).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn drops_and_in_stream_errors() {
    let addr = anthropic(MockConfig {
        drop_after_chunks: Some(4),
        ..MockConfig::default()
    });
    let reply = post(addr, &[VERSION], &message_body(true)).await;
    assert_eq!(reply.status, 200);
    assert!(!reply.complete, "a dropped stream must not be terminated");
    let events = named_events(&reply);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta"
        ]
    );

    let addr = anthropic(MockConfig {
        error_event_after_chunks: Some(4),
        ..MockConfig::default()
    });
    let reply = post(addr, &[VERSION], &message_body(true)).await;
    assert!(reply.complete, "an error event ends the stream cleanly");
    let events = named_events(&reply);
    assert_eq!(names(&events).len(), 5);
    assert_eq!(
        events[4],
        (
            "error".to_owned(),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        )
    );
    // A stream that ended in an error did not complete.
    let stats = get_json(addr, "/mock/stats").await;
    assert_eq!(stats["streams_completed"], 0);
}

#[tokio::test]
async fn client_disconnect_cancels_the_stream() {
    let addr = anthropic(MockConfig {
        tokens_per_sec: 10.0,
        completion_tokens: 1000,
        ..MockConfig::default()
    });
    let stream = open_stream(addr, PATH, &[VERSION], &message_body(true)).await;
    drop(stream);
    let stats = wait_for_stat(addr, "streams_cancelled", 1).await;
    assert_eq!(stats["streams_completed"], 0);
}
