//! `POST /v1/chat/completions`.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;

use super::request::{messages_tokens, ChatRequest};
use super::stream::{self, ChunkFormat};
use super::{answer_delay, invalid_json, missing, new_id, stream_plan, stream_usage};
use super::{unix_now, StreamUsage, Usage};
use crate::body::{json, sse_json, MockResponse};
use crate::config::MockConfig;
use crate::state::Shared;
use crate::text::{cap_tokens, completion_text, Finish};

pub(crate) async fn handle(
    shared: &Arc<Shared>,
    cfg: &MockConfig,
    body: &[u8],
    deployment: Option<String>,
) -> MockResponse {
    let running = shared.start_running();
    let req: ChatRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return invalid_json(&e),
    };
    let gen = req.generation();
    // Azure paths name the model by their deployment.
    let Some(model) = req.model.or(deployment) else {
        return missing("model");
    };
    let Some(messages) = req.messages else {
        return missing("messages");
    };
    let (tokens, finish) = cap_tokens(cfg.completion_tokens, gen.token_limit);
    let usage = Usage::new(messages_tokens(&messages), tokens);
    let chunks = ChatChunks {
        id: new_id("chatcmpl-"),
        created: unix_now(),
        model,
        include_usage: gen.include_usage,
    };
    if gen.stream {
        let plan = stream_plan(cfg, tokens, finish, usage);
        return stream::start(shared, chunks, plan, running);
    }
    answer_delay(cfg).await;
    let content = completion_text(tokens);
    json(
        StatusCode::OK,
        &ChatCompletion {
            id: &chunks.id,
            object: "chat.completion",
            created: chunks.created,
            model: &chunks.model,
            choices: [Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: &content,
                    refusal: None,
                },
                logprobs: (),
                finish_reason: finish.as_str(),
            }],
            usage,
        },
    )
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [Choice<'a>; 1],
    usage: Usage,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    /// Always null.
    logprobs: (),
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
    refusal: Option<&'a str>,
}

/// Renders `chat.completion.chunk` events of one answer.
struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: StreamUsage,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    /// Always null.
    logprobs: (),
    finish_reason: Option<&'static str>,
}

#[derive(Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

impl ChatChunks {
    fn event(&self, choices: &[ChunkChoice<'_>], usage: Option<Usage>) -> Bytes {
        sse_json(&Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage: stream_usage(self.include_usage, usage),
        })
    }

    fn choice_event(&self, delta: Delta<'_>, finish_reason: Option<&'static str>) -> Bytes {
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs: (),
            finish_reason,
        };
        self.event(&[choice], None)
    }
}

impl ChunkFormat for ChatChunks {
    fn opening(&self) -> Option<Bytes> {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(""),
        };
        Some(self.choice_event(delta, None))
    }

    fn token(&self, piece: &str) -> Bytes {
        let delta = Delta {
            role: None,
            content: Some(piece),
        };
        self.choice_event(delta, None)
    }

    fn finish(&self, reason: Finish) -> Bytes {
        self.choice_event(Delta::default(), Some(reason.as_str()))
    }

    fn usage(&self, usage: Usage) -> Option<Bytes> {
        self.include_usage.then(|| self.event(&[], Some(usage)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(event: &Bytes) -> Value {
        let text = std::str::from_utf8(event).unwrap();
        let payload = text
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        serde_json::from_str(payload).unwrap()
    }

    fn chunks(include_usage: bool) -> ChatChunks {
        ChatChunks {
            id: "chatcmpl-x".into(),
            created: 7,
            model: "m".into(),
            include_usage,
        }
    }

    #[test]
    fn chunk_shapes_without_usage() {
        let c = chunks(false);
        assert_eq!(
            parse(&c.opening().unwrap()),
            json!({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 7, "model": "m",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "logprobs": null, "finish_reason": null}]})
        );
        assert_eq!(
            parse(&c.token(" hi"))["choices"][0]["delta"],
            json!({"content": " hi"})
        );
        let finish = parse(&c.finish(Finish::Stop));
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert!(finish.get("usage").is_none());
        assert!(c.usage(Usage::new(1, 2)).is_none());
    }

    #[test]
    fn chunk_shapes_with_usage() {
        let c = chunks(true);
        assert_eq!(parse(&c.token("a"))["usage"], Value::Null);
        assert!(parse(&c.token("a"))
            .as_object()
            .unwrap()
            .contains_key("usage"));
        let usage = parse(&c.usage(Usage::new(1, 2)).unwrap());
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
        );
    }
}
