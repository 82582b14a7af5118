//! The cost of one routing decision: `Planner::new(model)` plus its first `next(now)`, the work
//! the gateway does before every request's first upstream attempt.
//!
//! Two shapes, each with 2, 8 and 64 endpoints:
//! - `pool`: one model, one target, whose provider has a pool of N endpoints (the choice is
//!   power-of-two-choices among the pool's endpoints);
//! - `targets`: one model with N targets, one endpoint each (the choice is the strategy's,
//!   among targets).
//!
//! Endpoints get varied peak-EWMA latency and some requests in flight, so the comparisons the
//! router makes are real ones. Nothing is ever connected to: endpoints are IP literals that
//! are only parsed.
//!
//! Run: `cargo bench -p tollgate-benches --bench routing`. Ids read `shape/strategy/N`, e.g.
//! `pool/latency/64`; the middle figure of `time:` is the estimate per decision.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::config::Runtime;
use tollgate::router::Planner;
use tollgate::upstream::state::InFlight;
use tollgate::upstream::Endpoint;

const SIZES: [usize; 3] = [2, 8, 64];

#[derive(Clone, Copy)]
enum Shape {
    /// One provider with a pool of N endpoints.
    Pool,
    /// N providers of one endpoint each, all targets of the model.
    Targets,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Pool => "pool",
            Shape::Targets => "targets",
        }
    }

    fn strategies(self) -> &'static [&'static str] {
        match self {
            // With one target the strategy only decides how endpoints compare: by cost for
            // both of these.
            Shape::Pool => &["latency", "fallback"],
            Shape::Targets => &["latency", "fallback", "weighted", "least-loaded"],
        }
    }
}

/// A distinct, never-contacted address for endpoint `i`.
fn address(i: usize) -> String {
    format!("\"10.0.{}.{}:8000\"", i / 250, i % 250 + 1)
}

/// The config text for model `m` in `shape` with `n` endpoints and `strategy`.
fn config_text(shape: Shape, strategy: &str, n: usize) -> String {
    let mut text = String::from("providers:\n");
    match shape {
        Shape::Pool => {
            let endpoints: Vec<String> = (0..n).map(address).collect();
            text += &format!(
                "  - {{ name: p0, kind: vllm, endpoints: [{}] }}\n",
                endpoints.join(", ")
            );
        }
        Shape::Targets => {
            for i in 0..n {
                text += &format!(
                    "  - {{ name: p{i}, kind: vllm, endpoints: [{}] }}\n",
                    address(i)
                );
            }
        }
    }
    text += &format!("models:\n  - name: m\n    strategy: {strategy}\n    targets:\n");
    let targets = match shape {
        Shape::Pool => 1,
        Shape::Targets => n,
    };
    for i in 0..targets {
        let weight = 1 + i % 4;
        text += &format!("      - {{ provider: p{i}, model: x, weight: {weight} }}\n");
    }
    text
}

fn runtime(shape: Shape, strategy: &str, n: usize) -> Runtime {
    let text = config_text(shape, strategy, n);
    let file =
        tollgate::config::parse("bench.yaml", &text, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let rt = tollgate::config::build("bench.yaml", Path::new("bench.yaml"), file, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let model = rt.model("m").expect("model m");
    assert_eq!(endpoints(&rt).len(), n);
    assert_eq!(model.strategy.name(), strategy);
    let targets = match shape {
        Shape::Pool => 1,
        Shape::Targets => n,
    };
    assert_eq!(model.targets.len(), targets);
    rt
}

/// All endpoints of all providers, in config order.
fn endpoints(rt: &Runtime) -> Vec<Arc<Endpoint>> {
    rt.providers
        .iter()
        .flat_map(|p| p.pool.endpoints().to_vec())
        .collect()
}

/// Gives every endpoint its own latency history (20..200 ms, stamped at `now`) and every third
/// one 1 to 4 requests in flight; the returned guards keep those requests open.
fn load(endpoints: &[Arc<Endpoint>], now: Instant) -> Vec<InFlight<'_>> {
    let mut guards = Vec::new();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let millis = 20 + (i as u64 * 37) % 180;
        endpoint
            .state
            .latency
            .observe_at(Duration::from_millis(millis), now);
        if i % 3 == 1 {
            guards.extend((0..1 + i % 4).map(|_| endpoint.state.begin()));
        }
    }
    guards
}

fn routing(c: &mut Criterion) {
    for shape in [Shape::Pool, Shape::Targets] {
        for &strategy in shape.strategies() {
            let mut group = c.benchmark_group(format!("{}/{strategy}", shape.name()));
            for n in SIZES {
                let rt = runtime(shape, strategy, n);
                let now = Instant::now();
                let endpoints = endpoints(&rt);
                let _guards = load(&endpoints, now);
                let model = rt.model("m").expect("model m");
                assert!(
                    Planner::new(model).next(now).is_some(),
                    "every endpoint is usable, so a decision always finds one"
                );
                group.bench_with_input(BenchmarkId::from_parameter(n), &now, |b, &now| {
                    b.iter(|| {
                        let mut planner = Planner::new(black_box(model));
                        planner.next(black_box(now)).map(|pick| pick.endpoint.port)
                    })
                });
            }
            group.finish();
        }
    }
}

fn config() -> Criterion {
    // 18 ids at about 3 s each keep the whole run near a minute.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = routing
}
criterion_main!(benches);
