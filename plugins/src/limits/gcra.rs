//! The generic cell rate algorithm (GCRA) behind every per-minute limit.
//!
//! A bucket is one value, its theoretical arrival time (TAT): the instant it will be full
//! again. A bucket of `limit` units refills one unit every `60 s / limit`; taking `n` units
//! moves its TAT `n × 60 s / limit` later, and is allowed while the TAT stays within 60 s of
//! now (the whole bucket). Times are integer microseconds since the Unix epoch. `60 s / limit`
//! is rarely a whole number of microseconds, so a TAT carries the remainder in `frac`,
//! counted in `1 / limit` µs: sums stay exact, and `limit` one-unit takes fill a bucket
//! exactly, whatever the limit.
//!
//! `lib.lua` carries the same functions, step for step, for the Redis store; a test runs both
//! on the same inputs. Lua computes in doubles, exact below 2^53: the two agree while
//! `units × 60,000,000 < 2^53` for one take (about 150 million tokens) and, for the
//! remaining count in headers, while the limit is below about 150 million per minute.

use std::num::NonZeroU64;

/// The span every per-minute limit refills over, in microseconds.
pub(super) const WINDOW_US: u64 = 60_000_000;

/// A theoretical arrival time: `us` µs and `frac / limit` µs since the Unix epoch. Any time
/// not after now means a full bucket, so the default (the epoch) is a fresh bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Tat {
    pub us: u64,
    pub frac: u64,
}

impl Tat {
    pub fn at(us: u64) -> Tat {
        Tat { us, frac: 0 }
    }

    /// Whether the bucket is full at `now_us`.
    pub fn is_full(self, now_us: u64) -> bool {
        self <= Tat::at(now_us)
    }
}

/// One per-minute limit of at least one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Gcra {
    limit: NonZeroU64,
}

impl Gcra {
    /// `None` for a limit of zero, which no take can pass.
    pub fn new(limit: u64) -> Option<Gcra> {
        NonZeroU64::new(limit).map(|limit| Gcra { limit })
    }

    pub fn limit(self) -> u64 {
        self.limit.get()
    }

    /// Takes `n` units at `now_us`: the new TAT, or how many µs until the take would fit.
    pub fn take(self, tat: Tat, now_us: u64, n: u64) -> Result<Tat, u64> {
        let next = self.add(self.start(tat, now_us), n);
        match self.wait(next, now_us) {
            0 => Ok(next),
            wait => Err(wait),
        }
    }

    /// Reconciles a take with what was really used: `extra` more units (charged whatever the
    /// bucket holds, since they were spent) or, when negative, that many given back (never
    /// beyond full).
    pub fn settle(self, tat: Tat, now_us: u64, extra: i64) -> Tat {
        if extra < 0 {
            self.refund(tat, now_us, extra.unsigned_abs())
        } else {
            self.add(self.start(tat, now_us), extra.unsigned_abs())
        }
    }

    /// Units left at `now_us`, and µs until the bucket is full.
    pub fn window(self, tat: Tat, now_us: u64) -> (u64, u64) {
        let tat = self.start(tat, now_us);
        let ahead = tat.us - now_us;
        let reset = ahead + u64::from(tat.frac > 0);
        if ahead >= WINDOW_US {
            return (0, reset);
        }
        // floor(((60 s - ahead) × limit - frac) / 60 s); positive since frac < limit.
        let room = u128::from(WINDOW_US - ahead) * u128::from(self.limit()) - u128::from(tat.frac);
        (saturate(room / u128::from(WINDOW_US)), reset)
    }

    /// `n` units as time: whole µs, and the remainder in `1 / limit` µs.
    fn cost(self, n: u64) -> (u64, u64) {
        let units = u128::from(n) * u128::from(WINDOW_US);
        let limit = u128::from(self.limit());
        (saturate(units / limit), saturate(units % limit))
    }

    /// A remainder stored under a larger limit (the quota shrank) is cut to fit this one.
    fn fit(self, tat: Tat) -> Tat {
        Tat {
            us: tat.us,
            frac: tat.frac.min(self.limit() - 1),
        }
    }

    /// Where a take starts: a full bucket holds no more than its limit, so never before now.
    fn start(self, tat: Tat, now_us: u64) -> Tat {
        if tat.us < now_us {
            Tat::at(now_us)
        } else {
            self.fit(tat)
        }
    }

    fn add(self, tat: Tat, n: u64) -> Tat {
        let (q, r) = self.cost(n);
        let frac = u128::from(tat.frac) + u128::from(r);
        let limit = u128::from(self.limit());
        let (carry, frac) = if frac >= limit {
            (1, frac - limit)
        } else {
            (0, frac)
        };
        Tat {
            us: tat.us.saturating_add(q).saturating_add(carry),
            frac: saturate(frac),
        }
    }

    fn refund(self, tat: Tat, now_us: u64, n: u64) -> Tat {
        let tat = self.fit(tat);
        let (q, r) = self.cost(n);
        let (borrow, frac) = if tat.frac < r {
            (1, tat.frac + (self.limit() - r))
        } else {
            (0, tat.frac - r)
        };
        let back = Tat {
            us: tat.us.saturating_sub(q).saturating_sub(borrow),
            frac,
        };
        back.max(Tat::at(now_us))
    }

    /// µs until `tat` is within one window of now: zero when it is.
    fn wait(self, tat: Tat, now_us: u64) -> u64 {
        let ahead = tat.us.saturating_sub(now_us) + u64::from(tat.frac > 0);
        ahead.saturating_sub(WINDOW_US)
    }
}

fn saturate(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000_000;
    const SECOND: u64 = 1_000_000;

    fn takes(gcra: Gcra, mut tat: Tat, now: u64, n: u64, times: u64) -> Result<Tat, u64> {
        for _ in 0..times {
            tat = gcra.take(tat, now, n)?;
        }
        Ok(tat)
    }

    #[test]
    fn five_per_minute_pass_then_the_sixth_waits_twelve_seconds() {
        let gcra = Gcra::new(5).unwrap();
        let full = takes(gcra, Tat::default(), NOW, 1, 5).unwrap();
        assert_eq!(full, Tat::at(NOW + 60 * SECOND));
        assert_eq!(gcra.take(full, NOW, 1), Err(12 * SECOND));
        assert_eq!(gcra.window(full, NOW), (0, 60 * SECOND));
    }

    #[test]
    fn a_limit_that_does_not_divide_a_minute_still_fills_exactly() {
        for limit in [7, 13, 999, 7_000_003] {
            let gcra = Gcra::new(limit).unwrap();
            let full = takes(gcra, Tat::default(), NOW, 1, limit.min(20_000)).unwrap();
            if limit <= 20_000 {
                assert_eq!(full, Tat::at(NOW + 60 * SECOND), "limit {limit}");
                assert!(gcra.take(full, NOW, 1).is_err(), "limit {limit}");
            } else {
                assert_eq!(gcra.window(full, NOW).0, limit - 20_000, "limit {limit}");
            }
        }
    }

    #[test]
    fn time_refills_one_unit_per_interval() {
        let gcra = Gcra::new(5).unwrap();
        let full = takes(gcra, Tat::default(), NOW, 1, 5).unwrap();
        assert!(gcra.take(full, NOW + 12 * SECOND - 1, 1).is_err());
        let tat = gcra.take(full, NOW + 12 * SECOND, 1).unwrap();
        assert!(gcra.take(tat, NOW + 12 * SECOND, 1).is_err());
        assert_eq!(gcra.window(full, NOW + 30 * SECOND), (2, 30 * SECOND));
        assert_eq!(gcra.window(full, NOW + 60 * SECOND), (5, 0));
        assert!(takes(gcra, full, NOW + 60 * SECOND, 1, 5).is_ok());
    }

    #[test]
    fn windows_count_the_units_left_and_the_time_to_full() {
        let gcra = Gcra::new(1_000).unwrap();
        assert_eq!(gcra.window(Tat::default(), NOW), (1_000, 0));
        let tat = gcra.take(Tat::default(), NOW, 250).unwrap();
        assert_eq!(gcra.window(tat, NOW), (750, 15 * SECOND));
        // One third of a microsecond short of a unit's interval still counts as taken.
        let gcra = Gcra::new(7).unwrap();
        let tat = gcra.take(Tat::default(), NOW, 1).unwrap();
        assert_eq!(
            tat,
            Tat {
                us: NOW + 8_571_428,
                frac: 4
            }
        );
        assert_eq!(gcra.window(tat, NOW), (6, 8_571_429));
    }

    #[test]
    fn settle_refunds_down_to_full_and_charges_beyond_it() {
        let gcra = Gcra::new(1_000).unwrap();
        let tat = gcra.take(Tat::default(), NOW, 800).unwrap();
        assert_eq!(gcra.take(tat, NOW, 800), Err(36 * SECOND));
        let back = gcra.settle(tat, NOW, -700);
        assert_eq!(gcra.window(back, NOW), (900, 6 * SECOND));
        assert_eq!(
            gcra.settle(tat, NOW, -5_000),
            Tat::at(NOW),
            "never beyond full"
        );
        let over = gcra.settle(tat, NOW, 700);
        assert_eq!(gcra.window(over, NOW), (0, 90 * SECOND));
        assert_eq!(gcra.take(over, NOW, 1), Err(30 * SECOND + 60_000));
    }

    #[test]
    fn a_remainder_from_a_larger_limit_is_cut_to_fit() {
        let wide = Gcra::new(1_000_000).unwrap();
        let tat = wide.take(Tat::default(), NOW, 7).unwrap();
        let narrow = Gcra::new(3).unwrap();
        let (remaining, _) = narrow.window(
            Tat {
                frac: 999_999,
                ..tat
            },
            NOW,
        );
        assert_eq!(remaining, 2);
        let back = narrow.settle(
            Tat {
                frac: 999_999,
                ..tat
            },
            NOW,
            -1,
        );
        assert_eq!(back, Tat::at(NOW));
    }

    #[test]
    fn huge_inputs_saturate_instead_of_overflowing() {
        let gcra = Gcra::new(u64::MAX).unwrap();
        assert!(gcra.take(Tat::default(), u64::MAX, u64::MAX).is_ok());
        let one = Gcra::new(1).unwrap();
        let tat = one.settle(Tat::default(), NOW, i64::MAX);
        assert_eq!(tat.us, u64::MAX);
        assert_eq!(one.window(tat, NOW).0, 0);
        assert_eq!(one.settle(tat, NOW, i64::MIN), Tat::at(NOW));
    }
}
