//! Starting the processes under test: the mock provider and Tollgate, found beside the
//! running benchmark binary, each answering before the caller goes on.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::load::BENCH_KEY;
use crate::procs::{find_listen_addr, free_port, get_is_ok, Procs};

pub const BUILD_HINT: &str =
    "cargo build --release -p tollgate -p tollgate-mock -p tollgate-benches";
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The name clients use at Tollgate, and the provider's name it maps to; paths that skip
/// Tollgate send the provider's name, so the mock sees the same request on every path.
pub const PUBLIC_MODEL: &str = "bench-model";
pub const PROVIDER_MODEL: &str = "mock-gpt";

/// The named binaries from this executable's folder, or how to build them.
pub fn binaries<const N: usize>(names: [&str; N]) -> Result<[PathBuf; N], String> {
    let dir = std::env::current_exe()
        .map_err(|e| format!("locating this executable: {e}"))?
        .parent()
        .map(Path::to_path_buf)
        .ok_or("this executable has no parent folder")?;
    let bins = names.map(|name| dir.join(name));
    match bins.iter().find(|bin| !bin.is_file()) {
        Some(missing) => Err(format!(
            "{} is missing; build it first with:\n  {BUILD_HINT}",
            missing.display()
        )),
        None => Ok(bins),
    }
}

/// Starts `tollgate-mock` on an ephemeral loopback port; returns its address.
pub fn mock(
    procs: &mut Procs,
    name: &str,
    bin: &Path,
    flags: &[&str],
) -> Result<SocketAddr, String> {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    procs.spawn(name, bin, &args)?;
    let log = procs.log_path(name);
    procs.wait_until(name, START_TIMEOUT, || {
        find_listen_addr(&fs::read_to_string(&log).ok()?)
    })
}

/// A running Tollgate's data-plane and admin addresses.
#[derive(Clone, Copy, Debug)]
pub struct Gateway {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// Starts Tollgate (child `name`, its config in `name.yaml`) with `threads` workers and
/// `body`: the config after its `server:` section.
pub fn tollgate(
    procs: &mut Procs,
    name: &'static str,
    bin: &Path,
    threads: u16,
    body: &str,
) -> Result<Gateway, String> {
    let gateway = Gateway {
        listen: local(free_port()?),
        admin: local(free_port()?),
    };
    let config = procs.dir().join(format!("{name}.yaml"));
    fs::write(
        &config,
        format!(
            "server:\n  listen: [\"{}\"]\n  admin_listen: \"{}\"\n  threads: {threads}\n{body}",
            gateway.listen, gateway.admin
        ),
    )
    .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let config = config
        .to_str()
        .ok_or("the scratch folder's path is not UTF-8")?;
    procs.spawn(name, bin, &["serve", "--config", config])?;
    procs.wait_until(name, START_TIMEOUT, || {
        get_is_ok(gateway.admin, "/healthz").then_some(())
    })?;
    Ok(gateway)
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Tollgate with everything on, as a platform team runs it: a virtual key with rate limits
/// and a budget (both far above what a run uses, so every request does the full admission
/// and settle), its team's limits, metering, the SQLite ledger (in `procs`' folder) and
/// metrics, all in front of `mock`.
pub fn everything_on(procs: &Procs, mock: SocketAddr) -> String {
    format!(
        "providers:
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
        procs.dir().join("usage.db").display()
    )
}

/// `everything_on`'s config with the answer cache on too, one tenant, and a ledger of its
/// own.
pub fn with_cache(everything_on: &str) -> String {
    everything_on
        .replacen("plugins:\n", "plugins:\n  cache: { scope: global }\n", 1)
        .replacen("usage.db", "usage-cache.db", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_on_routes_the_public_model_to_the_mock_with_every_plugin() {
        let procs = Procs::new().unwrap();
        let yaml = everything_on(&procs, local(7070));
        assert!(yaml.contains(&format!("key: {BENCH_KEY}")));
        assert!(yaml.contains("limits:") && yaml.contains("budget:"));
        let ledger = procs.dir().join("usage.db");
        assert!(yaml.contains(&format!("ledger: {{ path: \"{}\" }}", ledger.display())));
        assert!(yaml.contains("base_url: \"http://127.0.0.1:7070\""));
        assert!(yaml.contains("- name: bench-model"));
        assert!(yaml.contains("model: mock-gpt }]"));
    }

    #[test]
    fn with_cache_adds_the_cache_to_the_plugins() {
        let procs = Procs::new().unwrap();
        let yaml = with_cache(&everything_on(&procs, local(7070)));
        assert!(yaml.contains("plugins:\n  cache: { scope: global }\n  ledger:"));
    }

    #[test]
    fn names_the_build_command_for_a_missing_binary() {
        let err = binaries(["no-such-binary"]).unwrap_err();
        assert!(
            err.contains("no-such-binary") && err.contains(BUILD_HINT),
            "{err}"
        );
    }
}
