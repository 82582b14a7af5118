//! Command-line flags of a mock provider, shared by `tollgate-mock` and `tollgate mock`.

use std::io::Write;
use std::net::SocketAddr;

use clap::Args;

use crate::config::{
    check_error_rate, check_error_status, check_kv_cache_usage, check_tokens_per_sec, MockConfig,
    MockKind, DEFAULT_MODEL,
};
use crate::gpu::{check_time, GpuSim};

/// Flags that start one mock provider.
#[derive(Args, Clone, Debug)]
pub struct MockArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Provider to imitate.
    #[arg(long, value_enum, default_value_t = MockKind::Openai)]
    pub kind: MockKind,
    /// Delay before a non-stream response, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Delay before the first stream chunk, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,
    /// Stream pacing in tokens per second; 0 streams as fast as possible.
    #[arg(long, default_value_t = 0.0, value_parser = tokens_per_sec)]
    pub tokens_per_sec: f64,
    /// Tokens per answer (capped by the request's max_tokens).
    #[arg(long, default_value_t = 16)]
    pub completion_tokens: u32,
    /// Probability (0..=1) of answering an inference request with an error.
    #[arg(long, default_value_t = 0.0, value_parser = error_rate)]
    pub error_rate: f64,
    /// Status of injected errors.
    #[arg(long, default_value_t = 500, value_parser = error_status)]
    pub error_status: u16,
    /// Retry-after of injected 429 and 503 errors, in seconds.
    #[arg(long = "retry-after", value_name = "SECS", default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Start failing health checks (GET /health, GET /v1/models and
    /// GET /v2/health/ready answer 503).
    #[arg(long)]
    pub unhealthy: bool,
    /// Abort the connection after this many stream data chunks.
    #[arg(long)]
    pub drop_after_chunks: Option<u32>,
    /// After this many stream events, send an in-stream error event and end
    /// the stream (Anthropic and Triton kinds).
    #[arg(long)]
    pub error_event_after_chunks: Option<u32>,
    /// Require this API key, where the kind carries it (Bearer, api-key on
    /// Azure paths, x-api-key, x-goog-api-key or ?key=).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Models served by GET /v1/models, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_MODEL)]
    pub models: Vec<String>,
    /// Added to the waiting requests that /metrics reports (vLLM waiting,
    /// Triton pending and TensorRT-LLM waiting counts).
    #[arg(long, default_value_t = 0)]
    pub waiting: u32,
    /// Report this KV-cache usage (0..=1) in /metrics instead of the real one.
    #[arg(long, value_parser = kv_cache_usage)]
    pub kv_cache_usage: Option<f64>,
    /// Simulate a GPU server with this many batch slots: generation requests
    /// queue for a slot and KV room, then take prefill and decode time (in
    /// place of --latency-ms, --ttft-ms and --tokens-per-sec), and vLLM and
    /// Triton metrics report its queue and caches.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub gpu_slots: Option<u32>,
    /// Simulated KV-cache capacity, in tokens.
    #[arg(long, requires = "gpu_slots", default_value_t = GpuSim::DEFAULT.kv_tokens,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub gpu_kv_tokens: u32,
    /// Simulated prefill time per prompt token missed by the prefix cache, in microseconds.
    #[arg(long, requires = "gpu_slots", default_value_t = GpuSim::DEFAULT.prefill_us_per_token,
          value_parser = time)]
    pub gpu_prefill_us_per_token: f64,
    /// Simulated decode step of a lone sequence, in milliseconds.
    #[arg(long, requires = "gpu_slots", default_value_t = GpuSim::DEFAULT.decode_ms,
          value_parser = time)]
    pub gpu_decode_ms: f64,
    /// What each running sequence adds to a simulated decode step, in milliseconds.
    #[arg(long, requires = "gpu_slots", default_value_t = GpuSim::DEFAULT.decode_ms_per_batch,
          value_parser = time)]
    pub gpu_decode_ms_per_batch: f64,
    /// Tokens per simulated prefix-cache block (4 bytes of prompt text a token).
    #[arg(long, requires = "gpu_slots", default_value_t = GpuSim::DEFAULT.prefix_block_tokens,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub gpu_prefix_block_tokens: u32,
    /// LoRA adapters the vLLM metrics report as loaded, comma-separated
    /// (`vllm:lora_requests_info`).
    #[arg(long, value_delimiter = ',')]
    pub lora_adapters: Vec<String>,
    /// Do not record requests for GET /mock/requests.
    #[arg(long)]
    pub no_record: bool,
    /// Put the Unix time in microseconds each OpenAI chat chunk was sent in its
    /// `mock_sent_us` field, for measuring per-chunk transit latency.
    #[arg(long)]
    pub stamp_chunks: bool,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
}

impl MockArgs {
    /// The server behaviour these flags ask for (`listen` and `threads` are the caller's).
    pub fn into_config(self) -> MockConfig {
        MockConfig {
            kind: self.kind,
            latency_ms: self.latency_ms,
            ttft_ms: self.ttft_ms,
            tokens_per_sec: self.tokens_per_sec,
            completion_tokens: self.completion_tokens,
            error_rate: self.error_rate,
            error_status: self.error_status,
            retry_after_secs: self.retry_after_secs,
            healthy: !self.unhealthy,
            drop_after_chunks: self.drop_after_chunks,
            error_event_after_chunks: self.error_event_after_chunks,
            api_key: self.api_key,
            models: self.models,
            waiting: self.waiting,
            kv_cache_usage: self.kv_cache_usage,
            gpu: self.gpu_slots.map(|slots| GpuSim {
                slots,
                kv_tokens: self.gpu_kv_tokens,
                prefill_us_per_token: self.gpu_prefill_us_per_token,
                decode_ms: self.gpu_decode_ms,
                decode_ms_per_batch: self.gpu_decode_ms_per_batch,
                prefix_block_tokens: self.gpu_prefix_block_tokens,
            }),
            record: !self.no_record,
            stamp_chunks: self.stamp_chunks,
            lora_adapters: self.lora_adapters,
        }
    }
}

/// Runs one mock in the foreground until the process ends: binds, prints
/// `listening on <addr>` (tests read it to learn an ephemeral port), then serves.
pub fn run_foreground(args: MockArgs) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = crate::server::bind(args.listen)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", listener.local_addr()?)?;
        stdout.flush()?;
        drop(stdout);
        crate::server::serve(listener, args.into_config()).await
    })
}

fn tokens_per_sec(s: &str) -> Result<f64, String> {
    check_tokens_per_sec(s.parse().map_err(|e| format!("{e}"))?)
}

fn error_rate(s: &str) -> Result<f64, String> {
    check_error_rate(s.parse().map_err(|e| format!("{e}"))?)
}

fn error_status(s: &str) -> Result<u16, String> {
    check_error_status(s.parse().map_err(|e| format!("{e}"))?)
}

fn kv_cache_usage(s: &str) -> Result<f64, String> {
    check_kv_cache_usage(s.parse().map_err(|e| format!("{e}"))?)
}

fn time(s: &str) -> Result<f64, String> {
    check_time(s.parse().map_err(|e| format!("{e}"))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mock: MockArgs,
    }

    fn parse(args: &[&str]) -> Result<MockArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("mock").chain(args.iter().copied())).map(|c| c.mock)
    }

    #[test]
    fn defaults_match_config_defaults() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(args.threads, 2);
        let cfg = args.into_config();
        let def = MockConfig::default();
        assert_eq!(cfg.kind, def.kind);
        assert_eq!(cfg.completion_tokens, def.completion_tokens);
        assert_eq!(cfg.error_status, def.error_status);
        assert_eq!(cfg.retry_after_secs, def.retry_after_secs);
        assert_eq!(cfg.healthy, def.healthy);
        assert_eq!(cfg.models, def.models);
        assert_eq!(cfg.record, def.record);
        assert_eq!(cfg.kv_cache_usage, None);
        assert_eq!(cfg.gpu, None);
    }

    #[test]
    fn gpu_flags_make_the_simulation() {
        let cfg = parse(&["--gpu-slots", "4"]).unwrap().into_config();
        assert_eq!(
            cfg.gpu,
            Some(GpuSim {
                slots: 4,
                ..GpuSim::DEFAULT
            })
        );
        let cfg = parse(&[
            "--gpu-slots",
            "2",
            "--gpu-kv-tokens",
            "1000",
            "--gpu-prefill-us-per-token",
            "12.5",
            "--gpu-decode-ms",
            "20",
            "--gpu-decode-ms-per-batch",
            "1.5",
            "--gpu-prefix-block-tokens",
            "32",
            "--kv-cache-usage",
            "0.25",
        ])
        .unwrap()
        .into_config();
        assert_eq!(
            cfg.gpu,
            Some(GpuSim {
                slots: 2,
                kv_tokens: 1000,
                prefill_us_per_token: 12.5,
                decode_ms: 20.0,
                decode_ms_per_batch: 1.5,
                prefix_block_tokens: 32,
            })
        );
        assert_eq!(cfg.kv_cache_usage, Some(0.25));
        // The shape flags mean nothing without the slots that switch it on.
        assert!(parse(&["--gpu-kv-tokens", "1000"]).is_err());
        assert!(parse(&["--gpu-decode-ms", "5"]).is_err());
        for bad in [
            &["--gpu-slots", "0"][..],
            &["--gpu-slots", "1", "--gpu-kv-tokens", "0"],
            &["--gpu-slots", "1", "--gpu-prefix-block-tokens", "0"],
            &["--gpu-slots", "1", "--gpu-decode-ms", "-1"],
            &["--gpu-slots", "1", "--gpu-prefill-us-per-token", "inf"],
            &["--kv-cache-usage", "1.5"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn flags_reach_config() {
        let cfg = parse(&[
            "--kind",
            "vllm",
            "--error-event-after-chunks",
            "4",
            "--models",
            "a,b",
            "--no-record",
            "--drop-after-chunks",
            "3",
            "--error-rate",
            "0.5",
            "--api-key",
            "k",
            "--retry-after",
            "7",
            "--unhealthy",
        ])
        .unwrap()
        .into_config();
        assert_eq!(cfg.kind, MockKind::Vllm);
        assert_eq!(cfg.models, ["a", "b"]);
        assert!(!cfg.record);
        assert_eq!(cfg.drop_after_chunks, Some(3));
        assert_eq!(cfg.error_event_after_chunks, Some(4));
        assert_eq!(cfg.error_rate, 0.5);
        assert_eq!(cfg.api_key.as_deref(), Some("k"));
        assert_eq!(cfg.retry_after_secs, 7);
        assert!(!cfg.healthy);
    }

    #[test]
    fn rejects_out_of_range_values() {
        assert!(parse(&["--error-rate", "1.5"]).is_err());
        assert!(parse(&["--tokens-per-sec", "-1"]).is_err());
        assert!(parse(&["--error-status", "200"]).is_err());
        assert!(parse(&["--error-status", "70000"]).is_err());
        assert!(parse(&["--retry-after", "-1"]).is_err());
        assert!(parse(&["--threads", "0"]).is_err());
        assert!(parse(&["--kind", "tgi"]).is_err());
    }

    #[test]
    fn every_kind_has_its_flag_name() {
        for kind in MockKind::ALL {
            let args = parse(&["--kind", kind.as_str()]).unwrap();
            assert_eq!(args.kind, kind);
        }
    }
}
