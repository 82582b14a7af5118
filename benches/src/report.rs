//! Turning measured windows into the table and the JSON summary.

use std::fmt::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::load::Outcome;

/// One path's numbers; percentiles are `None` when no request succeeded.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub rps: f64,
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub errors: u64,
}

impl Row {
    pub fn new(outcome: &Outcome, window: Duration) -> Row {
        let hist = &outcome.latencies_us;
        let pct = |q| (!hist.is_empty()).then(|| hist.value_at_quantile(q));
        Row {
            rps: hist.len() as f64 / window.as_secs_f64(),
            p50_us: pct(0.5),
            p90_us: pct(0.9),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
            errors: outcome.errors,
        }
    }

    fn json(&self) -> Value {
        json!({
            "rps": round3(self.rps),
            "p50_ms": self.p50_us.map(|us| round3(us as f64 / 1000.0)),
            "p90_ms": self.p90_us.map(|us| round3(us as f64 / 1000.0)),
            "p99_ms": self.p99_us.map(|us| round3(us as f64 / 1000.0)),
            "p99.9_ms": self.p999_us.map(|us| round3(us as f64 / 1000.0)),
            "errors": self.errors,
        })
    }
}

/// The three paths of one scenario.
pub struct Comparison {
    pub direct: Row,
    pub bare: Row,
    pub tollgate: Row,
}

impl Comparison {
    pub fn table(&self, heading: &str) -> String {
        let mut out = format!(
            "{heading}\n{:<10} {:>11} {:>10} {:>10} {:>10} {:>10} {:>8}\n",
            "path", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors"
        );
        for (name, row) in self.named() {
            let _ = writeln!(
                out,
                "{name:<10} {:>11.1} {:>10} {:>10} {:>10} {:>10} {:>8}",
                row.rps,
                ms(row.p50_us),
                ms(row.p90_us),
                ms(row.p99_us),
                ms(row.p999_us),
                row.errors
            );
        }
        for (name, base) in [("direct", &self.direct), ("bare", &self.bare)] {
            let r = Ratios::new(&self.tollgate, base);
            let _ = writeln!(
                out,
                "tollgate/{name:<7} rps {}  p50 {}  p99 {}",
                times(r.rps),
                times(r.p50),
                times(r.p99)
            );
        }
        let added = match self.added_p50_us() {
            Some(us) => format!("{us:+} µs"),
            None => "n/a".to_owned(),
        };
        let _ = writeln!(out, "tollgate p50 added over bare: {added}");
        out
    }

    pub fn json(&self) -> Value {
        let mut value = json!({ "tollgate_added_p50_us": self.added_p50_us() });
        for (name, row) in self.named() {
            value[name] = row.json();
        }
        for (name, base) in [("direct", &self.direct), ("bare", &self.bare)] {
            value[format!("tollgate_over_{name}")] = Ratios::new(&self.tollgate, base).json();
        }
        value
    }

    fn named(&self) -> [(&'static str, &Row); 3] {
        [
            ("direct", &self.direct),
            ("bare", &self.bare),
            ("tollgate", &self.tollgate),
        ]
    }

    fn added_p50_us(&self) -> Option<i64> {
        Some(self.tollgate.p50_us? as i64 - self.bare.p50_us? as i64)
    }
}

/// Tollgate's numbers divided by a baseline's.
struct Ratios {
    rps: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
}

impl Ratios {
    fn new(tollgate: &Row, base: &Row) -> Ratios {
        let lat = |t: Option<u64>, b: Option<u64>| ratio(t? as f64, b? as f64);
        Ratios {
            rps: ratio(tollgate.rps, base.rps),
            p50: lat(tollgate.p50_us, base.p50_us),
            p99: lat(tollgate.p99_us, base.p99_us),
        }
    }

    fn json(&self) -> Value {
        json!({
            "rps": self.rps.map(round3),
            "p50": self.p50.map(round3),
            "p99": self.p99.map(round3),
        })
    }
}

fn ratio(num: f64, den: f64) -> Option<f64> {
    (den > 0.0).then(|| num / den)
}

fn ms(us: Option<u64>) -> String {
    us.map_or_else(|| "-".to_owned(), |us| format!("{:.3}", us as f64 / 1000.0))
}

fn times(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}x"))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rps: f64, p50: u64, p99: u64) -> Row {
        Row {
            rps,
            p50_us: Some(p50),
            p90_us: Some((p50 + p99) / 2),
            p99_us: Some(p99),
            p999_us: Some(p99 * 2),
            errors: 0,
        }
    }

    fn sample() -> Comparison {
        Comparison {
            direct: row(20_000.0, 500, 1_000),
            bare: row(10_000.0, 1_000, 2_000),
            tollgate: row(8_000.0, 1_250, 3_000),
        }
    }

    #[test]
    fn row_reads_percentiles_and_rate_from_the_histogram() {
        let mut outcome = Outcome::default();
        for us in 1..=1000 {
            outcome.latencies_us.record(us).unwrap();
        }
        outcome.errors = 3;
        let row = Row::new(&outcome, Duration::from_secs(2));
        assert_eq!(row.rps, 500.0);
        assert_eq!(row.p50_us, Some(500));
        assert_eq!(row.p90_us, Some(900));
        assert_eq!(row.p99_us, Some(990));
        assert_eq!(row.p999_us, Some(999));
        assert_eq!(row.errors, 3);
    }

    #[test]
    fn row_without_successes_has_no_percentiles() {
        let row = Row::new(&Outcome::default(), Duration::from_secs(1));
        assert_eq!((row.rps, row.p50_us), (0.0, None));
        assert_eq!(ms(row.p50_us), "-");
    }

    #[test]
    fn formats_milliseconds_and_ratios() {
        assert_eq!(ms(Some(1234)), "1.234");
        assert_eq!(ms(Some(7)), "0.007");
        assert_eq!(times(ratio(1.0, 4.0)), "0.25x");
        assert_eq!(times(ratio(1.0, 0.0)), "n/a");
    }

    #[test]
    fn table_shows_rows_ratios_and_added_latency() {
        let table = sample().table("small");
        assert!(table.contains("direct"), "{table}");
        assert!(table.contains("    20000.0      0.500      0.750      1.000      2.000        0"));
        assert!(table.contains("tollgate/direct  rps 0.40x  p50 2.50x  p99 3.00x"));
        assert!(table.contains("tollgate/bare    rps 0.80x  p50 1.25x  p99 1.50x"));
        assert!(table.contains("tollgate p50 added over bare: +250 µs"));
    }

    #[test]
    fn json_summary_has_every_number() {
        let v = sample().json();
        assert_eq!(v["tollgate"]["p50_ms"], 1.25);
        assert_eq!(v["tollgate"]["p99.9_ms"], 6.0);
        assert_eq!(v["bare"]["rps"], 10_000.0);
        assert_eq!(v["tollgate_over_bare"]["p99"], 1.5);
        assert_eq!(v["tollgate_over_direct"]["rps"], 0.4);
        assert_eq!(v["tollgate_added_p50_us"], 250);
    }
}
