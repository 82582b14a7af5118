//! Relay a committed upstream response to the client chunk by chunk: nothing is buffered,
//! a client that leaves cancels the upstream call, and a stream that breaks midway ends with
//! one error event.

use super::stages::Stage;
use super::upstream_call::UpstreamResponse;
use super::RequestCtx;
use crate::drain::Cut;
use crate::error::GatewayError;
use crate::metering::{
    body_usage, partial_texts, StreamMeter, StreamWire, UsageShown, MAX_METERED_BODY,
};
use crate::providers::anthropic_format;
use crate::providers::chat::{ChatRequest, StreamEvent};
use crate::providers::openai_format::{self, StreamRenderer};
use crate::providers::transcode::{ClientStream, StreamTranscoder};
use crate::providers::usage::UsageCounter;
use crate::providers::{ClientFormat, Dialect, ProviderKind, Wire};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName};
use pingora::connectors::http::Connector;
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Upstream headers a client may see: those that describe the response itself. Everything
/// else describes the upstream's connection, servers or account (`openai-organization`,
/// `anthropic-organization-id`, cookies, internal hosts) and stays with the gateway.
fn forwardable(name: &HeaderName) -> bool {
    matches!(
        *name,
        header::CONTENT_TYPE
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CACHE_CONTROL
            | header::RETRY_AFTER
    ) || name.as_str() == "retry-after-ms"
}

/// How long the relay may wait on the upstream.
pub struct Limits {
    /// The end of the whole exchange.
    pub deadline: Instant,
    /// Between two chunks.
    pub idle: Duration,
    /// The end of a graceful shutdown's grace period.
    pub cut: Cut,
}

/// What the client gets when the upstream speaks another dialect than the client.
#[derive(Clone, Copy, Debug)]
pub enum Translation<'a> {
    /// The upstream speaks the client's format: bytes pass through.
    None,
    /// The upstream's answer is translated into the client's format.
    Translate {
        from: Dialect,
        to: ClientFormat,
        chat: &'a ChatRequest,
    },
}

/// How the client's body is framed.
#[derive(Clone, Copy)]
enum Length {
    /// The gateway wrote the whole body itself.
    Exactly(usize),
    /// The upstream's bytes pass unchanged: its framing stands.
    Upstream,
    /// The upstream's bytes are rewritten on the way: chunked.
    Rewritten,
}

/// The client's response header: the upstream's own headers when its body passes through,
/// and the gateway's account of what happened.
fn client_header(
    ctx: &RequestCtx,
    status: u16,
    upstream: Option<&ResponseHeader>,
    content_type: Option<&str>,
    content_length: Length,
) -> Result<ResponseHeader, GatewayError> {
    let failed = |_| GatewayError::ClientGone;
    let mut resp = ResponseHeader::build(status, Some(12)).map_err(failed)?;
    if let Some(upstream) = upstream {
        for (name, value) in upstream.headers.iter().filter(|(n, _)| forwardable(n)) {
            resp.append_header(name.clone(), value.clone())
                .map_err(failed)?;
        }
    }
    if let Some(content_type) = content_type {
        resp.insert_header(header::CONTENT_TYPE, content_type)
            .map_err(failed)?;
    }
    match content_length {
        Length::Exactly(length) => resp.insert_header(header::CONTENT_LENGTH, length.to_string()),
        Length::Upstream if resp.headers.contains_key(header::CONTENT_LENGTH) => Ok(()),
        // A body the gateway rewrites can no longer have the upstream's length.
        Length::Upstream | Length::Rewritten => {
            resp.remove_header(&header::CONTENT_LENGTH);
            resp.insert_header(header::TRANSFER_ENCODING, "chunked")
        }
    }
    .map_err(failed)?;
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
        resp.insert_header(name, value).map_err(failed)?;
    }
    if let Some(dropped) = ctx.truncated {
        resp.insert_header("x-tollgate-truncated", format!("{dropped} messages"))
            .map_err(failed)?;
    }
    for (name, value) in &ctx.marks.headers {
        resp.insert_header(*name, value).map_err(failed)?;
    }
    Ok(resp)
}

/// How to relay one committed upstream response.
pub struct Setup<'a> {
    pub limits: Limits,
    /// The client asked for a stream.
    pub client_streaming: bool,
    /// Body already read from the upstream (a stream's first token).
    pub first_chunk: Option<Bytes>,
    pub translation: Translation<'a>,
    /// Who answers: how to read its usage.
    pub kind: ProviderKind,
    /// The gateway asked for usage reports: which of them the client wants to see.
    pub usage_shown: Option<UsageShown>,
}

/// What happens to the body on its way to the client, and what it tells the meter.
enum BodyFilter {
    /// An error answer: passed through, costing nothing.
    Unmetered,
    /// A stream in the client's own format.
    Stream(StreamMeter),
    /// A whole answer in the client's own format, kept (up to a bound) to read its usage.
    Whole {
        kind: ProviderKind,
        /// The chunks as they came: shared, not copied.
        kept: Vec<Bytes>,
        too_large: bool,
    },
    /// A stream re-spoken in the client's format.
    /// Boxed: its parsers and renderers outweigh the other variants.
    Transcode(Box<StreamTranscoder>),
}

impl BodyFilter {
    fn chunk(&mut self, data: Bytes) -> Bytes {
        match self {
            BodyFilter::Unmetered => data,
            BodyFilter::Stream(meter) => meter.chunk(data),
            BodyFilter::Whole {
                kept, too_large, ..
            } => {
                let size: usize = kept.iter().map(Bytes::len).sum();
                if size + data.len() <= MAX_METERED_BODY {
                    kept.push(data.clone());
                } else {
                    *too_large = true;
                }
                data
            }
            BodyFilter::Transcode(t) => t.chunk(&data),
        }
    }

    /// Bytes of an upstream event still waiting for its end.
    fn buffered(&self) -> usize {
        match self {
            BodyFilter::Stream(meter) => meter.buffered(),
            BodyFilter::Transcode(t) => t.buffered(),
            BodyFilter::Unmetered | BodyFilter::Whole { .. } => 0,
        }
    }

    /// The stage its work counts to.
    fn stage(&self) -> Stage {
        match self {
            BodyFilter::Transcode(_) => Stage::Translate,
            _ => Stage::Meter,
        }
    }

    /// The client's last bytes once the upstream ended.
    fn finish(&mut self) -> Option<Bytes> {
        match self {
            BodyFilter::Stream(meter) => Some(meter.finish()),
            BodyFilter::Transcode(t) => Some(t.finish()),
            BodyFilter::Unmetered | BodyFilter::Whole { .. } => None,
        }
        .filter(|tail| !tail.is_empty())
    }

    /// What the answer said about its usage (`None` for an unmetered answer).
    fn into_counter(self) -> Option<UsageCounter> {
        match self {
            BodyFilter::Unmetered => None,
            BodyFilter::Stream(meter) => Some(meter.into_counter()),
            BodyFilter::Transcode(t) => Some(t.counter),
            BodyFilter::Whole {
                kind,
                kept,
                too_large,
            } => {
                let mut counter = UsageCounter::default();
                let body = match kept.as_slice() {
                    [one] => one.clone(),
                    many => Bytes::from(many.concat()),
                };
                match body_usage(kind, &body) {
                    Some(usage) => counter.report(usage),
                    // Cut short, or without usage: what it carried is counted.
                    None => {
                        if too_large {
                            log::warn!(
                                "an answer over {MAX_METERED_BODY} bytes without readable usage: estimated"
                            );
                        }
                        counter.observe(&StreamEvent::Text(partial_texts(&body)));
                    }
                }
                Some(counter)
            }
        }
    }
}

pub async fn relay(
    session: &mut Session,
    ctx: &mut RequestCtx,
    connector: &Connector,
    upstream: UpstreamResponse,
    setup: Setup<'_>,
) -> Result<(), GatewayError> {
    let status = upstream.header().status.as_u16();
    let mut filter = match setup.translation {
        _ if status != 200 && matches!(setup.translation, Translation::None) => {
            BodyFilter::Unmetered
        }
        Translation::None if setup.client_streaming => {
            let wire = match setup.kind.wire() {
                Wire::Anthropic => StreamWire::Anthropic,
                // Gemini and Triton answers are always translated, never passed through.
                Wire::OpenAi | Wire::Gemini | Wire::Triton => StreamWire::OpenAi,
            };
            BodyFilter::Stream(StreamMeter::new(wire, setup.usage_shown))
        }
        Translation::None => BodyFilter::Whole {
            kind: setup.kind,
            kept: Vec::new(),
            too_large: false,
        },
        Translation::Translate { from, to, chat } if setup.client_streaming && status == 200 => {
            let client = match to {
                ClientFormat::OpenAi => ClientStream::OpenAi(StreamRenderer::new(
                    &chat.model,
                    unix_now(),
                    chat.include_usage,
                )),
                ClientFormat::Anthropic => {
                    ClientStream::Anthropic(anthropic_format::StreamRenderer::new(&chat.model))
                }
            };
            BodyFilter::Transcode(Box::new(StreamTranscoder::new(from.stream(chat), client)))
        }
        Translation::Translate { from, to, chat } => {
            return relay_whole(session, ctx, connector, upstream, setup, (from, to, chat)).await
        }
    };
    let result = relay_body(session, ctx, connector, upstream, &mut filter, setup).await;
    // Whatever ended the relay, the tokens that went out are metered.
    ctx.usage = filter.into_counter();
    result
}

async fn relay_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
    connector: &Connector,
    mut upstream: UpstreamResponse,
    filter: &mut BodyFilter,
    setup: Setup<'_>,
) -> Result<(), GatewayError> {
    let status = upstream.header().status.as_u16();
    let Setup {
        limits: Limits {
            deadline,
            idle,
            mut cut,
        },
        mut first_chunk,
        client_streaming,
        ..
    } = setup;
    let header = upstream.header();
    let event_stream = header
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
        || client_streaming;
    let rewritten = ctx.pipeline.as_ref().is_some_and(|p| p.rewrites_chunks());
    let resp = match filter {
        _ if rewritten => client_header(ctx, status, Some(header), None, Length::Rewritten)?,
        BodyFilter::Transcode(_) => client_header(
            ctx,
            status,
            None,
            Some("text/event-stream"),
            Length::Rewritten,
        )?,
        BodyFilter::Stream(meter) if meter.rewrites() => {
            client_header(ctx, status, Some(header), None, Length::Rewritten)?
        }
        _ => client_header(ctx, status, Some(header), None, Length::Upstream)?,
    };
    if session
        .write_response_header(Box::new(resp), false)
        .await
        .is_err()
    {
        upstream.session.shutdown().await;
        return Err(GatewayError::ClientGone);
    }
    ctx.status = status;

    loop {
        let wait = idle.min(deadline.saturating_duration_since(Instant::now()));
        let read_started = Instant::now();
        let read = match first_chunk.take() {
            Some(chunk) => Ok(Ok(Some(chunk))),
            None => tokio::select! {
                // Upstream first: when data is already there, the probes cost nothing.
                biased;
                read = pingora::time::timeout(wait, upstream.session.read_response_body()) => {
                    read.map(|r| r.map_err(|e| broke(&e)))
                }
                // Resolves only when the client hangs up: stop generating tokens nobody reads.
                _ = session.as_downstream_mut().read_body_or_idle(true) => {
                    // What the upstream already sent was generated: meter it too.
                    let (generated, _) = take_ready(&mut upstream.session, Bytes::new()).await;
                    filter.chunk(generated);
                    upstream.session.shutdown().await;
                    return Err(GatewayError::ClientGone);
                }
                _ = cut.arrived() => Ok(Err(GatewayError::ShuttingDown)),
            },
        };
        ctx.upstream_wait += read_started.elapsed();
        let (data, after) = match read {
            Ok(Ok(Some(chunk))) => {
                let (data, after) = take_ready(&mut upstream.session, chunk).await;
                (Some(data), after.map_err(|e| broke(&e)))
            }
            Ok(Ok(None)) => break,
            Ok(Err(failure)) => (None, Err(failure)),
            Err(_) => (None, Err(idle_timeout())),
        };
        let filtering = Instant::now();
        let data = data.map(|d| filter.chunk(d));
        ctx.stages.add(filter.stage(), filtering.elapsed());
        let (data, ended) = match data {
            Some(data) => {
                let (data, ended) = through_plugins(ctx, status, data, false);
                (Some(data), ended)
            }
            None => (None, false),
        };
        if ended {
            upstream.session.shutdown().await;
            return write_within(session, data, true, deadline).await;
        }
        // An event that never ends (a line without a newline) must not grow without bound.
        let after = match after {
            Ok(_) if filter.buffered() > MAX_EVENT_BYTES => Err(GatewayError::UpstreamFailed(
                format!("an upstream event is larger than {MAX_EVENT_BYTES} bytes"),
            )),
            after => after,
        };
        if let Some(data) = data.filter(|d| !d.is_empty()) {
            if let Err(gone) = write_within(session, Some(data), false, deadline).await {
                upstream.session.shutdown().await;
                return Err(gone);
            }
        }
        let failure = match after {
            Ok(false) => continue,
            Ok(true) => break,
            Err(failure) => failure,
        };
        upstream.session.shutdown().await;
        if event_stream {
            // The client's stream ends with one error event (and no [DONE]).
            let event = match ctx.client {
                ClientFormat::OpenAi => failure.sse_event(),
                ClientFormat::Anthropic => failure.anthropic_sse_event(),
            };
            let _ = session.write_response_body(Some(event), true).await;
            return Ok(());
        }
        return Err(failure);
    }
    let tail = filter.finish();
    let tail = match tail {
        _ if plugins_see_chunks(ctx) => {
            Some(through_plugins(ctx, status, tail.unwrap_or_default(), true).0)
        }
        tail => tail,
    };
    write_within(session, tail, true, deadline).await?;
    let idle_timeout = upstream.peer.options.idle_timeout;
    connector
        .release_http_session(upstream.session, &*upstream.peer, idle_timeout)
        .await;
    Ok(())
}

/// Whether any plugin of the request takes part in the chunk phase.
fn plugins_see_chunks(ctx: &RequestCtx) -> bool {
    ctx.pipeline.as_ref().is_some_and(|p| p.sees_chunks())
}

/// The plugins' chunk phase: what to send, and whether a plugin ended the answer there.
fn through_plugins(ctx: &mut RequestCtx, status: u16, chunk: Bytes, last: bool) -> (Bytes, bool) {
    match &ctx.pipeline {
        Some(pipeline) if pipeline.sees_chunks() => {
            pipeline.on_chunk(status, chunk, last, &mut ctx.held)
        }
        _ => (chunk, false),
    }
}

/// Writes to the client within what is left of the exchange (`total` covers the client's
/// side too); each write is also bounded by the session's client write timeout.
async fn write_within(
    session: &mut Session,
    data: Option<Bytes>,
    end: bool,
    deadline: Instant,
) -> Result<(), GatewayError> {
    let left = deadline.saturating_duration_since(Instant::now());
    match pingora::time::timeout(left, session.write_response_body(data, end)).await {
        Ok(Ok(())) => Ok(()),
        // Too slow a reader counts as gone: nothing more can be sent in time.
        Ok(Err(_)) | Err(_) => Err(GatewayError::ClientGone),
    }
}

/// The upstream's connection failed mid-response.
fn broke(e: &pingora::Error) -> GatewayError {
    GatewayError::UpstreamFailed(format!(
        "the upstream connection broke mid-response ({})",
        e.etype().as_str().to_lowercase()
    ))
}

fn idle_timeout() -> GatewayError {
    GatewayError::UpstreamTimeout("no data from the upstream within the idle timeout".into())
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

/// The most a translated whole body may weigh before the gateway gives up on it.
const MAX_TRANSLATED_BODY: usize = 16 * 1024 * 1024;

/// The most one upstream stream event may weigh (inline images included).
const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// A non-stream (or error) answer in another dialect: read whole, translated, sent with its
/// length.
async fn relay_whole(
    session: &mut Session,
    ctx: &mut RequestCtx,
    connector: &Connector,
    mut upstream: UpstreamResponse,
    setup: Setup<'_>,
    (dialect, client, chat): (Dialect, ClientFormat, &ChatRequest),
) -> Result<(), GatewayError> {
    let Setup {
        mut limits,
        first_chunk,
        ..
    } = setup;
    let status = upstream.header().status.as_u16();
    let mut body = BytesMut::new();
    if let Some(first) = first_chunk {
        body.extend_from_slice(&first);
    }
    loop {
        let wait = limits
            .idle
            .min(limits.deadline.saturating_duration_since(Instant::now()));
        let waiting = Instant::now();
        let read = tokio::select! {
            read = pingora::time::timeout(wait, upstream.session.read_response_body()) => read,
            _ = limits.cut.arrived() => {
                upstream.session.shutdown().await;
                return Err(GatewayError::ShuttingDown);
            }
        };
        ctx.upstream_wait += waiting.elapsed();
        match read {
            Ok(Ok(Some(chunk))) if body.len() + chunk.len() <= MAX_TRANSLATED_BODY => {
                body.extend_from_slice(&chunk)
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(_))) => {
                upstream.session.shutdown().await;
                return Err(GatewayError::UpstreamFailed(
                    "the upstream answer is too large".into(),
                ));
            }
            Ok(Err(e)) => {
                upstream.session.shutdown().await;
                return Err(broke(&e));
            }
            Err(_) => {
                upstream.session.shutdown().await;
                return Err(idle_timeout());
            }
        }
    }
    let idle_timeout = upstream.peer.options.idle_timeout;
    connector
        .release_http_session(upstream.session, &*upstream.peer, idle_timeout)
        .await;
    let (status, json) = if status == 200 {
        let response = dialect.parse_response(&body, chat).map_err(|e| {
            GatewayError::UpstreamFailed(format!("unreadable upstream answer: {e}"))
        })?;
        let mut counter = UsageCounter::for_wire(dialect.wire());
        // An OpenAI-style server that reports nothing leaves zeros: count the text instead.
        if response.usage == Default::default() {
            counter.observe(&StreamEvent::Text(response.text.clone()));
        } else {
            counter.report(response.usage);
        }
        ctx.usage = Some(counter);
        let rendered = match client {
            ClientFormat::OpenAi => openai_format::render_response(&response, unix_now()),
            ClientFormat::Anthropic => anthropic_format::render_response(&response, &chat.model),
        };
        (200, rendered)
    } else {
        // Anthropic's 529 "overloaded" is not a status clients know.
        let status = if status == 529 { 503 } else { status };
        let (message, kind) = dialect.error_message(&body).unwrap_or_else(|| {
            (
                format!("The upstream answered HTTP {status}."),
                "api_error".into(),
            )
        });
        let rendered = match client {
            ClientFormat::OpenAi => {
                json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
            }
            ClientFormat::Anthropic => anthropic_format::error_body(&kind, &message),
        };
        (status, rendered)
    };
    let (bytes, _) = through_plugins(ctx, status, Bytes::from(json.to_string()), true);
    let resp = client_header(
        ctx,
        status,
        None,
        Some("application/json"),
        Length::Exactly(bytes.len()),
    )?;
    session
        .write_response_header(Box::new(resp), false)
        .await
        .map_err(|_| GatewayError::ClientGone)?;
    ctx.status = status;
    session
        .write_response_body(Some(bytes), true)
        .await
        .map_err(|_| GatewayError::ClientGone)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
