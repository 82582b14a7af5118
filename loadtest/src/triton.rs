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
use crate::state::Shared;
use crate::stream::{self, answer_delay, Plan, StreamFormat};
use crate::text::{cap_tokens, completion_text, token_piece};
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
    if req.text_input.is_none() {
        return invalid("expected a 'text_input' input, got none");
    }
    let limit = req.parameters.max_tokens.or(req.max_tokens);
    let (tokens, _) = cap_tokens(cfg.completion_tokens, limit);
    let outputs = Outputs {
        id: req.id,
        model_version: target.version.unwrap_or_else(|| DEFAULT_VERSION.to_owned()),
        model_name: target.model,
    };
    if stream {
        return stream::start(shared, outputs, Plan::new(cfg, tokens), running);
    }
    answer_delay(cfg).await;
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

/// GPU utilization each running request adds to the reported fraction.
const UTILIZATION_PER_REQUEST: f64 = 0.05;

/// The GPU the mock pretends to run on, in Triton's `gpu_uuid` form.
const GPU_UUID: &str = "GPU-00000000-0000-0000-0000-000000000000";

/// Triton's gauges: requests answered now plus the configured `waiting`
/// count as pending, and they drive the GPU utilization.
pub(crate) fn metrics(shared: &Shared, cfg: &MockConfig) -> MockResponse {
    let running = shared.running();
    let pending = running.saturating_add(u64::from(cfg.waiting));
    let utilization = (running as f64 * UTILIZATION_PER_REQUEST).min(1.0);
    full(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        render(cfg.first_model(), pending, utilization).into_bytes(),
    )
}

fn render(model: &str, pending: u64, utilization: f64) -> String {
    let mut out = String::new();
    // prometheus-cpp prints plain numbers ("3", "0.05"), as Display does.
    let _ = write!(
        out,
        "# HELP nv_inference_pending_request_count Instantaneous number of pending \
         requests awaiting execution per-model.\n\
         # TYPE nv_inference_pending_request_count gauge\n\
         nv_inference_pending_request_count{{model=\"{}\",version=\"{DEFAULT_VERSION}\"}} {pending}\n\
         # HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)\n\
         # TYPE nv_gpu_utilization gauge\n\
         nv_gpu_utilization{{gpu_uuid=\"{GPU_UUID}\"}} {utilization}\n",
        escape_label(model)
    );
    out
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
        let text = render("m\"1", 3, 0.05);
        for line in [
            "# TYPE nv_inference_pending_request_count gauge",
            "nv_inference_pending_request_count{model=\"m\\\"1\",version=\"1\"} 3",
            "# TYPE nv_gpu_utilization gauge",
            "nv_gpu_utilization{gpu_uuid=\"GPU-00000000-0000-0000-0000-000000000000\"} 0.05",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(render("m", 0, 0.0).contains("} 0\n"));
    }
}
