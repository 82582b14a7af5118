//! `proxy-bench`: the same load against a mock provider directly, through a bare Pingora
//! proxy, through Tollgate with everything on, and through any peers asked for, in one run,
//! so the tables show what Tollgate adds on top of Pingora itself. Each scenario runs closed
//! loop (maximum throughput), then open loop at half of Tollgate's maximum (added latency).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{value_parser, Parser, ValueEnum};
use http::Uri;
use serde_json::{json, Map};
use tokio::runtime::Runtime;
use tollgate_benches::cpus::{self, CpuSet, Placement};
use tollgate_benches::launch::{self, PROVIDER_MODEL, PUBLIC_MODEL};
use tollgate_benches::load::{self, Spec};
use tollgate_benches::openloop;
use tollgate_benches::peers::Peer;
use tollgate_benches::procs::{accepts_tcp, free_port, Procs};
use tollgate_benches::report::{Added, Comparison, OpenLoop, OpenRow, Row};
use tollgate_benches::scenario::Scenario;

const WARMUP: Duration = Duration::from_secs(1);
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The goals, checked at the end of a run.
const THROUGHPUT_GOAL: f64 = 0.90;
const ADDED_P99_GOAL_US: i64 = 300;
const ADDED_TTFT_P99_GOAL_US: i64 = 1_000;
const ADDED_CHUNK_P99_GOAL_US: i64 = 50;

#[derive(Parser)]
#[command(
    name = "proxy-bench",
    about = "Side-by-side load: mock provider direct, via bare Pingora, via Tollgate (and peers)"
)]
struct Cli {
    /// Scenario to run.
    #[arg(long, value_enum, default_value_t = Which::All)]
    scenario: Which,
    /// Keep-alive connections per path: closed-loop workers, and the most requests in flight
    /// open loop.
    #[arg(long, default_value_t = 16, value_parser = value_parser!(u16).range(1..))]
    connections: u16,
    /// Measured seconds per path and phase, after a 1 s warm-up.
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..))]
    duration: u64,
    /// Worker threads of each proxy, the same for all so the comparison is fair.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u16).range(1..))]
    threads: u16,
    /// Worker threads of the mock provider.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u16).range(1..))]
    mock_threads: u16,
    /// Worker threads of the in-process load generator.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u16).range(1..))]
    client_threads: u16,
    /// Open-loop arrival rate, as a fraction of Tollgate's closed-loop rate.
    #[arg(long, default_value_t = 0.5, value_parser = fraction)]
    open_load: f64,
    /// Skip the open-loop phase (added latency at half of Tollgate's maximum throughput).
    #[arg(long)]
    no_open_loop: bool,
    /// Seed of the open-loop arrivals.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Let every process run on every CPU, instead of the proxies on their own CPUs
    /// (one per proxy thread) and the mock and load generator on the rest.
    #[arg(long)]
    no_pin: bool,
    /// Also measure these proxies, when installed (repeatable).
    #[arg(long = "with", value_enum)]
    peers: Vec<Peer>,
    /// Also measure Tollgate with the answer cache on (`tollgate+cache`): after the warm-up
    /// every request is a hit.
    #[arg(long)]
    cache: bool,
    /// Also print a one-line JSON summary.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Which {
    Small,
    Large,
    Stream,
    All,
}

impl Which {
    fn scenarios(self) -> Vec<Scenario> {
        match self {
            Which::Small => vec![Scenario::Small],
            Which::Large => vec![Scenario::Large],
            Which::Stream => vec![Scenario::Stream],
            Which::All => Scenario::ALL.to_vec(),
        }
    }
}

/// One way to the mock, and the model name it takes.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    model: &'static str,
}

/// A scenario's results, kept for the goals.
struct Measured {
    scenario: Scenario,
    closed: Comparison,
    open: Option<OpenLoop>,
}

fn main() -> ExitCode {
    match run(&Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxy-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let [tollgate, mock, bare] = launch::binaries(["tollgate", "tollgate-mock", "bare-proxy"])?;
    let placement = if cli.no_pin {
        None
    } else {
        Placement::split(&cpus::allowed(), usize::from(cli.threads))
    };
    if let Some(placement) = &placement {
        // The load generator's runtime threads, created below, inherit this.
        CpuSet::of(&placement.load)
            .pin_current()
            .map_err(|e| format!("pinning the load generator: {e}"))?;
        eprintln!(
            "proxies on CPUs {:?}; mock and load generator on CPUs {:?}",
            placement.proxy, placement.load
        );
    }
    // Declared before anything can fail, so every started child is killed on the way out.
    let mut procs = Procs::new()?;
    let targets = start(
        &mut procs,
        cli,
        placement.as_ref(),
        [&tollgate, &mock, &bare],
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(cli.client_threads))
        .enable_all()
        .build()
        .map_err(|e| format!("starting the load generator's runtime: {e}"))?;

    let mut summary = Map::new();
    let mut results = Vec::new();
    for scenario in cli.scenario.scenarios() {
        let measured = measure_scenario(&runtime, scenario, &targets, cli)?;
        let mut entry = json!({ "closed_loop": measured.closed.json() });
        if let Some(open) = &measured.open {
            entry["open_loop"] = open.json();
        }
        summary.insert(scenario.name().to_owned(), entry);
        results.push(measured);
    }
    println!("{}", goals(&results));
    if cli.json {
        let line = json!({
            "connections": cli.connections,
            "duration_s": cli.duration,
            "threads": cli.threads,
            "scenarios": summary,
        });
        println!("{line}");
    }
    Ok(())
}

fn measure_scenario(
    runtime: &Runtime,
    scenario: Scenario,
    targets: &[Target],
    cli: &Cli,
) -> Result<Measured, String> {
    let mut paths = Vec::new();
    for target in targets {
        paths.push((
            target.name,
            runtime.block_on(closed(scenario, target, cli))?,
        ));
    }
    let closed = Comparison { paths };
    println!(
        "{}",
        closed.table(&format!(
            "== {}: {} | closed loop, {} connections, {} s per path, proxy threads {} ==",
            scenario.name(),
            scenario.describe(),
            cli.connections,
            cli.duration,
            cli.threads
        ))
    );
    let rate = closed.tollgate_rps().unwrap_or(0.0) * cli.open_load;
    if cli.no_open_loop || rate < 1.0 {
        return Ok(Measured {
            scenario,
            closed,
            open: None,
        });
    }
    let schedule = openloop::arrivals(rate, WARMUP + Duration::from_secs(cli.duration), cli.seed);
    let (mut paths, mut skipped) = (Vec::new(), Vec::new());
    for target in targets {
        // A path that cannot keep up would only queue for the whole run.
        if closed.rps(target.name).is_some_and(|max| max < rate) {
            skipped.push(target.name);
            continue;
        }
        eprintln!("open loop: {} via {} ...", scenario.name(), target.name);
        let uri = chat_uri(target.addr)?;
        let body = scenario.body(target.model);
        let connections = usize::from(cli.connections);
        let client = load::client(connections);
        let outcome = runtime.block_on(openloop::run(
            &client,
            &uri,
            &schedule,
            WARMUP,
            connections,
            |_| body.clone(),
        ));
        paths.push((target.name, OpenRow::new(&outcome)));
    }
    let open = OpenLoop {
        rate,
        stream: scenario == Scenario::Stream,
        paths,
        skipped,
    };
    println!(
        "{}",
        open.table(&format!(
            "== {}: open loop at {rate:.0} req/s ({:.0}% of Tollgate's closed-loop rate), {} s per path ==",
            scenario.name(),
            cli.open_load * 100.0,
            cli.duration
        ))
    );
    Ok(Measured {
        scenario,
        closed,
        open: Some(open),
    })
}

/// Starts the mock, the bare proxy, Tollgate and the peers, each answering before the next
/// starts.
fn start(
    procs: &mut Procs,
    cli: &Cli,
    placement: Option<&Placement>,
    [tollgate, mock, bare]: [&Path; 3],
) -> Result<Vec<Target>, String> {
    let threads = cli.threads.to_string();
    let mock_threads = cli.mock_threads.to_string();
    procs.set_cpus(placement.map(|p| p.load.as_slice()));
    // Stamped chunks give the per-chunk transit time on every path alike.
    let direct = launch::mock(
        procs,
        "mock",
        mock,
        &[
            "--kind",
            "openai",
            "--threads",
            &mock_threads,
            "--no-record",
            "--stamp-chunks",
        ],
    )?;

    procs.set_cpus(placement.map(|p| p.proxy.as_slice()));
    let bare_addr = launch::local(free_port()?);
    let (bare_listen, upstream) = (bare_addr.to_string(), direct.to_string());
    procs.spawn(
        "bare-proxy",
        bare,
        &[
            "--listen",
            &bare_listen,
            "--upstream",
            &upstream,
            "--threads",
            &threads,
        ],
    )?;
    procs.wait_until("bare-proxy", START_TIMEOUT, || {
        accepts_tcp(bare_addr).then_some(())
    })?;

    let body = launch::everything_on(procs, direct);
    let gateway = launch::tollgate(procs, "tollgate", tollgate, cli.threads, &body)?;
    let mut targets = vec![
        Target {
            name: "direct",
            addr: direct,
            model: PROVIDER_MODEL,
        },
        Target {
            name: "bare",
            addr: bare_addr,
            model: PROVIDER_MODEL,
        },
        Target {
            name: "tollgate",
            addr: gateway.listen,
            model: PUBLIC_MODEL,
        },
    ];
    if cli.cache {
        let cached = launch::tollgate(
            procs,
            "tollgate-cache",
            tollgate,
            cli.threads,
            &launch::with_cache(&body),
        )?;
        targets.push(Target {
            name: "tollgate+cache",
            addr: cached.listen,
            model: PUBLIC_MODEL,
        });
    }
    for peer in &cli.peers {
        let addr = peer.start(procs, direct, cli.threads)?;
        targets.push(Target {
            name: peer.name(),
            addr,
            model: peer.model(),
        });
    }
    Ok(targets)
}

fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("{text} is not a fraction in (0, 1]")),
    }
}

fn chat_uri(addr: SocketAddr) -> Result<Uri, String> {
    format!("http://{addr}/v1/chat/completions")
        .parse()
        .map_err(|e| format!("bad URI for {addr}: {e}"))
}

/// Checks that the path really answers, then measures it closed loop.
async fn closed(scenario: Scenario, target: &Target, cli: &Cli) -> Result<Row, String> {
    let uri = chat_uri(target.addr)?;
    let body = scenario.body(target.model);
    let client = load::client(usize::from(cli.connections));
    let (status, answer) = load::fetch(&client, &uri, body.clone()).await?;
    scenario
        .check(status, &answer)
        .map_err(|e| format!("{} failed the {} check: {e}", target.name, scenario.name()))?;
    eprintln!("closed loop: {} via {} ...", scenario.name(), target.name);
    let spec = Spec {
        uri,
        body,
        connections: usize::from(cli.connections),
        warmup: WARMUP,
        duration: Duration::from_secs(cli.duration),
    };
    let outcome = load::run(&client, &spec).await;
    Ok(Row::new(&outcome, spec.duration))
}

/// The goals against this run's figures.
fn goals(results: &[Measured]) -> String {
    let mut out = String::from("== goals, Tollgate with everything on ==\n");
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    for m in results {
        let name = m.scenario.name();
        if let Some(r) = m.closed.tollgate_over_bare_rps() {
            out += &format!(
                "{name:<7} throughput {r:.2}x bare (goal >= {THROUGHPUT_GOAL:.2}x): {}\n",
                verdict(r >= THROUGHPUT_GOAL)
            );
        }
        let Some(open) = &m.open else {
            continue;
        };
        // Over direct: the whole hop a client pays for; over bare: what Tollgate adds to a
        // Pingora proxy that only forwards.
        let (Some(direct), Some(bare)) = (open.added_over("direct"), open.added_over("bare"))
        else {
            continue;
        };
        let mut check = |what: &str, pick: fn(&Added) -> Option<i64>, goal: i64| {
            if let (Some(d), Some(b)) = (pick(&direct), pick(&bare)) {
                out += &format!(
                    "{name:<7} {what} p99 added at half load (goal <= {goal} µs): \
                     {d:+} µs over direct, {}; {b:+} µs over bare, {}\n",
                    verdict(d <= goal),
                    verdict(b <= goal)
                );
            }
        };
        check("latency", |a| a.total_p99_us, ADDED_P99_GOAL_US);
        if open.stream {
            check(
                "time to first token",
                |a| a.ttft_p99_us,
                ADDED_TTFT_P99_GOAL_US,
            );
            check(
                "per-chunk latency",
                |a| a.chunk_p99_us,
                ADDED_CHUNK_P99_GOAL_US,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_judge_throughput_and_what_is_added_over_both_baselines() {
        use tollgate_benches::report::Percentiles;
        let row = |rps| Row {
            rps,
            p50_us: Some(500),
            p90_us: Some(600),
            p99_us: Some(900),
            p999_us: Some(1_000),
            errors: 0,
        };
        let open_row = |p99, ttft, chunk| {
            let p = |v| Percentiles {
                p50: Some(v / 2),
                p99: Some(v),
                p999: Some(v),
            };
            OpenRow {
                total: p(p99),
                ttft: p(ttft),
                chunk: p(chunk),
                completed: 10,
                errors: 0,
            }
        };
        let stream = Measured {
            scenario: Scenario::Stream,
            closed: Comparison {
                paths: vec![
                    ("direct", row(300.0)),
                    ("bare", row(200.0)),
                    ("tollgate", row(190.0)),
                ],
            },
            open: Some(OpenLoop {
                rate: 95.0,
                stream: true,
                paths: vec![
                    ("direct", open_row(1_000, 500, 100)),
                    ("bare", open_row(1_400, 900, 130)),
                    ("tollgate", open_row(1_600, 1_000, 170)),
                ],
                skipped: Vec::new(),
            }),
        };
        let text = goals(&[stream]);
        assert!(
            text.contains("stream  throughput 0.95x bare (goal >= 0.90x): met"),
            "{text}"
        );
        assert!(text.contains("latency p99 added at half load (goal <= 300 µs): +600 µs over direct, MISSED; +200 µs over bare, met"), "{text}");
        assert!(text.contains("time to first token p99 added at half load (goal <= 1000 µs): +500 µs over direct, met; +100 µs over bare, met"), "{text}");
        assert!(text.contains("per-chunk latency p99 added at half load (goal <= 50 µs): +70 µs over direct, MISSED; +40 µs over bare, met"), "{text}");
    }

    #[test]
    fn all_means_every_scenario_in_order() {
        assert_eq!(Which::All.scenarios(), Scenario::ALL);
        assert_eq!(Which::Large.scenarios(), [Scenario::Large]);
    }
}
