//! Usage reports: sums per team, project, key, model or provider over a time range, read
//! through the ledger's read-only connection.

use super::{lock, sqlite_error, Ledger, LedgerError};
use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, Utc};
use serde_json::{json, Value};

impl Ledger {
    /// Sums usage per group over `[since, until)`, most expensive group first.
    pub fn usage(&self, query: &UsageQuery) -> Result<UsageReport, LedgerError> {
        let column = query.group_by.column();
        let mut filters = Vec::new();
        let mut bounds = Vec::new();
        if let Some(since) = query.since {
            filters.push("ts >= ?");
            bounds.push(since);
        }
        if let Some(until) = query.until {
            filters.push("ts < ?");
            bounds.push(until);
        }
        let filter = if filters.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", filters.join(" AND "))
        };
        let sql = format!(
            "SELECT {column} AS grp, COUNT(*), SUM(input_tokens), SUM(cached_input_tokens), \
             SUM(output_tokens), TOTAL(cost_usd) AS cost FROM requests {filter} \
             GROUP BY grp ORDER BY cost DESC, grp"
        );

        let conn = lock(&self.reader);
        let read = || -> rusqlite::Result<Vec<UsageGroup>> {
            let count = |n: i64| u64::try_from(n).unwrap_or_default();
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(&bounds), |row| {
                Ok(UsageGroup {
                    group: row.get(0)?,
                    requests: count(row.get(1)?),
                    input_tokens: count(row.get(2)?),
                    cached_input_tokens: count(row.get(3)?),
                    output_tokens: count(row.get(4)?),
                    cost_usd: row.get(5)?,
                })
            })?;
            rows.collect()
        };
        let groups = read().map_err(sqlite_error(&self.path))?;
        let totals = groups.iter().fold(UsageTotals::default(), |mut t, g| {
            t.add(g);
            t
        });
        Ok(UsageReport { groups, totals })
    }
}

/// What a usage report is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupBy {
    Team,
    Project,
    Key,
    Model,
    Provider,
}

impl GroupBy {
    pub const ALL: [GroupBy; 5] = [
        GroupBy::Team,
        GroupBy::Project,
        GroupBy::Key,
        GroupBy::Model,
        GroupBy::Provider,
    ];

    pub fn parse(text: &str) -> Option<GroupBy> {
        GroupBy::ALL.into_iter().find(|g| g.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Team => "team",
            GroupBy::Project => "project",
            GroupBy::Key => "key",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
        }
    }

    /// The column, quoted: `key` is an SQL keyword. Only ever these fixed names reach the SQL
    /// text, never caller input.
    fn column(self) -> &'static str {
        match self {
            GroupBy::Team => "team",
            GroupBy::Project => "project",
            GroupBy::Key => "\"key\"",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
        }
    }
}

/// A usage report request; the bounds are unix milliseconds, `since` inclusive, `until`
/// exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageQuery {
    pub group_by: GroupBy,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// Usage summed over one group; `group` is `None` for requests without that attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageGroup {
    pub group: Option<String>,
    pub requests: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

/// Usage summed over every group of a report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageTotals {
    pub requests: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

impl UsageTotals {
    fn add(&mut self, g: &UsageGroup) {
        self.requests += g.requests;
        self.input_tokens += g.input_tokens;
        self.cached_input_tokens += g.cached_input_tokens;
        self.output_tokens += g.output_tokens;
        self.cost_usd += g.cost_usd;
    }

    fn to_json(&self) -> Value {
        json!({
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct UsageReport {
    /// Most expensive first; ties by group name, no group first.
    pub groups: Vec<UsageGroup>,
    pub totals: UsageTotals,
}

impl UsageReport {
    /// The usage API's response body; the bounds are echoed as RFC 3339 (null when absent).
    pub fn to_json(&self, group_by: GroupBy, since: Option<i64>, until: Option<i64>) -> Value {
        let groups: Vec<Value> = self
            .groups
            .iter()
            .map(|g| {
                let mut sums = UsageTotals::default();
                sums.add(g);
                let mut value = sums.to_json();
                value["group"] = json!(g.group);
                value
            })
            .collect();
        json!({
            "group_by": group_by.as_str(),
            "since": since.and_then(rfc3339),
            "until": until.and_then(rfc3339),
            "groups": groups,
            "totals": self.totals.to_json(),
        })
    }
}

fn rfc3339(unix_ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Reads a report bound: RFC 3339 (`2026-11-25T00:00:00Z`, any offset, fractional seconds), a
/// date alone (UTC midnight), or unix seconds with an optional fraction. Unix milliseconds;
/// `None` for anything else, or a time chrono cannot represent.
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Some(date.and_time(NaiveTime::MIN).and_utc().timestamp_millis());
    }
    parse_unix_seconds(text)
}

/// Digits, then optionally `.` and more digits; parsed as text rather than as a float so that
/// `1795564800.123` is exactly 1795564800123 ms. Digits past the millisecond are truncated.
fn parse_unix_seconds(text: &str) -> Option<i64> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() => (whole, fraction),
        Some(_) => return None,
        None => (text, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) {
        return None;
    }
    let millis = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0, |ms, digit| ms * 10 + i64::from(digit - b'0'));
    let unix_ms = whole
        .parse::<i64>()
        .ok()?
        .checked_mul(1000)?
        .checked_add(millis)?;
    DateTime::<Utc>::from_timestamp_millis(unix_ms).map(|_| unix_ms)
}
