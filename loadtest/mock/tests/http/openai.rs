//! Non-stream answers, errors, auth, recording and the vLLM endpoints.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_mock::{MockConfig, MockKind};

use crate::client::{get_json, post_json, raw_request, send, start};

fn chat_body() -> Value {
    json!({"model": "gpt-test", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello to me"}
    ]})
}

#[tokio::test]
async fn non_stream_chat() {
    let addr = start(MockConfig::default());
    let reply = post_json(addr, "/v1/chat/completions", &chat_body()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.complete);
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with("Hello from the"));
    assert_eq!(content.split(' ').count(), 16);
    // "Be brief." + "Say hello to me" is 24 bytes: 6 tokens.
    assert_eq!(
        body,
        json!({
            "id": body["id"], "object": "chat.completion", "created": body["created"],
            "model": "gpt-test",
            "choices": [{"index": 0,
                "message": {"role": "assistant", "content": content, "refusal": null},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 6, "completion_tokens": 16, "total_tokens": 22}
        })
    );
}

#[tokio::test]
async fn max_tokens_caps_the_answer() {
    let addr = start(MockConfig::default());
    let mut req = chat_body();
    req["max_completion_tokens"] = json!(3);
    let body = post_json(addr, "/v1/chat/completions", &req).await.json();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from the");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn invalid_requests_get_400() {
    let addr = start(MockConfig::default());
    for body in [
        &b"{not json"[..],
        br#"{"messages":[]}"#,
        br#"{"model":"m"}"#,
    ] {
        let reply = send(addr, "POST", "/v1/chat/completions", &[], body).await;
        assert_eq!(reply.status, 400);
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error");
        assert_eq!(error["param"], Value::Null);
        assert_eq!(error["code"], Value::Null);
        assert!(error["message"].is_string());
    }
}

#[tokio::test]
async fn injected_errors() {
    let addr = start(MockConfig {
        error_rate: 1.0,
        error_status: 429,
        ..MockConfig::default()
    });
    let reply = post_json(addr, "/v1/chat/completions", &chat_body()).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.header("retry-after-ms"), Some("1000"));
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
    assert_eq!(reply.json()["error"]["code"], "rate_limit_exceeded");
    // The model list is not an inference call and stays up.
    assert_eq!(send(addr, "GET", "/v1/models", &[], b"").await.status, 200);

    let addr = start(MockConfig {
        error_rate: 1.0,
        ..MockConfig::default()
    });
    let reply = post_json(addr, "/v1/embeddings", &json!({"model": "e", "input": "x"})).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["error"]["type"], "server_error");
    assert_eq!(reply.header("retry-after"), None);
}

#[tokio::test]
async fn api_key_is_enforced() {
    let addr = start(MockConfig {
        api_key: Some("sk-test".into()),
        ..MockConfig::default()
    });
    let body = chat_body().to_string();
    let body = body.as_bytes();
    let path = "/v1/chat/completions";

    let reply = send(addr, "POST", path, &[], body).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"]["code"], "invalid_api_key");
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    let wrong = [("authorization", "Bearer sk-nope")];
    assert_eq!(send(addr, "POST", path, &wrong, body).await.status, 401);
    let right = [("authorization", "Bearer sk-test")];
    assert_eq!(send(addr, "POST", path, &right, body).await.status, 200);
    // `api-key` only counts on Azure paths.
    let azure_key = [("api-key", "sk-test")];
    assert_eq!(send(addr, "POST", path, &azure_key, body).await.status, 401);
    let azure = "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21";
    let no_model = br#"{"messages":[{"role":"user","content":"hi"}]}"#;
    let reply = send(addr, "POST", azure, &azure_key, no_model).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["model"], "my-gpt");
    // Introspection needs no key.
    assert_eq!(send(addr, "GET", "/mock/stats", &[], b"").await.status, 200);
}

#[tokio::test]
async fn requests_are_recorded() {
    let addr = start(MockConfig::default());
    let body = chat_body().to_string();
    let headers = [("x-trace", "abc")];
    send(
        addr,
        "POST",
        "/v1/chat/completions?a=1",
        &headers,
        body.as_bytes(),
    )
    .await;
    send(addr, "GET", "/v1/models", &[], b"").await;

    let recorded = get_json(addr, "/mock/requests").await;
    let requests = recorded["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2);
    let chat = &requests[0];
    assert_eq!(chat["method"], "POST");
    assert_eq!(chat["path"], "/v1/chat/completions");
    assert_eq!(chat["query"], "a=1");
    assert_eq!(chat["headers"]["x-trace"], "abc");
    assert_eq!(chat["body_bytes"], body.len());
    assert_eq!(chat["body_sha256"], hex::encode(Sha256::digest(&body)));
    assert_eq!(chat["model"], "gpt-test");
    assert_eq!(requests[1]["path"], "/v1/models");
    assert_eq!(requests[1]["model"], Value::Null);
    assert_eq!(get_json(addr, "/mock/stats").await["requests"], 2);

    assert_eq!(
        send(addr, "DELETE", "/mock/requests", &[], b"")
            .await
            .status,
        204
    );
    assert_eq!(
        get_json(addr, "/mock/requests").await,
        json!({"requests": []})
    );

    let quiet = start(MockConfig {
        record: false,
        ..MockConfig::default()
    });
    send(quiet, "GET", "/v1/models", &[], b"").await;
    assert_eq!(
        get_json(quiet, "/mock/requests").await,
        json!({"requests": []})
    );
    assert_eq!(get_json(quiet, "/mock/stats").await["requests"], 1);
}

#[tokio::test]
async fn other_endpoints() {
    let addr = start(MockConfig {
        models: vec!["a".into(), "b".into()],
        ..MockConfig::default()
    });
    let models = get_json(addr, "/v1/models").await;
    assert_eq!(models["object"], "list");
    let ids: Vec<&Value> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["id"])
        .collect();
    assert_eq!(ids, [&json!("a"), &json!("b")]);
    assert_eq!(models["data"][0]["owned_by"], "tollgate-mock");
    assert_eq!(models["data"][0]["object"], "model");

    let req = json!({"model": "emb", "input": ["one", "two", "one"]});
    let emb = post_json(addr, "/v1/embeddings", &req).await.json();
    assert_eq!(emb["object"], "list");
    assert_eq!(emb["model"], "emb");
    let data = emb["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["object"], "embedding");
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(data[0]["embedding"], data[2]["embedding"]);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(emb["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let tokens = post_json(
        addr,
        "/v1/embeddings",
        &json!({"model": "e", "input": [[1, 2], [3]]}),
    )
    .await
    .json();
    assert_eq!(tokens["usage"]["prompt_tokens"], 3);

    let req = json!({"model": "davinci", "prompt": "Once upon", "max_tokens": 2});
    let text = post_json(addr, "/v1/completions", &req).await.json();
    assert_eq!(text["object"], "text_completion");
    assert!(text["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(
        text["choices"],
        json!([{"text": "Hello from", "index": 0, "logprobs": null, "finish_reason": "length"}])
    );
    assert_eq!(
        text["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    );

    let missing = send(addr, "POST", "/v1/nope", &[], b"{}").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["type"], "invalid_request_error");
    let wrong = send(addr, "GET", "/v1/chat/completions", &[], b"").await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("POST"));
    assert!(wrong.json()["error"]["message"].is_string());
    assert_eq!(send(addr, "GET", "/metrics", &[], b"").await.status, 404);
    assert_eq!(send(addr, "GET", "/health", &[], b"").await.status, 404);
}

#[tokio::test]
async fn accepts_a_16_mib_body() {
    let addr = start(MockConfig::default());
    let content = "x".repeat(16 * 1024 * 1024);
    let req = json!({"model": "m", "messages": [{"role": "user", "content": content}]});
    let reply = post_json(addr, "/v1/chat/completions", &req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["usage"]["prompt_tokens"], 4 * 1024 * 1024);
}

#[tokio::test]
async fn vllm_health_and_metrics() {
    let addr = start(MockConfig {
        kind: MockKind::Vllm,
        waiting: 3,
        models: vec!["llama".into()],
        ..MockConfig::default()
    });
    let health = send(addr, "GET", "/health", &[], b"").await;
    assert_eq!(health.status, 200);
    assert!(health.body().is_empty());

    let metrics = send(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(metrics.body()).unwrap();
    let labels = r#"{engine="0",model_name="llama"}"#;
    for line in [
        "# TYPE vllm:num_requests_running gauge".to_owned(),
        format!("vllm:num_requests_running{labels} 0.0"),
        format!("vllm:num_requests_waiting{labels} 3.0"),
        format!("vllm:kv_cache_usage_perc{labels} 0.0"),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(text.contains("# HELP vllm:num_requests_waiting "));
    // vLLM is OpenAI-compatible too.
    assert_eq!(
        post_json(addr, "/v1/chat/completions", &chat_body())
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn spawn_reports_bind_errors() {
    let taken = start(MockConfig::default());
    let err = tollgate_mock::spawn(taken, MockConfig::default()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

#[tokio::test]
async fn connections_are_kept_alive() {
    let addr = start(MockConfig::default());
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Two requests on one connection; only the second asks to close.
    let mut reqs = raw_request("GET", "/v1/models", &[], b"");
    reqs.extend(raw_request(
        "GET",
        "/mock/stats",
        &[("connection", "close")],
        b"",
    ));
    stream.write_all(&reqs).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(text.contains(r#""owned_by":"tollgate-mock""#));
    assert!(text.contains(r#""streams_started":0"#));
}
