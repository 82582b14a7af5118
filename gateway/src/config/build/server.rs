//! The `server:` section, and the plugins' `ledger` and `shared_state`.

use super::Ctx;
use crate::config::file::{CacheSection, LedgerSection, ServerSection, SharedStateSection};
use crate::config::runtime::{CacheScope, CacheSettings, ServerSettings, SharedState};
use crate::config::ConfigError;
use crate::secret::Secret;
use std::net::SocketAddr;
use std::time::Duration;
use tollgate_plugins::ledger::LedgerConfig;
use tollgate_plugins::limits::FailurePolicy;

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A client that takes longer than this to read one write has stopped reading.
const DEFAULT_CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that takes longer than this to send the next piece of its body has stalled.
const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// A new connection silent this long is closed: Pingora's own limit for reading a request
/// head.
const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The most rows the ledger's queue may hold: each slot is reserved up front.
const MAX_LEDGER_QUEUE: usize = 4_000_000;

/// How long one Redis call may take unless the config says.
pub(super) const DEFAULT_SHARED_STATE_TIMEOUT: Duration = Duration::from_millis(250);

pub(super) fn build_shared_state(
    cx: &Ctx,
    s: SharedStateSection,
) -> Result<SharedState, ConfigError> {
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

pub(super) fn build_ledger(cx: &Ctx, l: LedgerSection) -> Result<LedgerConfig, ConfigError> {
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

pub(super) fn build_server(cx: &Ctx, s: ServerSection) -> Result<ServerSettings, ConfigError> {
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

/// How long an answer stays in the cache unless the config says.
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(600);
/// The in-memory store's bound unless the config says.
const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

pub(super) fn build_cache(
    cx: &Ctx,
    c: CacheSection,
    has_shared_state: bool,
) -> Result<CacheSettings, ConfigError> {
    match c.mode.as_deref() {
        None | Some("exact") => {}
        Some(_) => {
            return Err(cx.err(
                "plugins.cache.mode",
                "expected exact (semantic matching is not in this build yet)",
            ))
        }
    }
    let shared = match c.store.as_deref() {
        None | Some("memory") => false,
        Some("redis") if has_shared_state => true,
        Some("redis") => {
            return Err(cx.err(
                "plugins.cache.store",
                "redis needs plugins.shared_state.redis",
            ))
        }
        Some(_) => return Err(cx.err("plugins.cache.store", "expected memory or redis")),
    };
    let scope = match c.scope.as_deref() {
        None | Some("team") => CacheScope::Team,
        Some("key") => CacheScope::Key,
        Some("project") => CacheScope::Project,
        Some("global") => CacheScope::Global,
        Some(_) => {
            return Err(cx.err(
                "plugins.cache.scope",
                "expected key, team, project or global",
            ))
        }
    };
    let ttl = c.ttl.unwrap_or(DEFAULT_CACHE_TTL);
    if ttl.is_zero() {
        return Err(cx.err("plugins.cache.ttl", "must be above zero"));
    }
    let max_bytes = c.max_bytes.unwrap_or(DEFAULT_CACHE_BYTES);
    if max_bytes == 0 {
        return Err(cx.err("plugins.cache.max_bytes", "must be above zero"));
    }
    Ok(CacheSettings {
        ttl,
        max_bytes,
        scope,
        shared,
        coalesce: c.coalesce.unwrap_or(true),
    })
}
