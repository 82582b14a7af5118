//! The OpenAI API (and Azure OpenAI's deployment paths).

pub(crate) mod chat;
pub(crate) mod completions;
pub(crate) mod embeddings;
pub(crate) mod models;
mod request;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::body::MockResponse;
use crate::errors::bad_request;
use crate::router::Endpoint;
use crate::state::ReportedUsage;

/// The OpenAI endpoint at `path`, if any.
pub(crate) fn route(path: &str) -> Option<Endpoint> {
    match path {
        "/v1/chat/completions" => Some(Endpoint::Chat(None)),
        "/v1/completions" => Some(Endpoint::Completions(None)),
        "/v1/embeddings" => Some(Endpoint::Embeddings(None)),
        "/v1/models" => Some(Endpoint::Models),
        _ => azure_route(path),
    }
}

/// `/openai/deployments/{deployment}/{operation}`.
fn azure_route(path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix("/openai/deployments/")?;
    let (deployment, operation) = rest.split_once('/')?;
    if deployment.is_empty() {
        return None;
    }
    let deployment = Some(deployment.to_owned());
    match operation {
        "chat/completions" => Some(Endpoint::Chat(deployment)),
        "completions" => Some(Endpoint::Completions(deployment)),
        "embeddings" => Some(Endpoint::Embeddings(deployment)),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
    pub(crate) total_tokens: u32,
}

impl Usage {
    pub(crate) fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
        }
    }

    pub(crate) fn reported(self) -> ReportedUsage {
        ReportedUsage {
            input: self.prompt_tokens,
            output: self.completion_tokens,
        }
    }
}

/// The stream `usage` field: absent unless the client asked for usage, then
/// null on every chunk but the last.
type StreamUsage = Option<Option<Usage>>;

fn stream_usage(include_usage: bool, usage: Option<Usage>) -> StreamUsage {
    include_usage.then_some(usage)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn invalid_json(e: &serde_json::Error) -> MockResponse {
    bad_request(&format!(
        "We could not parse the JSON body of your request: {e}"
    ))
}

fn missing(param: &str) -> MockResponse {
    bad_request(&format!("Missing required parameter: '{param}'."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(
            route("/v1/chat/completions"),
            Some(Endpoint::Chat(None))
        ));
        assert!(matches!(
            route("/openai/deployments/gpt4o/chat/completions"),
            Some(Endpoint::Chat(Some(d))) if d == "gpt4o"
        ));
        assert!(matches!(
            route("/openai/deployments/e/embeddings"),
            Some(Endpoint::Embeddings(Some(_)))
        ));
        assert!(route("/openai/deployments//chat/completions").is_none());
        assert!(route("/openai/deployments/x/images").is_none());
        assert!(route("/v1/chat").is_none());
    }
}
