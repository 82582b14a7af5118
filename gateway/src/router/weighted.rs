//! Smooth weighted round-robin (nginx's): over any run of requests each target's share matches
//! its weight, and picks interleave instead of coming in bursts.

use std::sync::{Mutex, PoisonError};

pub struct SmoothWeighted {
    weights: Vec<i64>,
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub fn new(weights: Vec<u32>) -> SmoothWeighted {
        let weights: Vec<i64> = weights.into_iter().map(i64::from).collect();
        SmoothWeighted {
            current: Mutex::new(vec![0; weights.len()]),
            weights,
        }
    }

    /// Picks among the indices `eligible` allows; `None` when it allows none.
    pub fn pick(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut current = self
            .current
            .lock()
            // A panic elsewhere must not become one on every request: the state is whole.
            .unwrap_or_else(PoisonError::into_inner);
        let mut total = 0;
        let mut best: Option<usize> = None;
        for i in (0..self.weights.len()).filter(|&i| eligible(i)) {
            current[i] += self.weights[i];
            total += self.weights[i];
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        current[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_weights_and_interleave() {
        let w = SmoothWeighted::new(vec![5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| w.pick(|_| true).unwrap()).collect();
        // nginx's documented sequence for 5:1:1.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        let many: Vec<usize> = (0..700).map(|_| w.pick(|_| true).unwrap()).collect();
        assert_eq!(many.iter().filter(|&&i| i == 0).count(), 500);
        assert_eq!(many.iter().filter(|&&i| i == 1).count(), 100);
    }

    #[test]
    fn skips_ineligible_targets() {
        let w = SmoothWeighted::new(vec![3, 1]);
        let picks: Vec<usize> = (0..8).map(|_| w.pick(|i| i == 1).unwrap()).collect();
        assert!(picks.iter().all(|&i| i == 1));
        assert_eq!(w.pick(|_| false), None);
    }
}
