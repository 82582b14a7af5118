//! The writer thread: owns the write connection, gathers queued rows into batches and
//! commits them, retrying a failed commit once.

use super::schema::{insert, Row};
use super::{Shared, FILL_NAP, RETRY_AFTER};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::{self};
use std::time::{Duration, Instant};

/// The writer thread: owns the write connection and the receiving end of the queue.
pub(super) struct Writer {
    pub rx: Receiver<Box<Row>>,
    pub conn: Connection,
    pub shared: Arc<Shared>,
    pub batch: usize,
    pub linger: Duration,
    pub path: PathBuf,
}

impl Writer {
    /// Commits batches until every sender is gone and the queue is empty.
    pub(super) fn run(mut self) {
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
