//! Closed-loop HTTP/1.1 load: each worker sends its next request as soon as the last one has
//! been read to the end, over keep-alive connections.

use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::header::CONTENT_TYPE;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::{timeout_at, Instant};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How long a request may outlive the measured window before the worker gives up on it,
/// so a hung path ends the run with errors instead of never ending.
const HANG_GRACE: Duration = Duration::from_secs(10);

/// Highest latency the histograms track; slower requests are recorded as this.
const MAX_LATENCY_US: u64 = 60_000_000;

pub fn client(connections: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    // Small requests must not sit in Nagle's buffer: that would swamp the proxies' overhead.
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build(connector)
}

/// The virtual key the benchmark's gateways know (LiteLLM's master key too, which must not
/// look weak); the mock and the bare proxy ignore it.
pub const BENCH_KEY: &str = "sk-bench-4c1f9e07a2d85b36e9f04d7a1c62b8e3";

pub(crate) fn post(uri: &Uri, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, format!("Bearer {BENCH_KEY}"))
        .body(Full::new(body))
        .expect("a POST with a valid URI builds")
}

/// One request, keeping the whole answer (for validation).
pub async fn fetch(client: &HttpClient, uri: &Uri, body: Bytes) -> Result<(u16, Bytes), String> {
    let resp = client
        .request(post(uri, body))
        .await
        .map_err(|e| format!("POST {uri}: {e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer of POST {uri}: {e}"))?;
    Ok((status, body.to_bytes()))
}

/// One request whose answer is read to the last byte and dropped; true for a 200.
async fn exchange(client: &HttpClient, uri: &Uri, body: Bytes) -> bool {
    let Ok(resp) = client.request(post(uri, body)).await else {
        return false;
    };
    let ok = resp.status() == http::StatusCode::OK;
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return false;
        }
    }
    ok
}

pub struct Spec {
    pub uri: Uri,
    pub body: Bytes,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What the measured window saw: latencies of successful requests and a count of the rest.
pub struct Outcome {
    pub latencies_us: Histogram<u64>,
    pub errors: u64,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            latencies_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant histogram bounds are valid"),
            errors: 0,
        }
    }
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.latencies_us
            .add(&other.latencies_us)
            .expect("histograms share their bounds");
        self.errors += other.errors;
    }
}

/// Runs `spec.connections` workers through the warm-up and the measured window.
pub async fn run(client: &HttpClient, spec: &Spec) -> Outcome {
    let measure_from = Instant::now() + spec.warmup;
    let until = measure_from + spec.duration;
    let workers: Vec<_> = (0..spec.connections)
        .map(|_| {
            let (client, uri, body) = (client.clone(), spec.uri.clone(), spec.body.clone());
            tokio::spawn(worker(client, uri, body, measure_from, until))
        })
        .collect();
    let mut total = Outcome::default();
    for worker in workers {
        total.merge(worker.await.expect("a load worker panicked"));
    }
    total
}

/// Only requests that start and finish inside the window count, so the warm-up's cold
/// connections and the requests cut off at the end are left out.
async fn worker(
    client: HttpClient,
    uri: Uri,
    body: Bytes,
    measure_from: Instant,
    until: Instant,
) -> Outcome {
    let mut outcome = Outcome::default();
    loop {
        let start = Instant::now();
        if start >= until {
            return outcome;
        }
        let answer = timeout_at(until + HANG_GRACE, exchange(&client, &uri, body.clone())).await;
        let end = Instant::now();
        let counted = start >= measure_from && end <= until;
        match answer {
            Ok(true) if counted => {
                let micros =
                    u64::try_from(end.duration_since(start).as_micros()).unwrap_or(u64::MAX);
                outcome.latencies_us.saturating_record(micros.max(1));
            }
            Ok(false) if counted => outcome.errors += 1,
            Ok(_) => {}
            Err(_hung) => {
                if start >= measure_from {
                    outcome.errors += 1;
                }
                return outcome;
            }
        }
    }
}
