//! Work that runs for every endpoint on its own period (health checks, load scrapes): one
//! loop that wakes on a short tick, finds the endpoints that are due, and spawns their job.

use crate::config::Runtime;
use crate::providers::Provider;
use crate::upstream::Endpoint;
use arc_swap::ArcSwap;
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Until shutdown: for each provider that `select` gives a setting and a period, runs `job`
/// on each of its endpoints once per period. Endpoints dropped by a reload are forgotten.
pub async fn per_endpoint<S, F>(
    runtime: &ArcSwap<Runtime>,
    mut shutdown: ShutdownWatch,
    tick: Duration,
    select: impl Fn(&Provider) -> Option<(S, Duration)>,
    job: impl Fn(Arc<Endpoint>, S, String) -> F,
) where
    S: Clone,
    F: Future<Output = ()> + Send + 'static,
{
    // Keyed by endpoint identity.
    let mut due: HashMap<usize, Instant> = HashMap::new();
    let mut ticks = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
            _ = ticks.tick() => {}
        }
        let runtime = runtime.load_full();
        let now = Instant::now();
        let mut live = HashMap::with_capacity(due.len());
        for provider in &runtime.providers {
            let Some((setting, every)) = select(provider) else {
                continue;
            };
            for endpoint in provider.pool.endpoints().iter() {
                let key = Arc::as_ptr(endpoint) as usize;
                let next = due.get(&key).copied().unwrap_or(now);
                if next > now {
                    live.insert(key, next);
                    continue;
                }
                live.insert(key, now + every);
                tokio::spawn(job(
                    endpoint.clone(),
                    setting.clone(),
                    provider.name.clone(),
                ));
            }
        }
        due = live;
    }
}
