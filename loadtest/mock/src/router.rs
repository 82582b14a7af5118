//! From an HTTP request to the endpoint that answers it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::auth::authorize;
use crate::body::{empty, json_bytes, MockResponse};
use crate::config::{MockConfig, MockKind};
use crate::control;
use crate::errors;
use crate::record::Recorded;
use crate::state::Shared;
use crate::{anthropic, gemini, openai, triton, vllm};

/// Largest request body accepted; generous, as gateways forward big prompts.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// What a path addresses. Deployment names come from Azure OpenAI paths.
#[derive(Debug)]
pub(crate) enum Endpoint {
    Chat(Option<String>),
    Completions(Option<String>),
    Embeddings(Option<String>),
    Models,
    Health,
    Metrics,
    /// Anthropic's `POST /v1/messages`.
    Messages,
    /// Gemini's `generateContent`, or `streamGenerateContent` when `stream`.
    GenerateContent {
        model: String,
        stream: bool,
    },
    /// Triton's `generate`, or `generate_stream` when `stream`.
    Generate {
        model: String,
        version: Option<String>,
        stream: bool,
    },
    TritonMetrics,
    MockRequests,
    MockStats,
    MockConfig,
    Unknown,
}

impl Endpoint {
    pub(crate) fn resolve(kind: MockKind, path: &str) -> Endpoint {
        let found = match path {
            "/mock/requests" => Some(Endpoint::MockRequests),
            "/mock/stats" => Some(Endpoint::MockStats),
            "/mock/config" => Some(Endpoint::MockConfig),
            _ => match kind {
                MockKind::Openai => openai::route(path),
                MockKind::Vllm => vllm::route(path).or_else(|| openai::route(path)),
                MockKind::Anthropic => anthropic::route(path),
                MockKind::Gemini => gemini::route(path),
                MockKind::Triton => triton::route(path),
                MockKind::Ollama => match path {
                    "/api/version" => Some(Endpoint::Health),
                    _ => openai::route(path),
                },
            },
        };
        found.unwrap_or(Endpoint::Unknown)
    }

    /// Provider API requests: counted, recorded and subject to the API key.
    /// Unknown paths count too, so tests can see what a gateway sent.
    fn is_api(&self) -> bool {
        !matches!(
            self,
            Endpoint::Health
                | Endpoint::Metrics
                | Endpoint::TritonMetrics
                | Endpoint::MockRequests
                | Endpoint::MockStats
                | Endpoint::MockConfig
        )
    }

    /// Inference calls: the ones `error_rate` fails.
    fn is_inference(&self) -> bool {
        matches!(
            self,
            Endpoint::Chat(_)
                | Endpoint::Completions(_)
                | Endpoint::Embeddings(_)
                | Endpoint::Messages
                | Endpoint::GenerateContent { .. }
                | Endpoint::Generate { .. }
        )
    }

    fn is_azure(&self) -> bool {
        matches!(
            self,
            Endpoint::Chat(Some(_))
                | Endpoint::Completions(Some(_))
                | Endpoint::Embeddings(Some(_))
        )
    }

    /// The model a path names (Gemini, Triton), recorded in place of the body's.
    fn path_model(&self) -> Option<&str> {
        match self {
            Endpoint::GenerateContent { model, .. } | Endpoint::Generate { model, .. } => {
                Some(model)
            }
            _ => None,
        }
    }

    /// The `Allow` header for this endpoint.
    fn allowed(&self) -> &'static str {
        match self {
            _ if self.is_inference() => "POST",
            Endpoint::MockRequests => "GET, DELETE",
            Endpoint::MockConfig => "GET, POST",
            _ => "GET",
        }
    }
}

/// The hyper service: never fails, every problem is an HTTP answer.
pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<MockResponse, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let (status, message) = if e.downcast_ref::<LengthLimitError>().is_some() {
                (StatusCode::PAYLOAD_TOO_LARGE, "Request body too large.")
            } else {
                (StatusCode::BAD_REQUEST, "Could not read the request body.")
            };
            return Ok(errors::for_kind(shared.config().kind, status, message));
        }
    };
    // Taken before the request is counted, so a test that saw the count
    // knows which config the request answers with.
    let cfg = shared.config();
    let endpoint = Endpoint::resolve(cfg.kind, parts.uri.path());
    if endpoint.is_api() {
        shared.stats.request();
        if cfg.record {
            shared
                .recorder
                .push(Recorded::new(&parts, &body, endpoint.path_model()));
        }
        if let Err(denied) = authorize(&cfg, &parts, endpoint.is_azure()) {
            return Ok(errors::for_kind(cfg.kind, denied.status, denied.message));
        }
    }
    Ok(dispatch(endpoint, &parts, body, &shared, &cfg).await)
}

async fn dispatch(
    endpoint: Endpoint,
    parts: &Parts,
    body: Bytes,
    shared: &Arc<Shared>,
    cfg: &MockConfig,
) -> MockResponse {
    let method = &parts.method;
    let kind = cfg.kind;
    if endpoint.is_inference() && method == Method::POST && cfg.roll_error() {
        return errors::injected(kind, cfg.error_status, cfg.retry_after_secs);
    }
    match endpoint {
        Endpoint::Unknown => errors::not_found(kind, method, parts.uri.path()),
        Endpoint::Chat(deployment) if method == Method::POST => {
            openai::chat::handle(shared, cfg, &body, deployment).await
        }
        Endpoint::Completions(deployment) if method == Method::POST => {
            openai::completions::handle(shared, cfg, &body, deployment).await
        }
        Endpoint::Embeddings(deployment) if method == Method::POST => {
            openai::embeddings::handle(shared, cfg, &body, deployment).await
        }
        Endpoint::Messages if method == Method::POST => {
            anthropic::handle(shared, cfg, &parts.headers, &body).await
        }
        Endpoint::GenerateContent { model, stream } if method == Method::POST => {
            gemini::handle(shared, cfg, parts.uri.query(), &body, model, stream).await
        }
        Endpoint::Generate {
            model,
            version,
            stream,
        } if method == Method::POST => {
            let target = triton::Target { model, version };
            triton::handle(shared, cfg, &body, target, stream).await
        }
        // Health checkers probe one of these two.
        Endpoint::Models | Endpoint::Health if method == Method::GET && !cfg.healthy => {
            errors::unhealthy(kind)
        }
        Endpoint::Models if method == Method::GET => openai::models::list(cfg),
        Endpoint::Health if method == Method::GET => empty(StatusCode::OK),
        Endpoint::Metrics if method == Method::GET => vllm::metrics(shared, cfg),
        Endpoint::TritonMetrics if method == Method::GET => triton::metrics(shared, cfg),
        Endpoint::MockRequests if method == Method::GET => {
            json_bytes(StatusCode::OK, shared.recorder.to_json())
        }
        Endpoint::MockRequests if method == Method::DELETE => {
            shared.recorder.clear();
            empty(StatusCode::NO_CONTENT)
        }
        Endpoint::MockStats if method == Method::GET => {
            json_bytes(StatusCode::OK, shared.stats.to_json())
        }
        Endpoint::MockConfig if method == Method::GET => control::get(cfg),
        Endpoint::MockConfig if method == Method::POST => control::post(shared, &body),
        other => errors::method_not_allowed(kind, method, other.allowed()),
    }
}

/// A query parameter as sent: the values the mock reads (API keys,
/// `alt=sse`) need no percent-decoding.
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_route_differently() {
        assert!(matches!(
            Endpoint::resolve(MockKind::Vllm, "/metrics"),
            Endpoint::Metrics
        ));
        assert!(matches!(
            Endpoint::resolve(MockKind::Openai, "/metrics"),
            Endpoint::Unknown
        ));
        assert!(matches!(
            Endpoint::resolve(MockKind::Triton, "/metrics"),
            Endpoint::TritonMetrics
        ));
        assert!(matches!(
            Endpoint::resolve(MockKind::Vllm, "/v1/models"),
            Endpoint::Models
        ));
        assert!(matches!(
            Endpoint::resolve(MockKind::Anthropic, "/v1/models"),
            Endpoint::Unknown
        ));
        assert!(matches!(
            Endpoint::resolve(MockKind::Openai, "/v1/messages"),
            Endpoint::Unknown
        ));
        assert!(matches!(
            Endpoint::resolve(MockKind::Openai, "/mock/stats"),
            Endpoint::MockStats
        ));
        for kind in MockKind::ALL {
            assert!(matches!(
                Endpoint::resolve(kind, "/mock/config"),
                Endpoint::MockConfig
            ));
        }
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&key=k&key=j"), "key"), Some("k"));
        assert_eq!(query_param(Some("keys=1&flag"), "key"), None);
        assert_eq!(query_param(None, "key"), None);
    }

    #[test]
    fn endpoint_properties() {
        let gemini = Endpoint::resolve(MockKind::Gemini, "/v1beta/models/g:generateContent");
        assert_eq!(gemini.path_model(), Some("g"));
        assert_eq!(gemini.allowed(), "POST");
        assert!(gemini.is_api() && gemini.is_inference() && !gemini.is_azure());
        let ready = Endpoint::resolve(MockKind::Triton, "/v2/health/ready");
        assert!(!ready.is_api() && !ready.is_inference());
        assert_eq!(ready.allowed(), "GET");
        assert_eq!(Endpoint::Messages.path_model(), None);
    }
}
