//! State shared by every connection of one mock server.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::MockConfig;
use crate::control::ConfigPatch;
use crate::gpu::{Gpu, GpuLoad, PrefixStats};
use crate::record::{Recorder, RECORD_CAPACITY};

pub(crate) struct Shared {
    /// Replaced whole by `POST /mock/config`, so a request that took a
    /// snapshot never sees half of an update.
    cfg: ArcSwap<MockConfig>,
    /// Held while an update is applied, so that updates land one at a time.
    updating: Mutex<()>,
    pub(crate) recorder: Recorder,
    pub(crate) stats: Stats,
    /// Chat and completion requests being answered right now.
    running: AtomicU64,
    /// The simulated GPU server, used while the config has `gpu`.
    pub(crate) gpu: Arc<Gpu>,
}

/// KV-cache use each running request adds to the reported fraction when
/// no GPU is simulated.
const KV_CACHE_PER_REQUEST: f64 = 0.05;

/// The load a metrics scrape reports, whichever the provider's format.
pub(crate) struct Load {
    /// Requests being generated: the simulated batch, or all in flight.
    pub(crate) running: u64,
    /// Requests queued for the simulated GPU, plus the configured `waiting`.
    pub(crate) waiting: u64,
    /// KV-cache use, 0..=1: `kv_cache_usage` when set, else the simulated
    /// cache's, else [`KV_CACHE_PER_REQUEST`] per running request.
    pub(crate) kv_usage: f64,
    /// The simulated server, while the simulation is on.
    pub(crate) gpu: Option<GpuLoad>,
    /// Kept from whenever the simulation was on; zero if it never was.
    pub(crate) prefix: PrefixStats,
}

impl Shared {
    pub(crate) fn new(cfg: MockConfig) -> Arc<Self> {
        Arc::new(Shared {
            gpu: Gpu::new(cfg.gpu),
            cfg: ArcSwap::from_pointee(cfg),
            updating: Mutex::new(()),
            recorder: Recorder::new(RECORD_CAPACITY),
            stats: Stats::default(),
            running: AtomicU64::new(0),
        })
    }

    /// What metrics report under `cfg`.
    pub(crate) fn load(&self, cfg: &MockConfig) -> Load {
        let gpu = self.gpu.load();
        let (running, queued, kv_usage) = if cfg.gpu.is_some() {
            (u64::from(gpu.running), gpu.waiting, gpu.kv_usage())
        } else {
            let running = self.running();
            (running, 0, (running as f64 * KV_CACHE_PER_REQUEST).min(1.0))
        };
        Load {
            running,
            waiting: queued.saturating_add(u64::from(cfg.waiting)),
            kv_usage: cfg.kv_cache_usage.unwrap_or(kv_usage),
            gpu: cfg.gpu.map(|_| gpu),
            prefix: gpu.prefix,
        }
    }

    pub(crate) fn running(&self) -> u64 {
        self.running.load(Relaxed)
    }

    /// Counts a generation request as running until the guard drops.
    pub(crate) fn start_running(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Relaxed);
        Running(Arc::clone(self))
    }

    /// The config now; a request keeps this snapshot until it has answered.
    pub(crate) fn config(&self) -> Arc<MockConfig> {
        // An owned Arc, not a `Guard`: guards are meant to be short-lived,
        // and a request holds its snapshot across latency sleeps.
        self.cfg.load_full()
    }

    /// Applies `patch` and returns the config it produced. Concurrent
    /// updates both land, one after the other, so the GPU always ends up
    /// with the newest config's limits.
    pub(crate) fn update(&self, patch: &ConfigPatch) -> Arc<MockConfig> {
        let _one_at_a_time = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let next = Arc::new(patch.apply(&self.cfg.load()));
        // The GPU first: a request that sees the new config finds its limits.
        self.gpu.configure(next.gpu);
        self.cfg.store(Arc::clone(&next));
        next
    }
}

/// Keeps one request counted in `Shared::running`.
pub(crate) struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Relaxed);
    }
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    Completed,
    /// The client went away first.
    Cancelled,
    /// `drop_after_chunks` cut it.
    Dropped,
    /// `error_event_after_chunks` ended it with an error event.
    Failed,
}

/// Token usage the mock told a client about (the last report of an answer counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReportedUsage {
    pub(crate) input: u32,
    pub(crate) output: u32,
}

#[derive(Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    streams_started: AtomicU64,
    streams_completed: AtomicU64,
    streams_cancelled: AtomicU64,
    usage_reports: AtomicU64,
    input_tokens: AtomicU64,
    output_tokens: AtomicU64,
}

#[derive(Serialize)]
struct StatsBody {
    requests: u64,
    streams_started: u64,
    streams_completed: u64,
    streams_cancelled: u64,
    /// Totals of the usage reported to clients: what a gateway should have metered.
    usage: UsageBody,
}

#[derive(Serialize)]
struct UsageBody {
    answers: u64,
    input_tokens: u64,
    output_tokens: u64,
}

impl Stats {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub(crate) fn stream_started(&self) {
        self.streams_started.fetch_add(1, Relaxed);
    }

    pub(crate) fn stream_ended(&self, end: StreamEnd) {
        let counter = match end {
            StreamEnd::Completed => &self.streams_completed,
            StreamEnd::Cancelled => &self.streams_cancelled,
            StreamEnd::Dropped | StreamEnd::Failed => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Counts the usage one answer reported (its last report).
    pub(crate) fn report_usage(&self, usage: ReportedUsage) {
        self.usage_reports.fetch_add(1, Relaxed);
        self.input_tokens.fetch_add(u64::from(usage.input), Relaxed);
        self.output_tokens
            .fetch_add(u64::from(usage.output), Relaxed);
    }

    pub(crate) fn to_json(&self) -> Vec<u8> {
        let body = StatsBody {
            requests: self.requests.load(Relaxed),
            streams_started: self.streams_started.load(Relaxed),
            streams_completed: self.streams_completed.load(Relaxed),
            streams_cancelled: self.streams_cancelled.load(Relaxed),
            usage: UsageBody {
                answers: self.usage_reports.load(Relaxed),
                input_tokens: self.input_tokens.load(Relaxed),
                output_tokens: self.output_tokens.load(Relaxed),
            },
        };
        serde_json::to_vec(&body).expect("stats always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_updates_all_land() {
        let shared = Shared::new(MockConfig::default());
        std::thread::scope(|s| {
            for field in ["latency_ms", "ttft_ms", "waiting", "completion_tokens"] {
                let shared = &shared;
                s.spawn(move || {
                    for i in 1..=200 {
                        let body = format!(r#"{{"{field}": {i}}}"#);
                        shared.update(&ConfigPatch::parse(body.as_bytes()).unwrap());
                    }
                });
            }
        });
        // A lost update would leave some field at an earlier value.
        let cfg = shared.config();
        assert_eq!(
            (
                cfg.latency_ms,
                cfg.ttft_ms,
                cfg.waiting,
                cfg.completion_tokens
            ),
            (200, 200, 200, 200)
        );
    }
}
