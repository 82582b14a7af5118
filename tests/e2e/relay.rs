//! Non-stream and stream relays, header contract, credential injection, cancellation.

use crate::harness::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn non_stream_relay_rewrites_model_and_injects_the_provider_key() {
    let mock = Mock::start(&["--api-key", UPSTREAM_KEY]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: support\n    targets: [{{ provider: up, model: gpt-4o }}]\nkeys:\n  - {{ id: app, key: sk-virtual-1 }}\n",
        provider("up", &mock.url())
    ))
    .await;

    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-virtual-1")
        .header("x-request-id", "req-abc-123")
        .json(&chat_body("support", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-request-id"], "req-abc-123");
    assert_eq!(h["x-tollgate-provider"], "up");
    assert_eq!(h["x-tollgate-model"], "gpt-4o");
    assert_eq!(h["x-tollgate-attempts"], "1");
    assert!(h["x-tollgate-overhead-us"]
        .to_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len()
            > 3
    );
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);

    let seen = mock.requests().await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["model"], "gpt-4o");
    assert_eq!(seen[0]["path"], "/v1/chat/completions");
    let auth = seen[0]["headers"]["authorization"].as_str().unwrap();
    assert_eq!(auth, format!("Bearer {UPSTREAM_KEY}"));
    assert!(
        !seen[0].to_string().contains("sk-virtual-1"),
        "the virtual key went upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_embeddings_and_models() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: text\n    targets: [{{ provider: up, model: davinci }}]\n  - name: embed\n    targets: [{{ provider: up, model: text-embedding-3-small }}]\n  - name: hidden\n    targets: [{{ provider: up, model: x }}]\nkeys:\n  - {{ id: app, key: sk-k, models: [text, embed] }}\n",
        provider("up", &mock.url())
    ))
    .await;
    let client = reqwest::Client::new();

    let r: Value = client
        .post(gw.url("/v1/completions"))
        .header("x-api-key", "sk-k")
        .json(&json!({"model": "text", "prompt": "Once upon"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["object"], "text_completion", "{r}");

    let r: Value = client
        .post(gw.url("/v1/embeddings"))
        .bearer_auth("sk-k")
        .json(&json!({"model": "embed", "input": ["a", "b"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["model"], "text-embedding-3-small");

    let r: Value = client
        .get(gw.url("/v1/models"))
        .bearer_auth("sk-k")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = r["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["text", "embed"], "only the models this key may call");
    assert_eq!(r["data"][0]["object"], "model");

    let one = client
        .get(gw.url("/v1/models/embed"))
        .bearer_auth("sk-k")
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let r = client
        .get(gw.url("/v1/models/hidden"))
        .bearer_auth("sk-k")
        .send()
        .await
        .unwrap();
    expect_error(r, 403, Some("model_not_allowed")).await;

    let paths: Vec<String> = mock
        .requests()
        .await
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["/v1/completions", "/v1/embeddings"]);
}

/// Reads an SSE response as it arrives; returns the network chunks and the `data:` payloads.
async fn read_sse(resp: reqwest::Response) -> (usize, Vec<String>) {
    let mut chunks = 0;
    let mut text = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        chunks += 1;
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let data = text
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_string)
        .collect();
    (chunks, data)
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_relay_passes_chunks_through_as_they_arrive() {
    let mock = Mock::start(&["--tokens-per-sec", "100", "--completion-tokens", "8"]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: llama }}]\n",
        provider("up", &mock.url())
    ))
    .await;
    let mut body = chat_body("m", true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(resp.headers()["x-tollgate-model"], "llama");
    let (chunks, data) = read_sse(resp).await;
    // Paced tokens arrive as separate network reads: the gateway did not buffer the stream.
    assert!(
        chunks >= 8,
        "only {chunks} network chunks: the stream was buffered"
    );
    assert_eq!(data.last().unwrap(), "[DONE]");
    let events: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(events
        .iter()
        .all(|e| e["object"] == "chat.completion.chunk"));
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text.split_whitespace().count(), 8, "{text}");
    let usage = &events.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_cancels_the_upstream_stream() {
    let mock = Mock::start(&["--tokens-per-sec", "20", "--completion-tokens", "400"]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: llama }}]\n",
        provider("up", &mock.url())
    ))
    .await;
    let resp = gw.chat("m", true).await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(mock.stats().await["streams_started"], 1);
    drop(stream);
    let cancelled = eventually(Duration::from_secs(10), || async {
        mock.stats().await["streams_cancelled"] == 1
    })
    .await;
    assert!(
        cancelled,
        "the upstream stream kept running: {}",
        mock.stats().await
    );
    assert_eq!(mock.stats().await["streams_completed"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_dying_mid_stream_ends_with_one_error_event() {
    let mock = Mock::start(&["--drop-after-chunks", "3", "--tokens-per-sec", "200"]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: llama }}]\n",
        provider("up", &mock.url())
    ))
    .await;
    let resp = gw.chat("m", true).await;
    assert_eq!(resp.status(), 200);
    let (_, data) = read_sse(resp).await;
    assert!(!data.contains(&"[DONE]".to_string()));
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{last}");
    assert!(last["error"]["type"].is_string(), "{last}");
    assert_eq!(data.iter().filter(|d| d.contains("\"error\"")).count(), 1);
    assert!(data.len() >= 2, "the chunks before the cut were relayed");
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_is_answered_before_the_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: x }}]\n",
        provider("up", &mock.url())
    ))
    .await;
    let body = serde_json::to_vec(&chat_body("m", false)).unwrap();
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // The client sends nothing more until it hears "100 Continue".
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("no 100 Continue: the client would stall")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    conn.write_all(&body).await.unwrap();
    let mut response = Vec::new();
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0);
        response.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.contains("200 OK"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_spreads_requests_over_its_endpoints() {
    let (a, b) = (Mock::start(&[]), Mock::start(&[]));
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: pool, kind: vllm, endpoints: [\"{}\", \"{}\"] }}\nmodels:\n  - name: m\n    targets: [{{ provider: pool, model: llama }}]\n",
        a.addr, b.addr
    ))
    .await;
    for _ in 0..20 {
        assert_eq!(gw.chat("m", false).await.status(), 200);
    }
    let (na, nb) = (a.requests().await.len(), b.requests().await.len());
    assert_eq!(na + nb, 20);
    assert!(na > 0 && nb > 0, "both endpoints get probed: {na} / {nb}");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_plugin_writes_one_line_per_request() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\nkeys:\n  - {{ id: billing-app, key: sk-log-test }}\nplugins:\n  access_log: true\n",
        provider("up", &mock.url())
    ))
    .await;
    let client = reqwest::Client::new();
    for model in ["m", "missing"] {
        client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("sk-log-test")
            .header("x-request-id", format!("log-{model}"))
            .json(&chat_body(model, false))
            .send()
            .await
            .unwrap();
    }
    let found = eventually(Duration::from_secs(5), || async {
        gw.log().matches("tollgate::access").count() >= 2
    })
    .await;
    assert!(found, "{}", gw.log());
    let log = gw.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.contains("tollgate::access"))
        .map(|l| serde_json::from_str(&l[l.find('{').unwrap()..]).unwrap())
        .collect();
    // Each request logs when it settles, so lines may land in either order.
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}: {log}"))
    };
    assert_eq!(lines.len(), 2, "{log}");
    let ok = line("log-m");
    assert_eq!(ok["key"], "billing-app");
    assert_eq!(ok["provider"], "up");
    assert_eq!(ok["upstream_model"], "gpt-4o");
    assert_eq!(ok["status"], 200);
    assert_eq!(line("log-missing")["status"], 404);
    assert!(!log.contains("sk-log-test") && !log.contains(UPSTREAM_KEY));
}

#[tokio::test(flavor = "multi_thread")]
async fn cleartext_http2_clients_are_served_beside_http1_unless_switched_off() {
    let mock = Mock::start(&[]);
    let config = format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\n",
        provider("up", &mock.url())
    );
    let gw = Gateway::start(&config).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();

    let whole = h2
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(whole.version(), reqwest::Version::HTTP_2);
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["x-tollgate-provider"], "up");
    let body: Value = whole.json().await.unwrap();
    assert_eq!(body["model"], "gpt-4o");

    let stream = h2
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("m", true))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.version(), reqwest::Version::HTTP_2);
    assert_eq!(stream.status(), 200);
    let text = stream.text().await.unwrap();
    assert!(text.contains("chat.completion.chunk"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    let refused = h2
        .post(gw.url("/v1/chat/completions"))
        .json(&chat_body("no-such-model", false))
        .send()
        .await
        .unwrap();
    expect_error(refused, 404, Some("model_not_found")).await;

    let http1 = gw.chat("m", false).await;
    assert_eq!(http1.version(), reqwest::Version::HTTP_11);
    assert_eq!(http1.status(), 200);

    let off = Gateway::start_with(&config, "  h2c: false\n").await;
    let answer = h2
        .post(off.url("/v1/chat/completions"))
        .json(&chat_body("m", false))
        .send()
        .await;
    assert!(answer.is_err(), "h2c was served while switched off");
    assert_eq!(off.chat("m", false).await.status(), 200);
}
