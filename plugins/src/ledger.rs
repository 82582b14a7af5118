//! The usage ledger: one row per request in an embedded SQLite database, for usage and cost
//! reports by team, project, key, model or provider.
//!
//! `settle` runs on the request path, so it only converts the settlement into an owned row and
//! hands it to a bounded queue without waiting. One writer thread owns the write connection and
//! commits rows in batches; reports read through a second, read-only connection, which WAL lets
//! read while the writer writes. When the queue is full a row is dropped, counted in
//! [`Ledger::overflowed`] and warned about: the ledger never slows requests down, and never
//! loses a row without saying so.

use crate::Settlement;
use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use serde_json::{json, Value};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long either connection waits for a lock held by another connection (a backup, a report
/// tool, a second gateway on the same file) before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause before the one retry of a batch whose commit failed.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// How long the writer naps between looks at the queue while it gathers a batch.
const FILL_NAP: Duration = Duration::from_millis(5);
/// How long dropping the last handle waits for the writer: bounded, so a wedged disk cannot
/// hang shutdown.
const DROP_GRACE: Duration = Duration::from_secs(2);

/// No constraint on `id`: a client-chosen request id may repeat, and a duplicate must not fail
/// the batch it shares with other rows. Only `ts` is indexed: reports aggregate a time range,
/// which that index narrows; an index per group column would slow every insert and not help a
/// range-wide GROUP BY.
const SCHEMA: &str = r#"
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

const INSERT: &str = r#"INSERT INTO requests(
    id, ts, "key", team, project, tags, model, provider, upstream_model,
    input_tokens, cached_input_tokens, output_tokens, estimated, cost_usd,
    status, latency_ms, ttft_ms, attempts, cache
) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"#;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    /// The database file; missing parent directories are created.
    pub path: PathBuf,
    /// Rows that may wait for the writer; beyond that `settle` drops and counts them.
    pub queue: usize,
    /// The most rows committed in one transaction.
    pub batch: usize,
    /// The longest a row waits for its batch to fill before the writer commits it anyway.
    pub flush_every: Duration,
}

impl LedgerConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LedgerConfig {
            path: path.into(),
            queue: 65_536,
            batch: 512,
            flush_every: Duration::from_millis(100),
        }
    }
}

#[derive(Debug)]
pub enum LedgerError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LedgerError::Io { path, source } => write!(f, "ledger {}: {source}", path.display()),
            LedgerError::Sqlite { path, source } => {
                write!(f, "ledger {}: sqlite: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for LedgerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LedgerError::Io { source, .. } => Some(source),
            LedgerError::Sqlite { source, .. } => Some(source),
        }
    }
}

fn sqlite_error(path: &Path) -> impl FnOnce(rusqlite::Error) -> LedgerError + '_ {
    move |source| LedgerError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One request as stored: an owned copy of what the ledger keeps from a [`Settlement`].
#[derive(Debug)]
struct Row {
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
    fn new(s: &Settlement) -> Row {
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
fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn unix_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// Locks even if another thread panicked while holding the lock: every value behind these
/// locks (a counter, a connection, a handle) stays usable after such a panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lets a repeated warning through at most once per second, so a sustained overflow cannot
/// flood the log from the request path.
struct Throttle {
    start: Instant,
    next_second: AtomicU64,
}

impl Throttle {
    fn new() -> Self {
        Throttle {
            start: Instant::now(),
            next_second: AtomicU64::new(0),
        }
    }

    fn ready(&self) -> bool {
        let now = self.start.elapsed().as_secs();
        let next = self.next_second.load(Ordering::Relaxed);
        now >= next
            && self
                .next_second
                .compare_exchange(next, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// What the request path, the writer and the waiters in `flush`/`close` share.
struct Shared {
    written: AtomicU64,
    overflowed: AtomicU64,
    write_errors: AtomicU64,
    /// Rows that `settle` is sending or has sent. Counted before the send (and taken back if it
    /// fails) so that, the queue being FIFO, `handled >= enqueued` read at any moment proves
    /// every row sent before that moment has left the queue.
    enqueued: AtomicU64,
    /// Rows the writer has taken off the queue and committed or given up on. Only changed
    /// while holding `progress`, so a waiter checking it under that lock misses no wake-up.
    handled: AtomicU64,
    /// Set when the writer thread has ended, normally or not.
    finished: AtomicBool,
    progress: Mutex<()>,
    progressed: Condvar,
}

impl Shared {
    fn record(&self, rows: u64) {
        let _guard = lock(&self.progress);
        self.handled.fetch_add(rows, Ordering::SeqCst);
        self.progressed.notify_all();
    }

    fn finish(&self) {
        let _guard = lock(&self.progress);
        self.finished.store(true, Ordering::SeqCst);
        self.progressed.notify_all();
    }

    /// Waits until `done` holds or `timeout` passes; says whether `done` held.
    fn wait_until(&self, timeout: Duration, done: impl Fn(&Shared) -> bool) -> bool {
        // A timeout too large to add to now is as good as no timeout.
        let deadline = Instant::now().checked_add(timeout);
        let mut guard = lock(&self.progress);
        loop {
            if done(self) {
                return true;
            }
            let wait = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return false,
                },
                None => Duration::from_secs(3600),
            };
            guard = self
                .progressed
                .wait_timeout(guard, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The ledger: one row for every settled request (fed by the gateway's ledger plugin). Keep
/// the `Arc` from [`Ledger::open`] for reports and for [`Ledger::close`] at shutdown.
pub struct Ledger {
    path: PathBuf,
    /// `None` once closed. Dropping the sender is what tells the writer to commit what is left
    /// and stop; `settle` only ever takes the read side, so it never waits on another request.
    sender: RwLock<Option<SyncSender<Box<Row>>>>,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    reader: Mutex<Connection>,
    overflow_warning: Throttle,
}

impl Ledger {
    /// Opens (or creates) the database and starts the writer thread.
    pub fn open(config: LedgerConfig) -> Result<Arc<Ledger>, LedgerError> {
        let path = config.path;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_error(&path))?;
        }
        let conn = open_writer(&path).map_err(sqlite_error(&path))?;
        let reader = open_reader(&path).map_err(sqlite_error(&path))?;

        let shared = Arc::new(Shared {
            written: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            enqueued: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            finished: AtomicBool::new(false),
            progress: Mutex::new(()),
            progressed: Condvar::new(),
        });
        // Boxed rows keep the queue's slots small: a bounded std channel allocates all of its
        // slots up front, and 65536 unboxed rows would be ~20 MB whether used or not.
        let (sender, rx) = mpsc::sync_channel(config.queue.max(1));
        let writer = Writer {
            rx,
            conn,
            shared: Arc::clone(&shared),
            batch: config.batch.max(1),
            linger: config.flush_every,
            path: path.clone(),
        };
        let handle = thread::Builder::new()
            .name("tollgate-ledger".into())
            .spawn(move || writer.run())
            .map_err(io_error(&path))?;

        Ok(Arc::new(Ledger {
            path,
            sender: RwLock::new(Some(sender)),
            shared,
            writer: Mutex::new(Some(handle)),
            reader: Mutex::new(reader),
            overflow_warning: Throttle::new(),
        }))
    }

    /// Rows committed since open.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Rows dropped because the queue was full, or because the ledger was closed.
    pub fn overflowed(&self) -> u64 {
        self.shared.overflowed.load(Ordering::Relaxed)
    }

    /// Rows lost because their batch could not be committed, even on retry.
    pub fn write_errors(&self) -> u64 {
        self.shared.write_errors.load(Ordering::Relaxed)
    }

    /// Rows queued and not yet committed (or given up on).
    pub fn pending(&self) -> usize {
        let enqueued = self.shared.enqueued.load(Ordering::SeqCst);
        let handled = self.shared.handled.load(Ordering::SeqCst);
        usize::try_from(enqueued.saturating_sub(handled)).unwrap_or(usize::MAX)
    }

    /// Waits until every row settled before this call is committed. False when `timeout`
    /// passed first, when the writer stopped first, or when a batch failed to commit meanwhile
    /// (see [`Ledger::write_errors`]): true means those rows are on disk.
    pub fn flush(&self, timeout: Duration) -> bool {
        let target = self.shared.enqueued.load(Ordering::SeqCst);
        let errors = self.write_errors();
        let reached = |s: &Shared| s.handled.load(Ordering::SeqCst) >= target;
        self.shared
            .wait_until(timeout, |s| reached(s) || s.finished.load(Ordering::SeqCst))
            && reached(&self.shared)
            && self.write_errors() == errors
    }

    /// Commits what is queued and stops the writer, waiting at most `timeout` for it. Calling
    /// it again is harmless (and waits again if the writer had not stopped in time). Rows
    /// settled after close are dropped and counted in [`Ledger::overflowed`], with a warning.
    pub fn close(&self, timeout: Duration) {
        let mut sender = self.sender.write().unwrap_or_else(PoisonError::into_inner);
        drop(sender.take());
        drop(sender);
        if !self
            .shared
            .wait_until(timeout, |s| s.finished.load(Ordering::SeqCst))
        {
            log::warn!(
                "ledger {}: writer still busy after {timeout:?}, {} rows not yet committed",
                self.path.display(),
                self.pending()
            );
            return;
        }
        if let Some(handle) = lock(&self.writer).take() {
            if handle.join().is_err() {
                log::error!("ledger {}: writer thread panicked", self.path.display());
            }
        }
    }

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

fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
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

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

impl Ledger {
    /// Queues the request's row for the writer; nothing here waits.
    pub fn settle(&self, outcome: &Settlement) {
        let row = Box::new(Row::new(outcome));
        self.shared.enqueued.fetch_add(1, Ordering::SeqCst);
        let refused = match &*self.sender.read().unwrap_or_else(PoisonError::into_inner) {
            Some(sender) => match sender.try_send(row) {
                Ok(()) => None,
                Err(TrySendError::Full(_)) => Some("queue full"),
                Err(TrySendError::Disconnected(_)) => Some("writer stopped"),
            },
            None => Some("closed"),
        };
        if let Some(why) = refused {
            self.shared.enqueued.fetch_sub(1, Ordering::SeqCst);
            let dropped = self.shared.overflowed.fetch_add(1, Ordering::Relaxed) + 1;
            if self.overflow_warning.ready() {
                log::warn!(
                    "ledger {}: {why}, dropped request {} ({dropped} rows dropped so far)",
                    self.path.display(),
                    outcome.request_id
                );
            }
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close(DROP_GRACE);
    }
}

/// The writer thread: owns the write connection and the receiving end of the queue.
struct Writer {
    rx: Receiver<Box<Row>>,
    conn: Connection,
    shared: Arc<Shared>,
    batch: usize,
    linger: Duration,
    path: PathBuf,
}

impl Writer {
    /// Commits batches until every sender is gone and the queue is empty.
    fn run(mut self) {
        let mut rows = Vec::new();
        while let Ok(first) = self.rx.recv() {
            rows.push(*first);
            self.fill(&mut rows);
            self.commit(&rows);
            self.shared.record(rows.len() as u64);
            rows.clear();
        }
    }

    /// Adds queued rows until the batch is full or `linger` has passed since its first row.
    /// It drains the queue in short naps rather than waiting on each row: a wait per row is
    /// a thread wake-up per request, which costs the gateway more than the row itself.
    fn fill(&self, rows: &mut Vec<Row>) {
        let deadline = Instant::now().checked_add(self.linger);
        loop {
            while rows.len() < self.batch {
                match self.rx.try_recv() {
                    Ok(row) => rows.push(*row),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let left =
                deadline.map_or(self.linger, |d| d.saturating_duration_since(Instant::now()));
            if rows.len() >= self.batch || left.is_zero() {
                return;
            }
            thread::sleep(left.min(FILL_NAP));
        }
    }

    /// Commits `rows` in one transaction, retrying once; on failure the rows are counted as
    /// write errors and the writer carries on with the next batch.
    fn commit(&mut self, rows: &[Row]) {
        let count = rows.len() as u64;
        let result = insert(&mut self.conn, rows).or_else(|error| {
            log::warn!(
                "ledger {}: commit of {count} rows failed, retrying: {error}",
                self.path.display()
            );
            thread::sleep(RETRY_AFTER);
            insert(&mut self.conn, rows)
        });
        match result {
            Ok(()) => {
                self.shared.written.fetch_add(count, Ordering::Relaxed);
            }
            Err(error) => {
                self.shared.write_errors.fetch_add(count, Ordering::Relaxed);
                log::error!(
                    "ledger {}: lost {count} rows, commit failed twice: {error}",
                    self.path.display()
                );
            }
        }
    }
}

impl Drop for Writer {
    /// Runs however the thread ends, a panic included, so `close` never waits for a writer
    /// that is gone.
    fn drop(&mut self) {
        self.shared.finish();
    }
}

fn insert(conn: &mut Connection, rows: &[Row]) -> rusqlite::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Metered, Usage};

    /// A scratch directory under the system temp dir, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("tollgate-ledger-{:016x}", fastrand::u64(..)));
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
}
