//! The cost of one admission and its settle in `tollgate_plugins::limits`: a request counted
//! against its key and its team, each with rpm, tpm and a daily budget, admitted with a
//! 1,000-token, $0.002 reservation and settled at 600 tokens and $0.0012 (so the settle has
//! tokens to give back and dollars to reconcile).
//!
//! - `admission/in-process`: the process-local store; the injected clock advances 1 ms per
//!   request, so buckets never run dry however fast the loop runs.
//! - `admission/redis`: a `redis-server` started here on loopback: one script call for the
//!   admit and one for the settle, on a current-thread runtime. Skipped, with a note, where
//!   `redis-server` is not on the PATH.
//!
//! Requests cycle over 1,024 keys in 64 teams, so no limit is reached: every admission in the
//! loop must pass, and one that does not stops the bench.
//!
//! Run: `cargo bench -p tollgate-benches --bench admission`. The middle figure of `time:` is
//! the estimate for one admit plus its settle.

use criterion::{criterion_group, criterion_main, Bencher, Criterion};
use std::path::Path;
use std::time::{Duration, SystemTime};
use tokio::runtime::Runtime;
use tollgate_benches::procs::{accepts_tcp, free_port, Procs};
use tollgate_plugins::limits::{Demand, FailurePolicy, Limiter, Quota, Scope, Subject};

const KEYS: usize = 1_024;
const TEAMS: usize = 64;

const RESERVED: Demand = Demand {
    tokens: 1_000,
    usd: 0.002,
};
const ACTUAL: Demand = Demand {
    tokens: 600,
    usd: 0.0012,
};

/// The subjects' ids and their (shared) quotas.
struct Population {
    keys: Vec<String>,
    teams: Vec<String>,
    key_quota: Quota,
    team_quota: Quota,
}

impl Population {
    fn new() -> Population {
        Population {
            keys: (0..KEYS).map(|i| format!("key-{i}")).collect(),
            teams: (0..TEAMS).map(|i| format!("team-{i}")).collect(),
            key_quota: Quota {
                rpm: Some(100_000),
                tpm: Some(10_000_000),
                usd_per_day: Some(10_000.0),
                usd_per_month: None,
            },
            team_quota: Quota {
                rpm: Some(1_000_000),
                tpm: Some(100_000_000),
                usd_per_day: Some(100_000.0),
                usd_per_month: None,
            },
        }
    }

    /// Request `i`'s key and team.
    fn subjects(&self, i: usize) -> [Subject<'_>; 2] {
        let key = i % KEYS;
        [
            Subject {
                scope: Scope::Key,
                id: &self.keys[key],
                quota: &self.key_quota,
            },
            Subject {
                scope: Scope::Team,
                id: &self.teams[key % TEAMS],
                quota: &self.team_quota,
            },
        ]
    }
}

/// Times admit + settle on `limiter`; `clock(i)` is request `i`'s `now`. Criterion calls
/// this once per warm-up and per sample: `count` carries the request count across calls, so
/// the clock never goes back.
fn bench_cycle(
    b: &mut Bencher,
    rt: &Runtime,
    limiter: &Limiter,
    population: &Population,
    count: &mut usize,
    clock: impl Fn(usize) -> SystemTime,
) {
    b.iter(|| {
        *count += 1;
        let i = *count;
        let now = clock(i);
        rt.block_on(async {
            let grant = limiter
                .admit(&population.subjects(i), RESERVED, now)
                .await
                .unwrap_or_else(|refusal| panic!("request {i} refused: {refusal:?}"));
            limiter.settle(grant, ACTUAL, now).await;
        });
    });
}

/// A `redis-server` on a free loopback port, without persistence; `None` (with the reason)
/// where none can be started. Dropping the `Procs` kills it.
fn redis_server() -> Result<(Procs, String), String> {
    let mut procs = Procs::new()?;
    let port = free_port()?;
    let port_arg = port.to_string();
    let args = [
        "--port",
        &port_arg,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    procs.spawn("redis-server", Path::new("redis-server"), &args)?;
    let addr = ([127, 0, 0, 1], port).into();
    procs.wait_until("redis-server", Duration::from_secs(5), || {
        accepts_tcp(addr).then_some(())
    })?;
    Ok((procs, format!("redis://127.0.0.1:{port}/")))
}

fn admission(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let population = Population::new();
    let mut group = c.benchmark_group("admission");

    let limiter = Limiter::in_process();
    let start = SystemTime::now();
    let mut count = 0;
    group.bench_function("in-process", |b| {
        bench_cycle(b, &rt, &limiter, &population, &mut count, |i| {
            start + Duration::from_millis(i as u64)
        })
    });

    match redis_server() {
        Ok((_server, url)) => {
            let limiter = Limiter::redis(&url, FailurePolicy::Closed, Duration::from_secs(1))
                .expect("a valid URL");
            let mut count = 0;
            group.bench_function("redis", |b| {
                // The Redis store runs on the server's clock; `now` is not read.
                bench_cycle(b, &rt, &limiter, &population, &mut count, |_| {
                    SystemTime::now()
                })
            });
            let health = limiter.shared_state();
            assert_eq!(health.map(|h| h.errors), Some(0), "Redis calls failed");
        }
        Err(why) => eprintln!("admission/redis skipped: no redis-server ({why})"),
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = admission
}
criterion_main!(benches);
