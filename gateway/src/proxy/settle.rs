//! Settle: once per request, however it ended. Metrics, plugins, the ledger row, then the
//! limit reservations reconciled with what was used. `logging` settles every request that
//! reaches it; a request dropped before (a panic, a task dropped when the process stops)
//! settles from `RequestCtx`'s destructor, without awaiting anything.

use super::quota;
use super::stages::Stage;
use super::RequestCtx;
use crate::catalog::Tokenizer;
use crate::metering::{self, UsageCounter};
use crate::metrics::Metrics;
use crate::tokens::{self, INLINE_BYTES};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tollgate_plugins::ledger::Ledger;
use tollgate_plugins::limits::Limiter;
use tollgate_plugins::{Metered, Plugin, Settlement};

/// The `model` label of requests for a model that is not configured.
const UNKNOWN_MODEL: &str = "_unknown";

/// Where every request's outcome goes; one per process, shared by every request.
pub struct Accounts {
    pub metrics: Arc<Metrics>,
    /// Lives as long as the process, across reloads.
    pub ledger: Option<Arc<Ledger>>,
    /// Limits and budgets; its state lives as long as the process.
    pub limiter: Arc<Limiter>,
}

impl RequestCtx {
    /// Counts the request in flight: from now on it settles exactly once.
    pub(super) fn open(&mut self, accounts: &Arc<Accounts>) {
        accounts.metrics.in_flight.inc();
        self.accounts = Some(accounts.clone());
    }

    /// Settles the request; `status` is what the client was sent (0 for nothing).
    pub(super) async fn settle(&mut self, status: u16) {
        let Some(accounts) = self.accounts.clone() else {
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
        self.record(&accounts, status, metered);
        self.recorded = true;
        // Reconciling limits may wait on Redis: after the gateway's own accounting.
        let actual = quota::actual(metered);
        while let Some(grant) = self.grants.pop() {
            accounts
                .limiter
                .settle(grant, actual, SystemTime::now())
                .await;
        }
        // Last: a graceful shutdown closes the ledger once nothing is in flight.
        self.accounts = None;
        accounts.metrics.in_flight.dec();
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

    /// Metrics, plugins and the ledger row; nothing here waits.
    fn record(&mut self, accounts: &Accounts, status: u16, metered: Option<Metered>) {
        let logging = Instant::now();
        let metrics = &accounts.metrics;
        let model = match (&self.model, self.unknown_model) {
            (Some(model), _) => model.as_str(),
            (None, true) => UNKNOWN_MODEL,
            (None, false) => "",
        };
        let provider = self.provider.as_deref().unwrap_or("");
        // Metrics first: whatever reads the ledger finds them up to date.
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
            .with_label_values(&[model, provider, status_label(status), "off"])
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
        if let Some(runtime) = &self.runtime {
            let settlement = Settlement {
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
                duration,
                time_to_first_token: self.time_to_first_token,
                overhead: self.overhead(),
                cache: "off",
                metered,
            };
            for plugin in &runtime.plugins {
                plugin.settle(&settlement);
            }
            // A row per request that reached a configured model with a valid key: unknown
            // paths, models and keys are counted in metrics, not billed.
            if let (Some(ledger), Some(_)) = (&accounts.ledger, &self.model) {
                ledger.settle(&settlement);
            }
            self.stages.add(Stage::Log, logging.elapsed());
        }
        metrics.record_stages(&self.stages);
    }
}

impl Drop for RequestCtx {
    /// A request that never reached `logging`: settled now, its usage estimated from lengths
    /// (the tokenizer is no work for a destructor).
    fn drop(&mut self) {
        let Some(accounts) = self.accounts.take() else {
            return;
        };
        log::warn!(
            "request {} ended without settling (status {}): settling it now",
            self.request_id,
            self.status
        );
        let metered = self.usage.take().map(|counter| {
            let (usage, estimated) = counter.settle_by_length(self.body.len());
            metering::metered(usage, estimated, self.facts.and_then(|f| f.prices))
        });
        if !self.recorded {
            self.record(&accounts, self.status, metered);
        }
        let actual = quota::actual(metered);
        for grant in self.grants.drain(..) {
            accounts
                .limiter
                .settle_detached(grant, actual, SystemTime::now());
        }
        accounts.metrics.in_flight.dec();
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
    use tollgate_plugins::limits::{Demand, Quota, Scope, Subject};

    #[tokio::test]
    async fn a_request_dropped_before_it_settles_still_settles() {
        let metrics = Arc::new(Metrics::new());
        let limiter = Arc::new(Limiter::in_process());
        let accounts = Arc::new(Accounts {
            metrics: metrics.clone(),
            ledger: None,
            limiter: limiter.clone(),
        });
        let quota = Quota {
            tpm: Some(1_000),
            ..Quota::default()
        };
        let subjects = [Subject {
            scope: Scope::Key,
            id: "k",
            quota: &quota,
        }];
        let most = Demand {
            tokens: 900,
            usd: 0.0,
        };
        let mut ctx = RequestCtx::new();
        ctx.open(&accounts);
        ctx.grants.push(
            limiter
                .admit(&subjects, most, SystemTime::now())
                .await
                .unwrap(),
        );
        assert_eq!(metrics.in_flight.get(), 1);
        assert!(limiter
            .admit(&subjects, most, SystemTime::now())
            .await
            .is_err());

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
        limiter
            .admit(&subjects, most, SystemTime::now())
            .await
            .expect("its reservation was given back");
    }

    #[tokio::test]
    async fn a_settled_request_settles_once() {
        let metrics = Arc::new(Metrics::new());
        let accounts = Arc::new(Accounts {
            metrics: metrics.clone(),
            ledger: None,
            limiter: Arc::new(Limiter::in_process()),
        });
        let mut ctx = RequestCtx::new();
        ctx.open(&accounts);
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
    }
}
