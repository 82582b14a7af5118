//! State shared by every connection of one mock server.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::MockConfig;
use crate::control::ConfigPatch;
use crate::record::{Recorder, RECORD_CAPACITY};

pub(crate) struct Shared {
    /// Replaced whole by `POST /mock/config`, so a request that took a
    /// snapshot never sees half of an update.
    cfg: ArcSwap<MockConfig>,
    pub(crate) recorder: Recorder,
    pub(crate) stats: Stats,
    /// Chat and completion requests being answered right now.
    running: AtomicU64,
}

impl Shared {
    pub(crate) fn new(cfg: MockConfig) -> Arc<Self> {
        Arc::new(Shared {
            cfg: ArcSwap::from_pointee(cfg),
            recorder: Recorder::new(RECORD_CAPACITY),
            stats: Stats::default(),
            running: AtomicU64::new(0),
        })
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
    /// updates both land: `rcu` retries on top of a config that changed.
    pub(crate) fn update(&self, patch: &ConfigPatch) -> Arc<MockConfig> {
        let mut produced = None;
        self.cfg.rcu(|current| {
            let next = Arc::new(patch.apply(current));
            produced = Some(Arc::clone(&next));
            next
        });
        produced.expect("rcu runs its closure at least once")
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
