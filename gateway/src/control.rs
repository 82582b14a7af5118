//! The control plane: hot reload (file change, SIGHUP, `POST /admin/reload`) through one
//! `ArcSwap<Runtime>`, periodic DNS refresh, and the drain once SIGTERM arrives.

use crate::config::{self, ConfigError, Runtime};
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::pipeline::Extensions;
use crate::providers::Provider;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// How often the config file is checked for changes (contract: picked up within 2 s).
const FILE_POLL: Duration = Duration::from_millis(500);
/// How often host names of endpoints are resolved again.
const DNS_REFRESH: Duration = Duration::from_secs(30);
/// How often discovered pools are checked for being due (each has its own `every`).
const DISCOVERY_TICK: Duration = Duration::from_millis(100);

pub struct Control {
    path: PathBuf,
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    /// Serializes reloads and remembers the file version last loaded.
    last_stamp: tokio::sync::Mutex<Option<FileStamp>>,
    drain: Arc<Drain>,
    /// A custom build's plugins, whose sections a reload must satisfy too.
    extensions: Extensions,
}

/// Identifies one version of the config file, following symlinks, so both in-place writes
/// and atomic renames (Kubernetes ConfigMap symlink swaps) are noticed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        })
    }
}

impl Control {
    pub fn new(
        path: PathBuf,
        runtime: Arc<ArcSwap<Runtime>>,
        metrics: Arc<Metrics>,
        drain: Arc<Drain>,
        extensions: Extensions,
    ) -> Control {
        let stamp = FileStamp::of(&path);
        Control {
            path,
            runtime,
            metrics,
            last_stamp: tokio::sync::Mutex::new(stamp),
            drain,
            extensions,
        }
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_draining()
    }

    /// Loads and validates the file, then swaps it in; on error the running config stays.
    pub async fn reload(&self, trigger: &str) -> Result<(), ConfigError> {
        let mut last_stamp = self.last_stamp.lock().await;
        *last_stamp = FileStamp::of(&self.path);
        let old = self.runtime.load_full();
        let result = config::load(&self.path, Some(&old)).and_then(|mut new| {
            for (what, changed) in [
                ("server.listen", new.server.listen != old.server.listen),
                (
                    "server.admin_listen",
                    new.server.admin_listen != old.server.admin_listen,
                ),
                ("server.threads", new.server.threads != old.server.threads),
                ("plugins.ledger", new.ledger != old.ledger),
                (
                    "plugins.cache (its store)",
                    new.cache.map(|c| (c.max_bytes, c.shared))
                        != old.cache.map(|c| (c.max_bytes, c.shared)),
                ),
                ("plugins.shared_state", new.shared_state != old.shared_state),
            ] {
                if changed {
                    log::warn!("config reload: {what} changed; it takes effect on restart");
                }
            }
            new.succeed(&old, &self.path.display().to_string())?;
            self.extensions.check(&new)?;
            Ok(new)
        });
        match result {
            Ok(new) => {
                resolve_endpoints(&new).await;
                for warning in &new.warnings {
                    log::warn!("{warning}");
                }
                self.runtime.store(Arc::new(new));
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                log::info!("config reloaded ({trigger}) from {}", self.path.display());
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                log::error!("config reload ({trigger}) rejected, keeping the running config: {e}");
                Err(e)
            }
        }
    }

    async fn file_changed(&self) -> bool {
        let current = FileStamp::of(&self.path);
        current.is_some() && *self.last_stamp.lock().await != current
    }
}

/// Resolves every endpoint host name and runs every pool's discovery; failures are logged and
/// the previous addresses kept.
pub async fn resolve_endpoints(rt: &Runtime) {
    for provider in &rt.providers {
        discover(provider).await;
        for endpoint in provider.pool.endpoints().iter().filter(|e| e.needs_dns()) {
            if let Err(e) = endpoint.resolve().await {
                log::warn!("provider {}: {e}", provider.name);
            }
        }
    }
}

async fn discover(provider: &Provider) {
    let before = provider.pool.endpoints().len();
    match provider.pool.discover().await {
        Ok(()) => {
            let now: Vec<String> = provider
                .pool
                .endpoints()
                .iter()
                .map(|e| e.label.clone())
                .collect();
            if now.len() != before {
                log::info!("provider {}: discovered {}", provider.name, now.join(", "));
            }
        }
        Err(e) => log::warn!(
            "provider {}: discovery kept the previous endpoints: {e}",
            provider.name
        ),
    }
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot handle SIGHUP, reload by file or admin API only: {e}");
                None
            }
        };
        let mut poll = tokio::time::interval(FILE_POLL);
        let mut dns = tokio::time::interval(DNS_REFRESH);
        dns.tick().await;
        let mut discovery_tick = tokio::time::interval(DISCOVERY_TICK);
        // When each discovered pool is next due, keyed by pool identity.
        let mut discovery_due: HashMap<usize, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        self.drain.run().await;
                        return;
                    }
                }
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    let _ = self.reload("SIGHUP").await;
                }
                _ = poll.tick() => {
                    if self.file_changed().await {
                        let _ = self.reload("file change").await;
                    }
                }
                _ = dns.tick() => resolve_endpoints(&self.runtime.load()).await,
                _ = discovery_tick.tick() => {
                    let runtime = self.runtime.load_full();
                    let now = Instant::now();
                    let mut live = HashMap::new();
                    for provider in &runtime.providers {
                        let Some(d) = &provider.pool.discovery else { continue };
                        let key = Arc::as_ptr(&provider.pool) as usize;
                        let due = discovery_due.get(&key).copied().unwrap_or(now + d.every);
                        if due <= now {
                            discover(provider).await;
                            live.insert(key, now + d.every);
                        } else {
                            live.insert(key, due);
                        }
                    }
                    discovery_due = live;
                }
            }
        }
    }
}
