//! Relay a committed upstream response to the client chunk by chunk: nothing is buffered,
//! a client that leaves cancels the upstream call, and a stream that breaks midway ends with
//! one error event.

use super::upstream_call::UpstreamResponse;
use super::RequestCtx;
use crate::error::GatewayError;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use std::time::{Duration, Instant};

/// Upstream headers that describe the upstream connection or account, not the response.
fn forwardable(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::CONNECTION
            | header::TRANSFER_ENCODING
            | header::TE
            | header::TRAILER
            | header::UPGRADE
            | header::PROXY_AUTHENTICATE
            | header::SERVER
            | header::DATE
            | header::SET_COOKIE
    ) && name.as_str() != "keep-alive"
        && name.as_str() != "x-request-id"
        && !name.as_str().starts_with("x-ratelimit-")
        && !name.as_str().starts_with("x-tollgate-")
}

/// How long the relay may wait on the upstream.
pub struct Limits {
    /// The end of the whole exchange.
    pub deadline: Instant,
    /// Between two chunks.
    pub idle: Duration,
}

/// `first_chunk`: body already read from the upstream (a stream's first token).
pub async fn relay(
    session: &mut Session,
    ctx: &mut RequestCtx,
    connector: &Connector,
    mut upstream: UpstreamResponse,
    limits: Limits,
    client_streaming: bool,
    mut first_chunk: Option<Bytes>,
) -> Result<(), GatewayError> {
    let Limits { deadline, idle } = limits;
    let header = upstream.header();
    let mut resp = ResponseHeader::build(header.status, Some(header.headers.len() + 6))
        .map_err(|_| GatewayError::ClientGone)?;
    for (name, value) in header.headers.iter().filter(|(n, _)| forwardable(n)) {
        resp.append_header(name.clone(), value.clone())
            .map_err(|_| GatewayError::ClientGone)?;
    }
    let event_stream = header
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
        || client_streaming;
    if !header.headers.contains_key(header::CONTENT_LENGTH) {
        resp.insert_header(header::TRANSFER_ENCODING, "chunked")
            .map_err(|_| GatewayError::ClientGone)?;
    }
    let provider = ctx.provider.clone().unwrap_or_default();
    let upstream_model = ctx.upstream_model.clone().unwrap_or_default();
    for (name, value) in [
        ("x-request-id", ctx.request_id.clone()),
        ("x-tollgate-provider", provider),
        ("x-tollgate-model", upstream_model),
        ("x-tollgate-attempts", ctx.attempts.to_string()),
        ("x-tollgate-route", ctx.route.to_string()),
        (
            "x-tollgate-overhead-us",
            ctx.overhead().as_micros().to_string(),
        ),
    ] {
        resp.insert_header(name, value)
            .map_err(|_| GatewayError::ClientGone)?;
    }
    if let Some(dropped) = ctx.truncated {
        resp.insert_header("x-tollgate-truncated", format!("{dropped} messages"))
            .map_err(|_| GatewayError::ClientGone)?;
    }
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        upstream.session.shutdown().await;
        return Err(GatewayError::ClientGone);
    }

    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        let read_started = Instant::now();
        let next = match first_chunk.take() {
            Some(chunk) => Ok(Ok(Some(chunk))),
            None => tokio::select! {
            // Upstream first: when data is already there, the client probe costs nothing.
            biased;
            read = pingora::time::timeout(wait, upstream.session.read_response_body()) => read,
            // Resolves only when the client hangs up: stop generating tokens nobody reads.
            _ = session.as_downstream_mut().read_body_or_idle(true) => {
                upstream.session.shutdown().await;
                return Err(GatewayError::ClientGone);
            }
            },
        };
        ctx.upstream_wait += read_started.elapsed();
        let (data, after) = match next {
            Ok(Ok(Some(chunk))) => {
                let (data, after) = take_ready(&mut upstream.session, chunk).await;
                (Some(data), after)
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => (None, Err(e)),
            Err(_) => (
                None,
                Err(pingora::Error::explain(
                    pingora::ErrorType::ReadTimedout,
                    "idle timeout",
                )),
            ),
        };
        if let Some(data) = data {
            if session
                .write_response_body(Some(data), false)
                .await
                .is_err()
            {
                upstream.session.shutdown().await;
                return Err(GatewayError::ClientGone);
            }
        }
        let failure = match after {
            Ok(false) => continue,
            Ok(true) => break,
            Err(e) if matches!(e.etype(), pingora::ErrorType::ReadTimedout) => {
                GatewayError::UpstreamTimeout(
                    "no data from the upstream within the idle timeout".into(),
                )
            }
            Err(e) => GatewayError::UpstreamFailed(format!(
                "the upstream connection broke mid-response ({})",
                e.etype().as_str().to_lowercase()
            )),
        };
        upstream.session.shutdown().await;
        if event_stream {
            // The client's stream ends with one error event and no [DONE].
            let _ = session
                .write_response_body(Some(failure.sse_event()), true)
                .await;
            return Ok(());
        }
        return Err(failure);
    }
    session
        .write_response_body(None, true)
        .await
        .map_err(|_| GatewayError::ClientGone)?;
    let idle_timeout = upstream.peer.options.idle_timeout;
    connector
        .release_http_session(upstream.session, &*upstream.peer, idle_timeout)
        .await;
    Ok(())
}

/// Chunks already delivered together are written together, up to this many bytes.
const COALESCE_LIMIT: usize = 64 * 1024;

/// `first` plus whatever the upstream has already delivered, without waiting for more (so
/// streaming latency is unchanged, and a burst costs one downstream write instead of many).
/// After the data: `Ok(true)` when the body ended, `Ok(false)` when more may come.
async fn take_ready(upstream: &mut HttpSession, first: Bytes) -> (Bytes, pingora::Result<bool>) {
    let mut buf: Option<BytesMut> = None;
    let after = loop {
        let len = buf.as_ref().map_or(first.len(), |b| b.len());
        if len >= COALESCE_LIMIT {
            break Ok(false);
        }
        // Polls the read once: `ready` wins only when the upstream has nothing buffered.
        let ready = tokio::select! {
            biased;
            read = upstream.read_response_body() => Some(read),
            _ = std::future::ready(()) => None,
        };
        match ready {
            None => break Ok(false),
            Some(Ok(Some(chunk))) => buf
                .get_or_insert_with(|| BytesMut::from(&first[..]))
                .extend_from_slice(&chunk),
            Some(Ok(None)) => break Ok(true),
            Some(Err(e)) => break Err(e),
        }
    };
    (buf.map_or(first, BytesMut::freeze), after)
}
