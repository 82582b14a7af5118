//! A provider's endpoints: fixed by config, or followed through DNS (a Kubernetes headless
//! service). Which endpoint serves a request is the router's choice.

use super::endpoint::Endpoint;
use arc_swap::{ArcSwap, Guard};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// `discovery: { dns: "name:port", every: 5s }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    pub name: String,
    pub port: u16,
    pub every: Duration,
    pub tls: bool,
}

pub struct Pool {
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    pub discovery: Option<Discovery>,
    /// Settings for endpoints that discovery creates.
    connect_timeout: Duration,
    ewma_decay: Duration,
}

impl Pool {
    pub fn fixed(endpoints: Vec<Arc<Endpoint>>) -> Pool {
        Pool {
            endpoints: ArcSwap::from_pointee(endpoints),
            discovery: None,
            connect_timeout: Duration::ZERO,
            ewma_decay: Duration::ZERO,
        }
    }

    /// Starts empty; `discover` fills it.
    pub fn discovered(
        discovery: Discovery,
        connect_timeout: Duration,
        ewma_decay: Duration,
    ) -> Pool {
        Pool {
            endpoints: ArcSwap::from_pointee(Vec::new()),
            discovery: Some(discovery),
            connect_timeout,
            ewma_decay,
        }
    }

    pub fn endpoints(&self) -> Guard<Arc<Vec<Arc<Endpoint>>>> {
        self.endpoints.load()
    }

    /// Looks the name up and makes the pool its addresses. Endpoints that stay keep their
    /// state; a failed or empty lookup keeps the previous set.
    pub async fn discover(&self) -> Result<(), String> {
        let Some(d) = &self.discovery else {
            return Ok(());
        };
        let lookup = tokio::net::lookup_host((d.name.as_str(), d.port));
        let found: BTreeSet<SocketAddr> = tokio::time::timeout(Duration::from_secs(5), lookup)
            .await
            .map_err(|_| format!("resolving {}: timed out", d.name))?
            .map_err(|e| format!("resolving {}: {e}", d.name))?
            .collect();
        if found.is_empty() {
            return Err(format!("resolving {}: no addresses", d.name));
        }
        let current = self.endpoints();
        let unchanged = current.len() == found.len()
            && current
                .iter()
                .all(|e| e.address().is_some_and(|a| found.contains(&a)));
        if unchanged {
            return Ok(());
        }
        let next = found
            .into_iter()
            .map(|addr| {
                current
                    .iter()
                    .find(|e| e.address() == Some(addr))
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Endpoint::discovered(
                            &d.name,
                            addr,
                            d.tls,
                            self.connect_timeout,
                            self.ewma_decay,
                        ))
                    })
            })
            .collect();
        self.endpoints.store(Arc::new(next));
        Ok(())
    }
}
