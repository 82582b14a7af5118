//! The usage ledger: one row per request in an embedded SQLite database, for usage and cost
//! reports by team, project, key, model or provider.
//!
//! `settle` runs on the request path, so it only converts the settlement into an owned row and
//! hands it to a bounded queue without waiting. One writer thread owns the write connection and
//! commits rows in batches; reports read through a second, read-only connection, which WAL lets
//! read while the writer writes. When the queue is full a row is dropped, counted in
//! [`Ledger::overflowed`] and warned about: the ledger never slows requests down, and never
//! loses a row without saying so.

mod report;
mod schema;
mod writer;

use crate::Settlement;
pub use report::{parse_time, GroupBy, UsageGroup, UsageQuery, UsageReport, UsageTotals};
use rusqlite::Connection;
use schema::{open_reader, open_writer, Row};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use writer::Writer;

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

pub(super) fn sqlite_error(path: &Path) -> impl FnOnce(rusqlite::Error) -> LedgerError + '_ {
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

/// Locks even if another thread panicked while holding the lock: every value behind these
/// locks (a counter, a connection, a handle) stays usable after such a panic.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
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
pub(super) struct Shared {
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

#[cfg(test)]
mod tests;
