//! Open-loop load: requests arrive on a Poisson schedule fixed by a seed, whatever the answers
//! do, so a path that lets queues grow pays for it in latency (a closed loop would slow its
//! own arrivals down and hide the queue). As in wrk2, at most a fixed number of requests are
//! in flight, and every time is measured from when the request was dispatched, not from when
//! a connection was free to send it, so waiting for one counts.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::CONTENT_TYPE;
use http::Uri;
use http_body_util::BodyExt;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::load::{post, HttpClient};

/// The longest a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Highest time the histograms track, in microseconds.
const MAX_US: u64 = 120_000_000;

/// When each request of a run is sent, from its start: exponential gaps at `rate` per second.
pub fn arrivals(rate: f64, duration: Duration, seed: u64) -> Vec<Duration> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut at = 0.0;
    let mut times = Vec::new();
    loop {
        // 1 - U is in (0, 1]: its logarithm is finite.
        at += -(1.0 - rng.f64()).ln() / rate;
        if at >= duration.as_secs_f64() {
            return times;
        }
        times.push(Duration::from_secs_f64(at));
    }
}

/// How one request went.
#[derive(Clone, Debug)]
pub struct Sample {
    /// From the request's dispatch to the first generated text; streams only.
    pub ttft: Option<Duration>,
    /// From the request's dispatch to the end of the answer.
    pub total: Duration,
    /// For each stamped chunk (`tollgate-mock --stamp-chunks`), microseconds from the mock
    /// rendering it to this client reading it.
    pub chunk_transits_us: Vec<u64>,
}

/// A run's results.
pub struct Outcome {
    pub ttft_us: Histogram<u64>,
    pub total_us: Histogram<u64>,
    pub chunk_us: Histogram<u64>,
    pub completed: u64,
    pub errors: u64,
    /// From the first measured arrival to the last answer.
    pub elapsed: Duration,
}

impl Outcome {
    fn new() -> Outcome {
        let histogram = || Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds");
        Outcome {
            ttft_us: histogram(),
            total_us: histogram(),
            chunk_us: histogram(),
            completed: 0,
            errors: 0,
            elapsed: Duration::ZERO,
        }
    }

    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn record(&mut self, sample: &Sample) {
        let us = |d: Duration| (d.as_micros() as u64).clamp(1, MAX_US);
        if let Some(ttft) = sample.ttft {
            self.ttft_us.saturating_record(us(ttft));
        }
        self.total_us.saturating_record(us(sample.total));
        for &transit in &sample.chunk_transits_us {
            self.chunk_us.saturating_record(transit.clamp(1, MAX_US));
        }
        self.completed += 1;
    }
}

/// Whether an SSE chunk carries generated text (`"content":"` with something in it).
fn has_text(chunk: &[u8]) -> bool {
    const KEY: &[u8] = b"\"content\":\"";
    chunk
        .windows(KEY.len() + 1)
        .any(|w| w.starts_with(KEY) && w[KEY.len()] != b'"')
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Finds the mock's `"mock_sent_us":N` stamps in a stream read in arbitrary pieces: only
/// whole lines are searched, so a stamp split between two reads is still found.
#[derive(Default)]
struct StampReader {
    pending: Vec<u8>,
}

impl StampReader {
    const KEY: &'static [u8] = b"\"mock_sent_us\":";

    /// Adds `data`, read at `now_us`, and pushes the transit of each stamp it completes.
    fn feed(&mut self, data: &[u8], now_us: u64, transits: &mut Vec<u64>) {
        self.pending.extend_from_slice(data);
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let mut rest = &self.pending[..end];
        while let Some(at) = find(rest, Self::KEY) {
            rest = &rest[at + Self::KEY.len()..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let stamp = std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|d| d.parse::<u64>().ok());
            if let Some(stamp) = stamp {
                transits.push(now_us.saturating_sub(stamp));
            }
        }
        self.pending.drain(..=end);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One request dispatched at `sent`, its answer read to the end.
async fn exchange(
    client: &HttpClient,
    uri: &Uri,
    body: Bytes,
    sent: Instant,
) -> Result<Sample, String> {
    let resp = client
        .request(post(uri, body))
        .await
        .map_err(|e| format!("{e:?}"))?;
    if resp.status() != 200 {
        return Err(format!("HTTP {}", resp.status()));
    }
    let is_stream = resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut body = resp.into_body();
    let mut ttft = None;
    let mut stamps = StampReader::default();
    let mut chunk_transits_us = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        stamps.feed(data, unix_micros(), &mut chunk_transits_us);
        if is_stream && ttft.is_none() && has_text(data) {
            ttft = Some(sent.elapsed());
        }
    }
    if is_stream && ttft.is_none() {
        return Err("the stream held no text".into());
    }
    Ok(Sample {
        ttft,
        total: sent.elapsed(),
        chunk_transits_us,
    })
}

/// Sends `bodies(i)` at `schedule[i]`, with at most `max_in_flight` requests outstanding,
/// and waits for every answer; only requests due from `measure_from` on are measured (the
/// ones before warm connections and caches up).
pub async fn run(
    client: &HttpClient,
    uri: &Uri,
    schedule: &[Duration],
    measure_from: Duration,
    max_in_flight: usize,
    bodies: impl Fn(usize) -> Bytes,
) -> Outcome {
    let start = Instant::now();
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let mut tasks = Vec::with_capacity(schedule.len());
    for (i, at) in schedule.iter().enumerate() {
        tokio::time::sleep_until(start + *at).await;
        // Timed from here, not from the due time: the timer wakes in whole milliseconds, and
        // its lateness is the load generator's, not the path's.
        let dispatched = Instant::now();
        let (client, uri, body, slots) = (client.clone(), uri.clone(), bodies(i), slots.clone());
        let measured = *at >= measure_from;
        tasks.push(tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return (measured, Err("the load generator stopped".to_owned()));
            };
            (
                measured,
                timed(exchange(&client, &uri, body, dispatched)).await,
            )
        }));
    }
    let mut outcome = Outcome::new();
    for task in tasks {
        match task.await {
            Ok((false, _)) => {}
            Ok((true, Ok(sample))) => outcome.record(&sample),
            _ => outcome.errors += 1,
        }
    }
    outcome.elapsed = start.elapsed().saturating_sub(measure_from);
    outcome
}

async fn timed<T>(work: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_seeded_and_average_the_rate() {
        let a = arrivals(50.0, Duration::from_secs(100), 7);
        assert_eq!(a, arrivals(50.0, Duration::from_secs(100), 7));
        assert_ne!(a, arrivals(50.0, Duration::from_secs(100), 8));
        let rate = a.len() as f64 / 100.0;
        assert!((45.0..55.0).contains(&rate), "{rate}");
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn text_is_found_only_in_content_that_holds_some() {
        assert!(has_text(
            br#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#
        ));
        assert!(!has_text(
            br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#
        ));
        assert!(!has_text(b"data: [DONE]"));
    }

    #[test]
    fn stamps_are_read_across_split_reads() {
        let mut reader = StampReader::default();
        let mut transits = Vec::new();
        reader.feed(
            b"data: {\"a\":1,\"mock_sent_us\":1000}\n\ndata: {\"mock_se",
            1500,
            &mut transits,
        );
        assert_eq!(transits, [500]);
        reader.feed(b"nt_us\":1200}\n\n", 1700, &mut transits);
        assert_eq!(transits, [500, 500]);
        reader.feed(b"data: [DONE]\n\n", 1800, &mut transits);
        assert_eq!(transits, [500, 500]);
        // A stamp from the future (clock steps) counts as zero, not as a huge transit.
        reader.feed(b"data: {\"mock_sent_us\":9000}\n", 1900, &mut transits);
        assert_eq!(transits, [500, 500, 0]);
    }
}
