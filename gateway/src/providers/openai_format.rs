//! OpenAI's chat format on the client side: requests into the gateway's model, answers and
//! stream events back out as OpenAI JSON and SSE chunks.

use super::chat::{
    str_field, ChatRequest, ChatResponse, Message, Part, Role, StreamEvent, Tool, ToolCall, Usage,
};
use crate::error::GatewayError;
use bytes::{BufMut, BytesMut};
use serde_json::{json, Map, Value};

fn bad(message: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest {
        message: message.into(),
        param: Some("messages"),
    }
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn parts_of(content: &Value) -> Vec<Part> {
    match content {
        Value::String(s) => vec![Part::Text(s.clone())],
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .map(|t| Part::Text(t.into())),
                Some("image_url") => p
                    .pointer("/image_url/url")
                    .and_then(Value::as_str)
                    .map(|url| Part::Image { url: url.into() }),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// An OpenAI chat completions request body, in the gateway's model.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, GatewayError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("The request body is not valid JSON: {e}.")))?;
    let object = value
        .as_object()
        .ok_or_else(|| bad("Expected a JSON object."))?;
    let messages = object
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be an array."))?;
    let mut request = ChatRequest {
        model: str_field(object, "model").to_string(),
        max_tokens: object
            .get("max_completion_tokens")
            .or_else(|| object.get("max_tokens"))
            .and_then(Value::as_u64),
        temperature: object.get("temperature").and_then(Value::as_f64),
        top_p: object.get("top_p").and_then(Value::as_f64),
        stream: object
            .get("stream")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        include_usage: value
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        tool_choice: object.get("tool_choice").cloned(),
        ..ChatRequest::default()
    };
    request.stop = match object.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    };
    if let Some(tools) = object.get("tools").and_then(Value::as_array) {
        for tool in tools {
            let function = tool
                .get("function")
                .and_then(Value::as_object)
                .ok_or_else(|| GatewayError::BadRequest {
                    message: "Each tool needs a `function`.".into(),
                    param: Some("tools"),
                })?;
            request.tools.push(Tool {
                name: str_field(function, "name").to_string(),
                description: function
                    .get("description")
                    .and_then(Value::as_str)
                    .map(String::from),
                parameters: function
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            });
        }
    }
    let mut system: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let m = m
            .as_object()
            .ok_or_else(|| bad(format!("messages[{i}] must be an object.")))?;
        let content = m.get("content").unwrap_or(&Value::Null);
        let role = match str_field(m, "role") {
            "system" | "developer" => {
                system.push(text_of(content));
                continue;
            }
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => return Err(bad(format!("messages[{i}].role: unknown role {other:?}."))),
        };
        let tool_calls = m
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(|calls| {
                calls
                    .iter()
                    .map(|c| ToolCall {
                        id: c
                            .get("id")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        name: c
                            .pointer("/function/name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        arguments: c
                            .pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or("{}")
                            .to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        request.messages.push(Message {
            role,
            parts: parts_of(content),
            tool_calls,
            tool_call_id: m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .map(String::from),
        });
    }
    if !system.is_empty() {
        request.system = Some(system.join("\n\n"));
    }
    Ok(request)
}

fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.input + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input},
    })
}

fn tool_calls_json(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect()
}

/// A whole answer as an OpenAI `chat.completion`.
pub fn render_response(response: &ChatResponse, created: u64) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    message.insert(
        "content".into(),
        if response.text.is_empty() && !response.tool_calls.is_empty() {
            Value::Null
        } else {
            json!(response.text)
        },
    );
    if !response.tool_calls.is_empty() {
        message.insert("tool_calls".into(), tool_calls_json(&response.tool_calls));
    }
    json!({
        "id": response.id,
        "object": "chat.completion",
        "created": created,
        "model": response.model,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": response.finish.openai()}],
        "usage": usage_json(response.usage),
    })
}

/// Writes stream events as OpenAI `chat.completion.chunk` SSE events.
pub struct StreamRenderer {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    usage: Option<Usage>,
    started: bool,
    failed: bool,
}

impl StreamRenderer {
    pub fn new(model: &str, created: u64, include_usage: bool) -> StreamRenderer {
        StreamRenderer {
            id: String::new(),
            model: model.to_string(),
            created,
            include_usage,
            usage: None,
            started: false,
            failed: false,
        }
    }

    fn chunk(&self, out: &mut BytesMut, choices: Value, usage: Option<Value>) {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        write_data(out, &chunk.to_string());
    }

    fn delta(&self, out: &mut BytesMut, delta: Value, finish: Option<&str>) {
        self.chunk(
            out,
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
            None,
        );
    }

    pub fn render(&mut self, event: StreamEvent, out: &mut BytesMut) {
        if self.failed {
            return;
        }
        if !self.started {
            if let StreamEvent::Start { id, model } = &event {
                self.id = id.clone();
                if !model.is_empty() {
                    self.model = model.clone();
                }
            }
            self.started = true;
            self.delta(out, json!({"role": "assistant", "content": ""}), None);
            if matches!(event, StreamEvent::Start { .. }) {
                return;
            }
        }
        match event {
            StreamEvent::Start { .. } => {}
            StreamEvent::Text(text) => self.delta(out, json!({"content": text}), None),
            StreamEvent::ToolCallStart { index, id, name } => self.delta(
                out,
                json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            ),
            StreamEvent::ToolCallArguments { index, fragment } => self.delta(
                out,
                json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                None,
            ),
            StreamEvent::Finish(reason) => self.delta(out, json!({}), Some(reason.openai())),
            StreamEvent::Usage(usage) => self.usage = Some(usage),
            StreamEvent::Error { message } => {
                self.failed = true;
                let error = json!({"error": {"message": message, "type": "upstream_error", "code": "upstream_stream_error"}});
                write_data(out, &error.to_string());
            }
        }
    }

    /// The end of the stream: the usage chunk when asked for, then `[DONE]` (not after an
    /// error, which ends the stream itself).
    pub fn finish(&mut self, out: &mut BytesMut) {
        if self.failed {
            return;
        }
        if self.include_usage {
            let usage = usage_json(self.usage.unwrap_or_default());
            self.chunk(out, json!([]), Some(usage));
        }
        write_data(out, "[DONE]");
    }
}

fn write_data(out: &mut BytesMut, data: &str) {
    out.reserve(data.len() + 8);
    out.put_slice(b"data: ");
    out.put_slice(data.as_bytes());
    out.put_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::chat::FinishReason;

    #[test]
    fn parses_roles_parts_tools_and_system() {
        let body = json!({
            "model": "m", "max_tokens": 99, "stop": "END", "stream": true,
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [{"type": "text", "text": "What is here?"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
            ],
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
        });
        let r = parse_request(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(r.system.as_deref(), Some("Be terse."));
        assert_eq!(r.max_tokens, Some(99));
        assert_eq!(r.stop, ["END"]);
        assert_eq!(r.messages.len(), 3);
        assert_eq!(
            r.messages[0].parts[1],
            Part::Image {
                url: "https://x/y.png".into()
            }
        );
        assert_eq!(r.messages[1].tool_calls[0].arguments, "{\"q\":1}");
        assert_eq!(r.messages[2].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(r.tools[0].name, "look");
        assert!(
            parse_request(br#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#)
                .is_err()
        );
    }

    #[test]
    fn renders_chunks_usage_and_done() {
        let mut r = StreamRenderer::new("m", 7, true);
        let mut out = BytesMut::new();
        for e in [
            StreamEvent::Start {
                id: "msg_1".into(),
                model: "claude".into(),
            },
            StreamEvent::Text("Hi".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                id: "t1".into(),
                name: "f".into(),
            },
            StreamEvent::ToolCallArguments {
                index: 0,
                fragment: "{\"a\":".into(),
            },
            StreamEvent::Finish(FinishReason::ToolCalls),
            StreamEvent::Usage(Usage {
                input: 3,
                cached_input: 0,
                output: 5,
            }),
        ] {
            r.render(e, &mut out);
        }
        r.finish(&mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        let data: Vec<&str> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .collect();
        assert_eq!(data.last(), Some(&"[DONE]"));
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[0]["model"], "claude");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(
            chunks[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
        assert!(chunks[4]["usage"].is_null());
        assert_eq!(chunks[5]["usage"]["total_tokens"], 8);
        assert_eq!(chunks[5]["choices"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn an_error_ends_the_stream_without_done() {
        let mut r = StreamRenderer::new("m", 1, false);
        let mut out = BytesMut::new();
        r.render(StreamEvent::Text("a".into()), &mut out);
        r.render(
            StreamEvent::Error {
                message: "Overloaded".into(),
            },
            &mut out,
        );
        r.finish(&mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            text.contains("\"error\"") && !text.contains("[DONE]"),
            "{text}"
        );
    }
}
