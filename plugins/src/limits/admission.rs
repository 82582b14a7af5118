//! One admission apart from any store: the subjects' quotas turned into checks, and what a
//! store read about those checks turned into a grant or a refusal. Both stores evaluate the
//! same checks, so they admit and refuse alike and report the same headers.

use super::gcra::Gcra;
use super::{Ask, Demand, Dimension, Grant, Period, RateHeaders, Refusal, Scope, Subject, Window};
use std::time::Duration;

/// The most micro-dollars one amount may hold: 2^53 (about 9 billion USD), below which Lua's
/// doubles count exactly.
const MAX_MICROS: u64 = 1 << 53;

/// USD as whole micro-dollars. `as` saturates: NaN and negative amounts read as zero,
/// infinite ones as the cap.
pub(super) fn micros(usd: f64) -> u64 {
    ((usd * 1e6).round() as u64).min(MAX_MICROS)
}

/// One limit of one subject that an admission must pass.
#[derive(Clone, Copy, Debug)]
pub(super) struct Check<'a> {
    pub scope: Scope,
    pub id: &'a str,
    pub limit: Limit,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Limit {
    /// A per-minute bucket, and how many units this admission takes from it: as many of
    /// `most` as it holds, at least `least`.
    Rate {
        dimension: Dimension,
        gcra: Gcra,
        amount: Amount,
    },
    /// A budget in micro-dollars (and as configured, for refusals), and this admission's
    /// reservation: as much of `most` as is left, at least `least`.
    Budget {
        period: Period,
        limit: u64,
        limit_usd: f64,
        amount: Amount,
    },
}

/// The range an admission may take from one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Amount {
    pub least: u64,
    pub most: u64,
}

impl Amount {
    fn exactly(n: u64) -> Amount {
        Amount { least: n, most: n }
    }

    /// What to take when `room` is left: all that fits, never less than `least`.
    pub fn within(self, room: u64) -> u64 {
        room.clamp(self.least, self.most)
    }
}

/// The checks for `demand` against every subject's quota, in subject order: requests,
/// tokens, day, month. A demand that no bucket could ever hold is refused here, without
/// asking a store.
pub(super) fn plan<'a>(subjects: &[Subject<'a>], ask: Ask) -> Result<Vec<Check<'a>>, Refusal> {
    let least_usd = micros(ask.least.usd);
    let usd = Amount {
        least: least_usd,
        most: micros(ask.most.usd).max(least_usd),
    };
    let tokens = Amount {
        least: ask.least.tokens,
        most: ask.most.tokens.max(ask.least.tokens),
    };
    let mut checks = Vec::with_capacity(subjects.len() * 4);
    for subject in subjects {
        let quota = subject.quota;
        let rates = [
            (Dimension::Requests, quota.rpm, Amount::exactly(1)),
            (Dimension::Tokens, quota.tpm, tokens),
        ];
        for (dimension, limit, amount) in rates {
            let Some(limit) = limit else { continue };
            if amount.least > limit {
                return Err(Refusal::TooLarge {
                    scope: subject.scope,
                    id: subject.id.to_owned(),
                    dimension,
                    limit,
                    requested: amount.least,
                });
            }
            // Only a zero-unit ask gets past a zero limit: it has nothing to take.
            let Some(gcra) = Gcra::new(limit) else {
                continue;
            };
            let amount = Amount {
                most: amount.most.min(limit),
                ..amount
            };
            checks.push(Check {
                scope: subject.scope,
                id: subject.id,
                limit: Limit::Rate {
                    dimension,
                    gcra,
                    amount,
                },
            });
        }
        let budgets = [
            (Period::Day, quota.usd_per_day),
            (Period::Month, quota.usd_per_month),
        ];
        for (period, limit_usd) in budgets {
            let Some(limit_usd) = limit_usd else { continue };
            let limit = micros(limit_usd);
            if usd.least > limit {
                return Err(Refusal::OverBudget {
                    scope: subject.scope,
                    id: subject.id.to_owned(),
                    period,
                    limit_usd,
                    requested_usd: ask.least.usd,
                });
            }
            checks.push(Check {
                scope: subject.scope,
                id: subject.id,
                limit: Limit::Budget {
                    period,
                    limit,
                    limit_usd,
                    amount: Amount {
                        most: usd.most.min(limit),
                        ..usd
                    },
                },
            });
        }
    }
    Ok(checks)
}

/// What a store read for one check: after the admission when it was admitted, as things
/// stood when it was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reading {
    Rate { remaining: u64, reset_us: u64 },
    Budget { spent: u64 },
}

/// A store's answer to one admission: a reading per check, in check order, and the outcome.
#[derive(Debug)]
pub(super) struct Evaluation {
    pub readings: Vec<Reading>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Every check passed and every reservation is applied, in these period instances;
    /// `taken` holds what each check took, in check order.
    Admitted {
        day: i64,
        month: i64,
        taken: Vec<u64>,
    },
    /// Nothing changed. `check` (an index into the checks) is the failed check with the
    /// longest wait, the first such on ties: the one worth reporting.
    Refused { check: usize, wait_us: u64 },
}

/// What one grant holds against one subject, to reconcile at settle.
#[derive(Debug)]
pub(super) struct Reservation {
    pub scope: Scope,
    pub id: String,
    pub hold: Hold,
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Hold {
    /// Tokens taken from a bucket of this limit.
    Tokens { gcra: Gcra, reserved: u64 },
    /// Micro-dollars added to one period instance's spending.
    Usd {
        period: Period,
        instance: i64,
        reserved: u64,
    },
}

impl Hold {
    /// What settling `actual` changes: actual minus reserved, in the hold's unit.
    pub fn extra(&self, actual: Demand) -> i64 {
        let (actual, reserved) = match *self {
            Hold::Tokens { reserved, .. } => (actual.tokens, reserved),
            Hold::Usd { reserved, .. } => (micros(actual.usd), reserved),
        };
        let extra = i128::from(actual) - i128::from(reserved);
        i64::try_from(extra).unwrap_or(if extra < 0 { i64::MIN } else { i64::MAX })
    }
}

/// The grant or refusal a store's evaluation of `checks` amounts to.
pub(super) fn conclude(checks: &[Check], evaluation: Evaluation) -> Result<Grant, Refusal> {
    let Evaluation { readings, outcome } = evaluation;
    let (day, month, taken) = match outcome {
        Outcome::Admitted { day, month, taken } => (day, month, taken),
        Outcome::Refused { check, wait_us } => {
            return Err(refusal(checks, &readings, check, wait_us));
        }
    };
    let reservations = checks
        .iter()
        .zip(taken)
        .filter_map(|(check, reserved)| {
            let hold = match check.limit {
                Limit::Rate {
                    dimension: Dimension::Tokens,
                    gcra,
                    ..
                } => Hold::Tokens { gcra, reserved },
                Limit::Rate { .. } => return None,
                Limit::Budget { period, .. } => Hold::Usd {
                    period,
                    instance: match period {
                        Period::Day => day,
                        Period::Month => month,
                    },
                    reserved,
                },
            };
            Some(Reservation {
                scope: check.scope,
                id: check.id.to_owned(),
                hold,
            })
        })
        .collect();
    Ok(Grant {
        reservations,
        headers: headers(checks.iter().zip(&readings)),
    })
}

/// `refused` indexes `checks` and `readings`: both stores only report indices of the checks
/// they were given, with one reading each.
fn refusal(checks: &[Check], readings: &[Reading], refused: usize, wait_us: u64) -> Refusal {
    let check = checks[refused];
    let retry_after = Duration::from_micros(wait_us);
    match check.limit {
        Limit::Rate { dimension, .. } => {
            let own = checks
                .iter()
                .zip(readings)
                .filter(|(c, _)| c.scope == check.scope && c.id == check.id);
            Refusal::Rate {
                scope: check.scope,
                id: check.id.to_owned(),
                dimension,
                retry_after,
                headers: headers(own),
            }
        }
        Limit::Budget {
            period, limit_usd, ..
        } => {
            let spent = match readings[refused] {
                Reading::Budget { spent } => spent,
                Reading::Rate { .. } => 0,
            };
            Refusal::Budget {
                scope: check.scope,
                id: check.id.to_owned(),
                period,
                limit_usd,
                spent_usd: spent as f64 / 1e6,
                retry_after,
            }
        }
    }
}

/// Per dimension, the window with the least remaining (the first on ties).
fn headers<'a, 'b: 'a>(pairs: impl Iterator<Item = (&'a Check<'b>, &'a Reading)>) -> RateHeaders {
    let mut headers = RateHeaders::default();
    for (check, reading) in pairs {
        let (
            Limit::Rate {
                dimension, gcra, ..
            },
            &Reading::Rate {
                remaining,
                reset_us,
            },
        ) = (check.limit, reading)
        else {
            continue;
        };
        let window = Window {
            limit: gcra.limit(),
            remaining,
            reset: Duration::from_micros(reset_us),
        };
        let slot = match dimension {
            Dimension::Requests => &mut headers.requests,
            Dimension::Tokens => &mut headers.tokens,
        };
        if slot.is_none_or(|w| remaining < w.remaining) {
            *slot = Some(window);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_and_clamp_bad_amounts() {
        assert_eq!(micros(0.0000014), 1);
        assert_eq!(micros(1.25), 1_250_000);
        assert_eq!(micros(-3.0), 0);
        assert_eq!(micros(f64::NAN), 0);
        assert_eq!(micros(f64::INFINITY), MAX_MICROS);
    }

    #[test]
    fn holds_reconcile_in_their_own_unit() {
        let gcra = Gcra::new(1_000).unwrap();
        let tokens = Hold::Tokens {
            gcra,
            reserved: 800,
        };
        let usd = Hold::Usd {
            period: Period::Day,
            instance: 1,
            reserved: 500_000,
        };
        let actual = Demand {
            tokens: 300,
            usd: 0.75,
        };
        assert_eq!(tokens.extra(actual), -500);
        assert_eq!(usd.extra(actual), 250_000);
        let huge = Demand {
            tokens: u64::MAX,
            usd: 0.0,
        };
        assert_eq!(tokens.extra(huge), i64::MAX);
    }
}
