//! The data plane: Pingora's `ProxyHttp` with every AI request answered from
//! `request_filter` (admit → plan → attempt → relay), and metrics settled in `logging`.

mod attempt;
mod plan;
mod relay;
pub mod request;
mod respond;
mod settle;
pub mod stages;
mod upstream_call;

use crate::catalog::ModelFacts;
use crate::config::runtime::Key;
use crate::config::Runtime;
use crate::drain::Drain;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::pipeline::{self, Held, Marks, Pipeline, Pipelines, RequestFacts, Verdict};
use crate::providers::usage::UsageCounter;
use crate::providers::{ClientFormat, Operation};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use attempt::Exchange;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use request::RequestHead;
use serde_json::json;
use stages::{Stage, Stages};
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Chargeback tags longer than this are cut: they land in every ledger row.
const MAX_TAGS_LEN: usize = 256;

/// The most header bytes (names and values) a request may carry, as Envoy's default.
const MAX_HEADER_BYTES: usize = 60 * 1024;

pub struct Gateway {
    runtime: Arc<ArcSwap<Runtime>>,
    connector: Connector,
    pipelines: Pipelines,
    metrics: Arc<Metrics>,
    drain: Arc<Drain>,
}

impl Gateway {
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        connector: Connector,
        pipelines: Pipelines,
        drain: Arc<Drain>,
    ) -> Self {
        Gateway {
            runtime,
            connector,
            metrics: pipelines.metrics().clone(),
            pipelines,
            drain,
        }
    }
}

/// Per-request state, from admission to the `logging` phase.
pub struct RequestCtx {
    started: Instant,
    request_id: String,
    /// Set while the request is counted in flight and has yet to settle.
    metrics: Option<Arc<Metrics>>,
    /// The plugins of the request's config snapshot, and each one's state for the request.
    pipeline: Option<Arc<Pipeline>>,
    held: Vec<Held>,
    /// Metrics, plugins and the ledger have their record of the request.
    recorded: bool,
    /// The status sent to the client so far (0 for none).
    status: u16,
    method: http::Method,
    path: String,
    /// The config snapshot this request runs on from start to end.
    runtime: Option<Arc<Runtime>>,
    key_id: Option<String>,
    /// The configured model the request named, once found.
    model: Option<String>,
    /// The request named a model that is not configured.
    unknown_model: bool,
    provider: Option<String>,
    upstream_model: Option<String>,
    /// The strategy that chose the target, for `x-tollgate-route`.
    route: Cow<'static, str>,
    /// Messages dropped by `context: truncate_middle`.
    truncated: Option<usize>,
    /// The wire format the client speaks, for answers and errors.
    client: ClientFormat,
    attempts: u32,
    upstream_wait: Duration,
    /// When the request arrived, on the wall clock (for the ledger).
    started_at: SystemTime,
    team: Option<String>,
    project: Option<String>,
    /// The client's `x-tollgate-tags`.
    tags: Option<String>,
    /// The request body, for a token estimate when the provider reports no usage.
    body: Bytes,
    /// What the catalog knows about the upstream model that answered: tokenizer, prices.
    facts: Option<ModelFacts>,
    time_to_first_token: Option<Duration>,
    /// What the answer said about its usage; `None` when no upstream answered.
    usage: Option<UsageCounter>,
    /// What plugins left for the response and the record (`x-ratelimit-*`, the cache).
    marks: Marks,
    /// Time inside the gateway, per stage.
    stages: Stages,
}

impl RequestCtx {
    fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            metrics: None,
            pipeline: None,
            held: Vec::new(),
            recorded: false,
            status: 0,
            method: http::Method::GET,
            path: String::new(),
            runtime: None,
            key_id: None,
            model: None,
            unknown_model: false,
            provider: None,
            upstream_model: None,
            route: Cow::Borrowed(""),
            truncated: None,
            client: ClientFormat::OpenAi,
            attempts: 0,
            upstream_wait: Duration::ZERO,
            started_at: SystemTime::now(),
            team: None,
            project: None,
            tags: None,
            body: Bytes::new(),
            facts: None,
            time_to_first_token: None,
            usage: None,
            marks: Marks::default(),
            stages: Stages::default(),
        }
    }

    /// Time spent in the gateway itself so far, upstream waiting excluded.
    fn overhead(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.upstream_wait)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Instant::now();
        ctx.started_at = SystemTime::now();
        let runtime = self.runtime.load_full();
        let pipeline = self.pipelines.for_runtime(&runtime);
        ctx.open(&self.metrics, pipeline.clone());
        ctx.request_id = request_id(session.get_header("x-request-id"));
        let req = session.req_header();
        ctx.method = req.method.clone();
        ctx.path = req.uri.path().to_string();
        // A client that stops reading must not hold its upstream (and reservations) forever,
        // nor one that stops sending its body a worker's attention.
        let downstream = session.as_downstream_mut();
        downstream.set_write_timeout(Some(runtime.server.client_write_timeout));
        downstream.set_read_timeout(Some(runtime.server.client_body_timeout));
        ctx.runtime = Some(runtime.clone());
        match self.serve(session, ctx, &runtime, &pipeline).await {
            Ok(()) => Ok(true),
            // Too late for an error response: drop the connection so the client sees the cut.
            Err(e) if e == GatewayError::ClientGone || session.response_written().is_some() => {
                Err(Error::explain(ConnectionClosed, e.to_string()).into_down())
            }
            Err(e) => {
                respond::error(session, ctx, &e).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // request_filter answers every request, so Pingora's own upstream path never runs.
        Error::e_explain(
            InternalError,
            "the gateway drives its upstream calls itself",
        )
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // Whatever Pingora fails on still answers in OpenAI's shape, never a bare status page.
        let code = match (e.etype(), e.esource()) {
            (HTTPStatus(code), _) => *code,
            (_, ErrorSource::Downstream)
                if matches!(e.etype(), WriteError | ReadError | ConnectionClosed) =>
            {
                0
            }
            (_, ErrorSource::Downstream) => 400,
            (_, ErrorSource::Upstream) => 502,
            _ => 500,
        };
        if code > 0 && session.response_written().is_none() {
            let _ = respond::error(session, ctx, &GatewayError::Internal { status: code }).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        // A client hanging up mid-stream is routine, not an error worth a log line.
        matches!(e.etype(), ConnectionClosed) && e.esource() == &ErrorSource::Downstream
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        ctx.settle(status).await;
    }
}

impl Gateway {
    async fn serve(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Runtime,
        pipeline: &Pipeline,
    ) -> std::result::Result<(), GatewayError> {
        let header_bytes: usize = session
            .req_header()
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if header_bytes > MAX_HEADER_BYTES {
            return Err(GatewayError::HeadersTooLarge {
                limit: MAX_HEADER_BYTES,
            });
        }
        let (method, path) = (ctx.method.as_str().to_string(), ctx.path.clone());
        if let Some(op) = Operation::from_path(&path) {
            if method != "POST" {
                return Err(GatewayError::MethodNotAllowed { method, path });
            }
            ctx.client = ClientFormat::for_op(op);
            if op == Operation::Messages {
                check_anthropic_version(session)?;
            }
            let key = ctx.stages.time(Stage::Auth, || authenticate(session, rt))?;
            if let Some(key) = &key {
                ctx.key_id = Some(key.id.clone());
                ctx.team = key.team.clone();
                ctx.project = key.project.clone();
            }
            ctx.tags = session
                .get_header("x-tollgate-tags")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| t.chars().take(MAX_TAGS_LEN).collect());
            return self.complete(session, ctx, rt, pipeline, key, op).await;
        }
        if path == "/v1/models" || path.starts_with("/v1/models/") {
            if method != "GET" {
                return Err(GatewayError::MethodNotAllowed { method, path });
            }
            let key = authenticate(session, rt)?;
            let body = list_models(rt, key.as_deref(), path.strip_prefix("/v1/models/"))?;
            respond::json(session, ctx, 200, body)
                .await
                .map_err(|_| GatewayError::ClientGone)?;
            return Ok(());
        }
        Err(GatewayError::UnknownPath(path))
    }

    /// admit → plan → attempt → relay, for the completion-style operations; settle follows
    /// in `logging`.
    async fn complete(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        rt: &Runtime,
        pipeline: &Pipeline,
        key: Option<Arc<Key>>,
        op: Operation,
    ) -> std::result::Result<(), GatewayError> {
        let body = read_body(session, rt.server.max_body_bytes).await?;
        let head = ctx
            .stages
            .time(Stage::Parse, || RequestHead::parse(&body))?;
        if matches!(op, Operation::ChatCompletions | Operation::Messages) && !head.has_messages {
            return Err(GatewayError::BadRequest {
                message: "`messages` must be a non-empty array.".into(),
                param: Some("messages"),
            });
        }
        let Some(model) = rt.model(&head.model) else {
            ctx.unknown_model = true;
            return Err(GatewayError::ModelNotFound(head.model.clone()));
        };
        // Only configured names become labels and ledger rows: the client's are unbounded.
        ctx.model = Some(model.name.clone());
        if let Some(key) = &key {
            if !key.allows(&model.name) {
                return Err(GatewayError::ModelNotAllowed(model.name.clone()));
            }
        }

        let admission_started = Instant::now();
        let facts = RequestFacts {
            runtime: rt,
            key: key.as_deref(),
            model,
            op,
            head: &head,
            headers: &session.req_header().headers,
            request_id: &ctx.request_id,
        };
        let mut request = pipeline::Request::new(facts, body, &mut ctx.marks);
        let verdict = pipeline.on_request(&mut request, &mut ctx.held).await?;
        let (body, rewritten, eligible) = request.into_parts();
        if let Verdict::Answer(answer) = verdict {
            ctx.stages
                .add(Stage::Admission, admission_started.elapsed());
            if let Some(usage) = answer.usage {
                let mut counter = UsageCounter::default();
                counter.report(usage);
                ctx.usage = Some(counter);
            }
            return respond::answer(session, ctx, answer).await;
        }
        let planned = plan::plan(session, rt, model, key.as_deref(), op, body, eligible).await?;
        ctx.stages
            .add(Stage::Admission, admission_started.elapsed());
        let body = planned.body;
        // The body changed since it was parsed: its head is read again.
        let head = if rewritten || planned.truncated.is_some() {
            RequestHead::parse(&body)?
        } else {
            head
        };
        ctx.body = body.clone();
        ctx.route = planned.route;
        ctx.truncated = planned.truncated;
        if planned.planner.in_panic() {
            ctx.route = format!("{} (panic: ejected endpoints in use)", ctx.route).into();
            self.metrics
                .panic_routes
                .with_label_values(&[&model.name])
                .inc();
        }
        let exchange = Exchange {
            model,
            head: &head,
            body: &body,
            op,
            chat: OnceLock::new(),
            pipeline,
        };
        self.attempts(session, ctx, &exchange, planned.planner)
            .await
    }
}

/// The client's `x-request-id` when it is sane, else a fresh random one.
pub fn request_id(client_value: Option<&http::HeaderValue>) -> String {
    client_value
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)))
}

/// The virtual key of the request, or `None` when the config defines no keys.
fn authenticate(
    session: &Session,
    rt: &Runtime,
) -> std::result::Result<Option<Arc<Key>>, GatewayError> {
    let Some(keys) = &rt.keys else {
        return Ok(None);
    };
    let header = |name: &str| session.get_header(name).and_then(|v| v.to_str().ok());
    let presented = header("authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| header("x-api-key"))
        .or_else(|| header("api-key"))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or(GatewayError::MissingKey)?;
    keys.find(presented)
        .cloned()
        .map(Some)
        .ok_or(GatewayError::InvalidKey)
}

/// Reads the whole request body, refusing more than `limit` bytes.
async fn read_body(session: &mut Session, limit: u64) -> std::result::Result<Bytes, GatewayError> {
    let declared = session
        .get_header("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    // Clients that ask first (curl does above 1 MiB) would otherwise wait a second for this.
    let expects_continue = session
        .get_header("expect")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(|_| GatewayError::ClientGone)?;
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|e| body_error(&e))?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The first version of the Messages API.
const FIRST_ANTHROPIC_VERSION: &str = "2023-01-01";

/// An Anthropic client's `anthropic-version`, when it sends one, must be a version there can
/// be: a date (YYYY-MM-DD) from the API's first on. The gateway sends upstream its own.
fn check_anthropic_version(session: &Session) -> std::result::Result<(), GatewayError> {
    let Some(value) = session.get_header("anthropic-version") else {
        return Ok(());
    };
    let plausible = value.to_str().is_ok_and(|v| {
        let v = v.trim();
        let b = v.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        b.len() == 10
            && digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && ("01"..="12").contains(&&v[5..7])
            && ("01"..="31").contains(&&v[8..10])
            && v >= FIRST_ANTHROPIC_VERSION
    });
    if plausible {
        Ok(())
    } else {
        Err(GatewayError::BadRequest {
            message: format!(
                "anthropic-version must be an API version date, {FIRST_ANTHROPIC_VERSION} or later (e.g. 2023-06-01)."
            ),
            param: None,
        })
    }
}

/// Why a request body could not be read: the client's malformed framing or slowness is
/// answered; a client that left is not.
fn body_error(e: &Error) -> GatewayError {
    match e.etype() {
        // pingora-core's error for a chunk size or terminator that does not parse.
        ErrorType::Custom("InvalidChunk") => GatewayError::BadRequest {
            message: "The request body's chunked transfer encoding is malformed.".into(),
            param: None,
        },
        ErrorType::ReadTimedout => GatewayError::RequestTimeout,
        // Answered in case the client only half-closed; a client that left never reads it.
        ErrorType::ConnectionClosed => GatewayError::BadRequest {
            message: "The request body ended before its declared length.".into(),
            param: None,
        },
        _ => GatewayError::ClientGone,
    }
}

/// `GET /v1/models` (or one model): what this key may call.
fn list_models(
    rt: &Runtime,
    key: Option<&Key>,
    one: Option<&str>,
) -> std::result::Result<Bytes, GatewayError> {
    let created = rt
        .loaded_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let entry = |name: &str| json!({"id": name, "object": "model", "created": created, "owned_by": "tollgate"});
    let allowed = |name: &str| key.is_none_or(|k| k.allows(name));
    let value = match one {
        Some(name) => {
            if rt.model(name).is_none() {
                return Err(GatewayError::ModelNotFound(name.to_string()));
            }
            if !allowed(name) {
                return Err(GatewayError::ModelNotAllowed(name.to_string()));
            }
            entry(name)
        }
        None => json!({
            "object": "list",
            "data": rt.models.iter().filter(|m| allowed(&m.name)).map(|m| entry(&m.name)).collect::<Vec<_>>(),
        }),
    };
    Ok(Bytes::from(value.to_string()))
}
