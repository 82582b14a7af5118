//! Turning measured windows into the table and the JSON summary.

use std::fmt::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::load::Outcome;
use crate::openloop;

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

/// The paths of one scenario: `direct` and `bare` first, then `tollgate`, then any peers.
pub struct Comparison {
    pub paths: Vec<(&'static str, Row)>,
}

impl Comparison {
    fn row(&self, name: &str) -> Option<&Row> {
        self.paths
            .iter()
            .find_map(|(n, row)| (*n == name).then_some(row))
    }

    /// Every path but the two baselines, each compared with both.
    fn compared(&self) -> impl Iterator<Item = (&'static str, &Row, &'static str, &Row)> {
        let bases: Vec<(&'static str, &Row)> = ["direct", "bare"]
            .into_iter()
            .filter_map(|b| Some((b, self.row(b)?)))
            .collect();
        self.paths
            .iter()
            .filter(|(name, _)| !matches!(*name, "direct" | "bare"))
            .flat_map(move |(name, row)| {
                bases
                    .clone()
                    .into_iter()
                    .map(move |(base, base_row)| (*name, row, base, base_row))
            })
    }

    pub fn table(&self, heading: &str) -> String {
        let mut out = format!(
            "{heading}\n{:<10} {:>11} {:>10} {:>10} {:>10} {:>10} {:>8}\n",
            "path", "req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors"
        );
        for (name, row) in &self.paths {
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
        for (name, row, base, base_row) in self.compared() {
            let r = Ratios::new(row, base_row);
            let _ = writeln!(
                out,
                "{:<16} rps {}  p50 {}  p99 {}",
                format!("{name}/{base}"),
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
        for (name, row) in &self.paths {
            value[*name] = row.json();
        }
        for (name, row, base, base_row) in self.compared() {
            value[format!("{name}_over_{base}")] = Ratios::new(row, base_row).json();
        }
        value
    }

    /// Tollgate's requests per second over the bare proxy's.
    pub fn tollgate_over_bare_rps(&self) -> Option<f64> {
        ratio(self.row("tollgate")?.rps, self.row("bare")?.rps)
    }

    pub fn tollgate_rps(&self) -> Option<f64> {
        self.rps("tollgate")
    }

    /// A path's closed-loop requests per second.
    pub fn rps(&self, name: &str) -> Option<f64> {
        self.row(name).map(|row| row.rps)
    }

    fn added_p50_us(&self) -> Option<i64> {
        Some(self.row("tollgate")?.p50_us? as i64 - self.row("bare")?.p50_us? as i64)
    }
}

/// One path under open-loop arrivals: latency, and for streams time to first token and
/// per-chunk transit, in microseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenRow {
    pub total: Percentiles,
    pub ttft: Percentiles,
    pub chunk: Percentiles,
    pub completed: u64,
    pub errors: u64,
}

/// p50, p99 and p99.9 of one histogram; `None` when it is empty.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub p999: Option<u64>,
}

impl Percentiles {
    fn of(hist: &hdrhistogram::Histogram<u64>) -> Percentiles {
        let at = |q| (!hist.is_empty()).then(|| hist.value_at_quantile(q));
        Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
        }
    }

    fn json(&self) -> Value {
        let ms = |us: Option<u64>| us.map(|us| round3(us as f64 / 1000.0));
        json!({ "p50_ms": ms(self.p50), "p99_ms": ms(self.p99), "p99.9_ms": ms(self.p999) })
    }
}

impl OpenRow {
    pub fn new(outcome: &openloop::Outcome) -> OpenRow {
        OpenRow {
            total: Percentiles::of(&outcome.total_us),
            ttft: Percentiles::of(&outcome.ttft_us),
            chunk: Percentiles::of(&outcome.chunk_us),
            completed: outcome.completed,
            errors: outcome.errors,
        }
    }
}

/// The paths of one scenario under the same open-loop arrivals (`direct`, `bare`,
/// `tollgate`, then any peers), and what Tollgate adds at p99.
pub struct OpenLoop {
    pub rate: f64,
    pub stream: bool,
    pub paths: Vec<(&'static str, OpenRow)>,
    /// Paths left out because their maximum throughput is below the rate.
    pub skipped: Vec<&'static str>,
}

/// Microseconds Tollgate adds at p99 over one baseline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Added {
    pub total_p99_us: Option<i64>,
    pub ttft_p99_us: Option<i64>,
    pub chunk_p99_us: Option<i64>,
}

impl OpenLoop {
    fn row(&self, name: &str) -> Option<&OpenRow> {
        self.paths
            .iter()
            .find_map(|(n, row)| (*n == name).then_some(row))
    }

    /// What Tollgate adds at p99 over `base` (`direct` or `bare`).
    pub fn added_over(&self, base: &str) -> Option<Added> {
        let (t, b) = (self.row("tollgate")?, self.row(base)?);
        let diff = |t: Option<u64>, b: Option<u64>| Some(t? as i64 - b? as i64);
        Some(Added {
            total_p99_us: diff(t.total.p99, b.total.p99),
            ttft_p99_us: diff(t.ttft.p99, b.ttft.p99),
            chunk_p99_us: diff(t.chunk.p99, b.chunk.p99),
        })
    }

    pub fn table(&self, heading: &str) -> String {
        let mut out = format!(
            "{heading}\n{:<10} {:>10} {:>10} {:>10}",
            "path", "p50 ms", "p99 ms", "p99.9 ms"
        );
        if self.stream {
            let _ = write!(
                out,
                " {:>10} {:>10} {:>10} {:>10}",
                "ttft p50", "ttft p99", "chunk p50", "chunk p99"
            );
        }
        let _ = writeln!(out, " {:>8} {:>8}", "done", "errors");
        for (name, row) in &self.paths {
            let _ = write!(
                out,
                "{name:<10} {:>10} {:>10} {:>10}",
                ms(row.total.p50),
                ms(row.total.p99),
                ms(row.total.p999)
            );
            if self.stream {
                let _ = write!(
                    out,
                    " {:>10} {:>10} {:>10} {:>10}",
                    ms(row.ttft.p50),
                    ms(row.ttft.p99),
                    ms(row.chunk.p50),
                    ms(row.chunk.p99)
                );
            }
            let _ = writeln!(out, " {:>8} {:>8}", row.completed, row.errors);
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(
                out,
                "not run (maximum below this rate): {}",
                self.skipped.join(", ")
            );
        }
        for base in ["direct", "bare"] {
            let Some(added) = self.added_over(base) else {
                continue;
            };
            let _ = write!(
                out,
                "tollgate p99 added over {base:<6}: latency {}",
                micros(added.total_p99_us)
            );
            if self.stream {
                let _ = write!(
                    out,
                    ", time to first token {}, per chunk {}",
                    micros(added.ttft_p99_us),
                    micros(added.chunk_p99_us)
                );
            }
            out.push('\n');
        }
        out
    }

    pub fn json(&self) -> Value {
        let mut value = json!({ "rate": round3(self.rate) });
        for (name, row) in &self.paths {
            value[*name] = json!({
                "latency": row.total.json(),
                "completed": row.completed,
                "errors": row.errors,
            });
            if self.stream {
                value[*name]["ttft"] = row.ttft.json();
                value[*name]["chunk"] = row.chunk.json();
            }
        }
        for base in ["direct", "bare"] {
            if let Some(added) = self.added_over(base) {
                value[format!("tollgate_added_p99_us_over_{base}")] = json!({
                    "latency": added.total_p99_us,
                    "ttft": added.ttft_p99_us,
                    "chunk": added.chunk_p99_us,
                });
            }
        }
        value
    }
}

fn micros(us: Option<i64>) -> String {
    us.map_or_else(|| "n/a".to_owned(), |us| format!("{us:+} µs"))
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
            paths: vec![
                ("direct", row(20_000.0, 500, 1_000)),
                ("bare", row(10_000.0, 1_000, 2_000)),
                ("tollgate", row(8_000.0, 1_250, 3_000)),
                ("nginx", row(9_000.0, 1_100, 2_200)),
            ],
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
        assert!(table.contains("nginx/bare       rps 0.90x  p50 1.10x  p99 1.10x"));
    }

    fn open_row(total_p99: u64, ttft_p99: u64, chunk_p99: u64) -> OpenRow {
        let p = |p99: u64| Percentiles {
            p50: Some(p99 / 2),
            p99: Some(p99),
            p999: Some(p99 * 2),
        };
        OpenRow {
            total: p(total_p99),
            ttft: p(ttft_p99),
            chunk: p(chunk_p99),
            completed: 100,
            errors: 0,
        }
    }

    #[test]
    fn open_loop_shows_what_tollgate_adds_at_p99() {
        let open = OpenLoop {
            rate: 1234.5,
            stream: true,
            paths: vec![
                ("direct", open_row(1_000, 400, 40)),
                ("bare", open_row(1_200, 500, 50)),
                ("tollgate", open_row(1_450, 650, 60)),
            ],
            skipped: vec!["litellm"],
        };
        let added = open.added_over("bare").unwrap();
        assert_eq!(
            added,
            Added {
                total_p99_us: Some(250),
                ttft_p99_us: Some(150),
                chunk_p99_us: Some(10)
            }
        );
        let table = open.table("stream");
        assert!(table.contains("ttft p99"), "{table}");
        assert!(
            table.contains("not run (maximum below this rate): litellm"),
            "{table}"
        );
        assert!(table.contains("tollgate p99 added over bare  : latency +250 µs, time to first token +150 µs, per chunk +10 µs"), "{table}");
        assert!(
            table.contains("tollgate p99 added over direct: latency +450 µs"),
            "{table}"
        );
        let v = open.json();
        assert_eq!(v["tollgate_added_p99_us_over_direct"]["ttft"], 250);
        assert_eq!(v["tollgate"]["chunk"]["p99_ms"], 0.06);

        let whole = OpenLoop {
            stream: false,
            ..open
        };
        let table = whole.table("small");
        assert!(
            !table.contains("ttft") && !table.contains("per chunk"),
            "{table}"
        );
        assert!(whole.json()["tollgate"].get("ttft").is_none());
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
        assert_eq!(v["nginx_over_bare"]["rps"], 0.9);
        assert_eq!(sample().tollgate_over_bare_rps(), Some(0.8));
        assert_eq!(sample().tollgate_rps(), Some(8_000.0));
        assert_eq!(sample().rps("nginx"), Some(9_000.0));
        assert_eq!(sample().rps("litellm"), None);
    }
}
