//! The `requests` table: its schema, the row one settled request becomes, and the two
//! connections (the writer's, and the reports' read-only one).

use super::BUSY_TIMEOUT;
use crate::Settlement;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// No constraint on `id`: a client-chosen request id may repeat, and a duplicate must not fail
/// the batch it shares with other rows. Only `ts` is indexed: reports aggregate a time range,
/// which that index narrows; an index per group column would slow every insert and not help a
/// range-wide GROUP BY.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS requests(
    id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    "key" TEXT,
    team TEXT,
    project TEXT,
    tags TEXT,
    model TEXT,
    provider TEXT,
    upstream_model TEXT,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    ttft_ms REAL,
    attempts INTEGER NOT NULL,
    cache TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
"#;

pub(super) const INSERT: &str = r#"INSERT INTO requests(
    id, ts, "key", team, project, tags, model, provider, upstream_model,
    input_tokens, cached_input_tokens, output_tokens, estimated, cost_usd,
    status, latency_ms, ttft_ms, attempts, cache
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"#;

/// One request as stored: an owned copy of what the ledger keeps from a [`Settlement`].
#[derive(Debug)]
pub(super) struct Row {
    id: String,
    ts: i64,
    key: Option<String>,
    team: Option<String>,
    project: Option<String>,
    tags: Option<String>,
    model: Option<String>,
    provider: Option<String>,
    upstream_model: Option<String>,
    input_tokens: i64,
    cached_input_tokens: i64,
    output_tokens: i64,
    estimated: bool,
    cost_usd: f64,
    status: u16,
    latency_ms: f64,
    ttft_ms: Option<f64>,
    attempts: u32,
    cache: String,
}

impl Row {
    pub(super) fn new(s: &Settlement) -> Row {
        let metered = s.metered.unwrap_or_default();
        let owned = |text: Option<&str>| text.map(str::to_owned);
        Row {
            id: s.request_id.to_owned(),
            ts: unix_millis(s.started_at),
            key: owned(s.key_id),
            team: owned(s.team),
            project: owned(s.project),
            tags: owned(s.tags),
            model: owned(s.model),
            provider: owned(s.provider),
            upstream_model: owned(s.upstream_model),
            input_tokens: sql_int(metered.usage.input),
            cached_input_tokens: sql_int(metered.usage.cached_input),
            output_tokens: sql_int(metered.usage.output),
            estimated: metered.estimated,
            cost_usd: metered.cost_usd,
            status: s.status,
            latency_ms: millis(s.duration),
            ttft_ms: s.time_to_first_token.map(millis),
            attempts: s.attempts,
            cache: s.cache.to_owned(),
        }
    }
}

/// SQLite integers are signed; clamping here means binding a row can never fail, so one absurd
/// count cannot fail the whole batch it is committed with.
pub(super) fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(super) fn unix_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

pub(super) fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Still works, but reports then wait for the writer instead of reading beside it.
        log::warn!("ledger {}: journal_mode is {mode}, not wal", path.display());
    }
    // With WAL, NORMAL syncs at checkpoints rather than every commit: a power cut may lose the
    // last commits, but the file stays consistent.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

pub(super) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

pub(super) fn insert(conn: &mut Connection, rows: &[Row]) -> rusqlite::Result<()> {
    // IMMEDIATE takes the write lock up front, so a busy database is waited out by the busy
    // timeout instead of failing when a read transaction would have to be upgraded.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(INSERT)?;
        for r in rows {
            stmt.execute(params![
                r.id,
                r.ts,
                r.key,
                r.team,
                r.project,
                r.tags,
                r.model,
                r.provider,
                r.upstream_model,
                r.input_tokens,
                r.cached_input_tokens,
                r.output_tokens,
                r.estimated,
                r.cost_usd,
                r.status,
                r.latency_ms,
                r.ttft_ms,
                r.attempts,
                r.cache,
            ])?;
        }
    }
    tx.commit()
}
