//! NVIDIA Triton's KServe v2 generate extension on the provider side: a chat request becomes
//! one `text_input` prompt through the target's template, and `text_output` comes back as
//! the answer. Triton reports no token usage, so usage is estimated with the tokenizer.

use super::chat::{
    str_field, ChatRequest, ChatResponse, FinishReason, Message, Part, Role, StreamEvent, Usage,
};
use super::Provider;
use crate::catalog::Tokenizer;
use crate::tokens::{self, Sample};
use crate::upstream::Endpoint;
use pingora::http::RequestHeader;
use serde_json::{json, Map, Value};

/// How chat messages are flattened into the single prompt string Triton takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptTemplate {
    /// `role: content` lines, then `assistant:`; works with any model, tuned for none.
    Plain,
    /// Meta's Llama 3 instruct format.
    Llama3,
    /// `<|im_start|>role … <|im_end|>`, as Qwen and many fine-tunes expect.
    ChatMl,
}

impl PromptTemplate {
    pub fn parse(text: &str) -> Option<PromptTemplate> {
        match text {
            "plain" => Some(PromptTemplate::Plain),
            "llama3" => Some(PromptTemplate::Llama3),
            "chatml" => Some(PromptTemplate::ChatMl),
            _ => None,
        }
    }

    /// The prompt for `request`: the system text first, each message in order, then the
    /// opening of the assistant's turn so the model continues as the assistant.
    pub fn render(self, request: &ChatRequest) -> String {
        let mut out = String::new();
        match self {
            PromptTemplate::Plain => {
                if let Some(system) = &request.system {
                    out.push_str(&format!("system: {system}\n"));
                }
                for message in &request.messages {
                    out.push_str(&format!("{}: {}\n", role_name(message.role), text(message)));
                }
                out.push_str("assistant:");
            }
            PromptTemplate::Llama3 => {
                out.push_str("<|begin_of_text|>");
                let turn = |out: &mut String, role: &str, content: &str| {
                    out.push_str(&format!(
                        "<|start_header_id|>{role}<|end_header_id|>\n\n{}<|eot_id|>",
                        content.trim()
                    ));
                };
                if let Some(system) = &request.system {
                    turn(&mut out, "system", system);
                }
                for message in &request.messages {
                    // Llama 3.1+ was trained with tool results under the `ipython` role.
                    let role = match message.role {
                        Role::Tool => "ipython",
                        other => role_name(other),
                    };
                    turn(&mut out, role, &text(message));
                }
                out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
            }
            PromptTemplate::ChatMl => {
                let turn = |out: &mut String, role: &str, content: &str| {
                    out.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
                };
                if let Some(system) = &request.system {
                    turn(&mut out, "system", system);
                }
                for message in &request.messages {
                    turn(&mut out, role_name(message.role), &text(message));
                }
                out.push_str("<|im_start|>assistant\n");
            }
        }
        out
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// A message's text parts, joined as the OpenAI parser joins them; a text prompt cannot
/// carry images, so those are dropped.
fn text(message: &Message) -> String {
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

/// `POST {prefix}/v2/models/{model}/generate` (or `/generate_stream`).
pub fn request_header(
    provider: &Provider,
    endpoint: &Endpoint,
    upstream_model: &str,
    stream: bool,
    body_len: usize,
) -> pingora::Result<RequestHeader> {
    let action = if stream {
        "generate_stream"
    } else {
        "generate"
    };
    let path = format!(
        "{}/v2/models/{}/{action}",
        endpoint.prefix,
        super::path_segment(upstream_model),
    );
    let mut req = super::json_post(endpoint, &path, body_len)?;
    super::insert_credential(&mut req, provider)?;
    Ok(req)
}

/// The generate body: the rendered prompt, and only the sampling parameters the client set
/// (so the model's own defaults apply otherwise).
pub fn request_body(request: &ChatRequest, template: PromptTemplate) -> Value {
    let mut parameters = Map::new();
    if let Some(n) = request.max_tokens {
        parameters.insert("max_tokens".into(), json!(n));
    }
    if let Some(t) = request.temperature {
        parameters.insert("temperature".into(), json!(t));
    }
    if let Some(p) = request.top_p {
        parameters.insert("top_p".into(), json!(p));
    }
    if !request.stop.is_empty() {
        parameters.insert("stop".into(), json!(request.stop));
    }
    parameters.insert("stream".into(), json!(request.stream));
    json!({"text_input": template.render(request), "parameters": parameters})
}

/// Triton says nothing about why generation stopped; reaching the token limit is the one
/// cause the gateway can infer.
fn finish_reason(output_tokens: u64, max_tokens: Option<u64>) -> FinishReason {
    match max_tokens {
        Some(max) if output_tokens >= max => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// A generate answer in the gateway's model. Triton reports no usage, so both counts are
/// estimates: the rendered prompt and `text_output` counted with `tokenizer`.
pub fn parse_response(
    body: &[u8],
    request: &ChatRequest,
    template: PromptTemplate,
    tokenizer: Tokenizer,
) -> Result<ChatResponse, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let output = object
        .get("text_output")
        .and_then(Value::as_str)
        .ok_or("no text_output in the response")?;
    let prompt = template.render(request);
    // vLLM's backend echoes the prompt in non-stream answers unless told otherwise; the
    // client asked for the reply only.
    let text = output.strip_prefix(prompt.as_str()).unwrap_or(output);
    let usage = Usage {
        input: tokens::estimate(tokenizer, &prompt),
        cached_input: 0,
        output: tokens::estimate(tokenizer, text),
    };
    Ok(ChatResponse {
        id: str_field(object, "id").to_string(),
        model: str_field(object, "model_name").to_string(),
        text: text.to_string(),
        tool_calls: Vec::new(),
        finish: finish_reason(usage.output, request.max_tokens),
        usage,
    })
}

/// A Triton error body (`{"error": "..."}`) as a message and an OpenAI error type.
pub fn error_message(body: &[u8]) -> Option<(String, String)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let message = value.get("error")?.as_str()?;
    Some((message.to_string(), "api_error".to_string()))
}

/// Turns `generate_stream` events (each a `text_output` delta) into the gateway's stream
/// events. The stream has no end marker and no usage, so `finish` closes it.
pub struct StreamParser {
    input_tokens: u64,
    max_tokens: Option<u64>,
    tokenizer: Tokenizer,
    started: bool,
    failed: bool,
    finished: bool,
    /// What was generated, counted once at the end rather than per delta (inline: a sample
    /// small enough to count on the worker, extrapolated beyond).
    text: Sample,
}

impl StreamParser {
    /// `input_tokens` is the estimate for the rendered prompt, made when the body was built.
    pub fn new(input_tokens: u64, max_tokens: Option<u64>, tokenizer: Tokenizer) -> StreamParser {
        StreamParser {
            input_tokens,
            max_tokens,
            tokenizer,
            started: false,
            failed: false,
            finished: false,
            text: Sample::new(tokens::INLINE_BYTES),
        }
    }

    pub fn on_event(&mut self, data: &str, out: &mut Vec<StreamEvent>) {
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(error) = object.get("error") {
            self.failed = true;
            out.push(StreamEvent::Error {
                message: error.as_str().unwrap_or("upstream error").to_string(),
            });
            return;
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::Start {
                id: String::new(),
                model: str_field(&object, "model_name").to_string(),
            });
        }
        let delta = str_field(&object, "text_output");
        if !delta.is_empty() {
            self.text.push(delta);
            out.push(StreamEvent::Text(delta.to_string()));
        }
    }

    /// Called when the upstream closes. After an error there is no normal finish, but the
    /// usage still goes out: the tokens already delivered were generated.
    pub fn finish(&mut self, out: &mut Vec<StreamEvent>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let output = self.text.count(self.tokenizer);
        if !self.failed {
            out.push(StreamEvent::Finish(finish_reason(output, self.max_tokens)));
        }
        out.push(StreamEvent::Usage(Usage {
            input: self.input_tokens,
            cached_input: 0,
            output,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::fixtures::{self, header};
    use crate::providers::openai_format::parse_request;
    use crate::providers::ProviderKind;
    use std::sync::Arc;

    fn conversation() -> ChatRequest {
        let openai = json!({
            "model": "m", "max_tokens": 64, "temperature": 0.5, "stop": ["END"], "stream": true,
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
                {"role": "assistant", "content": "Hello."},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                {"role": "user", "content": "Thanks"},
            ],
        });
        parse_request(&serde_json::to_vec(&openai).unwrap()).unwrap()
    }

    #[test]
    fn templates_parse_by_name() {
        assert_eq!(PromptTemplate::parse("plain"), Some(PromptTemplate::Plain));
        assert_eq!(
            PromptTemplate::parse("llama3"),
            Some(PromptTemplate::Llama3)
        );
        assert_eq!(
            PromptTemplate::parse("chatml"),
            Some(PromptTemplate::ChatMl)
        );
        assert_eq!(PromptTemplate::parse("Plain"), None);
    }

    #[test]
    fn plain_template() {
        assert_eq!(
            PromptTemplate::Plain.render(&conversation()),
            "system: Be terse.\nuser: Hi\nassistant: Hello.\ntool: 42\nuser: Thanks\nassistant:"
        );
        let no_system = ChatRequest {
            system: None,
            ..conversation()
        };
        assert!(PromptTemplate::Plain
            .render(&no_system)
            .starts_with("user: Hi\n"));
    }

    #[test]
    fn llama3_template() {
        assert_eq!(
            PromptTemplate::Llama3.render(&conversation()),
            "<|begin_of_text|>\
             <|start_header_id|>system<|end_header_id|>\n\nBe terse.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>\
             <|start_header_id|>ipython<|end_header_id|>\n\n42<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nThanks<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn chatml_template() {
        assert_eq!(
            PromptTemplate::ChatMl.render(&conversation()),
            "<|im_start|>system\nBe terse.<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello.<|im_end|>\n\
             <|im_start|>tool\n42<|im_end|>\n\
             <|im_start|>user\nThanks<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn body_carries_prompt_and_only_given_parameters() {
        let request = conversation();
        let body = request_body(&request, PromptTemplate::Plain);
        assert_eq!(
            body["text_input"],
            PromptTemplate::Plain.render(&request).as_str()
        );
        assert_eq!(
            body["parameters"],
            json!({"max_tokens": 64, "temperature": 0.5, "stop": ["END"], "stream": true})
        );

        let bare = ChatRequest {
            max_tokens: None,
            temperature: None,
            top_p: Some(0.9),
            stop: Vec::new(),
            stream: false,
            ..conversation()
        };
        assert_eq!(
            request_body(&bare, PromptTemplate::ChatMl)["parameters"],
            json!({"top_p": 0.9, "stream": false})
        );
    }

    fn provider(key: Option<&str>) -> (Provider, Arc<Endpoint>) {
        fixtures::provider(ProviderKind::Triton, "http://10.0.0.7:8000/triton", key)
    }

    #[test]
    fn header_paths_and_credentials() {
        let (p, e) = provider(Some("tok"));
        let req = request_header(&p, &e, "llama 3/8b", false, 17).unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.uri.path(), "/triton/v2/models/llama%203%2F8b/generate");
        assert_eq!(header(&req, "host").unwrap(), "10.0.0.7:8000");
        assert_eq!(header(&req, "content-length").unwrap(), "17");
        assert_eq!(header(&req, "content-type").unwrap(), "application/json");
        assert_eq!(header(&req, "authorization").unwrap(), "Bearer tok");

        let (p, e) = provider(None);
        let req = request_header(&p, &e, "ensemble", true, 1).unwrap();
        assert_eq!(req.uri.path(), "/triton/v2/models/ensemble/generate_stream");
        assert!(header(&req, "authorization").is_none());
    }

    #[test]
    fn response_with_estimated_usage() {
        let request = ChatRequest {
            max_tokens: None,
            ..conversation()
        };
        let body = br#"{"id":"42","model_name":"ensemble","model_version":"1","text_output":"The answer is 42."}"#;
        let r = parse_response(body, &request, PromptTemplate::Plain, Tokenizer::O200k).unwrap();
        assert_eq!(r.id, "42");
        assert_eq!(r.model, "ensemble");
        assert_eq!(r.text, "The answer is 42.");
        assert!(r.tool_calls.is_empty());
        assert_eq!(r.finish, FinishReason::Stop);
        let prompt = PromptTemplate::Plain.render(&request);
        assert_eq!(
            r.usage,
            Usage {
                input: tokens::count(Tokenizer::O200k, &prompt),
                cached_input: 0,
                output: tokens::count(Tokenizer::O200k, "The answer is 42."),
            }
        );
        assert!(r.usage.input > 0 && r.usage.output > 0);

        // No id echoed; output at the limit means the limit cut it; an echoed prompt goes.
        let request = ChatRequest {
            max_tokens: Some(2),
            ..conversation()
        };
        let echoed =
            json!({"model_name": "vllm_model", "text_output": format!("{prompt} one two three")});
        let r = parse_response(
            &serde_json::to_vec(&echoed).unwrap(),
            &request,
            PromptTemplate::Plain,
            Tokenizer::Cl100k,
        )
        .unwrap();
        assert_eq!(r.id, "");
        assert_eq!(r.text, " one two three");
        assert_eq!(r.finish, FinishReason::Length);
    }

    #[test]
    fn bad_responses_are_errors_not_panics() {
        let request = conversation();
        for body in [&b"not json"[..], b"[1]", br#"{"model_name":"m"}"#] {
            assert!(
                parse_response(body, &request, PromptTemplate::Plain, Tokenizer::O200k).is_err()
            );
        }
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(br#"{"error":"Request for unknown model: 'x' is not found"}"#),
            Some((
                "Request for unknown model: 'x' is not found".into(),
                "api_error".into()
            ))
        );
        assert_eq!(error_message(b"oops"), None);
        assert_eq!(error_message(br#"{"text_output":"hi"}"#), None);
    }

    #[test]
    fn stream_deltas_then_finish() {
        let mut p = StreamParser::new(30, Some(100), Tokenizer::O200k);
        let mut out = Vec::new();
        for data in [
            r#"{"id":"42","model_name":"ensemble","model_version":"1","text_output":"Hello"}"#,
            "not json",
            r#"{"model_name":"ensemble","text_output":""}"#,
            r#"{"model_name":"ensemble","text_output":", world"}"#,
            r#"{"model_name":"ensemble","text_output":"!"}"#,
        ] {
            p.on_event(data, &mut out);
        }
        p.finish(&mut out);
        p.finish(&mut out);
        assert_eq!(
            out,
            [
                StreamEvent::Start {
                    id: String::new(),
                    model: "ensemble".into()
                },
                StreamEvent::Text("Hello".into()),
                StreamEvent::Text(", world".into()),
                StreamEvent::Text("!".into()),
                StreamEvent::Finish(FinishReason::Stop),
                StreamEvent::Usage(Usage {
                    input: 30,
                    cached_input: 0,
                    output: tokens::count(Tokenizer::O200k, "Hello, world!"),
                }),
            ]
        );
    }

    #[test]
    fn stream_at_the_limit_finishes_with_length() {
        let mut p = StreamParser::new(5, Some(1), Tokenizer::Cl100k);
        let mut out = Vec::new();
        p.on_event(r#"{"model_name":"m","text_output":"Hi there"}"#, &mut out);
        p.finish(&mut out);
        assert_eq!(
            out[out.len() - 2],
            StreamEvent::Finish(FinishReason::Length)
        );
    }

    #[test]
    fn stream_errors_and_junk() {
        let mut p = StreamParser::new(7, None, Tokenizer::O200k);
        let mut out = Vec::new();
        for junk in ["", "[DONE]", "{", "[1,2]", "\"text\"", "null"] {
            p.on_event(junk, &mut out);
        }
        assert!(out.is_empty());
        p.on_event(r#"{"model_name":"m","text_output":"par"}"#, &mut out);
        p.on_event(r#"{"error":"Failed to process the request"}"#, &mut out);
        p.finish(&mut out);
        assert_eq!(
            out[2],
            StreamEvent::Error {
                message: "Failed to process the request".into()
            }
        );
        // No normal finish after an error, but the delivered tokens are still counted.
        assert_eq!(
            out[3],
            StreamEvent::Usage(Usage {
                input: 7,
                cached_input: 0,
                output: tokens::count(Tokenizer::O200k, "par"),
            })
        );
        assert_eq!(out.len(), 4);
    }
}
