//! The recent-request ring behind `GET /mock/requests`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use http::request::Parts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How many requests the ring keeps.
pub(crate) const RECORD_CAPACITY: usize = 1000;

/// One request as a test sees it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Recorded {
    method: String,
    path: String,
    query: Option<String>,
    /// Lowercased names; repeated headers are joined with ", ".
    headers: BTreeMap<String, String>,
    body_sha256: String,
    body_bytes: usize,
    /// The model the path names (Gemini, Triton), otherwise the body's
    /// top-level `model` when it is a JSON string.
    model: Option<String>,
    /// The body's `stream_options`, to see what a gateway asked a stream to report.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<serde_json::Value>,
}

impl Recorded {
    pub(crate) fn new(parts: &Parts, body: &Bytes, path_model: Option<&str>) -> Self {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        let fields = body_fields(body);
        Recorded {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers,
            body_sha256: hex::encode(Sha256::digest(body)),
            body_bytes: body.len(),
            model: path_model.map(str::to_owned).or(fields.model),
            stream_options: fields.stream_options,
        }
    }
}

/// The top-level body fields a recording keeps.
#[derive(Default, Deserialize)]
struct BodyFields {
    model: Option<String>,
    stream_options: Option<serde_json::Value>,
}

fn body_fields(body: &[u8]) -> BodyFields {
    serde_json::from_slice(body).unwrap_or_default()
}

/// A bounded, oldest-first log of requests.
pub(crate) struct Recorder {
    capacity: usize,
    ring: Mutex<VecDeque<Recorded>>,
}

#[derive(Serialize)]
struct RequestsBody<'a> {
    requests: &'a VecDeque<Recorded>,
}

impl Recorder {
    pub(crate) fn new(capacity: usize) -> Self {
        Recorder {
            capacity,
            ring: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    pub(crate) fn push(&self, entry: Recorded) {
        let mut ring = self.lock();
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// `{"requests":[...]}`, oldest first.
    pub(crate) fn to_json(&self) -> Vec<u8> {
        let ring = self.lock();
        serde_json::to_vec(&RequestsBody { requests: &ring })
            .expect("recorded requests always serialize")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Recorded>> {
        // A panic while holding the lock cannot leave the ring inconsistent.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn request(path: &str, body: &'static str) -> (Parts, Bytes) {
        let (parts, ()) = http::Request::post(path)
            .header("Authorization", "Bearer k")
            .header("X-Dup", "a")
            .header("X-Dup", "b")
            .body(())
            .unwrap()
            .into_parts();
        (parts, Bytes::from_static(body.as_bytes()))
    }

    #[test]
    fn records_request_shape() {
        let (parts, body) = request("/v1/chat/completions?x=1", r#"{"model":"m","messages":[]}"#);
        let rec = serde_json::to_value(Recorded::new(&parts, &body, None)).unwrap();
        assert_eq!(rec["method"], "POST");
        assert_eq!(rec["path"], "/v1/chat/completions");
        assert_eq!(rec["query"], "x=1");
        assert_eq!(rec["headers"]["authorization"], "Bearer k");
        assert_eq!(rec["headers"]["x-dup"], "a, b");
        assert_eq!(rec["body_bytes"], body.len());
        assert_eq!(rec["body_sha256"], hex::encode(Sha256::digest(&body)));
        assert_eq!(rec["model"], "m");

        let (parts, body) = request("/v1/models", "not json");
        let rec = serde_json::to_value(Recorded::new(&parts, &body, None)).unwrap();
        assert_eq!(rec["query"], Value::Null);
        assert_eq!(rec["model"], Value::Null);

        let (parts, body) = request("/v2/models/t/generate", r#"{"model":"body"}"#);
        let rec = serde_json::to_value(Recorded::new(&parts, &body, Some("t"))).unwrap();
        assert_eq!(rec["model"], "t");
    }

    #[test]
    fn ring_keeps_the_newest() {
        let recorder = Recorder::new(3);
        for i in 0..5 {
            let (parts, body) = request(&format!("/r{i}"), "");
            recorder.push(Recorded::new(&parts, &body, None));
        }
        let json: Value = serde_json::from_slice(&recorder.to_json()).unwrap();
        let paths: Vec<&str> = json["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/r2", "/r3", "/r4"]);

        recorder.clear();
        let json: Value = serde_json::from_slice(&recorder.to_json()).unwrap();
        assert_eq!(json["requests"], serde_json::json!([]));
    }
}
