//! A graceful shutdown as requests see it. From SIGTERM on, `/readyz` says the gateway is
//! draining; shortly before the grace period ends, answers still running are cut on the
//! gateway's own terms (one error event, metered, settled) rather than dropped with their
//! tasks when Pingora stops the runtimes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How long before Pingora drops the remaining tasks the gateway ends their answers: time
/// enough to settle them.
const SETTLE_MARGIN: Duration = Duration::from_millis(250);

pub struct Drain {
    /// What Pingora allows in-flight requests after SIGTERM.
    grace: Duration,
    draining: AtomicBool,
    cut: watch::Sender<bool>,
}

impl Drain {
    /// `grace` is the grace period Pingora was configured with.
    pub fn new(grace: Duration) -> Drain {
        Drain {
            grace,
            draining: AtomicBool::new(false),
            cut: watch::Sender::new(false),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Runs the drain once SIGTERM arrived: returns when answers still running were told to
    /// end.
    pub async fn run(&self) {
        self.draining.store(true, Ordering::Relaxed);
        log::info!("shutting down: draining in-flight requests");
        tokio::time::sleep(self.grace.saturating_sub(SETTLE_MARGIN)).await;
        if self.cut.receiver_count() > 0 {
            log::warn!(
                "grace period ending: cutting {} answers still running",
                self.cut.receiver_count()
            );
        }
        self.cut.send_replace(true);
    }

    /// What an answer in progress watches for the end of the grace period.
    pub fn watch(&self) -> Cut {
        Cut(self.cut.subscribe())
    }
}

/// The signal, for one answer, to end now.
pub struct Cut(watch::Receiver<bool>);

impl Cut {
    /// Resolves when the answer must end; never, if the process is not stopping.
    pub async fn arrived(&mut self) {
        if self.0.wait_for(|cut| *cut).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_are_cut_just_before_the_grace_period_ends() {
        let drain = std::sync::Arc::new(Drain::new(Duration::from_secs(2)));
        let mut cut = drain.watch();
        assert!(!drain.is_draining());
        let started = tokio::time::Instant::now();
        let running = tokio::spawn({
            let drain = drain.clone();
            async move { drain.run().await }
        });
        cut.arrived().await;
        assert_eq!(started.elapsed(), Duration::from_secs(2) - SETTLE_MARGIN);
        assert!(drain.is_draining());
        running.await.unwrap();
        // An answer that starts watching after the cut ends at once.
        drain.watch().arrived().await;
    }
}
