//! Anthropic's wire shapes: an answer as a whole message or as stream
//! events, and error bodies.

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;

use crate::body::{json, sse_named, MockResponse};
use crate::errors::OVERLOADED;
use crate::state::ReportedUsage;
use crate::stream::StreamFormat;
use crate::text::{
    completion_text, token_piece, Answer, Finish, ToolArgs, TOOL_ARGS, TOOL_ARGS_PIECES,
    TOOL_ARGS_TOKENS,
};

/// The id of the canned tool call's `tool_use` block.
const TOOL_USE_ID: &str = "toolu_mock1";

/// The text block before the canned tool call, one piece per token.
const LEAD_IN: [&str; 3] = ["Let", " me", " check."];

/// Output tokens of the canned tool-call answer, which `max_tokens` does
/// not cut: the call always arrives whole.
const TOOL_ANSWER_TOKENS: u32 = LEAD_IN.len() as u32 + TOOL_ARGS_TOKENS;

/// `{"type":"error","error":{"type":...,"message":...}}` with the error
/// type Anthropic uses for `status`.
pub(crate) fn error(status: StatusCode, message: &str) -> MockResponse {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        OVERLOADED => "overloaded_error",
        500.. => "api_error",
        _ => "invalid_request_error",
    };
    json(
        status,
        &Event::Error {
            error: ErrorDetail { kind, message },
        },
    )
}

/// One answer, rendered whole or as stream events.
pub(super) struct MessageEvents {
    pub(super) id: String,
    pub(super) model: String,
    pub(super) input_tokens: u32,
    pub(super) answer: Answer,
}

impl MessageEvents {
    pub(super) fn output_tokens(&self) -> u32 {
        match self.answer {
            Answer::Text { tokens, .. } => tokens,
            Answer::ToolCall { .. } => TOOL_ANSWER_TOKENS,
        }
    }

    fn stop_reason(&self) -> &'static str {
        match self.answer {
            Answer::Text {
                finish: Finish::Stop,
                ..
            } => "end_turn",
            Answer::Text {
                finish: Finish::Length,
                ..
            } => "max_tokens",
            Answer::ToolCall { .. } => "tool_use",
        }
    }

    fn message<'a>(
        &'a self,
        content: Vec<Block<'a>>,
        stop_reason: Option<&'static str>,
        output_tokens: u32,
    ) -> MessageObject<'a> {
        MessageObject {
            id: &self.id,
            kind: "message",
            role: "assistant",
            model: &self.model,
            content,
            stop_reason,
            stop_sequence: (),
            usage: Usage {
                input_tokens: self.input_tokens,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 0,
                output_tokens,
            },
        }
    }

    /// The non-stream answer.
    pub(super) fn whole(&self) -> MessageObject<'_> {
        let content = match &self.answer {
            Answer::Text { tokens, .. } => vec![Block::Text {
                text: completion_text(*tokens),
            }],
            Answer::ToolCall { name } => vec![
                Block::Text {
                    text: LEAD_IN.concat(),
                },
                tool_use(name, Input::Args(TOOL_ARGS)),
            ],
        };
        self.message(content, Some(self.stop_reason()), self.output_tokens())
    }
}

fn tool_use(name: &str, input: Input) -> Block<'_> {
    Block::ToolUse {
        id: TOOL_USE_ID,
        name,
        input,
    }
}

fn text_delta(text: &str) -> Bytes {
    Event::ContentBlockDelta {
        index: 0,
        delta: Delta::TextDelta { text },
    }
    .sse()
}

impl StreamFormat for MessageEvents {
    fn opening(&self, out: &mut Vec<Bytes>) {
        // Anthropic reports one output token at the start.
        let message = self.message(Vec::new(), None, 1);
        out.push(Event::MessageStart { message }.sse());
        let content_block = Block::Text {
            text: String::new(),
        };
        out.push(
            Event::ContentBlockStart {
                index: 0,
                content_block,
            }
            .sse(),
        );
        out.push(Event::Ping.sse());
    }

    fn token(&self, i: u32, out: &mut Vec<Bytes>) {
        let Answer::ToolCall { name } = &self.answer else {
            out.push(text_delta(token_piece(i)));
            return;
        };
        let Some(arg) = i.checked_sub(LEAD_IN.len() as u32) else {
            out.push(text_delta(LEAD_IN[i as usize]));
            return;
        };
        if arg == 0 {
            out.push(Event::ContentBlockStop { index: 0 }.sse());
            let content_block = tool_use(name, Input::Streamed {});
            out.push(
                Event::ContentBlockStart {
                    index: 1,
                    content_block,
                }
                .sse(),
            );
        }
        let delta = Delta::InputJsonDelta {
            partial_json: TOOL_ARGS_PIECES[arg as usize],
        };
        out.push(Event::ContentBlockDelta { index: 1, delta }.sse());
    }

    fn closing(&self, out: &mut Vec<Bytes>) {
        let index = match self.answer {
            Answer::Text { .. } => 0,
            Answer::ToolCall { .. } => 1,
        };
        out.push(Event::ContentBlockStop { index }.sse());
        let delta = StopDelta {
            stop_reason: self.stop_reason(),
            stop_sequence: (),
        };
        let usage = OutputUsage {
            output_tokens: self.output_tokens(),
        };
        out.push(Event::MessageDelta { delta, usage }.sse());
        out.push(Event::MessageStop.sse());
    }

    /// `message_start` reports the input and one output token; `message_delta` the rest.
    fn reported_usage(&self, delivered: u32, completed: bool) -> Option<ReportedUsage> {
        let output = if completed { self.output_tokens() } else { 1 };
        (delivered > 0).then_some(ReportedUsage {
            input: self.input_tokens,
            output,
        })
    }

    fn error_event(&self) -> Option<Bytes> {
        let error = ErrorDetail {
            kind: "overloaded_error",
            message: "Overloaded",
        };
        Some(Event::Error { error }.sse())
    }
}

/// Stream events, whose `type` is also their SSE event name. `Error` is
/// also the body of error answers.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart {
        message: MessageObject<'a>,
    },
    ContentBlockStart {
        index: u32,
        content_block: Block<'a>,
    },
    Ping,
    ContentBlockDelta {
        index: u32,
        delta: Delta<'a>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: StopDelta,
        usage: OutputUsage,
    },
    MessageStop,
    Error {
        error: ErrorDetail<'a>,
    },
}

impl Event<'_> {
    fn sse(&self) -> Bytes {
        let name = match self {
            Event::MessageStart { .. } => "message_start",
            Event::ContentBlockStart { .. } => "content_block_start",
            Event::Ping => "ping",
            Event::ContentBlockDelta { .. } => "content_block_delta",
            Event::ContentBlockStop { .. } => "content_block_stop",
            Event::MessageDelta { .. } => "message_delta",
            Event::MessageStop => "message_stop",
            Event::Error { .. } => "error",
        };
        sse_named(name, self)
    }
}

#[derive(Serialize)]
pub(super) struct MessageObject<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block<'a>>,
    stop_reason: Option<&'static str>,
    /// Always null: the mock never stops on a stop sequence.
    stop_sequence: (),
    usage: Usage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: String,
    },
    ToolUse {
        id: &'static str,
        name: &'a str,
        input: Input,
    },
}

/// A `tool_use` block's input: whole, or `{}` where a stream opens the
/// block and sends the input as JSON deltas.
#[derive(Serialize)]
#[serde(untagged)]
enum Input {
    Streamed {},
    Args(ToolArgs),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Delta<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: (),
}

#[derive(Serialize)]
struct Usage {
    input_tokens: u32,
    cache_creation_input_tokens: u32,
    cache_read_input_tokens: u32,
    output_tokens: u32,
}

/// `message_delta`'s usage: cumulative output tokens.
#[derive(Serialize)]
struct OutputUsage {
    output_tokens: u32,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream;
    use http_body_util::BodyExt;
    use serde_json::{json, Value};

    fn events(answer: Answer) -> MessageEvents {
        MessageEvents {
            id: "msg_x".into(),
            model: "claude-test".into(),
            input_tokens: 11,
            answer,
        }
    }

    /// Each event as (name, data), checking the framing and that the name
    /// matches the data's `type`.
    async fn run(events: &MessageEvents) -> Vec<(String, Value)> {
        let raw = stream::collect(events, events.output_tokens()).await;
        raw.iter()
            .map(|event| {
                let text = std::str::from_utf8(event).unwrap();
                let (name, data) = text
                    .strip_prefix("event: ")
                    .and_then(|t| t.strip_suffix("\n\n"))
                    .and_then(|t| t.split_once("\ndata: "))
                    .unwrap_or_else(|| panic!("not one named event: {text:?}"));
                let data: Value = serde_json::from_str(data).unwrap();
                assert_eq!(data["type"], name);
                (name.to_owned(), data)
            })
            .collect()
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[tokio::test]
    async fn text_stream_events() {
        let answer = Answer::Text {
            tokens: 3,
            finish: Finish::Stop,
        };
        let events = run(&events(answer)).await;
        assert_eq!(
            names(&events),
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            events[0].1,
            json!({"type": "message_start", "message": {
                "id": "msg_x", "type": "message", "role": "assistant", "model": "claude-test",
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 11, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0, "output_tokens": 1}}})
        );
        assert_eq!(
            events[1].1,
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(events[2].1, json!({"type": "ping"}));
        assert_eq!(
            events[4].1,
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": " from"}})
        );
        assert_eq!(
            events[6].1,
            json!({"type": "content_block_stop", "index": 0})
        );
        assert_eq!(
            events[7].1,
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                   "usage": {"output_tokens": 3}})
        );
        assert_eq!(events[8].1, json!({"type": "message_stop"}));
    }

    #[tokio::test]
    async fn tool_use_stream_events() {
        let answer = Answer::ToolCall {
            name: "get_weather".into(),
        };
        let events = run(&events(answer)).await;
        let mut expected = vec!["message_start", "content_block_start", "ping"];
        expected.extend(["content_block_delta"; 3]);
        expected.extend(["content_block_stop", "content_block_start"]);
        expected.extend(["content_block_delta"; 5]);
        expected.extend(["content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(names(&events), expected);

        let text: String = events[3..6]
            .iter()
            .map(|(_, e)| e["delta"]["text"].as_str().unwrap())
            .collect();
        assert_eq!(text, "Let me check.");
        assert_eq!(
            events[7].1,
            json!({"type": "content_block_start", "index": 1, "content_block":
                {"type": "tool_use", "id": "toolu_mock1", "name": "get_weather", "input": {}}})
        );
        let mut partial = String::new();
        for (_, e) in &events[8..13] {
            assert_eq!(e["index"], 1);
            assert_eq!(e["delta"]["type"], "input_json_delta");
            partial.push_str(e["delta"]["partial_json"].as_str().unwrap());
        }
        let input: Value = serde_json::from_str(&partial).unwrap();
        assert_eq!(input, json!({"location": "Paris"}));
        assert_eq!(
            events[13].1,
            json!({"type": "content_block_stop", "index": 1})
        );
        assert_eq!(events[14].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[14].1["usage"]["output_tokens"], 8);
    }

    #[test]
    fn whole_answers() {
        let text = events(Answer::Text {
            tokens: 2,
            finish: Finish::Length,
        });
        assert_eq!(
            serde_json::to_value(text.whole()).unwrap(),
            json!({"id": "msg_x", "type": "message", "role": "assistant", "model": "claude-test",
                   "content": [{"type": "text", "text": "Hello from"}],
                   "stop_reason": "max_tokens", "stop_sequence": null,
                   "usage": {"input_tokens": 11, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": 2}})
        );
        let tool = events(Answer::ToolCall { name: "f".into() });
        let whole = serde_json::to_value(tool.whole()).unwrap();
        assert_eq!(
            whole["content"],
            json!([{"type": "text", "text": "Let me check."},
                   {"type": "tool_use", "id": "toolu_mock1", "name": "f",
                    "input": {"location": "Paris"}}])
        );
        assert_eq!(whole["stop_reason"], "tool_use");
    }

    #[test]
    fn error_event_shape() {
        let event = events(Answer::ToolCall { name: "f".into() })
            .error_event()
            .unwrap();
        assert_eq!(
            &event[..],
            b"event: error\ndata: {\"type\":\"error\",\"error\":\
              {\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n"
        );
    }

    #[tokio::test]
    async fn error_types_by_status() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (404, "not_found_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (529, "overloaded_error"),
        ] {
            let resp = error(StatusCode::from_u16(status).unwrap(), "m");
            assert_eq!(resp.status(), status);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                body,
                json!({"type": "error", "error": {"type": kind, "message": "m"}})
            );
        }
    }
}
