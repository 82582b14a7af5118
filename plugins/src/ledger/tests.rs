use super::schema::SCHEMA;
use super::*;
use crate::{Metered, Usage};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};

/// A scratch directory under the system temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("tollgate-ledger-{:016x}", fastrand::u64(..)));
        Scratch(dir)
    }

    /// A database path one directory down, which `open` must create.
    fn db(&self) -> PathBuf {
        self.0.join("data").join("ledger.db")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const WAIT: Duration = Duration::from_secs(10);

fn open(path: &Path) -> Arc<Ledger> {
    Ledger::open(LedgerConfig::new(path)).expect("open ledger")
}

fn at(unix_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms)
}

/// A bare request; tests override the fields they care about.
fn request(id: &str) -> Settlement<'_> {
    Settlement {
        request_id: id,
        started_at: at(1_000),
        method: "POST",
        path: "/v1/chat/completions",
        key_id: None,
        team: None,
        project: None,
        tags: None,
        model: None,
        provider: None,
        upstream_model: None,
        status: 200,
        attempts: 1,
        duration: Duration::from_millis(10),
        time_to_first_token: None,
        overhead: Duration::from_micros(100),
        cache: "off",
        metered: None,
    }
}

fn metered(input: u64, cached_input: u64, output: u64, cost_usd: f64) -> Option<Metered> {
    Some(Metered {
        usage: Usage {
            input,
            cached_input,
            output,
        },
        estimated: false,
        cost_usd,
    })
}

/// Rows committed, counted through a connection of its own rather than the ledger's.
fn rows_on_disk(path: &Path) -> i64 {
    let conn = Connection::open(path).expect("open db");
    conn.query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
        .expect("count rows")
}

/// The database's write lock, held by another connection so the writer stalls. It is let
/// go on `release`, or after `at_most` whatever happens.
struct WriteLock {
    release: mpsc::Sender<()>,
    holder: JoinHandle<()>,
}

impl WriteLock {
    fn take(path: &Path, at_most: Duration) -> WriteLock {
        let conn = Connection::open(path).expect("open db");
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("take write lock");
        let (release, released) = mpsc::channel();
        let holder = thread::spawn(move || {
            let _ = released.recv_timeout(at_most);
            conn.execute_batch("ROLLBACK").expect("release write lock");
        });
        WriteLock { release, holder }
    }

    fn release(self) {
        // The holder may already have let go and hung up; only joining matters.
        let _ = self.release.send(());
        self.holder.join().expect("lock holder");
    }
}

fn report(
    ledger: &Ledger,
    group_by: GroupBy,
    since: Option<i64>,
    until: Option<i64>,
) -> UsageReport {
    ledger
        .usage(&UsageQuery {
            group_by,
            since,
            until,
        })
        .expect("usage")
}

/// (group, requests, input, cached input, output, cost) per group, in report order.
type Sums = (Option<String>, u64, u64, u64, u64, f64);

fn sums(report: &UsageReport) -> Vec<Sums> {
    report
        .groups
        .iter()
        .map(|g| {
            (
                g.group.clone(),
                g.requests,
                g.input_tokens,
                g.cached_input_tokens,
                g.output_tokens,
                g.cost_usd,
            )
        })
        .collect()
}

fn sum(
    group: Option<&str>,
    requests: u64,
    input: u64,
    cached: u64,
    output: u64,
    cost: f64,
) -> Sums {
    (
        group.map(str::to_owned),
        requests,
        input,
        cached,
        output,
        cost,
    )
}

/// Four requests over two keys, two teams, three projects, three models, two providers;
/// the last was never metered (its upstream failed).
fn settle_fixture(ledger: &Ledger) {
    for s in [
        Settlement {
            key_id: Some("a"),
            team: Some("t1"),
            project: Some("p1"),
            model: Some("m1"),
            provider: Some("openai"),
            metered: metered(100, 10, 50, 1.0),
            ..request("r1")
        },
        Settlement {
            key_id: Some("a"),
            team: Some("t1"),
            project: Some("p2"),
            model: Some("m2"),
            provider: Some("anthropic"),
            metered: metered(200, 0, 20, 3.0),
            ..request("r2")
        },
        Settlement {
            key_id: Some("b"),
            team: Some("t2"),
            model: Some("m1"),
            provider: Some("openai"),
            metered: metered(10, 5, 1, 0.5),
            ..request("r3")
        },
        Settlement {
            model: Some("m3"),
            status: 502,
            ..request("r4")
        },
    ] {
        ledger.settle(&s);
    }
    assert!(ledger.flush(WAIT));
}

#[test]
fn sums_per_group_for_every_group_by() {
    let scratch = Scratch::new();
    let ledger = open(&scratch.db());
    settle_fixture(&ledger);

    let expected = [
        (
            GroupBy::Team,
            vec![
                sum(Some("t1"), 2, 300, 10, 70, 4.0),
                sum(Some("t2"), 1, 10, 5, 1, 0.5),
                sum(None, 1, 0, 0, 0, 0.0),
            ],
        ),
        (
            GroupBy::Project,
            vec![
                sum(Some("p2"), 1, 200, 0, 20, 3.0),
                sum(Some("p1"), 1, 100, 10, 50, 1.0),
                sum(None, 2, 10, 5, 1, 0.5),
            ],
        ),
        (
            GroupBy::Key,
            vec![
                sum(Some("a"), 2, 300, 10, 70, 4.0),
                sum(Some("b"), 1, 10, 5, 1, 0.5),
                sum(None, 1, 0, 0, 0, 0.0),
            ],
        ),
        (
            GroupBy::Model,
            vec![
                sum(Some("m2"), 1, 200, 0, 20, 3.0),
                sum(Some("m1"), 2, 110, 15, 51, 1.5),
                sum(Some("m3"), 1, 0, 0, 0, 0.0),
            ],
        ),
        (
            GroupBy::Provider,
            vec![
                sum(Some("anthropic"), 1, 200, 0, 20, 3.0),
                sum(Some("openai"), 2, 110, 15, 51, 1.5),
                sum(None, 1, 0, 0, 0, 0.0),
            ],
        ),
    ];
    for (group_by, groups) in expected {
        let report = report(&ledger, group_by, None, None);
        assert_eq!(sums(&report), groups, "{group_by:?}");
        let totals = UsageTotals {
            requests: 4,
            input_tokens: 310,
            cached_input_tokens: 15,
            output_tokens: 71,
            cost_usd: 4.5,
        };
        assert_eq!(report.totals, totals, "{group_by:?}");
    }
}

#[test]
fn every_column_is_stored() {
    let scratch = Scratch::new();
    let ledger = open(&scratch.db());
    ledger.settle(&Settlement {
        started_at: at(1_795_564_800_123),
        key_id: Some("k"),
        team: Some("t"),
        project: Some("p"),
        tags: Some("a,b"),
        model: Some("support"),
        provider: Some("openai"),
        upstream_model: Some("gpt-4o"),
        status: 429,
        attempts: 3,
        duration: Duration::from_micros(12_500),
        time_to_first_token: Some(Duration::from_micros(2_250)),
        cache: "miss",
        metered: Some(Metered {
            usage: Usage {
                input: 7,
                cached_input: 3,
                output: 5,
            },
            estimated: true,
            cost_usd: 0.25,
        }),
        ..request("req-1")
    });
    ledger.settle(&request("req-2"));
    assert!(ledger.flush(WAIT));

    let conn = Connection::open(scratch.db()).expect("open db");
    let full = conn
        .query_row(
            r#"SELECT id, "key", team, project, tags, model, provider, upstream_model, cache,
                      ts, input_tokens, cached_input_tokens, output_tokens, estimated,
                      status, attempts, cost_usd, latency_ms, ttft_ms
               FROM requests WHERE id = 'req-1'"#,
            [],
            |r| {
                let texts = (0..9)
                    .map(|i| r.get::<_, String>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let integers = (9..16)
                    .map(|i| r.get::<_, i64>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let reals = (16..19)
                    .map(|i| r.get::<_, f64>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((texts, integers, reals))
            },
        )
        .expect("read row");
    assert_eq!(
        full.0,
        ["req-1", "k", "t", "p", "a,b", "support", "openai", "gpt-4o", "miss"]
    );
    assert_eq!(full.1, [1_795_564_800_123, 7, 3, 5, 1, 429, 3]);
    assert_eq!(full.2, [0.25, 12.5, 2.25]);

    // Unmetered: zero tokens and cost, no first token, nulls for what was not known.
    let bare: (i64, i64, i64, i64, f64, Option<f64>, Option<String>) = conn
        .query_row(
            "SELECT input_tokens, cached_input_tokens, output_tokens, estimated, cost_usd,
                    ttft_ms, team FROM requests WHERE id = 'req-2'",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .expect("read bare row");
    assert_eq!(bare, (0, 0, 0, 0, 0.0, None, None));
}

#[test]
fn since_is_inclusive_and_until_exclusive() {
    let scratch = Scratch::new();
    let ledger = open(&scratch.db());
    for (id, ms) in [("r1", 1_000), ("r2", 2_000), ("r3", 3_000)] {
        ledger.settle(&Settlement {
            started_at: at(ms),
            metered: metered(1, 0, 0, 1.0),
            ..request(id)
        });
    }
    assert!(ledger.flush(WAIT));

    let requests = |since, until| report(&ledger, GroupBy::Key, since, until).totals.requests;
    assert_eq!(requests(None, None), 3);
    assert_eq!(requests(Some(2_000), None), 2);
    assert_eq!(requests(None, Some(2_000)), 1);
    assert_eq!(requests(Some(1_000), Some(3_000)), 2);
    assert_eq!(requests(Some(1_001), Some(3_001)), 2);
    let empty = report(&ledger, GroupBy::Key, Some(3_001), None);
    assert!(empty.groups.is_empty());
    assert_eq!(empty.totals, UsageTotals::default());
}

#[test]
fn parses_times() {
    assert_eq!(parse_time("2026-11-25T00:00:00Z"), Some(1_795_564_800_000));
    assert_eq!(
        parse_time("2026-11-25T02:00:00+02:00"),
        Some(1_795_564_800_000)
    );
    assert_eq!(
        parse_time("2026-11-24T21:30:00-02:30"),
        Some(1_795_564_800_000)
    );
    assert_eq!(
        parse_time("2026-11-25T00:00:00.250Z"),
        Some(1_795_564_800_250)
    );
    assert_eq!(parse_time("2026-11-25"), Some(1_795_564_800_000));
    assert_eq!(parse_time("1795564800"), Some(1_795_564_800_000));
    assert_eq!(parse_time("1795564800.5"), Some(1_795_564_800_500));
    assert_eq!(parse_time("1795564800.123456"), Some(1_795_564_800_123));
    assert_eq!(parse_time(" 0 "), Some(0));
    for garbage in [
        "",
        "yesterday",
        "2026-13-01",
        "2026-11-25T25:00:00Z",
        "-5",
        "+5",
        "1.",
        ".5",
        "1e9",
        "1.2.3",
        "99999999999999999999",
    ] {
        assert_eq!(parse_time(garbage), None, "{garbage:?}");
    }
}

#[test]
fn group_by_names_round_trip() {
    for g in GroupBy::ALL {
        assert_eq!(GroupBy::parse(g.as_str()), Some(g));
    }
    assert_eq!(GroupBy::parse("key"), Some(GroupBy::Key));
    assert_eq!(GroupBy::parse("user"), None);
    assert_eq!(GroupBy::parse("Team"), None);
}

#[test]
fn full_queue_counts_overflow_without_blocking() {
    let scratch = Scratch::new();
    let path = scratch.db();
    let ledger = Ledger::open(LedgerConfig {
        queue: 2,
        batch: 1,
        ..LedgerConfig::new(&path)
    })
    .expect("open ledger");

    // The writer stalls on its first row and the queue fills. The lock times out on its
    // own so that a blocking `settle` fails the timing assertion instead of hanging.
    let lock = WriteLock::take(&path, Duration::from_secs(3));
    const SENT: u64 = 100;
    let ids: Vec<String> = (0..SENT).map(|i| format!("r{i}")).collect();
    let started = Instant::now();
    for id in &ids {
        ledger.settle(&request(id));
    }
    let took = started.elapsed();
    assert!(
        !ledger.flush(Duration::from_millis(50)),
        "flushed while locked"
    );
    lock.release();

    assert!(took < Duration::from_secs(1), "settle blocked for {took:?}");
    // One row with the writer, at most two in the queue.
    assert!(ledger.overflowed() >= SENT - 3, "{}", ledger.overflowed());
    assert!(ledger.flush(WAIT));
    assert_eq!(ledger.written() + ledger.overflowed(), SENT);
    assert_eq!(ledger.pending(), 0);
    assert_eq!(ledger.write_errors(), 0);
    assert_eq!(
        rows_on_disk(&path),
        i64::try_from(ledger.written()).unwrap_or(-1)
    );
}

#[test]
fn failed_commits_are_counted_and_the_writer_carries_on() {
    let scratch = Scratch::new();
    let ledger = open(&scratch.db());
    ledger.settle(&request("r1"));
    assert!(ledger.flush(WAIT));

    let other = Connection::open(scratch.db()).expect("open db");
    other
        .execute_batch("DROP TABLE requests")
        .expect("drop table");
    ledger.settle(&request("r2"));
    assert!(!ledger.flush(WAIT), "flush must report the lost row");
    assert_eq!(ledger.write_errors(), 1);
    assert_eq!(ledger.pending(), 0);

    other.execute_batch(SCHEMA).expect("recreate table");
    ledger.settle(&request("r3"));
    assert!(ledger.flush(WAIT));
    assert_eq!(ledger.written(), 2);
    assert_eq!(rows_on_disk(&scratch.db()), 1);
}

#[test]
fn flush_returns_once_rows_are_on_disk() {
    let scratch = Scratch::new();
    let ledger = open(&scratch.db());
    for id in ["r1", "r2", "r3"] {
        ledger.settle(&request(id));
    }
    // The default 100 ms linger holds these rows back: only a real wait finds them.
    assert!(ledger.flush(WAIT));
    assert_eq!(rows_on_disk(&scratch.db()), 3);
    assert_eq!(ledger.written(), 3);
    assert_eq!(ledger.pending(), 0);
    assert!(ledger.flush(Duration::ZERO), "nothing left to wait for");
}

#[test]
fn close_is_idempotent_and_later_rows_count_as_overflow() {
    let scratch = Scratch::new();
    let ledger = open(&scratch.db());
    ledger.settle(&request("r1"));
    ledger.settle(&request("r2"));
    ledger.close(WAIT);
    assert_eq!(rows_on_disk(&scratch.db()), 2);
    ledger.close(WAIT);
    ledger.settle(&request("late"));
    assert_eq!(ledger.overflowed(), 1);
    assert_eq!(ledger.pending(), 0);
    assert!(ledger.flush(Duration::from_millis(10)));
    assert_eq!(ledger.written(), 2);
    assert_eq!(rows_on_disk(&scratch.db()), 2);
}

#[test]
fn rows_survive_drop_and_reopen() {
    let scratch = Scratch::new();
    let first = open(&scratch.db());
    settle_fixture(&first);
    // Queued, not flushed, and held up by a lock for a while: dropping the ledger must
    // wait for the writer to commit it.
    let lock = WriteLock::take(&scratch.db(), Duration::from_millis(300));
    first.settle(&Settlement {
        key_id: Some("c"),
        metered: metered(1, 0, 1, 0.25),
        ..request("r5")
    });
    drop(first);
    assert_eq!(rows_on_disk(&scratch.db()), 5);
    lock.release();

    let second = open(&scratch.db());
    second.settle(&Settlement {
        key_id: Some("c"),
        metered: metered(1, 0, 1, 0.25),
        ..request("r6")
    });
    assert!(second.flush(WAIT));
    let report = report(&second, GroupBy::Key, None, None);
    assert_eq!(report.totals.requests, 6);
    assert_eq!(report.totals.cost_usd, 5.0);
    assert!(sums(&report).contains(&sum(Some("c"), 2, 2, 0, 2, 0.5)));
}

#[test]
fn open_errors_name_the_path() {
    let scratch = Scratch::new();
    std::fs::create_dir_all(&scratch.0).expect("scratch dir");
    let file = scratch.0.join("not-a-dir");
    std::fs::write(&file, b"").expect("write file");
    let path = file.join("ledger.db");
    let error = Ledger::open(LedgerConfig::new(&path))
        .err()
        .expect("open must fail");
    assert!(matches!(error, LedgerError::Io { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn report_json_has_the_contract_shape() {
    let report = UsageReport {
        groups: vec![
            UsageGroup {
                group: Some("app".into()),
                requests: 2,
                input_tokens: 300,
                cached_input_tokens: 10,
                output_tokens: 70,
                cost_usd: 4.0,
            },
            UsageGroup {
                group: None,
                requests: 1,
                input_tokens: 0,
                cached_input_tokens: 0,
                output_tokens: 0,
                cost_usd: 0.0,
            },
        ],
        totals: UsageTotals {
            requests: 3,
            input_tokens: 300,
            cached_input_tokens: 10,
            output_tokens: 70,
            cost_usd: 4.0,
        },
    };
    let value = report.to_json(GroupBy::Key, parse_time("2026-11-25T00:00:00Z"), None);
    assert_eq!(
        value,
        json!({
            "group_by": "key",
            "since": "2026-11-25T00:00:00Z",
            "until": null,
            "groups": [
                {"group": "app", "requests": 2, "input_tokens": 300,
                 "cached_input_tokens": 10, "output_tokens": 70, "cost_usd": 4.0},
                {"group": null, "requests": 1, "input_tokens": 0,
                 "cached_input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0},
            ],
            "totals": {"requests": 3, "input_tokens": 300, "cached_input_tokens": 10,
                       "output_tokens": 70, "cost_usd": 4.0},
        })
    );
    let bounded = report.to_json(GroupBy::Team, Some(1_795_564_800_250), Some(0));
    assert_eq!(bounded["group_by"], "team");
    assert_eq!(bounded["since"], "2026-11-25T00:00:00.250Z");
    assert_eq!(bounded["until"], "1970-01-01T00:00:00Z");
}
