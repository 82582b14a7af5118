//! Active health checks: each endpoint of a provider with `health_check:` gets `GET path` every
//! `every`, through pingora-load-balancing's `HttpHealthCheck`; thresholds flip its state.

use crate::config::Runtime;
use crate::periodic::per_endpoint;
use crate::providers::HealthCheck;
use crate::upstream::Endpoint;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck as _, HttpHealthCheck};
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often the checker looks for endpoints that are due.
const TICK: Duration = Duration::from_millis(100);

pub struct HealthChecker {
    runtime: Arc<ArcSwap<Runtime>>,
}

impl HealthChecker {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>) -> HealthChecker {
        HealthChecker { runtime }
    }
}

/// One probe of one endpoint: true on a 200 within the timeout.
async fn probe(endpoint: &Endpoint, check: &HealthCheck) -> Result<(), String> {
    let peer = endpoint
        .peer()
        .ok_or_else(|| format!("{} did not resolve", endpoint.host))?;
    let backend = Backend {
        addr: peer._address.clone(),
        weight: 1,
        ext: Default::default(),
    };
    let mut checker = HttpHealthCheck::new(&endpoint.authority, endpoint.tls);
    checker.peer_template.sni = endpoint.host.clone();
    checker.peer_template.options.connection_timeout = Some(check.timeout);
    checker.peer_template.options.total_connection_timeout = Some(check.timeout);
    checker.peer_template.options.read_timeout = Some(check.timeout);
    checker.peer_template.options.write_timeout = Some(check.timeout);
    let path = format!("{}{}", endpoint.prefix, check.path);
    checker.req.set_uri(
        path.parse()
            .map_err(|e| format!("bad health check path {path:?}: {e}"))?,
    );
    match tokio::time::timeout(check.timeout * 2, checker.check(&backend)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, shutdown: ShutdownWatch) {
        per_endpoint(
            &self.runtime,
            shutdown,
            TICK,
            |provider| {
                let check = provider.health_check.clone()?;
                let every = check.every;
                Some((check, every))
            },
            |endpoint, check, name| async move {
                let result = probe(&endpoint, &check).await;
                let flipped = endpoint.state.record_check(
                    result.is_ok(),
                    check.unhealthy_after,
                    check.healthy_after,
                );
                match (flipped, result) {
                    (Some(true), _) => log::info!("{name} ({}) is healthy again", endpoint.label),
                    (Some(false), Err(e)) => log::warn!(
                        "{name} ({}) is unhealthy: health check {}: {e}",
                        endpoint.label,
                        check.path
                    ),
                    _ => {}
                }
            },
        )
        .await
    }
}
