//! A minimal HTTP/1.1 client over raw TCP, so the tests see exactly what the
//! mock puts on the wire (chunk boundaries, missing terminators).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_mock::{spawn, MockConfig};

/// Starts a mock on an ephemeral loopback port.
pub fn start(cfg: MockConfig) -> SocketAddr {
    spawn("127.0.0.1:0".parse().unwrap(), cfg).unwrap().addr()
}

pub struct Reply {
    pub status: u16,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    /// HTTP chunks as sent, or the whole body as one entry.
    pub chunks: Vec<Vec<u8>>,
    /// Whether the body ended properly (final chunk or full length).
    pub complete: bool,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body()).expect("JSON body")
    }
}

/// The raw bytes of a request that asks the server to close afterwards.
pub fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: mock\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("content-type: application/json\r\n");
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends one request and reads the reply until the server closes.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut headers = headers.to_vec();
    headers.push(("connection", "close"));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&raw_request(method, path, &headers, body))
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("reply within 10s")
        .unwrap();
    parse_reply(&raw)
}

pub async fn get_json(addr: SocketAddr, path: &str) -> Value {
    send(addr, "GET", path, &[], b"").await.json()
}

pub async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    send(addr, "POST", path, &[], body.to_string().as_bytes()).await
}

fn parse_reply(raw: &[u8]) -> Reply {
    let end = find(raw, b"\r\n\r\n").expect("complete response head");
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked");
    let (chunks, complete) = if chunked {
        decode_chunked(rest)
    } else {
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(rest.len(), |(_, v)| v.parse().unwrap());
        (vec![rest.to_vec()], rest.len() == length)
    };
    Reply {
        status,
        headers,
        chunks,
        complete,
    }
}

/// Splits a chunked body into its chunks; `true` when the final chunk came.
fn decode_chunked(mut rest: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut chunks = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else {
            return (chunks, false);
        };
        let size_text = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.trim(), 16).unwrap();
        let data = &rest[line_end + 2..];
        if size == 0 {
            return (chunks, data.starts_with(b"\r\n"));
        }
        if data.len() < size + 2 {
            return (chunks, false);
        }
        chunks.push(data[..size].to_vec());
        rest = &data[size + 2..];
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The JSON payloads of SSE events, `None` for `[DONE]`. Panics unless each
/// HTTP chunk holds exactly one event.
pub fn sse_events(reply: &Reply) -> Vec<Option<Value>> {
    reply
        .chunks
        .iter()
        .map(|chunk| {
            let text = std::str::from_utf8(chunk).unwrap();
            let payload = text
                .strip_prefix("data: ")
                .and_then(|t| t.strip_suffix("\n\n"))
                .unwrap_or_else(|| panic!("not one SSE event: {text:?}"));
            assert!(!payload.contains("\n\n"), "two events in one chunk");
            (payload != "[DONE]").then(|| serde_json::from_str(payload).unwrap())
        })
        .collect()
}

/// Each HTTP chunk as text: the tests of named and CRLF-framed events
/// parse these themselves.
pub fn chunk_texts(reply: &Reply) -> Vec<String> {
    reply
        .chunks
        .iter()
        .map(|chunk| String::from_utf8(chunk.clone()).unwrap())
        .collect()
}

/// Opens a stream and returns the connection once the first event arrived.
pub async fn open_stream(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = raw_request("POST", path, headers, body.to_string().as_bytes());
    stream.write_all(&req).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while find(&seen, b"data: ").is_none() {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("first event within 5s")
            .unwrap();
        assert!(n > 0, "server closed before the first event");
        seen.extend_from_slice(&buf[..n]);
    }
    stream
}

/// Polls `/mock/stats` until `key` reaches `want` (or fails after 5s).
pub async fn wait_for_stat(addr: SocketAddr, key: &str, want: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = get_json(addr, "/mock/stats").await;
        if stats[key] == want {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never reached {want}: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
