//! UTC calendar periods for budgets. A period instance is a number that changes when the
//! period does: days since the Unix epoch, and `year × 12 + month - 1`. `lib.lua` computes
//! the same numbers from the Redis server's clock; a test compares the two.

use super::Period;
use chrono::{DateTime, Datelike, NaiveDate};

const DAY_S: u64 = 86_400;

/// The latest second handled (9999-12-31T23:59:59Z); later clocks are read as this one.
const LAST_S: u64 = 253_402_300_799;

/// The day and month that contain one instant, and when each ends (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Periods {
    pub day: i64,
    pub day_end: u64,
    pub month: i64,
    pub month_end: u64,
}

impl Periods {
    pub fn at(unix_s: u64) -> Periods {
        let unix_s = unix_s.min(LAST_S);
        let day = unix_s / DAY_S;
        let day_end = (day + 1) * DAY_S;
        // In range by the clamp above, so the fallback (the epoch) is never used.
        let date = i64::try_from(unix_s)
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .unwrap_or_default()
            .date_naive();
        let (year, month) = (date.year(), date.month());
        let next = if month == 12 {
            NaiveDate::from_ymd_opt(year + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(year, month + 1, 1)
        };
        let month_end = next
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .and_then(|t| u64::try_from(t.and_utc().timestamp()).ok())
            .unwrap_or(day_end);
        Periods {
            day: i64::try_from(day).unwrap_or(i64::MAX),
            day_end,
            month: i64::from(year) * 12 + i64::from(month) - 1,
            month_end,
        }
    }

    pub fn instance(&self, period: Period) -> i64 {
        match period {
            Period::Day => self.day,
            Period::Month => self.month,
        }
    }

    /// Unix seconds at which `period` ends.
    pub fn end(&self, period: Period) -> u64 {
        match period {
            Period::Day => self.day_end,
            Period::Month => self.month_end,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(date: &str) -> u64 {
        let t = DateTime::parse_from_rfc3339(date).unwrap();
        u64::try_from(t.timestamp()).unwrap()
    }

    #[test]
    fn days_and_months_turn_over_at_utc_midnight() {
        let p = Periods::at(unix("2024-02-29T23:59:59Z"));
        assert_eq!(p.day, 19_782);
        assert_eq!(p.day_end, unix("2024-03-01T00:00:00Z"));
        assert_eq!(p.month, 2024 * 12 + 1);
        assert_eq!(p.month_end, unix("2024-03-01T00:00:00Z"));
        let next = Periods::at(unix("2024-03-01T00:00:00Z"));
        assert_eq!((next.day, next.month), (19_783, 2024 * 12 + 2));
        let december = Periods::at(unix("2023-12-31T12:00:00Z"));
        assert_eq!(december.month_end, unix("2024-01-01T00:00:00Z"));
        assert_eq!(december.end(Period::Day), unix("2024-01-01T00:00:00Z"));
        assert_eq!(december.instance(Period::Month), 2023 * 12 + 11);
    }

    #[test]
    fn clocks_past_year_9999_are_read_as_its_last_second() {
        let p = Periods::at(u64::MAX);
        assert_eq!(p.month, 9999 * 12 + 11);
        assert_eq!(p.day_end, LAST_S + 1);
    }
}
