//! Paced server-sent-event answers, produced on their own task. Every API
//! shares the pacing, drops, in-stream errors and cancellation here and
//! only renders its own events.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::body::{event_stream, Event, EventBody, MockResponse};
use crate::config::MockConfig;
use crate::state::{ReportedUsage, Running, Shared, StreamEnd};

/// Chunks buffered between the producer and the connection; small, so a
/// slow reader holds the producer back.
const CHANNEL_DEPTH: usize = 8;

/// How one API renders the events of a generation stream. Each method
/// pushes whole events onto `out`; each event becomes one HTTP chunk.
pub(crate) trait StreamFormat: Send + Sync + 'static {
    const CONTENT_TYPE: &'static str = "text/event-stream";

    /// Events before the first token.
    fn opening(&self, _out: &mut Vec<Bytes>) {}
    /// The events of paced step `i`: usually one token, but a step may also
    /// close one content block and open the next.
    fn token(&self, i: u32, out: &mut Vec<Bytes>);
    /// Events after the last token, ending the answer.
    fn closing(&self, out: &mut Vec<Bytes>);
    /// The event that reports a failure after the HTTP status was sent,
    /// for APIs that define one.
    fn error_event(&self) -> Option<Bytes> {
        None
    }
    /// The usage the client has been told once `delivered` events went out (`completed`:
    /// all of them), for `/mock/stats`.
    fn reported_usage(&self, _delivered: u32, _completed: bool) -> Option<ReportedUsage> {
        None
    }
}

/// The timing and faults of one stream, independent of its wire format.
pub(crate) struct Plan {
    /// Paced steps between the opening and the closing events.
    pub(crate) tokens: u32,
    pub(crate) ttft: Duration,
    pub(crate) period: Option<Duration>,
    pub(crate) drop_after: Option<u32>,
    pub(crate) error_after: Option<u32>,
}

impl Plan {
    pub(crate) fn new(cfg: &MockConfig, tokens: u32) -> Self {
        Plan {
            tokens,
            ttft: Duration::from_millis(cfg.ttft_ms),
            period: cfg.token_period(),
            drop_after: cfg.drop_after_chunks,
            error_after: cfg.error_event_after_chunks,
        }
    }
}

/// Waits the configured `latency_ms` before a non-stream answer.
pub(crate) async fn answer_delay(cfg: &MockConfig) {
    if cfg.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(cfg.latency_ms)).await;
    }
}

/// Answers with an event stream that a spawned task fills per `plan`.
pub(crate) fn start<F: StreamFormat>(
    shared: &Arc<Shared>,
    format: F,
    plan: Plan,
    running: Running,
) -> MockResponse {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    shared.stats.stream_started();
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let (end, delivered) = produce(&tx, &format, &plan).await;
        shared.stats.stream_ended(end);
        if let Some(usage) = format.reported_usage(delivered, end == StreamEnd::Completed) {
            shared.stats.report_usage(usage);
        }
        drop(running);
    });
    event_stream(EventBody::new(rx), F::CONTENT_TYPE)
}

/// How the stream ended, and how many events reached the connection.
async fn produce<F: StreamFormat>(
    tx: &mpsc::Sender<Event>,
    format: &F,
    plan: &Plan,
) -> (StreamEnd, u32) {
    let error = plan
        .error_after
        .and_then(|after| Some((after, format.error_event()?)));
    let mut out = Emitter {
        tx,
        sent: 0,
        drop_after: plan.drop_after,
        error,
    };
    let end = match emit_all(&mut out, format, plan).await {
        Ok(()) => StreamEnd::Completed,
        Err(end) => end,
    };
    (end, out.sent)
}

async fn emit_all<F: StreamFormat>(
    out: &mut Emitter<'_>,
    format: &F,
    plan: &Plan,
) -> Result<(), StreamEnd> {
    let mut batch = Vec::new();
    if !plan.ttft.is_zero() {
        out.wait_until(Instant::now() + plan.ttft).await?;
    }
    format.opening(&mut batch);
    out.send_all(&mut batch).await?;
    // Deadlines from a fixed start keep the average rate exact even when
    // the timer fires late or the period is below its resolution.
    let start = Instant::now();
    for i in 0..plan.tokens {
        if let Some(period) = plan.period.filter(|_| i > 0) {
            out.wait_until(start + period.saturating_mul(i)).await?;
        }
        format.token(i, &mut batch);
        out.send_all(&mut batch).await?;
    }
    format.closing(&mut batch);
    out.send_all(&mut batch).await
}

/// Sends events, counting them for `drop_after_chunks` and
/// `error_event_after_chunks`.
struct Emitter<'a> {
    tx: &'a mpsc::Sender<Event>,
    sent: u32,
    drop_after: Option<u32>,
    /// The event count that triggers the error, and the error event.
    error: Option<(u32, Bytes)>,
}

impl Emitter<'_> {
    async fn send_all(&mut self, batch: &mut Vec<Bytes>) -> Result<(), StreamEnd> {
        for data in batch.drain(..) {
            self.send(data).await?;
        }
        Ok(())
    }

    async fn send(&mut self, data: Bytes) -> Result<(), StreamEnd> {
        if self.drop_after == Some(self.sent) {
            // If the client is already gone there is nothing left to abort.
            let _ = self.tx.send(Event::Abort).await;
            return Err(StreamEnd::Dropped);
        }
        if let Some((_, error)) = self.error.take_if(|(after, _)| *after == self.sent) {
            self.deliver(error).await?;
            return Err(StreamEnd::Failed);
        }
        self.deliver(data).await
    }

    async fn deliver(&mut self, data: Bytes) -> Result<(), StreamEnd> {
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

/// Runs a format's stream to completion into a list of events, for the
/// formats' shape tests.
#[cfg(test)]
pub(crate) async fn collect<F: StreamFormat>(format: &F, tokens: u32) -> Vec<Bytes> {
    let (tx, mut rx) = mpsc::channel(4096);
    let plan = Plan::new(&MockConfig::default(), tokens);
    assert_eq!(produce(&tx, format, &plan).await.0, StreamEnd::Completed);
    drop(tx);
    let mut events = Vec::new();
    while let Some(Event::Data(data)) = rx.recv().await {
        events.push(data);
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders events as plain names, to check the order.
    struct Names;

    impl StreamFormat for Names {
        fn opening(&self, out: &mut Vec<Bytes>) {
            out.push(Bytes::from_static(b"open"));
        }
        fn token(&self, i: u32, out: &mut Vec<Bytes>) {
            out.push(format!("t{i}").into());
        }
        fn closing(&self, out: &mut Vec<Bytes>) {
            out.push(Bytes::from_static(b"finish"));
            out.push(Bytes::from_static(b"end"));
        }
        fn error_event(&self) -> Option<Bytes> {
            Some(Bytes::from_static(b"error"))
        }
    }

    fn plan(drop_after: Option<u32>, error_after: Option<u32>) -> Plan {
        Plan {
            tokens: 2,
            ttft: Duration::ZERO,
            period: Some(Duration::from_millis(1)),
            drop_after,
            error_after,
        }
    }

    async fn run(plan: Plan) -> (StreamEnd, Vec<String>) {
        let (tx, mut rx) = mpsc::channel(16);
        let (end, delivered) = produce(&tx, &Names, &plan).await;
        drop(tx);
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(match event {
                Event::Data(d) => String::from_utf8(d.to_vec()).unwrap(),
                Event::Abort => "ABORT".to_owned(),
            });
        }
        assert_eq!(
            delivered as usize,
            events.iter().filter(|e| *e != "ABORT").count()
        );
        (end, events)
    }

    #[tokio::test]
    async fn events_in_order() {
        let (end, events) = run(plan(None, None)).await;
        assert_eq!(end, StreamEnd::Completed);
        assert_eq!(events, ["open", "t0", "t1", "finish", "end"]);
    }

    #[tokio::test]
    async fn drop_after_replaces_the_rest_with_abort() {
        let (end, events) = run(plan(Some(2), None)).await;
        assert_eq!(end, StreamEnd::Dropped);
        assert_eq!(events, ["open", "t0", "ABORT"]);
    }

    #[tokio::test]
    async fn error_event_replaces_the_rest() {
        let (end, events) = run(plan(None, Some(3))).await;
        assert_eq!(end, StreamEnd::Failed);
        assert_eq!(events, ["open", "t0", "t1", "error"]);
        // Past the end of the stream it never fires.
        let (end, events) = run(plan(None, Some(5))).await;
        assert_eq!(end, StreamEnd::Completed);
        assert_eq!(events.len(), 5);
    }

    #[tokio::test]
    async fn closed_receiver_cancels_while_waiting() {
        let (tx, rx) = mpsc::channel(16);
        drop(rx);
        let slow = Plan {
            ttft: Duration::from_secs(3600),
            ..plan(None, None)
        };
        assert_eq!(produce(&tx, &Names, &slow).await, (StreamEnd::Cancelled, 0));
    }
}
