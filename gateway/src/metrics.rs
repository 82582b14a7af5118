//! Prometheus metrics (names and labels per the contract), in the gateway's own registry.

use crate::config::Runtime;
use crate::proxy::stages::{Stage, Stages};
use crate::router::gpu::{load_score, Scoring};
use crate::stats::LatencyStats;
use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::time::Instant;
use tollgate_plugins::ledger::Ledger;
use tollgate_plugins::limits::Limiter;
use tollgate_plugins::Metered;

pub struct Metrics {
    registry: Registry,
    /// Percentiles for `/admin/stats`, beside the Prometheus histograms.
    pub latency: LatencyStats,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub fallbacks: IntCounterVec,
    /// Requests routed while too many endpoints were ejected (ejected ones in use).
    pub panic_routes: IntCounterVec,
    /// Cache lookups by result: hit, miss, bypass, coalesced.
    pub cache_requests: IntCounterVec,
    pub cache_bytes: IntGauge,
    /// Calls to the cache's shared store that failed (the cache was skipped), by operation.
    pub cache_errors: IntCounterVec,
    pub cache_entries: IntGauge,
    pub config_reloads: IntCounterVec,
    pub in_flight: IntGauge,
    pub ejections: IntCounterVec,
    tokens: IntCounterVec,
    cost: CounterVec,
    pub time_to_first_token: HistogramVec,
    pub ratelimited: IntCounterVec,
    pub budget_exceeded: IntCounterVec,
    shared_state_up: IntGauge,
    shared_state_errors: IntCounter,
    ledger_rows: IntCounterVec,
    ledger_pending: IntGauge,
    endpoint_healthy: IntGaugeVec,
    endpoint_ewma: GaugeVec,
    endpoint_in_flight: IntGaugeVec,
    endpoint_load_score: GaugeVec,
    /// One per stage, resolved once: the hot path indexes, never looks labels up.
    stages: Vec<Histogram>,
}

/// Stage buckets from 1 µs to 100 ms: the gateway's own work is micro-seconds.
const STAGE_BUCKETS: &[f64] = &[
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 1e-1,
];

/// Latency buckets from 1 ms to 5 min: AI calls span both ends.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("tollgate_requests_total", "Requests answered, by outcome."),
            &["model", "provider", "status", "cache"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_request_duration_seconds",
                "Time from request start to the last byte sent to the client.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["model", "provider"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_errors_total",
                "Failed upstream attempts, by failure kind.",
            ),
            &["provider", "kind"],
        )
        .expect("valid metric");
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "tollgate_fallbacks_total",
                "Moves from a failed target to the next one.",
            ),
            &["model", "from", "to"],
        )
        .expect("valid metric");
        let panic_routes = IntCounterVec::new(
            Opts::new(
                "tollgate_panic_routes_total",
                "Requests routed to ejected endpoints too, because too few were left.",
            ),
            &["model"],
        )
        .expect("valid metric");
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_requests_total",
                "Requests the answer cache looked at, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let cache_bytes = IntGauge::new(
            "tollgate_cache_bytes",
            "Bytes the in-memory answer cache holds.",
        )
        .expect("valid metric");
        let cache_errors = IntCounterVec::new(
            Opts::new(
                "tollgate_cache_errors_total",
                "Calls to the answer cache's shared store that failed, by operation.",
            ),
            &["op"],
        )
        .expect("valid metric");
        let cache_entries = IntGauge::new(
            "tollgate_cache_entries",
            "Answers the in-memory answer cache holds.",
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_config_reloads_total",
                "Config reloads, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "tollgate_requests_in_flight",
            "Data-plane requests being served now.",
        )
        .expect("valid metric");
        let ejections = IntCounterVec::new(
            Opts::new(
                "tollgate_endpoint_ejections_total",
                "Passive ejections of an endpoint after consecutive failures.",
            ),
            &["provider", "endpoint"],
        )
        .expect("valid metric");
        let tokens = IntCounterVec::new(
            Opts::new(
                "tollgate_tokens_total",
                "Tokens metered, by direction (input counts cached prompt tokens too).",
            ),
            &["model", "provider", "team", "direction"],
        )
        .expect("valid metric");
        let cost = CounterVec::new(
            Opts::new(
                "tollgate_cost_usd_total",
                "Cost of the tokens metered, USD.",
            ),
            &["model", "provider", "team"],
        )
        .expect("valid metric");
        let time_to_first_token = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_time_to_first_token_seconds",
                "From request start to the first token: the header of a whole answer, the \
                 first chunk of a stream.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["model", "provider"],
        )
        .expect("valid metric");
        let ratelimited = IntCounterVec::new(
            Opts::new(
                "tollgate_ratelimited_total",
                "Requests refused by a rate limit or budget, by scope.",
            ),
            &["scope"],
        )
        .expect("valid metric");
        let budget_exceeded = IntCounterVec::new(
            Opts::new(
                "tollgate_budget_exceeded_total",
                "Requests refused because a budget is spent, by scope and period.",
            ),
            &["scope", "period"],
        )
        .expect("valid metric");
        let shared_state_up = IntGauge::new(
            "tollgate_shared_state_up",
            "1 when the last call to the shared limits store (Redis) succeeded; absent without one.",
        )
        .expect("valid metric");
        let shared_state_errors = IntCounter::new(
            "tollgate_shared_state_errors_total",
            "Calls to the shared limits store (Redis) that failed or timed out.",
        )
        .expect("valid metric");
        let ledger_rows = IntCounterVec::new(
            Opts::new(
                "tollgate_ledger_rows_total",
                "Ledger rows by outcome: written, overflow (the queue was full), error.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let ledger_pending = IntGauge::new(
            "tollgate_ledger_pending_rows",
            "Ledger rows queued and not yet committed.",
        )
        .expect("valid metric");
        let endpoint_healthy = IntGaugeVec::new(
            Opts::new(
                "tollgate_endpoint_healthy",
                "1 when the endpoint may take traffic (healthy, not ejected, not cooling down).",
            ),
            &["provider", "endpoint"],
        )
        .expect("valid metric");
        let endpoint_ewma = GaugeVec::new(
            Opts::new(
                "tollgate_endpoint_ewma_seconds",
                "Peak-EWMA time to first token of the endpoint.",
            ),
            &["provider", "endpoint"],
        )
        .expect("valid metric");
        let endpoint_in_flight = IntGaugeVec::new(
            Opts::new(
                "tollgate_endpoint_in_flight",
                "Requests in flight to the endpoint.",
            ),
            &["provider", "endpoint"],
        )
        .expect("valid metric");
        let stage_duration = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_stage_duration_seconds",
                "Time inside the gateway per stage of a request (upstream waiting excluded).",
            )
            .buckets(STAGE_BUCKETS.to_vec()),
            &["stage"],
        )
        .expect("valid metric");
        let stages = Stage::ALL
            .iter()
            .map(|s| stage_duration.with_label_values(&[s.name()]))
            .collect();
        let endpoint_load_score = GaugeVec::new(
            Opts::new(
                "tollgate_endpoint_load_score",
                "Load score from the server's own metrics: 1 idle, towards 0 saturated.",
            ),
            &["provider", "endpoint"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(endpoint_load_score.clone()),
            Box::new(stage_duration.clone()),
            Box::new(request_duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(fallbacks.clone()),
            Box::new(panic_routes.clone()),
            Box::new(cache_requests.clone()),
            Box::new(cache_bytes.clone()),
            Box::new(cache_errors.clone()),
            Box::new(cache_entries.clone()),
            Box::new(config_reloads.clone()),
            Box::new(in_flight.clone()),
            Box::new(ejections.clone()),
            Box::new(tokens.clone()),
            Box::new(cost.clone()),
            Box::new(time_to_first_token.clone()),
            Box::new(ratelimited.clone()),
            Box::new(budget_exceeded.clone()),
            Box::new(ledger_rows.clone()),
            Box::new(ledger_pending.clone()),
            Box::new(endpoint_healthy.clone()),
            Box::new(endpoint_ewma.clone()),
            Box::new(endpoint_in_flight.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        // Both results appear from the start, so alerts on errors work before the first one.
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        Metrics {
            registry,
            latency: LatencyStats::default(),
            requests,
            request_duration,
            upstream_errors,
            fallbacks,
            panic_routes,
            cache_requests,
            cache_bytes,
            cache_errors,
            cache_entries,
            config_reloads,
            in_flight,
            ejections,
            tokens,
            cost,
            time_to_first_token,
            ratelimited,
            budget_exceeded,
            shared_state_up,
            shared_state_errors,
            ledger_rows,
            ledger_pending,
            endpoint_healthy,
            endpoint_ewma,
            endpoint_in_flight,
            endpoint_load_score,
            stages,
        }
    }

    /// Observes each stage the request went through.
    pub fn record_stages(&self, stages: &Stages) {
        for (stage, time) in stages.spent() {
            self.stages[stage as usize].observe(time.as_secs_f64());
        }
    }

    /// Counts a metered answer's tokens and cost.
    pub fn record_usage(&self, model: &str, provider: &str, team: &str, metered: &Metered) {
        let usage = metered.usage;
        for (direction, n) in [("input", usage.input), ("output", usage.output)] {
            self.tokens
                .with_label_values(&[model, provider, team, direction])
                .inc_by(n);
        }
        self.cost
            .with_label_values(&[model, provider, team])
            .inc_by(metered.cost_usd);
    }

    /// Registers the shared-state metrics: only gateways with a shared store show them.
    pub fn register_shared_state(&self) {
        for c in [
            Box::new(self.shared_state_up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.shared_state_errors.clone()),
        ] {
            self.registry.register(c).expect("unique metric");
        }
    }

    /// Brings the shared store's health up to date.
    pub fn refresh_limiter(&self, limiter: &Limiter) {
        if let Some(health) = limiter.shared_state() {
            self.shared_state_up.set(i64::from(health.up));
            let errors = &self.shared_state_errors;
            errors.inc_by(health.errors.saturating_sub(errors.get()));
        }
    }

    /// Brings the ledger's counters up to date: the ledger counts, the metrics follow.
    pub fn refresh_ledger(&self, ledger: &Ledger) {
        for (result, now) in [
            ("written", ledger.written()),
            ("overflow", ledger.overflowed()),
            ("error", ledger.write_errors()),
        ] {
            let counter = self.ledger_rows.with_label_values(&[result]);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        self.ledger_pending.set(ledger.pending() as i64);
    }

    /// Sets the per-endpoint gauges from the running config's endpoints (dropping those of
    /// endpoints no longer configured).
    pub fn refresh_endpoints(&self, runtime: &Runtime) {
        self.endpoint_healthy.reset();
        self.endpoint_ewma.reset();
        self.endpoint_in_flight.reset();
        self.endpoint_load_score.reset();
        let now = Instant::now();
        for provider in &runtime.providers {
            for endpoint in provider.pool.endpoints().iter() {
                let labels = [provider.name.as_str(), endpoint.label.as_str()];
                let state = &endpoint.state;
                if let Some(view) = provider
                    .load_metrics
                    .as_ref()
                    .and_then(|m| state.load.view(now, m.fresh_for(), state.in_flight()))
                {
                    self.endpoint_load_score
                        .with_label_values(&labels)
                        .set(load_score(&Scoring::default(), &view));
                }
                self.endpoint_healthy
                    .with_label_values(&labels)
                    .set(i64::from(state.availability(now).is_ok()));
                if let Some(ewma) = state.latency.estimate_at(now) {
                    self.endpoint_ewma.with_label_values(&labels).set(ewma);
                }
                self.endpoint_in_flight
                    .with_label_values(&labels)
                    .set(i64::from(state.in_flight()));
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_contract_names() {
        let m = Metrics::new();
        m.requests
            .with_label_values(&["m", "p", "200", "off"])
            .inc();
        m.request_duration
            .with_label_values(&["m", "p"])
            .observe(0.01);
        m.record_usage(
            "m",
            "p",
            "t",
            &Metered {
                usage: tollgate_plugins::Usage {
                    input: 10,
                    cached_input: 0,
                    output: 5,
                },
                estimated: false,
                cost_usd: 0.25,
            },
        );
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "tollgate_tokens_total{direction=\"input\",model=\"m\",provider=\"p\",team=\"t\"} 10",
            "tollgate_tokens_total{direction=\"output\",model=\"m\",provider=\"p\",team=\"t\"} 5",
            "tollgate_cost_usd_total{model=\"m\",provider=\"p\",team=\"t\"} 0.25",
            "tollgate_requests_total{cache=\"off\",model=\"m\",provider=\"p\",status=\"200\"} 1",
            "tollgate_request_duration_seconds_bucket",
            "tollgate_config_reloads_total{result=\"error\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
