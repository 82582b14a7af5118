//! Open-loop streaming load: requests arrive on a Poisson schedule fixed by a seed, whatever
//! the answers do, so a router that lets queues grow pays for it in time to first token (a
//! closed loop would slow its own arrivals down and hide the queue).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::CONTENT_TYPE;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use crate::load::HttpClient;

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

/// How one streamed request went.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// From sending to the first generated text.
    pub ttft: Duration,
    /// From sending to the end of the stream.
    pub total: Duration,
}

/// A run's results.
pub struct Outcome {
    pub ttft_us: Histogram<u64>,
    pub total_us: Histogram<u64>,
    pub completed: u64,
    pub errors: u64,
    /// From the first measured arrival to the last answer.
    pub elapsed: Duration,
}

impl Outcome {
    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Whether an SSE chunk carries generated text (`"content":"` with something in it).
fn has_text(chunk: &[u8]) -> bool {
    const KEY: &[u8] = b"\"content\":\"";
    chunk
        .windows(KEY.len() + 1)
        .any(|w| w.starts_with(KEY) && w[KEY.len()] != b'"')
}

/// One streamed request: the times to its first text and to its end.
async fn stream(client: &HttpClient, uri: &Uri, body: Bytes) -> Result<Sample, String> {
    let sent = Instant::now();
    let request = Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    if resp.status() != 200 {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut ttft = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if ttft.is_none() && frame.data_ref().is_some_and(|d| has_text(d)) {
            ttft = Some(sent.elapsed());
        }
    }
    let total = sent.elapsed();
    Ok(Sample {
        ttft: ttft.ok_or("the stream held no text")?,
        total,
    })
}

/// Sends `bodies[i]` at `schedule[i]` and waits for every answer; only requests sent from
/// `measure_from` on are measured (the ones before warm the servers' caches up).
pub async fn run(
    client: &HttpClient,
    uri: &Uri,
    schedule: &[Duration],
    measure_from: Duration,
    bodies: impl Fn(usize) -> Bytes,
) -> Outcome {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(schedule.len());
    for (i, at) in schedule.iter().enumerate() {
        tokio::time::sleep_until(start + *at).await;
        let (client, uri, body) = (client.clone(), uri.clone(), bodies(i));
        let measured = *at >= measure_from;
        tasks.push(tokio::spawn(async move {
            (measured, timed(stream(&client, &uri, body)).await)
        }));
    }
    let mut outcome = Outcome {
        ttft_us: Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds"),
        total_us: Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds"),
        completed: 0,
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        match task.await {
            Ok((false, _)) => {}
            Ok((true, Ok(sample))) => {
                let us = |d: Duration| (d.as_micros() as u64).clamp(1, MAX_US);
                outcome.ttft_us.saturating_record(us(sample.ttft));
                outcome.total_us.saturating_record(us(sample.total));
                outcome.completed += 1;
            }
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
}
