//! `GET`/`POST /mock/config`: behaviour changed while the mock runs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tollgate_mock::{MockConfig, MockKind};

use crate::client::{get_json, post_json, send, start, wait_for_stat, Reply};

fn chat_body() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
}

async fn patch(addr: SocketAddr, body: Value) -> Reply {
    post_json(addr, "/mock/config", &body).await
}

#[tokio::test]
async fn reads_and_patches_the_config() {
    let addr = start(MockConfig {
        retry_after_secs: 3,
        ..MockConfig::default()
    });
    assert_eq!(
        get_json(addr, "/mock/config").await,
        json!({"latency_ms": 0, "ttft_ms": 0, "tokens_per_sec": 0.0, "completion_tokens": 16,
               "error_rate": 0.0, "error_status": 500, "retry_after_secs": 3,
               "healthy": true, "waiting": 0, "stamp_chunks": false, "drop_after_chunks": null,
               "error_event_after_chunks": null, "kv_cache_usage": null, "gpu": null,
               "lora_adapters": []})
    );

    let reply = patch(
        addr,
        json!({"completion_tokens": 2, "drop_after_chunks": 5}),
    )
    .await;
    assert_eq!(reply.status, 200);
    let new = reply.json();
    assert_eq!(new["completion_tokens"], 2);
    assert_eq!(new["drop_after_chunks"], 5);
    assert_eq!(new["retry_after_secs"], 3);
    assert_eq!(get_json(addr, "/mock/config").await, new);
    let answer = post_json(addr, "/v1/chat/completions", &chat_body()).await;
    assert_eq!(answer.json()["usage"]["completion_tokens"], 2);

    let cleared = patch(addr, json!({"drop_after_chunks": null})).await.json();
    assert_eq!(cleared["drop_after_chunks"], Value::Null);

    // Control calls are neither recorded nor counted; only the chat was.
    assert_eq!(get_json(addr, "/mock/stats").await["requests"], 1);
    let recorded = get_json(addr, "/mock/requests").await;
    assert_eq!(recorded["requests"].as_array().unwrap().len(), 1);

    let wrong = send(addr, "DELETE", "/mock/config", &[], b"").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET, POST"));
}

#[tokio::test]
async fn latency_changes_for_later_requests() {
    let addr = start(MockConfig::default());
    patch(addr, json!({"latency_ms": 300})).await;
    let started = Instant::now();
    let reply = post_json(addr, "/v1/chat/completions", &chat_body()).await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn requests_in_progress_keep_their_config() {
    let addr = start(MockConfig {
        latency_ms: 400,
        ..MockConfig::default()
    });
    let started = Instant::now();
    let slow = tokio::spawn(async move {
        post_json(addr, "/v1/chat/completions", &chat_body())
            .await
            .status
    });
    // Counted means the request has taken its config snapshot.
    wait_for_stat(addr, "requests", 1).await;
    patch(addr, json!({"latency_ms": 0})).await;
    assert_eq!(slow.await.unwrap(), 200);
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn unhealthy_fails_health_probes_until_recovered() {
    let vllm = start(MockConfig {
        kind: MockKind::Vllm,
        ..MockConfig::default()
    });
    let openai = start(MockConfig::default());
    for (addr, paths) in [
        (vllm, &["/health", "/v1/models"][..]),
        (openai, &["/v1/models"][..]),
    ] {
        let down = patch(addr, json!({"healthy": false})).await.json();
        assert_eq!(down["healthy"], false);
        for path in paths {
            let reply = send(addr, "GET", path, &[], b"").await;
            assert_eq!(reply.status, 503, "{path}");
            let error = &reply.json()["error"];
            assert_eq!(error["type"], "server_error");
            assert!(error["message"].is_string());
        }
        // Inference is not what `healthy` controls.
        let chat = post_json(addr, "/v1/chat/completions", &chat_body()).await;
        assert_eq!(chat.status, 200);

        patch(addr, json!({"healthy": true})).await;
        for path in paths {
            assert_eq!(
                send(addr, "GET", path, &[], b"").await.status,
                200,
                "{path}"
            );
        }
    }
}

#[tokio::test]
async fn injected_errors_carry_the_configured_retry_after() {
    let addr = start(MockConfig::default());
    let update = json!({"error_rate": 1, "error_status": 503, "retry_after_secs": 7});
    assert_eq!(patch(addr, update).await.status, 200);
    let reply = post_json(addr, "/v1/chat/completions", &chat_body()).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("7"));
    assert_eq!(reply.header("retry-after-ms"), Some("7000"));
    assert_eq!(reply.json()["error"]["type"], "server_error");

    patch(addr, json!({"error_status": 429, "retry_after_secs": 2})).await;
    let reply = post_json(addr, "/v1/embeddings", &json!({"model": "e", "input": "x"})).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("2"));
    assert_eq!(reply.header("retry-after-ms"), Some("2000"));
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");

    patch(addr, json!({"error_status": 502})).await;
    let reply = post_json(addr, "/v1/chat/completions", &chat_body()).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("retry-after"), None);
    assert_eq!(reply.header("retry-after-ms"), None);

    patch(addr, json!({"error_rate": 0})).await;
    let reply = post_json(addr, "/v1/chat/completions", &chat_body()).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn invalid_patches_change_nothing() {
    let addr = start(MockConfig::default());
    let before = get_json(addr, "/mock/config").await;
    for (body, field) in [
        // The valid field sorts first: it must not be applied alone.
        (json!({"completion_tokens": 3, "zzz": 1}), json!("zzz")),
        (json!({"latency_ms": "slow"}), json!("latency_ms")),
        (json!({"error_rate": 1.5}), json!("error_rate")),
        (json!({"error_status": 200}), json!("error_status")),
        (json!({"tokens_per_sec": -1}), json!("tokens_per_sec")),
        (json!({"healthy": null}), json!("healthy")),
        (json!([1]), Value::Null),
    ] {
        let reply = patch(addr, body.clone()).await;
        assert_eq!(reply.status, 400, "{body}");
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["param"], field, "{body}");
        assert_eq!(error["code"], Value::Null);
        if let Some(name) = field.as_str() {
            assert!(error["message"].as_str().unwrap().contains(name), "{error}");
        }
    }
    let not_json = send(addr, "POST", "/mock/config", &[], b"{latency").await;
    assert_eq!(not_json.status, 400);
    assert_eq!(get_json(addr, "/mock/config").await, before);
}
