//! Paced server-sent-event answers, produced on their own task.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::body::{event_stream, Event, EventBody, MockResponse, SSE_DONE};
use crate::openai::Usage;
use crate::state::{Running, Shared, StreamEnd};
use crate::text::{token_piece, Finish};

/// Chunks buffered between the producer and the connection; small, so a
/// slow reader holds the producer back.
const CHANNEL_DEPTH: usize = 8;

/// How one API renders the events of a generation stream.
pub(crate) trait ChunkFormat: Send + Sync + 'static {
    /// The event before any token, if the API has one.
    fn opening(&self) -> Option<Bytes>;
    fn token(&self, piece: &str) -> Bytes;
    fn finish(&self, reason: Finish) -> Bytes;
    /// The usage event, when the client asked for one.
    fn usage(&self, usage: Usage) -> Option<Bytes>;
}

/// The shape of one stream, independent of its wire format.
pub(crate) struct Plan {
    pub(crate) tokens: u32,
    pub(crate) finish: Finish,
    pub(crate) usage: Usage,
    pub(crate) ttft: Duration,
    pub(crate) period: Option<Duration>,
    pub(crate) drop_after: Option<u32>,
}

/// Answers with an event stream that a spawned task fills per `plan`.
pub(crate) fn start<F: ChunkFormat>(
    shared: &Arc<Shared>,
    format: F,
    plan: Plan,
    running: Running,
) -> MockResponse {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    shared.stats.stream_started();
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let end = produce(&tx, &format, &plan).await;
        shared.stats.stream_ended(end);
        drop(running);
    });
    event_stream(EventBody::new(rx))
}

async fn produce<F: ChunkFormat>(tx: &mpsc::Sender<Event>, format: &F, plan: &Plan) -> StreamEnd {
    let mut out = Emitter {
        tx,
        sent: 0,
        drop_after: plan.drop_after,
    };
    match emit_all(&mut out, format, plan).await {
        Ok(()) => StreamEnd::Completed,
        Err(end) => end,
    }
}

async fn emit_all<F: ChunkFormat>(
    out: &mut Emitter<'_>,
    format: &F,
    plan: &Plan,
) -> Result<(), StreamEnd> {
    if !plan.ttft.is_zero() {
        out.wait_until(Instant::now() + plan.ttft).await?;
    }
    if let Some(opening) = format.opening() {
        out.send(opening).await?;
    }
    // Deadlines from a fixed start keep the average rate exact even when
    // the timer fires late or the period is below its resolution.
    let start = Instant::now();
    for i in 0..plan.tokens {
        if let Some(period) = plan.period.filter(|_| i > 0) {
            out.wait_until(start + period.saturating_mul(i)).await?;
        }
        out.send(format.token(token_piece(i))).await?;
    }
    out.send(format.finish(plan.finish)).await?;
    if let Some(usage) = format.usage(plan.usage) {
        out.send(usage).await?;
    }
    out.send(Bytes::from_static(SSE_DONE)).await
}

/// Sends events, counting them for `drop_after_chunks`.
struct Emitter<'a> {
    tx: &'a mpsc::Sender<Event>,
    sent: u32,
    drop_after: Option<u32>,
}

impl Emitter<'_> {
    async fn send(&mut self, data: Bytes) -> Result<(), StreamEnd> {
        if self.drop_after == Some(self.sent) {
            // If the client is already gone there is nothing left to abort.
            let _ = self.tx.send(Event::Abort).await;
            return Err(StreamEnd::Dropped);
        }
        self.tx
            .send(Event::Data(data))
            .await
            .map_err(|_| StreamEnd::Cancelled)?;
        self.sent += 1;
        Ok(())
    }

    /// Sleeps, but wakes up as soon as the client goes away.
    async fn wait_until(&self, deadline: Instant) -> Result<(), StreamEnd> {
        tokio::select! {
            () = sleep_until(deadline) => Ok(()),
            () = self.tx.closed() => Err(StreamEnd::Cancelled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders events as their plain names, to check the order.
    struct Names;

    impl ChunkFormat for Names {
        fn opening(&self) -> Option<Bytes> {
            Some(Bytes::from_static(b"open"))
        }
        fn token(&self, piece: &str) -> Bytes {
            Bytes::copy_from_slice(piece.as_bytes())
        }
        fn finish(&self, reason: Finish) -> Bytes {
            Bytes::from_static(reason.as_str().as_bytes())
        }
        fn usage(&self, usage: Usage) -> Option<Bytes> {
            Some(format!("usage {}", usage.total_tokens).into())
        }
    }

    fn plan(drop_after: Option<u32>) -> Plan {
        Plan {
            tokens: 2,
            finish: Finish::Length,
            usage: Usage::new(3, 2),
            ttft: Duration::ZERO,
            period: Some(Duration::from_millis(1)),
            drop_after,
        }
    }

    async fn run(plan: Plan) -> (StreamEnd, Vec<String>) {
        let (tx, mut rx) = mpsc::channel(16);
        let end = produce(&tx, &Names, &plan).await;
        drop(tx);
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(match event {
                Event::Data(d) => String::from_utf8(d.to_vec()).unwrap(),
                Event::Abort => "ABORT".to_owned(),
            });
        }
        (end, events)
    }

    #[tokio::test]
    async fn events_in_order() {
        let (end, events) = run(plan(None)).await;
        assert_eq!(end, StreamEnd::Completed);
        assert_eq!(
            events,
            [
                "open",
                "Hello",
                " from",
                "length",
                "usage 5",
                "data: [DONE]\n\n"
            ]
        );
    }

    #[tokio::test]
    async fn drop_after_replaces_the_rest_with_abort() {
        let (end, events) = run(plan(Some(2))).await;
        assert_eq!(end, StreamEnd::Dropped);
        assert_eq!(events, ["open", "Hello", "ABORT"]);
    }

    #[tokio::test]
    async fn closed_receiver_cancels_while_waiting() {
        let (tx, rx) = mpsc::channel(16);
        drop(rx);
        let slow = Plan {
            ttft: Duration::from_secs(3600),
            ..plan(None)
        };
        assert_eq!(produce(&tx, &Names, &slow).await, StreamEnd::Cancelled);
    }
}
