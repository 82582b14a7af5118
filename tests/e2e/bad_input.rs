//! Bad input, sent as raw bytes: every case gets a 4xx in the error shape of the API it
//! called, never a 5xx, a reset or a hang, and the gateway serves the next request.

use crate::harness::*;
use crate::metering::metric_sum;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "sk-bad-input";

/// Whose error shape an answer must have.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    OpenAi,
    Anthropic,
    /// Malformed HTTP framing, refused by Pingora's parser before any of the gateway's code
    /// runs: a bare status, no body.
    Http,
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    /// Close the sending side once sent (a body that ends early).
    half_close: bool,
    admin: bool,
    status: u16,
    shape: Shape,
}

fn head(method: &str, path: &str, headers: &[(&str, String)]) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n");
    for (name, value) in headers {
        text += &format!("{name}: {value}\r\n");
    }
    text
}

/// A request with a body framed by an honest content-length.
fn request(method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut bytes = head(method, path, headers).into_bytes();
    bytes.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    bytes
}

fn auth() -> Vec<(&'static str, String)> {
    vec![
        ("authorization", format!("Bearer {KEY}")),
        ("content-type", "application/json".into()),
    ]
}

fn chat(body: impl AsRef<[u8]>) -> Vec<u8> {
    request("POST", "/v1/chat/completions", &auth(), body.as_ref())
}

fn messages(body: impl AsRef<[u8]>) -> Vec<u8> {
    let mut headers = auth();
    headers.push(("anthropic-version", "2023-06-01".into()));
    request("POST", "/v1/messages", &headers, body.as_ref())
}

fn deep(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn cases() -> Vec<Case> {
    let case = |name: &str, bytes: Vec<u8>, status: u16, shape: Shape| Case {
        name: name.to_string(),
        bytes,
        half_close: false,
        admin: false,
        status,
        shape,
    };
    let openai = |name: &str, bytes: Vec<u8>, status: u16| case(name, bytes, status, Shape::OpenAi);
    let anthropic =
        |name: &str, bytes: Vec<u8>, status: u16| case(name, bytes, status, Shape::Anthropic);
    let hi = r#"[{"role":"user","content":"hi"}]"#;
    let many_ints = format!("[{}1]", "1,".repeat(100_000));
    let mut all = vec![
        openai("malformed JSON", chat("{not json"), 400),
        openai(
            "truncated JSON",
            chat(format!(r#"{{"model":"m","messages":{}"#, &hi[..20])),
            400,
        ),
        openai("empty body", chat(""), 400),
        openai("an array", chat("[1,2]"), 400),
        openai("a string", chat(r#""hi""#), 400),
        openai("null", chat("null"), 400),
        openai("no model", chat(format!(r#"{{"messages":{hi}}}"#)), 400),
        openai(
            "model a number",
            chat(format!(r#"{{"model":7,"messages":{hi}}}"#)),
            400,
        ),
        openai(
            "model empty",
            chat(format!(r#"{{"model":"","messages":{hi}}}"#)),
            400,
        ),
        openai(
            "model null",
            chat(format!(r#"{{"model":null,"messages":{hi}}}"#)),
            400,
        ),
        openai(
            "stream a string",
            chat(format!(r#"{{"model":"m","stream":"yes","messages":{hi}}}"#)),
            400,
        ),
        openai(
            "max_tokens a string",
            chat(format!(
                r#"{{"model":"m","max_tokens":"ten","messages":{hi}}}"#
            )),
            400,
        ),
        openai(
            "max_tokens negative",
            chat(format!(
                r#"{{"model":"m","max_tokens":-1,"messages":{hi}}}"#
            )),
            400,
        ),
        openai(
            "n zero",
            chat(format!(r#"{{"model":"m","n":0,"messages":{hi}}}"#)),
            400,
        ),
        openai(
            "n huge",
            chat(format!(r#"{{"model":"m","n":100000,"messages":{hi}}}"#)),
            400,
        ),
        openai(
            "stream_options a number",
            chat(format!(
                r#"{{"model":"m","stream_options":3,"messages":{hi}}}"#
            )),
            400,
        ),
        openai("no messages", chat(r#"{"model":"m"}"#), 400),
        openai(
            "messages empty",
            chat(r#"{"model":"m","messages":[]}"#),
            400,
        ),
        openai(
            "messages a string",
            chat(r#"{"model":"m","messages":"hi"}"#),
            400,
        ),
        openai(
            "messages an object",
            chat(r#"{"model":"m","messages":{"role":"user"}}"#),
            400,
        ),
        openai(
            "10,000-deep nesting in a message",
            chat(format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":{}}}]}}"#,
                deep(10_000)
            )),
            400,
        ),
        openai(
            "10,000-deep nesting beside",
            chat(format!(
                r#"{{"model":"m","x":{},"messages":{hi}}}"#,
                deep(10_000)
            )),
            400,
        ),
        openai(
            "100,000 numbers for messages",
            chat(format!(r#"{{"model":"claude","messages":{many_ints}}}"#)),
            400,
        ),
        openai(
            "invalid UTF-8 in a message",
            {
                let mut body = br#"{"model":"m","messages":[{"role":"user","content":""#.to_vec();
                body.extend_from_slice(b"\xff\xfe\"}]}");
                chat(body)
            },
            400,
        ),
        openai(
            "invalid UTF-8 in the model",
            {
                let mut body = br#"{"model":"m"#.to_vec();
                body.extend_from_slice(
                    b"\xc3\x28\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                );
                chat(body)
            },
            400,
        ),
        openai(
            "unknown model",
            chat(format!(r#"{{"model":"nope","messages":{hi}}}"#)),
            404,
        ),
        openai(
            "a 10 KB model name",
            chat(format!(
                r#"{{"model":"{}","messages":{hi}}}"#,
                "x".repeat(10_000)
            )),
            404,
        ),
        openai(
            "wrong key",
            request(
                "POST",
                "/v1/chat/completions",
                &[("authorization", "Bearer sk-wrong".into())],
                br#"{"model":"m"}"#,
            ),
            401,
        ),
        openai(
            "no key",
            request(
                "POST",
                "/v1/chat/completions",
                &[],
                format!(r#"{{"model":"m","messages":{hi}}}"#).as_bytes(),
            ),
            401,
        ),
        openai(
            "a 70 KB authorization header",
            request(
                "POST",
                "/v1/chat/completions",
                &[("authorization", format!("Bearer {}", "k".repeat(70_000)))],
                b"{}",
            ),
            431,
        ),
        openai(
            "100 KB of headers",
            request(
                "POST",
                "/v1/chat/completions",
                &[
                    ("x-padding", "p".repeat(50_000)),
                    ("x-more", "p".repeat(50_000)),
                ],
                b"{}",
            ),
            431,
        ),
        openai(
            "a 100 KB x-request-id",
            request(
                "POST",
                "/v1/chat/completions",
                &[("x-request-id", "r".repeat(100_000))],
                b"{}",
            ),
            431,
        ),
        openai(
            "a body over the limit",
            chat(format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
                "a".repeat(1_100_000)
            )),
            413,
        ),
        openai(
            "a chunked body over the limit",
            {
                let mut bytes = head("POST", "/v1/chat/completions", &auth()).into_bytes();
                bytes.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                for _ in 0..300 {
                    bytes.extend_from_slice(format!("1000\r\n{}\r\n", "a".repeat(4096)).as_bytes());
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
                bytes
            },
            413,
        ),
        openai(
            "a length larger than the body, then silence",
            {
                let mut bytes = head("POST", "/v1/chat/completions", &auth()).into_bytes();
                bytes.extend_from_slice(b"content-length: 500\r\n\r\n{\"model\":\"m\"");
                bytes
            },
            408,
        ),
        openai(
            "malformed chunks",
            {
                let mut bytes = head("POST", "/v1/chat/completions", &auth()).into_bytes();
                bytes.extend_from_slice(b"transfer-encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n");
                bytes
            },
            400,
        ),
        openai(
            "both content-length and chunked",
            {
                let mut bytes = head("POST", "/v1/chat/completions", &auth()).into_bytes();
                bytes.extend_from_slice(
                    b"transfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
                );
                bytes
            },
            400,
        ),
        openai(
            "GET on chat",
            request("GET", "/v1/chat/completions", &auth(), b""),
            405,
        ),
        openai(
            "an unknown path",
            request("POST", "/v1/nothing", &auth(), b"{}"),
            404,
        ),
        openai(
            "dot segments",
            request("GET", "/v1/chat/completions/../models", &auth(), b""),
            404,
        ),
        openai(
            "a double slash",
            request("POST", "//v1/chat/completions", &auth(), b"{}"),
            404,
        ),
        openai(
            "an encoded slash",
            request("POST", "/v1/chat%2Fcompletions", &auth(), b"{}"),
            404,
        ),
        openai(
            "an upper-case path",
            request("POST", "/V1/CHAT/COMPLETIONS", &auth(), b"{}"),
            404,
        ),
        openai(
            "a model lookup with dot segments",
            request("GET", "/v1/models/../../admin/config", &auth(), b""),
            404,
        ),
        anthropic("Messages: malformed JSON", messages("{not json"), 400),
        anthropic("Messages: empty body", messages(""), 400),
        anthropic(
            "Messages: no messages",
            messages(r#"{"model":"claude","max_tokens":5}"#),
            400,
        ),
        anthropic(
            "Messages: messages empty",
            messages(r#"{"model":"claude","max_tokens":5,"messages":[]}"#),
            400,
        ),
        anthropic(
            "Messages: 10,000-deep nesting",
            messages(format!(
                r#"{{"model":"claude","max_tokens":5,"messages":[{{"role":"user","content":{}}}]}}"#,
                deep(10_000)
            )),
            400,
        ),
        anthropic(
            "Messages: unknown model",
            messages(format!(
                r#"{{"model":"nope","max_tokens":5,"messages":{hi}}}"#
            )),
            404,
        ),
        anthropic(
            "Messages: wrong key",
            request(
                "POST",
                "/v1/messages",
                &[("x-api-key", "sk-wrong".into())],
                b"{}",
            ),
            401,
        ),
        anthropic(
            "Messages: bad anthropic-version",
            {
                let mut headers = auth();
                headers.push(("anthropic-version", "1999-01-01".into()));
                request(
                    "POST",
                    "/v1/messages",
                    &headers,
                    format!(r#"{{"model":"claude","max_tokens":5,"messages":{hi}}}"#).as_bytes(),
                )
            },
            400,
        ),
        anthropic(
            "Messages: a body over the limit",
            messages(format!(
                r#"{{"model":"claude","max_tokens":5,"messages":[{{"role":"user","content":"{}"}}]}}"#,
                "a".repeat(1_100_000)
            )),
            413,
        ),
        anthropic(
            "Messages: invalid UTF-8",
            {
                let mut body =
                    br#"{"model":"claude","max_tokens":5,"messages":[{"role":"user","content":""#
                        .to_vec();
                body.extend_from_slice(b"\xff\"}]}");
                messages(body)
            },
            400,
        ),
        case(
            "a CR in x-request-id",
            request(
                "POST",
                "/v1/chat/completions",
                &[("x-request-id", "a\rb".into())],
                b"{}",
            ),
            400,
            Shape::Http,
        ),
        case(
            "a space in a header name",
            request(
                "POST",
                "/v1/chat/completions",
                &[("bad header", "x".into())],
                b"{}",
            ),
            400,
            Shape::Http,
        ),
        case(
            "a 70 KB path",
            request("POST", &format!("/v1/{}", "a".repeat(70_000)), &[], b"{}"),
            400,
            Shape::Http,
        ),
        case(
            "an unknown HTTP version",
            b"GET /v1/models HTTP/9.9\r\nhost: gw\r\n\r\n".to_vec(),
            400,
            Shape::Http,
        ),
        case(
            "CONNECT",
            b"CONNECT gw:443 HTTP/1.1\r\nhost: gw\r\n\r\n".to_vec(),
            405,
            Shape::Http,
        ),
    ];
    let mut short = case(
        "a length larger than the body, then the end",
        {
            let mut bytes = head("POST", "/v1/chat/completions", &auth()).into_bytes();
            bytes.extend_from_slice(b"content-length: 500\r\n\r\n{\"model\":\"m\"}");
            bytes
        },
        400,
        Shape::OpenAi,
    );
    short.half_close = true;
    all.push(short);
    for (name, path, status) in [
        ("admin: no token", "/admin/config", 401),
        (
            "admin: dot segments into admin",
            "/admin/../admin/config",
            401,
        ),
        (
            "admin: dot segments from metrics",
            "/metrics/../admin/config",
            404,
        ),
        ("admin: a double slash", "//admin/config", 404),
        ("admin: upper case", "/ADMIN/config", 404),
        ("admin: an encoded slash", "/admin%2Fconfig", 404),
        ("admin: a NUL", "/admin/config%00", 401),
        ("admin: dashboard without token", "/dashboard", 401),
    ] {
        let mut c = openai(name, request("GET", path, &[], b""), status);
        c.admin = true;
        all.push(c);
    }
    all
}

/// Sends raw bytes and reads the whole answer (the gateway closes: `connection: close`).
async fn exchange(addr: SocketAddr, case: &Case) -> Result<Vec<u8>, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    // The gateway may answer (413, 431) before it has read everything: that is fine.
    let _ = stream.write_all(&case.bytes).await;
    if case.half_close {
        let _ = stream.shutdown().await;
    }
    let mut answer = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await {
        Err(_) => Err(format!(
            "no answer within 10 s (got {} bytes)",
            answer.len()
        )),
        Ok(Err(e)) if answer.is_empty() => Err(format!("reset: {e}")),
        Ok(_) => Ok(answer),
    }
}

fn check(case: &Case, answer: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(answer);
    let status: u16 = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", &text[..text.len().min(200)]))?;
    if status != case.status {
        return Err(format!("status {status}, expected {}: {text}", case.status));
    }
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    match case.shape {
        Shape::Http => Ok(()),
        Shape::OpenAi => {
            let v: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
            let error = &v["error"];
            let ok = error["message"].as_str().is_some_and(|m| !m.is_empty())
                && error["type"].is_string()
                && error.get("code").is_some()
                && error.get("param").is_some();
            ok.then_some(())
                .ok_or(format!("not OpenAI's error shape: {body}"))
        }
        Shape::Anthropic => {
            let v: Value = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
            let ok = v["type"] == "error"
                && v["error"]["type"].is_string()
                && v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty());
            ok.then_some(())
                .ok_or(format!("not Anthropic's error shape: {body}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_gets_a_4xx_in_its_api_shape_and_the_next_request_is_served() {
    let openai = Mock::start(&[]);
    let claude = Mock::start(&["--kind", "anthropic"]);
    let gw = Gateway::start_with(
        &format!(
            "providers:\n{}  - {{ name: claude, kind: anthropic, base_url: \"{}\", api_key: k }}\n\
             models:\n  - {{ name: m, targets: [{{ provider: up, model: gpt-4o }}] }}\n\
             \x20 - {{ name: claude, targets: [{{ provider: claude, model: claude-sonnet-4-5 }}] }}\n\
             keys:\n  - {{ id: app, key: {KEY} }}\n",
            provider("up", &openai.url()),
            claude.url(),
        ),
        "  admin_token: adm-t0ken\n  max_body_bytes: 1MiB\n  client_body_timeout: 1s\n",
    )
    .await;
    let cases = cases();
    let answered_4xx = cases.iter().filter(|c| c.status < 500).count();
    assert!(answered_4xx >= 40, "{answered_4xx} cases");
    let mut failures = Vec::new();
    for case in &cases {
        let addr = if case.admin { gw.admin } else { gw.addr };
        let outcome = exchange(addr, case).await.and_then(|a| check(case, &a));
        eprintln!(
            "bad input: {} -> {} ({:?}): {}",
            case.name,
            case.status,
            case.shape,
            if outcome.is_ok() { "ok" } else { "FAILED" }
        );
        if let Err(why) = outcome {
            failures.push(format!("{}: {why}", case.name));
        }
        // The gateway still serves.
        let r = reqwest::Client::new()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&chat_body("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "after {}", case.name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let metrics = gw.metrics().await;
    let server_errors = metric_sum(&metrics, "tollgate_requests_total", &["status=\"5"]);
    assert_eq!(server_errors, 0.0, "{metrics}");
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}
