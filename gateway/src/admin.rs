//! The admin listener: health, readiness, metrics, the redacted running config, and reload.

use crate::config::Runtime;
use crate::control::Control;
use crate::error::GatewayError;
use crate::ledger;
use crate::metrics::Metrics;
use crate::proxy::request_id;
use crate::router::gpu::{self, Scoring};
use crate::upstream::load::LoadView;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_plugins::ledger::Ledger;
use tollgate_plugins::limits::Limiter;

pub struct Admin {
    control: Arc<Control>,
    metrics: Arc<Metrics>,
    ledger: Option<Arc<Ledger>>,
    limiter: Arc<Limiter>,
}

impl Admin {
    pub fn new(
        control: Arc<Control>,
        metrics: Arc<Metrics>,
        ledger: Option<Arc<Ledger>>,
        limiter: Arc<Limiter>,
    ) -> Admin {
        Admin {
            control,
            metrics,
            ledger,
            limiter,
        }
    }
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("x-request-id", request_id(None))
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .expect("static response parts are valid")
}

fn json_reply(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", value.to_string().into_bytes())
}

/// `{"error":{...}}` with the admin API's own codes.
fn admin_error(status: u16, code: &str, message: &str) -> Response<Vec<u8>> {
    json_reply(
        status,
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
    )
}

fn gateway_error(e: GatewayError) -> Response<Vec<u8>> {
    reply(e.status(), "application/json", e.body().to_vec())
}

/// Compares digests so the time taken does not depend on how much of the token matched.
fn token_matches(presented: &str, expected: &str) -> bool {
    Sha256::digest(presented.as_bytes()) == Sha256::digest(expected.as_bytes())
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.as_str().to_string();
        let path = session.req_header().uri.path().to_string();
        let protected = path.starts_with("/admin/") || path == "/dashboard";
        if protected {
            if let Some(token) = &self.control.runtime().server.admin_token {
                let presented = session
                    .get_header("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                match presented {
                    None => return gateway_error(GatewayError::MissingKey),
                    Some(p) if !token_matches(p, token.expose()) => {
                        return gateway_error(GatewayError::InvalidKey)
                    }
                    Some(_) => {}
                }
            }
        }
        match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => json_reply(200, json!({"status": "ok"})),
            ("GET", "/readyz") if self.control.is_draining() => {
                json_reply(503, json!({"status": "draining"}))
            }
            ("GET", "/readyz") => json_reply(200, json!({"status": "ready"})),
            ("GET", "/metrics") => {
                self.metrics.refresh_endpoints(&self.control.runtime());
                if let Some(ledger) = &self.ledger {
                    self.metrics.refresh_ledger(ledger);
                }
                self.metrics.refresh_limiter(&self.limiter);
                reply(
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(),
                )
            }
            ("GET", "/admin/providers") => json_reply(200, providers_json(&self.control.runtime())),
            ("GET", "/admin/config") => json_reply(200, self.control.runtime().redacted_json()),
            ("GET", "/admin/stats") => json_reply(200, self.metrics.latency.to_json()),
            ("GET", "/admin/usage") => {
                let query = session.req_header().uri.query().map(str::to_string);
                let (status, body) = ledger::report(self.ledger.as_ref(), query.as_deref()).await;
                json_reply(status, body)
            }
            ("POST", "/admin/reload") => match self.control.reload("admin API").await {
                Ok(()) => json_reply(200, json!({"status": "reloaded"})),
                Err(e) => admin_error(400, "invalid_config", &e.to_string()),
            },
            (
                _,
                "/healthz" | "/readyz" | "/metrics" | "/admin/config" | "/admin/reload"
                | "/admin/providers" | "/admin/usage" | "/admin/stats",
            ) => gateway_error(GatewayError::MethodNotAllowed { method, path }),
            _ => gateway_error(GatewayError::UnknownPath(path)),
        }
    }
}

/// What the endpoint's server last reported, and the score routing gives it; `null` when
/// unknown (never read, failed, or stale).
fn load_json(view: Option<LoadView>) -> serde_json::Value {
    let Some(view) = view else {
        return serde_json::Value::Null;
    };
    json!({
        "queue": view.queue,
        "waiting": view.report.waiting,
        "running": view.report.running,
        "kv_cache": view.kv_cache,
        "gpu_utilization": view.report.gpu_utilization,
        "lora_adapters": view.report.lora_adapters,
        "age_ms": view.age.as_millis() as u64,
        "score": gpu::load_score(&Scoring::default(), &view),
    })
}

/// `GET /admin/providers`: what the router knows about each endpoint now.
fn providers_json(runtime: &Runtime) -> serde_json::Value {
    let now = Instant::now();
    let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    json!({
        "providers": runtime.providers.iter().map(|p| json!({
            "name": p.name,
            "kind": p.kind.name(),
            "endpoints": p.pool.endpoints().iter().map(|e| {
                let s = &e.state;
                json!({
                    "address": e.label,
                    "available": s.availability(now).is_ok(),
                    "healthy": s.healthy(),
                    "ewma_ms": s.latency.estimate_at(now).map(|v| (v * 1e6).round() / 1e3),
                    "in_flight": s.in_flight(),
                    "cooldown_remaining_ms": ms(s.cooldown_remaining(now)),
                    "ejected_remaining_ms": ms(s.ejection_remaining(now)),
                    "ejections": s.ejections(),
                    "consecutive_failures": s.consecutive_failures(),
                    "load": p.load_metrics.as_ref().map(|m| load_json(s.load.view(now, m.fresh_for(), s.in_flight()))),
                })
            }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
