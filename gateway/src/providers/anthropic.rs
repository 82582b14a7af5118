//! Anthropic's Messages API on the provider side: the gateway's request out as a Messages
//! body, answers and stream events back into the gateway's model.

use super::chat::{
    str_field, ChatRequest, ChatResponse, FinishReason, Message, Part, Role, StreamEvent, ToolCall,
    Usage,
};
use super::Provider;
use crate::upstream::Endpoint;
use pingora::http::RequestHeader;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub const API_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; this applies when neither client nor target sets one.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// `POST {prefix}/v1/messages` with Anthropic's credential and version headers.
pub fn request_header(
    provider: &Provider,
    endpoint: &Endpoint,
    body_len: usize,
) -> pingora::Result<RequestHeader> {
    let path = format!("{}/v1/messages", endpoint.prefix);
    let mut req = super::json_post(endpoint, &path, body_len)?;
    req.insert_header("anthropic-version", API_VERSION)?;
    super::insert_credential(&mut req, provider)?;
    Ok(req)
}

fn image_block(url: &str) -> Value {
    // `data:image/png;base64,....` becomes an inline source; anything else a URL source.
    match url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
    {
        Some((media_type, data)) => {
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        None => json!({"type": "image", "source": {"type": "url", "url": url}}),
    }
}

fn content_blocks(message: &Message) -> Vec<Value> {
    let mut blocks: Vec<Value> = message
        .parts
        .iter()
        .filter(|p| !matches!(p, Part::Text(t) if t.is_empty()))
        .map(|p| match p {
            Part::Text(t) => json!({"type": "text", "text": t}),
            Part::Image { url } => image_block(url),
        })
        .collect();
    for call in &message.tool_calls {
        let input: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
        blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
    }
    blocks
}

/// The Messages API body for `request`, sent as `upstream_model`.
pub fn request_body(request: &ChatRequest, upstream_model: &str, max_tokens_default: u64) -> Value {
    let mut messages: Vec<Value> = Vec::new();
    for message in &request.messages {
        let (role, blocks) = match message.role {
            Role::User => ("user", content_blocks(message)),
            Role::Assistant => ("assistant", content_blocks(message)),
            Role::Tool => {
                let text: String = message
                    .parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Text(t) => Some(t.as_str()),
                        Part::Image { .. } => None,
                    })
                    .collect();
                let result = json!({
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id.as_deref().unwrap_or(""),
                    "content": text,
                });
                ("user", vec![result])
            }
        };
        // Anthropic wants alternating turns: consecutive same-role turns merge.
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(existing) = last["content"].as_array_mut() {
                    existing.extend(blocks);
                }
            }
            _ => messages.push(json!({"role": role, "content": blocks})),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert(
        "max_tokens".into(),
        json!(request.max_tokens.unwrap_or(max_tokens_default)),
    );
    if let Some(system) = &request.system {
        body.insert("system".into(), json!(system));
    }
    body.insert("messages".into(), Value::Array(messages));
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    if request.stream {
        body.insert("stream".into(), json!(true));
    }
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let mut tool = json!({"name": t.name, "input_schema": t.parameters});
                if let Some(d) = &t.description {
                    tool["description"] = json!(d);
                }
                tool
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        let choice = match &request.tool_choice {
            Some(Value::String(s)) if s == "required" => Some(json!({"type": "any"})),
            Some(Value::String(s)) if s == "none" => Some(json!({"type": "none"})),
            Some(Value::Object(o)) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .map(|name| json!({"type": "tool", "name": name})),
            _ => None,
        };
        if let Some(choice) = choice {
            body.insert("tool_choice".into(), choice);
        }
    }
    Value::Object(body)
}

fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// Anthropic's `input_tokens` excludes cached tokens; the gateway's `input` includes them.
pub(crate) fn usage(value: &Value, previous: Usage) -> Usage {
    let n = |key: &str| value.get(key).and_then(Value::as_u64);
    let cached = n("cache_read_input_tokens");
    let input = n("input_tokens")
        .map(|i| i + n("cache_creation_input_tokens").unwrap_or(0) + cached.unwrap_or(0));
    Usage {
        input: input.unwrap_or(previous.input),
        cached_input: cached.unwrap_or(previous.cached_input),
        output: n("output_tokens").unwrap_or(previous.output),
    }
}

/// A `tool_use` content block as a call; its `input` object becomes OpenAI-style JSON text.
pub(crate) fn tool_call(block: &Value) -> ToolCall {
    let field = |key: &str| {
        block
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    ToolCall {
        id: field("id"),
        name: field("name"),
        arguments: block
            .get("input")
            .map_or_else(|| "{}".to_string(), Value::to_string),
    }
}

/// A Messages API answer in the gateway's model.
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in object
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => tool_calls.push(tool_call(block)),
            _ => {}
        }
    }
    Ok(ChatResponse {
        id: str_field(object, "id").to_string(),
        model: str_field(object, "model").to_string(),
        text,
        tool_calls,
        finish: finish_reason(str_field(object, "stop_reason")),
        usage: usage(
            object.get("usage").unwrap_or(&Value::Null),
            Usage::default(),
        ),
    })
}

/// An Anthropic error body's message and type, for the OpenAI-shaped error the client gets.
pub fn error_message(body: &[u8]) -> Option<(String, String)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    Some((
        error.get("message")?.as_str()?.to_string(),
        error
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("api_error")
            .to_string(),
    ))
}

/// Turns Messages API stream events into the gateway's stream events.
#[derive(Default)]
pub struct StreamParser {
    usage: Usage,
    /// Content block index → tool call number, for blocks that are tool calls.
    tool_blocks: HashMap<u64, usize>,
}

impl StreamParser {
    pub fn on_event(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        let Ok(value) = serde_json::from_str::<Value>(data) else {
            return;
        };
        match value.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                let message = value.get("message").cloned().unwrap_or(Value::Null);
                self.usage = usage(message.get("usage").unwrap_or(&Value::Null), self.usage);
                out.push(StreamEvent::Start {
                    id: message
                        .get("id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    model: message
                        .get("model")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
            }
            "content_block_start" => {
                let block = &value["content_block"];
                if block["type"] == "tool_use" {
                    let index = self.tool_blocks.len();
                    self.tool_blocks
                        .insert(value["index"].as_u64().unwrap_or(0), index);
                    out.push(StreamEvent::ToolCallStart {
                        index,
                        id: block["id"].as_str().unwrap_or("").to_string(),
                        name: block["name"].as_str().unwrap_or("").to_string(),
                    });
                }
            }
            "content_block_delta" => {
                let delta = &value["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => out.push(StreamEvent::Text(
                        delta["text"].as_str().unwrap_or("").to_string(),
                    )),
                    Some("input_json_delta") => {
                        let fragment = delta["partial_json"].as_str().unwrap_or("");
                        let block = value["index"].as_u64().unwrap_or(0);
                        if let (Some(&index), false) =
                            (self.tool_blocks.get(&block), fragment.is_empty())
                        {
                            out.push(StreamEvent::ToolCallArguments {
                                index,
                                fragment: fragment.to_string(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                self.usage = usage(value.get("usage").unwrap_or(&Value::Null), self.usage);
                if let Some(reason) = value["delta"]["stop_reason"].as_str() {
                    out.push(StreamEvent::Finish(finish_reason(reason)));
                }
                out.push(StreamEvent::Usage(self.usage));
            }
            "error" => out.push(StreamEvent::Error {
                message: value["error"]["message"]
                    .as_str()
                    .unwrap_or("upstream error")
                    .to_string(),
            }),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::openai_format::parse_request;

    #[test]
    fn request_maps_system_tools_and_tool_results() {
        let openai = json!({
            "model": "m", "stop": ["X"], "tool_choice": "required",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c2", "content": "warm"},
            ],
            "tools": [{"type": "function", "function": {"name": "w", "description": "weather", "parameters": {"type": "object"}}}],
        });
        let request = parse_request(&serde_json::to_vec(&openai).unwrap()).unwrap();
        let body = request_body(&request, "claude-sonnet-4-5", DEFAULT_MAX_TOKENS);
        assert_eq!(body["model"], "claude-sonnet-4-5");
        assert_eq!(body["max_tokens"], 4096);
        assert_eq!(body["system"], "Be terse.");
        assert_eq!(body["stop_sequences"], json!(["X"]));
        assert_eq!(body["tool_choice"], json!({"type": "any"}));
        assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(
            messages.len(),
            3,
            "the two tool results merge into one user turn"
        );
        assert_eq!(messages[1]["content"][0]["input"], json!({"city": "Paris"}));
        assert_eq!(messages[2]["content"][1]["tool_use_id"], "c2");
    }

    #[test]
    fn response_normalises_usage_and_stop_reason() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude","content":[{"type":"text","text":"Hi"},{"type":"tool_use","id":"t","name":"f","input":{"a":1}}],"stop_reason":"tool_use","usage":{"input_tokens":10,"cache_creation_input_tokens":2,"cache_read_input_tokens":3,"output_tokens":7}}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(r.text, "Hi");
        assert_eq!(r.tool_calls[0].arguments, r#"{"a":1}"#);
        assert_eq!(r.finish, FinishReason::ToolCalls);
        assert_eq!(
            r.usage,
            Usage {
                input: 15,
                cached_input: 3,
                output: 7
            }
        );
    }

    #[test]
    fn stream_events_translate() {
        let mut p = StreamParser::default();
        let mut out = Vec::new();
        for data in [
            r#"{"type":"message_start","message":{"id":"msg_1","model":"claude","usage":{"input_tokens":11,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type": "ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"locati"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"on\": \"Paris\"}"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":65}}"#,
            r#"{"type":"message_stop"}"#,
        ] {
            p.on_event(data, &mut out);
        }
        assert_eq!(
            out[0],
            StreamEvent::Start {
                id: "msg_1".into(),
                model: "claude".into()
            }
        );
        assert_eq!(out[1], StreamEvent::Text("Hello".into()));
        assert_eq!(
            out[2],
            StreamEvent::ToolCallStart {
                index: 0,
                id: "toolu_1".into(),
                name: "get_weather".into()
            }
        );
        let args: String = out
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallArguments { fragment, .. } => Some(fragment.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            serde_json::from_str::<Value>(&args).unwrap(),
            json!({"location": "Paris"})
        );
        assert_eq!(
            out[out.len() - 2],
            StreamEvent::Finish(FinishReason::ToolCalls)
        );
        assert_eq!(
            out[out.len() - 1],
            StreamEvent::Usage(Usage {
                input: 11,
                cached_input: 0,
                output: 65
            })
        );

        let mut errors = Vec::new();
        p.on_event(
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &mut errors,
        );
        assert_eq!(
            errors,
            [StreamEvent::Error {
                message: "Overloaded".into()
            }]
        );
    }
}
