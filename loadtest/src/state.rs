//! State shared by every connection of one mock server.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::Serialize;

use crate::config::MockConfig;
use crate::record::{Recorder, RECORD_CAPACITY};

pub(crate) struct Shared {
    pub(crate) cfg: MockConfig,
    pub(crate) recorder: Recorder,
    pub(crate) stats: Stats,
    /// Chat and completion requests being answered right now.
    running: AtomicU64,
}

impl Shared {
    pub(crate) fn new(cfg: MockConfig) -> Arc<Self> {
        Arc::new(Shared {
            cfg,
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

    /// Whether this request should get an injected error.
    pub(crate) fn roll_error(&self) -> bool {
        self.cfg.error_rate > 0.0 && fastrand::f64() < self.cfg.error_rate
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
}

#[derive(Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    streams_started: AtomicU64,
    streams_completed: AtomicU64,
    streams_cancelled: AtomicU64,
}

#[derive(Serialize)]
struct StatsBody {
    requests: u64,
    streams_started: u64,
    streams_completed: u64,
    streams_cancelled: u64,
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
            StreamEnd::Dropped => return,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn to_json(&self) -> Vec<u8> {
        let body = StatsBody {
            requests: self.requests.load(Relaxed),
            streams_started: self.streams_started.load(Relaxed),
            streams_completed: self.streams_completed.load(Relaxed),
            streams_cancelled: self.streams_cancelled.load(Relaxed),
        };
        serde_json::to_vec(&body).expect("stats always serialize")
    }
}
