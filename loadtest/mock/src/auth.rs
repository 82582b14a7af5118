//! API keys: where each kind expects them, and how it refuses a request
//! without the right one.

use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{HeaderMap, StatusCode};

use crate::config::{MockConfig, MockKind};
use crate::router::query_param;

/// A refused request: the status and message of the kind's error answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Denied {
    pub(crate) status: StatusCode,
    pub(crate) message: &'static str,
}

/// Checks the configured API key, if any, against the request's.
pub(crate) fn authorize(cfg: &MockConfig, parts: &Parts, azure: bool) -> Result<(), Denied> {
    let Some(expected) = cfg.api_key.as_deref() else {
        return Ok(());
    };
    let presented = presented_keys(cfg.kind, parts, azure);
    if presented.contains(&Some(expected)) {
        return Ok(());
    }
    let missing = presented.iter().all(Option::is_none);
    Err(denial(cfg.kind, missing))
}

/// The keys a request carries where `kind` looks for them. Azure paths
/// (`azure`) take their key in `api-key`.
fn presented_keys(kind: MockKind, parts: &Parts, azure: bool) -> [Option<&str>; 2] {
    let headers = &parts.headers;
    match kind {
        MockKind::Openai | MockKind::Vllm | MockKind::Ollama => [
            bearer(headers),
            header(headers, "api-key").filter(|_| azure),
        ],
        // Triton has no keys of its own; a proxy in front checks Bearer tokens.
        MockKind::Triton => [bearer(headers), None],
        MockKind::Anthropic => [header(headers, "x-api-key"), None],
        MockKind::Gemini => [
            header(headers, "x-goog-api-key"),
            query_param(parts.uri.query(), "key"),
        ],
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    header(headers, AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer "))
}

/// Each provider's own refusal, so gateways see the statuses they will
/// meet in production (Gemini does not use 401 for API keys).
fn denial(kind: MockKind, missing: bool) -> Denied {
    let (status, message) = match (kind, missing) {
        (MockKind::Openai | MockKind::Vllm | MockKind::Ollama, true) => (
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key \
             in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        ),
        (MockKind::Openai | MockKind::Vllm | MockKind::Ollama, false) => {
            (StatusCode::UNAUTHORIZED, "Incorrect API key provided.")
        }
        (MockKind::Anthropic, true) => (StatusCode::UNAUTHORIZED, "x-api-key header is required"),
        (MockKind::Anthropic, false) => (StatusCode::UNAUTHORIZED, "invalid x-api-key"),
        (MockKind::Gemini, true) => (
            StatusCode::FORBIDDEN,
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
        ),
        (MockKind::Gemini, false) => (
            StatusCode::BAD_REQUEST,
            "API key not valid. Please pass a valid API key.",
        ),
        (MockKind::Triton, true) => (
            StatusCode::UNAUTHORIZED,
            "Missing Authorization: Bearer token.",
        ),
        (MockKind::Triton, false) => (StatusCode::UNAUTHORIZED, "Invalid Bearer token."),
    };
    Denied { status, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::post(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn check(kind: MockKind, uri: &str, headers: &[(&str, &str)], azure: bool) -> Option<u16> {
        let cfg = MockConfig {
            kind,
            api_key: Some("sk".into()),
            ..MockConfig::default()
        };
        authorize(&cfg, &parts(uri, headers), azure)
            .err()
            .map(|d| d.status.as_u16())
    }

    #[test]
    fn openai_keys() {
        let ok = |h: &[(&str, &str)], azure| check(MockKind::Openai, "/", h, azure).is_none();
        assert!(ok(&[("authorization", "Bearer sk")], false));
        assert!(!ok(&[("authorization", "Bearer no")], false));
        assert!(!ok(&[], false));
        assert!(!ok(&[("api-key", "sk")], false));
        assert!(ok(&[("api-key", "sk")], true));
        assert!(ok(&[("authorization", "Bearer sk")], true));
        let open = MockConfig::default();
        assert!(authorize(&open, &parts("/", &[]), false).is_ok());
    }

    #[test]
    fn other_kinds_keys() {
        use MockKind::{Anthropic, Gemini, Triton};
        let bearer = [("authorization", "Bearer sk")];
        assert_eq!(check(Anthropic, "/", &[("x-api-key", "sk")], false), None);
        assert_eq!(check(Anthropic, "/", &bearer, false), Some(401));
        assert_eq!(
            check(Anthropic, "/", &[("x-api-key", "no")], false),
            Some(401)
        );
        assert_eq!(check(Gemini, "/", &[("x-goog-api-key", "sk")], false), None);
        assert_eq!(check(Gemini, "/m?alt=sse&key=sk", &[], false), None);
        assert_eq!(check(Gemini, "/m?key=no", &[], false), Some(400));
        assert_eq!(check(Gemini, "/m?alt=sse", &bearer, false), Some(403));
        assert_eq!(check(Triton, "/", &bearer, false), None);
        assert_eq!(check(Triton, "/", &[("x-api-key", "sk")], false), Some(401));
    }
}
