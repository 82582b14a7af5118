//! What the gateway knows about one endpoint right now: latency, load, cooldown, ejection and
//! health. It lives with the endpoint, so it survives config reloads that keep the endpoint.

use super::ewma::PeakEwma;
use super::load::LoadState;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// Deadlines are stored as nanoseconds since this instant, so they fit in atomics.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn to_nanos(t: Instant) -> u64 {
    t.saturating_duration_since(*EPOCH).as_nanos() as u64
}

fn from_nanos(n: u64) -> Instant {
    *EPOCH + Duration::from_nanos(n)
}

/// Passive outlier detection (Envoy's model): consecutive failures eject an endpoint for a
/// time that grows with each ejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// Why an endpoint gets no traffic now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    Unhealthy,
    Ejected,
    CoolingDown,
}

pub struct EndpointState {
    pub latency: PeakEwma,
    /// What the server's own metrics say (GPU servers with `load_metrics`).
    pub load: LoadState,
    in_flight: AtomicU32,
    cooldown_until: AtomicU64,
    ejected_until: AtomicU64,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    healthy: AtomicBool,
    /// Consecutive active-check results of the current kind (positive: successes).
    check_streak: AtomicU32,
    check_streak_ok: AtomicBool,
}

/// Cost of an endpoint that has no latency history but already a request in flight: high
/// enough that it is probed with one request, not flooded (Finagle's penalty).
const UNPROBED_PENALTY: f64 = 1e6;

impl EndpointState {
    pub fn new(ewma_decay: Duration) -> EndpointState {
        EndpointState {
            latency: PeakEwma::new(ewma_decay),
            load: LoadState::default(),
            in_flight: AtomicU32::new(0),
            cooldown_until: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            check_streak: AtomicU32::new(0),
            check_streak_ok: AtomicBool::new(true),
        }
    }

    pub fn availability(&self, now: Instant) -> Result<(), Unavailable> {
        let now = to_nanos(now);
        if !self.healthy.load(Ordering::Relaxed) {
            Err(Unavailable::Unhealthy)
        } else if self.ejected_until.load(Ordering::Relaxed) > now {
            Err(Unavailable::Ejected)
        } else if self.cooldown_until.load(Ordering::Relaxed) > now {
            Err(Unavailable::CoolingDown)
        } else {
            Ok(())
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks a request in flight until the guard drops.
    pub fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Peak-EWMA cost: latency estimate × (in-flight + 1); an endpoint with no history costs
    /// nothing until one request is in flight to it.
    pub fn cost(&self, now: Instant) -> f64 {
        let pending = self.in_flight() as f64;
        match self.latency.estimate_at(now) {
            Some(estimate) => estimate * (pending + 1.0),
            None if pending > 0.0 => UNPROBED_PENALTY + pending,
            None => 0.0,
        }
    }

    /// A 429/503 with `retry-after`: no traffic until then.
    pub fn cool_down(&self, now: Instant, for_: Duration) {
        self.cooldown_until
            .fetch_max(to_nanos(now + for_), Ordering::Relaxed);
    }

    pub fn cooldown_remaining(&self, now: Instant) -> Duration {
        from_nanos(self.cooldown_until.load(Ordering::Relaxed)).saturating_duration_since(now)
    }

    pub fn ejection_remaining(&self, now: Instant) -> Duration {
        from_nanos(self.ejected_until.load(Ordering::Relaxed)).saturating_duration_since(now)
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Counts a failure; returns the ejection time when this failure ejects the endpoint.
    pub fn record_failure(&self, now: Instant, policy: &OutlierPolicy) -> Option<Duration> {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < policy.consecutive_failures {
            return None;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let time = (policy.base_ejection * ejections).min(policy.max_ejection);
        self.ejected_until
            .fetch_max(to_nanos(now + time), Ordering::Relaxed);
        Some(time)
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Feeds one active health-check result; the state flips after `needed` same results in a
    /// row. Returns the new state when it changed.
    pub fn record_check(&self, ok: bool, unhealthy_after: u32, healthy_after: u32) -> Option<bool> {
        let streak = if self.check_streak_ok.swap(ok, Ordering::Relaxed) == ok {
            self.check_streak.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.check_streak.store(1, Ordering::Relaxed);
            1
        };
        let needed = if ok { healthy_after } else { unhealthy_after };
        let was = self.healthy.load(Ordering::Relaxed);
        if was != ok && streak >= needed {
            self.healthy.store(ok, Ordering::Relaxed);
            Some(ok)
        } else {
            None
        }
    }
}

pub struct InFlight<'a>(&'a EndpointState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> EndpointState {
        EndpointState::new(Duration::from_secs(10))
    }

    #[test]
    fn cost_is_latency_times_load_and_new_endpoints_are_probed_once() {
        let s = state();
        let now = Instant::now();
        assert_eq!(s.cost(now), 0.0, "no history, nothing in flight: try it");
        let guard = s.begin();
        assert!(
            s.cost(now) >= UNPROBED_PENALTY,
            "one probe in flight: do not flood it"
        );
        drop(guard);
        s.latency.observe_at(Duration::from_millis(200), now);
        let _a = s.begin();
        let _b = s.begin();
        assert!((s.cost(now) - 0.6).abs() < 1e-9, "{}", s.cost(now));
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_time() {
        let s = state();
        let policy = OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
        };
        let now = Instant::now();
        assert_eq!(s.record_failure(now, &policy), None);
        s.record_success();
        assert_eq!(s.record_failure(now, &policy), None);
        assert_eq!(s.record_failure(now, &policy), None);
        assert_eq!(
            s.record_failure(now, &policy),
            Some(Duration::from_secs(10))
        );
        assert_eq!(s.availability(now), Err(Unavailable::Ejected));
        assert_eq!(s.availability(now + Duration::from_secs(11)), Ok(()));
        let later = now + Duration::from_secs(11);
        for _ in 0..2 {
            s.record_failure(later, &policy);
        }
        assert_eq!(
            s.record_failure(later, &policy),
            Some(Duration::from_secs(20))
        );
        for _ in 0..3 {
            s.record_failure(later, &policy);
        }
        assert_eq!(s.ejections(), 3);
        assert!(
            s.ejection_remaining(later) <= Duration::from_secs(25),
            "capped"
        );
    }

    #[test]
    fn cooldown_blocks_until_it_ends() {
        let s = state();
        let now = Instant::now();
        s.cool_down(now, Duration::from_secs(2));
        assert_eq!(s.availability(now), Err(Unavailable::CoolingDown));
        assert_eq!(s.availability(now + Duration::from_millis(2001)), Ok(()));
        // A shorter cooldown never shortens a longer one.
        s.cool_down(now, Duration::from_secs(1));
        assert_eq!(s.cooldown_remaining(now), Duration::from_secs(2));
    }

    #[test]
    fn health_flips_after_thresholds() {
        let s = state();
        assert_eq!(s.record_check(false, 2, 1), None);
        assert_eq!(s.record_check(false, 2, 1), Some(false));
        assert_eq!(s.availability(Instant::now()), Err(Unavailable::Unhealthy));
        assert_eq!(s.record_check(false, 2, 1), None);
        assert_eq!(s.record_check(true, 2, 1), Some(true));
        assert_eq!(s.record_check(false, 2, 3), None);
        assert_eq!(s.record_check(true, 2, 3), None, "already healthy");
    }
}
