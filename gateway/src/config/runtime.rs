//! The validated runtime model: everything a request needs, resolved and checked once per
//! (re)load, so the hot path never parses or validates config.

use super::file::{
    BudgetSection, FileConfig, KeySection, LedgerSection, LimitsSection, ModelSection,
    ProviderSection, ServerSection, SharedStateSection,
};
use super::units::format_duration;
use super::ConfigError;
use crate::catalog::{Catalog, ModelFacts, Prices, Tokenizer};
use crate::providers::triton::PromptTemplate;
use crate::providers::{HealthCheck, LoadMetrics, Provider, ProviderKind, Timeouts};
use crate::router::context::ContextPolicy;
use crate::router::geo::{resident, Geo};
use crate::router::gpu::Scoring;
use crate::router::rules::Rule;
use crate::router::weighted::SmoothWeighted;
use crate::router::{Model, RetryOn, RetryPolicy, Strategy, Target};
use crate::secret::Secret;
use crate::upstream::pool::Discovery;
use crate::upstream::state::OutlierPolicy;
use crate::upstream::{Endpoint, Pool};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tollgate_plugins::ledger::LedgerConfig;
use tollgate_plugins::limits::{FailurePolicy, Quota};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Envoy's default panic threshold: half the healthy endpoints ejected.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 0.5;
/// A client that takes longer than this to read one write has stopped reading.
pub const DEFAULT_CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that takes longer than this to send the next piece of its body has stalled.
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// A new connection silent this long is closed: Pingora's own limit for reading a request
/// head.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);
const DEFAULT_BACKOFF: Duration = Duration::from_millis(10);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_millis(500);

pub struct Runtime {
    pub source: PathBuf,
    pub loaded_at: SystemTime,
    pub server: ServerSettings,
    pub providers: Vec<Arc<Provider>>,
    /// In file order, for listings.
    pub models: Vec<Arc<Model>>,
    model_index: HashMap<String, usize>,
    /// `None`: no keys configured, the data plane is open.
    pub keys: Option<KeyTable>,
    /// `plugins.access_log`: one JSON line per request.
    pub access_log: bool,
    /// The other sections under `plugins:`, in file order: plugins a custom build adds.
    pub plugin_sections: Vec<(String, serde_yaml::Value)>,
    /// Opened once at startup: a change takes effect on restart.
    pub ledger: Option<LedgerConfig>,
    /// Limits and budgets of each team that has any.
    pub teams: HashMap<String, Quota>,
    /// Connected once at startup: a change takes effect on restart.
    pub shared_state: Option<SharedState>,
    pub geo: Geo,
    /// Things that load but look wrong (a target outside its model's residency, say).
    pub warnings: Vec<String>,
}

/// Limits and budgets kept in Redis, shared by every replica.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedState {
    /// May hold a password.
    pub redis: Secret,
    pub on_error: FailurePolicy,
    pub timeout: Duration,
}

pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    pub region: Option<String>,
    pub threads: usize,
    pub max_body_bytes: u64,
    pub shutdown_grace: Duration,
    /// How long one write to a client may wait for it to read: a client that stops reading
    /// frees its upstream, its place in flight and its reservations.
    pub client_write_timeout: Duration,
    /// How long the gateway waits for the next piece of a request body (408 after).
    pub client_body_timeout: Duration,
    /// How long a new connection may take to send its first bytes.
    pub client_idle_timeout: Duration,
    /// Whether the listeners also take cleartext HTTP/2 from clients that know to send it.
    pub h2c: bool,
    /// The file says the data plane is open (no keys) on purpose.
    pub open_data_plane: bool,
    /// The file says the admin API needs no token on purpose.
    pub open_admin: bool,
}

pub struct Key {
    pub id: String,
    pub team: Option<String>,
    pub project: Option<String>,
    /// `None`: every model.
    pub models: Option<HashSet<String>>,
    /// Regions this key's traffic may never leave.
    pub residency: Option<Vec<String>>,
    /// Its own limits and budgets.
    pub quota: Option<Quota>,
}

impl Key {
    pub fn allows(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(model))
    }
}

pub struct KeyTable {
    by_hash: HashMap<[u8; 32], Arc<Key>>,
}

impl KeyTable {
    pub fn find(&self, presented: &str) -> Option<&Arc<Key>> {
        self.by_hash.get(&sha256(presented.as_bytes()))
    }

    pub fn count(&self) -> usize {
        self.by_hash.len()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Runtime {
    /// Checks `self`, loaded from `file`, as the successor of the running config: a reload
    /// never opens the data plane or the admin API by accident (a truncated file, an unset
    /// variable), and the listeners stay the ones bound at start.
    pub fn succeed(&mut self, running: &Runtime, file: &str) -> Result<(), ConfigError> {
        let refuse = |path: &str, message: String| ConfigError {
            file: file.to_string(),
            path: path.to_string(),
            message,
        };
        if running.keys.is_some() && self.keys.is_none() && !self.server.open_data_plane {
            return Err(refuse(
                "keys",
                "the new config has no keys, which would let anyone use the data plane; \
                 set server.open_data_plane: true to do that on purpose"
                    .into(),
            ));
        }
        // Addresses take effect on restart: the admin API keeps the listener it has.
        self.server.listen = running.server.listen.clone();
        self.server.admin_listen = running.server.admin_listen;
        if self.server.admin_token.is_none() {
            if !self.server.admin_listen.ip().is_loopback() {
                return Err(refuse(
                    "server.admin_token",
                    format!(
                        "required: the admin API listens on {}, which is not a loopback address",
                        self.server.admin_listen
                    ),
                ));
            }
            if running.server.admin_token.is_some() && !self.server.open_admin {
                return Err(refuse(
                    "server.admin_token",
                    "the new config has no admin token, which would open the admin API; \
                     set server.open_admin: true to do that on purpose"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    pub fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.model_index.get(name).map(|&i| &self.models[i])
    }

    /// A human summary of what would run, for `tollgate check` and startup logs.
    pub fn summary(&self) -> String {
        let s = &self.server;
        let mut out = String::new();
        let listen: Vec<String> = s.listen.iter().map(|a| a.to_string()).collect();
        out += &format!(
            "server: listen {} · admin {}{} · threads {} · max body {} bytes · shutdown grace {}\n",
            listen.join(", "),
            s.admin_listen,
            if s.admin_token.is_some() {
                " (token required)"
            } else {
                ""
            },
            s.threads,
            s.max_body_bytes,
            format_duration(s.shutdown_grace),
        );
        out += &format!("providers ({}):\n", self.providers.len());
        for p in &self.providers {
            let mut endpoints: Vec<String> = p
                .pool
                .endpoints()
                .iter()
                .map(|e| {
                    format!(
                        "{}://{}{}",
                        if e.tls { "https" } else { "http" },
                        e.label,
                        e.prefix
                    )
                })
                .collect();
            if let Some(d) = &p.pool.discovery {
                endpoints.insert(
                    0,
                    format!(
                        "DNS {}:{} every {}",
                        d.name,
                        d.port,
                        format_duration(d.every)
                    ),
                );
            }
            out += &format!(
                "  {} [{}] {}{}\n",
                p.name,
                p.kind,
                endpoints.join(", "),
                if p.api_key.is_some() {
                    " · key set"
                } else {
                    ""
                }
            );
        }
        out += &format!("models ({}):\n", self.models.len());
        for m in &self.models {
            let targets: Vec<String> = m
                .targets
                .iter()
                .map(|t| format!("{}/{}", t.provider.name, t.model))
                .collect();
            out += &format!(
                "  {}: {} → {} · {} attempts on {}\n",
                m.name,
                m.strategy,
                targets.join(" → "),
                m.retry.attempts,
                m.retry.on.names().join(", ")
            );
        }
        match &self.keys {
            Some(keys) => out += &format!("keys: {}\n", keys.count()),
            None => out += "keys: none (the data plane accepts requests without a key)\n",
        }
        if self.keys.is_none() && !s.open_data_plane {
            out += "warning: no keys; a reload cannot drop every key unless the file sets server.open_data_plane: true\n";
        }
        for warning in &self.warnings {
            out += &format!("warning: {warning}\n");
        }
        let plugins = self.plugin_names();
        out += &format!(
            "plugins: {}\n",
            if plugins.is_empty() {
                "none".to_string()
            } else {
                plugins.join(", ")
            }
        );
        out
    }

    /// The optional per-request plugins the file turns on (the ledger and shared state are
    /// listed on their own).
    fn plugin_names(&self) -> Vec<&str> {
        let access_log = self.access_log.then_some("access_log");
        access_log
            .into_iter()
            .chain(self.plugin_sections.iter().map(|(name, _)| name.as_str()))
            .collect()
    }

    /// The running config as JSON for `/admin/config`, with every secret redacted.
    pub fn redacted_json(&self) -> Value {
        let s = &self.server;
        let redact = |set: bool| {
            if set {
                json!("***redacted***")
            } else {
                Value::Null
            }
        };
        json!({
            "source": self.source.display().to_string(),
            "server": {
                "listen": s.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                "admin_listen": s.admin_listen.to_string(),
                "admin_token": redact(s.admin_token.is_some()),
                "region": s.region,
                "threads": s.threads,
                "max_body_bytes": s.max_body_bytes,
                "shutdown_grace": format_duration(s.shutdown_grace),
                "client_write_timeout": format_duration(s.client_write_timeout),
                "client_body_timeout": format_duration(s.client_body_timeout),
                "client_idle_timeout": format_duration(s.client_idle_timeout),
                "h2c": s.h2c,
                "open_data_plane": s.open_data_plane,
                "open_admin": s.open_admin,
            },
            "providers": self.providers.iter().map(|p| json!({
                "name": p.name,
                "kind": p.kind.name(),
                "endpoints": p.pool.endpoints().iter().map(|e| json!({
                    "address": e.label,
                    "tls": e.tls,
                    "prefix": e.prefix,
                })).collect::<Vec<_>>(),
                "discovery": p.pool.discovery.as_ref().map(|d| json!({
                    "dns": format!("{}:{}", d.name, d.port),
                    "every": format_duration(d.every),
                    "scheme": if d.tls { "https" } else { "http" },
                })),
                "api_key": redact(p.api_key.is_some()),
                "api_version": p.api_version,
                "region": p.region,
                "timeouts": {
                    "connect": format_duration(p.timeouts.connect),
                    "first_token": format_duration(p.timeouts.first_token),
                    "idle": format_duration(p.timeouts.idle),
                    "total": format_duration(p.timeouts.total),
                },
                "outlier": {
                    "consecutive_failures": p.outlier.consecutive_failures,
                    "ejection": format_duration(p.outlier.base_ejection),
                    "max_ejection": format_duration(p.outlier.max_ejection),
                },
                "health_check": p.health_check.as_ref().map(|h| json!({
                    "path": h.path,
                    "every": format_duration(h.every),
                    "timeout": format_duration(h.timeout),
                    "unhealthy_after": h.unhealthy_after,
                    "healthy_after": h.healthy_after,
                })),
            })).collect::<Vec<_>>(),
            "models": self.models.iter().map(|m| json!({
                "name": m.name,
                "strategy": m.strategy.name(),
                "residency": m.residency,
                "targets": m.targets.iter().map(|t| json!({
                    "provider": t.provider.name, "model": t.model, "weight": t.weight,
                })).collect::<Vec<_>>(),
                "retry": {
                    "attempts": m.retry.attempts,
                    "on": m.retry.on.names(),
                    "backoff": format_duration(m.retry.backoff),
                    "max_backoff": format_duration(m.retry.max_backoff),
                },
            })).collect::<Vec<_>>(),
            "keys": self.keys.as_ref().map(|k| {
                let mut keys: Vec<&Arc<Key>> = k.by_hash.values().collect();
                keys.sort_by(|a, b| a.id.cmp(&b.id));
                keys.iter().map(|key| json!({
                    "id": key.id,
                    "team": key.team,
                    "project": key.project,
                    "models": key.models.as_ref().map(|m| {
                        let mut m: Vec<&String> = m.iter().collect();
                        m.sort();
                        m
                    }),
                    "quota": key.quota.as_ref().map(quota_json),
                })).collect::<Vec<_>>()
            }),
            "teams": self.teams.iter().map(|(name, q)| (name.clone(), quota_json(q))).collect::<serde_json::Map<_, _>>(),
            "shared_state": self.shared_state.as_ref().map(|s| json!({
                "redis": "***redacted***",
                "on_error": match s.on_error { FailurePolicy::Open => "fail_open", FailurePolicy::Closed => "fail_closed" },
                "timeout": format_duration(s.timeout),
            })),
            "plugins": self.plugin_names(),
        })
    }
}

/// Validation context: every error names the file and the key path.
struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            path: path.into(),
            message: message.into(),
        }
    }
}

pub fn build(
    file_name: &str,
    source: &Path,
    file: FileConfig,
    previous: Option<&Runtime>,
) -> Result<Runtime, ConfigError> {
    let cx = Ctx { file: file_name };
    let server = build_server(&cx, file.server)?;

    let mut providers: Vec<Arc<Provider>> = Vec::new();
    for (i, section) in file.providers.into_iter().enumerate() {
        let path = format!("providers[{i}]");
        if providers.iter().any(|p| p.name == section.name) {
            return Err(cx.err(
                format!("{path}.name"),
                format!("duplicate provider name {:?}", section.name),
            ));
        }
        providers.push(Arc::new(build_provider(&cx, &path, section, previous)?));
    }

    let mut catalog = Catalog::default();
    for (name, entry) in file.catalog {
        let at = format!("catalog.{name}");
        let base = catalog.get(&name).copied();
        let tokenizer = match entry.tokenizer.as_deref() {
            None => base.map_or(Tokenizer::Cl100k, |b| b.tokenizer),
            Some(t) => Tokenizer::parse(t).ok_or_else(|| {
                cx.err(
                    format!("{at}.tokenizer"),
                    format!("unknown tokenizer {t:?} (known: o200k_base, cl100k_base)"),
                )
            })?,
        };
        if entry.context_window == Some(0) {
            return Err(cx.err(format!("{at}.context_window"), "must be more than 0"));
        }
        let prices = match entry.price_per_mtok {
            Some(p) => {
                if [p.input, p.output, p.cached_input.unwrap_or(0.0)]
                    .iter()
                    .any(|v| !v.is_finite() || *v < 0.0)
                {
                    return Err(cx.err(
                        format!("{at}.price_per_mtok"),
                        "prices must be numbers >= 0",
                    ));
                }
                Some(Prices {
                    input: p.input,
                    cached_input: p.cached_input,
                    output: p.output,
                })
            }
            None => base.and_then(|b| b.prices),
        };
        catalog.insert(
            name,
            ModelFacts {
                context_window: entry.context_window.or(base.and_then(|b| b.context_window)),
                tokenizer,
                prices,
            },
        );
    }

    let mut models: Vec<Arc<Model>> = Vec::new();
    let mut model_index = HashMap::new();
    for (i, section) in file.models.into_iter().enumerate() {
        let path = format!("models[{i}]");
        if model_index.contains_key(&section.name) {
            return Err(cx.err(
                format!("{path}.name"),
                format!("duplicate model name {:?}", section.name),
            ));
        }
        let model = build_model(&cx, &path, section, &providers, &catalog)?;
        model_index.insert(model.name.clone(), models.len());
        models.push(Arc::new(model));
    }

    let keys = if file.keys.is_empty() {
        None
    } else {
        let mut by_hash = HashMap::new();
        let mut ids = HashSet::new();
        for (i, section) in file.keys.into_iter().enumerate() {
            let path = format!("keys[{i}]");
            if !ids.insert(section.id.clone()) {
                return Err(cx.err(
                    format!("{path}.id"),
                    format!("duplicate key id {:?}", section.id),
                ));
            }
            let (hash, key) = build_key(&cx, &path, section, &model_index)?;
            if by_hash.insert(hash, Arc::new(key)).is_some() {
                return Err(cx.err(path, "the same key appears twice"));
            }
        }
        Some(KeyTable { by_hash })
    };

    let mut warnings = Vec::new();
    for (i, model) in models.iter().enumerate() {
        if let Some(residency) = &model.residency {
            for (j, t) in model.targets.iter().enumerate() {
                if !resident(t.provider.region.as_deref(), residency) {
                    warnings.push(format!(
                        "{file_name}: models[{i}].targets[{j}]: provider {:?} ({}) is outside the model's residency [{}]; it will never be used",
                        t.provider.name,
                        t.provider.region.as_deref().unwrap_or("no region"),
                        residency.join(", ")
                    ));
                }
            }
        }
    }
    let mut ranges = Vec::new();
    for (cidr, region) in file.geo.client_regions {
        let net = cidr.parse::<ipnet::IpNet>().map_err(|_| {
            cx.err(
                format!("geo.client_regions.{cidr}"),
                "expected an address range such as 10.1.0.0/16",
            )
        })?;
        ranges.push((net, region));
    }
    let mut plugin_sections = Vec::new();
    for (name, section) in file.plugins.other {
        let Some(name) = name.as_str() else {
            return Err(cx.err("plugins", "expected plugin names as keys"));
        };
        plugin_sections.push((name.to_string(), section));
    }
    let geo = Geo::new(
        ranges,
        file.geo.nearest.into_iter().collect(),
        server.region.clone(),
    );

    let ledger = file
        .plugins
        .ledger
        .map(|l| build_ledger(&cx, l))
        .transpose()?;
    let shared_state = file
        .plugins
        .shared_state
        .map(|s| build_shared_state(&cx, s))
        .transpose()?;
    let mut teams = HashMap::new();
    for (name, team) in file.teams {
        let path = format!("teams.{name}");
        if let Some(quota) = build_quota(&cx, &path, team.limits, team.budget)? {
            teams.insert(name, quota);
        }
    }

    Ok(Runtime {
        source: source.to_path_buf(),
        loaded_at: SystemTime::now(),
        server,
        providers,
        models,
        model_index,
        keys,
        access_log: file.plugins.access_log == Some(true),
        plugin_sections,
        ledger,
        teams,
        shared_state,
        geo,
        warnings,
    })
}

fn quota_json(q: &Quota) -> serde_json::Value {
    json!({"rpm": q.rpm, "tpm": q.tpm, "usd_per_day": q.usd_per_day, "usd_per_month": q.usd_per_month})
}

/// How long one Redis call may take unless the config says.
const DEFAULT_SHARED_STATE_TIMEOUT: Duration = Duration::from_millis(250);

fn build_shared_state(cx: &Ctx, s: SharedStateSection) -> Result<SharedState, ConfigError> {
    if !(s.redis.starts_with("redis://") || s.redis.starts_with("rediss://")) {
        return Err(cx.err(
            "plugins.shared_state.redis",
            "expected a URL such as redis://127.0.0.1:6379",
        ));
    }
    let on_error = match s.on_error.as_deref() {
        None | Some("fail_open") => FailurePolicy::Open,
        Some("fail_closed") => FailurePolicy::Closed,
        Some(other) => {
            return Err(cx.err(
                "plugins.shared_state.on_error",
                format!("expected fail_open or fail_closed, got {other:?}"),
            ))
        }
    };
    let timeout = s.timeout.unwrap_or(DEFAULT_SHARED_STATE_TIMEOUT);
    if timeout.is_zero() {
        return Err(cx.err("plugins.shared_state.timeout", "must be above zero"));
    }
    Ok(SharedState {
        redis: Secret::new(s.redis),
        on_error,
        timeout,
    })
}

/// A subject's limits and budgets; `None` when it has none.
fn build_quota(
    cx: &Ctx,
    path: &str,
    limits: Option<LimitsSection>,
    budget: Option<BudgetSection>,
) -> Result<Option<Quota>, ConfigError> {
    let limits = limits.unwrap_or(LimitsSection {
        rpm: None,
        tpm: None,
    });
    for (name, value) in [("rpm", limits.rpm), ("tpm", limits.tpm)] {
        if value == Some(0) {
            return Err(cx.err(format!("{path}.limits.{name}"), "must be at least 1"));
        }
    }
    let budget = budget.unwrap_or(BudgetSection {
        usd_per_day: None,
        usd_per_month: None,
    });
    for (name, value) in [
        ("usd_per_day", budget.usd_per_day),
        ("usd_per_month", budget.usd_per_month),
    ] {
        if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
            return Err(cx.err(
                format!("{path}.budget.{name}"),
                "expected a number of dollars, zero or more",
            ));
        }
    }
    let quota = Quota {
        rpm: limits.rpm,
        tpm: limits.tpm,
        usd_per_day: budget.usd_per_day,
        usd_per_month: budget.usd_per_month,
    };
    Ok((quota != Quota::default()).then_some(quota))
}

/// The most rows the ledger's queue may hold: each slot is reserved up front.
const MAX_LEDGER_QUEUE: usize = 4_000_000;

fn build_ledger(cx: &Ctx, l: LedgerSection) -> Result<LedgerConfig, ConfigError> {
    if l.path.trim().is_empty() {
        return Err(cx.err("plugins.ledger.path", "expected a file path"));
    }
    let mut config = LedgerConfig::new(&l.path);
    if let Some(queue) = l.queue {
        if !(1..=MAX_LEDGER_QUEUE).contains(&queue) {
            return Err(cx.err(
                "plugins.ledger.queue",
                format!("expected 1 to {MAX_LEDGER_QUEUE} rows"),
            ));
        }
        config.queue = queue;
    }
    if let Some(batch) = l.batch {
        if batch == 0 {
            return Err(cx.err("plugins.ledger.batch", "expected at least 1 row"));
        }
        config.batch = batch;
    }
    if let Some(every) = l.flush_every {
        config.flush_every = every;
    }
    Ok(config)
}

fn build_server(cx: &Ctx, s: ServerSection) -> Result<ServerSettings, ConfigError> {
    let listen_text = s
        .listen
        .map(|l| l.into_vec())
        .unwrap_or_else(|| vec![DEFAULT_LISTEN.to_string()]);
    if listen_text.is_empty() {
        return Err(cx.err("server.listen", "at least one address is needed"));
    }
    let mut listen = Vec::new();
    for (i, a) in listen_text.iter().enumerate() {
        listen.push(a.parse::<SocketAddr>().map_err(|_| {
            cx.err(
                format!("server.listen[{i}]"),
                format!("invalid address {a:?} (expected ip:port, e.g. 0.0.0.0:8080)"),
            )
        })?);
    }
    let admin_text = s.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN);
    let admin_listen: SocketAddr = admin_text.parse().map_err(|_| {
        cx.err(
            "server.admin_listen",
            format!("invalid address {admin_text:?} (expected ip:port, e.g. 127.0.0.1:9090)"),
        )
    })?;
    if listen.contains(&admin_listen) {
        return Err(cx.err(
            "server.admin_listen",
            format!("{admin_listen} is also in server.listen; the admin API needs its own address"),
        ));
    }
    let admin_token = s.admin_token.filter(|t| !t.is_empty()).map(Secret::new);
    if !admin_listen.ip().is_loopback() && admin_token.is_none() {
        return Err(cx.err(
            "server.admin_token",
            format!("required when admin_listen ({admin_listen}) is not a loopback address"),
        ));
    }
    let threads = match s.threads {
        Some(0) => return Err(cx.err("server.threads", "must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let max_body_bytes = s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes < 1024 {
        return Err(cx.err("server.max_body_bytes", "must be at least 1KiB"));
    }
    Ok(ServerSettings {
        listen,
        admin_listen,
        admin_token,
        region: s.region,
        threads,
        max_body_bytes,
        shutdown_grace: s.shutdown_grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        client_write_timeout: s
            .client_write_timeout
            .unwrap_or(DEFAULT_CLIENT_WRITE_TIMEOUT),
        client_body_timeout: s.client_body_timeout.unwrap_or(DEFAULT_CLIENT_BODY_TIMEOUT),
        client_idle_timeout: s.client_idle_timeout.unwrap_or(DEFAULT_CLIENT_IDLE_TIMEOUT),
        h2c: s.h2c.unwrap_or(true),
        open_data_plane: s.open_data_plane.unwrap_or(false),
        open_admin: s.open_admin.unwrap_or(false),
    })
}

fn build_provider(
    cx: &Ctx,
    path: &str,
    s: ProviderSection,
    previous: Option<&Runtime>,
) -> Result<Provider, ConfigError> {
    if s.name.is_empty() {
        return Err(cx.err(format!("{path}.name"), "must not be empty"));
    }
    let kind = ProviderKind::parse(&s.kind).ok_or_else(|| {
        let known: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.name()).collect();
        cx.err(
            format!("{path}.kind"),
            format!(
                "unknown provider kind {:?} (known: {})",
                s.kind,
                known.join(", ")
            ),
        )
    })?;
    let defaults = Timeouts::default();
    let timeouts = Timeouts {
        connect: s.timeouts.connect.unwrap_or(defaults.connect),
        first_token: s.timeouts.first_token.unwrap_or(defaults.first_token),
        idle: s.timeouts.idle.unwrap_or(defaults.idle),
        total: s.timeouts.total.unwrap_or(defaults.total),
    };
    for (name, d) in [
        ("connect", timeouts.connect),
        ("first_token", timeouts.first_token),
        ("idle", timeouts.idle),
        ("total", timeouts.total),
    ] {
        if d.is_zero() {
            return Err(cx.err(format!("{path}.timeouts.{name}"), "must be more than 0"));
        }
    }
    let ewma_decay = s.ewma_decay.unwrap_or(DEFAULT_EWMA_DECAY);
    if ewma_decay.is_zero() {
        return Err(cx.err(format!("{path}.ewma_decay"), "must be more than 0"));
    }
    let previous_provider = previous.and_then(|rt| rt.providers.iter().find(|p| p.name == s.name));
    let pool = match (s.base_url, s.endpoints, s.discovery) {
        (None, None, Some(d)) => {
            let discovery = build_discovery(cx, path, d)?;
            // A discovered pool keeps its members (and their state) while its settings hold.
            previous_provider
                .map(|p| &p.pool)
                .filter(|old| {
                    old.discovery.as_ref() == Some(&discovery)
                        && old
                            .endpoints()
                            .first()
                            .is_none_or(|e| e.state.latency.decay() == ewma_decay)
                })
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(Pool::discovered(discovery, timeouts.connect, ewma_decay))
                })
        }
        (base_url, endpoints, None) => {
            let (addresses, key_path) = match (base_url, endpoints) {
                (Some(url), None) => (vec![url], format!("{path}.base_url")),
                (None, Some(list)) if !list.is_empty() => (list, format!("{path}.endpoints")),
                (None, Some(_)) => {
                    return Err(cx.err(format!("{path}.endpoints"), "needs at least one address"))
                }
                (Some(_), Some(_)) => {
                    return Err(cx.err(
                        path,
                        "give one of base_url, endpoints or discovery (a base_url is a pool of one)",
                    ))
                }
                (None, None) => {
                    return Err(cx.err(
                        path,
                        "missing base_url, endpoints or discovery (e.g. base_url: https://api.openai.com)",
                    ))
                }
            };
            // An endpoint that is still configured the same keeps its state.
            let previous_endpoints = previous_provider.map(|p| p.pool.endpoints());
            let mut endpoints = Vec::new();
            for (i, address) in addresses.iter().enumerate() {
                let at = if key_path.ends_with("endpoints") {
                    format!("{key_path}[{i}]")
                } else {
                    key_path.clone()
                };
                let endpoint = Endpoint::parse(address, timeouts.connect, ewma_decay)
                    .map_err(|e| cx.err(at, e))?;
                let kept = previous_endpoints
                    .as_ref()
                    .and_then(|old| old.iter().find(|old| old.same_as(&endpoint)).cloned());
                endpoints.push(kept.unwrap_or_else(|| Arc::new(endpoint)));
            }
            Arc::new(Pool::fixed(endpoints))
        }
        (_, _, Some(_)) => {
            return Err(cx.err(
                format!("{path}.discovery"),
                "give one of base_url, endpoints or discovery",
            ))
        }
    };
    let defaults = OutlierPolicy::default();
    let o = s.outlier.unwrap_or_default();
    let outlier = OutlierPolicy {
        consecutive_failures: o
            .consecutive_failures
            .unwrap_or(defaults.consecutive_failures),
        base_ejection: o.ejection.unwrap_or(defaults.base_ejection),
        max_ejection: o.max_ejection.unwrap_or(defaults.max_ejection),
    };
    if outlier.consecutive_failures == 0 {
        return Err(cx.err(
            format!("{path}.outlier.consecutive_failures"),
            "must be at least 1",
        ));
    }
    let health_check = match s.health_check {
        None => None,
        Some(h) => {
            let check = HealthCheck {
                path: h
                    .path
                    .unwrap_or_else(|| kind.default_health_path().to_string()),
                every: h.every.unwrap_or(Duration::from_secs(5)),
                timeout: h.timeout.unwrap_or(Duration::from_secs(1)),
                unhealthy_after: h.unhealthy_after.unwrap_or(2),
                healthy_after: h.healthy_after.unwrap_or(1),
            };
            if !check.path.starts_with('/') {
                return Err(cx.err(format!("{path}.health_check.path"), "must start with /"));
            }
            if check.every.is_zero() || check.timeout.is_zero() {
                return Err(cx.err(
                    format!("{path}.health_check"),
                    "every and timeout must be more than 0",
                ));
            }
            if check.unhealthy_after == 0 || check.healthy_after == 0 {
                return Err(cx.err(
                    format!("{path}.health_check"),
                    "unhealthy_after and healthy_after must be at least 1",
                ));
            }
            Some(check)
        }
    };
    let load_metrics = match s.load_metrics {
        None => None,
        Some(m) => {
            if !matches!(kind, ProviderKind::Vllm | ProviderKind::Triton) {
                return Err(cx.err(
                    format!("{path}.load_metrics"),
                    "only vllm and triton providers report GPU load",
                ));
            }
            let metrics = LoadMetrics {
                path: m.path.unwrap_or_else(|| "/metrics".to_string()),
                port: m.port,
                every: m.every.unwrap_or(Duration::from_millis(250)),
                timeout: m.timeout.unwrap_or(Duration::from_millis(200)),
            };
            if !metrics.path.starts_with('/') {
                return Err(cx.err(format!("{path}.load_metrics.path"), "must start with /"));
            }
            if metrics.every.is_zero() || metrics.timeout.is_zero() {
                return Err(cx.err(
                    format!("{path}.load_metrics"),
                    "every and timeout must be more than 0",
                ));
            }
            Some(metrics)
        }
    };
    if s.api_version.is_some() && kind != ProviderKind::AzureOpenai {
        return Err(cx.err(
            format!("{path}.api_version"),
            "only azure-openai providers take an api_version",
        ));
    }
    let quota = build_quota(cx, path, s.limits, None)?;
    Ok(Provider {
        name: s.name,
        kind,
        quota,
        pool,
        api_key: s.api_key.filter(|k| !k.is_empty()).map(Secret::new),
        api_version: s.api_version,
        region: s.region,
        timeouts,
        outlier,
        health_check,
        load_metrics,
    })
}

fn build_discovery(
    cx: &Ctx,
    path: &str,
    d: super::file::DiscoverySection,
) -> Result<Discovery, ConfigError> {
    let at = format!("{path}.discovery.dns");
    let (name, port) = d
        .dns
        .rsplit_once(':')
        .and_then(|(name, port)| Some((name, port.parse::<u16>().ok()?)))
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| {
            cx.err(
                &at,
                format!(
                    "expected name:port (e.g. vllm.ai.svc.cluster.local:8000), got {:?}",
                    d.dns
                ),
            )
        })?;
    let tls = match d.scheme.as_deref() {
        None | Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(cx.err(
                format!("{path}.discovery.scheme"),
                format!("unknown scheme {other:?} (expected http or https)"),
            ))
        }
    };
    let every = d.every.unwrap_or(Duration::from_secs(5));
    if every.is_zero() {
        return Err(cx.err(format!("{path}.discovery.every"), "must be more than 0"));
    }
    Ok(Discovery {
        name: name.to_string(),
        port,
        every,
        tls,
    })
}

fn build_model(
    cx: &Ctx,
    path: &str,
    s: ModelSection,
    providers: &[Arc<Provider>],
    catalog: &Catalog,
) -> Result<Model, ConfigError> {
    if s.name.is_empty() {
        return Err(cx.err(format!("{path}.name"), "must not be empty"));
    }
    let strategy = match &s.strategy {
        None => Strategy::Fallback,
        Some(name) => Strategy::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Strategy::ALL.iter().map(|s| s.name()).collect();
            cx.err(
                format!("{path}.strategy"),
                format!(
                    "unknown strategy {name:?} (supported: {})",
                    known.join(", ")
                ),
            )
        })?,
    };
    if s.targets.is_empty() {
        return Err(cx.err(format!("{path}.targets"), "needs at least one target"));
    }
    let mut targets = Vec::new();
    for (i, t) in s.targets.into_iter().enumerate() {
        let provider = providers
            .iter()
            .find(|p| p.name == t.provider)
            .ok_or_else(|| {
                let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                cx.err(
                    format!("{path}.targets[{i}].provider"),
                    format!(
                        "unknown provider {:?} (known: {})",
                        t.provider,
                        if known.is_empty() {
                            "none defined".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })?;
        if t.model.is_empty() {
            return Err(cx.err(format!("{path}.targets[{i}].model"), "must not be empty"));
        }
        let weight = t.weight.unwrap_or(1);
        if weight == 0 {
            return Err(cx.err(
                format!("{path}.targets[{i}].weight"),
                "must be at least 1 (remove the target to send it nothing)",
            ));
        }
        let facts = catalog.get(&t.model).copied();
        if t.max_tokens_default == Some(0) {
            return Err(cx.err(
                format!("{path}.targets[{i}].max_tokens_default"),
                "must be at least 1",
            ));
        }
        let prompt_template = match t.prompt_template.as_deref() {
            None => PromptTemplate::Plain,
            Some(name) => PromptTemplate::parse(name).ok_or_else(|| {
                cx.err(
                    format!("{path}.targets[{i}].prompt_template"),
                    format!("unknown prompt template {name:?} (known: plain, llama3, chatml)"),
                )
            })?,
        };
        targets.push(Target {
            provider: provider.clone(),
            model: t.model,
            weight,
            facts,
            prompt_template,
            max_tokens_default: t
                .max_tokens_default
                .unwrap_or(crate::providers::anthropic::DEFAULT_MAX_TOKENS),
        });
    }
    let default_attempts = (targets.len() as u32).max(3);
    let retry = match s.retry {
        None => RetryPolicy {
            attempts: default_attempts,
            on: RetryOn::ALL,
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        },
        Some(r) => {
            let attempts = r.attempts.unwrap_or(default_attempts);
            if attempts == 0 {
                return Err(cx.err(format!("{path}.retry.attempts"), "must be at least 1"));
            }
            let on = match r.on {
                None => RetryOn::ALL,
                Some(list) => {
                    let mut on = RetryOn {
                        connect: false,
                        timeout: false,
                        status_429: false,
                        status_5xx: false,
                    };
                    for (i, item) in list.iter().enumerate() {
                        match item.as_str() {
                            "connect" => on.connect = true,
                            "timeout" => on.timeout = true,
                            "429" => on.status_429 = true,
                            "5xx" => on.status_5xx = true,
                            other => {
                                return Err(cx.err(
                                    format!("{path}.retry.on[{i}]"),
                                    format!(
                                        "unknown failure {other:?} (known: connect, timeout, \"429\", 5xx)"
                                    ),
                                ))
                            }
                        }
                    }
                    on
                }
            };
            let backoff = r.backoff.unwrap_or(DEFAULT_BACKOFF);
            let max_backoff = r.max_backoff.unwrap_or(DEFAULT_MAX_BACKOFF.max(backoff));
            if max_backoff < backoff {
                return Err(cx.err(
                    format!("{path}.retry.max_backoff"),
                    format!(
                        "must be at least retry.backoff ({})",
                        format_duration(backoff)
                    ),
                ));
            }
            RetryPolicy {
                attempts,
                on,
                backoff,
                max_backoff,
            }
        }
    };
    let context = match s.context.as_deref() {
        None => None,
        Some(name) => Some(ContextPolicy::parse(name).ok_or_else(|| {
            cx.err(
                format!("{path}.context"),
                format!(
                    "unknown context policy {name:?} (known: reject, overflow_to_larger, truncate_middle)"
                ),
            )
        })?),
    };
    for (i, t) in targets.iter().enumerate() {
        let facts = t.facts.as_ref();
        if context.is_some() && facts.and_then(|f| f.context_window).is_none() {
            return Err(cx.err(
                format!("{path}.targets[{i}].model"),
                format!(
                    "the context policy needs the context window of {:?}: add catalog: {{ {:?}: {{ context_window: N }} }}",
                    t.model, t.model
                ),
            ));
        }
        if strategy == Strategy::Cost && facts.and_then(|f| f.prices).is_none() {
            return Err(cx.err(
                format!("{path}.targets[{i}].model"),
                format!(
                    "strategy cost needs the prices of {:?}: add catalog: {{ {:?}: {{ price_per_mtok: {{ input: N, output: N }} }} }}",
                    t.model, t.model
                ),
            ));
        }
    }
    if s.residency.as_ref().is_some_and(|r| r.is_empty()) {
        return Err(cx.err(
            format!("{path}.residency"),
            "needs at least one region (remove it to allow every region)",
        ));
    }
    let mut rules = Vec::new();
    for (r, rule) in s.rules.into_iter().enumerate() {
        let at = format!("{path}.rules[{r}]");
        let mut chosen = vec![false; targets.len()];
        for (u, name) in rule.use_targets.iter().enumerate() {
            let mut found = false;
            for (i, t) in targets.iter().enumerate() {
                if t.provider.name == *name || t.model == *name {
                    chosen[i] = true;
                    found = true;
                }
            }
            if !found {
                return Err(cx.err(
                    format!("{at}.use[{u}]"),
                    format!("{name:?} names no target of this model (use a provider name or an upstream model)"),
                ));
            }
        }
        if !chosen.iter().any(|&c| c) {
            return Err(cx.err(format!("{at}.use"), "needs at least one target"));
        }
        let w = rule.when;
        let last_user_matches = w
            .last_user_matches
            .map(|re| {
                regex::Regex::new(&re)
                    .map_err(|e| cx.err(format!("{at}.when.last_user_matches"), e.to_string()))
            })
            .transpose()?;
        rules.push(Rule {
            prompt_tokens_below: w.prompt_tokens_below,
            prompt_tokens_above: w.prompt_tokens_above,
            headers: w
                .header
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            last_user_matches,
            targets: chosen,
        });
    }
    let scoring = match s.scoring {
        None => Scoring::default(),
        Some(sc) => {
            let d = Scoring::default();
            let scoring = Scoring {
                queue_weight: sc.queue_weight.unwrap_or(d.queue_weight),
                kv_cache_weight: sc.kv_cache_weight.unwrap_or(d.kv_cache_weight),
                prefix_weight: sc.prefix_weight.unwrap_or(d.prefix_weight),
                lora_weight: sc.lora_weight.unwrap_or(d.lora_weight),
                max_waiting: sc.max_waiting.unwrap_or(d.max_waiting),
                max_kv_cache: sc.max_kv_cache.unwrap_or(d.max_kv_cache),
            };
            let weights = [
                scoring.queue_weight,
                scoring.kv_cache_weight,
                scoring.prefix_weight,
                scoring.lora_weight,
            ];
            if weights.iter().any(|w| !w.is_finite() || *w < 0.0)
                || !scoring.max_waiting.is_finite()
                || scoring.max_waiting < 0.0
                || !(0.0..=1.0).contains(&scoring.max_kv_cache)
            {
                return Err(cx.err(
                    format!("{path}.scoring"),
                    "weights and max_waiting must be 0 or more, max_kv_cache a fraction from 0 to 1",
                ));
            }
            scoring
        }
    };
    let panic_threshold = s.panic_threshold.unwrap_or(DEFAULT_PANIC_THRESHOLD);
    if !(0.0..=1.0).contains(&panic_threshold) {
        return Err(cx.err(
            format!("{path}.panic_threshold"),
            "must be a fraction from 0 to 1 (0 turns panic routing off)",
        ));
    }
    Ok(Model {
        name: s.name,
        strategy,
        scoring,
        rules,
        residency: s.residency,
        context,
        weights: SmoothWeighted::new(targets.iter().map(|t| t.weight).collect()),
        targets,
        retry,
        panic_threshold,
    })
}

fn build_key(
    cx: &Ctx,
    path: &str,
    s: KeySection,
    models: &HashMap<String, usize>,
) -> Result<([u8; 32], Key), ConfigError> {
    let hash = match (s.key_sha256, s.key) {
        (Some(hex_hash), None) => {
            let bytes = hex::decode(hex_hash.trim()).ok().filter(|b| b.len() == 32);
            let bytes = bytes.ok_or_else(|| {
                cx.err(
                    format!("{path}.key_sha256"),
                    "expected 64 hex characters (sha256 of the key, e.g. `printf %s \"$KEY\" | sha256sum`)",
                )
            })?;
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&bytes);
            hash
        }
        (None, Some(clear)) if !clear.is_empty() => sha256(clear.as_bytes()),
        (None, Some(_)) => return Err(cx.err(format!("{path}.key"), "must not be empty")),
        (Some(_), Some(_)) => return Err(cx.err(path, "give key_sha256 or key, not both")),
        (None, None) => return Err(cx.err(path, "missing key_sha256 (or key)")),
    };
    let allowed = match s.models {
        None => None,
        Some(list) => {
            for (i, m) in list.iter().enumerate() {
                if !models.contains_key(m) {
                    let mut known: Vec<&String> = models.keys().collect();
                    known.sort();
                    let known: Vec<&str> = known.iter().map(|s| s.as_str()).collect();
                    return Err(cx.err(
                        format!("{path}.models[{i}]"),
                        format!("unknown model {m:?} (known: {})", known.join(", ")),
                    ));
                }
            }
            Some(list.into_iter().collect())
        }
    };
    let quota = build_quota(cx, path, s.limits, s.budget)?;
    Ok((
        hash,
        Key {
            id: s.id,
            team: s.team,
            project: s.project,
            models: allowed,
            residency: s.residency,
            quota,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_text(text: &str) -> Result<Runtime, ConfigError> {
        let file = crate::config::parse("t.yaml", text, &|name| {
            (name == "UP_KEY").then(|| "sk-up-secret".to_string())
        })?;
        build("t.yaml", Path::new("t.yaml"), file, None)
    }

    fn build_err(text: &str) -> ConfigError {
        match build_text(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn load_metrics_and_scoring() {
        let rt = build_text(
            "providers:\n  - { name: gpu, kind: triton, endpoints: [\"127.0.0.1:8000\"], load_metrics: { port: 8002, every: 100ms } }\nmodels:\n  - name: m\n    strategy: gpu-aware\n    scoring: { prefix_weight: 5, max_waiting: 10 }\n    targets: [{ provider: gpu, model: llama }]\n",
        )
        .unwrap();
        let metrics = rt.providers[0].load_metrics.clone().unwrap();
        assert_eq!(
            (metrics.path.as_str(), metrics.port, metrics.every),
            ("/metrics", Some(8002), Duration::from_millis(100))
        );
        let model = rt.model("m").unwrap();
        assert_eq!(model.strategy, Strategy::GpuAware);
        assert_eq!(model.scoring.prefix_weight, 5.0);
        assert_eq!(model.scoring.max_waiting, 10.0);
        assert_eq!(model.scoring.queue_weight, Scoring::default().queue_weight);

        let err = build_err(&format!(
            "{BASE}  - name: b\n    strategy: gpu-aware\n    scoring: {{ max_kv_cache: 2 }}\n    targets: [{{ provider: openai, model: x }}]\n"
        ));
        assert_eq!(err.path, "models[1].scoring");
        let err = build_err(
            "providers:\n  - { name: o, kind: openai, base_url: \"http://127.0.0.1:1\", load_metrics: {} }\n",
        );
        assert_eq!(err.path, "providers[0].load_metrics");
    }

    #[test]
    fn limits_budgets_teams_and_shared_state() {
        let rt = build_text(&format!(
            "{BASE}keys:\n  - {{ id: k, key: sk-1, team: red, limits: {{ rpm: 5, tpm: 900 }}, budget: {{ usd_per_day: 0.5 }} }}\n  - {{ id: free, key: sk-2 }}\nteams:\n  red: {{ budget: {{ usd_per_month: 20 }} }}\n  blue: {{}}\nplugins:\n  shared_state: {{ redis: \"redis://:hunter2@10.0.0.9:6379/2\", on_error: fail_closed }}\n  ledger: {{ path: /tmp/u.db, queue: 10 }}\n"
        ))
        .unwrap();
        let keys = rt.keys.as_ref().unwrap();
        let quota = keys.find("sk-1").unwrap().quota.clone().unwrap();
        assert_eq!(
            (quota.rpm, quota.tpm, quota.usd_per_day),
            (Some(5), Some(900), Some(0.5))
        );
        assert!(keys.find("sk-2").unwrap().quota.is_none());
        assert_eq!(rt.teams["red"].usd_per_month, Some(20.0));
        assert!(
            !rt.teams.contains_key("blue"),
            "a team without limits needs no state"
        );
        let shared = rt.shared_state.as_ref().unwrap();
        assert_eq!(shared.on_error, FailurePolicy::Closed);
        assert_eq!(shared.timeout, DEFAULT_SHARED_STATE_TIMEOUT);
        assert_eq!(rt.ledger.as_ref().unwrap().queue, 10);
        // The Redis URL may hold a password: the admin view never shows it.
        let shown = rt.redacted_json().to_string();
        assert!(
            !shown.contains("hunter2") && shown.contains("fail_closed"),
            "{shown}"
        );

        for (extra, path) in [
            (
                "keys:\n  - { id: k, key: x, limits: { rpm: 0 } }\n",
                "keys[0].limits.rpm",
            ),
            (
                "keys:\n  - { id: k, key: x, budget: { usd_per_day: -1 } }\n",
                "keys[0].budget.usd_per_day",
            ),
            (
                "teams:\n  red: { limits: { tpm: 0 } }\n",
                "teams.red.limits.tpm",
            ),
            (
                "plugins:\n  shared_state: { redis: \"127.0.0.1:6379\" }\n",
                "plugins.shared_state.redis",
            ),
            (
                "plugins:\n  shared_state: { redis: \"redis://h\", on_error: maybe }\n",
                "plugins.shared_state.on_error",
            ),
            (
                "plugins:\n  ledger: { path: u.db, queue: 0 }\n",
                "plugins.ledger.queue",
            ),
        ] {
            assert_eq!(build_err(&format!("{BASE}{extra}")).path, path, "{extra}");
        }
    }

    const BASE: &str = r#"
providers:
  - { name: openai, kind: openai, base_url: "http://127.0.0.1:9001", api_key: "${UP_KEY}" }
  - { name: llama-gpu, kind: vllm, endpoints: ["127.0.0.1:9002", "127.0.0.1:9003"] }
models:
  - name: a
    targets: [{ provider: openai, model: gpt-4o }]
"#;

    #[test]
    fn valid_config_builds() {
        let rt = build_text(&format!(
            "{BASE}  - name: b\n    targets: [{{ provider: llama-gpu, model: llama }}, {{ provider: openai, model: gpt-4o }}]\n    retry: {{ attempts: 2, on: [connect, \"429\"] }}\nkeys:\n  - {{ id: k1, key: sk-virtual, models: [a] }}\n"
        ))
        .unwrap();
        let b = rt.model("b").unwrap();
        assert_eq!(b.targets.len(), 2);
        assert_eq!(b.retry.attempts, 2);
        assert!(b.retry.on.connect && b.retry.on.status(429) && !b.retry.on.status(500));
        assert_eq!(rt.model("a").unwrap().retry.attempts, 3);
        let key = rt.keys.as_ref().unwrap().find("sk-virtual").unwrap();
        assert!(key.allows("a") && !key.allows("b"));
        assert!(rt.keys.as_ref().unwrap().find("sk-other").is_none());
        assert_eq!(rt.providers[1].pool.endpoints().len(), 2);
    }

    #[test]
    fn unknown_provider_is_located() {
        let err = build_err(&format!(
            "{BASE}  - name: b\n    targets: [{{ provider: opneai, model: x }}]\n"
        ));
        assert_eq!(
            err.to_string(),
            r#"t.yaml: models[1].targets[0].provider: unknown provider "opneai" (known: openai, llama-gpu)"#
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = build_err(&format!("{BASE}    stratgy: fallback\n"));
        assert_eq!(err.path, "models[0].stratgy");
        assert!(err.message.contains("unknown field `stratgy`"), "{err}");
    }

    #[test]
    fn type_errors_never_echo_secrets() {
        let err = build_err("server:\n  threads: ${UP_KEY}\n");
        assert_eq!(err.path, "server.threads");
        assert!(!err.to_string().contains("sk-up-secret"), "{err}");
    }

    #[test]
    fn public_admin_needs_token() {
        let err = build_err("server:\n  admin_listen: 0.0.0.0:9090\n");
        assert_eq!(err.path, "server.admin_token");
        build_text("server:\n  admin_listen: 0.0.0.0:9090\n  admin_token: t0ken\n").unwrap();
    }

    #[test]
    fn key_and_model_checks() {
        let err = build_err(&format!("{BASE}keys:\n  - {{ id: k, key_sha256: abc }}\n"));
        assert_eq!(err.path, "keys[0].key_sha256");
        let err = build_err(&format!(
            "{BASE}keys:\n  - {{ id: k, key: x, models: [zz] }}\n"
        ));
        assert_eq!(err.path, "keys[0].models[0]");
        let err = build_err(&format!("{BASE}    strategy: fastest\n"));
        assert!(err.message.contains("unknown strategy"), "{err}");
    }

    #[test]
    fn admin_json_redacts_secrets() {
        let rt = build_text(BASE).unwrap();
        let text = rt.redacted_json().to_string();
        assert!(!text.contains("sk-up-secret"));
        assert!(text.contains("***redacted***"));
    }

    #[test]
    fn a_reload_never_opens_what_was_closed_by_accident() {
        let keyed =
            format!("server:\n  admin_token: t0ken\n{BASE}keys:\n  - {{ id: k, key: sk-1 }}\n");
        let running = build_text(&keyed).unwrap();
        let successor = |text: &str| {
            let mut new = build_text(text).unwrap();
            new.succeed(&running, "t.yaml")
        };
        successor(&keyed).unwrap();
        let no_keys = successor(&format!("server:\n  admin_token: t0ken\n{BASE}")).unwrap_err();
        assert_eq!(no_keys.path, "keys");
        assert!(no_keys.message.contains("open_data_plane"), "{no_keys}");
        successor(&format!(
            "server:\n  admin_token: t0ken\n  open_data_plane: true\n{BASE}"
        ))
        .unwrap();
        let no_token =
            successor(&format!("{BASE}keys:\n  - {{ id: k, key: sk-1 }}\n")).unwrap_err();
        assert_eq!(no_token.path, "server.admin_token");
        successor(&format!(
            "server:\n  open_admin: true\n{BASE}keys:\n  - {{ id: k, key: sk-1 }}\n"
        ))
        .unwrap();

        // The admin API keeps the listener it has; its token must suit that one.
        let public = build_text(&format!(
            "server:\n  admin_listen: 0.0.0.0:9090\n  admin_token: t0ken\n{BASE}"
        ))
        .unwrap();
        let mut moved = build_text(&format!(
            "server:\n  admin_listen: 127.0.0.1:9191\n  open_admin: true\n{BASE}"
        ))
        .unwrap();
        let err = moved.succeed(&public, "t.yaml").unwrap_err();
        assert!(err.message.contains("0.0.0.0:9090"), "{err}");
        let mut kept = build_text(&format!(
            "server:\n  admin_listen: 127.0.0.1:9191\n  admin_token: other\n{BASE}"
        ))
        .unwrap();
        kept.succeed(&public, "t.yaml").unwrap();
        assert_eq!(kept.server.admin_listen, public.server.admin_listen);
    }

    #[test]
    fn an_empty_document_is_an_error() {
        for text in ["", "\n", "# only a comment\n", "~\n"] {
            let err = build_text(text).err().expect("an error");
            assert!(err.message.contains("empty"), "{err}");
        }
    }

    #[test]
    fn errors_never_quote_a_misplaced_value() {
        for text in [
            "server:\n  threads: \"sk-live-0123456789\"\n".to_string(),
            "server:\n  shutdown_grace: sk-live-0123456789\n".to_string(),
            "server:\n  max_body_bytes: 12sk-live-0123456789\n".to_string(),
            format!("{BASE}keys:\n  - {{ id: k, key: [\"sk-live-0123456789\"] }}\n"),
        ] {
            let err = build_err(&text);
            assert!(!err.to_string().contains("0123456789"), "{err}");
            assert!(!err.path.is_empty(), "the key is named: {err}");
        }
    }
}
