//! From an HTTP request to the endpoint that answers it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::body::{empty, json_bytes, MockResponse};
use crate::config::{MockConfig, MockKind};
use crate::control;
use crate::errors::{self, openai_error};
use crate::openai;
use crate::record::Recorded;
use crate::state::Shared;
use crate::vllm;

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
                | Endpoint::MockRequests
                | Endpoint::MockStats
                | Endpoint::MockConfig
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

    /// The `Allow` header for this endpoint.
    fn allowed(&self) -> &'static str {
        match self {
            Endpoint::Chat(_) | Endpoint::Completions(_) | Endpoint::Embeddings(_) => "POST",
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
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Ok(openai_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large.",
                None,
            ));
        }
        Err(_) => return Ok(errors::bad_request("Could not read the request body.")),
    };
    // Taken before the request is counted, so a test that saw the count
    // knows which config the request answers with.
    let cfg = shared.config();
    let endpoint = Endpoint::resolve(cfg.kind, parts.uri.path());
    if endpoint.is_api() {
        shared.stats.request();
        if cfg.record {
            shared.recorder.push(Recorded::new(&parts, &body));
        }
        if let Err(message) = authorize(&cfg, &parts.headers, endpoint.is_azure()) {
            return Ok(errors::unauthorized(message));
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
    let generation = matches!(
        endpoint,
        Endpoint::Chat(_) | Endpoint::Completions(_) | Endpoint::Embeddings(_)
    );
    if generation && method == Method::POST && cfg.roll_error() {
        return errors::injected(cfg.error_status, cfg.retry_after_secs);
    }
    match endpoint {
        Endpoint::Unknown => errors::not_found(method, parts.uri.path()),
        Endpoint::Chat(deployment) if method == Method::POST => {
            openai::chat::handle(shared, cfg, &body, deployment).await
        }
        Endpoint::Completions(deployment) if method == Method::POST => {
            openai::completions::handle(shared, cfg, &body, deployment).await
        }
        Endpoint::Embeddings(deployment) if method == Method::POST => {
            openai::embeddings::handle(cfg, &body, deployment).await
        }
        // Health checkers probe one of these two.
        Endpoint::Models | Endpoint::Health if method == Method::GET && !cfg.healthy => {
            errors::unhealthy()
        }
        Endpoint::Models if method == Method::GET => openai::models::list(cfg),
        Endpoint::Health if method == Method::GET => empty(StatusCode::OK),
        Endpoint::Metrics if method == Method::GET => vllm::metrics(shared, cfg),
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
        other => errors::method_not_allowed(method, other.allowed()),
    }
}

/// Checks the API key: `Authorization: Bearer`, or `api-key` on Azure paths.
/// The error is the message of the 401 answer.
fn authorize(cfg: &MockConfig, headers: &HeaderMap, azure: bool) -> Result<(), &'static str> {
    let Some(expected) = cfg.api_key.as_deref() else {
        return Ok(());
    };
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let azure_key = headers
        .get("api-key")
        .filter(|_| azure)
        .and_then(|v| v.to_str().ok());
    match (bearer, azure_key) {
        (None, None) => Err(
            "You didn't provide an API key. You need to provide your API key \
             in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        ),
        (b, a) if b == Some(expected) || a == Some(expected) => Ok(()),
        _ => Err("Incorrect API key provided."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn api_key_checks() {
        let cfg = MockConfig {
            api_key: Some("sk".into()),
            ..MockConfig::default()
        };
        let ok =
            |h: &[(&'static str, &'static str)], azure| authorize(&cfg, &headers(h), azure).is_ok();
        assert!(ok(&[("authorization", "Bearer sk")], false));
        assert!(!ok(&[("authorization", "Bearer no")], false));
        assert!(!ok(&[], false));
        assert!(!ok(&[("api-key", "sk")], false));
        assert!(ok(&[("api-key", "sk")], true));
        assert!(ok(&[("authorization", "Bearer sk")], true));
        assert!(authorize(&MockConfig::default(), &HeaderMap::new(), false).is_ok());
    }

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
            Endpoint::resolve(MockKind::Vllm, "/v1/models"),
            Endpoint::Models
        ));
        assert!(matches!(
            Endpoint::resolve(MockKind::Openai, "/mock/stats"),
            Endpoint::MockStats
        ));
        assert!(matches!(
            Endpoint::resolve(MockKind::Vllm, "/mock/config"),
            Endpoint::MockConfig
        ));
    }
}
