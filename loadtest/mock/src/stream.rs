//! Paced server-sent-event answers, produced on their own task. Every API
//! shares the pacing, drops, in-stream errors and cancellation here and
//! only renders its own events.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::body::{event_stream, Event, EventBody, MockResponse};
use crate::config::MockConfig;
use crate::gpu::{Job, Sequence};
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

/// The timing and faults of one answer, independent of its wire format.
pub(crate) struct Plan {
    /// Paced steps between the opening and the closing events.
    pub(crate) tokens: u32,
    pub(crate) pace: Pace,
    pub(crate) drop_after: Option<u32>,
    pub(crate) error_after: Option<u32>,
}

/// What decides when tokens come out.
pub(crate) enum Pace {
    /// The config's delays: `ttft` then a token every `period` for
    /// streams, `latency` for whole answers.
    Configured {
        ttft: Duration,
        period: Option<Duration>,
        latency: Duration,
    },
    /// The simulated GPU: its queue and prefill until the first token,
    /// then one decode step per token.
    Gpu(Job),
}

impl Plan {
    pub(crate) fn new(cfg: &MockConfig, tokens: u32) -> Self {
        Plan {
            tokens,
            pace: Pace::Configured {
                ttft: Duration::from_millis(cfg.ttft_ms),
                period: cfg.token_period(),
                latency: Duration::from_millis(cfg.latency_ms),
            },
            drop_after: cfg.drop_after_chunks,
            error_after: cfg.error_event_after_chunks,
        }
    }

    /// The plan of a generation from a prompt of `prompt_tokens`: on the
    /// simulated GPU when the config has one, else as [`Plan::new`].
    /// `prompt` gives the prompt's text for the prefix cache; it is only
    /// called when simulating.
    pub(crate) fn generation(
        shared: &Shared,
        cfg: &MockConfig,
        tokens: u32,
        prompt_tokens: u32,
        prompt: impl FnOnce() -> Vec<u8>,
    ) -> Self {
        let mut plan = Plan::new(cfg, tokens);
        if let Some(sim) = cfg.gpu {
            plan.pace = Pace::Gpu(shared.gpu.job(sim, &prompt(), prompt_tokens, tokens));
        }
        plan
    }

    /// Waits as long as the whole answer takes to generate, before a
    /// non-stream answer: `latency_ms`, or on the GPU the queue, prefill
    /// and every decode step. Dropped (the client left), it frees the GPU.
    pub(crate) async fn whole_answer(self) {
        match self.pace {
            Pace::Configured { latency, .. } => {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
            }
            Pace::Gpu(job) => {
                let sequence = job.admit().await;
                let mut due = Instant::now() + sequence.prefill();
                sleep_until(due).await;
                // Step by step: each lasts as long as the batch makes it then.
                for _ in 1..self.tokens {
                    due += sequence.decode_step();
                    sleep_until(due).await;
                }
            }
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
        let (end, delivered) = produce(&tx, &format, plan).await;
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
    plan: Plan,
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
    let end = match emit_all(&mut out, format, plan.tokens, plan.pace).await {
        Ok(()) => StreamEnd::Completed,
        Err(end) => end,
    };
    (end, out.sent)
}

/// Sends the whole stream; on the GPU, its sequence ends with it, or as
/// soon as the client is found gone.
async fn emit_all<F: StreamFormat>(
    out: &mut Emitter<'_>,
    format: &F,
    tokens: u32,
    pace: Pace,
) -> Result<(), StreamEnd> {
    let mut clock = Clock::first_token(out, pace).await?;
    let mut batch = Vec::new();
    format.opening(&mut batch);
    out.send_all(&mut batch).await?;
    for i in 0..tokens {
        if i > 0 {
            if let Some(due) = clock.token_due(i) {
                out.wait_until(due).await?;
            }
        }
        format.token(i, &mut batch);
        out.send_all(&mut batch).await?;
    }
    format.closing(&mut batch);
    out.send_all(&mut batch).await
}

/// When the tokens of a stream are due.
enum Clock {
    /// Deadlines from a fixed start keep the average rate exact even when
    /// the timer fires late or the period is below its resolution.
    Fixed {
        start: Instant,
        period: Option<Duration>,
    },
    /// One decode step after another, each as long as the batch makes it
    /// when it starts; the sequence holds its GPU slot meanwhile.
    Gpu { due: Instant, sequence: Sequence },
}

impl Clock {
    /// Waits until the first token is due: the configured ttft, or the
    /// GPU's queue and prefill.
    async fn first_token(out: &Emitter<'_>, pace: Pace) -> Result<Self, StreamEnd> {
        match pace {
            Pace::Configured { ttft, period, .. } => {
                if !ttft.is_zero() {
                    out.wait_until(Instant::now() + ttft).await?;
                }
                Ok(Clock::Fixed {
                    start: Instant::now(),
                    period,
                })
            }
            Pace::Gpu(job) => {
                // A client that leaves gives up its place in the queue at once.
                let sequence = out.unless_closed(job.admit()).await?;
                let due = Instant::now() + sequence.prefill();
                out.wait_until(due).await?;
                Ok(Clock::Gpu { due, sequence })
            }
        }
    }

    /// When token `i` (after the first) is due; `None` for at once.
    fn token_due(&mut self, i: u32) -> Option<Instant> {
        match self {
            Clock::Fixed { start, period } => period.map(|p| *start + p.saturating_mul(i)),
            Clock::Gpu { due, sequence } => {
                *due += sequence.decode_step();
                Some(*due)
            }
        }
    }
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
        self.unless_closed(sleep_until(deadline)).await
    }

    /// Awaits `wait`, but gives up (dropping it) as soon as the client goes away.
    async fn unless_closed<T>(&self, wait: impl Future<Output = T>) -> Result<T, StreamEnd> {
        tokio::select! {
            done = wait => Ok(done),
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
    assert_eq!(produce(&tx, format, plan).await.0, StreamEnd::Completed);
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
    use crate::gpu::{Gpu, GpuSim};

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
            pace: Pace::Configured {
                ttft: Duration::ZERO,
                period: Some(Duration::from_millis(1)),
                latency: Duration::ZERO,
            },
            drop_after,
            error_after,
        }
    }

    async fn run(plan: Plan) -> (StreamEnd, Vec<String>) {
        let (tx, mut rx) = mpsc::channel(16);
        let (end, delivered) = produce(&tx, &Names, plan).await;
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
            pace: Pace::Configured {
                ttft: Duration::from_secs(3600),
                period: None,
                latency: Duration::ZERO,
            },
            ..plan(None, None)
        };
        assert_eq!(produce(&tx, &Names, slow).await, (StreamEnd::Cancelled, 0));
    }

    fn gpu_sim(slots: u32) -> GpuSim {
        GpuSim {
            slots,
            kv_tokens: 1000,
            prefill_us_per_token: 1000.0,
            decode_ms: 10.0,
            decode_ms_per_batch: 5.0,
            prefix_block_tokens: 16,
        }
    }

    /// A plan on `gpu` for a 100-token prompt and 3 output tokens.
    fn gpu_plan(gpu: &Arc<Gpu>) -> Plan {
        let job = gpu.job(gpu.load().sim.unwrap(), b"", 100, 3);
        Plan {
            tokens: 3,
            pace: Pace::Gpu(job),
            ..plan(None, None)
        }
    }

    /// Each event's name and when it arrived, in ms after the start.
    async fn timed(plan: Plan) -> Vec<(String, u128)> {
        let started = Instant::now();
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(async move { produce(&tx, &Names, plan).await });
        let mut events = Vec::new();
        while let Some(Event::Data(d)) = rx.recv().await {
            let name = String::from_utf8(d.to_vec()).unwrap();
            events.push((name, started.elapsed().as_millis()));
        }
        events
    }

    #[tokio::test(start_paused = true)]
    async fn gpu_streams_wait_prefill_then_decode_per_token() {
        let gpu = Gpu::new(Some(gpu_sim(2)));
        let alone = timed(gpu_plan(&gpu)).await;
        // 100 prompt tokens at 1 ms, then steps of 10 ms + 5 ms for a batch of 1.
        let at = |ms: [u128; 6]| {
            ["open", "t0", "t1", "t2", "finish", "end"]
                .iter()
                .zip(ms)
                .map(|(name, ms)| (name.to_string(), ms))
                .collect::<Vec<_>>()
        };
        assert_eq!(alone, at([100, 100, 115, 130, 130, 130]));
        assert_eq!(gpu.load().running, 0);

        // Two at once share the batch: 20 ms steps.
        let (a, b) = tokio::join!(timed(gpu_plan(&gpu)), timed(gpu_plan(&gpu)));
        assert_eq!(a, at([100, 100, 120, 140, 140, 140]));
        assert_eq!(a, b);

        // One slot: the second waits for the first, 130 ms, before its prefill.
        let gpu = Gpu::new(Some(gpu_sim(1)));
        let (a, b) = tokio::join!(timed(gpu_plan(&gpu)), timed(gpu_plan(&gpu)));
        assert_eq!(a, at([100, 100, 115, 130, 130, 130]));
        assert_eq!(b, at([230, 230, 245, 260, 260, 260]));
    }

    #[tokio::test(start_paused = true)]
    async fn whole_answers_take_the_same_time_as_streams() {
        let gpu = Gpu::new(Some(gpu_sim(1)));
        let started = Instant::now();
        gpu_plan(&gpu).whole_answer().await;
        assert_eq!(started.elapsed(), Duration::from_millis(130));
        assert_eq!(gpu.load().running, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_gone_from_the_queue_frees_its_place() {
        let gpu = Gpu::new(Some(gpu_sim(1)));
        let holder = gpu.job(gpu_sim(1), b"", 1, 1).admit().await;
        let (tx, rx) = mpsc::channel(16);
        let plan = gpu_plan(&gpu);
        let waiting = tokio::spawn(async move { produce(&tx, &Names, plan).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(gpu.load().waiting, 1);
        drop(rx);
        assert_eq!(waiting.await.unwrap(), (StreamEnd::Cancelled, 0));
        assert_eq!(gpu.load().waiting, 0);
        drop(holder);
        assert_eq!(gpu.load().running, 0);
    }
}
