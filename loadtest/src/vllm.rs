//! vLLM's operational endpoints: `/health` and Prometheus `/metrics`.

use std::fmt::Write;

use http::StatusCode;

use crate::body::{full, MockResponse};
use crate::config::MockConfig;
use crate::router::Endpoint;
use crate::state::Shared;

pub(crate) fn route(path: &str) -> Option<Endpoint> {
    match path {
        "/health" => Some(Endpoint::Health),
        "/metrics" => Some(Endpoint::Metrics),
        _ => None,
    }
}

/// KV-cache use each running request adds to the reported fraction.
const KV_CACHE_PER_REQUEST: f64 = 0.05;

pub(crate) fn metrics(shared: &Shared, cfg: &MockConfig) -> MockResponse {
    let running = shared.running();
    let gauges = [
        (
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            running as f64,
        ),
        (
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            f64::from(cfg.waiting),
        ),
        (
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            (running as f64 * KV_CACHE_PER_REQUEST).min(1.0),
        ),
    ];
    full(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        render(cfg.first_model(), &gauges).into_bytes(),
    )
}

fn render(model: &str, gauges: &[(&str, &str, f64)]) -> String {
    let mut out = String::new();
    for (name, help, value) in gauges {
        // Debug formatting prints floats as vLLM does ("3.0", not "3").
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n\
             {name}{{engine=\"0\",model_name=\"{}\"}} {value:?}\n",
            escape_label(model)
        );
    }
    out
}

/// Escapes a Prometheus label value.
pub(crate) fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gauges() {
        let text = render(
            "m\"1",
            &[("vllm:x", "An x.", 2.0), ("vllm:y", "A y.", 0.05)],
        );
        assert_eq!(
            text,
            "# HELP vllm:x An x.\n# TYPE vllm:x gauge\nvllm:x{engine=\"0\",model_name=\"m\\\"1\"} 2.0\n\
             # HELP vllm:y A y.\n# TYPE vllm:y gauge\nvllm:y{engine=\"0\",model_name=\"m\\\"1\"} 0.05\n"
        );
    }
}
