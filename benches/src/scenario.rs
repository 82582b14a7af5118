//! What each scenario sends, and the check that a path really answered it.

use bytes::Bytes;
use serde_json::{json, Value};

/// Size of the `large` scenario's user message: well past Pingora's 64 KiB replay buffer.
pub const LARGE_PROMPT_BYTES: usize = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Small,
    Large,
    Stream,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Small, Scenario::Large, Scenario::Stream];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Small => "small",
            Scenario::Large => "large",
            Scenario::Stream => "stream",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Small => "~200 B chat request, non-stream",
            Scenario::Large => "1 MiB prompt, non-stream",
            Scenario::Stream => "~200 B chat request, SSE stream read to [DONE]",
        }
    }

    /// The JSON request body; `model` differs per path because only Tollgate maps
    /// its public model name to the provider's.
    pub fn body(self, model: &str) -> Bytes {
        let prompt = match self {
            Scenario::Large => filler_text(LARGE_PROMPT_BYTES),
            Scenario::Small | Scenario::Stream => {
                "Summarise why a gateway adds latency, in one sentence.".to_owned()
            }
        };
        let mut body = json!({
            "model": model,
            "messages": [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": prompt},
            ],
            "max_tokens": 16,
        });
        if self == Scenario::Stream {
            body["stream"] = Value::Bool(true);
        }
        Bytes::from(body.to_string())
    }

    /// Accepts only a real completion, so a broken path cannot report good numbers.
    pub fn check(self, status: u16, body: &[u8]) -> Result<(), String> {
        let shown = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        if status != 200 {
            return Err(format!("status {status}, body: {}", shown()));
        }
        let first_json = match self {
            Scenario::Small | Scenario::Large => body,
            Scenario::Stream => {
                let text = std::str::from_utf8(body).map_err(|_| "stream is not UTF-8")?;
                if !text.trim_end().ends_with("data: [DONE]") {
                    return Err(format!(
                        "stream does not end with data: [DONE]: {}",
                        shown()
                    ));
                }
                text.lines()
                    .find_map(|line| line.strip_prefix("data: ").filter(|d| d.starts_with('{')))
                    .ok_or_else(|| format!("stream has no JSON event: {}", shown()))?
                    .as_bytes()
            }
        };
        let value: Value = serde_json::from_slice(first_json)
            .map_err(|e| format!("invalid JSON ({e}): {}", shown()))?;
        match value.get("choices").and_then(Value::as_array) {
            Some(choices) if !choices.is_empty() => Ok(()),
            _ => Err(format!("no \"choices\" in the answer: {}", shown())),
        }
    }
}

/// Plain ASCII prose of exactly `len` bytes, so the JSON needs no escaping.
fn filler_text(len: usize) -> String {
    const SENTENCE: &str =
        "The quick brown fox jumps over the lazy dog while the gateway counts tokens. ";
    let mut text = SENTENCE.repeat(len / SENTENCE.len() + 1);
    text.truncate(len);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &Bytes) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn small_body_is_about_200_bytes() {
        let body = Scenario::Small.body("mock-gpt");
        assert!((150..=250).contains(&body.len()), "{} bytes", body.len());
        let v = parse(&body);
        assert_eq!(v["model"], "mock-gpt");
        assert!(v.get("stream").is_none());
    }

    #[test]
    fn large_body_carries_one_mebibyte_prompt() {
        let v = parse(&Scenario::Large.body("bench-model"));
        assert_eq!(v["model"], "bench-model");
        let prompt = v["messages"][1]["content"].as_str().unwrap();
        assert_eq!(prompt.len(), LARGE_PROMPT_BYTES);
        assert!(v.get("stream").is_none());
    }

    #[test]
    fn stream_body_asks_for_a_stream() {
        assert_eq!(parse(&Scenario::Stream.body("m"))["stream"], true);
    }

    #[test]
    fn check_accepts_a_completion() {
        let ok = br#"{"id":"x","choices":[{"index":0,"message":{"content":"hi"}}]}"#;
        assert_eq!(Scenario::Small.check(200, ok), Ok(()));
        assert!(Scenario::Small.check(502, ok).is_err());
        assert!(Scenario::Large.check(200, br#"{"choices":[]}"#).is_err());
        assert!(Scenario::Small.check(200, br#"{"error":{}}"#).is_err());
        assert!(Scenario::Small.check(200, b"not json").is_err());
    }

    #[test]
    fn check_wants_a_whole_stream() {
        let event = r#"data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}"#;
        let whole = format!("{event}\n\ndata: [DONE]\n\n");
        assert_eq!(Scenario::Stream.check(200, whole.as_bytes()), Ok(()));
        let cut = format!("{event}\n\n");
        assert!(Scenario::Stream.check(200, cut.as_bytes()).is_err());
        assert!(Scenario::Stream.check(200, b"data: [DONE]\n\n").is_err());
    }
}
