//! The runtime model rendered: the summary `tollgate check` and the startup log print, and the
//! redacted JSON of `/admin/config`.

use crate::config::runtime::{Key, Runtime};
use crate::config::units::format_duration;
use serde_json::{json, Value};
use std::sync::Arc;
use tollgate_plugins::limits::{FailurePolicy, Quota};

impl Runtime {
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
        let cache = self.cache.map(|_| "cache");
        access_log
            .into_iter()
            .chain(cache)
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

fn quota_json(q: &Quota) -> serde_json::Value {
    json!({"rpm": q.rpm, "tpm": q.tpm, "usd_per_day": q.usd_per_day, "usd_per_month": q.usd_per_month})
}
