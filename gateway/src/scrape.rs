//! Load scraping: every endpoint of a provider with `load_metrics:` gets `GET path` every
//! `every` (on the metrics port when it differs), and what its server reports is kept with the
//! endpoint for `gpu-aware` and `least-loaded` routing.

use crate::config::Runtime;
use crate::periodic::per_endpoint;
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
    async fn start(&self, shutdown: ShutdownWatch) {
        per_endpoint(
            &self.runtime,
            shutdown,
            TICK,
            |provider| {
                let metrics = provider.load_metrics.clone()?;
                let every = metrics.every;
                Some((metrics, every))
            },
            |endpoint, metrics, name| {
                let connector = self.connector.clone();
                async move {
                    let started = Instant::now();
                    let report = scrape(&connector, &endpoint, &metrics)
                        .await
                        .and_then(|page| {
                            LoadReport::parse(&page)
                                .ok_or_else(|| "no vLLM or Triton load metrics".to_string())
                        });
                    match report {
                        Ok(report) => endpoint.state.load.record(started, report),
                        Err(e) => {
                            // What was known is no longer true: unknown, never idle.
                            endpoint.state.load.forget();
                            log::debug!(
                                "{name} ({}): load metrics {}: {e}",
                                endpoint.label,
                                metrics.path
                            );
                        }
                    }
                }
            },
        )
        .await
    }
}
