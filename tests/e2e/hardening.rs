//! Hostile prompts and unlucky timing: whatever a request does to the gateway, it settles
//! (in-flight gauge, ledger row, limit reservations) and the next request is served.

use crate::harness::*;
use crate::metering::metric_sum;
use crate::scripted::{send, Scripted, Step};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

fn ledger_rows(db: &Path) -> Vec<(String, u16, i64, i64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut query = conn
        .prepare("SELECT id, status, output_tokens, estimated FROM requests ORDER BY rowid")
        .unwrap();
    query
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

async fn in_flight(gw: &Gateway) -> f64 {
    metric_sum(&gw.metrics().await, "tollgate_requests_in_flight", &[])
}

/// A million spaces and a letter overflowed tiktoken's regex (a panic on the worker).
fn space_bomb(model: &str, stream: bool, max_tokens: u64) -> Value {
    json!({
        "model": model,
        "stream": stream,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": format!("{}a", " ".repeat(1_000_000))}],
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn prompts_that_break_the_tokenizer_are_answered_and_settled() {
    let whole = Mock::start(&[]);
    // Cut before its usage chunk: the gateway counts the prompt itself to meter it.
    let cut = Mock::start(&["--drop-after-chunks", "2", "--tokens-per-sec", "200"]);
    let dir = TempDir::new("tokenizer");
    let db = dir.0.join("usage.db");
    let gw = Gateway::start(&format!(
        "providers:\n{}{}models:\n\
         \x20 - {{ name: strict, context: reject, targets: [{{ provider: whole, model: small }}] }}\n\
         \x20 - {{ name: cut, targets: [{{ provider: cut, model: gpt-4o }}] }}\n\
         catalog:\n  small: {{ context_window: 4096, tokenizer: o200k_base }}\n\
         keys:\n  - {{ id: app, key: sk-app, limits: {{ tpm: 300000 }} }}\n\
         plugins:\n  ledger: {{ path: \"{}\", flush_every: 10ms }}\n",
        provider("whole", &whole.url()),
        provider("cut", &cut.url()),
        db.display()
    ))
    .await;
    let client = reqwest::Client::new();
    let post = |body: &Value| {
        client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("sk-app")
            .json(body)
            .send()
    };

    // The context policy has to count a prompt far over the window.
    let r = post(&space_bomb("strict", false, 10)).await.unwrap();
    expect_error(r, 400, Some("context_length_exceeded")).await;

    // A stream cut short without usage: its prompt is counted at settle.
    let r = post(&space_bomb("cut", true, 10)).await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("\"error\""), "{text}");

    assert!(
        eventually(Duration::from_secs(5), || async {
            in_flight(&gw).await == 0.0
        })
        .await,
        "requests still in flight:\n{}",
        gw.log()
    );
    let rows = eventually(Duration::from_secs(5), || async {
        std::path::Path::exists(&db) && ledger_rows(&db).len() == 2
    })
    .await;
    assert!(rows, "{:?}\n{}", ledger_rows(&db), gw.log());
    let rows = ledger_rows(&db);
    assert_eq!(rows[0].1, 400);
    assert_eq!((rows[1].1, rows[1].3), (200, 1), "estimated: {rows:?}");
    assert!(rows[1].2 > 0, "what was streamed is billed: {rows:?}");

    // Both bombs reserved ~250k of the key's 300k tokens a minute: had either kept its
    // reservation, this request (200k) would not fit.
    let mut body = chat_body("cut", false);
    body["max_tokens"] = json!(200_000);
    let r = post(&body).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn counting_a_huge_prompt_does_not_hold_up_other_requests() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n\
         \x20 - {{ name: strict, context: reject, targets: [{{ provider: up, model: gpt-4o }}] }}\n\
         \x20 - {{ name: plain, targets: [{{ provider: up, model: gpt-4o }}] }}\n",
        provider("up", &mock.url()),
    ))
    .await;
    // Six million letters in one word: a count that takes the tokenizer most of a second.
    let huge = json!({
        "model": "strict",
        "messages": [{"role": "user", "content": "a".repeat(6_000_000)}],
    });
    let client = reqwest::Client::new();
    // One per worker thread.
    let bombs: Vec<_> = (0..2)
        .map(|_| {
            let request = client.post(gw.url("/v1/chat/completions")).json(&huge);
            tokio::spawn(async move {
                let r = request.send().await.unwrap();
                let status = r.status().as_u16();
                r.bytes().await.unwrap();
                (status, Instant::now())
            })
        })
        .collect();
    // Long enough for both bodies to arrive and their counts to start.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = gw.chat("plain", false).await;
    assert_eq!(r.status(), 200);
    let small_done = Instant::now();
    for bomb in bombs {
        let (status, done) = bomb.await.unwrap();
        assert_eq!(status, 400);
        assert!(
            small_done < done,
            "the small request waited for a count on its worker"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_streams_that_outlast_the_grace_period_and_bills_them() {
    // Fifty seconds of tokens: far beyond the one-second grace period.
    let openai = Mock::start(&["--tokens-per-sec", "20", "--completion-tokens", "1000"]);
    let vllm = Mock::start(&[
        "--kind",
        "vllm",
        "--tokens-per-sec",
        "20",
        "--completion-tokens",
        "1000",
    ]);
    let dir = TempDir::new("term-streams");
    let db = dir.0.join("usage.db");
    let mut gw = Gateway::start(&format!(
        "providers:\n{}  - {{ name: gpu, kind: vllm, base_url: \"{}\" }}\nmodels:\n\
         \x20 - {{ name: hosted, targets: [{{ provider: openai, model: gpt-4o }}] }}\n\
         \x20 - {{ name: local, targets: [{{ provider: gpu, model: llama }}] }}\n\
         plugins:\n  ledger: {{ path: \"{}\" }}\n",
        provider("openai", &openai.url()),
        vllm.url(),
        db.display()
    ))
    .await;
    let mut streams = Vec::new();
    for (model, id) in [("hosted", "long-hosted"), ("local", "long-local")] {
        let mut r = reqwest::Client::new()
            .post(gw.url("/v1/chat/completions"))
            .header("x-request-id", id)
            .json(&chat_body(model, true))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut seen = String::new();
        while seen.matches("data: ").count() < 3 {
            seen.push_str(&String::from_utf8_lossy(&r.chunk().await.unwrap().unwrap()));
        }
        streams.push((r, seen));
    }
    gw.signal("TERM");
    for (r, mut seen) in streams {
        seen.push_str(&r.text().await.unwrap_or_default());
        assert!(!seen.contains("[DONE]"), "{seen}");
        let last = seen
            .lines()
            .rev()
            .find(|l| l.starts_with("data: "))
            .unwrap();
        let event: Value = serde_json::from_str(&last["data: ".len()..]).unwrap();
        assert_eq!(event["error"]["code"], "server_shutting_down", "{seen}");
    }
    assert!(gw.wait_exit(Duration::from_secs(10)), "{}", gw.log());

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut query = conn
        .prepare("SELECT id, status, output_tokens, estimated FROM requests ORDER BY id")
        .unwrap();
    let rows: Vec<(String, u16, i64, i64)> = query
        .query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}\n{}", gw.log());
    for (id, status, output, _) in &rows {
        assert_eq!(*status, 200, "{id}");
        // About twenty tokens a second for the second the grace period lasted.
        assert!((3..200).contains(output), "{id}: {output} tokens");
    }
    // vLLM's running usage makes even a cut stream exact; the hosted one is counted.
    assert_eq!(rows[0].3, 1, "{rows:?}");
    assert_eq!(rows[1].3, 0, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_cut_short_bill_what_they_relayed() {
    let claude = Mock::start(&[
        "--kind",
        "anthropic",
        "--tokens-per-sec",
        "50",
        "--completion-tokens",
        "500",
    ]);
    // A whole answer whose body ends before its declared length.
    let partial = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"The answer to your question, in full detail, is that the"#;
    let cut = Scripted::start(vec![
        send(format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{partial}",
            partial.len() + 200
        )),
        Step::Sleep(Duration::from_millis(50)),
    ]);
    let dir = TempDir::new("cut-billing");
    let db = dir.0.join("usage.db");
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: claude, kind: anthropic, base_url: \"{}\", api_key: k }}\n{}models:\n\
         \x20 - {{ name: claude, targets: [{{ provider: claude, model: claude-sonnet-4-5 }}] }}\n\
         \x20 - {{ name: cut, targets: [{{ provider: cut, model: gpt-4o }}] }}\n\
         plugins:\n  ledger: {{ path: \"{}\", flush_every: 10ms }}\n",
        claude.url(),
        provider("cut", &cut.url()),
        db.display()
    ))
    .await;
    let client = reqwest::Client::new();

    // An Anthropic client reads some of a long stream, then hangs up.
    let mut r = client
        .post(gw.url("/v1/messages"))
        .header("x-request-id", "left")
        .json(
            &json!({"model": "claude", "max_tokens": 1000, "stream": true,
                      "messages": [{"role": "user", "content": "Tell me a long story"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut seen = String::new();
    while seen.matches("event: content_block_delta").count() < 10 {
        seen.push_str(&String::from_utf8_lossy(&r.chunk().await.unwrap().unwrap()));
    }
    drop(r);

    // The cut whole answer reaches the client as a cut body.
    let r = client
        .post(gw.url("/v1/chat/completions"))
        .header("x-request-id", "cut")
        .json(&chat_body("cut", false))
        .send()
        .await
        .unwrap();
    assert!(r.bytes().await.is_err(), "the client sees the cut");

    let both = eventually(Duration::from_secs(5), || async {
        db.exists() && ledger_rows(&db).len() == 2
    })
    .await;
    assert!(both, "{}", gw.log());
    let rows = ledger_rows(&db);
    let row = |id: &str| rows.iter().find(|r| r.0 == id).unwrap().clone();
    let (_, _, left_output, left_estimated) = row("left");
    assert!(
        left_output >= 10 && left_estimated == 1,
        "the relayed deltas, not message_start's one token: {rows:?}"
    );
    let (_, _, cut_output, cut_estimated) = row("cut");
    assert!(cut_output >= 10 && cut_estimated == 1, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_chosen_names_never_become_labels_or_ledger_rows() {
    let mock = Mock::start(&[]);
    let dir = TempDir::new("labels");
    let db = dir.0.join("usage.db");
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - {{ name: m, targets: [{{ provider: up, model: gpt-4o }}] }}\n\
         keys:\n  - {{ id: app, key: sk-app }}\n\
         plugins:\n  ledger: {{ path: \"{}\", flush_every: 10ms }}\n",
        provider("up", &mock.url()),
        db.display()
    ))
    .await;
    let client = reqwest::Client::new();
    for i in 0..40 {
        let name = format!("no-such-model-{i}");
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("sk-app")
            .json(&chat_body(&name, false))
            .send()
            .await
            .unwrap();
        expect_error(r, 404, Some("model_not_found")).await;
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(format!("sk-wrong-{i}"))
            .json(&chat_body("m", false))
            .send()
            .await
            .unwrap();
        expect_error(r, 401, Some("invalid_api_key")).await;
        let r = client
            .post(gw.url(&format!("/v1/unknown-{i}")))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        expect_error(r, 404, None).await;
    }
    let r = client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-app")
        .json(&chat_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let metrics = gw.metrics().await;
    assert!(!metrics.contains("no-such-model"), "{metrics}");
    assert!(!metrics.contains("unknown-"), "{metrics}");
    assert_eq!(
        metric_sum(
            &metrics,
            "tollgate_requests_total",
            &["model=\"_unknown\"", "status=\"404\""]
        ),
        40.0
    );
    assert_eq!(
        metric_sum(&metrics, "tollgate_requests_total", &["status=\"401\""]),
        40.0
    );
    // One row: the request that reached a model with a valid key.
    let one = eventually(Duration::from_secs(5), || async {
        db.exists() && !ledger_rows(&db).is_empty()
    })
    .await;
    assert!(one);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ledger_rows(&db).len(), 1, "{:?}", ledger_rows(&db));
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_never_open_what_a_truncated_file_leaves_out_nor_quote_secrets() {
    let mock = Mock::start(&[]);
    let models = format!(
        "providers:\n{}models:\n  - {{ name: m, targets: [{{ provider: up, model: gpt-4o }}] }}\n",
        provider("up", &mock.url())
    );
    let keyed = format!("{models}keys:\n  - {{ id: app, key: sk-app }}\n");
    let gw = Gateway::start_with(&keyed, "  admin_token: adm-t0ken\n").await;
    let client = reqwest::Client::new();
    let reload = || {
        client
            .post(gw.admin_url("/admin/reload"))
            .bearer_auth("adm-t0ken")
            .send()
    };
    // An empty body stands for a file caught mid-write: empty.
    let write_whole = |server: &str, body: &str| {
        let text = match body {
            "" => String::new(),
            body => format!(
                "server:\n  listen: [\"{}\"]\n  admin_listen: \"{}\"\n{server}{body}",
                gw.addr, gw.admin
            ),
        };
        std::fs::write(&gw.config, text).unwrap()
    };
    let still_closed = || async {
        let anonymous = gw.chat("m", false).await.status();
        let admin = reqwest::get(gw.admin_url("/admin/config"))
            .await
            .unwrap()
            .status();
        (anonymous.as_u16(), admin.as_u16())
    };

    let secret = "sk-live-0123456789abcdef";
    for (server, body, expect) in [
        ("", "".to_string(), "empty"),
        (
            "  admin_token: adm-t0ken\n",
            models.clone(),
            "open_data_plane",
        ),
        ("", keyed.clone(), "open_admin"),
        (
            "  admin_token: adm-t0ken\n",
            keyed.replace("api_key: \"", &format!("api_key: \"${{{secret}")),
            "unterminated",
        ),
    ] {
        write_whole(server, &body);
        let r = reload().await.unwrap();
        let error = expect_error(r, 400, None).await;
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(expect), "{message}");
        assert!(!message.contains(secret), "{message}");
        assert_eq!(still_closed().await, (401, 401));
    }
    assert!(!gw.log().contains(secret));

    // Said on purpose, both go.
    write_whole("  open_data_plane: true\n  open_admin: true\n", &models);
    assert_eq!(reload().await.unwrap().status(), 200);
    assert_eq!(still_closed().await, (200, 200));
}

#[tokio::test(flavor = "multi_thread")]
async fn reservations_bound_what_a_request_may_spend() {
    let mock = Mock::start(&["--completion-tokens", "5"]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - {{ name: m, targets: [{{ provider: up, model: gpt-4o }}] }}\n\
         keys:\n  - {{ id: small, key: sk-small, limits: {{ tpm: 500 }} }}\n\
         \x20 - {{ id: wide, key: sk-wide, limits: {{ tpm: 5000 }} }}\n\
         \x20 - {{ id: cheap, key: sk-cheap, budget: {{ usd_per_day: 0.01 }} }}\n",
        provider("up", &mock.url()),
    ))
    .await;
    let client = reqwest::Client::new();
    let send = |key: &'static str, extra: Value| {
        let mut body = chat_body("m", false);
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };

    // Without max_tokens a 500-token minute still serves requests: it reserves what fits.
    for _ in 0..3 {
        let r = send("sk-small", json!({})).await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    // Each of n choices may use max_tokens.
    let r = send("sk-wide", json!({"max_tokens": 1000, "n": 5}))
        .await
        .unwrap();
    let e = expect_error(r, 429, Some("rate_limit_exceeded")).await;
    assert!(e["message"].as_str().unwrap().contains("Limit 5000"), "{e}");
    let r = send("sk-wide", json!({"max_tokens": 1000, "n": 4}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = send("sk-wide", json!({"n": 500})).await.unwrap();
    expect_error(r, 400, None).await;

    // A worst case beyond the budget is refused; the same prompt without a cap is served.
    let r = send("sk-cheap", json!({"max_tokens": 10_000}))
        .await
        .unwrap();
    let e = expect_error(r, 429, Some("budget_exceeded")).await;
    assert!(e["message"].as_str().unwrap().contains("max_tokens"), "{e}");
    let r = send("sk-cheap", json!({})).await.unwrap();
    assert_eq!(r.status(), 200);

    // Absurd caps saturate instead of wrapping around to a small reservation.
    let r = send("sk-wide", json!({"max_tokens": u64::MAX, "n": 128}))
        .await
        .unwrap();
    expect_error(r, 429, Some("rate_limit_exceeded")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_frees_its_upstream_and_reservations() {
    use tokio::io::AsyncWriteExt;
    // Tens of megabytes as fast as the mock can write them.
    let mock = Mock::start(&["--completion-tokens", "400000"]);
    let gw = Gateway::start_with(
        &format!(
            "providers:\n{}models:\n  - {{ name: m, targets: [{{ provider: up, model: gpt-4o }}] }}\n\
             keys:\n  - {{ id: app, key: sk-app, limits: {{ tpm: 500000 }} }}\n",
            provider("up", &mock.url()),
        ),
        "  client_write_timeout: 1s\n",
    )
    .await;
    let body = json!({"model": "m", "stream": true, "max_tokens": 400_000,
                      "messages": [{"role": "user", "content": "Talk forever"}]})
    .to_string();
    let mut stalled = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer sk-app\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // It never reads: the socket buffers fill, then the gateway's writes wait on it.
    assert!(
        eventually(Duration::from_secs(2), || async {
            in_flight(&gw).await == 1.0
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            in_flight(&gw).await == 0.0
        })
        .await,
        "the stalled request was never settled:\n{}",
        gw.log()
    );
    // Its 400k-token reservation came back (only what it streamed stays charged).
    let mut again: Value = serde_json::from_str(&body).unwrap();
    again["stream"] = json!(false);
    again["max_tokens"] = json!(5);
    let r = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-app")
        .json(&again)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewritten_body_gets_its_own_framing() {
    // An event stream framed by content-length, ending with a usage chunk the client did not
    // ask for: the gateway removes it, so the length no longer holds.
    let events = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
        "data: [DONE]\n\n",
    );
    let upstream = Scripted::start(vec![send(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{events}",
        events.len()
    ))]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - {{ name: m, targets: [{{ provider: up, model: gpt-4o }}] }}\n",
        provider("up", &upstream.url()),
    ))
    .await;
    let r = gw.chat("m", true).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("a whole body, not one cut short");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(!text.contains("prompt_tokens"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_chunked_request_body_is_answered_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - {{ name: m, targets: [{{ provider: up, model: gpt-4o }}] }}\n",
        provider("up", &mock.url()),
    ))
    .await;
    let mut client = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n{\"model\":\"m\"}\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    assert!(answer.contains("chunked"), "{answer}");
    assert!(mock.requests().await.is_empty());
    assert_eq!(gw.chat("m", false).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn what_describes_the_upstream_stays_with_the_gateway() {
    let body = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#;
    let upstream = Scripted::start(vec![send(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         openai-organization: org-secret-acme\r\nopenai-project: proj_secret\r\n\
         anthropic-organization-id: 0000-secret\r\nset-cookie: __cf_bm=secret\r\n\
         x-backend-host: gpu-17.internal.acme\r\nserver: internal-proxy\r\n\r\n{body}",
        body.len()
    ))]);
    let gw = Gateway::start(&format!(
        "providers:\n{}  - {{ name: lost, kind: openai, base_url: \"http://no-such-host.internal.invalid:9\", api_key: k }}\n\
         models:\n  - {{ name: m, targets: [{{ provider: up, model: gpt-4o }}] }}\n\
         \x20 - {{ name: lost, targets: [{{ provider: lost, model: gpt-4o }}] }}\n",
        provider("up", &upstream.url()),
    ))
    .await;
    let r = gw.chat("m", false).await;
    assert_eq!(r.status(), 200);
    for (name, value) in r.headers() {
        let value = value.to_str().unwrap_or("");
        assert!(
            !value.contains("secret") && !value.contains("internal"),
            "{name}: {value}"
        );
    }
    assert_eq!(r.text().await.unwrap(), body);

    // An endpoint whose name does not resolve: the client learns that, not the name.
    let r = gw.chat("lost", false).await;
    let e = expect_error(r, 502, Some("upstream_failed")).await;
    assert!(!e.to_string().contains("no-such-host"), "{e}");

    // Chat without messages never reaches an upstream.
    for messages in [json!([]), json!("hello"), Value::Null] {
        let r = reqwest::Client::new()
            .post(gw.url("/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": messages}))
            .send()
            .await
            .unwrap();
        let e = expect_error(r, 400, None).await;
        assert_eq!(e["param"], "messages", "{e}");
    }
    let r = reqwest::Client::new()
        .post(gw.url("/v1/messages"))
        .json(&json!({"model": "m", "max_tokens": 5, "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "Anthropic's shape: {v}");
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_are_closed_not_held_forever() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = Mock::start(&[]);
    let gw = Gateway::start_with(
        &format!(
            "providers:\n{}models:\n  - {{ name: m, targets: [{{ provider: up, model: gpt-4o }}] }}\n",
            provider("up", &mock.url())
        ),
        "  client_idle_timeout: 1s\n",
    )
    .await;
    // Silent from the start, or fewer bytes than HTTP/2's preface (24) that Pingora waits for.
    let first: [&[u8]; 3] = [b"", b"GET /", b"GET / HTTP/1.0\r\n\r\n"];
    for bytes in first {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        assert!(closed.is_ok(), "{bytes:?}: still open after 10 s");
        assert!(started.elapsed() >= Duration::from_millis(900), "{bytes:?}");
    }
    assert_eq!(gw.chat("m", false).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_answers_requests_still_waiting_on_an_upstream() {
    let silent = Scripted::start(vec![Step::Hang]);
    let dir = TempDir::new("term-waiting");
    let db = dir.0.join("usage.db");
    let mut gw = Gateway::start(&format!(
        "providers:\n  - {{ name: silent, kind: openai, base_url: \"{}\", api_key: k, timeouts: {{ first_token: 60s }} }}\n\
         models:\n  - {{ name: m, targets: [{{ provider: silent, model: a }}] }}\n\
         plugins:\n  ledger: {{ path: \"{}\" }}\n",
        silent.url(),
        db.display()
    ))
    .await;
    let waiting: Vec<_> = [false, true]
        .into_iter()
        .map(|stream| {
            let request = reqwest::Client::new()
                .post(gw.url("/v1/chat/completions"))
                .header("x-request-id", format!("waiting-{stream}"))
                .json(&chat_body("m", stream));
            tokio::spawn(async move { request.send().await })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || async { silent.requests() == 2 }).await);
    gw.signal("TERM");
    for request in waiting {
        let r = request
            .await
            .unwrap()
            .expect("an answer, not a dropped connection");
        expect_error(r, 503, Some("server_shutting_down")).await;
    }
    assert!(gw.wait_exit(Duration::from_secs(10)), "{}", gw.log());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let statuses: Vec<(String, u16)> = conn
        .prepare("SELECT id, status FROM requests ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        statuses,
        [("waiting-false".into(), 503), ("waiting-true".into(), 503)]
    );
}
