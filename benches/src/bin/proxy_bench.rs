//! `proxy-bench`: the same closed-loop load against a mock provider directly, through a bare
//! Pingora proxy and through Tollgate, in one run, so the tables show what Tollgate adds on
//! top of Pingora itself.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{value_parser, Parser, ValueEnum};
use http::Uri;
use serde_json::{json, Map};
use tollgate_benches::load::{self, Spec, BENCH_KEY};
use tollgate_benches::procs::{accepts_tcp, find_listen_addr, free_port, get_is_ok, Procs};
use tollgate_benches::report::{Comparison, Row};
use tollgate_benches::scenario::Scenario;

const BUILD_HINT: &str = "cargo build --release -p tollgate -p tollgate-mock -p tollgate-benches";
const WARMUP: Duration = Duration::from_secs(1);
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The name clients use at Tollgate, and the provider's name it maps to; the other two
/// paths send the provider's name, so the mock sees the same request on every path.
const PUBLIC_MODEL: &str = "bench-model";
const PROVIDER_MODEL: &str = "mock-gpt";

#[derive(Parser)]
#[command(
    name = "proxy-bench",
    about = "Side-by-side load: mock provider direct, via bare Pingora, via Tollgate"
)]
struct Cli {
    /// Scenario to run.
    #[arg(long, value_enum, default_value_t = Which::All)]
    scenario: Which,
    /// Concurrent closed-loop workers, each on its own keep-alive connection.
    #[arg(long, default_value_t = 16, value_parser = value_parser!(u16).range(1..))]
    connections: u16,
    /// Measured seconds per path and scenario, after a 1 s warm-up.
    #[arg(long, default_value_t = 10, value_parser = value_parser!(u64).range(1..))]
    duration: u64,
    /// Worker threads of each proxy, the same for both so the comparison is fair.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u16).range(1..))]
    threads: u16,
    /// Worker threads of the mock provider.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u16).range(1..))]
    mock_threads: u16,
    /// Worker threads of the in-process load generator.
    #[arg(long, default_value_t = 1, value_parser = value_parser!(u16).range(1..))]
    client_threads: u16,
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

struct Targets {
    direct: SocketAddr,
    bare: SocketAddr,
    tollgate: SocketAddr,
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
    let dir = std::env::current_exe()
        .map_err(|e| format!("locating this executable: {e}"))?
        .parent()
        .map(Path::to_path_buf)
        .ok_or("this executable has no parent folder")?;
    let [tollgate, mock, bare] = ["tollgate", "tollgate-mock", "bare-proxy"].map(|n| dir.join(n));
    for bin in [&tollgate, &mock, &bare] {
        if !bin.is_file() {
            return Err(format!(
                "{} is missing; build it first with:\n  {BUILD_HINT}",
                bin.display()
            ));
        }
    }

    // Declared before anything can fail, so every started child is killed on the way out.
    let mut procs = Procs::new()?;
    let targets = start(&mut procs, cli, [&tollgate, &mock, &bare])?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(cli.client_threads))
        .enable_all()
        .build()
        .map_err(|e| format!("starting the load generator's runtime: {e}"))?;

    let mut summary = Map::new();
    for scenario in cli.scenario.scenarios() {
        let comparison = runtime.block_on(compare(scenario, &targets, cli))?;
        let heading = format!(
            "== {}: {} | {} connections, {} s per path, proxy threads {} ==",
            scenario.name(),
            scenario.describe(),
            cli.connections,
            cli.duration,
            cli.threads
        );
        println!("{}", comparison.table(&heading));
        summary.insert(scenario.name().to_owned(), comparison.json());
    }
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

/// Starts the mock, the bare proxy and Tollgate, each answering before the next starts.
fn start(
    procs: &mut Procs,
    cli: &Cli,
    [tollgate, mock, bare]: [&Path; 3],
) -> Result<Targets, String> {
    let threads = cli.threads.to_string();
    let mock_threads = cli.mock_threads.to_string();
    procs.spawn(
        "mock",
        mock,
        &[
            "--listen",
            "127.0.0.1:0",
            "--kind",
            "openai",
            "--threads",
            &mock_threads,
            "--no-record",
        ],
    )?;
    let mock_log = procs.log_path("mock");
    let direct = procs.wait_until("mock", START_TIMEOUT, || {
        find_listen_addr(&fs::read_to_string(&mock_log).ok()?)
    })?;

    let bare_addr = local(free_port()?);
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

    let (gateway, admin) = (local(free_port()?), local(free_port()?));
    let config = procs.dir().join("tollgate.yaml");
    let ledger = procs.dir().join("usage.db");
    fs::write(
        &config,
        tollgate_config(gateway, admin, direct, cli.threads, &ledger),
    )
    .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let config = config
        .to_str()
        .ok_or("the scratch folder's path is not UTF-8")?;
    procs.spawn("tollgate", tollgate, &["serve", "--config", config])?;
    procs.wait_until("tollgate", START_TIMEOUT, || {
        get_is_ok(admin, "/healthz").then_some(())
    })?;

    Ok(Targets {
        direct,
        bare: bare_addr,
        tollgate: gateway,
    })
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Tollgate with everything on, as a platform team runs it: a virtual key with rate limits
/// and a budget (both far above what the run uses, so every request does the full admission
/// and settle), its team's limits, metering, the SQLite ledger and metrics.
fn tollgate_config(
    listen: SocketAddr,
    admin: SocketAddr,
    mock: SocketAddr,
    threads: u16,
    ledger: &Path,
) -> String {
    format!(
        "server:
  listen: [\"{listen}\"]
  admin_listen: \"{admin}\"
  threads: {threads}
providers:
  - {{ name: mock, kind: openai, base_url: \"http://{mock}\" }}
models:
  - name: {PUBLIC_MODEL}
    targets: [{{ provider: mock, model: {PROVIDER_MODEL} }}]
keys:
  - {{ id: bench, key: {BENCH_KEY}, team: bench, limits: {{ rpm: 1000000000, tpm: 1000000000000 }}, budget: {{ usd_per_day: 1000000000 }} }}
teams:
  bench: {{ limits: {{ rpm: 1000000000 }}, budget: {{ usd_per_month: 1000000000 }} }}
plugins:
  ledger: {{ path: \"{}\" }}
",
        ledger.display()
    )
}

async fn compare(scenario: Scenario, targets: &Targets, cli: &Cli) -> Result<Comparison, String> {
    Ok(Comparison {
        direct: measure(scenario, "direct", targets.direct, PROVIDER_MODEL, cli).await?,
        bare: measure(scenario, "bare", targets.bare, PROVIDER_MODEL, cli).await?,
        tollgate: measure(scenario, "tollgate", targets.tollgate, PUBLIC_MODEL, cli).await?,
    })
}

/// Checks that the path really answers, then measures it.
async fn measure(
    scenario: Scenario,
    label: &str,
    addr: SocketAddr,
    model: &str,
    cli: &Cli,
) -> Result<Row, String> {
    let uri: Uri = format!("http://{addr}/v1/chat/completions")
        .parse()
        .map_err(|e| format!("bad URI for {addr}: {e}"))?;
    let body = scenario.body(model);
    let client = load::client(usize::from(cli.connections));
    let (status, answer) = load::fetch(&client, &uri, body.clone()).await?;
    scenario
        .check(status, &answer)
        .map_err(|e| format!("{label} failed the {} check: {e}", scenario.name()))?;
    eprintln!("measuring {} via {label} ...", scenario.name());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_routes_the_public_model_to_the_mock() {
        let yaml = tollgate_config(
            local(8080),
            local(9090),
            local(7070),
            2,
            Path::new("/tmp/u.db"),
        );
        assert!(yaml.contains("listen: [\"127.0.0.1:8080\"]"), "{yaml}");
        // Everything on: the key the load sends, its limits and budget, the ledger.
        assert!(yaml.contains(&format!("key: {BENCH_KEY}")));
        assert!(yaml.contains("limits:") && yaml.contains("budget:"));
        assert!(yaml.contains("ledger: { path: \"/tmp/u.db\" }"));
        assert!(yaml.contains("admin_listen: \"127.0.0.1:9090\""));
        assert!(yaml.contains("threads: 2"));
        assert!(yaml.contains("base_url: \"http://127.0.0.1:7070\""));
        assert!(yaml.contains("- name: bench-model"));
        assert!(yaml.contains("model: mock-gpt }]"));
    }

    #[test]
    fn all_means_every_scenario_in_order() {
        assert_eq!(Which::All.scenarios(), Scenario::ALL);
        assert_eq!(Which::Large.scenarios(), [Scenario::Large]);
    }
}
