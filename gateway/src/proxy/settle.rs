//! Settle: once per request, however it ended. Usage metered, metrics, then the plugins'
//! settle phase (access log, ledger, limits reconciled with what was used). `logging`
//! settles every request that reaches it; a request dropped before (a panic, a task dropped
//! when the process stops) settles from `RequestCtx`'s destructor, without awaiting anything.

use super::stages::Stage;
use super::RequestCtx;
use crate::catalog::Tokenizer;
use crate::metering;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::providers::usage::UsageCounter;
use crate::tokens::{self, INLINE_BYTES};
use std::sync::Arc;
use std::time::Instant;
use tollgate_plugins::{Metered, Settlement};

/// The `model` label of requests for a model that is not configured.
const UNKNOWN_MODEL: &str = "_unknown";

impl RequestCtx {
    /// Counts the request in flight: from now on it settles exactly once.
    pub(super) fn open(&mut self, metrics: &Arc<Metrics>, pipeline: Arc<Pipeline>) {
        metrics.in_flight.inc();
        self.metrics = Some(metrics.clone());
        self.held = pipeline.slots();
        self.pipeline = Some(pipeline);
    }

    /// Settles the request; `status` is what the client was sent (0 for nothing).
    pub(super) async fn settle(&mut self, status: u16) {
        let Some(metrics) = self.metrics.clone() else {
            return;
        };
        let metering = Instant::now();
        let metered = match self.usage.take() {
            Some(counter) => Some(self.meter(counter).await),
            None => None,
        };
        if metered.is_some() {
            self.stages.add(Stage::Meter, metering.elapsed());
        }
        let logging = Instant::now();
        self.record(&metrics, status, metered);
        self.recorded = true;
        if let Some(pipeline) = self.pipeline.clone() {
            // Out of the context: a task dropped while a plugin waits gives back what the
            // slots hold as they drop.
            let mut held = std::mem::take(&mut self.held);
            pipeline
                .settle(&self.settlement(status, metered), &mut held)
                .await;
        }
        self.stages.add(Stage::Log, logging.elapsed());
        metrics.record_stages(&self.stages);
        // Last: a graceful shutdown closes the ledger once nothing is in flight.
        self.metrics = None;
        metrics.in_flight.dec();
    }

    /// The tokens and cost of the answer, counted on the counting pool when the provider
    /// reported no usage and there is much to count.
    async fn meter(&self, counter: UsageCounter) -> Metered {
        let tokenizer = self.facts.map_or(Tokenizer::Cl100k, |f| f.tokenizer);
        let (usage, estimated) = if counter.settle_cost(&self.body) <= INLINE_BYTES {
            counter.settle(&self.body, tokenizer)
        } else {
            let body = self.body.clone();
            let by_length = counter.settle_by_length(body.len());
            tokens::off_worker(move || counter.settle(&body, tokenizer))
                .await
                .unwrap_or(by_length)
        };
        metering::metered(usage, estimated, self.facts.and_then(|f| f.prices))
    }

    /// How the request ended, as the plugins' settle phase sees it.
    fn settlement(&self, status: u16, metered: Option<Metered>) -> Settlement<'_> {
        Settlement {
            request_id: &self.request_id,
            started_at: self.started_at,
            method: self.method.as_str(),
            path: &self.path,
            key_id: self.key_id.as_deref(),
            team: self.team.as_deref(),
            project: self.project.as_deref(),
            tags: self.tags.as_deref(),
            model: self.model.as_deref(),
            provider: self.provider.as_deref(),
            upstream_model: self.upstream_model.as_deref(),
            status,
            attempts: self.attempts,
            duration: self.started.elapsed(),
            time_to_first_token: self.time_to_first_token,
            overhead: self.overhead(),
            cache: self.marks.cache.as_str(),
            metered,
        }
    }

    /// The request's metrics; nothing here waits.
    fn record(&self, metrics: &Metrics, status: u16, metered: Option<Metered>) {
        let model = match (&self.model, self.unknown_model) {
            (Some(model), _) => model.as_str(),
            (None, true) => UNKNOWN_MODEL,
            (None, false) => "",
        };
        let provider = self.provider.as_deref().unwrap_or("");
        if let Some(m) = &metered {
            let team = self.team.as_deref().unwrap_or("");
            metrics.record_usage(model, provider, team, m);
        }
        if let Some(ttft) = self.time_to_first_token {
            metrics
                .time_to_first_token
                .with_label_values(&[model, provider])
                .observe(ttft.as_secs_f64());
        }
        metrics
            .requests
            .with_label_values(&[
                model,
                provider,
                status_label(status),
                self.marks.cache.as_str(),
            ])
            .inc();
        let duration = self.started.elapsed();
        metrics
            .request_duration
            .with_label_values(&[model, provider])
            .observe(duration.as_secs_f64());
        if !provider.is_empty() {
            metrics
                .latency
                .record(model, provider, duration, self.time_to_first_token);
        }
    }
}

impl Drop for RequestCtx {
    /// A request that never reached `logging`: settled now, its usage estimated from lengths
    /// (the tokenizer is no work for a destructor).
    fn drop(&mut self) {
        let Some(metrics) = self.metrics.take() else {
            return;
        };
        log::warn!(
            "request {} ended without settling (status {}): settling it now",
            self.request_id,
            self.status
        );
        if !self.recorded {
            let metered = self.usage.take().map(|counter| {
                let (usage, estimated) = counter.settle_by_length(self.body.len());
                metering::metered(usage, estimated, self.facts.and_then(|f| f.prices))
            });
            self.record(&metrics, self.status, metered);
            if let Some(pipeline) = self.pipeline.clone() {
                let mut held = std::mem::take(&mut self.held);
                pipeline.settle_now(&self.settlement(self.status, metered), &mut held);
            }
            metrics.record_stages(&self.stages);
        }
        metrics.in_flight.dec();
    }
}

fn status_label(status: u16) -> &'static str {
    match status {
        0 => "0",
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Held, Phases, Plugin};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts how each request was settled.
    #[derive(Default)]
    struct Counting {
        settled: AtomicU32,
        settled_now: AtomicU32,
    }

    #[async_trait]
    impl Plugin for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }

        fn phases(&self) -> Phases {
            Phases::SETTLE_WAITS
        }

        async fn settle(&self, _outcome: &Settlement<'_>, _held: &mut Held) {
            self.settled.fetch_add(1, Ordering::SeqCst);
        }

        fn settle_now(&self, _outcome: &Settlement<'_>, _held: &mut Held) {
            self.settled_now.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn opened() -> (RequestCtx, Arc<Metrics>, Arc<Counting>) {
        let metrics = Arc::new(Metrics::new());
        let counting = Arc::new(Counting::default());
        let mut ctx = RequestCtx::new();
        ctx.open(&metrics, Arc::new(Pipeline::new(vec![counting.clone()])));
        (ctx, metrics, counting)
    }

    #[test]
    fn a_request_dropped_before_it_settles_still_settles() {
        let (ctx, metrics, counting) = opened();
        assert_eq!(metrics.in_flight.get(), 1);

        // A panic while the request runs drops its context without `logging`.
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _running = ctx;
            panic!("a bug on the request path");
        }));
        assert!(unwound.is_err());
        assert_eq!(metrics.in_flight.get(), 0);
        assert_eq!(
            metrics
                .requests
                .with_label_values(&["", "", "0", "off"])
                .get(),
            1
        );
        assert_eq!(counting.settled_now.load(Ordering::SeqCst), 1);
        assert_eq!(counting.settled.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_settled_request_settles_once() {
        let (mut ctx, metrics, counting) = opened();
        ctx.settle(200).await;
        drop(ctx);
        assert_eq!(metrics.in_flight.get(), 0);
        assert_eq!(
            metrics
                .requests
                .with_label_values(&["", "", "200", "off"])
                .get(),
            1
        );
        assert_eq!(
            metrics
                .requests
                .with_label_values(&["", "", "0", "off"])
                .get(),
            0
        );
        assert_eq!(counting.settled.load(Ordering::SeqCst), 1);
        assert_eq!(counting.settled_now.load(Ordering::SeqCst), 0);
    }
}
