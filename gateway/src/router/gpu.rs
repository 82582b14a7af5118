//! GPU-aware scoring, as the Gateway API Inference Extension and llm-d score pods, inside the
//! data plane: filter the saturated endpoints (unless all are), score queue depth, KV-cache
//! headroom, prefix-cache affinity and LoRA affinity with weights, pick the best.

use crate::upstream::load::LoadView;

/// Weights and thresholds of `strategy: gpu-aware`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scoring {
    pub queue_weight: f64,
    pub kv_cache_weight: f64,
    pub prefix_weight: f64,
    pub lora_weight: f64,
    /// Waiting requests at which an endpoint counts as saturated.
    pub max_waiting: f64,
    /// KV-cache use at which an endpoint counts as saturated.
    pub max_kv_cache: f64,
}

impl Default for Scoring {
    /// The Inference Extension's thresholds (queue 5, KV 80 %); prefix affinity weighs most
    /// while a replica has headroom, as in llm-d's default profile.
    fn default() -> Self {
        Scoring {
            queue_weight: 2.0,
            kv_cache_weight: 2.0,
            prefix_weight: 3.0,
            lora_weight: 1.0,
            max_waiting: 5.0,
            max_kv_cache: 0.8,
        }
    }
}

/// What routing knows of one endpoint for one request.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The server's last fresh report; `None` when unknown (never read, failed, or stale).
    pub load: Option<LoadView>,
    /// Requests this gateway has in flight there.
    pub in_flight: u32,
    /// Leading prompt blocks this endpoint served recently.
    pub prefix_match: usize,
    /// The requested model is a LoRA adapter the server already has loaded.
    pub lora_loaded: bool,
}

/// The score of each candidate (higher is better); saturated ones get `NEG_INFINITY` unless
/// every candidate is saturated.
pub fn score(scoring: &Scoring, candidates: &[Candidate], prefix_blocks: usize) -> Vec<f64> {
    let known: Vec<&LoadView> = candidates.iter().filter_map(|c| c.load.as_ref()).collect();
    // An endpoint whose load is unknown is taken to be as busy as the busiest known one: a
    // stale or failed scrape must never make a replica look idle.
    let worst_queue = known.iter().map(|l| l.queue).fold(0.0, f64::max);
    let worst_kv = known.iter().filter_map(|l| l.kv_cache).reduce(f64::max);
    let queues: Vec<f64> = candidates
        .iter()
        .map(|c| match &c.load {
            Some(load) => load.queue,
            None if known.is_empty() => f64::from(c.in_flight),
            None => worst_queue,
        })
        .collect();
    let kvs: Vec<Option<f64>> = candidates
        .iter()
        .map(|c| match &c.load {
            Some(load) => load.kv_cache.or(worst_kv),
            None => worst_kv,
        })
        .collect();
    let saturated: Vec<bool> = candidates
        .iter()
        .zip(&kvs)
        .map(|(c, kv)| {
            c.load.as_ref().is_some_and(|l| {
                l.queue >= scoring.max_waiting || kv.is_some_and(|kv| kv >= scoring.max_kv_cache)
            })
        })
        .collect();
    let filter = !saturated.iter().all(|&s| s);
    let (low, high) = queues
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &q| {
            (lo.min(q), hi.max(q))
        });
    candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if filter && saturated[i] {
                return f64::NEG_INFINITY;
            }
            // Relative to the others: the shortest queue scores 1, the longest 0.
            let queue = if high > low {
                (high - queues[i]) / (high - low)
            } else {
                1.0
            };
            let kv = kvs[i].map_or(0.5, |kv| 1.0 - kv.clamp(0.0, 1.0));
            let prefix = if prefix_blocks == 0 {
                0.0
            } else {
                c.prefix_match as f64 / prefix_blocks as f64
            };
            let lora = if c.lora_loaded { 1.0 } else { 0.0 };
            scoring.queue_weight * queue
                + scoring.kv_cache_weight * kv
                + scoring.prefix_weight * prefix
                + scoring.lora_weight * lora
        })
        .collect()
}

/// The best candidate; among equals, a random one, so that equals share a burst.
pub fn pick(scores: &[f64]) -> Option<usize> {
    let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let ties: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i] >= best - 1e-9)
        .collect();
    (!ties.is_empty()).then(|| ties[fastrand::usize(..ties.len())])
}

/// An endpoint's load on its own, for `/admin/providers` and `tollgate_endpoint_load_score`:
/// 1 idle, towards 0 saturated.
pub fn load_score(scoring: &Scoring, load: &LoadView) -> f64 {
    let queue = 1.0 / (1.0 + load.queue);
    let kv = load.kv_cache.map_or(0.5, |kv| 1.0 - kv.clamp(0.0, 1.0));
    let weights = scoring.queue_weight + scoring.kv_cache_weight;
    if weights == 0.0 {
        return queue;
    }
    (scoring.queue_weight * queue + scoring.kv_cache_weight * kv) / weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::load::LoadReport;
    use std::time::Duration;

    fn known(queue: f64, kv: f64) -> Candidate {
        Candidate {
            load: Some(LoadView {
                queue,
                kv_cache: Some(kv),
                report: LoadReport::default(),
                age: Duration::ZERO,
            }),
            in_flight: 0,
            prefix_match: 0,
            lora_loaded: false,
        }
    }

    fn unknown() -> Candidate {
        Candidate {
            load: None,
            in_flight: 0,
            prefix_match: 0,
            lora_loaded: false,
        }
    }

    fn best(candidates: &[Candidate], blocks: usize) -> usize {
        pick(&score(&Scoring::default(), candidates, blocks)).unwrap()
    }

    #[test]
    fn saturated_endpoints_are_left_out_unless_all_are() {
        let busy = known(50.0, 0.97);
        let idle = known(0.0, 0.1);
        for _ in 0..20 {
            assert_eq!(best(&[busy.clone(), idle.clone()], 0), 1);
        }
        let scores = score(&Scoring::default(), &[busy.clone(), busy.clone()], 0);
        assert!(scores.iter().all(|s| s.is_finite()), "{scores:?}");
        // A full KV cache alone saturates.
        assert_eq!(best(&[known(0.0, 0.95), known(2.0, 0.2)], 0), 1);
    }

    #[test]
    fn unknown_load_is_never_taken_for_idle() {
        let scores = score(&Scoring::default(), &[known(3.0, 0.5), unknown()], 0);
        assert!(scores[1] <= scores[0], "{scores:?}");
        // With nothing known, the gateway's own in-flight count decides.
        let mut a = unknown();
        a.in_flight = 4;
        assert_eq!(best(&[a, unknown()], 0), 1);
    }

    #[test]
    fn a_shared_prefix_wins_while_there_is_headroom() {
        let mut holder = known(2.0, 0.5);
        holder.prefix_match = 8;
        let other = known(0.0, 0.3);
        assert_eq!(best(&[holder.clone(), other.clone()], 8), 0);
        // Not once the holder is saturated.
        let mut full = known(9.0, 0.5);
        full.prefix_match = 8;
        assert_eq!(best(&[full, other], 8), 1);
    }

    #[test]
    fn lora_affinity_breaks_ties() {
        let mut loaded = known(1.0, 0.4);
        loaded.lora_loaded = true;
        assert_eq!(best(&[known(1.0, 0.4), loaded], 0), 1);
    }

    #[test]
    fn load_score_runs_from_idle_to_saturated() {
        let s = Scoring::default();
        let idle = known(0.0, 0.0).load.unwrap();
        let busy = known(50.0, 0.97).load.unwrap();
        assert_eq!(load_score(&s, &idle), 1.0);
        assert!(load_score(&s, &busy) < 0.05);
    }
}
