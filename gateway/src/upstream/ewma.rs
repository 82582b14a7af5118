//! Peak-EWMA latency, as Finagle and tower define it: a slower observation replaces the
//! estimate at once, faster ones blend in with a weight that depends on the time since the
//! last update, and an idle estimate decays toward zero so a recovered endpoint gets probed.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

pub struct PeakEwma {
    decay: Duration,
    state: Mutex<Estimate>,
}

struct Estimate {
    /// Seconds; `None` until the first observation.
    value: Option<f64>,
    stamp: Instant,
}

impl PeakEwma {
    pub fn new(decay: Duration) -> PeakEwma {
        PeakEwma {
            decay,
            state: Mutex::new(Estimate {
                value: None,
                stamp: Instant::now(),
            }),
        }
    }

    pub fn decay(&self) -> Duration {
        self.decay
    }

    fn weight(&self, elapsed: Duration) -> f64 {
        (-elapsed.as_secs_f64() / self.decay.as_secs_f64()).exp()
    }

    pub fn observe(&self, sample: Duration) {
        self.observe_at(sample, Instant::now());
    }

    pub fn observe_at(&self, sample: Duration, now: Instant) {
        let sample = sample.as_secs_f64();
        let mut state = self
            .state
            .lock()
            // A panic elsewhere must not become one on every request: the state is whole.
            .unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(state.stamp);
        state.value = Some(match state.value {
            Some(current) if sample <= current => {
                let w = self.weight(elapsed);
                current * w + sample * (1.0 - w)
            }
            _ => sample,
        });
        state.stamp = now;
    }

    /// The estimate decayed to `now` (an idle endpoint drifts toward zero), or `None` with no
    /// history yet.
    pub fn estimate_at(&self, now: Instant) -> Option<f64> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(state.stamp);
        state.value.map(|v| v * self.weight(elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAU: Duration = Duration::from_secs(10);

    #[test]
    fn a_spike_lifts_the_estimate_at_once() {
        let e = PeakEwma::new(TAU);
        let t0 = Instant::now();
        assert_eq!(e.estimate_at(t0), None);
        e.observe_at(Duration::from_millis(100), t0);
        e.observe_at(Duration::from_millis(900), t0 + Duration::from_millis(1));
        let v = e.estimate_at(t0 + Duration::from_millis(1)).unwrap();
        assert!((v - 0.9).abs() < 1e-9, "{v}");
    }

    #[test]
    fn faster_samples_blend_by_elapsed_time() {
        let e = PeakEwma::new(TAU);
        let t0 = Instant::now();
        e.observe_at(Duration::from_secs(1), t0);
        // After one time constant the old value keeps weight 1/e.
        let t1 = t0 + TAU;
        e.observe_at(Duration::ZERO, t1);
        let v = e.estimate_at(t1).unwrap();
        assert!((v - (-1.0f64).exp()).abs() < 1e-9, "{v}");
        // Samples close together barely move it.
        e.observe_at(Duration::ZERO, t1 + Duration::from_millis(1));
        let w = e.estimate_at(t1 + Duration::from_millis(1)).unwrap();
        assert!((w - v).abs() < v * 1e-3, "{w} vs {v}");
    }

    #[test]
    fn an_idle_estimate_decays_toward_zero() {
        let e = PeakEwma::new(TAU);
        let t0 = Instant::now();
        e.observe_at(Duration::from_secs(2), t0);
        let later = e.estimate_at(t0 + TAU * 3).unwrap();
        assert!((later - 2.0 * (-3.0f64).exp()).abs() < 1e-9, "{later}");
    }
}
