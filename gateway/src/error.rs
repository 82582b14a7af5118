//! The gateway's client-facing errors, mapped once to OpenAI's error shape and status.

use bytes::Bytes;
use serde_json::json;
use std::fmt;
use std::time::Duration;
use tollgate_plugins::limits::{Dimension, Refusal};

#[derive(Debug, Clone, PartialEq)]
pub enum GatewayError {
    /// 400: the request itself is wrong.
    BadRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// 401
    MissingKey,
    /// 401
    InvalidKey,
    /// 403: the key may not call this model.
    ModelNotAllowed(String),
    /// 404
    ModelNotFound(String),
    /// 404: a path the gateway does not serve.
    UnknownPath(String),
    /// 405
    MethodNotAllowed { method: String, path: String },
    /// 413
    BodyTooLarge { limit: u64 },
    /// 408: the client sent its request body too slowly.
    RequestTimeout,
    /// 431: the request's headers are larger than the gateway reads.
    HeadersTooLarge { limit: usize },
    /// 502: every attempt failed.
    UpstreamFailed(String),
    /// 504: every attempt failed, the last by timing out.
    UpstreamTimeout(String),
    /// 400: the prompt and requested output do not fit the context window.
    ContextLengthExceeded {
        window: u64,
        prompt: u64,
        output: u64,
    },
    /// 503: no endpoint of the model can take traffic now.
    NoEligibleTarget { model: String, why: String },
    /// The client went away; nothing more can be sent.
    ClientGone,
    /// 503: the grace period of a graceful shutdown ended before the answer did.
    ShuttingDown,
    /// Something failed inside the serving machinery itself, with the status it maps to.
    Internal { status: u16 },
    /// 429: a rate limit or budget (503 when the shared limits store is unavailable).
    Refused(Refusal),
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::BadRequest { .. } | GatewayError::ContextLengthExceeded { .. } => 400,
            GatewayError::MissingKey | GatewayError::InvalidKey => 401,
            GatewayError::ModelNotAllowed(_) => 403,
            GatewayError::ModelNotFound(_) | GatewayError::UnknownPath(_) => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::RequestTimeout => 408,
            GatewayError::HeadersTooLarge { .. } => 431,
            GatewayError::UpstreamFailed(_) => 502,
            GatewayError::UpstreamTimeout(_) => 504,
            GatewayError::NoEligibleTarget { .. } | GatewayError::ShuttingDown => 503,
            // nginx's convention; logged, never sent.
            GatewayError::ClientGone => 499,
            GatewayError::Internal { status } => *status,
            GatewayError::Refused(Refusal::Unavailable) => 503,
            GatewayError::Refused(_) => 429,
        }
    }

    /// How long the client should wait before it tries again (`Duration::MAX`: retrying
    /// will not help).
    pub fn retry_wait(&self) -> Duration {
        match self {
            GatewayError::Refused(
                Refusal::Rate { retry_after, .. } | Refusal::Budget { retry_after, .. },
            ) => *retry_after,
            _ => Duration::MAX,
        }
    }

    /// Headers that go with the error: `retry-after` (whole seconds, rounded up) and the
    /// refusing limit's `x-ratelimit-*`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let GatewayError::Refused(refusal) = self else {
            return Vec::new();
        };
        let (retry_after, mut pairs) = match refusal {
            Refusal::Rate {
                retry_after,
                headers,
                ..
            } => (Some(*retry_after), headers.to_pairs()),
            Refusal::Budget { retry_after, .. } => (Some(*retry_after), Vec::new()),
            Refusal::TooLarge { .. } | Refusal::OverBudget { .. } | Refusal::Unavailable => {
                (None, Vec::new())
            }
        };
        if let Some(wait) = retry_after {
            let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1);
            pairs.push(("retry-after", secs.to_string()));
        }
        pairs
    }

    fn kind(&self) -> &'static str {
        match self {
            GatewayError::MissingKey | GatewayError::InvalidKey => "authentication_error",
            GatewayError::ModelNotAllowed(_) => "permission_error",
            GatewayError::UpstreamFailed(_)
            | GatewayError::UpstreamTimeout(_)
            | GatewayError::NoEligibleTarget { .. } => "upstream_error",
            GatewayError::Internal { status } if *status >= 500 => "server_error",
            GatewayError::ShuttingDown => "server_error",
            GatewayError::Refused(Refusal::Rate { dimension, .. })
            | GatewayError::Refused(Refusal::TooLarge { dimension, .. }) => dimension.as_str(),
            GatewayError::Refused(Refusal::Budget { .. } | Refusal::OverBudget { .. }) => {
                "insufficient_quota"
            }
            GatewayError::Refused(Refusal::Unavailable) => "server_error",
            _ => "invalid_request_error",
        }
    }

    fn code(&self) -> Option<&'static str> {
        Some(match self {
            GatewayError::BadRequest { .. } => return None,
            GatewayError::MissingKey => "missing_api_key",
            GatewayError::InvalidKey => "invalid_api_key",
            GatewayError::ModelNotAllowed(_) => "model_not_allowed",
            GatewayError::ModelNotFound(_) => "model_not_found",
            GatewayError::UnknownPath(_) => "unknown_url",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::BodyTooLarge { .. } => "request_too_large",
            GatewayError::RequestTimeout => "request_timeout",
            GatewayError::HeadersTooLarge { .. } => "request_header_fields_too_large",
            GatewayError::UpstreamFailed(_) => "upstream_failed",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::NoEligibleTarget { .. } => "no_eligible_target",
            GatewayError::ContextLengthExceeded { .. } => "context_length_exceeded",
            GatewayError::ClientGone => "client_closed_request",
            GatewayError::ShuttingDown => "server_shutting_down",
            GatewayError::Internal { .. } => "internal_error",
            GatewayError::Refused(Refusal::Budget { .. } | Refusal::OverBudget { .. }) => {
                "budget_exceeded"
            }
            GatewayError::Refused(Refusal::Unavailable) => "limits_unavailable",
            GatewayError::Refused(_) => "rate_limit_exceeded",
        })
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            GatewayError::BadRequest { param, .. } => *param,
            GatewayError::ModelNotAllowed(_) | GatewayError::ModelNotFound(_) => Some("model"),
            GatewayError::ContextLengthExceeded { .. } => Some("messages"),
            _ => None,
        }
    }

    /// `{"error":{"message","type","param","code"}}`
    pub fn body(&self) -> Bytes {
        Bytes::from(
            json!({"error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }})
            .to_string(),
        )
    }

    /// The error in Anthropic's shape, for `/v1/messages` clients.
    pub fn anthropic_body(&self) -> Bytes {
        let kind = match self.status() {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 | 431 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            _ => "api_error",
        };
        Bytes::from(
            json!({"type": "error", "error": {"type": kind, "message": self.to_string()}})
                .to_string(),
        )
    }

    /// The same error as one Anthropic SSE `error` event, for a stream that already started.
    pub fn anthropic_sse_event(&self) -> Bytes {
        let body = self.anthropic_body();
        let mut out = Vec::with_capacity(body.len() + 24);
        out.extend_from_slice(b"event: error\ndata: ");
        out.extend_from_slice(&body);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// The same error as one SSE event, for a stream that already started.
    pub fn sse_event(&self) -> Bytes {
        let event = json!({"error": {
            "message": self.to_string(),
            "type": self.kind(),
            "code": self.code(),
        }});
        Bytes::from(format!("data: {event}\n\n"))
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            GatewayError::BadRequest { message, .. } => f.write_str(message),
            GatewayError::MissingKey => f.write_str(
                "Missing API key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.",
            ),
            GatewayError::InvalidKey => f.write_str("Invalid API key."),
            GatewayError::ModelNotAllowed(m) => write!(
                f,
                "This key is not allowed to use the model `{}`.",
                shortened(m)
            ),
            GatewayError::ModelNotFound(m) => {
                write!(f, "The model `{}` does not exist.", shortened(m))
            }
            GatewayError::UnknownPath(p) => write!(f, "Unknown request URL: {}.", shortened(p)),
            GatewayError::MethodNotAllowed { method, path } => {
                write!(f, "Method {method} is not allowed on {path}.")
            }
            GatewayError::BodyTooLarge { limit } => write!(
                f,
                "The request body is larger than this gateway accepts ({limit} bytes)."
            ),
            GatewayError::RequestTimeout => {
                f.write_str("The request body did not arrive in time.")
            }
            GatewayError::HeadersTooLarge { limit } => write!(
                f,
                "The request's headers are larger than this gateway accepts ({limit} bytes)."
            ),
            GatewayError::UpstreamFailed(detail) => {
                write!(f, "All upstream attempts failed: {detail}")
            }
            GatewayError::UpstreamTimeout(detail) => {
                write!(f, "The upstream timed out: {detail}")
            }
            GatewayError::ContextLengthExceeded {
                window,
                prompt,
                output,
            } => write!(
                f,
                "This model's maximum context length is {window} tokens. However, you requested {} tokens ({prompt} in the messages, {output} in the completion). Please reduce the length of the messages or completion.",
                prompt.saturating_add(*output)
            ),
            GatewayError::NoEligibleTarget { model, why } => write!(
                f,
                "No target of model `{model}` can take requests right now: {why}."
            ),
            GatewayError::ClientGone => f.write_str("The client closed the connection."),
            GatewayError::ShuttingDown => f.write_str(
                "The gateway is shutting down and could not finish this answer; retry the request.",
            ),
            GatewayError::Internal { status } if *status < 500 => {
                f.write_str("The request could not be processed.")
            }
            GatewayError::Internal { .. } => {
                f.write_str("The gateway failed to process the request.")
            }
            GatewayError::Refused(refusal) => refusal_message(f, refusal),
        }
    }
}

/// A client's name, cut short enough to quote in a message.
fn shortened(name: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 256;
    if name.len() <= MAX {
        return name.into();
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end]).into()
}

fn per_minute(dimension: Dimension) -> &'static str {
    match dimension {
        Dimension::Requests => "requests per min (RPM)",
        Dimension::Tokens => "tokens per min (TPM)",
    }
}

fn refusal_message(f: &mut fmt::Formatter, refusal: &Refusal) -> fmt::Result {
    match refusal {
        Refusal::Rate {
            scope,
            id,
            dimension,
            retry_after,
            headers,
        } => {
            let window = match dimension {
                Dimension::Requests => headers.requests,
                Dimension::Tokens => headers.tokens,
            };
            write!(
                f,
                "Rate limit reached for {} `{id}` on {}",
                scope.as_str(),
                per_minute(*dimension)
            )?;
            if let Some(w) = window {
                write!(f, ": Limit {}", w.limit)?;
            }
            write!(
                f,
                ". Please try again in {}.",
                tollgate_plugins::limits::openai_duration(*retry_after)
            )
        }
        Refusal::TooLarge {
            scope,
            id,
            dimension,
            limit,
            requested,
        } => write!(
            f,
            "Request too large for {} `{id}` on {}: Limit {limit}, Requested {requested}. Ask for fewer tokens (max_tokens) or send a shorter prompt.",
            scope.as_str(),
            per_minute(*dimension)
        ),
        Refusal::Budget {
            scope,
            id,
            period,
            limit_usd,
            spent_usd,
            ..
        } => write!(
            f,
            "Budget exceeded for {} `{id}`: ${spent_usd:.4} spent of ${limit_usd:.4} this {} (UTC).",
            scope.as_str(),
            period.as_str()
        ),
        Refusal::OverBudget {
            scope,
            id,
            period,
            limit_usd,
            requested_usd,
        } => write!(
            f,
            "Request too expensive for {} `{id}`: its worst case costs ${requested_usd:.4}, more than the whole budget of ${limit_usd:.4} a {} (UTC). Ask for fewer tokens (max_tokens) or send a shorter prompt.",
            scope.as_str(),
            period.as_str()
        ),
        Refusal::Unavailable => f.write_str(
            "Rate limits cannot be checked right now (the shared limits store is unavailable).",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let e = GatewayError::ModelNotFound("gpt-9".into());
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(e.status(), 404);
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));

        let e = GatewayError::BadRequest {
            message: "bad".into(),
            param: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert!(v["error"]["code"].is_null() && v["error"]["param"].is_null());
    }

    #[test]
    fn sse_error_event() {
        let e = GatewayError::UpstreamFailed("cut".into());
        let ev = e.sse_event();
        let text = std::str::from_utf8(&ev).unwrap();
        assert!(text.starts_with("data: {") && text.ends_with("\n\n"));
        let v: serde_json::Value = serde_json::from_str(&text[6..]).unwrap();
        assert_eq!(v["error"]["code"], "upstream_failed");
    }
}
