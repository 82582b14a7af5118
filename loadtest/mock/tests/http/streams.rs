//! Server-sent-event answers: order, usage, pacing side effects, drops and cancellation.

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tollgate_mock::{MockConfig, MockKind};

use crate::client::{
    get_json, open_stream, post_json, raw_request, send, sse_events, start, wait_for_stat,
};

fn stream_body(include_usage: bool) -> Value {
    json!({"model": "gpt-test", "stream": true,
           "stream_options": {"include_usage": include_usage},
           "messages": [{"role": "user", "content": "12345678"}]})
}

#[tokio::test]
async fn chat_stream_with_usage() {
    let addr = start(MockConfig {
        completion_tokens: 4,
        ..MockConfig::default()
    });
    let reply = post_json(addr, "/v1/chat/completions", &stream_body(true)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    assert!(reply.complete, "stream must end with the final chunk");

    let events = sse_events(&reply);
    // role, 4 tokens, finish, usage, [DONE]
    assert_eq!(events.len(), 8);
    assert_eq!(events[7], None);
    let chunks: Vec<&Value> = events[..7].iter().map(|e| e.as_ref().unwrap()).collect();
    let id = &chunks[0]["id"];
    assert!(id.as_str().unwrap().starts_with("chatcmpl-"));
    for chunk in &chunks {
        assert_eq!(&chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-test");
        assert!(chunk["created"].is_u64());
    }
    assert_eq!(
        chunks[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                "logprobs": null, "finish_reason": null}])
    );
    let text: String = chunks[1..5]
        .iter()
        .map(|c| {
            assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
            c["choices"][0]["delta"]["content"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, "Hello from the Tollgate");
    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    for chunk in &chunks[..6] {
        assert_eq!(chunk.get("usage"), Some(&Value::Null));
    }
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(
        chunks[6]["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6})
    );

    let stats = wait_for_stat(addr, "streams_completed", 1).await;
    assert_eq!(stats["streams_started"], 1);
    assert_eq!(stats["streams_cancelled"], 0);
}

#[tokio::test]
async fn chat_stream_without_usage() {
    let addr = start(MockConfig {
        completion_tokens: 2,
        ..MockConfig::default()
    });
    let mut req = stream_body(false);
    req["max_tokens"] = json!(1);
    let reply = post_json(addr, "/v1/chat/completions", &req).await;
    let events = sse_events(&reply);
    // role, 1 token, finish, [DONE]
    assert_eq!(events.len(), 4);
    assert_eq!(events[3], None);
    for event in &events[..3] {
        assert!(event.as_ref().unwrap().get("usage").is_none());
    }
    assert_eq!(
        events[2].as_ref().unwrap()["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test]
async fn legacy_completion_stream() {
    let addr = start(MockConfig {
        completion_tokens: 2,
        ..MockConfig::default()
    });
    let req = json!({"model": "davinci", "prompt": "hi", "stream": true,
                     "stream_options": {"include_usage": true}});
    let reply = post_json(addr, "/v1/completions", &req).await;
    assert!(reply.complete);
    let events = sse_events(&reply);
    // 2 tokens, finish, usage, [DONE]
    assert_eq!(events.len(), 5);
    let texts: Vec<&Value> = events[..3]
        .iter()
        .map(|e| &e.as_ref().unwrap()["choices"][0]["text"])
        .collect();
    assert_eq!(texts, [&json!("Hello"), &json!(" from"), &json!("")]);
    let usage = events[3].as_ref().unwrap();
    assert_eq!(usage["object"], "text_completion");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 2);
    assert_eq!(events[4], None);
}

#[tokio::test]
async fn drop_after_chunks_cuts_the_connection() {
    let addr = start(MockConfig {
        drop_after_chunks: Some(3),
        ..MockConfig::default()
    });
    let reply = post_json(addr, "/v1/chat/completions", &stream_body(false)).await;
    assert_eq!(reply.status, 200);
    assert!(!reply.complete, "a dropped stream must not be terminated");
    let events = sse_events(&reply);
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(Option::is_some), "no [DONE] after a drop");
}

#[tokio::test]
async fn client_disconnect_cancels_the_stream() {
    // Paced so the stream would last 100s unless cancelled.
    let addr = start(MockConfig {
        kind: MockKind::Vllm,
        tokens_per_sec: 10.0,
        completion_tokens: 1000,
        ..MockConfig::default()
    });
    let stream = open_stream(addr, "/v1/chat/completions", &[], &stream_body(false)).await;
    let stats = get_json(addr, "/mock/stats").await;
    assert_eq!(stats["streams_started"], 1);
    assert_eq!(stats["streams_cancelled"], 0);
    let metrics = String::from_utf8(send(addr, "GET", "/metrics", &[], b"").await.body()).unwrap();
    assert!(metrics.contains(r#"vllm:num_requests_running{engine="0",model_name="mock-gpt"} 1.0"#));
    assert!(metrics.contains(r#"vllm:kv_cache_usage_perc{engine="0",model_name="mock-gpt"} 0.05"#));

    drop(stream);
    let stats = wait_for_stat(addr, "streams_cancelled", 1).await;
    assert_eq!(stats["streams_completed"], 0);
    let metrics = String::from_utf8(send(addr, "GET", "/metrics", &[], b"").await.body()).unwrap();
    assert!(metrics.contains(r#"vllm:num_requests_running{engine="0",model_name="mock-gpt"} 0.0"#));
}

#[tokio::test]
async fn disconnect_during_ttft_cancels_too() {
    let addr = start(MockConfig {
        ttft_ms: 60_000,
        ..MockConfig::default()
    });
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = stream_body(false).to_string();
    let req = raw_request("POST", "/v1/chat/completions", &[], body.as_bytes());
    stream.write_all(&req).await.unwrap();
    wait_for_stat(addr, "streams_started", 1).await;
    drop(stream);
    wait_for_stat(addr, "streams_cancelled", 1).await;
}
