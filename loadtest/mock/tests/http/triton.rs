//! The Triton kind over loopback: generate, generate_stream, readiness,
//! metrics, errors, keys and in-stream errors.

use std::net::SocketAddr;

use serde_json::{json, Value};
use tollgate_mock::{MockConfig, MockKind};

use crate::client::{get_json, open_stream, send, sse_events, start, wait_for_stat, Reply};

fn triton(cfg: MockConfig) -> SocketAddr {
    start(MockConfig {
        kind: MockKind::Triton,
        models: vec!["llm".into()],
        ..cfg
    })
}

fn generate_body(max_tokens: u32) -> Value {
    json!({"text_input": "What is Triton?",
           "parameters": {"max_tokens": max_tokens, "stream": false, "temperature": 0}})
}

async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    send(addr, "POST", path, headers, body.to_string().as_bytes()).await
}

async fn metrics(addr: SocketAddr) -> String {
    String::from_utf8(send(addr, "GET", "/metrics", &[], b"").await.body()).unwrap()
}

#[tokio::test]
async fn generate_whole_and_streamed() {
    let addr = triton(MockConfig::default());
    let reply = post(addr, "/v2/models/llm/generate", &[], &generate_body(3)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        reply.json(),
        json!({"model_name": "llm", "model_version": "1", "text_output": "Hello from the"})
    );

    let path = "/v2/models/llm/versions/2/generate_stream";
    let body = json!({"id": "42", "text_input": "hi", "max_tokens": 2});
    let reply = post(addr, path, &[], &body).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert!(reply.complete, "the stream ends by closing, properly");
    // One token per event and no [DONE].
    let events = sse_events(&reply);
    assert_eq!(
        events,
        [
            Some(
                json!({"id": "42", "model_name": "llm", "model_version": "2",
                        "text_output": "Hello"})
            ),
            Some(
                json!({"id": "42", "model_name": "llm", "model_version": "2",
                        "text_output": " from"})
            ),
        ]
    );
    wait_for_stat(addr, "streams_completed", 1).await;

    // Recorded with the model of the path.
    let recorded = get_json(addr, "/mock/requests").await;
    assert_eq!(recorded["requests"][1]["model"], "llm");
    assert_eq!(recorded["requests"][1]["path"], path);
}

#[tokio::test]
async fn readiness_follows_healthy() {
    let addr = triton(MockConfig::default());
    let ready = send(addr, "GET", "/v2/health/ready", &[], b"").await;
    assert_eq!(ready.status, 200);
    assert!(ready.body().is_empty());
    let update = json!({"healthy": false}).to_string();
    send(addr, "POST", "/mock/config", &[], update.as_bytes()).await;
    let down = send(addr, "GET", "/v2/health/ready", &[], b"").await;
    assert_eq!(down.status, 503);
    assert!(down.json()["error"].is_string());
    // OpenAI's paths are not Triton's.
    assert_eq!(send(addr, "GET", "/v1/models", &[], b"").await.status, 404);
    assert_eq!(send(addr, "GET", "/health", &[], b"").await.status, 404);
}

#[tokio::test]
async fn metrics_follow_in_flight_requests() {
    let addr = triton(MockConfig {
        tokens_per_sec: 10.0,
        completion_tokens: 1000,
        waiting: 2,
        ..MockConfig::default()
    });
    let pending =
        |n: u64| format!(r#"nv_inference_pending_request_count{{model="llm",version="1"}} {n}"#);
    let gpu = |u: &str| {
        format!(r#"nv_gpu_utilization{{gpu_uuid="GPU-00000000-0000-0000-0000-000000000000"}} {u}"#)
    };
    let idle = metrics(addr).await;
    for line in [
        "# TYPE nv_inference_pending_request_count gauge".to_owned(),
        pending(2),
        "# TYPE nv_gpu_utilization gauge".to_owned(),
        gpu("0"),
    ] {
        assert!(idle.lines().any(|l| l == line), "no {line:?} in\n{idle}");
    }

    let path = "/v2/models/llm/generate_stream";
    let stream = open_stream(addr, path, &[], &generate_body(1000)).await;
    let busy = metrics(addr).await;
    assert!(busy.lines().any(|l| l == pending(3)), "{busy}");
    assert!(busy.lines().any(|l| l == gpu("0.05")), "{busy}");
    drop(stream);
    wait_for_stat(addr, "streams_cancelled", 1).await;
    assert!(metrics(addr).await.lines().any(|l| l == pending(2)));
}

#[tokio::test]
async fn errors_keys_and_in_stream_errors() {
    let addr = triton(MockConfig {
        api_key: Some("tk".into()),
        error_event_after_chunks: Some(1),
        ..MockConfig::default()
    });
    let path = "/v2/models/llm/generate_stream";
    let body = generate_body(4);
    let missing = post(addr, path, &[], &body).await;
    assert_eq!(missing.status, 401);
    assert!(missing.json()["error"].is_string());
    let wrong = post(addr, path, &[("authorization", "Bearer no")], &body).await;
    assert_eq!(wrong.status, 401);
    let auth = [("authorization", "Bearer tk")];
    let reply = post(addr, path, &auth, &body).await;
    assert_eq!(reply.status, 200);
    assert!(reply.complete);
    assert_eq!(
        sse_events(&reply),
        [
            Some(json!({"model_name": "llm", "model_version": "1", "text_output": "Hello"})),
            Some(json!({"error": "in-stream error (injected by tollgate-mock)"})),
        ]
    );

    let no_input = post(addr, "/v2/models/llm/generate", &auth, &json!({})).await;
    assert_eq!(no_input.status, 400);
    assert!(no_input.json()["error"].is_string());

    let update = json!({"error_rate": 1, "error_status": 503}).to_string();
    send(addr, "POST", "/mock/config", &[], update.as_bytes()).await;
    let reply = post(addr, "/v2/models/llm/generate", &auth, &body).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        reply.json(),
        json!({"error": "Overloaded (injected by tollgate-mock)."})
    );
}
