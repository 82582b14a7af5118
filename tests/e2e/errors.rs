//! Bad input and refusals: always OpenAI-shaped, always the contract's status.

use crate::harness::*;
use serde_json::json;

async fn gateway(mock: &Mock) -> Gateway {
    Gateway::start_with(
        &format!(
            "providers:\n{}models:\n  - name: open\n    targets: [{{ provider: up, model: m }}]\n  - name: restricted\n    targets: [{{ provider: up, model: m }}]\nkeys:\n  - {{ id: app, key: sk-app, models: [open] }}\n",
            provider("up", &mock.url())
        ),
        "  max_body_bytes: 64KiB\n",
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_errors() {
    let mock = Mock::start(&[]);
    let gw = gateway(&mock).await;
    let c = reqwest::Client::new();
    let url = gw.url("/v1/chat/completions");

    let r = c
        .post(&url)
        .json(&chat_body("open", false))
        .send()
        .await
        .unwrap();
    let e = expect_error(r, 401, Some("missing_api_key")).await;
    assert_eq!(e["type"], "authentication_error");

    let r = c
        .post(&url)
        .bearer_auth("sk-wrong")
        .json(&chat_body("open", false))
        .send()
        .await
        .unwrap();
    expect_error(r, 401, Some("invalid_api_key")).await;

    let r = c.get(gw.url("/v1/models")).send().await.unwrap();
    expect_error(r, 401, Some("missing_api_key")).await;

    let r = c
        .post(&url)
        .bearer_auth("sk-app")
        .json(&chat_body("restricted", false))
        .send()
        .await
        .unwrap();
    let e = expect_error(r, 403, Some("model_not_allowed")).await;
    assert_eq!(e["param"], "model");

    assert!(
        mock.requests().await.is_empty(),
        "nothing refused went upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn request_errors() {
    let mock = Mock::start(&[]);
    let gw = gateway(&mock).await;
    let c = reqwest::Client::new();
    let url = gw.url("/v1/chat/completions");

    let r = c
        .post(&url)
        .bearer_auth("sk-app")
        .json(&chat_body("gpt-nope", false))
        .send()
        .await
        .unwrap();
    let e = expect_error(r, 404, Some("model_not_found")).await;
    assert!(e["message"].as_str().unwrap().contains("gpt-nope"));

    for bad in [
        "{not json",
        "",
        "[]",
        r#"{"messages":[]}"#,
        r#"{"model":42}"#,
    ] {
        let r = c
            .post(&url)
            .bearer_auth("sk-app")
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        let e = expect_error(r, 400, None).await;
        assert_eq!(e["type"], "invalid_request_error", "{bad}");
    }

    let huge =
        json!({"model": "open", "messages": [{"role": "user", "content": "x".repeat(100 * 1024)}]});
    let r = c
        .post(&url)
        .bearer_auth("sk-app")
        .json(&huge)
        .send()
        .await
        .unwrap();
    expect_error(r, 413, Some("request_too_large")).await;

    let r = c.get(gw.url("/v2/whatever")).send().await.unwrap();
    expect_error(r, 404, Some("unknown_url")).await;

    let r = c.get(&url).bearer_auth("sk-app").send().await.unwrap();
    expect_error(r, 405, Some("method_not_allowed")).await;

    // A request after all of these on a fresh connection still works.
    let r = c
        .post(&url)
        .bearer_auth("sk-app")
        .json(&chat_body("open", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_body_over_the_limit_is_413() {
    let mock = Mock::start(&[]);
    let gw = gateway(&mock).await;
    // No content-length: the limit must hold while reading a chunked body too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b' '; 8 * 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-app")
        .body(body)
        .send()
        .await
        .unwrap();
    expect_error(r, 413, Some("request_too_large")).await;
}
