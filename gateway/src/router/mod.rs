//! The router: for each attempt of a request, which target and which endpoint.
//!
//! A target is eligible while one of its endpoints is: not yet tried by this request, healthy,
//! not ejected, not cooling down. The model's strategy chooses among eligible targets; within
//! the chosen target's pool, power-of-two-choices over peak-EWMA cost (or in-flight count for
//! `least-loaded`) chooses the endpoint.

pub mod context;
pub mod geo;
pub mod gpu;
mod model;
pub mod rules;
pub mod weighted;

pub use model::{Model, RetryOn, RetryPolicy, Target};

use crate::tokens::PromptSize;
use crate::upstream::load::LoadView;
use crate::upstream::state::Unavailable;
use crate::upstream::Endpoint;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Targets in order.
    Fallback,
    /// By weight, smoothly interleaved.
    Weighted,
    /// Lowest peak-EWMA cost, by power of two choices.
    Latency,
    /// Fewest requests in flight.
    LeastLoaded,
    /// Cheapest by catalog prices × estimated tokens.
    Cost,
    /// Nearest region to the client first.
    Geo,
    /// Best by the GPU servers' own load: queue, KV cache, prefix and LoRA affinity.
    GpuAware,
}

impl Strategy {
    pub const ALL: [Strategy; 7] = [
        Strategy::Fallback,
        Strategy::Weighted,
        Strategy::Latency,
        Strategy::LeastLoaded,
        Strategy::Cost,
        Strategy::Geo,
        Strategy::GpuAware,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Fallback => "fallback",
            Strategy::Weighted => "weighted",
            Strategy::Latency => "latency",
            Strategy::LeastLoaded => "least-loaded",
            Strategy::Cost => "cost",
            Strategy::Geo => "geo",
            Strategy::GpuAware => "gpu-aware",
        }
    }

    pub fn parse(text: &str) -> Option<Strategy> {
        Self::ALL.into_iter().find(|s| s.name() == text)
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One attempt's destination.
pub struct Pick<'m> {
    pub target: &'m Target,
    pub endpoint: Arc<Endpoint>,
}

/// A request's way through its model's targets, one attempt at a time.
pub struct Planner<'m> {
    model: &'m Model,
    /// Per target: admitted for this request (context fit, rules, residency).
    allowed: Vec<bool>,
    /// Per target, lower first: estimated cost (`strategy: cost`) or distance (`geo`).
    preference: Vec<f64>,
    tried: Vec<Arc<Endpoint>>,
    /// The prompt's leading block hashes, for prefix affinity (`gpu-aware` only).
    prefix: Vec<u64>,
    /// Too few endpoints are left after passive ejections: ejected ones take traffic too.
    panic: bool,
}

/// How endpoints compare.
#[derive(Clone, Copy)]
enum Measure {
    Cost,
    InFlight,
}

impl Measure {
    fn of(self, target: &Target, endpoint: &Endpoint, now: Instant) -> f64 {
        match self {
            Measure::Cost => endpoint.state.cost(now),
            // The server's own count when it reports one: it sees every client, not just us.
            Measure::InFlight => match load_view(target, endpoint, now) {
                Some(load) => load.queue + load.report.running.unwrap_or(0.0),
                None => endpoint.state.in_flight() as f64,
            },
        }
    }
}

/// The endpoint's load as its server last reported it, while that report is fresh.
pub fn load_view(target: &Target, endpoint: &Endpoint, now: Instant) -> Option<LoadView> {
    let metrics = target.provider.load_metrics.as_ref()?;
    endpoint
        .state
        .load
        .view(now, metrics.fresh_for(), endpoint.state.in_flight())
}

impl<'m> Planner<'m> {
    pub fn new(model: &'m Model) -> Planner<'m> {
        Self::admitted(model, vec![true; model.targets.len()], Vec::new())
    }

    /// A planner limited to the `allowed` targets; `preference` ranks them (lower first) under
    /// `strategy: cost` and `geo`.
    pub fn admitted(model: &'m Model, allowed: Vec<bool>, mut preference: Vec<f64>) -> Planner<'m> {
        // Without a ranking every target is as good as the next (config order decides).
        preference.resize(model.targets.len(), 0.0);
        let panic = in_panic(model, &allowed, Instant::now());
        Planner {
            model,
            allowed,
            preference,
            tried: Vec::new(),
            prefix: Vec::new(),
            panic,
        }
    }

    /// Ejected endpoints are in use: too few were left.
    pub fn in_panic(&self) -> bool {
        self.panic
    }

    /// Prefix affinity for `gpu-aware`: the prompt's leading block hashes.
    pub fn with_prefix(mut self, prefix: Vec<u64>) -> Planner<'m> {
        self.prefix = prefix;
        self
    }

    fn usable(&self, endpoint: &Arc<Endpoint>, now: Instant) -> bool {
        let available = match endpoint.state.availability(now) {
            Ok(()) => true,
            // Health checks and a server's own retry-after still exclude.
            Err(Unavailable::Ejected) => self.panic,
            Err(_) => false,
        };
        available && !self.tried.iter().any(|t| Arc::ptr_eq(t, endpoint))
    }

    fn eligible(&self, index: usize, now: Instant) -> bool {
        self.allowed[index]
            && self.model.targets[index]
                .provider
                .pool
                .endpoints()
                .iter()
                .any(|e| self.usable(e, now))
    }

    /// The best usable endpoint of `target` by `measure`, over two random choices.
    fn pick_endpoint(
        &self,
        target: &Target,
        now: Instant,
        measure: Measure,
    ) -> Option<Arc<Endpoint>> {
        let endpoints = target.provider.pool.endpoints();
        let usable: Vec<&Arc<Endpoint>> =
            endpoints.iter().filter(|e| self.usable(e, now)).collect();
        let (a, b) = two_choices(usable.len())?;
        let chosen = match b {
            Some(b) if measure.of(target, usable[b], now) < measure.of(target, usable[a], now) => b,
            _ => a,
        };
        Some(usable[chosen].clone())
    }

    /// The lowest `measure` among a target's usable endpoints.
    fn target_measure(&self, target: &Target, now: Instant, measure: Measure) -> f64 {
        target
            .provider
            .pool
            .endpoints()
            .iter()
            .filter(|e| self.usable(e, now))
            .map(|e| measure.of(target, e, now))
            .fold(f64::INFINITY, f64::min)
    }

    /// The next attempt's target and endpoint; `None` when nothing usable is left.
    pub fn next(&mut self, now: Instant) -> Option<Pick<'m>> {
        let pick = self.by_strategy(now)?;
        // Counted until the next scrape, so that a burst spreads before the servers report it.
        pick.endpoint.state.load.sent(&self.prefix);
        self.tried.push(pick.endpoint.clone());
        Some(pick)
    }

    /// `gpu-aware`: every usable endpoint of every eligible target, scored on its server's
    /// load and on affinity.
    fn best_scored(&self, now: Instant) -> Option<Pick<'m>> {
        let mut options: Vec<(&'m Target, Arc<Endpoint>)> = Vec::new();
        for (i, target) in self.model.targets.iter().enumerate() {
            if !self.allowed[i] {
                continue;
            }
            for endpoint in target.provider.pool.endpoints().iter() {
                if self.usable(endpoint, now) {
                    options.push((target, endpoint.clone()));
                }
            }
        }
        let candidates: Vec<gpu::Candidate> = options
            .iter()
            .map(|(target, endpoint)| {
                let load = load_view(target, endpoint, now);
                let lora_loaded = load
                    .as_ref()
                    .is_some_and(|l| l.report.lora_adapters.contains(&target.model));
                gpu::Candidate {
                    load,
                    in_flight: endpoint.state.in_flight(),
                    prefix_match: endpoint.state.load.prefix_match(&self.prefix),
                    lora_loaded,
                }
            })
            .collect();
        let scores = gpu::score(&self.model.scoring, &candidates, self.prefix.len());
        let (target, endpoint) = options.swap_remove(gpu::pick(&scores)?);
        Some(Pick { target, endpoint })
    }

    fn by_strategy(&self, now: Instant) -> Option<Pick<'m>> {
        let targets = &self.model.targets;
        let measure = match self.model.strategy {
            Strategy::LeastLoaded => Measure::InFlight,
            _ => Measure::Cost,
        };
        let index = match self.model.strategy {
            // Scored per endpoint, not per target.
            Strategy::GpuAware => return self.best_scored(now),
            Strategy::Fallback => (0..targets.len()).find(|&i| self.eligible(i, now)),
            Strategy::Weighted => self.model.weights.pick(|i| self.eligible(i, now)),
            // Cheapest or nearest first; equals keep config order.
            Strategy::Cost | Strategy::Geo => (0..targets.len())
                .filter(|&i| self.eligible(i, now))
                .min_by(|&a, &b| self.preference[a].total_cmp(&self.preference[b])),
            Strategy::Latency | Strategy::LeastLoaded => {
                let eligible: Vec<usize> = (0..targets.len())
                    .filter(|&i| self.eligible(i, now))
                    .collect();
                match measure {
                    // Power of two choices: cheap, and it never herds onto one target.
                    Measure::Cost => two_choices(eligible.len()).map(|(a, b)| match b {
                        Some(b)
                            if self.target_measure(&targets[eligible[b]], now, measure)
                                < self.target_measure(&targets[eligible[a]], now, measure) =>
                        {
                            eligible[b]
                        }
                        _ => eligible[a],
                    }),
                    // Each target measured once: a full scan, not a pairwise one.
                    Measure::InFlight => eligible
                        .into_iter()
                        .map(|i| (i, self.target_measure(&targets[i], now, measure)))
                        .min_by(|a, b| a.1.total_cmp(&b.1))
                        .map(|(i, _)| i),
                }
            }
        }?;
        let target = &targets[index];
        let endpoint = self.pick_endpoint(target, now, measure)?;
        Some(Pick { target, endpoint })
    }

    /// Why no endpoint of the model can serve now, for the 503 message.
    pub fn unavailable_summary(&self, now: Instant) -> String {
        if !self.allowed.iter().any(|&a| a) {
            return "no target lies within the request's residency".to_string();
        }
        let (mut unhealthy, mut ejected, mut cooling) = (0, 0, 0);
        for endpoint in self
            .model
            .targets
            .iter()
            .zip(&self.allowed)
            .filter(|(_, &allowed)| allowed)
            .flat_map(|(t, _)| t.provider.pool.endpoints().to_vec())
        {
            match endpoint.state.availability(now) {
                Err(Unavailable::Unhealthy) => unhealthy += 1,
                Err(Unavailable::Ejected) => ejected += 1,
                Err(Unavailable::CoolingDown) => cooling += 1,
                Ok(()) => {}
            }
        }
        format!("{unhealthy} unhealthy, {ejected} ejected after failures, {cooling} cooling down after 429/503")
    }
}

/// Envoy's panic rule over the model's admitted targets (its priority levels): fewer than
/// `panic_threshold` of the healthy endpoints are free of passive ejection.
fn in_panic(model: &Model, allowed: &[bool], now: Instant) -> bool {
    let (mut healthy, mut available) = (0usize, 0usize);
    for (target, _) in model.targets.iter().zip(allowed).filter(|(_, &a)| a) {
        for endpoint in target.provider.pool.endpoints().iter() {
            match endpoint.state.availability(now) {
                Err(Unavailable::Unhealthy) => {}
                Err(Unavailable::Ejected) => healthy += 1,
                Ok(()) | Err(Unavailable::CoolingDown) => {
                    healthy += 1;
                    available += 1;
                }
            }
        }
    }
    healthy > 0 && (available as f64) < model.panic_threshold * healthy as f64
}

/// Output tokens assumed when a request does not cap them, for cost estimates.
const DEFAULT_OUTPUT_ESTIMATE: u64 = 256;

/// Each target's price for this request: catalog prices × estimated tokens (0 without prices
/// or a prompt to measure).
pub fn estimated_costs(model: &Model, prompt: Option<&PromptSize>) -> Vec<f64> {
    let (input, output) = prompt.map_or((0, DEFAULT_OUTPUT_ESTIMATE), |p| {
        let output = match p.requested_output {
            0 => DEFAULT_OUTPUT_ESTIMATE,
            n => n,
        };
        (p.estimate(), output)
    });
    model
        .targets
        .iter()
        .map(|t| {
            t.facts.and_then(|f| f.prices).map_or(0.0, |p| {
                (input as f64 * p.input + output as f64 * p.output) / 1e6
            })
        })
        .collect()
}

/// Two distinct random indices below `n` (the second absent when `n` is 1).
fn two_choices(n: usize) -> Option<(usize, Option<usize>)> {
    match n {
        0 => None,
        1 => Some((0, None)),
        _ => {
            let a = fastrand::usize(..n);
            let b = (a + 1 + fastrand::usize(..n - 1)) % n;
            Some((a, Some(b)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Runtime;
    use crate::upstream::state::OutlierPolicy;
    use std::path::Path;
    use std::time::Duration;

    /// A runtime with providers p0..pN (one endpoint each, or `pool` endpoints for p0) and one
    /// model `m` over all of them with `strategy`.
    fn runtime(strategy: &str, providers: usize, pool: usize, weights: &[u32]) -> Runtime {
        let mut text = String::from("providers:\n");
        for p in 0..providers {
            let n = if p == 0 { pool } else { 1 };
            let eps: Vec<String> = (0..n)
                .map(|e| format!("\"127.0.0.1:{}\"", 10000 + p * 100 + e))
                .collect();
            text += &format!(
                "  - {{ name: p{p}, kind: vllm, endpoints: [{}] }}\n",
                eps.join(", ")
            );
        }
        text += &format!("models:\n  - name: m\n    strategy: {strategy}\n    targets:\n");
        for p in 0..providers {
            let w = weights.get(p).copied().unwrap_or(1);
            text += &format!("      - {{ provider: p{p}, model: x, weight: {w} }}\n");
        }
        let file = crate::config::parse("t.yaml", &text, &|_| None).unwrap();
        match crate::config::build("t.yaml", Path::new("t.yaml"), file, None) {
            Ok(rt) => rt,
            Err(e) => panic!("{e}"),
        }
    }

    fn first_pick(rt: &Runtime, now: Instant) -> Option<(String, u16)> {
        let model = rt.model("m").unwrap();
        Planner::new(model)
            .next(now)
            .map(|p| (p.target.provider.name.clone(), p.endpoint.port))
    }

    #[test]
    fn fallback_goes_in_order_and_never_repeats_an_endpoint() {
        let rt = runtime("fallback", 3, 2, &[]);
        let model = rt.model("m").unwrap();
        let mut planner = Planner::new(model);
        let now = Instant::now();
        let order: Vec<String> = std::iter::from_fn(|| planner.next(now))
            .map(|p| p.target.provider.name.clone())
            .collect();
        assert_eq!(
            order,
            ["p0", "p0", "p1", "p2"],
            "a pool's endpoints come before the next target"
        );
    }

    #[test]
    fn unavailable_endpoints_are_skipped_and_explained() {
        let rt = runtime("fallback", 2, 1, &[]);
        let now = Instant::now();
        let p0 = &rt.providers[0].pool.endpoints()[0];
        p0.state.cool_down(now, Duration::from_secs(2));
        assert_eq!(first_pick(&rt, now).unwrap().0, "p1");
        assert_eq!(
            first_pick(&rt, now + Duration::from_secs(3)).unwrap().0,
            "p0"
        );
        let p1 = &rt.providers[1].pool.endpoints()[0];
        p1.state.record_check(false, 1, 1);
        let planner = Planner::new(rt.model("m").unwrap());
        assert!(first_pick(&rt, now).is_none());
        assert_eq!(
            planner.unavailable_summary(now),
            "1 unhealthy, 0 ejected after failures, 1 cooling down after 429/503"
        );
    }

    #[test]
    fn too_many_ejections_put_ejected_endpoints_back_in_use() {
        // p0 has three endpoints, p1 one: four healthy in all.
        let rt = runtime("fallback", 2, 3, &[]);
        let now = Instant::now();
        let eject = |p: usize, e: usize| {
            let policy = OutlierPolicy {
                consecutive_failures: 1,
                ..OutlierPolicy::default()
            };
            rt.providers[p].pool.endpoints()[e]
                .state
                .record_failure(now, &policy);
        };
        let model = rt.model("m").unwrap();
        eject(0, 0);
        eject(0, 1);
        // Two of four left: not below half.
        let planner = Planner::new(model);
        assert!(!planner.in_panic());
        assert_eq!(first_pick(&rt, now).unwrap().0, "p0");
        eject(0, 2);
        eject(1, 0);
        // None left: every ejected endpoint is back, in the strategy's order.
        let mut planner = Planner::new(model);
        assert!(planner.in_panic());
        let order: Vec<String> = std::iter::from_fn(|| planner.next(now))
            .map(|p| p.target.provider.name.clone())
            .collect();
        assert_eq!(order, ["p0", "p0", "p0", "p1"]);
        // A failed health check still excludes.
        rt.providers[1].pool.endpoints()[0]
            .state
            .record_check(false, 1, 1);
        let mut planner = Planner::new(model);
        let order: Vec<String> = std::iter::from_fn(|| planner.next(now))
            .map(|p| p.target.provider.name.clone())
            .collect();
        assert_eq!(order, ["p0", "p0", "p0"]);
    }

    #[test]
    fn weighted_shares_follow_weights() {
        let rt = runtime("weighted", 2, 1, &[3, 1]);
        let now = Instant::now();
        let picks: Vec<String> = (0..400).map(|_| first_pick(&rt, now).unwrap().0).collect();
        assert_eq!(picks.iter().filter(|p| *p == "p0").count(), 300);
        // Smooth: never more than three in a row for 3:1.
        assert!(!picks.windows(4).any(|w| w.iter().all(|p| p == "p0")));
    }

    #[test]
    fn latency_prefers_the_lower_peak_ewma_cost() {
        let rt = runtime("latency", 2, 1, &[]);
        let now = Instant::now();
        rt.providers[0].pool.endpoints()[0]
            .state
            .latency
            .observe_at(Duration::from_millis(160), now);
        rt.providers[1].pool.endpoints()[0]
            .state
            .latency
            .observe_at(Duration::from_millis(10), now);
        for _ in 0..50 {
            assert_eq!(first_pick(&rt, now).unwrap().0, "p1");
        }
        // Load counts: 20 requests in flight make the fast one cost more than the slow one.
        let fast = rt.providers[1].pool.endpoints()[0].clone();
        let guards: Vec<_> = (0..20).map(|_| fast.state.begin()).collect();
        assert_eq!(first_pick(&rt, now).unwrap().0, "p0");
        drop(guards);
    }

    #[test]
    fn a_pool_uses_p2c_over_endpoint_cost() {
        let rt = runtime("fallback", 1, 2, &[]);
        let now = Instant::now();
        let eps = &rt.providers[0].pool.endpoints();
        eps[0]
            .state
            .latency
            .observe_at(Duration::from_millis(5), now);
        eps[1]
            .state
            .latency
            .observe_at(Duration::from_millis(155), now);
        let fast = eps[0].port;
        assert!((0..50).all(|_| first_pick(&rt, now).unwrap().1 == fast));
    }

    #[test]
    fn least_loaded_takes_the_fewest_in_flight() {
        let rt = runtime("least-loaded", 3, 1, &[]);
        let now = Instant::now();
        let (a, b) = (
            rt.providers[0].pool.endpoints()[0].clone(),
            rt.providers[1].pool.endpoints()[0].clone(),
        );
        let _a = a.state.begin();
        let _b = b.state.begin();
        assert_eq!(first_pick(&rt, now).unwrap().0, "p2");
    }

    #[test]
    fn two_choices_are_distinct_and_cover_all() {
        assert_eq!(two_choices(0), None);
        assert_eq!(two_choices(1), Some((0, None)));
        let mut seen = [0usize; 5];
        for _ in 0..5000 {
            let (a, b) = two_choices(5).unwrap();
            let b = b.unwrap();
            assert!(a < 5 && b < 5 && a != b);
            seen[a] += 1;
            seen[b] += 1;
        }
        assert!(seen.iter().all(|&n| n > 1500), "{seen:?}");
    }

    fn runtime_from(text: &str) -> Runtime {
        let file = crate::config::parse("t.yaml", text, &|_| None).unwrap();
        match crate::config::build("t.yaml", Path::new("t.yaml"), file, None) {
            Ok(rt) => rt,
            Err(e) => panic!("{e}"),
        }
    }

    const TWO_SIZES: &str = "providers:\n  - { name: a, kind: vllm, base_url: \"http://127.0.0.1:1\" }\n  - { name: b, kind: vllm, base_url: \"http://127.0.0.1:2\" }\nmodels:\n  - name: m\n    strategy: cost\n    targets: [{ provider: a, model: small }, { provider: b, model: big }]\ncatalog:\n  small: { context_window: 1000, price_per_mtok: { input: 1.0, output: 2.0 } }\n  big: { context_window: 100000, price_per_mtok: { input: 0.5, output: 1.0 } }\n";

    fn prompt(words: usize) -> (PromptSize, bytes::Bytes) {
        let body = serde_json::to_vec(&serde_json::json!({
            "model": "m",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "word ".repeat(words)}],
        }))
        .unwrap();
        (
            PromptSize::from_body(&body).unwrap(),
            bytes::Bytes::from(body),
        )
    }

    #[tokio::test]
    async fn each_context_policy() {
        use context::{apply, ContextPolicy};
        let rt = runtime_from(TWO_SIZES);
        let model = rt.model("m").unwrap();
        let (long, body) = prompt(5_000);
        let overflow = apply(ContextPolicy::OverflowToLarger, model, &long, &body)
            .await
            .unwrap();
        assert_eq!(overflow.allowed, [false, true]);
        assert!(overflow.truncated.is_none());
        let reject = apply(ContextPolicy::Reject, model, &long, &body)
            .await
            .err()
            .unwrap();
        assert_eq!(reject.status(), 400);
        assert!(
            reject
                .to_string()
                .contains("maximum context length is 1000"),
            "{reject}"
        );
        // One message cannot be truncated below itself.
        let truncate = apply(ContextPolicy::TruncateMiddle, model, &long, &body)
            .await
            .err()
            .unwrap();
        assert_eq!(truncate.status(), 400);
        let (short, body) = prompt(10);
        let fits = apply(ContextPolicy::Reject, model, &short, &body)
            .await
            .unwrap();
        assert_eq!(fits.allowed, [true, true]);
        let (huge, body) = prompt(200_000);
        assert!(apply(ContextPolicy::OverflowToLarger, model, &huge, &body)
            .await
            .is_err());
    }

    #[test]
    fn cost_picks_the_cheapest_admitted_target() {
        let rt = runtime_from(TWO_SIZES);
        let model = rt.model("m").unwrap();
        let (p, _) = prompt(100);
        let costs = estimated_costs(model, Some(&p));
        assert!(costs[1] < costs[0], "{costs:?}");
        // ~100 tokens in at 1.0 and 10 out at 2.0 per million.
        assert!((costs[0] - (p.estimate() as f64 * 1.0 + 10.0 * 2.0) / 1e6).abs() < 1e-12);
        let now = Instant::now();
        let pick = Planner::admitted(model, vec![true, true], costs.clone())
            .next(now)
            .unwrap();
        assert_eq!(pick.target.provider.name, "b");
        let pick = Planner::admitted(model, vec![true, false], costs)
            .next(now)
            .unwrap();
        assert_eq!(pick.target.provider.name, "a", "only what admission allows");
        // A planner built without a ranking does not panic under `cost`.
        assert!(Planner::new(model).next(now).is_some());
    }
}
