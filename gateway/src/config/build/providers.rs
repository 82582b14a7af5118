//! `providers:`: kinds, endpoints and their discovery, timeouts, health checks, quotas.

use super::keys::build_quota;
use super::Ctx;
use crate::config::file::ProviderSection;
use crate::config::runtime::Runtime;
use crate::config::ConfigError;
use crate::providers::{HealthCheck, LoadMetrics, Provider, ProviderKind, Timeouts};
use crate::secret::Secret;
use crate::upstream::pool::Discovery;
use crate::upstream::state::OutlierPolicy;
use crate::upstream::{Endpoint, Pool};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_EWMA_DECAY: Duration = Duration::from_secs(10);

pub(super) fn build_provider(
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

pub(super) fn build_discovery(
    cx: &Ctx,
    path: &str,
    d: crate::config::file::DiscoverySection,
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
