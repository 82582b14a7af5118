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

/// A Prometheus metric family of one series.
struct Series {
    name: &'static str,
    help: &'static str,
    counter: bool,
    value: f64,
}

impl Series {
    fn gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Series {
            name,
            help,
            counter: false,
            value,
        }
    }

    fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Series {
            name,
            help,
            counter: true,
            value: value as f64,
        }
    }
}

/// vLLM's scheduler and cache gauges, and its prefix-cache counters, from
/// the simulated GPU or the requests in flight (see `Shared::load`).
pub(crate) fn metrics(shared: &Shared, cfg: &MockConfig) -> MockResponse {
    let load = shared.load(cfg);
    let series = [
        Series::gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            load.running as f64,
        ),
        Series::gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            load.waiting as f64,
        ),
        Series::gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            load.kv_usage,
        ),
        Series::counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            load.prefix.queries,
        ),
        Series::counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            load.prefix.hits,
        ),
    ];
    let mut page = render(cfg.first_model(), &series);
    if !cfg.lora_adapters.is_empty() {
        page += &lora_info(&cfg.lora_adapters, unix_seconds());
    }
    full(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        page.into_bytes(),
    )
}

/// vLLM's `lora_requests_info`: one gauge whose labels name the adapters and whose value is
/// the time they were last reported.
fn lora_info(adapters: &[String], now: f64) -> String {
    format!(
        "# HELP vllm:lora_requests_info Running stats on lora requests.\n\
         # TYPE vllm:lora_requests_info gauge\n\
         vllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"\"}} {now:?}\n",
        adapters.len().max(1),
        escape_label(&adapters.join(",")),
    )
}

fn unix_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn render(model: &str, series: &[Series]) -> String {
    let model = escape_label(model);
    let mut out = String::new();
    for s in series {
        let name = s.name;
        let (kind, suffix) = if s.counter {
            // prometheus_client names a counter's sample `<name>_total`.
            ("counter", "_total")
        } else {
            ("gauge", "")
        };
        // Debug formatting prints floats as vLLM does ("3.0", not "3").
        let _ = write!(
            out,
            "# HELP {name} {}\n# TYPE {name} {kind}\n\
             {name}{suffix}{{engine=\"0\",model_name=\"{model}\"}} {:?}\n",
            s.help, s.value
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
    fn lora_adapters_as_vllm_reports_them() {
        assert_eq!(
            lora_info(&["sql".into(), "chat".into()], 1.5),
            "# HELP vllm:lora_requests_info Running stats on lora requests.\n\
             # TYPE vllm:lora_requests_info gauge\n\
             vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"sql,chat\",waiting_lora_adapters=\"\"} 1.5\n"
        );
    }

    #[test]
    fn renders_gauges_and_counters() {
        let text = render(
            "m\"1",
            &[
                Series::gauge("vllm:x", "An x.", 2.0),
                Series::gauge("vllm:y", "A y.", 0.05),
                Series::counter("vllm:z", "A z.", 7),
            ],
        );
        assert_eq!(
            text,
            "# HELP vllm:x An x.\n# TYPE vllm:x gauge\nvllm:x{engine=\"0\",model_name=\"m\\\"1\"} 2.0\n\
             # HELP vllm:y A y.\n# TYPE vllm:y gauge\nvllm:y{engine=\"0\",model_name=\"m\\\"1\"} 0.05\n\
             # HELP vllm:z A z.\n# TYPE vllm:z counter\nvllm:z_total{engine=\"0\",model_name=\"m\\\"1\"} 7.0\n"
        );
    }
}
