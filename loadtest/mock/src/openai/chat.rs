//! `POST /v1/chat/completions`.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;

use super::request::{messages_text, messages_tokens, ChatRequest};
use super::{invalid_json, missing, stream_usage, unix_micros, unix_now, StreamUsage, Usage};
use crate::body::{json, sse_json, MockResponse, SSE_DONE};
use crate::config::MockConfig;
use crate::state::{ReportedUsage, Shared};
use crate::stream::{self, Plan, StreamFormat};
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
        continuous_usage: gen.continuous_usage,
        stamp: cfg.stamp_chunks,
        finish,
        usage,
    };
    let plan = Plan::generation(shared, cfg, tokens, usage.prompt_tokens, || {
        messages_text(&messages)
    });
    if gen.stream {
        return stream::start(shared, chunks, plan, running);
    }
    plan.whole_answer().await;
    shared.stats.report_usage(usage.reported());
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
    continuous_usage: bool,
    /// Whether chunks carry `mock_sent_us`.
    stamp: bool,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    mock_sent_us: Option<u64>,
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
            mock_sent_us: self.stamp.then(unix_micros),
        })
    }

    /// `generated`: tokens so far, for the running usage of `continuous_usage_stats`.
    fn choice_event(
        &self,
        delta: Delta<'_>,
        finish_reason: Option<&'static str>,
        generated: u32,
    ) -> Bytes {
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs: (),
            finish_reason,
        };
        let running = self
            .continuous_usage
            .then(|| Usage::new(self.usage.prompt_tokens, generated));
        self.event(&[choice], running)
    }
}

impl StreamFormat for ChatChunks {
    fn opening(&self, out: &mut Vec<Bytes>) {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(""),
        };
        out.push(self.choice_event(delta, None, 0));
    }

    fn token(&self, i: u32, out: &mut Vec<Bytes>) {
        let delta = Delta {
            role: None,
            content: Some(token_piece(i)),
        };
        out.push(self.choice_event(delta, None, i + 1));
    }

    fn closing(&self, out: &mut Vec<Bytes>) {
        let tokens = self.usage.completion_tokens;
        out.push(self.choice_event(Delta::default(), Some(self.finish.as_str()), tokens));
        if self.include_usage {
            out.push(self.event(&[], Some(self.usage)));
        }
        out.push(Bytes::from_static(SSE_DONE));
    }

    fn reported_usage(&self, delivered: u32, completed: bool) -> Option<ReportedUsage> {
        if completed && self.include_usage {
            return Some(self.usage.reported());
        }
        // The opening chunk, then one chunk per token, each with the running count.
        let generated = delivered.checked_sub(1)?.min(self.usage.completion_tokens);
        self.continuous_usage
            .then(|| Usage::new(self.usage.prompt_tokens, generated).reported())
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
            continuous_usage: false,
            stamp: false,
            id: "chatcmpl-x".into(),
            created: 7,
            model: "m".into(),
            include_usage,
            finish: Finish::Stop,
            usage: Usage::new(1, 2),
        }
    }

    #[tokio::test]
    async fn stamped_chunks_carry_the_time_they_were_rendered() {
        let before = unix_micros();
        let stamped = stream::collect(
            &ChatChunks {
                stamp: true,
                ..chunks(true)
            },
            2,
        )
        .await;
        let after = unix_micros();
        // Opening, two tokens, finish, usage; then [DONE], which is not JSON.
        assert_eq!(stamped.len(), 6);
        for event in &stamped[..5] {
            let sent = parse(event)["mock_sent_us"].as_u64().unwrap();
            assert!(
                (before..=after).contains(&sent),
                "{sent} not in {before}..={after}"
            );
        }
        let plain = stream::collect(&chunks(true), 2).await;
        assert!(plain[..5]
            .iter()
            .all(|e| parse(e).get("mock_sent_us").is_none()));
    }

    #[tokio::test]
    async fn continuous_usage_runs_on_every_chunk_and_counts_what_was_sent() {
        let format = ChatChunks {
            continuous_usage: true,
            ..chunks(true)
        };
        let events = stream::collect(&format, 2).await;
        // role, 2 tokens, finish, usage, [DONE]
        let running: Vec<Value> = events[..4]
            .iter()
            .map(|e| parse(e)["usage"].clone())
            .collect();
        assert_eq!(
            running,
            [0, 1, 2, 2].map(
                |n| json!({"prompt_tokens": 1, "completion_tokens": n, "total_tokens": 1 + n})
            )
        );
        assert_eq!(
            format.reported_usage(2, false),
            Some(ReportedUsage {
                input: 1,
                output: 1
            })
        );
        assert_eq!(format.reported_usage(0, false), None);
        assert_eq!(
            format.reported_usage(6, true),
            Some(ReportedUsage {
                input: 1,
                output: 2
            })
        );
        assert_eq!(chunks(false).reported_usage(3, false), None);
        assert_eq!(chunks(true).reported_usage(3, false), None);
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
