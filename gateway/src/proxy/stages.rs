//! Where a request's time inside the gateway goes, stage by stage, for
//! `tollgate_stage_duration_seconds{stage}`: a few clock reads per request.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Finding the virtual key.
    Auth,
    /// Reading the request's JSON head and its model.
    Parse,
    /// Limits, budgets, context policy, rules: what the request may use.
    Admission,
    /// Choosing each attempt's target and endpoint.
    Routing,
    /// Request bodies and stream chunks re-spoken in another dialect.
    Translate,
    /// Reading usage from answers and settling it.
    Meter,
    /// Plugins, ledger and metrics once the request ended.
    Log,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Auth,
        Stage::Parse,
        Stage::Admission,
        Stage::Routing,
        Stage::Translate,
        Stage::Meter,
        Stage::Log,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Auth => "auth",
            Stage::Parse => "parse",
            Stage::Admission => "admission",
            Stage::Routing => "routing",
            Stage::Translate => "translate",
            Stage::Meter => "meter",
            Stage::Log => "log",
        }
    }
}

/// Time spent per stage by one request; `None` for stages it never reached.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stages {
    spent: [Option<Duration>; 7],
}

impl Stages {
    pub fn add(&mut self, stage: Stage, time: Duration) {
        let slot = &mut self.spent[stage as usize];
        *slot = Some(slot.unwrap_or_default() + time);
    }

    /// Runs `work`, counting its time to `stage`.
    pub fn time<T>(&mut self, stage: Stage, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = work();
        self.add(stage, started.elapsed());
        out
    }

    pub fn spent(&self) -> impl Iterator<Item = (Stage, Duration)> + '_ {
        Stage::ALL
            .into_iter()
            .filter_map(|stage| Some((stage, self.spent[stage as usize]?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_per_stage_and_skips_the_rest() {
        let mut stages = Stages::default();
        stages.add(Stage::Routing, Duration::from_micros(3));
        stages.add(Stage::Routing, Duration::from_micros(4));
        let doubled = stages.time(Stage::Parse, || 21 * 2);
        assert_eq!(doubled, 42);
        let spent: Vec<(Stage, Duration)> = stages.spent().collect();
        assert_eq!(spent.len(), 2);
        assert_eq!(spent[0].0, Stage::Parse);
        assert_eq!(spent[1], (Stage::Routing, Duration::from_micros(7)));
        assert_eq!(Stage::ALL.map(|s| s as usize), [0, 1, 2, 3, 4, 5, 6]);
    }
}
