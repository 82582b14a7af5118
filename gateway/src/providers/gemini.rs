//! Google's Gemini Developer API on the provider side: the gateway's request out as a
//! `generateContent` body, answers and stream chunks back into the gateway's model.

use super::chat::{
    str_field, ChatRequest, ChatResponse, FinishReason, Message, Part, Role, StreamEvent, ToolCall,
    Usage,
};
use super::Provider;
use crate::upstream::Endpoint;
use pingora::http::RequestHeader;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// `POST {prefix}/v1beta/models/{model}:generateContent` (or the SSE stream variant) with
/// the key in `x-goog-api-key`.
pub fn request_header(
    provider: &Provider,
    endpoint: &Endpoint,
    upstream_model: &str,
    stream: bool,
    body_len: usize,
) -> pingora::Result<RequestHeader> {
    // Google names models `models/<id>`; a config that says so must not double the prefix.
    let model = upstream_model
        .strip_prefix("models/")
        .unwrap_or(upstream_model);
    let method = if stream {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    let path = format!(
        "{}/v1beta/models/{}:{method}",
        endpoint.prefix,
        super::path_segment(model)
    );
    let mut req = super::json_post(endpoint, &path, body_len)?;
    super::insert_credential(&mut req, provider)?;
    Ok(req)
}

fn image_part(url: &str) -> Value {
    // `data:image/png;base64,....` is sent inline; anything else by reference.
    match url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
    {
        Some((mime_type, data)) => json!({"inlineData": {"mimeType": mime_type, "data": data}}),
        None => json!({"fileData": {"fileUri": url}}),
    }
}

fn text_of(message: &Message) -> String {
    message
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            Part::Image { .. } => None,
        })
        .collect()
}

/// The parts of a user or assistant turn; `names` learns each call's name for tool results.
fn turn_parts(message: &Message, names: &mut HashMap<String, String>) -> Vec<Value> {
    let mut parts: Vec<Value> = message
        .parts
        .iter()
        .filter(|p| !matches!(p, Part::Text(t) if t.is_empty()))
        .map(|p| match p {
            Part::Text(t) => json!({"text": t}),
            Part::Image { url } => image_part(url),
        })
        .collect();
    for call in &message.tool_calls {
        names.insert(call.id.clone(), call.name.clone());
        let args: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
        parts.push(json!({"functionCall": {"name": call.name, "args": args}}));
    }
    parts
}

/// The `generateContent` body for `request` (the model travels in the path).
pub fn request_body(request: &ChatRequest) -> Value {
    // Gemini answers a call by function name, OpenAI by call id: map ids to names as the
    // conversation goes.
    let mut names: HashMap<String, String> = HashMap::new();
    let mut contents: Vec<Value> = Vec::new();
    for message in &request.messages {
        let (role, parts) = match message.role {
            Role::User => ("user", turn_parts(message, &mut names)),
            Role::Assistant => ("model", turn_parts(message, &mut names)),
            Role::Tool => {
                let name = message
                    .tool_call_id
                    .as_ref()
                    .and_then(|id| names.get(id))
                    .map_or("", String::as_str);
                let response = json!({"functionResponse": {
                    "name": name,
                    "response": {"content": text_of(message)},
                }});
                ("user", vec![response])
            }
        };
        // Gemini rejects a turn without parts.
        if parts.is_empty() {
            continue;
        }
        // Consecutive same-role turns merge, so tool results join one user turn.
        match contents.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(existing) = last["parts"].as_array_mut() {
                    existing.extend(parts);
                }
            }
            _ => contents.push(json!({"role": role, "parts": parts})),
        }
    }
    let mut body = Map::new();
    body.insert("contents".into(), Value::Array(contents));
    if let Some(system) = &request.system {
        body.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system}]}),
        );
    }
    let mut config = Map::new();
    if let Some(n) = request.max_tokens {
        config.insert("maxOutputTokens".into(), json!(n));
    }
    if let Some(t) = request.temperature {
        config.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        config.insert("topP".into(), json!(p));
    }
    if !request.stop.is_empty() {
        config.insert("stopSequences".into(), json!(request.stop));
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let mut declaration = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    declaration["description"] = json!(d);
                }
                declaration
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
        let config = match &request.tool_choice {
            Some(Value::String(s)) if s == "auto" => Some(json!({"mode": "AUTO"})),
            Some(Value::String(s)) if s == "none" => Some(json!({"mode": "NONE"})),
            Some(Value::String(s)) if s == "required" => Some(json!({"mode": "ANY"})),
            Some(Value::Object(o)) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .map(|name| json!({"mode": "ANY", "allowedFunctionNames": [name]})),
            _ => None,
        };
        if let Some(config) = config {
            body.insert(
                "toolConfig".into(),
                json!({"functionCallingConfig": config}),
            );
        }
    }
    Value::Object(body)
}

/// `saw_call`: Gemini says STOP after a function call, where OpenAI says `tool_calls`.
fn finish_reason(reason: &str, saw_call: bool) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => {
            FinishReason::ContentFilter
        }
        _ if saw_call => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// Each `usageMetadata` is a whole snapshot; proto3 JSON leaves zero counts out.
fn usage(value: &Value) -> Usage {
    let n = |key: &str| value.get(key).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input: n("promptTokenCount"),
        cached_input: n("cachedContentTokenCount"),
        // Thinking tokens are billed as output.
        output: n("candidatesTokenCount") + n("thoughtsTokenCount"),
    }
}

/// The first candidate's parts, without thought summaries (reasoning, not the answer).
fn answer_parts(value: &Value) -> impl Iterator<Item = &Value> {
    value
        .pointer("/candidates/0/content/parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
}

/// A call's arguments as the JSON text OpenAI carries.
fn call_arguments(call: &Value) -> String {
    call.get("args")
        .map_or_else(|| "{}".to_string(), Value::to_string)
}

/// A `generateContent` answer in the gateway's model.
pub fn parse_response(body: &[u8]) -> Result<ChatResponse, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for part in answer_parts(&value) {
        if let Some(t) = part.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(call) = part.get("functionCall") {
            tool_calls.push(ToolCall {
                // Gemini gives calls no id; the client needs one to answer them.
                id: format!("call_{}", tool_calls.len()),
                name: call
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                arguments: call_arguments(call),
            });
        }
    }
    let reason = value
        .pointer("/candidates/0/finishReason")
        .and_then(Value::as_str)
        .unwrap_or("");
    Ok(ChatResponse {
        id: str_field(object, "responseId").to_string(),
        model: str_field(object, "modelVersion").to_string(),
        text,
        finish: finish_reason(reason, !tool_calls.is_empty()),
        tool_calls,
        usage: usage(object.get("usageMetadata").unwrap_or(&Value::Null)),
    })
}

/// A Gemini error body's message and an OpenAI error type, for the error the client gets.
pub fn error_message(body: &[u8]) -> Option<(String, String)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let kind = match error.get("status").and_then(Value::as_str) {
        Some("INVALID_ARGUMENT") => "invalid_request_error",
        Some("UNAUTHENTICATED" | "PERMISSION_DENIED") => "authentication_error",
        Some("RESOURCE_EXHAUSTED") => "rate_limit_error",
        Some("NOT_FOUND") => "not_found_error",
        _ => "api_error",
    };
    Some((
        error.get("message")?.as_str()?.to_string(),
        kind.to_string(),
    ))
}

/// Whether the body names an overload or quota error, whatever HTTP status a proxy gave it.
pub fn retryable_error(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body).is_ok_and(|v| {
        matches!(
            v.pointer("/error/status").and_then(Value::as_str),
            Some("UNAVAILABLE" | "RESOURCE_EXHAUSTED")
        )
    })
}

/// Turns `streamGenerateContent?alt=sse` chunks into the gateway's stream events.
#[derive(Default)]
pub struct StreamParser {
    started: bool,
    finished: bool,
    /// The latest (cumulative) usage seen.
    usage: Usage,
    /// Tool calls seen so far; numbers the next one.
    calls: usize,
}

impl StreamParser {
    pub fn on_event(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        let Ok(value) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(error) = value.get("error") {
            out.push(StreamEvent::Error {
                message: error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("upstream error")
                    .to_string(),
            });
            return;
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: value["responseId"].as_str().unwrap_or("").to_string(),
                model: value["modelVersion"].as_str().unwrap_or("").to_string(),
            });
        }
        if let Some(metadata) = value.get("usageMetadata") {
            self.usage = usage(metadata);
        }
        for part in answer_parts(&value) {
            match part.get("text").and_then(Value::as_str) {
                Some(t) if !t.is_empty() => out.push(StreamEvent::Text(t.to_string())),
                _ => {}
            }
            if let Some(call) = part.get("functionCall") {
                let index = self.calls;
                self.calls += 1;
                out.push(StreamEvent::ToolCallStart {
                    index,
                    id: format!("call_{index}"),
                    name: call
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                });
                // Gemini sends each call whole, so its arguments are one fragment.
                out.push(StreamEvent::ToolCallArguments {
                    index,
                    fragment: call_arguments(call),
                });
            }
        }
        if let Some(reason) = value
            .pointer("/candidates/0/finishReason")
            .and_then(Value::as_str)
        {
            if !self.finished {
                self.finished = true;
                out.push(StreamEvent::Finish(finish_reason(reason, self.calls > 0)));
                out.push(StreamEvent::Usage(self.usage));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::fixtures::{self, header};
    use crate::providers::openai_format::parse_request;
    use crate::providers::ProviderKind;

    fn request(openai: Value) -> ChatRequest {
        parse_request(&serde_json::to_vec(&openai).unwrap()).unwrap()
    }

    #[test]
    fn header_has_path_key_and_host() {
        let (provider, endpoint) = fixtures::provider(
            ProviderKind::Gemini,
            "https://generativelanguage.googleapis.com",
            Some("AIza-key"),
        );
        let req = request_header(&provider, &endpoint, "gemini-2.5-flash", false, 42).unwrap();
        assert_eq!(
            req.uri.to_string(),
            "/v1beta/models/gemini-2.5-flash:generateContent"
        );
        assert_eq!(header(&req, "x-goog-api-key").unwrap(), "AIza-key");
        assert_eq!(
            header(&req, "host").unwrap(),
            "generativelanguage.googleapis.com"
        );
        assert_eq!(header(&req, "content-length").unwrap(), "42");
        assert!(header(&req, "authorization").is_none());

        let req = request_header(&provider, &endpoint, "models/gemini-2.5-flash", true, 1).unwrap();
        assert_eq!(
            req.uri.to_string(),
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        );
        let req = request_header(&provider, &endpoint, "tuned/a b", false, 1).unwrap();
        assert_eq!(
            req.uri.path(),
            "/v1beta/models/tuned%2Fa%20b:generateContent"
        );
    }

    #[test]
    fn request_maps_roles_system_tools_and_tool_results() {
        let body = request_body(&request(json!({
            "model": "m", "stop": ["X"], "max_tokens": 100, "temperature": 0.5,
            "tool_choice": "required",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "c2", "content": "noon"},
                {"role": "assistant", "content": "Sunny at noon."},
                {"role": "assistant", "content": "Anything else?"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "weather", "parameters": {"type": "object"}}}],
        })));
        assert_eq!(
            body["systemInstruction"],
            json!({"parts": [{"text": "Be terse."}]})
        );
        assert_eq!(
            body["generationConfig"],
            json!({"maxOutputTokens": 100, "temperature": 0.5, "stopSequences": ["X"]})
        );
        assert_eq!(
            body["tools"],
            json!([{"functionDeclarations": [{"name": "weather", "description": "weather", "parameters": {"type": "object"}}]}])
        );
        assert_eq!(
            body["toolConfig"],
            json!({"functionCallingConfig": {"mode": "ANY"}})
        );
        let contents = body["contents"].as_array().unwrap();
        assert_eq!(
            contents.len(),
            4,
            "tool results and the last two turns merge"
        );
        assert_eq!(
            contents[0],
            json!({"role": "user", "parts": [{"text": "Weather?"}]})
        );
        assert_eq!(contents[1]["role"], "model");
        assert_eq!(
            contents[1]["parts"],
            json!([
                {"text": "Checking."},
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "time", "args": {}}},
            ])
        );
        assert_eq!(
            contents[2],
            json!({"role": "user", "parts": [
                {"functionResponse": {"name": "weather", "response": {"content": "sunny"}}},
                {"functionResponse": {"name": "time", "response": {"content": "noon"}}},
            ]})
        );
        assert_eq!(
            contents[3]["parts"],
            json!([{"text": "Sunny at noon."}, {"text": "Anything else?"}])
        );
    }

    #[test]
    fn request_maps_images_and_tool_choice() {
        let body = request_body(&request(json!({
            "model": "m",
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]}],
            "tools": [{"type": "function", "function": {"name": "f"}}],
        })));
        assert_eq!(
            body["contents"][0]["parts"],
            json!([
                {"text": "Compare"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"fileUri": "https://example.com/cat.jpg"}},
            ])
        );
        assert_eq!(
            body["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["f"]})
        );
        assert!(body.get("generationConfig").is_none());
        assert!(body.get("systemInstruction").is_none());

        for (choice, mode) in [("auto", "AUTO"), ("none", "NONE")] {
            let body = request_body(&request(json!({
                "model": "m", "tool_choice": choice,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            })));
            assert_eq!(body["toolConfig"]["functionCallingConfig"]["mode"], mode);
        }
    }

    #[test]
    fn response_text_usage_and_finish() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"thinking...","thought":true},{"text":"Hello"},{"text":" there"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":5,"totalTokenCount":57,"cachedContentTokenCount":4,"thoughtsTokenCount":40},"modelVersion":"gemini-2.5-flash","responseId":"abc"}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(r.id, "abc");
        assert_eq!(r.model, "gemini-2.5-flash");
        assert_eq!(r.text, "Hello there");
        assert!(r.tool_calls.is_empty());
        assert_eq!(r.finish, FinishReason::Stop);
        assert_eq!(
            r.usage,
            Usage {
                input: 12,
                cached_input: 4,
                output: 45
            }
        );

        let finish = |reason: &str| {
            let body = json!({"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]});
            parse_response(body.to_string().as_bytes()).unwrap().finish
        };
        assert_eq!(finish("MAX_TOKENS"), FinishReason::Length);
        for reason in [
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
        ] {
            assert_eq!(finish(reason), FinishReason::ContentFilter);
        }
        assert_eq!(finish("OTHER"), FinishReason::Stop);
        let empty = parse_response(b"{}").unwrap();
        assert_eq!((empty.id.as_str(), empty.model.as_str()), ("", ""));
        assert!(parse_response(b"[1]").is_err());
        assert!(parse_response(b"nope").is_err());
    }

    #[test]
    fn response_function_calls() {
        let body = br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"weather","args":{"city":"Paris"}}},{"functionCall":{"name":"time"}}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":30,"candidatesTokenCount":8},"modelVersion":"gemini-2.5-pro"}"#;
        let r = parse_response(body).unwrap();
        assert_eq!(r.finish, FinishReason::ToolCalls);
        assert_eq!(r.text, "");
        assert_eq!(
            r.tool_calls,
            [
                ToolCall {
                    id: "call_0".into(),
                    name: "weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into()
                },
                ToolCall {
                    id: "call_1".into(),
                    name: "time".into(),
                    arguments: "{}".into()
                },
            ]
        );
        assert_eq!(r.usage.output, 8);
    }

    #[test]
    fn stream_chunks_translate() {
        let mut p = StreamParser::default();
        let mut out = Vec::new();
        for data in [
            r#"{"candidates": [{"content": {"parts": [{"text": "Here"}],"role": "model"}}],"usageMetadata": {"promptTokenCount": 10,"totalTokenCount": 10},"modelVersion": "gemini-2.0-flash","responseId": "ibRC"}"#,
            "not json",
            r#"{"candidates": [{"content": {"parts": [{"text": " you go"}],"role": "model"}}],"usageMetadata": {"promptTokenCount": 10,"totalTokenCount": 10},"modelVersion": "gemini-2.0-flash","responseId": "ibRC"}"#,
            r#"{"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_weather","args": {"location": "Paris"}}}],"role": "model"},"finishReason": "STOP"}],"usageMetadata": {"promptTokenCount": 10,"candidatesTokenCount": 49,"thoughtsTokenCount": 3,"totalTokenCount": 62},"modelVersion": "gemini-2.0-flash","responseId": "ibRC"}"#,
            r#"{"candidates": [{"content": {"parts": [],"role": "model"},"finishReason": "STOP"}],"modelVersion": "gemini-2.0-flash","responseId": "ibRC"}"#,
        ] {
            p.on_event(data, &mut out);
        }
        assert_eq!(
            out,
            [
                StreamEvent::Start {
                    id: "ibRC".into(),
                    model: "gemini-2.0-flash".into()
                },
                StreamEvent::Text("Here".into()),
                StreamEvent::Text(" you go".into()),
                StreamEvent::ToolCallStart {
                    index: 0,
                    id: "call_0".into(),
                    name: "get_weather".into()
                },
                StreamEvent::ToolCallArguments {
                    index: 0,
                    fragment: r#"{"location":"Paris"}"#.into()
                },
                StreamEvent::Finish(FinishReason::ToolCalls),
                StreamEvent::Usage(Usage {
                    input: 10,
                    cached_input: 0,
                    output: 52
                }),
            ]
        );
    }

    #[test]
    fn stream_text_finishes_with_length() {
        let mut p = StreamParser::default();
        let mut out = Vec::new();
        p.on_event(
            r#"{"candidates":[{"content":{"parts":[{"text":"abc"}]},"finishReason":"MAX_TOKENS"}],"usageMetadata":{"promptTokenCount":7,"cachedContentTokenCount":2,"candidatesTokenCount":3}}"#,
            &mut out,
        );
        assert_eq!(
            out[out.len() - 2..],
            [
                StreamEvent::Finish(FinishReason::Length),
                StreamEvent::Usage(Usage {
                    input: 7,
                    cached_input: 2,
                    output: 3
                }),
            ]
        );
        assert_eq!(
            out[0],
            StreamEvent::Start {
                id: String::new(),
                model: String::new()
            }
        );
    }

    #[test]
    fn errors_map_to_openai_types() {
        let unavailable = br#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#;
        assert_eq!(
            error_message(unavailable),
            Some((
                "The model is overloaded. Please try again later.".into(),
                "api_error".into()
            ))
        );
        assert!(retryable_error(unavailable));
        let quota = br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"59s"}]}}"#;
        assert_eq!(error_message(quota).unwrap().1, "rate_limit_error");
        assert!(retryable_error(quota));
        let bad_key = br#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(error_message(bad_key).unwrap().1, "invalid_request_error");
        assert!(!retryable_error(bad_key));
        for (status, kind) in [
            ("UNAUTHENTICATED", "authentication_error"),
            ("PERMISSION_DENIED", "authentication_error"),
            ("NOT_FOUND", "not_found_error"),
        ] {
            let body = json!({"error": {"code": 1, "message": "m", "status": status}});
            assert_eq!(
                error_message(body.to_string().as_bytes()),
                Some(("m".into(), kind.into()))
            );
        }
        assert_eq!(error_message(b"<html>bad gateway</html>"), None);
        assert!(!retryable_error(b"<html>bad gateway</html>"));

        let mut p = StreamParser::default();
        let mut out = Vec::new();
        p.on_event(std::str::from_utf8(unavailable).unwrap(), &mut out);
        assert_eq!(
            out,
            [StreamEvent::Error {
                message: "The model is overloaded. Please try again later.".into()
            }]
        );
    }
}
