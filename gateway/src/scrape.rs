//! Load scraping: every endpoint of a provider with `load_metrics:` gets `GET path` every
//! `every` (on the metrics port when it differs), and what its server reports is kept with the
//! endpoint for `gpu-aware` and `least-loaded` routing.

use crate::config::Runtime;
use crate::providers::LoadMetrics;
use crate::upstream::load::LoadReport;
use crate::upstream::Endpoint;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the scraper looks for endpoints that are due.
const TICK: Duration = Duration::from_millis(50);
/// The most a metrics page may weigh.
const MAX_PAGE: usize = 4 * 1024 * 1024;

pub struct LoadScraper {
    runtime: Arc<ArcSwap<Runtime>>,
    connector: Arc<Connector>,
}

impl LoadScraper {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, connector: Connector) -> LoadScraper {
        LoadScraper {
            runtime,
            connector: Arc::new(connector),
        }
    }
}

/// One scrape of one endpoint's metrics page.
async fn scrape(
    connector: &Connector,
    endpoint: &Endpoint,
    metrics: &LoadMetrics,
) -> Result<String, String> {
    let api = endpoint
        .peer()
        .ok_or_else(|| format!("{} did not resolve", endpoint.host))?;
    let peer = match (metrics.port, endpoint.address()) {
        (Some(port), Some(addr)) if port != addr.port() => {
            let mut peer = HttpPeer::new(
                SocketAddr::new(addr.ip(), port),
                endpoint.tls,
                endpoint.host.clone(),
            );
            peer.options = api.options.clone();
            Arc::new(peer)
        }
        _ => api,
    };
    let mut req =
        RequestHeader::build("GET", metrics.path.as_bytes(), None).map_err(|e| e.to_string())?;
    req.insert_header("host", &endpoint.authority)
        .map_err(|e| e.to_string())?;
    req.insert_header("accept", "text/plain")
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let (mut session, _) = connector
            .get_http_session(&*peer)
            .await
            .map_err(|e| e.to_string())?;
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| e.to_string())?;
        session
            .finish_request_body()
            .await
            .map_err(|e| e.to_string())?;
        session
            .read_response_header()
            .await
            .map_err(|e| e.to_string())?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        if status != 200 {
            session.shutdown().await;
            return Err(format!("HTTP {status}"));
        }
        let mut page = BytesMut::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| e.to_string())?
        {
            if page.len() + chunk.len() > MAX_PAGE {
                session.shutdown().await;
                return Err("the metrics page is too large".into());
            }
            page.extend_from_slice(&chunk);
        }
        connector
            .release_http_session(session, &*peer, Some(Duration::from_secs(60)))
            .await;
        String::from_utf8(page.to_vec()).map_err(|_| "the metrics page is not UTF-8".to_string())
    };
    pingora::time::timeout(metrics.timeout, exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[async_trait]
impl BackgroundService for LoadScraper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Keyed by endpoint identity; an endpoint dropped by a reload falls out of the map.
        let mut due: HashMap<usize, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        return;
                    }
                }
                _ = tick.tick() => {}
            }
            let runtime = self.runtime.load_full();
            let now = Instant::now();
            let mut live = HashMap::with_capacity(due.len());
            for provider in &runtime.providers {
                let Some(metrics) = &provider.load_metrics else {
                    continue;
                };
                for endpoint in provider.pool.endpoints().iter() {
                    let key = Arc::as_ptr(endpoint) as usize;
                    let next = due.get(&key).copied().unwrap_or(now);
                    if next > now {
                        live.insert(key, next);
                        continue;
                    }
                    live.insert(key, now + metrics.every);
                    let (endpoint, metrics, name, connector) = (
                        endpoint.clone(),
                        metrics.clone(),
                        provider.name.clone(),
                        self.connector.clone(),
                    );
                    tokio::spawn(async move {
                        let started = Instant::now();
                        match scrape(&connector, &endpoint, &metrics).await {
                            Ok(page) => match LoadReport::parse(&page) {
                                Some(report) => endpoint.state.load.record(started, report),
                                None => {
                                    endpoint.state.load.forget();
                                    log::debug!(
                                        "{name} ({}): {} has no vLLM or Triton load metrics",
                                        endpoint.label,
                                        metrics.path
                                    );
                                }
                            },
                            Err(e) => {
                                endpoint.state.load.forget();
                                log::debug!(
                                    "{name} ({}): load metrics {}: {e}",
                                    endpoint.label,
                                    metrics.path
                                );
                            }
                        }
                    });
                }
            }
            due = live;
        }
    }
}
