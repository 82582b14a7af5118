//! Error answers: OpenAI's shape, and every kind's shape for the errors
//! the router gives before an endpoint sees the request.

use http::header::{HeaderName, HeaderValue, ALLOW};
use http::{Method, StatusCode};
use serde::Serialize;

use crate::body::{json, MockResponse};
use crate::config::MockKind;
use crate::{anthropic, gemini, triton};

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    /// The request field at fault, when there is a single one.
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// `{"error":{...}}` with the type OpenAI uses for `status`.
pub(crate) fn openai_error(status: StatusCode, message: &str, code: Option<&str>) -> MockResponse {
    error_with_param(status, message, None, code)
}

fn error_with_param(
    status: StatusCode,
    message: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> MockResponse {
    let kind = match status.as_u16() {
        429 => "rate_limit_error",
        500.. => "server_error",
        _ => "invalid_request_error",
    };
    json(
        status,
        &ErrorBody {
            error: ErrorDetail {
                message,
                kind,
                param,
                code,
            },
        },
    )
}

pub(crate) fn bad_request(message: &str) -> MockResponse {
    openai_error(StatusCode::BAD_REQUEST, message, None)
}

/// A 400 that blames one field of the request (or the whole body, with `None`).
pub(crate) fn invalid_param(message: &str, param: Option<&str>) -> MockResponse {
    error_with_param(StatusCode::BAD_REQUEST, message, param, None)
}

/// An error answer in the wire shape of `kind`.
pub(crate) fn for_kind(kind: MockKind, status: StatusCode, message: &str) -> MockResponse {
    match kind {
        MockKind::Openai | MockKind::Vllm | MockKind::Ollama => {
            let code = match status {
                StatusCode::UNAUTHORIZED => Some("invalid_api_key"),
                StatusCode::TOO_MANY_REQUESTS => Some("rate_limit_exceeded"),
                _ => None,
            };
            openai_error(status, message, code)
        }
        MockKind::Anthropic => anthropic::error(status, message),
        MockKind::Gemini => gemini::error(status, message),
        MockKind::Triton => triton::error(status, message),
    }
}

pub(crate) fn not_found(kind: MockKind, method: &Method, path: &str) -> MockResponse {
    for_kind(
        kind,
        StatusCode::NOT_FOUND,
        &format!("Invalid URL ({method} {path})"),
    )
}

pub(crate) fn method_not_allowed(
    kind: MockKind,
    method: &Method,
    allow: &'static str,
) -> MockResponse {
    let mut resp = for_kind(
        kind,
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("Method {method} is not allowed here (allowed: {allow})"),
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

/// The answer of an endpoint probed while the mock is set unhealthy.
pub(crate) fn unhealthy(kind: MockKind) -> MockResponse {
    for_kind(
        kind,
        StatusCode::SERVICE_UNAVAILABLE,
        "The server is unhealthy (set by tollgate-mock's `healthy` option).",
    )
}

/// Anthropic's status for an overloaded API.
pub(crate) const OVERLOADED: u16 = 529;

/// The answer to a request picked by `error_rate`. 429, 503 and 529 tell
/// the client when to retry, as providers and overloaded servers do.
pub(crate) fn injected(kind: MockKind, status: u16, retry_after_secs: u64) -> MockResponse {
    let message = match status {
        429 => "Rate limit reached (injected by tollgate-mock).",
        503 | OVERLOADED => "Overloaded (injected by tollgate-mock).",
        _ => "The server had an error while processing your request (injected by tollgate-mock).",
    };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = for_kind(kind, code, message);
    if matches!(status, 429 | 503 | OVERLOADED) {
        let headers = resp.headers_mut();
        headers.insert(
            HeaderName::from_static("retry-after"),
            HeaderValue::from(retry_after_secs),
        );
        headers.insert(
            HeaderName::from_static("retry-after-ms"),
            HeaderValue::from(retry_after_secs.saturating_mul(1000)),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use serde_json::{json, Value};

    async fn body_json(resp: MockResponse) -> Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn injected_rate_limit_has_retry_headers() {
        let resp = injected(MockKind::Openai, 429, 1);
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "1");
        assert_eq!(resp.headers()["retry-after-ms"], "1000");
        assert_eq!(
            body_json(resp).await,
            json!({"error": {
                "message": "Rate limit reached (injected by tollgate-mock).",
                "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}})
        );
    }

    #[tokio::test]
    async fn injected_server_error_shape() {
        let resp = injected(MockKind::Vllm, 503, 4);
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "4");
        assert_eq!(resp.headers()["retry-after-ms"], "4000");
        let body = body_json(resp).await;
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(body["error"]["code"], Value::Null);
        assert_eq!(body["error"]["param"], Value::Null);

        for status in [400, 500, 502] {
            let resp = injected(MockKind::Openai, status, 4);
            assert_eq!(resp.status(), status);
            assert!(resp.headers().get("retry-after").is_none());
            assert!(resp.headers().get("retry-after-ms").is_none());
        }
    }

    #[tokio::test]
    async fn invalid_param_names_the_field() {
        let resp = invalid_param("Bad latency_ms.", Some("latency_ms"));
        assert_eq!(resp.status(), 400);
        assert_eq!(
            body_json(resp).await,
            json!({"error": {"message": "Bad latency_ms.",
                "type": "invalid_request_error", "param": "latency_ms", "code": null}})
        );
    }
}
