//! `gpu-bench`: the same seeded open-loop stream of chat requests, sharing a few long system
//! prompts, through Tollgate to a pool of simulated GPU servers (the mock's vLLM kind with
//! `--gpu-slots`), once per routing strategy: round-robin, least-loaded and gpu-aware. Each
//! strategy gets fresh servers (empty caches) and a fresh gateway; the table compares time to
//! first token and throughput.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{value_parser, Parser};
use http::Uri;
use serde_json::json;
use tollgate_benches::launch;
use tollgate_benches::load;
use tollgate_benches::openloop::{self, Outcome};
use tollgate_benches::procs::Procs;

const MODEL: &str = "llama";

/// Far above the servers' batch slots: the queues form at the servers, where routing decides.
const MAX_IN_FLIGHT: usize = 1024;

#[derive(Parser)]
#[command(
    name = "gpu-bench",
    about = "Routing strategies over simulated GPU servers, under the same open-loop load"
)]
struct Cli {
    /// Simulated GPU servers in the pool.
    #[arg(long, default_value_t = 4, value_parser = value_parser!(u16).range(1..))]
    replicas: u16,
    /// Measured seconds of arrivals per strategy.
    #[arg(long, default_value_t = 30, value_parser = value_parser!(u64).range(1..))]
    duration: u64,
    /// Seconds of arrivals first, unmeasured, so that the servers' caches are warm.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Arrival rate as a fraction of the pool's estimated capacity.
    #[arg(long, default_value_t = 0.85)]
    load: f64,
    /// Seed of the arrivals and of the prompts: the same for every strategy.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Distinct long system prompts the requests share.
    #[arg(long, default_value_t = 24, value_parser = value_parser!(u16).range(1..))]
    prefixes: u16,
    /// Also print a one-line JSON summary.
    #[arg(long)]
    json: bool,
}

/// The simulated server, as flags of `tollgate-mock`: 8 sequences at a time, a KV cache that
/// holds about a third of the shared prompts, a costly prefill (so prefix hits matter), and
/// a decode step that slows with the batch.
struct Server {
    slots: u32,
    kv_tokens: u32,
    prefill_us_per_token: f64,
    decode_ms: f64,
    decode_ms_per_batch: f64,
}

const SERVER: Server = Server {
    slots: 8,
    kv_tokens: 24_000,
    prefill_us_per_token: 100.0,
    decode_ms: 8.0,
    decode_ms_per_batch: 0.5,
};

/// Tokens of each shared system prompt (4 bytes a token, as the mock counts).
const PREFIX_TOKENS: usize = 1_500;
/// Tokens generated per answer.
const OUTPUT_TOKENS: u32 = 24;

impl Server {
    fn flags(&self) -> Vec<String> {
        [
            ("--kind", "vllm".to_string()),
            ("--gpu-slots", self.slots.to_string()),
            ("--gpu-kv-tokens", self.kv_tokens.to_string()),
            (
                "--gpu-prefill-us-per-token",
                self.prefill_us_per_token.to_string(),
            ),
            ("--gpu-decode-ms", self.decode_ms.to_string()),
            (
                "--gpu-decode-ms-per-batch",
                self.decode_ms_per_batch.to_string(),
            ),
            ("--completion-tokens", OUTPUT_TOKENS.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .chain(["--no-record".to_string()])
        .collect()
    }

    /// Requests a second one server finishes with a full batch and no prefix hits: the
    /// capacity that `--load` is a fraction of.
    fn capacity(&self) -> f64 {
        let prefill = PREFIX_TOKENS as f64 * self.prefill_us_per_token / 1e6;
        let step = (self.decode_ms + self.decode_ms_per_batch * f64::from(self.slots)) / 1e3;
        f64::from(self.slots) / (prefill + f64::from(OUTPUT_TOKENS) * step)
    }
}

#[derive(Clone, Copy)]
enum Routing {
    RoundRobin,
    LeastLoaded,
    GpuAware,
}

impl Routing {
    const ALL: [Routing; 3] = [Routing::RoundRobin, Routing::LeastLoaded, Routing::GpuAware];

    fn name(self) -> &'static str {
        match self {
            Routing::RoundRobin => "round-robin",
            Routing::LeastLoaded => "least-loaded",
            Routing::GpuAware => "gpu-aware",
        }
    }

    /// The gateway's providers and model. Round-robin is `weighted` over one provider per
    /// server with equal weights (smooth weighted round-robin); the others route within one
    /// pool whose load they scrape.
    fn config(self, servers: &[SocketAddr]) -> String {
        let mut out = String::from("providers:\n");
        match self {
            Routing::RoundRobin => {
                for (i, addr) in servers.iter().enumerate() {
                    out += &format!(
                        "  - {{ name: gpu{i}, kind: vllm, base_url: \"http://{addr}\" }}\n"
                    );
                }
                out += "models:\n  - name: bench\n    strategy: weighted\n    targets:\n";
                for i in 0..servers.len() {
                    out += &format!("      - {{ provider: gpu{i}, model: {MODEL}, weight: 1 }}\n");
                }
            }
            Routing::LeastLoaded | Routing::GpuAware => {
                let list: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
                out += &format!(
                    "  - {{ name: gpu, kind: vllm, endpoints: [{}], load_metrics: {{ every: 100ms }} }}\nmodels:\n  - name: bench\n    strategy: {}\n    targets: [{{ provider: gpu, model: {MODEL} }}]\n",
                    list.join(", "),
                    self.name()
                );
            }
        }
        out
    }
}

fn main() -> ExitCode {
    match run(&Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The chat request `i`: one of the shared system prompts (chosen by the seed) and a
/// question of its own.
fn bodies(prefixes: u16, seed: u64, count: usize) -> Vec<Bytes> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15);
    let systems: Vec<String> = (0..prefixes)
        .map(|p| {
            let line = format!("Policy {p}: answer as the support desk of product {p}. ");
            line.repeat(PREFIX_TOKENS * 4 / line.len() + 1)[..PREFIX_TOKENS * 4].to_string()
        })
        .collect();
    (0..count)
        .map(|i| {
            let system = &systems[rng.usize(..systems.len())];
            Bytes::from(
                json!({
                    "model": "bench",
                    "stream": true,
                    "max_tokens": OUTPUT_TOKENS,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": format!("Question {i}: where is my order?")},
                    ],
                })
                .to_string(),
            )
        })
        .collect()
}

fn run(cli: &Cli) -> Result<(), String> {
    let [tollgate, mock] = launch::binaries(["tollgate", "tollgate-mock"])?;
    let capacity = SERVER.capacity() * f64::from(cli.replicas);
    let rate = capacity * cli.load;
    let warmup = Duration::from_secs(cli.warmup);
    let schedule = openloop::arrivals(rate, warmup + Duration::from_secs(cli.duration), cli.seed);
    let bodies = bodies(cli.prefixes, cli.seed, schedule.len());
    println!(
        "== {} simulated vLLM servers ({} slots, {} KV tokens), {} shared prompts of {PREFIX_TOKENS} tokens, {OUTPUT_TOKENS} output tokens | open loop at {:.0}% of ~{capacity:.0} req/s = {rate:.1} req/s for {} s after {} s of warm-up, seed {} ==",
        cli.replicas,
        SERVER.slots,
        SERVER.kv_tokens,
        cli.prefixes,
        cli.load * 100.0,
        cli.duration,
        cli.warmup,
        cli.seed
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the load generator's runtime: {e}"))?;
    let mut results = Vec::new();
    for routing in Routing::ALL {
        let mut procs = Procs::new()?;
        let gateway = start(&mut procs, routing, cli.replicas, &tollgate, &mock)?;
        let uri: Uri = format!("http://{gateway}/v1/chat/completions")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let client = load::client(MAX_IN_FLIGHT);
        let outcome = runtime.block_on(openloop::run(
            &client,
            &uri,
            &schedule,
            warmup,
            MAX_IN_FLIGHT,
            |i| bodies[i].clone(),
        ));
        drop(procs);
        results.push((routing, outcome));
    }
    println!("{}", table(&results));
    if cli.json {
        let rows: Vec<_> = results
            .iter()
            .map(|(r, o)| {
                json!({
                    "strategy": r.name(),
                    "throughput": o.throughput(),
                    "ttft_mean_ms": o.ttft_us.mean() / 1e3,
                    "ttft_p99_ms": o.ttft_us.value_at_quantile(0.99) as f64 / 1e3,
                    "completed": o.completed,
                    "errors": o.errors,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "rate": rate, "seed": cli.seed, "results": rows })
        );
    }
    Ok(())
}

/// Starts the servers and a gateway routing over them; returns the gateway's address.
fn start(
    procs: &mut Procs,
    routing: Routing,
    replicas: u16,
    tollgate: &Path,
    mock: &Path,
) -> Result<SocketAddr, String> {
    let flags = SERVER.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let servers = (0..replicas)
        .map(|i| launch::mock(procs, &format!("gpu{i}"), mock, &flags))
        .collect::<Result<Vec<_>, _>>()?;
    let gateway = launch::tollgate(procs, "tollgate", tollgate, 2, &routing.config(&servers))?;
    // A first scrape of every server before the load starts.
    std::thread::sleep(Duration::from_millis(300));
    Ok(gateway.listen)
}

fn table(results: &[(Routing, Outcome)]) -> String {
    let mut out = format!(
        "{:<14}{:>10}{:>14}{:>14}{:>14}{:>10}{:>8}\n",
        "strategy", "req/s", "ttft mean ms", "ttft p99 ms", "total p99 ms", "done", "errors"
    );
    for (routing, o) in results {
        out += &format!(
            "{:<14}{:>10.1}{:>14.1}{:>14.1}{:>14.1}{:>10}{:>8}\n",
            routing.name(),
            o.throughput(),
            o.ttft_us.mean() / 1e3,
            o.ttft_us.value_at_quantile(0.99) as f64 / 1e3,
            o.total_us.value_at_quantile(0.99) as f64 / 1e3,
            o.completed,
            o.errors
        );
    }
    let base = &results[0].1;
    for (routing, o) in &results[1..] {
        out += &format!(
            "{}/round-robin  ttft mean {:.2}x  ttft p99 {:.2}x  req/s {:.2}x\n",
            routing.name(),
            o.ttft_us.mean() / base.ttft_us.mean().max(1.0),
            o.ttft_us.value_at_quantile(0.99) as f64
                / (base.ttft_us.value_at_quantile(0.99) as f64).max(1.0),
            o.throughput() / base.throughput().max(1e-9)
        );
    }
    out
}
