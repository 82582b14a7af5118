//! What a mock provider is and how it behaves.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::gpu::GpuSim;

/// Which provider the mock imitates. Every kind decides its own routes in
/// `router::Endpoint::resolve`, so a new kind is a new variant plus its routes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum MockKind {
    /// The OpenAI API (plus the Azure OpenAI deployment paths).
    #[default]
    Openai,
    /// A vLLM OpenAI-compatible server: the OpenAI API plus `/health` and `/metrics`.
    Vllm,
    /// The Anthropic Messages API (`/v1/messages`).
    Anthropic,
    /// The Gemini Developer API (`/v1beta/models/{model}:generateContent`).
    Gemini,
    /// NVIDIA Triton's KServe v2 generate extension, health and metrics.
    Triton,
    /// An Ollama server: its OpenAI-compatible API plus `GET /api/version`.
    Ollama,
}

impl MockKind {
    /// Every kind, in declaration order.
    pub const ALL: [MockKind; 6] = [
        MockKind::Openai,
        MockKind::Vllm,
        MockKind::Anthropic,
        MockKind::Gemini,
        MockKind::Triton,
        MockKind::Ollama,
    ];

    /// The lowercase name used on the command line and in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            MockKind::Openai => "openai",
            MockKind::Vllm => "vllm",
            MockKind::Anthropic => "anthropic",
            MockKind::Gemini => "gemini",
            MockKind::Triton => "triton",
            MockKind::Ollama => "ollama",
        }
    }
}

impl fmt::Display for MockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown [`MockKind`] name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKind(pub String);

impl fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known: Vec<&str> = MockKind::ALL.iter().map(|k| k.as_str()).collect();
        write!(
            f,
            "unknown mock kind {:?} (expected one of: {})",
            self.0,
            known.join(", ")
        )
    }
}

impl std::error::Error for UnknownKind {}

impl FromStr for MockKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MockKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// How a mock provider answers.
#[derive(Clone, Debug)]
pub struct MockConfig {
    pub kind: MockKind,
    /// Delay before a non-stream response.
    pub latency_ms: u64,
    /// Delay before the first stream chunk.
    pub ttft_ms: u64,
    /// Pace of stream token chunks; 0 sends them as fast as possible.
    pub tokens_per_sec: f64,
    /// Tokens generated per answer, capped by the request's `max_tokens`.
    pub completion_tokens: u32,
    /// Probability (0..=1) of answering an inference request with `error_status`.
    pub error_rate: f64,
    pub error_status: u16,
    /// `retry-after` of injected 429, 503 and 529 errors, in seconds.
    pub retry_after_secs: u64,
    /// When false, health probes (`GET /health`, `GET /v1/models`, Triton's
    /// `GET /v2/health/ready`) answer 503, as a failing replica would.
    pub healthy: bool,
    /// Abort the connection mid-stream after this many data chunks.
    pub drop_after_chunks: Option<u32>,
    /// After this many stream events, send the API's in-stream error event
    /// and end the stream cleanly. Only Anthropic and Triton define such an
    /// event; other kinds ignore it.
    pub error_event_after_chunks: Option<u32>,
    /// When set, requests must carry this key, where the kind expects it
    /// (see `auth::presented_keys`).
    pub api_key: Option<String>,
    /// Served by `GET /v1/models`; the first also labels vLLM metrics.
    pub models: Vec<String>,
    /// Added to the waiting requests that metrics report (vLLM's
    /// `vllm:num_requests_waiting`, Triton's pending and TensorRT-LLM
    /// waiting counts), simulated GPU or not.
    pub waiting: u32,
    /// When set, metrics report this KV-cache usage (0..=1) instead of
    /// their own (`vllm:kv_cache_usage_perc`, TensorRT-LLM's
    /// `kv_cache_block_type="fraction"`), simulated GPU or not.
    pub kv_cache_usage: Option<f64>,
    /// Simulate a GPU server: chat, completion and Triton generate requests
    /// then queue for its batch slots and KV cache and take its prefill and
    /// decode time instead of `latency_ms`, `ttft_ms` and `tokens_per_sec`;
    /// vLLM and Triton metrics report its state.
    pub gpu: Option<GpuSim>,
    /// Keep the last requests for `GET /mock/requests`.
    pub record: bool,
    /// LoRA adapters vLLM metrics report as loaded (`vllm:lora_requests_info`).
    pub lora_adapters: Vec<String>,
    /// Stamp each OpenAI chat chunk with `"mock_sent_us"`, the Unix time in
    /// microseconds it was rendered, so a client on the same host can measure how long
    /// each chunk spent in transit (and what a proxy on the way adds).
    pub stamp_chunks: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            kind: MockKind::Openai,
            latency_ms: 0,
            ttft_ms: 0,
            tokens_per_sec: 0.0,
            completion_tokens: 16,
            error_rate: 0.0,
            error_status: 500,
            retry_after_secs: 1,
            healthy: true,
            drop_after_chunks: None,
            error_event_after_chunks: None,
            api_key: None,
            models: vec![DEFAULT_MODEL.to_owned()],
            waiting: 0,
            kv_cache_usage: None,
            gpu: None,
            record: true,
            stamp_chunks: false,
            lora_adapters: Vec::new(),
        }
    }
}

/// The model listed when no models are configured.
pub const DEFAULT_MODEL: &str = "mock-gpt";

impl MockConfig {
    /// Time between two token chunks, `None` when unpaced.
    pub(crate) fn token_period(&self) -> Option<Duration> {
        if self.tokens_per_sec > 0.0 {
            Duration::try_from_secs_f64(1.0 / self.tokens_per_sec).ok()
        } else {
            None
        }
    }

    /// Whether this request should get an injected error.
    pub(crate) fn roll_error(&self) -> bool {
        self.error_rate > 0.0 && fastrand::f64() < self.error_rate
    }

    /// The model that labels vLLM and Triton metrics series.
    pub(crate) fn first_model(&self) -> &str {
        self.models.first().map_or(DEFAULT_MODEL, String::as_str)
    }
}

// Range checks shared by the command line and `POST /mock/config`, so both
// accept exactly the same values.

/// A pace in tokens per second.
pub(crate) fn check_tokens_per_sec(v: f64) -> Result<f64, String> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} is not a finite number >= 0"))
    }
}

/// An error probability.
pub(crate) fn check_error_rate(v: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a probability between 0 and 1"))
    }
}

/// A reported KV-cache usage: a fraction of the whole cache.
pub(crate) fn check_kv_cache_usage(v: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a fraction between 0 and 1"))
    }
}

/// The status of injected errors: a client or server error.
pub(crate) fn check_error_status(v: u16) -> Result<u16, String> {
    if (400..=599).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not an error status (400..=599)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in MockKind::ALL {
            assert_eq!(kind.to_string().parse::<MockKind>(), Ok(kind));
        }
        assert_eq!("VLLM".parse::<MockKind>(), Ok(MockKind::Vllm));
        assert_eq!("Anthropic".parse::<MockKind>(), Ok(MockKind::Anthropic));
        assert!("tgi".parse::<MockKind>().is_err());
        assert!(UnknownKind("x".into())
            .to_string()
            .ends_with("openai, vllm, anthropic, gemini, triton, ollama)"));
    }

    #[test]
    fn token_period_from_rate() {
        let mut cfg = MockConfig::default();
        assert_eq!(cfg.token_period(), None);
        cfg.tokens_per_sec = 4.0;
        assert_eq!(cfg.token_period(), Some(Duration::from_millis(250)));
        cfg.tokens_per_sec = f64::NAN;
        assert_eq!(cfg.token_period(), None);
    }

    #[test]
    fn range_checks() {
        assert!(check_tokens_per_sec(0.0).is_ok());
        assert!(check_tokens_per_sec(-1.0).is_err());
        assert!(check_tokens_per_sec(f64::INFINITY).is_err());
        assert!(check_error_rate(1.0).is_ok());
        assert!(check_error_rate(1.5).is_err());
        assert!(check_error_rate(f64::NAN).is_err());
        assert!(check_kv_cache_usage(0.0).is_ok());
        assert!(check_kv_cache_usage(1.0).is_ok());
        assert!(check_kv_cache_usage(1.01).is_err());
        assert!(check_kv_cache_usage(f64::NAN).is_err());
        assert!(check_error_status(599).is_ok());
        assert!(check_error_status(200).is_err());
        assert!(check_error_status(600).is_err());
    }
}
