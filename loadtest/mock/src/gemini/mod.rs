//! The Gemini Developer API: `models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`.

mod chunks;

use std::sync::Arc;

use http::StatusCode;
use serde::Deserialize;

use crate::body::{json, MockResponse};
use crate::config::MockConfig;
use crate::prompt::{asks_about_weather, part_texts, Part};
use crate::router::{query_param, Endpoint};
use crate::state::Shared;
use crate::stream::{self, answer_delay, Plan};
use crate::text::{estimate_tokens, Answer};
pub(crate) use chunks::error;
use chunks::Chunks;

/// `/v1beta/models/{model}:{method}`; `v1` serves the same methods.
pub(crate) fn route(path: &str) -> Option<Endpoint> {
    let rest = path
        .strip_prefix("/v1beta/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    let (model, method) = rest.rsplit_once(':')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return None,
    };
    Some(Endpoint::GenerateContent {
        model: model.to_owned(),
        stream,
    })
}

// The REST API takes camelCase names; its proto JSON mapping also accepts
// snake_case, as some clients send.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest {
    contents: Option<Vec<RequestContent>>,
    #[serde(alias = "system_instruction")]
    system_instruction: Option<RequestContent>,
    #[serde(alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
    #[serde(default)]
    tools: Vec<Tool>,
}

#[derive(Deserialize)]
struct RequestContent {
    /// `user` or `model`; absent means `user`.
    role: Option<String>,
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(alias = "max_output_tokens")]
    max_output_tokens: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tool {
    #[serde(default, alias = "function_declarations")]
    function_declarations: Vec<FunctionDeclaration>,
}

#[derive(Deserialize)]
struct FunctionDeclaration {
    name: String,
}

pub(crate) async fn handle(
    shared: &Arc<Shared>,
    cfg: &MockConfig,
    query: Option<&str>,
    body: &[u8],
    model: String,
    stream: bool,
) -> MockResponse {
    let running = shared.start_running();
    // Without `alt=sse` Gemini streams one JSON array, which this mock
    // does not imitate; refusing beats answering in the wrong framing.
    if stream && query_param(query, "alt") != Some("sse") {
        return invalid(
            "tollgate-mock streams Gemini answers only as server-sent events: add ?alt=sse",
        );
    }
    let req: GenerateRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return invalid(&format!("Invalid JSON payload received. {e}")),
    };
    let Some(contents) = req.contents.filter(|c| !c.is_empty()) else {
        return invalid("* GenerateContentRequest.contents: contents is not specified\n");
    };
    let prompt_bytes: usize = req
        .system_instruction
        .iter()
        .chain(&contents)
        .flat_map(|c| part_texts(&c.parts))
        .map(str::len)
        .sum();
    let limit = req.generation_config.and_then(|g| g.max_output_tokens);
    let tool = triggered_tool(&req.tools, &contents);
    let chunks = Chunks {
        model,
        prompt_tokens: estimate_tokens(prompt_bytes, 0),
        answer: Answer::new(cfg.completion_tokens, limit, tool),
    };
    if stream {
        let plan = Plan::new(cfg, chunks.steps());
        return stream::start(shared, chunks, plan, running);
    }
    answer_delay(cfg).await;
    json(StatusCode::OK, &chunks.whole())
}

/// The first declared function when the request declares functions and
/// its last user turn asks about the weather.
fn triggered_tool(tools: &[Tool], contents: &[RequestContent]) -> Option<String> {
    let declared = tools.iter().flat_map(|t| &t.function_declarations).next()?;
    let last_user = contents
        .iter()
        .rev()
        .find(|c| c.role.as_deref().unwrap_or("user") == "user")?;
    asks_about_weather(part_texts(&last_user.parts)).then(|| declared.name.clone())
}

fn invalid(message: &str) -> MockResponse {
    error(StatusCode::BAD_REQUEST, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes() {
        assert!(matches!(
            route("/v1beta/models/gemini-2.0-flash:generateContent"),
            Some(Endpoint::GenerateContent { model, stream: false }) if model == "gemini-2.0-flash"
        ));
        assert!(matches!(
            route("/v1/models/g:streamGenerateContent"),
            Some(Endpoint::GenerateContent { stream: true, .. })
        ));
        assert!(route("/v1beta/models/g:countTokens").is_none());
        assert!(route("/v1beta/models/:generateContent").is_none());
        assert!(route("/v1beta/models/a/b:generateContent").is_none());
        assert!(route("/v1beta/models/g").is_none());
    }

    #[test]
    fn weather_triggers_the_first_declaration() {
        let req: GenerateRequest = serde_json::from_value(json!({
        "tools": [{"googleSearch": {}}, {"function_declarations": [{"name": "get_weather"}]}],
        "contents": [
            {"role": "user", "parts": [{"text": "What's the weather?"}]},
            {"role": "model", "parts": [{"text": "Where?"}]},
            {"parts": [{"text": "Paris."}]}
        ]}))
        .unwrap();
        let contents = req.contents.unwrap();
        // Only the last user turn counts; a turn without a role is the user's.
        assert_eq!(triggered_tool(&req.tools, &contents), None);
        assert_eq!(
            triggered_tool(&req.tools, &contents[..2]).as_deref(),
            Some("get_weather")
        );
        assert_eq!(triggered_tool(&[], &contents[..2]), None);
    }
}
