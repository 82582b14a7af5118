//! The in-process store: this process's buckets and budgets behind one mutex, held for one
//! admission's reads and writes and never across an await.

use super::admission::{Check, Evaluation, Hold, Limit, Outcome, Reading, Reservation};
use super::calendar::Periods;
use super::gcra::Tat;
use super::{Demand, Dimension, Period, Scope};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Subjects kept before the first sweep; later sweeps wait for the map to double.
const SWEEP_FLOOR: usize = 4_096;

#[derive(Default)]
pub(super) struct MemoryStore {
    state: Mutex<State>,
}

/// Per scope, each subject's state by id: lookups by `&str` need no allocation.
#[derive(Default)]
struct State {
    subjects: [HashMap<String, Entry>; 3],
    sweep_at: usize,
}

#[derive(Clone, Copy, Default)]
struct Entry {
    requests: Tat,
    tokens: Tat,
    day: Spend,
    month: Spend,
}

/// Micro-dollars spent (reservations included) in one period instance.
#[derive(Clone, Copy, Default)]
struct Spend {
    instance: i64,
    micros: u64,
}

/// What an admitted check writes.
enum Write {
    Bucket(Dimension, Tat),
    Spend(Period, Spend),
}

impl MemoryStore {
    pub fn evaluate(&self, checks: &[Check], now: SystemTime) -> Evaluation {
        let now_us = unix_micros(now);
        let periods = Periods::at(now_us / 1_000_000);
        let mut state = self.lock();
        let mut before = Vec::with_capacity(checks.len());
        let mut after = Vec::with_capacity(checks.len());
        let mut writes = Vec::with_capacity(checks.len());
        let mut taken = Vec::with_capacity(checks.len());
        let mut refused: Option<(usize, u64)> = None;
        for (i, check) in checks.iter().enumerate() {
            let entry = state.get(check.scope, check.id);
            let failed = match check.limit {
                Limit::Rate {
                    dimension,
                    gcra,
                    amount,
                } => {
                    let tat = entry.bucket(dimension);
                    let (remaining, reset_us) = gcra.window(tat, now_us);
                    before.push(Reading::Rate {
                        remaining,
                        reset_us,
                    });
                    let amount = amount.within(remaining);
                    taken.push(amount);
                    match gcra.take(tat, now_us, amount) {
                        Ok(next) => {
                            let (remaining, reset_us) = gcra.window(next, now_us);
                            after.push(Reading::Rate {
                                remaining,
                                reset_us,
                            });
                            writes.push(Write::Bucket(dimension, next));
                            None
                        }
                        Err(wait) => Some(wait),
                    }
                }
                Limit::Budget {
                    period,
                    limit,
                    amount,
                    ..
                } => {
                    let instance = periods.instance(period);
                    let spent = entry.spend(period).in_instance(instance);
                    before.push(Reading::Budget { spent });
                    let amount = amount.within(limit.saturating_sub(spent));
                    taken.push(amount);
                    let micros = spent.saturating_add(amount);
                    after.push(Reading::Budget { spent: micros });
                    writes.push(Write::Spend(period, Spend { instance, micros }));
                    // A spent budget refuses even a free request; any other must fit.
                    (spent >= limit || micros > limit)
                        .then(|| (periods.end(period) * 1_000_000).saturating_sub(now_us))
                }
            };
            if let Some(wait) = failed {
                if refused.is_none_or(|(_, longest)| wait > longest) {
                    refused = Some((i, wait));
                }
            }
        }
        if let Some((check, wait_us)) = refused {
            return Evaluation {
                readings: before,
                outcome: Outcome::Refused { check, wait_us },
            };
        }
        for (check, write) in checks.iter().zip(writes) {
            state.update(check.scope, check.id, |entry| match write {
                Write::Bucket(dimension, tat) => *entry.bucket_mut(dimension) = tat,
                Write::Spend(period, spend) => *entry.spend_mut(period) = spend,
            });
        }
        state.sweep_if_grown(now_us, &periods);
        Evaluation {
            readings: after,
            outcome: Outcome::Admitted {
                day: periods.day,
                month: periods.month,
                taken,
            },
        }
    }

    pub fn settle(&self, reservations: &[Reservation], actual: Demand, now: SystemTime) {
        let now_us = unix_micros(now);
        let mut state = self.lock();
        for reservation in reservations {
            let extra = reservation.hold.extra(actual);
            if extra == 0 {
                continue;
            }
            let (scope, id) = (reservation.scope, reservation.id.as_str());
            match reservation.hold {
                Hold::Tokens { gcra, .. } => state.update(scope, id, |entry| {
                    let tat = entry.bucket_mut(Dimension::Tokens);
                    *tat = gcra.settle(*tat, now_us, extra);
                }),
                Hold::Usd {
                    period, instance, ..
                } => {
                    // Only the live instance is kept: an earlier one no longer limits anything.
                    if let Some(entry) = state.subjects[scope.index()].get_mut(id) {
                        let spend = entry.spend_mut(period);
                        if spend.instance == instance {
                            spend.micros = spend.micros.saturating_add_signed(extra);
                        }
                    }
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; were it poisoned, the state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn subjects(&self) -> usize {
        self.lock().len()
    }
}

impl State {
    /// A subject's state; a subject never seen (or swept) is a fresh one.
    fn get(&self, scope: Scope, id: &str) -> Entry {
        self.subjects[scope.index()]
            .get(id)
            .copied()
            .unwrap_or_default()
    }

    fn update(&mut self, scope: Scope, id: &str, change: impl FnOnce(&mut Entry)) {
        let map = &mut self.subjects[scope.index()];
        if let Some(entry) = map.get_mut(id) {
            change(entry);
        } else {
            let mut entry = Entry::default();
            change(&mut entry);
            map.insert(id.to_owned(), entry);
        }
    }

    fn len(&self) -> usize {
        self.subjects.iter().map(HashMap::len).sum()
    }

    /// Bounds memory: once the map has doubled since the last sweep, drops the subjects that
    /// read as fresh anyway (full buckets, nothing spent this period). Amortised O(1).
    fn sweep_if_grown(&mut self, now_us: u64, periods: &Periods) {
        if self.len() <= self.sweep_at.max(SWEEP_FLOOR) {
            return;
        }
        for map in &mut self.subjects {
            map.retain(|_, entry| !entry.is_fresh(now_us, periods));
        }
        self.sweep_at = self.len() * 2;
    }
}

impl Entry {
    fn bucket(&self, dimension: Dimension) -> Tat {
        match dimension {
            Dimension::Requests => self.requests,
            Dimension::Tokens => self.tokens,
        }
    }

    fn bucket_mut(&mut self, dimension: Dimension) -> &mut Tat {
        match dimension {
            Dimension::Requests => &mut self.requests,
            Dimension::Tokens => &mut self.tokens,
        }
    }

    fn spend(&self, period: Period) -> Spend {
        match period {
            Period::Day => self.day,
            Period::Month => self.month,
        }
    }

    fn spend_mut(&mut self, period: Period) -> &mut Spend {
        match period {
            Period::Day => &mut self.day,
            Period::Month => &mut self.month,
        }
    }

    fn is_fresh(&self, now_us: u64, periods: &Periods) -> bool {
        self.requests.is_full(now_us)
            && self.tokens.is_full(now_us)
            && self.day.in_instance(periods.day) == 0
            && self.month.in_instance(periods.month) == 0
    }
}

impl Spend {
    fn in_instance(self, instance: i64) -> u64 {
        if self.instance == instance {
            self.micros
        } else {
            0
        }
    }
}

/// Microseconds since the Unix epoch; clocks before it read as the epoch.
fn unix_micros(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::super::admission::plan;
    use super::super::{Quota, Subject};
    use super::*;
    use std::time::Duration;

    #[test]
    fn subjects_whose_buckets_refilled_are_swept_once_the_map_doubles() {
        let store = MemoryStore::default();
        let quota = Quota {
            rpm: Some(10),
            ..Quota::default()
        };
        let budget = Quota {
            usd_per_day: Some(5.0),
            ..Quota::default()
        };
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let admit = |id: &str, quota: &Quota, now| {
            let subjects = [Subject {
                scope: Scope::Key,
                id,
                quota,
            }];
            let demand = Demand {
                tokens: 0,
                usd: 0.5,
            };
            let checks = plan(&subjects, demand.into()).unwrap();
            store.evaluate(&checks, now)
        };
        admit("spender", &budget, t0);
        // The first sweep comes at SWEEP_FLOOR + 1 subjects and finds every bucket busy.
        for i in 0..SWEEP_FLOOR {
            admit(&format!("old{i}"), &quota, t0);
        }
        assert_eq!(store.subjects(), SWEEP_FLOOR + 1);
        // A minute later the old buckets are full again; the spender's day is not over. The
        // next sweep waits for twice as many subjects.
        let later = t0 + Duration::from_secs(60);
        for i in 0..=SWEEP_FLOOR + 1 {
            admit(&format!("new{i}"), &quota, later);
        }
        assert_eq!(store.subjects(), SWEEP_FLOOR + 3);
        let state = store.lock();
        assert!(!state.subjects[Scope::Key.index()].contains_key("old0"));
        let spender = state.get(Scope::Key, "spender");
        assert_eq!(spender.day.micros, 500_000);
    }
}
