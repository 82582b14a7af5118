//! The Anthropic Messages API: `POST /v1/messages`, whole or streamed.

mod events;

use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::body::{json, MockResponse};
use crate::config::MockConfig;
use crate::prompt::{asks_about_weather, Content};
use crate::router::Endpoint;
use crate::state::{ReportedUsage, Shared};
use crate::stream::{self, answer_delay, Plan};
use crate::text::{estimate_tokens, new_id, Answer};
pub(crate) use events::error;
use events::MessageEvents;

pub(crate) fn route(path: &str) -> Option<Endpoint> {
    (path == "/v1/messages").then_some(Endpoint::Messages)
}

#[derive(Deserialize)]
struct MessagesRequest {
    model: Option<String>,
    max_tokens: Option<u32>,
    messages: Option<Vec<Message>>,
    system: Option<Content>,
    stream: Option<bool>,
    #[serde(default)]
    tools: Vec<Tool>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    content: Option<Content>,
}

/// A client or server tool; only its name matters here.
#[derive(Deserialize)]
struct Tool {
    name: Option<String>,
}

pub(crate) async fn handle(
    shared: &Arc<Shared>,
    cfg: &MockConfig,
    headers: &HeaderMap,
    body: &[u8],
) -> MockResponse {
    let running = shared.start_running();
    if !headers.contains_key("anthropic-version") {
        return invalid("anthropic-version: header is required");
    }
    let req: MessagesRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return invalid(&format!("The request body is not valid JSON: {e}")),
    };
    let Some(model) = req.model else {
        return missing("model");
    };
    let Some(max_tokens) = req.max_tokens else {
        return missing("max_tokens");
    };
    let Some(messages) = req.messages else {
        return missing("messages");
    };
    let prompt_bytes: usize = req
        .system
        .iter()
        .chain(messages.iter().filter_map(|m| m.content.as_ref()))
        .map(Content::text_bytes)
        .sum();
    let tool = triggered_tool(&req.tools, &messages);
    let events = MessageEvents {
        id: new_id("msg_"),
        model,
        input_tokens: estimate_tokens(prompt_bytes, 0),
        answer: Answer::new(cfg.completion_tokens, Some(max_tokens), tool),
    };
    if req.stream == Some(true) {
        let plan = Plan::new(cfg, events.output_tokens());
        return stream::start(shared, events, plan, running);
    }
    answer_delay(cfg).await;
    shared.stats.report_usage(ReportedUsage {
        input: events.input_tokens,
        output: events.output_tokens(),
    });
    json(StatusCode::OK, &events.whole())
}

/// The first tool's name when the request offers tools and its last user
/// message asks about the weather.
fn triggered_tool(tools: &[Tool], messages: &[Message]) -> Option<String> {
    let name = tools.first()?.name.clone()?;
    let last_user = messages.iter().rev().find(|m| m.role == "user")?;
    asks_about_weather(last_user.content.iter().flat_map(Content::texts)).then_some(name)
}

fn invalid(message: &str) -> MockResponse {
    error(StatusCode::BAD_REQUEST, message)
}

fn missing(field: &str) -> MockResponse {
    invalid(&format!("{field}: Field required"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn weather_triggers_the_first_tool() {
        let req: MessagesRequest = serde_json::from_value(json!({
        "tools": [{"name": "get_weather", "input_schema": {}}, {"name": "other"}],
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "weather?"},
            {"role": "user", "content": [{"type": "text", "text": "The weather in Paris?"}]}
        ]}))
        .unwrap();
        let messages = req.messages.unwrap();
        assert_eq!(
            triggered_tool(&req.tools, &messages).as_deref(),
            Some("get_weather")
        );
        assert_eq!(triggered_tool(&[], &messages), None);
        // Only the last user message counts.
        assert_eq!(triggered_tool(&req.tools, &messages[..2]), None);
    }
}
