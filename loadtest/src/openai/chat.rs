//! `POST /v1/chat/completions`.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;

use super::request::{messages_tokens, ChatRequest};
use super::{invalid_json, missing, stream_usage, unix_now, StreamUsage, Usage};
use crate::body::{json, sse_json, MockResponse, SSE_DONE};
use crate::config::MockConfig;
use crate::state::Shared;
use crate::stream::{self, answer_delay, Plan, StreamFormat};
use crate::text::{cap_tokens, completion_text, new_id, token_piece, Finish};

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
        finish,
        usage,
    };
    if gen.stream {
        return stream::start(shared, chunks, Plan::new(cfg, tokens), running);
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
    finish: Finish,
    usage: Usage,
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

impl StreamFormat for ChatChunks {
    fn opening(&self, out: &mut Vec<Bytes>) {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(""),
        };
        out.push(self.choice_event(delta, None));
    }

    fn token(&self, i: u32, out: &mut Vec<Bytes>) {
        let delta = Delta {
            role: None,
            content: Some(token_piece(i)),
        };
        out.push(self.choice_event(delta, None));
    }

    fn closing(&self, out: &mut Vec<Bytes>) {
        out.push(self.choice_event(Delta::default(), Some(self.finish.as_str())));
        if self.include_usage {
            out.push(self.event(&[], Some(self.usage)));
        }
        out.push(Bytes::from_static(SSE_DONE));
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
            finish: Finish::Stop,
            usage: Usage::new(1, 2),
        }
    }

    #[tokio::test]
    async fn chunk_shapes_without_usage() {
        let events = stream::collect(&chunks(false), 2).await;
        // role, 2 tokens, finish, [DONE]
        assert_eq!(events.len(), 5);
        assert_eq!(
            parse(&events[0]),
            json!({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 7, "model": "m",
                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "logprobs": null, "finish_reason": null}]})
        );
        assert_eq!(
            parse(&events[2])["choices"][0]["delta"],
            json!({"content": " from"})
        );
        let finish = parse(&events[3]);
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert!(finish.get("usage").is_none());
        assert_eq!(&events[4][..], SSE_DONE);
    }

    #[tokio::test]
    async fn chunk_shapes_with_usage() {
        let events = stream::collect(&chunks(true), 1).await;
        // role, 1 token, finish, usage, [DONE]
        assert_eq!(events.len(), 5);
        assert_eq!(parse(&events[1]).get("usage"), Some(&Value::Null));
        let usage = parse(&events[3]);
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
        );
    }
}
