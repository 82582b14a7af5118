//! A deadline for a connection's first bytes.
//!
//! With cleartext HTTP/2 on, Pingora reads the first 24 bytes of every new connection to look
//! for HTTP/2's preface, and waits for them without a deadline: a client that connects and
//! sends fewer would hold its connection and task forever (keep-alive reuses are read by
//! Pingora's HTTP/1 loop, which has its own 60 s limit). This wraps Pingora's app with the
//! same wait, bounded; the bytes read stay in the stream for Pingora to read again.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of HTTP/2's connection preface, which Pingora peeks for.
const PREFACE_LEN: usize = 24;

pub struct IdleDeadline<A> {
    app: Arc<A>,
    /// How long a new connection may take to send its first bytes.
    deadline: Duration,
    /// Whether Pingora peeks (cleartext HTTP/2 is on); without, its own timeouts apply.
    peeks: bool,
}

impl<A> IdleDeadline<A> {
    pub fn new(app: A, deadline: Duration, peeks: bool) -> IdleDeadline<A> {
        IdleDeadline {
            app: Arc::new(app),
            deadline,
            peeks,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for IdleDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.peeks {
            let mut first = [0u8; PREFACE_LEN];
            let arrived = pingora::time::timeout(self.deadline, stream.try_peek(&mut first)).await;
            if !matches!(arrived, Ok(Ok(_))) {
                return None;
            }
        }
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}
