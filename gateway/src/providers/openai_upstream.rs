//! OpenAI's chat completions format on the provider side, for OpenAI-compatible upstreams
//! (OpenAI, Azure, vLLM, Ollama) serving clients that speak another format: the gateway's
//! request out as a chat completions body, answers and stream chunks back into the model.

use super::chat::{
    str_field, ChatRequest, ChatResponse, FinishReason, Message, Part, Role, StreamEvent, ToolCall,
    Usage,
};
use serde_json::{json, Map, Value};

fn part_json(part: &Part) -> Value {
    match part {
        Part::Text(text) => json!({"type": "text", "text": text}),
        Part::Image { url } => json!({"type": "image_url", "image_url": {"url": url}}),
    }
}

/// A turn's content: a bare string for a single text part (the form every compatible server
/// accepts), else an array of parts.
fn content_json(parts: &[Part]) -> Value {
    match parts {
        [] => json!(""),
        [Part::Text(text)] => json!(text),
        _ => parts.iter().map(part_json).collect(),
    }
}

/// The text of a tool result; OpenAI's tool messages cannot carry images, so those drop.
fn tool_text(message: &Message) -> String {
    message
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            Part::Image { .. } => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn message_json(message: &Message) -> Value {
    match message.role {
        Role::User => json!({"role": "user", "content": content_json(&message.parts)}),
        Role::Assistant if message.tool_calls.is_empty() => {
            json!({"role": "assistant", "content": content_json(&message.parts)})
        }
        Role::Assistant => {
            // A turn that only calls tools says so with `content: null`, as OpenAI answers it;
            // empty text parts (Anthropic clients send them) would otherwise become "".
            let parts: Vec<Part> = message
                .parts
                .iter()
                .filter(|p| !matches!(p, Part::Text(t) if t.is_empty()))
                .cloned()
                .collect();
            let content = if parts.is_empty() {
                Value::Null
            } else {
                content_json(&parts)
            };
            let calls: Vec<Value> = message
                .tool_calls
                .iter()
                .map(|c| {
                    json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": message.tool_call_id.as_deref().unwrap_or(""),
            "content": tool_text(message),
        }),
    }
}

/// The chat completions body for `request`, sent as `upstream_model`.
pub fn request_body(request: &ChatRequest, upstream_model: &str) -> Value {
    let mut messages: Vec<Value> = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.extend(request.messages.iter().map(message_json));
    let mut body = Map::new();
    body.insert("model".into(), json!(upstream_model));
    body.insert("messages".into(), Value::Array(messages));
    if let Some(n) = request.max_tokens {
        // `max_tokens` is deprecated and rejected by o-series models.
        body.insert("max_completion_tokens".into(), json!(n));
    }
    if let Some(t) = request.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if !request.stop.is_empty() {
        body.insert("stop".into(), json!(request.stop));
    }
    body.insert("stream".into(), json!(request.stream));
    if request.stream {
        // The gateway meters every stream, whatever the client asked to see; without this
        // OpenAI sends no usage at all.
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let mut function = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    function["description"] = json!(d);
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        // Only beside `tools`: OpenAI rejects a `tool_choice` sent without them.
        if let Some(choice) = &request.tool_choice {
            body.insert("tool_choice".into(), choice.clone());
        }
    }
    Value::Object(body)
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

/// Some compatible servers say `stop` for a turn that called tools; clients of other formats
/// decide whether to run tools from the finish reason, so the calls win.
fn finish_with_calls(reason: FinishReason, called_tools: bool) -> FinishReason {
    if reason == FinishReason::Stop && called_tools {
        FinishReason::ToolCalls
    } else {
        reason
    }
}

/// OpenAI's `prompt_tokens` already counts cached tokens, as the gateway's `input` does.
pub(crate) fn usage(value: &Value) -> Usage {
    let n = |pointer: &str| value.pointer(pointer).and_then(Value::as_u64);
    Usage {
        input: n("/prompt_tokens").unwrap_or(0),
        // DeepSeek reports its cache hits under its own name.
        cached_input: n("/prompt_tokens_details/cached_tokens")
            .or_else(|| n("/prompt_cache_hit_tokens"))
            .unwrap_or(0),
        output: n("/completion_tokens").unwrap_or(0),
    }
}

/// The choice for the first (only) completion; `index` rather than position, since with
/// several choices a chunk's array holds whichever advanced.
fn first_choice(object: &Map<String, Value>) -> Option<&Value> {
    object
        .get("choices")?
        .as_array()?
        .iter()
        .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
}

/// Text content given as a string or (by some servers) as an array of text parts.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// Arguments are a JSON text in OpenAI's format; a server that sends an object gets it
/// serialised.
fn arguments_of(call: &Value) -> Option<String> {
    match call.pointer("/function/arguments")? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn tool_call(call: &Value) -> ToolCall {
    let text = |pointer: &str| {
        call.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    ToolCall {
        id: text("/id"),
        name: text("/function/name"),
        arguments: arguments_of(call).unwrap_or_else(|| "{}".to_string()),
    }
}

/// A `chat.completion` answer in the gateway's model.
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    if let Some((message, _)) = error_parts(&value) {
        return Err(message.unwrap_or("upstream error").to_string());
    }
    let object = value.as_object().ok_or("not a JSON object")?;
    let choice = first_choice(object).ok_or("the response has no choices")?;
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut text = text_of(message.get("content"));
    if text.is_empty() {
        // A refusal replaces the content; passing it on beats an empty answer.
        text = message
            .get("refusal")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
    }
    let tool_calls: Vec<ToolCall> = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| calls.iter().map(tool_call).collect())
        .unwrap_or_default();
    let finish = finish_reason(
        choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .unwrap_or(""),
    );
    Ok(ChatResponse {
        id: str_field(object, "id").to_string(),
        model: str_field(object, "model").to_string(),
        text,
        finish: finish_with_calls(finish, !tool_calls.is_empty()),
        tool_calls,
        usage: usage(object.get("usage").unwrap_or(&Value::Null)),
    })
}

/// The message and type of an error-shaped body, when it is one: OpenAI's (and vLLM ≥ 0.10.1's)
/// `{"error":{..}}`, vLLM's older `{"object":"error",..}`, or a bare `{"error":"text"}`.
fn error_parts(value: &Value) -> Option<(Option<&str>, Option<&str>)> {
    let (message, kind) = match value.get("error") {
        Some(Value::Object(error)) => (error.get("message"), error.get("type")),
        Some(Value::String(message)) => return Some((Some(message.as_str()), None)),
        _ if value.get("object").and_then(Value::as_str) == Some("error") => {
            (value.get("message"), value.get("type"))
        }
        _ => return None,
    };
    Some((
        message.and_then(Value::as_str),
        kind.and_then(Value::as_str).filter(|k| !k.is_empty()),
    ))
}

/// An error body's message and type, for the error the client gets.
pub fn error_message(body: &[u8]) -> Option<(String, String)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let (message, kind) = error_parts(&value)?;
    Some((
        message?.to_string(),
        kind.unwrap_or("api_error").to_string(),
    ))
}

/// A tool call begun in this stream: how the upstream keys it, and its id.
struct StreamedCall {
    upstream_index: Option<u64>,
    id: String,
}

/// Turns a chat completions stream's `data:` payloads into the gateway's stream events.
#[derive(Default)]
pub struct ChunkParser {
    started: bool,
    finished: bool,
    /// Calls in the order they began; a call's position is its index in the gateway's events.
    calls: Vec<StreamedCall>,
}

impl ChunkParser {
    pub fn on_event(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        let Ok(value) = serde_json::from_str::<Value>(data) else {
            // `[DONE]` lands here too: the stream's end needs no event of its own.
            return;
        };
        if let Some((message, _)) = error_parts(&value) {
            out.push(StreamEvent::Error {
                message: message.unwrap_or("upstream error").to_string(),
            });
            return;
        }
        let Some(object) = value.as_object() else {
            return;
        };
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: str_field(object, "id").to_string(),
                model: str_field(object, "model").to_string(),
            });
        }
        if let Some(choice) = first_choice(object) {
            let delta = choice.get("delta").unwrap_or(&Value::Null);
            for key in ["content", "refusal"] {
                if let Some(text) = delta.get(key).and_then(Value::as_str) {
                    if !text.is_empty() {
                        out.push(StreamEvent::Text(text.to_string()));
                    }
                }
            }
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.on_tool_call(call, out);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                if !self.finished {
                    self.finished = true;
                    let reason = finish_with_calls(finish_reason(reason), !self.calls.is_empty());
                    out.push(StreamEvent::Finish(reason));
                }
            }
        }
        // Usually a last chunk with empty `choices`; DeepSeek and others put it on the
        // finish chunk, vLLM's continuous stats on every chunk (cumulative either way).
        if let Some(u) = object.get("usage").filter(|u| u.is_object()) {
            out.push(StreamEvent::Usage(usage(u)));
        }
    }

    fn on_tool_call(&mut self, call: &Value, out: &mut Vec<StreamEvent>) {
        let upstream_index = call.get("index").and_then(Value::as_u64);
        let id = call.get("id").and_then(Value::as_str).unwrap_or("");
        let known = match upstream_index {
            Some(k) => self.calls.iter().rposition(|c| c.upstream_index == Some(k)),
            // Without an index (some servers omit it), the id says which call this is, and
            // an entry with neither continues the latest call.
            None if id.is_empty() => self.calls.len().checked_sub(1),
            None => self.calls.iter().rposition(|c| c.id == id),
        };
        // A known index arriving with a new id is a server reusing the index for another call.
        let index = match known {
            Some(i) if id.is_empty() || self.calls[i].id.is_empty() || self.calls[i].id == id => i,
            _ => {
                self.calls.push(StreamedCall {
                    upstream_index,
                    id: id.to_string(),
                });
                let index = self.calls.len() - 1;
                out.push(StreamEvent::ToolCallStart {
                    index,
                    id: id.to_string(),
                    name: call
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
                index
            }
        };
        if let Some(fragment) = arguments_of(call).filter(|a| !a.is_empty()) {
            out.push(StreamEvent::ToolCallArguments { index, fragment });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::openai_format::parse_request;

    fn client_request(body: &Value) -> ChatRequest {
        parse_request(&serde_json::to_vec(body).unwrap()).unwrap()
    }

    #[test]
    fn request_round_trips_through_the_client_parser() {
        let client = json!({
            "model": "alias", "max_completion_tokens": 300, "temperature": 0.2, "top_p": 0.9,
            "stop": ["END", "STOP"],
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "zoom", "arguments": "{}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "tool", "tool_call_id": "call_2", "content": "a big cat"},
                {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": "Thanks"},
            ],
            "tools": [
                {"type": "function", "function": {"name": "look", "description": "Look", "parameters": {"type": "object"}}},
                {"type": "function", "function": {"name": "zoom", "parameters": {"type": "object", "properties": {}}}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "look"}},
        });
        let request = client_request(&client);
        let body = request_body(&request, "gpt-4o-2024-08-06");

        assert_eq!(body["model"], "gpt-4o-2024-08-06");
        assert_eq!(body["max_completion_tokens"], 300);
        assert!(body.get("max_tokens").is_none());
        assert_eq!(body["stream"], false);
        assert!(body.get("stream_options").is_none());
        assert_eq!(body["stop"], json!(["END", "STOP"]));
        assert_eq!(body["tool_choice"], client["tool_choice"]);
        assert_eq!(body["tools"], client["tools"]);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 7);
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Be terse."})
        );
        assert_eq!(messages[1], client["messages"][1]);
        assert_eq!(messages[2], client["messages"][2]);
        assert_eq!(messages[3], client["messages"][3]);
        assert_eq!(messages[5], client["messages"][5]);
        assert_eq!(messages[6], client["messages"][6]);

        // Parsing what the upstream gets yields the same request, the model aside.
        let mut again = client_request(&body);
        again.model = request.model.clone();
        assert_eq!(again, request);
    }

    #[test]
    fn streaming_forces_usage_and_maps_the_deprecated_limit() {
        let request = client_request(&json!({
            "model": "m", "stream": true, "max_tokens": 64, "tool_choice": "none",
            "messages": [{"role": "user", "content": "Hi"}],
        }));
        assert!(!request.include_usage);
        let body = request_body(&request, "llama3");
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        assert_eq!(body["max_completion_tokens"], 64);
        assert!(body.get("max_tokens").is_none());
        assert!(body.get("tools").is_none() && body.get("tool_choice").is_none());
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "Hi"}]),
            "no system message when there is none"
        );
        assert!(body.get("temperature").is_none() && body.get("stop").is_none());
    }

    #[test]
    fn assistant_and_tool_turns_from_other_formats() {
        // What an Anthropic client's turns become: empty text beside tool calls, several
        // text blocks, a tool result with an image the tool message cannot carry.
        let request = ChatRequest {
            messages: vec![
                Message {
                    role: Role::Assistant,
                    parts: vec![Part::Text(String::new())],
                    tool_calls: vec![ToolCall {
                        id: "toolu_1".into(),
                        name: "f".into(),
                        arguments: "{}".into(),
                    }],
                    tool_call_id: None,
                },
                Message {
                    role: Role::Tool,
                    parts: vec![
                        Part::Text("one".into()),
                        Part::Image {
                            url: "https://x/y.png".into(),
                        },
                        Part::Text("two".into()),
                    ],
                    tool_calls: Vec::new(),
                    tool_call_id: Some("toolu_1".into()),
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![Part::Text("a".into()), Part::Text("b".into())],
                    tool_calls: Vec::new(),
                    tool_call_id: None,
                },
            ],
            ..ChatRequest::default()
        };
        let body = request_body(&request, "m");
        assert_eq!(body["messages"][0]["content"], Value::Null);
        assert_eq!(body["messages"][0]["tool_calls"][0]["id"], "toolu_1");
        assert_eq!(
            body["messages"][1],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "one\ntwo"})
        );
        assert_eq!(
            body["messages"][2]["content"],
            json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
        );
    }

    #[test]
    fn response_text_and_usage_with_cached_tokens() {
        let body = br#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1919,"completion_tokens":10,"total_tokens":1929,"prompt_tokens_details":{"cached_tokens":1792,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"service_tier":"default"}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(
            r,
            ChatResponse {
                id: "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT".into(),
                model: "gpt-4o-2024-08-06".into(),
                text: "Hello! How can I assist you today?".into(),
                tool_calls: Vec::new(),
                finish: FinishReason::Stop,
                usage: Usage {
                    input: 1919,
                    cached_input: 1792,
                    output: 10
                },
            }
        );
    }

    #[test]
    fn response_tool_calls() {
        let body = br#"{"id":"chatcmpl-abc123","object":"chat.completion","created":1699896916,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_abc123","type":"function","function":{"name":"get_current_weather","arguments":"{\n\"location\": \"Boston, MA\"\n}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":82,"completion_tokens":17,"total_tokens":99}}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(r.text, "");
        assert_eq!(
            r.tool_calls,
            [ToolCall {
                id: "call_abc123".into(),
                name: "get_current_weather".into(),
                arguments: "{\n\"location\": \"Boston, MA\"\n}".into(),
            }]
        );
        assert_eq!(r.finish, FinishReason::ToolCalls);
        assert_eq!(
            r.usage,
            Usage {
                input: 82,
                cached_input: 0,
                output: 17
            }
        );
    }

    #[test]
    fn finish_reasons_map() {
        let answer = |reason: &str, calls: &str| {
            let body = format!(
                r#"{{"id":"x","model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"t"{calls}}},"finish_reason":{reason}}}]}}"#
            );
            parse_response(body.as_bytes()).unwrap().finish
        };
        let call = r#","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]"#;
        assert_eq!(answer(r#""stop""#, ""), FinishReason::Stop);
        assert_eq!(answer(r#""length""#, ""), FinishReason::Length);
        assert_eq!(answer(r#""tool_calls""#, call), FinishReason::ToolCalls);
        assert_eq!(answer(r#""function_call""#, ""), FinishReason::ToolCalls);
        assert_eq!(
            answer(r#""content_filter""#, ""),
            FinishReason::ContentFilter
        );
        assert_eq!(answer(r#""abort""#, ""), FinishReason::Stop);
        assert_eq!(answer("null", ""), FinishReason::Stop);
        // A server that says `stop` after calling tools still asks for them to run.
        assert_eq!(answer(r#""stop""#, call), FinishReason::ToolCalls);
    }

    #[test]
    fn malformed_and_error_responses_are_errors() {
        assert!(parse_response(b"not json").is_err());
        assert!(parse_response(b"[]").is_err());
        assert!(parse_response(br#"{"id":"x","choices":[]}"#).is_err());
        assert_eq!(
            parse_response(br#"{"error":{"message":"Overloaded","type":"server_error"}}"#),
            Err("Overloaded".to_string())
        );
    }

    #[test]
    fn error_bodies_of_openai_and_vllm() {
        let openai = br#"{"error":{"message":"This model's maximum context length is 4097 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        assert_eq!(
            error_message(openai),
            Some((
                "This model's maximum context length is 4097 tokens.".into(),
                "invalid_request_error".into()
            ))
        );
        let vllm_old = br#"{"object":"error","message":"This model's maximum context length is 2048 tokens.","type":"BadRequestError","param":null,"code":400}"#;
        assert_eq!(
            error_message(vllm_old),
            Some((
                "This model's maximum context length is 2048 tokens.".into(),
                "BadRequestError".into()
            ))
        );
        let vllm_new =
            br#"{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}"#;
        assert_eq!(
            error_message(vllm_new),
            Some(("bad".into(), "BadRequestError".into()))
        );
        assert_eq!(
            error_message(br#"{"error":"model \"x\" not found"}"#),
            Some(("model \"x\" not found".into(), "api_error".into()))
        );
        assert_eq!(error_message(br#"{"id":"x","choices":[]}"#), None);
        assert_eq!(error_message(br#"{"error":null}"#), None);
        assert_eq!(error_message(b"<html>502</html>"), None);
    }

    fn run(chunks: &[&str]) -> Vec<StreamEvent> {
        let mut parser = ChunkParser::default();
        let mut out = Vec::new();
        for data in chunks {
            parser.on_event(data, &mut out);
        }
        out
    }

    #[test]
    fn stream_with_text_tool_call_fragments_and_usage_chunk() {
        let events = run(&[
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":"Let me"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"content":" check."},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_abc","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_def","type":"function","function":{"name":"get_time","arguments":"{\"tz\":"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"\"CET\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}"#,
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":120,"completion_tokens":31,"total_tokens":151,"prompt_tokens_details":{"cached_tokens":64,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#,
            "[DONE]",
        ]);
        assert_eq!(
            events,
            [
                StreamEvent::Start {
                    id: "chatcmpl-1".into(),
                    model: "gpt-4o-2024-08-06".into()
                },
                StreamEvent::Text("Let me".into()),
                StreamEvent::Text(" check.".into()),
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "call_abc".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallArguments {
                    index: 0,
                    fragment: "{\"city\":".into()
                },
                StreamEvent::ToolCallArguments {
                    index: 0,
                    fragment: "\"Paris\"}".into()
                },
                StreamEvent::ToolCallStart {
                    index: 1,
                    id: "call_def".into(),
                    name: "get_time".into()
                },
                StreamEvent::ToolCallArguments {
                    index: 1,
                    fragment: "{\"tz\":".into()
                },
                StreamEvent::ToolCallArguments {
                    index: 1,
                    fragment: "\"CET\"}".into()
                },
                StreamEvent::Finish(FinishReason::ToolCalls),
                StreamEvent::Usage(Usage {
                    input: 120,
                    cached_input: 64,
                    output: 31
                }),
            ]
        );
    }

    #[test]
    fn deepseek_stream_with_usage_on_the_finish_chunk() {
        let events = run(&[
            r#"{"id":"d3610c24e6b42518a7883ea57c3ea2c3","choices":[{"index":0,"delta":{"content":"","role":"assistant"},"finish_reason":null,"logprobs":null}],"created":1721630271,"model":"deepseek-chat","system_fingerprint":"fp_7e0991cad4","object":"chat.completion.chunk","usage":null}"#,
            r#"{"choices":[{"delta":{"content":"I am","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1721630271,"id":"d3610c24e6b42518a7883ea57c3ea2c3","model":"deepseek-chat","object":"chat.completion.chunk","system_fingerprint":"fp_7e0991cad4","usage":null}"#,
            r#"{"choices":[{"delta":{"content":" DeepSeek.","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1721630271,"id":"d3610c24e6b42518a7883ea57c3ea2c3","model":"deepseek-chat","object":"chat.completion.chunk","system_fingerprint":"fp_7e0991cad4","usage":null}"#,
            r#"{"choices":[{"delta":{"content":"","role":null},"finish_reason":"stop","index":0,"logprobs":null}],"created":1721630271,"id":"d3610c24e6b42518a7883ea57c3ea2c3","model":"deepseek-chat","object":"chat.completion.chunk","system_fingerprint":"fp_7e0991cad4","usage":{"completion_tokens":15,"prompt_tokens":11,"total_tokens":26,"prompt_cache_hit_tokens":8,"prompt_cache_miss_tokens":3}}"#,
            "[DONE]",
        ]);
        assert_eq!(
            events,
            [
                StreamEvent::Start {
                    id: "d3610c24e6b42518a7883ea57c3ea2c3".into(),
                    model: "deepseek-chat".into()
                },
                StreamEvent::Text("I am".into()),
                StreamEvent::Text(" DeepSeek.".into()),
                StreamEvent::Finish(FinishReason::Stop),
                StreamEvent::Usage(Usage {
                    input: 11,
                    cached_input: 8,
                    output: 15
                }),
            ]
        );
    }

    #[test]
    fn stream_tolerates_odd_input_and_finishes_once() {
        let events = run(&[
            "not json {",
            "[DONE]",
            "42",
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":"stop"}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"error":{"message":"Internal server error","type":"server_error"}}"#,
        ]);
        assert_eq!(
            events,
            [
                StreamEvent::Start {
                    id: "c".into(),
                    model: "m".into()
                },
                StreamEvent::Text("a".into()),
                StreamEvent::Finish(FinishReason::Stop),
                StreamEvent::Error {
                    message: "Internal server error".into()
                },
            ]
        );
        // An error before anything else is only an error.
        assert_eq!(
            run(&[r#"{"object":"error","message":"boom","type":"BadRequestError","code":400}"#]),
            [StreamEvent::Error {
                message: "boom".into()
            }]
        );
    }

    #[test]
    fn stream_tool_calls_without_index_or_with_a_reused_one() {
        // Whole calls with no `index`, and a server that numbers every call 0: each new id is
        // a new call, and the gateway's indexes stay 0, 1, 2.
        let events = run(&[
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"id":"a","type":"function","function":{"name":"f","arguments":"{}"}}]}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"b","type":"function","function":{"name":"g","arguments":"{\"x\":1}"}}]}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"h","arguments":"{"}}]}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"arguments":"}"}}]}}]}"#,
            r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        ]);
        let starts: Vec<(usize, &str)> = events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::ToolCallStart { index, id, .. } => Some((*index, id.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(starts, [(0, "a"), (1, "b"), (2, "c")]);
        assert_eq!(
            events[events.len() - 2],
            StreamEvent::ToolCallArguments {
                index: 2,
                fragment: "}".into()
            }
        );
        assert_eq!(
            events.last(),
            Some(&StreamEvent::Finish(FinishReason::ToolCalls))
        );
    }
}
