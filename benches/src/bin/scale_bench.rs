//! `scale-bench`: Tollgate with everything on, in front of a mock provider, under two loads.
//!
//! - `streams`: thousands of concurrent SSE streams held open against slow mock streams; peak
//!   resident memory and memory per stream.
//! - `soak`: steady open-loop traffic for minutes; resident memory at the start and the end.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{value_parser, Args, Parser, Subcommand, ValueEnum};
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tollgate_benches::launch::{self, PUBLIC_MODEL};
use tollgate_benches::load::{self, BENCH_KEY};
use tollgate_benches::memory::{mib, Rss};
use tollgate_benches::openloop;
use tollgate_benches::procs::Procs;
use tollgate_benches::scenario::Scenario;

/// The goals.
const STREAMS_RSS_GOAL_KIB: u64 = 1024 * 1024;
const SOAK_GROWTH_GOAL: f64 = 0.10;
/// Requests sent before the baseline is read, so it includes warmed-up pools and caches.
const WARMUP_REQUESTS: usize = 200;

#[derive(Parser)]
#[command(
    name = "scale-bench",
    about = "Tollgate with everything on: many open streams, and a long soak"
)]
struct Cli {
    #[command(subcommand)]
    test: Test,
}

#[derive(Subcommand)]
enum Test {
    /// Hold many SSE streams open at once; report peak RSS and RSS per stream.
    Streams(StreamsArgs),
    /// Steady open-loop load for a long time; report RSS at the start and the end.
    Soak(SoakArgs),
}

#[derive(Args)]
struct StreamsArgs {
    /// Concurrent streams.
    #[arg(long, default_value_t = 10_000, value_parser = value_parser!(u32).range(1..))]
    streams: u32,
    /// Streams opened per second while ramping up.
    #[arg(long, default_value_t = 2_000, value_parser = value_parser!(u32).range(1..))]
    ramp: u32,
    /// How long each mock stream lasts, in seconds (one token a second).
    #[arg(long, default_value_t = 30, value_parser = value_parser!(u32).range(5..))]
    stream_secs: u32,
    /// How clients reach Tollgate. Over HTTP/1.1 each stream holds two sockets in Tollgate
    /// (client and upstream); cleartext HTTP/2 multiplexes clients' streams.
    #[arg(long, value_enum, default_value_t = Protocol::H2c)]
    protocol: Protocol,
    /// HTTP/2 streams per client connection (Tollgate allows 100).
    #[arg(long, default_value_t = 100, value_parser = value_parser!(u32).range(1..=100))]
    per_connection: u32,
    /// Tollgate's worker threads.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u16).range(1..))]
    threads: u16,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    H2c,
    Http1,
}

#[derive(Args)]
struct SoakArgs {
    /// Measured seconds, after the warm-up.
    #[arg(long, default_value_t = 600, value_parser = value_parser!(u64).range(1..))]
    duration: u64,
    /// Seconds of load before the starting RSS is read.
    #[arg(long, default_value_t = 60, value_parser = value_parser!(u64).range(0..))]
    warmup: u64,
    /// Requests per second (Poisson arrivals).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Share of requests that stream (0..=1); the rest are non-stream.
    #[arg(long, default_value_t = 0.3)]
    stream_share: f64,
    /// Seconds between RSS samples.
    #[arg(long, default_value_t = 30, value_parser = value_parser!(u64).range(1..))]
    sample_every: u64,
    /// Tollgate's worker threads.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u16).range(1..))]
    threads: u16,
    /// Seed of the arrivals and of the stream/non-stream mix.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn main() -> ExitCode {
    let result = match Cli::parse().test {
        Test::Streams(args) => streams(&args),
        Test::Soak(args) => soak(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the load generator's runtime: {e}"))
}

/// The processes under test.
struct Started {
    gateway: SocketAddr,
    gateway_pid: u32,
    mock: SocketAddr,
}

/// Starts the mock and Tollgate with everything on.
fn start(procs: &mut Procs, threads: u16) -> Result<Started, String> {
    let [tollgate, mock] = launch::binaries(["tollgate", "tollgate-mock"])?;
    let mock = launch::mock(procs, "mock", &mock, &["--kind", "openai", "--no-record"])?;
    let body = launch::everything_on(procs, mock);
    let gateway = launch::tollgate(procs, "tollgate", &tollgate, threads, &body)?;
    Ok(Started {
        gateway: gateway.listen,
        gateway_pid: procs.pid("tollgate").ok_or("tollgate has no process id")?,
        mock,
    })
}

/// Changes the running mock's behaviour (`POST /mock/config`).
async fn configure_mock(mock: SocketAddr, patch: serde_json::Value) -> Result<(), String> {
    let uri: Uri = format!("http://{mock}/mock/config")
        .parse()
        .map_err(|e| format!("bad URI for {mock}: {e}"))?;
    let (status, body) =
        load::fetch(&load::client(1), &uri, Bytes::from(patch.to_string())).await?;
    if status != 200 {
        return Err(format!(
            "the mock refused {patch}: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(())
}

/// A chat stream of `tokens` tokens.
fn stream_body(tokens: u32) -> Bytes {
    let body = json!({
        "model": PUBLIC_MODEL,
        "messages": [{"role": "user", "content": "Keep talking, slowly."}],
        "max_tokens": tokens,
        "stream": true,
    });
    Bytes::from(body.to_string())
}

fn chat_uri(addr: SocketAddr) -> Result<Uri, String> {
    format!("http://{addr}/v1/chat/completions")
        .parse()
        .map_err(|e| format!("bad URI for {addr}: {e}"))
}

/// Sends a few requests of each kind, so the baseline includes warm pools and caches.
async fn warm_up(uri: &Uri) -> Result<(), String> {
    let client = load::client(16);
    for i in 0..WARMUP_REQUESTS {
        let scenario = if i % 2 == 0 {
            Scenario::Small
        } else {
            Scenario::Stream
        };
        let (status, body) = load::fetch(&client, uri, scenario.body(PUBLIC_MODEL)).await?;
        scenario
            .check(status, &body)
            .map_err(|e| format!("warm-up request failed: {e}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// streams

/// What happened to the streams.
#[derive(Default)]
struct Tally {
    open: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
}

fn streams(args: &StreamsArgs) -> Result<(), String> {
    let mut procs = Procs::new()?;
    let started = start(&mut procs, args.threads)?;
    let (addr, pid) = (started.gateway, started.gateway_pid);
    let uri = chat_uri(addr)?;
    let runtime = runtime()?;
    runtime.block_on(async {
        warm_up(&uri).await?;
        // From now on one token a second: streams that stay open.
        configure_mock(
            started.mock,
            json!({"tokens_per_sec": 1.0, "completion_tokens": args.stream_secs}),
        )
        .await
    })?;
    let baseline = Rss::of(pid)?;
    eprintln!(
        "opening {} streams at {}/s over {} ...",
        args.streams,
        args.ramp,
        protocol_name(args.protocol)
    );

    let tally = Arc::new(Tally::default());
    let all_open = runtime.block_on(hold_streams(args, addr, &uri, &tally, pid))?;
    let end = Rss::of(pid)?;
    let n = u64::from(args.streams);
    let opened = tally.open.load(Ordering::Relaxed);
    let completed = tally.completed.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let per_stream_kib = end.peak_kib.saturating_sub(baseline.current_kib) as f64 / n as f64;

    println!(
        "== {n} concurrent SSE streams through Tollgate (everything on), clients over {}, \
         mock streams of {} s ==",
        protocol_name(args.protocol),
        args.stream_secs
    );
    println!("streams opened {opened}, completed to [DONE] {completed}, failed {failed}");
    println!("Tollgate RSS before        {}", mib(baseline.current_kib));
    match all_open {
        Some(rss) => println!("Tollgate RSS all open      {}", mib(rss.current_kib)),
        None => println!("Tollgate RSS all open      never: not every stream opened"),
    }
    println!("Tollgate RSS peak          {}", mib(end.peak_kib));
    println!("per stream (peak - before) {per_stream_kib:.1} KiB");
    let met = end.peak_kib <= STREAMS_RSS_GOAL_KIB && opened == n && failed == 0;
    println!(
        "goal: {n} open streams within {} peak RSS, none failed: {}",
        mib(STREAMS_RSS_GOAL_KIB),
        if met { "met" } else { "MISSED" }
    );
    println!(
        "{}",
        json!({
            "streams": n,
            "protocol": protocol_name(args.protocol),
            "opened": opened,
            "completed": completed,
            "failed": failed,
            "rss_before_kib": baseline.current_kib,
            "rss_all_open_kib": all_open.map(|r| r.current_kib),
            "rss_peak_kib": end.peak_kib,
            "per_stream_kib": (per_stream_kib * 10.0).round() / 10.0,
        })
    );
    if failed > 0 || completed < n {
        return Err(format!("{} of {n} streams did not complete", n - completed));
    }
    Ok(())
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::H2c => "cleartext HTTP/2",
        Protocol::Http1 => "HTTP/1.1",
    }
}

/// Opens every stream, reads RSS once all are open, then waits for them to end. Returns the
/// RSS with every stream open, if they all opened.
async fn hold_streams(
    args: &StreamsArgs,
    addr: SocketAddr,
    uri: &Uri,
    tally: &Arc<Tally>,
    pid: u32,
) -> Result<Option<Rss>, String> {
    let body = stream_body(args.stream_secs);
    let gap = Duration::from_secs_f64(1.0 / f64::from(args.ramp));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(args.streams as usize);
    let mut h2: Option<http2::SendRequest<Full<Bytes>>> = None;
    for i in 0..args.streams {
        tokio::time::sleep_until(start + gap * i).await;
        let sender = match args.protocol {
            Protocol::H2c => {
                if i % args.per_connection == 0 {
                    h2 = Some(h2_connection(addr).await?);
                }
                Sender::H2(h2.clone().expect("a connection was opened above"))
            }
            Protocol::Http1 => Sender::H1(addr),
        };
        let (uri, body, tally) = (uri.clone(), body.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let ok = one_stream(sender, &uri, body, &tally).await;
            let counter = if ok { &tally.completed } else { &tally.failed };
            counter.fetch_add(1, Ordering::Relaxed);
        }));
    }
    // Every stream should be open well before the first ones end.
    let deadline = Instant::now() + Duration::from_secs(u64::from(args.stream_secs) / 2);
    let mut all_open = None;
    while Instant::now() < deadline {
        let settled = tally.open.load(Ordering::Relaxed) + tally.failed.load(Ordering::Relaxed);
        if settled >= u64::from(args.streams) {
            if tally.failed.load(Ordering::Relaxed) == 0 {
                // A moment for the first chunks of the last streams to flow.
                tokio::time::sleep(Duration::from_secs(2)).await;
                all_open = Some(Rss::of(pid)?);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        task.await
            .map_err(|e| format!("a stream task panicked: {e}"))?;
    }
    Ok(all_open)
}

enum Sender {
    H2(http2::SendRequest<Full<Bytes>>),
    H1(SocketAddr),
}

async fn h2_connection(addr: SocketAddr) -> Result<http2::SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP/2 handshake with {addr}: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One stream, read to its end; true when it ended with `data: [DONE]`.
async fn one_stream(sender: Sender, uri: &Uri, body: Bytes, tally: &Tally) -> bool {
    let request = Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, format!("Bearer {BENCH_KEY}"))
        .body(Full::new(body))
        .expect("a POST with a valid URI builds");
    let response = match sender {
        Sender::H2(mut h2) => {
            if h2.ready().await.is_err() {
                return false;
            }
            h2.send_request(request).await
        }
        Sender::H1(addr) => {
            let Ok(tcp) = TcpStream::connect(addr).await else {
                return false;
            };
            let Ok((mut h1, connection)) = http1::handshake(TokioIo::new(tcp)).await else {
                return false;
            };
            tokio::spawn(connection);
            h1.send_request(request).await
        }
    };
    let Ok(response) = response else {
        return false;
    };
    if response.status() != 200 {
        return false;
    }
    tally.open.fetch_add(1, Ordering::Relaxed);
    let mut body = response.into_body();
    let mut tail = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return false;
        };
        if let Some(data) = frame.data_ref() {
            keep_tail(&mut tail, data);
        }
    }
    ends_done(&tail)
}

/// Keeps the last bytes seen, enough to hold the final `data: [DONE]` event.
fn keep_tail(tail: &mut Vec<u8>, data: &[u8]) {
    const KEEP: usize = 64;
    tail.extend_from_slice(data);
    if tail.len() > KEEP {
        tail.drain(..tail.len() - KEEP);
    }
}

fn ends_done(tail: &[u8]) -> bool {
    tail.trim_ascii_end().ends_with(b"data: [DONE]")
}

// ---------------------------------------------------------------------------------------
// soak

fn soak(args: &SoakArgs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&args.stream_share) {
        return Err(format!(
            "--stream-share {} is not in 0..=1",
            args.stream_share
        ));
    }
    if args.rate.is_nan() || args.rate <= 0.0 {
        return Err(format!("--rate {} must be above 0", args.rate));
    }
    let mut procs = Procs::new()?;
    let started = start(&mut procs, args.threads)?;
    let (addr, pid) = (started.gateway, started.gateway_pid);
    let uri = chat_uri(addr)?;
    let runtime = runtime()?;
    runtime.block_on(warm_up(&uri))?;
    let at_launch = Rss::of(pid)?;

    let warmup = Duration::from_secs(args.warmup);
    let total = warmup + Duration::from_secs(args.duration);
    let schedule = openloop::arrivals(args.rate, total, args.seed);
    let mut mix = fastrand::Rng::with_seed(args.seed ^ 0x5eed);
    let bodies: Vec<Bytes> = (0..schedule.len())
        .map(|_| {
            let scenario = if mix.f64() < args.stream_share {
                Scenario::Stream
            } else {
                Scenario::Small
            };
            scenario.body(PUBLIC_MODEL)
        })
        .collect();
    eprintln!(
        "soaking: {:.0} req/s for {} s after {} s of warm-up ...",
        args.rate, args.duration, args.warmup
    );

    let (samples, outcome) = runtime.block_on(async {
        let (stop, stopped) = watch::channel(false);
        let sampler = tokio::spawn(sample_rss(
            pid,
            Duration::from_secs(args.sample_every),
            stopped,
        ));
        let client = load::client(64);
        let outcome =
            openloop::run(&client, &uri, &schedule, warmup, 64, |i| bodies[i].clone()).await;
        let _ = stop.send(true);
        let samples = sampler
            .await
            .map_err(|e| format!("the RSS sampler panicked: {e}"))??;
        Ok::<_, String>((samples, outcome))
    })?;
    let start_rss = samples
        .iter()
        .find(|(at, _)| *at >= warmup)
        .map(|(_, rss)| *rss)
        .ok_or("no RSS sample after the warm-up")?;
    let end_rss = samples.last().map(|(_, rss)| *rss).ok_or("no RSS sample")?;
    let growth = growth(start_rss.current_kib, end_rss.current_kib);

    println!(
        "== soak: {:.0} req/s ({:.0}% streams), Tollgate with everything on, {} s measured after {} s of warm-up ==",
        args.rate,
        args.stream_share * 100.0,
        args.duration,
        args.warmup
    );
    println!(
        "requests completed {}, errors {}, latency p50 {:.3} ms, p99 {:.3} ms",
        outcome.completed,
        outcome.errors,
        outcome.total_us.value_at_quantile(0.5) as f64 / 1000.0,
        outcome.total_us.value_at_quantile(0.99) as f64 / 1000.0
    );
    println!(
        "Tollgate RSS after launch and warm-up requests {}",
        mib(at_launch.current_kib)
    );
    println!(
        "Tollgate RSS at start (after warm-up load)    {}",
        mib(start_rss.current_kib)
    );
    println!(
        "Tollgate RSS at end                           {}",
        mib(end_rss.current_kib)
    );
    println!(
        "Tollgate RSS peak                             {}",
        mib(end_rss.peak_kib)
    );
    let series: Vec<String> = samples
        .iter()
        .map(|(at, rss)| format!("{}s:{:.1}", at.as_secs(), rss.current_kib as f64 / 1024.0))
        .collect();
    println!("RSS MiB over time: {}", series.join(" "));
    println!(
        "goal: RSS growth from start to end under {:.0}%: {:+.1}%, {}",
        SOAK_GROWTH_GOAL * 100.0,
        growth * 100.0,
        if growth < SOAK_GROWTH_GOAL {
            "met"
        } else {
            "MISSED"
        }
    );
    if outcome.errors > 0 {
        return Err(format!(
            "{} requests failed during the soak",
            outcome.errors
        ));
    }
    Ok(())
}

/// Samples RSS every `every` until told to stop, then once more.
async fn sample_rss(
    pid: u32,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<Vec<(Duration, Rss)>, String> {
    let start = Instant::now();
    let mut samples = Vec::new();
    loop {
        samples.push((start.elapsed(), Rss::of(pid)?));
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => {
                samples.push((start.elapsed(), Rss::of(pid)?));
                return Ok(samples);
            }
        }
    }
}

fn growth(start_kib: u64, end_kib: u64) -> f64 {
    (end_kib as f64 - start_kib as f64) / (start_kib as f64).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_end_of_the_stream() {
        let mut tail = Vec::new();
        keep_tail(&mut tail, &[b'x'; 500]);
        assert_eq!(tail.len(), 64);
        keep_tail(&mut tail, b"data: {\"choices\":[]}\n\ndata: [DO");
        assert!(!ends_done(&tail));
        keep_tail(&mut tail, b"NE]\n\n");
        assert!(ends_done(&tail));
    }

    #[test]
    fn stream_bodies_ask_for_as_many_tokens_as_seconds() {
        let body: serde_json::Value = serde_json::from_slice(&stream_body(30)).unwrap();
        assert_eq!(body["max_tokens"], 30);
        assert_eq!(body["stream"], true);
        assert_eq!(body["model"], PUBLIC_MODEL);
    }

    #[test]
    fn growth_is_relative_to_the_start() {
        assert_eq!(growth(100, 110), 0.1);
        assert_eq!(growth(100, 90), -0.1);
        assert_eq!(growth(0, 0), 0.0);
    }

    #[test]
    fn protocols_have_names_for_the_report() {
        assert_eq!(protocol_name(Protocol::H2c), "cleartext HTTP/2");
        assert_eq!(protocol_name(Protocol::Http1), "HTTP/1.1");
    }
}
