//! Attempt: the plan's targets tried in turn until one answers. Each attempt translates the
//! request for its target, sends it, and lets the status (and a stream's first token) decide:
//! commit to the answer and relay it, or fail over while nothing has reached the client.

use super::relay::{self, Translation};
use super::stages::Stage;
use super::upstream_call::{self, retry_after, Call, Failure, UpstreamResponse};
use super::{Gateway, RequestCtx};
use crate::drain::Cut;
use crate::error::GatewayError;
use crate::metering::UsageShown;
use crate::pipeline::{self, Pipeline};
use crate::providers::chat::ChatRequest;
use crate::providers::{ClientFormat, Dialect, Operation, Provider, ProviderKind};
use crate::proxy::request::{RequestHead, UsageReports};
use crate::router::{Model, RetryOn, Target};
use crate::router::{Pick, Planner};
use crate::upstream::Endpoint;
use bytes::Bytes;
use pingora::proxy::Session;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// What stays the same across a request's attempts: the admitted request and its plan.
pub(super) struct Exchange<'a> {
    pub model: &'a Model,
    pub head: &'a RequestHead,
    pub body: &'a Bytes,
    pub op: Operation,
    /// The body in the gateway's chat model, parsed the first time a target needs it.
    pub chat: OnceLock<Result<ChatRequest, GatewayError>>,
    pub pipeline: &'a Pipeline,
}

/// How one upstream attempt ended.
enum Attempt {
    /// A response was relayed (or failed mid-relay): the request is over.
    Done(Result<(), GatewayError>),
    /// Nothing reached the client; the next attempt may follow.
    Failed(Failure),
}

/// What an upstream's status means for the request.
#[derive(Debug, PartialEq, Eq)]
enum StatusVerdict {
    /// The answer goes to the client, success or error.
    Commit,
    /// The next target is tried.
    FailOver,
}

fn verdict(status: u16, retry_on: &RetryOn) -> StatusVerdict {
    // A provider refusing the gateway's own credential is never the client's business, and
    // its message may quote part of that credential.
    let credential_refused = status == 401 || status == 403;
    if credential_refused || retry_on.status(status) {
        StatusVerdict::FailOver
    } else {
        StatusVerdict::Commit
    }
}

/// One attempt's upstream request, translated for its target, and how its answer comes back.
struct Prepared<'a> {
    call: Call<'a>,
    translation: Translation<'a>,
    usage_shown: Option<UsageShown>,
}

impl Gateway {
    /// Tries the plan's targets until one answers or none is left.
    pub(super) async fn attempts(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        exchange: &Exchange<'_>,
        mut planner: Planner<'_>,
    ) -> Result<(), GatewayError> {
        let model = exchange.model;
        let mut failures: Vec<(String, Failure)> = Vec::new();
        // Why plugins passed targets over (a provider's own quota spent).
        let mut passed_over: Vec<GatewayError> = Vec::new();
        while ctx.attempts < model.retry.attempts {
            let routed = Instant::now();
            let next = planner.next(routed);
            ctx.stages.add(Stage::Routing, routed.elapsed());
            let Some(Pick { target, endpoint }) = next else {
                break;
            };
            let attempt = pipeline::Attempt {
                model,
                target,
                op: exchange.op,
                head: exchange.head,
                body_len: exchange.body.len(),
                request_id: &ctx.request_id,
            };
            if let Err(refusal) = exchange.pipeline.on_attempt(&attempt, &mut ctx.held).await {
                passed_over.push(refusal);
                continue;
            }
            if ctx.attempts > 0 {
                let wait = model.retry.backoff_before(ctx.attempts);
                if !wait.is_zero() {
                    pingora::time::sleep(wait).await;
                }
            }
            if let Some((from, _)) = failures.last() {
                if *from != target.provider.name {
                    self.metrics
                        .fallbacks
                        .with_label_values(&[&model.name, from, &target.provider.name])
                        .inc();
                }
            }
            ctx.attempts += 1;
            let failure = match self
                .attempt(session, ctx, exchange, target, &endpoint)
                .await
            {
                Attempt::Done(result) => return result,
                Attempt::Failed(failure) => failure,
            };
            exchange.pipeline.attempt_failed(&mut ctx.held).await;
            log::warn!(
                "request {} model {} attempt {}: {} ({}) {}",
                ctx.request_id,
                model.name,
                ctx.attempts,
                target.provider.name,
                endpoint.label,
                failure.describe()
            );
            self.metrics
                .upstream_errors
                .with_label_values(&[&target.provider.name, &failure.kind()])
                .inc();
            let retryable = failure.retryable(&model.retry.on);
            failures.push((target.provider.name.clone(), failure));
            if !retryable {
                break;
            }
        }
        if failures.is_empty() {
            if let Some(refusal) = passed_over.into_iter().min_by_key(GatewayError::retry_wait) {
                return Err(refusal);
            }
            return Err(GatewayError::NoEligibleTarget {
                model: model.name.clone(),
                why: planner.unavailable_summary(Instant::now()),
            });
        }
        Err(all_failed(&failures))
    }

    /// One attempt at `target` through `endpoint`: relayed (the request is done, well or not),
    /// or failed in a way the next attempt may follow.
    async fn attempt(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        exchange: &Exchange<'_>,
        target: &Target,
        endpoint: &Endpoint,
    ) -> Attempt {
        let translating = Instant::now();
        let prepared = match prepare(exchange, target) {
            Ok(prepared) => prepared,
            Err(e) => return Attempt::Done(Err(e)),
        };
        // Preparing a passthrough body (the model name swapped in) counts too.
        ctx.stages.add(Stage::Translate, translating.elapsed());
        let state = &endpoint.state;
        let _in_flight = state.begin();
        let attempt_started = Instant::now();
        // The end of a graceful shutdown's grace period ends the wait for an answer too.
        let mut cut = self.drain.watch();
        let sent = tokio::select! {
            sent = upstream_call::send(&self.connector, &target.provider, endpoint, &prepared.call) => sent,
            _ = cut.arrived() => return Attempt::Done(Err(GatewayError::ShuttingDown)),
        };
        let mut response = match sent {
            Ok(response) => response,
            Err(failure) => {
                ctx.upstream_wait += attempt_started.elapsed();
                self.record_failure(&target.provider, endpoint);
                return Attempt::Failed(failure);
            }
        };
        ctx.upstream_wait += response.waited;
        let status = response.header().status.as_u16();
        if status >= 500 {
            self.record_failure(&target.provider, endpoint);
        }
        if verdict(status, &exchange.model.retry.on) == StatusVerdict::FailOver {
            if status == 429 || status == 503 {
                if let Some(wait) = retry_after(response.header(), SystemTime::now()) {
                    state.cool_down(Instant::now(), wait);
                    log::info!(
                        "{} ({}) asked to retry after {wait:?}: cooling it down",
                        target.provider.name,
                        endpoint.label
                    );
                }
            }
            response.session.shutdown().await;
            return Attempt::Failed(Failure::Status(status));
        }
        // Latency is time to first token: the header for a completion, the first chunk for
        // a stream. A stream commits on its first token, so a server that stalls after its
        // header still fails over.
        let first_chunk = if exchange.head.stream && status == 200 {
            let wait = target
                .provider
                .timeouts
                .first_token
                .saturating_sub(attempt_started.elapsed());
            match first_token(ctx, &mut response, wait, &mut cut).await {
                Ok(chunk) => chunk,
                Err(FirstToken::Cut) => return Attempt::Done(Err(GatewayError::ShuttingDown)),
                Err(FirstToken::Failed(failure)) => {
                    response.session.shutdown().await;
                    self.record_failure(&target.provider, endpoint);
                    return Attempt::Failed(failure);
                }
            }
        } else {
            None
        };
        state.latency.observe(attempt_started.elapsed());
        if status < 500 {
            state.record_success();
        }
        ctx.provider = Some(target.provider.name.clone());
        ctx.upstream_model = Some(target.model.clone());
        ctx.facts = target.facts;
        ctx.time_to_first_token = Some(ctx.started.elapsed());
        let deadline = prepared.call.deadline;
        Attempt::Done(
            relay::relay(
                session,
                ctx,
                &self.connector,
                response,
                relay::Setup {
                    limits: relay::Limits {
                        deadline,
                        idle: target.provider.timeouts.idle,
                        cut,
                    },
                    client_streaming: exchange.head.stream,
                    first_chunk,
                    translation: prepared.translation,
                    kind: target.provider.kind,
                    usage_shown: prepared.usage_shown,
                },
            )
            .await,
        )
    }

    /// Counts a failure against the endpoint, ejecting it after too many in a row.
    fn record_failure(&self, provider: &Provider, endpoint: &Endpoint) {
        if let Some(time) = endpoint
            .state
            .record_failure(Instant::now(), &provider.outlier)
        {
            log::warn!(
                "{} ({}) ejected for {time:?} after consecutive failures",
                provider.name,
                endpoint.label
            );
            self.metrics
                .ejections
                .with_label_values(&[&provider.name, &endpoint.label])
                .inc();
        }
    }
}

/// The request as `target` takes it: the client's body with the target's model swapped in
/// when the target speaks the client's format, else translated through the chat model.
fn prepare<'a>(
    exchange: &'a Exchange<'_>,
    target: &'a Target,
) -> Result<Prepared<'a>, GatewayError> {
    let Exchange { head, body, op, .. } = *exchange;
    let client = ClientFormat::for_op(op);
    let kind = target.provider.kind;
    let (usage_reports, usage_shown) = usage_reports(head, kind, op);
    let (upstream_body, translation) = if client.native_to(kind) {
        (
            head.body_for(body, &target.model, usage_reports),
            Translation::None,
        )
    } else {
        let chat = exchange
            .chat
            .get_or_init(|| client.parse_request(body))
            .as_ref()
            .map_err(Clone::clone)?;
        let (dialect, translated) = Dialect::translate(kind, chat, target.upstream());
        (
            Bytes::from(serde_json::to_vec(&translated).expect("a JSON value serializes")),
            Translation::Translate {
                from: dialect,
                to: client,
                chat,
            },
        )
    };
    // A Messages request reaches OpenAI-style providers as a chat completion.
    let upstream_op = match op {
        Operation::Messages if kind.speaks_openai() => Operation::ChatCompletions,
        op => op,
    };
    Ok(Prepared {
        call: Call {
            op: upstream_op,
            stream: head.stream,
            body: upstream_body,
            upstream_model: &target.model,
            deadline: Instant::now() + target.provider.timeouts.total,
        },
        translation,
        usage_shown,
    })
}

/// Why a stream's first token did not come.
enum FirstToken {
    /// The grace period of a graceful shutdown ended.
    Cut,
    Failed(Failure),
}

/// Waits up to `wait` for a stream's first chunk.
async fn first_token(
    ctx: &mut RequestCtx,
    response: &mut UpstreamResponse,
    wait: std::time::Duration,
    cut: &mut Cut,
) -> Result<Option<Bytes>, FirstToken> {
    let waiting = Instant::now();
    let first = tokio::select! {
        first = pingora::time::timeout(wait, response.session.read_response_body()) => first,
        _ = cut.arrived() => {
            response.session.shutdown().await;
            return Err(FirstToken::Cut);
        }
    };
    ctx.upstream_wait += waiting.elapsed();
    match first {
        Ok(Ok(chunk)) => Ok(chunk),
        Ok(Err(e)) => Err(FirstToken::Failed(Failure::Reset(
            e.etype().as_str().to_lowercase(),
        ))),
        Err(_) => Err(FirstToken::Failed(Failure::Timeout(
            "no first token in time".into(),
        ))),
    }
}
/// The usage reports to ask an OpenAI-style stream for, so that every stream is metered from
/// the provider's own count (vLLM's running count even covers streams cut short), and which
/// of them the client asked to see.
fn usage_reports(
    head: &RequestHead,
    kind: ProviderKind,
    op: Operation,
) -> (Option<UsageReports>, Option<UsageShown>) {
    let streams_openai = head.stream
        && kind.speaks_openai()
        && matches!(op, Operation::ChatCompletions | Operation::Completions);
    let wanted = if kind.reports_running_usage() && !head.continuous_usage {
        UsageReports::Continuous
    } else if !head.include_usage {
        UsageReports::Final
    } else {
        return (None, None);
    };
    if !streams_openai {
        return (None, None);
    }
    let shown = UsageShown {
        final_chunk: head.include_usage,
        running: head.continuous_usage,
    };
    (Some(wanted), Some(shown))
}

fn all_failed(failures: &[(String, Failure)]) -> GatewayError {
    let summary = failures
        .iter()
        .map(|(provider, f)| format!("{provider}: {}", f.describe()))
        .collect::<Vec<_>>()
        .join("; ");
    match failures.last() {
        Some((_, Failure::Timeout(_))) => GatewayError::UpstreamTimeout(summary),
        _ => GatewayError::UpstreamFailed(summary),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_commit_or_fail_over() {
        let all = RetryOn {
            connect: true,
            timeout: true,
            status_429: true,
            status_5xx: true,
        };
        let none = RetryOn {
            connect: false,
            timeout: false,
            status_429: false,
            status_5xx: false,
        };
        for (status, with_all, with_none) in [
            (200, StatusVerdict::Commit, StatusVerdict::Commit),
            (400, StatusVerdict::Commit, StatusVerdict::Commit),
            (404, StatusVerdict::Commit, StatusVerdict::Commit),
            // The gateway's own credential refused: never the client's answer.
            (401, StatusVerdict::FailOver, StatusVerdict::FailOver),
            (403, StatusVerdict::FailOver, StatusVerdict::FailOver),
            (429, StatusVerdict::FailOver, StatusVerdict::Commit),
            (500, StatusVerdict::FailOver, StatusVerdict::Commit),
            (529, StatusVerdict::FailOver, StatusVerdict::Commit),
        ] {
            assert_eq!(verdict(status, &all), with_all, "{status}");
            assert_eq!(verdict(status, &none), with_none, "{status}");
        }
    }
}
