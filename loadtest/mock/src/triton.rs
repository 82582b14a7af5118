//! NVIDIA Triton: the KServe v2 generate extension, readiness and the
//! Prometheus metrics a load-aware router reads.

use std::fmt::Write;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::body::{full, json, sse_json, MockResponse};
use crate::config::MockConfig;
use crate::router::Endpoint;
use crate::state::{Load, Shared};
use crate::stream::{self, Plan, StreamFormat};
use crate::text::{cap_tokens, completion_text, estimate_tokens, token_piece};
use crate::vllm::escape_label;

pub(crate) fn route(path: &str) -> Option<Endpoint> {
    match path {
        "/v2/health/ready" => return Some(Endpoint::Health),
        "/metrics" => return Some(Endpoint::TritonMetrics),
        _ => {}
    }
    let rest = path.strip_prefix("/v2/models/")?;
    let (model, version, operation) = match rest.split('/').collect::<Vec<_>>()[..] {
        [model, operation] => (model, None, operation),
        [model, "versions", version, operation] if !version.is_empty() => {
            (model, Some(version.to_owned()), operation)
        }
        _ => return None,
    };
    let stream = match operation {
        "generate" => false,
        "generate_stream" => true,
        _ => return None,
    };
    (!model.is_empty()).then(|| Endpoint::Generate {
        model: model.to_owned(),
        version,
        stream,
    })
}

/// The model version answers name when the path names none.
const DEFAULT_VERSION: &str = "1";

/// The model a generate path addresses.
pub(crate) struct Target {
    pub(crate) model: String,
    pub(crate) version: Option<String>,
}

/// Unknown inputs and parameters (`stream`, `temperature`, ...) are ignored:
/// the path alone decides whether the answer streams.
#[derive(Deserialize)]
struct GenerateRequest {
    id: Option<String>,
    text_input: Option<String>,
    /// TensorRT-LLM ensembles take it as a top-level input.
    max_tokens: Option<u32>,
    #[serde(default)]
    parameters: Parameters,
}

#[derive(Default, Deserialize)]
struct Parameters {
    max_tokens: Option<u32>,
}

pub(crate) async fn handle(
    shared: &Arc<Shared>,
    cfg: &MockConfig,
    body: &[u8],
    target: Target,
    stream: bool,
) -> MockResponse {
    let running = shared.start_running();
    let req: GenerateRequest = match serde_json::from_slice(body) {
        Ok(req) => req,
        Err(e) => return invalid(&format!("failed to parse the request JSON buffer: {e}")),
    };
    let Some(text_input) = req.text_input else {
        return invalid("expected a 'text_input' input, got none");
    };
    let limit = req.parameters.max_tokens.or(req.max_tokens);
    let (tokens, _) = cap_tokens(cfg.completion_tokens, limit);
    let outputs = Outputs {
        id: req.id,
        model_version: target.version.unwrap_or_else(|| DEFAULT_VERSION.to_owned()),
        model_name: target.model,
    };
    let prompt_tokens = estimate_tokens(text_input.len(), 0);
    let plan = Plan::generation(shared, cfg, tokens, prompt_tokens, || {
        text_input.into_bytes()
    });
    if stream {
        return stream::start(shared, outputs, plan, running);
    }
    plan.whole_answer().await;
    json(StatusCode::OK, &outputs.output(&completion_text(tokens)))
}

fn invalid(message: &str) -> MockResponse {
    error(StatusCode::BAD_REQUEST, message)
}

/// Triton's error body, `{"error": "<message>"}`.
pub(crate) fn error(status: StatusCode, message: &str) -> MockResponse {
    json(status, &ErrorBody { error: message })
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

/// The identity every response of one request carries.
struct Outputs {
    id: Option<String>,
    model_name: String,
    model_version: String,
}

#[derive(Serialize)]
struct Output<'a> {
    /// Echoed when the request had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    model_name: &'a str,
    model_version: &'a str,
    text_output: &'a str,
}

impl Outputs {
    fn output<'a>(&'a self, text_output: &'a str) -> Output<'a> {
        Output {
            id: self.id.as_deref(),
            model_name: &self.model_name,
            model_version: &self.model_version,
            text_output,
        }
    }
}

impl StreamFormat for Outputs {
    const CONTENT_TYPE: &'static str = "text/event-stream; charset=utf-8";

    fn token(&self, i: u32, out: &mut Vec<Bytes>) {
        out.push(sse_json(&self.output(token_piece(i))));
    }

    /// The stream just ends: Triton sends no final event.
    fn closing(&self, _out: &mut Vec<Bytes>) {}

    /// A failure after the 200 arrives as an event, as Triton sends one.
    fn error_event(&self) -> Option<Bytes> {
        Some(sse_json(&ErrorBody {
            error: "in-stream error (injected by tollgate-mock)",
        }))
    }
}

/// GPU utilization each running request adds to the reported fraction
/// when no GPU is simulated.
const UTILIZATION_PER_REQUEST: f64 = 0.05;

/// The GPU the mock pretends to run on, in Triton's `gpu_uuid` form.
const GPU_UUID: &str = "GPU-00000000-0000-0000-0000-000000000000";

/// GPU memory one simulated KV-cache token takes: a Llama-3-8B token in
/// fp16 (32 layers, 8 KV heads of 128 dimensions, keys and values, 2 bytes).
const KV_BYTES_PER_TOKEN: u64 = 32 * 8 * 128 * 2 * 2;

/// Triton's numbers, as its `/metrics` shows them.
#[derive(Debug, PartialEq)]
struct Shown {
    pending: u64,
    utilization: f64,
    /// KV-cache bytes used and in all, when a GPU is simulated.
    memory: Option<(u64, u64)>,
    /// TensorRT-LLM's active and waiting requests.
    active: u64,
    waiting: u64,
    kv_fraction: f64,
}

impl Shown {
    fn new(load: &Load) -> Self {
        let (pending, utilization, memory) = match load.gpu {
            // Triton counts as pending what has not started executing.
            Some(gpu) => (
                load.waiting,
                gpu.slot_usage(),
                gpu.sim.map(|sim| {
                    let total = u64::from(sim.kv_tokens) * KV_BYTES_PER_TOKEN;
                    (gpu.kv_used * KV_BYTES_PER_TOKEN, total)
                }),
            ),
            // Without a simulation the mock has always counted requests in
            // flight as pending, and made them the utilization.
            None => (
                load.running.saturating_add(load.waiting),
                (load.running as f64 * UTILIZATION_PER_REQUEST).min(1.0),
                None,
            ),
        };
        Shown {
            pending,
            utilization,
            memory,
            active: load.running,
            waiting: load.waiting,
            kv_fraction: load.kv_usage,
        }
    }
}

/// Triton's server gauges and the TensorRT-LLM backend's, from the
/// simulated GPU or the requests in flight (see `Shared::load`).
pub(crate) fn metrics(shared: &Shared, cfg: &MockConfig) -> MockResponse {
    let shown = Shown::new(&shared.load(cfg));
    full(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        render(cfg.first_model(), &shown).into_bytes(),
    )
}

fn render(model: &str, shown: &Shown) -> String {
    let model = escape_label(model);
    let version = format!("version=\"{DEFAULT_VERSION}\"");
    let gpu = format!("gpu_uuid=\"{GPU_UUID}\"");
    let mut out = String::new();
    gauge(
        &mut out,
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model.",
        &[(format!("model=\"{model}\",{version}"), shown.pending as f64)],
    );
    gauge(
        &mut out,
        "nv_gpu_utilization",
        "GPU utilization rate [0.0 - 1.0)",
        &[(gpu.clone(), shown.utilization)],
    );
    if let Some((used, total)) = shown.memory {
        gauge(
            &mut out,
            "nv_gpu_memory_total_bytes",
            "GPU total memory, in bytes",
            &[(gpu.clone(), total as f64)],
        );
        gauge(
            &mut out,
            "nv_gpu_memory_used_bytes",
            "GPU used memory, in bytes",
            &[(gpu, used as f64)],
        );
    }
    // prometheus-cpp sorts label names.
    let request = |kind: &str| format!("model=\"{model}\",request_type=\"{kind}\",{version}");
    gauge(
        &mut out,
        "nv_trt_llm_request_metrics",
        "TRT LLM request metrics",
        &[
            (request("active"), shown.active as f64),
            (request("waiting"), shown.waiting as f64),
        ],
    );
    gauge(
        &mut out,
        "nv_trt_llm_kv_cache_block_metrics",
        "TRT LLM KV cache block metrics",
        &[(
            format!("kv_cache_block_type=\"fraction\",model=\"{model}\",{version}"),
            shown.kv_fraction,
        )],
    );
    out
}

/// One gauge family; `samples` are label sets (inside the braces) and values.
fn gauge(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
    for (labels, value) in samples {
        // prometheus-cpp prints plain numbers ("3", "0.05"), as Display does.
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn outputs(id: Option<&str>) -> Outputs {
        Outputs {
            id: id.map(str::to_owned),
            model_name: "llm".into(),
            model_version: "1".into(),
        }
    }

    #[test]
    fn routes() {
        assert!(matches!(
            route("/v2/models/llm/generate"),
            Some(Endpoint::Generate { model, version: None, stream: false }) if model == "llm"
        ));
        assert!(matches!(
            route("/v2/models/llm/versions/3/generate_stream"),
            Some(Endpoint::Generate { version: Some(v), stream: true, .. }) if v == "3"
        ));
        assert!(matches!(route("/v2/health/ready"), Some(Endpoint::Health)));
        assert!(route("/v2/models/llm/infer").is_none());
        assert!(route("/v2/models//generate").is_none());
        assert!(route("/v2/models/llm/versions//generate").is_none());
        assert!(route("/v2/models/llm").is_none());
        assert!(route("/health").is_none());
    }

    #[tokio::test]
    async fn stream_is_one_token_per_event_and_no_terminator() {
        let events = stream::collect(&outputs(None), 3).await;
        let texts: Vec<Value> = events
            .iter()
            .map(|event| {
                let text = std::str::from_utf8(event).unwrap();
                let data = text
                    .strip_prefix("data: ")
                    .and_then(|t| t.strip_suffix("\n\n"))
                    .unwrap_or_else(|| panic!("not one event: {text:?}"));
                serde_json::from_str(data).unwrap()
            })
            .collect();
        assert_eq!(
            texts,
            [
                json!({"model_name": "llm", "model_version": "1", "text_output": "Hello"}),
                json!({"model_name": "llm", "model_version": "1", "text_output": " from"}),
                json!({"model_name": "llm", "model_version": "1", "text_output": " the"}),
            ]
        );
    }

    #[test]
    fn outputs_echo_the_id() {
        let o = outputs(Some("42"));
        assert_eq!(
            serde_json::to_value(o.output("hi")).unwrap(),
            json!({"id": "42", "model_name": "llm", "model_version": "1", "text_output": "hi"})
        );
        assert_eq!(
            &outputs(None).error_event().unwrap()[..],
            b"data: {\"error\":\"in-stream error (injected by tollgate-mock)\"}\n\n"
        );
    }

    #[test]
    fn renders_metrics() {
        let shown = Shown {
            pending: 3,
            utilization: 0.05,
            memory: Some((131_072, 262_144)),
            active: 1,
            waiting: 2,
            kv_fraction: 0.5,
        };
        let text = render("m\"1", &shown);
        for line in [
            "# TYPE nv_inference_pending_request_count gauge",
            "nv_inference_pending_request_count{model=\"m\\\"1\",version=\"1\"} 3",
            "# TYPE nv_gpu_utilization gauge",
            "nv_gpu_utilization{gpu_uuid=\"GPU-00000000-0000-0000-0000-000000000000\"} 0.05",
            "nv_gpu_memory_total_bytes{gpu_uuid=\"GPU-00000000-0000-0000-0000-000000000000\"} 262144",
            "nv_gpu_memory_used_bytes{gpu_uuid=\"GPU-00000000-0000-0000-0000-000000000000\"} 131072",
            "# TYPE nv_trt_llm_request_metrics gauge",
            "nv_trt_llm_request_metrics{model=\"m\\\"1\",request_type=\"active\",version=\"1\"} 1",
            "nv_trt_llm_request_metrics{model=\"m\\\"1\",request_type=\"waiting\",version=\"1\"} 2",
            "# TYPE nv_trt_llm_kv_cache_block_metrics gauge",
            "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\",\
             model=\"m\\\"1\",version=\"1\"} 0.5",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let idle = Shown {
            pending: 0,
            memory: None,
            ..shown
        };
        let text = render("m", &idle);
        assert!(text.contains("} 0\n"));
        assert!(!text.contains("nv_gpu_memory"));
    }

    #[test]
    fn shows_the_simulation_or_the_requests_in_flight() {
        use crate::gpu::{GpuLoad, GpuSim, PrefixStats};
        let in_flight = Load {
            running: 2,
            waiting: 3,
            kv_usage: 0.1,
            gpu: None,
            prefix: PrefixStats::default(),
        };
        let shown = Shown::new(&in_flight);
        assert_eq!((shown.pending, shown.active, shown.waiting), (5, 2, 3));
        assert_eq!((shown.utilization, shown.memory), (0.1, None));

        let sim = GpuSim {
            slots: 4,
            kv_tokens: 100,
            ..GpuSim::DEFAULT
        };
        let simulated = Load {
            gpu: Some(GpuLoad {
                running: 2,
                waiting: 1,
                kv_used: 25,
                sim: Some(sim),
                prefix: PrefixStats::default(),
            }),
            ..in_flight
        };
        let shown = Shown::new(&simulated);
        assert_eq!((shown.pending, shown.active, shown.waiting), (3, 2, 3));
        assert_eq!(shown.utilization, 0.5);
        assert_eq!(shown.memory, Some((25 * 131_072, 100 * 131_072)));
        assert_eq!(shown.kv_fraction, 0.1);
    }
}
