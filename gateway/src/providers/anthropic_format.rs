//! Anthropic's Messages format on the client side (`POST /v1/messages`): requests into the
//! gateway's model, answers and stream events back out as Anthropic JSON and SSE events, so
//! an Anthropic SDK can be served by any target.

use super::anthropic;
use super::chat::{
    ChatRequest, ChatResponse, FinishReason, Message, Part, Role, StreamEvent, Tool, Usage,
};
use crate::error::GatewayError;
use bytes::BytesMut;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tollgate_plugins::sse::encode_data;

fn bad(message: impl Into<String>, param: &'static str) -> GatewayError {
    GatewayError::BadRequest {
        message: message.into(),
        param: Some(param),
    }
}

fn block_text(block: &Value) -> Option<String> {
    block.get("text").and_then(Value::as_str).map(String::from)
}

fn image_url(block: &Value) -> Option<String> {
    let source = block.get("source")?;
    match source.get("type")?.as_str()? {
        "base64" => Some(format!(
            "data:{};base64,{}",
            source.get("media_type")?.as_str()?,
            source.get("data")?.as_str()?
        )),
        "url" => Some(source.get("url")?.as_str()?.to_string()),
        _ => None,
    }
}

/// Tool results may carry a string or text blocks.
fn result_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(block_text)
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A Messages API request body, in the gateway's model.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, GatewayError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad(
            format!("The request body is not valid JSON: {e}."),
            "messages",
        )
    })?;
    let messages = value
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be an array.", "messages"))?;
    let max_tokens = value
        .get("max_tokens")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("`max_tokens` is required.", "max_tokens"))?;
    let system = match value.get("system") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(blocks)) => Some(
            blocks
                .iter()
                .filter_map(block_text)
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    };
    let mut request = ChatRequest {
        model: value
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        system,
        max_tokens: Some(max_tokens),
        temperature: value.get("temperature").and_then(Value::as_f64),
        top_p: value.get("top_p").and_then(Value::as_f64),
        stop: value
            .get("stop_sequences")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        stream: value
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        ..ChatRequest::default()
    };
    for tool in value
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        request.tools.push(Tool {
            name: tool
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            description: tool
                .get("description")
                .and_then(Value::as_str)
                .map(String::from),
            parameters: tool
                .get("input_schema")
                .cloned()
                .unwrap_or_else(|| json!({"type": "object"})),
        });
    }
    request.tool_choice = value
        .get("tool_choice")
        .and_then(|c| match c.get("type")?.as_str()? {
            "auto" => Some(json!("auto")),
            "any" => Some(json!("required")),
            "none" => Some(json!("none")),
            "tool" => Some(json!({"type": "function", "function": {"name": c.get("name")?}})),
            _ => None,
        });
    for (i, m) in messages.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            other => {
                return Err(bad(
                    format!("messages[{i}].role: expected user or assistant, got {other:?}."),
                    "messages",
                ))
            }
        };
        let blocks = match m.get("content") {
            Some(Value::String(s)) => vec![json!({"type": "text", "text": s})],
            Some(Value::Array(blocks)) => blocks.clone(),
            _ => Vec::new(),
        };
        let mut message = Message {
            role,
            parts: Vec::new(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        };
        for block in &blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => message.parts.extend(block_text(block).map(Part::Text)),
                Some("image") => message
                    .parts
                    .extend(image_url(block).map(|url| Part::Image { url })),
                Some("tool_use") => message.tool_calls.push(anthropic::tool_call(block)),
                // Each tool result becomes its own tool turn, as OpenAI-style providers expect.
                Some("tool_result") => request.messages.push(Message {
                    role: Role::Tool,
                    parts: vec![Part::Text(result_text(block.get("content")))],
                    tool_calls: Vec::new(),
                    tool_call_id: block
                        .get("tool_use_id")
                        .and_then(Value::as_str)
                        .map(String::from),
                }),
                _ => {}
            }
        }
        if !message.parts.is_empty() || !message.tool_calls.is_empty() {
            request.messages.push(message);
        }
    }
    Ok(request)
}

fn stop_reason(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::ContentFilter => "refusal",
    }
}

/// Anthropic's `input_tokens` leaves cached tokens out; the gateway's `input` counts them.
fn usage_json(usage: Usage) -> Value {
    json!({
        "input_tokens": usage.input.saturating_sub(usage.cached_input),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_input,
        "output_tokens": usage.output,
    })
}

fn message_id(id: &str) -> String {
    if id.is_empty() {
        format!("msg_{:016x}", fastrand::u64(..))
    } else {
        id.to_string()
    }
}

/// A whole answer as an Anthropic `message`.
pub fn render_response(response: &ChatResponse, model: &str) -> Value {
    let mut content = Vec::new();
    if !response.text.is_empty() {
        content.push(json!({"type": "text", "text": response.text}));
    }
    for call in &response.tool_calls {
        let input: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
        content.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
    }
    json!({
        "id": message_id(&response.id),
        "type": "message",
        "role": "assistant",
        "model": if response.model.is_empty() { model } else { &response.model },
        "content": content,
        "stop_reason": stop_reason(response.finish),
        "stop_sequence": null,
        "usage": usage_json(response.usage),
    })
}

/// An error in Anthropic's shape, for `/v1/messages` clients.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Writes stream events as Anthropic's Messages stream events.
pub struct StreamRenderer {
    model: String,
    started: bool,
    /// The content block being written, if one is open: (index, is text).
    open: Option<(usize, bool)>,
    next_block: usize,
    /// Tool calls of the answer so far, by number: (id, name, arguments).
    tool_calls: BTreeMap<usize, (String, String, String)>,
    finish: Option<FinishReason>,
    usage: Usage,
    failed: bool,
}

impl StreamRenderer {
    pub fn new(model: &str) -> StreamRenderer {
        StreamRenderer {
            model: model.to_string(),
            started: false,
            open: None,
            next_block: 0,
            tool_calls: BTreeMap::new(),
            finish: None,
            usage: Usage::default(),
            failed: false,
        }
    }

    fn event(out: &mut BytesMut, kind: &str, data: Value) {
        encode_data(out, Some(kind), &data.to_string());
    }

    fn start(&mut self, id: &str, model: &str, out: &mut BytesMut) {
        self.started = true;
        let model = if model.is_empty() {
            self.model.clone()
        } else {
            model.to_string()
        };
        Self::event(
            out,
            "message_start",
            json!({"type": "message_start", "message": {
                "id": message_id(id), "type": "message", "role": "assistant", "content": [],
                "model": model, "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            Self::event(
                out,
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open_block(&mut self, out: &mut BytesMut, block: Value, text: bool) -> usize {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        Self::event(
            out,
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        self.open = Some((index, text));
        index
    }

    pub fn render(&mut self, event: StreamEvent, out: &mut BytesMut) {
        if self.failed {
            return;
        }
        if !self.started {
            match &event {
                StreamEvent::Start { id, model } => {
                    let (id, model) = (id.clone(), model.clone());
                    self.start(&id, &model, out);
                    return;
                }
                _ => self.start("", "", out),
            }
        }
        match event {
            StreamEvent::Start { .. } => {}
            StreamEvent::Text(text) => {
                let index = match self.open {
                    Some((index, true)) => index,
                    _ => self.open_block(out, json!({"type": "text", "text": ""}), true),
                };
                Self::event(
                    out,
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
                );
            }
            // Providers may interleave the argument fragments of parallel calls, while an
            // Anthropic client accepts deltas for the open block only: calls are collected and
            // written whole, each as one block, when the answer ends.
            StreamEvent::ToolCallStart { index, id, name } => {
                self.tool_calls.insert(index, (id, name, String::new()));
            }
            StreamEvent::ToolCallArguments { index, fragment } => {
                if let Some((_, _, arguments)) = self.tool_calls.get_mut(&index) {
                    arguments.push_str(&fragment);
                }
            }
            StreamEvent::Finish(reason) => self.finish = Some(reason),
            StreamEvent::Usage(usage) => self.usage = usage,
            StreamEvent::Error { message } => {
                self.failed = true;
                Self::event(out, "error", error_body("api_error", &message));
            }
        }
    }

    /// The end of the stream: close the open block, then `message_delta` and `message_stop`.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if self.failed {
            return;
        }
        if !self.started {
            self.start("", "", out);
        }
        for (id, name, arguments) in std::mem::take(&mut self.tool_calls).into_values() {
            let index = self.open_block(
                out,
                json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                false,
            );
            if !arguments.is_empty() {
                Self::event(
                    out,
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                );
            }
        }
        self.close_block(out);
        let usage = usage_json(self.usage);
        Self::event(
            out,
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason(self.finish.unwrap_or(FinishReason::Stop)), "stop_sequence": null},
                   "usage": usage}),
        );
        Self::event(out, "message_stop", json!({"type": "message_stop"}));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::chat::ToolCall;
    use tollgate_plugins::sse::SseParser;

    #[test]
    fn parses_system_blocks_tools_and_results() {
        let body = json!({
            "model": "claude", "max_tokens": 100, "system": [{"type": "text", "text": "Terse."}],
            "stop_sequences": ["X"], "tool_choice": {"type": "tool", "name": "w"},
            "tools": [{"name": "w", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {"c": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
            ],
        });
        let r = parse_request(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(r.system.as_deref(), Some("Terse."));
        assert_eq!(r.max_tokens, Some(100));
        assert_eq!(
            r.messages[0].parts[1],
            Part::Image {
                url: "data:image/png;base64,AAA".into()
            }
        );
        assert_eq!(r.messages[1].tool_calls[0].arguments, r#"{"c":1}"#);
        assert_eq!(r.messages[2].role, Role::Tool);
        assert_eq!(r.messages[2].tool_call_id.as_deref(), Some("t1"));
        assert_eq!(
            r.tool_choice,
            Some(json!({"type": "function", "function": {"name": "w"}}))
        );
        assert!(
            parse_request(br#"{"model":"m","messages":[]}"#).is_err(),
            "max_tokens is required"
        );
    }

    #[test]
    fn renders_a_message_with_anthropic_usage() {
        let r = render_response(
            &ChatResponse {
                id: String::new(),
                model: "gpt-4o".into(),
                text: "Hi".into(),
                tool_calls: vec![ToolCall {
                    id: "c".into(),
                    name: "f".into(),
                    arguments: "{\"a\":1}".into(),
                }],
                finish: FinishReason::ToolCalls,
                usage: Usage {
                    input: 10,
                    cached_input: 4,
                    output: 3,
                },
            },
            "fallback",
        );
        assert!(r["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(r["stop_reason"], "tool_use");
        assert_eq!(r["content"][1]["input"], json!({"a": 1}));
        assert_eq!(r["usage"]["input_tokens"], 6);
        assert_eq!(r["usage"]["cache_read_input_tokens"], 4);
    }

    #[test]
    fn stream_events_come_out_in_anthropic_order() {
        let mut r = StreamRenderer::new("m");
        let mut out = BytesMut::new();
        for e in [
            StreamEvent::Start {
                id: "chatcmpl-1".into(),
                model: "gpt-4o".into(),
            },
            StreamEvent::Text("Hel".into()),
            StreamEvent::Text("lo".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "c1".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallArguments {
                index: 0,
                fragment: "{}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input: 5,
                cached_input: 0,
                output: 7,
            }),
        ] {
            r.render(e, &mut out);
        }
        r.finish(&mut out);
        let mut kinds = Vec::new();
        let mut last = Value::Null;
        SseParser::new().feed(&out, |e| {
            kinds.push(e.event.unwrap().to_string());
            last = serde_json::from_str(e.data).unwrap();
            if e.event == Some("message_delta") {
                assert_eq!(last["delta"]["stop_reason"], "tool_use");
                assert_eq!(last["usage"]["output_tokens"], 7);
            }
        });
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
    }

    #[test]
    fn interleaved_parallel_calls_still_make_valid_blocks() {
        let mut r = StreamRenderer::new("m");
        let mut out = BytesMut::new();
        for e in [
            StreamEvent::ToolCallStart {
                index: 0,
                id: "a".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallStart {
                index: 1,
                id: "b".into(),
                name: "g".into(),
            },
            StreamEvent::ToolCallArguments {
                index: 0,
                fragment: "{\"x\":".into(),
            },
            StreamEvent::ToolCallArguments {
                index: 1,
                fragment: "{}".into(),
            },
            StreamEvent::ToolCallArguments {
                index: 0,
                fragment: "1}".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
        ] {
            r.render(e, &mut out);
        }
        r.finish(&mut out);
        let mut open: Option<u64> = None;
        let mut inputs: Vec<String> = Vec::new();
        SseParser::new().feed(&out, |e| {
            let v: Value = serde_json::from_str(e.data).unwrap();
            match e.event.unwrap() {
                "content_block_start" => {
                    assert!(open.is_none());
                    open = v["index"].as_u64();
                    inputs.push(String::new());
                }
                "content_block_delta" => {
                    assert_eq!(v["index"].as_u64(), open, "a delta for a closed block");
                    inputs
                        .last_mut()
                        .unwrap()
                        .push_str(v["delta"]["partial_json"].as_str().unwrap());
                }
                "content_block_stop" => open = None,
                _ => {}
            }
        });
        assert_eq!(inputs, [r#"{"x":1}"#, "{}"]);
    }
}
