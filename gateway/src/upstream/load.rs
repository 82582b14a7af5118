//! What a GPU server says about its load: read from its Prometheus `/metrics` (vLLM, Triton and
//! TensorRT-LLM names), kept with the endpoint, together with what this gateway sent it since
//! and the prompt prefixes it served recently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One scrape, normalised across server kinds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Requests queued, not yet running.
    pub waiting: f64,
    /// Requests in the running batch, when the server says.
    pub running: Option<f64>,
    /// KV-cache use, 0..1, when the server says.
    pub kv_cache: Option<f64>,
    /// GPU utilisation, 0..1 (Triton).
    pub gpu_utilization: Option<f64>,
    /// LoRA adapters loaded and running or waiting (vLLM's newest `lora_requests_info`).
    pub lora_adapters: Vec<String>,
}

/// One sample of a Prometheus text exposition.
struct Sample<'a> {
    name: &'a str,
    labels: &'a str,
    value: f64,
}

/// The samples of a Prometheus text exposition; malformed lines are skipped.
fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (series, rest) = match line.find('{') {
            Some(open) => {
                let close = open + line[open..].rfind('}')?;
                (&line[..close + 1], &line[close + 1..])
            }
            None => line.split_at(line.find(char::is_whitespace)?),
        };
        let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
        let (name, labels) = match series.find('{') {
            Some(open) => (&series[..open], &series[open + 1..series.len() - 1]),
            None => (series, ""),
        };
        value.is_finite().then_some(Sample {
            name,
            labels,
            value,
        })
    })
}

/// `a + b`, saturating: a server's huge values must not add up to infinity (and then to NaN,
/// which compares as nothing and would scramble routing scores).
fn sum(a: f64, b: f64) -> f64 {
    (a + b).clamp(-f64::MAX, f64::MAX)
}

/// The value of label `name` in a label set such as `a="x",b="y"`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = labels;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim().trim_start_matches(',').trim();
        let after = &rest[eq + 2..];
        // Values may hold escaped quotes.
        let mut end = 0;
        let bytes = after.as_bytes();
        while end < bytes.len() && bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        let value = after.get(..end)?;
        if key == name {
            return Some(value);
        }
        rest = after.get(end + 1..)?;
    }
    None
}

impl LoadReport {
    /// Reads the metrics a vLLM or Triton (TensorRT-LLM) server exposes. `None` when the text
    /// holds none of them: a server that reports nothing must not look idle.
    pub fn parse(text: &str) -> Option<LoadReport> {
        let mut report = LoadReport::default();
        let mut known = false;
        let mut kv_vllm: Option<f64> = None;
        let mut kv_trt: Option<f64> = None;
        let (mut gpu_used, mut gpu_total) = (None::<f64>, None::<f64>);
        let (mut utilization, mut gpus) = (0.0, 0u32);
        let (mut pending, mut trt_waiting, mut trt_active) = (None::<f64>, None::<f64>, None);
        let mut newest_lora: Option<(f64, String)> = None;
        let add = |slot: &mut Option<f64>, v: f64| *slot = Some(sum(slot.unwrap_or(0.0), v));
        for s in samples(text) {
            match s.name {
                "vllm:num_requests_waiting" => {
                    report.waiting = sum(report.waiting, s.value);
                    known = true;
                }
                "vllm:num_requests_running" => add(&mut report.running, s.value),
                "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => {
                    kv_vllm = Some(kv_vllm.unwrap_or(0.0).max(s.value));
                    known = true;
                }
                // Its value is the time the series was written: the newest is the state now.
                "vllm:lora_requests_info"
                    if newest_lora.as_ref().is_none_or(|(at, _)| s.value > *at) =>
                {
                    let adapters = ["running_lora_adapters", "waiting_lora_adapters"]
                        .iter()
                        .filter_map(|l| label(s.labels, l))
                        .collect::<Vec<_>>()
                        .join(",");
                    newest_lora = Some((s.value, adapters));
                }
                "nv_inference_pending_request_count" => {
                    add(&mut pending, s.value);
                    known = true;
                }
                "nv_trt_llm_request_metrics" => match label(s.labels, "request_type") {
                    Some("waiting") => add(&mut trt_waiting, s.value),
                    Some("active") => add(&mut trt_active, s.value),
                    _ => {}
                },
                "nv_trt_llm_kv_cache_block_metrics"
                    if label(s.labels, "kv_cache_block_type") == Some("fraction") =>
                {
                    kv_trt = Some(kv_trt.unwrap_or(0.0).max(s.value));
                    known = true;
                }
                "nv_gpu_utilization" => {
                    utilization = sum(utilization, s.value);
                    gpus += 1;
                    known = true;
                }
                "nv_gpu_memory_used_bytes" => add(&mut gpu_used, s.value),
                "nv_gpu_memory_total_bytes" => add(&mut gpu_total, s.value),
                _ => {}
            }
        }
        if !known {
            return None;
        }
        // Triton counts a model's pending requests; TensorRT-LLM its own queue: the larger.
        if let Some(waiting) = pending.into_iter().chain(trt_waiting).reduce(f64::max) {
            report.waiting = sum(report.waiting, waiting);
        }
        // Counts below zero are nonsense: none.
        report.waiting = report.waiting.max(0.0);
        report.running = report.running.or(trt_active).map(|r| r.max(0.0));
        let memory = match (gpu_used, gpu_total) {
            (Some(used), Some(total)) if total > 0.0 => Some(used / total),
            _ => None,
        };
        report.kv_cache = kv_vllm.or(kv_trt).or(memory).map(|f| f.clamp(0.0, 1.0));
        report.gpu_utilization =
            (gpus > 0).then(|| (utilization / f64::from(gpus)).clamp(0.0, 1.0));
        report.lora_adapters = newest_lora
            .map(|(_, names)| {
                names
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Some(report)
    }
}

/// Prefix blocks an endpoint remembers having served (each is one chained hash).
const PREFIX_MEMORY: usize = 4096;

/// Recently served prompt prefixes, as chained block hashes: a bounded LRU. Each block keeps
/// the time it was last served; past the bound, the least recently served quarter goes.
#[derive(Default)]
struct PrefixMemory {
    last_served: HashMap<u64, u64>,
    clock: u64,
}

impl PrefixMemory {
    fn remember(&mut self, blocks: &[u64]) {
        self.clock += 1;
        for &block in blocks {
            self.last_served.insert(block, self.clock);
        }
        if self.last_served.len() > PREFIX_MEMORY + PREFIX_MEMORY / 4 {
            let mut stamps: Vec<u64> = self.last_served.values().copied().collect();
            let cut = stamps.len() - PREFIX_MEMORY;
            let (_, &mut oldest_kept, _) = stamps.select_nth_unstable(cut);
            self.last_served.retain(|_, stamp| *stamp >= oldest_kept);
        }
    }

    /// How many leading blocks of `blocks` were served here.
    fn matched(&self, blocks: &[u64]) -> usize {
        blocks
            .iter()
            .take_while(|b| self.last_served.contains_key(b))
            .count()
    }
}

/// The last scrape, when it came, and what happened since.
#[derive(Default)]
pub struct LoadState {
    last: Mutex<Option<(Instant, LoadReport)>>,
    /// Requests this gateway sent since the last scrape: a burst between scrapes must not
    /// all go to the replica that looked idlest.
    sent_since: AtomicU32,
    prefixes: Mutex<PrefixMemory>,
}

/// What routing reads of an endpoint's load now.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadView {
    /// Queue depth: waiting as reported, plus what this gateway sent since that is still in
    /// flight.
    pub queue: f64,
    pub kv_cache: Option<f64>,
    pub report: LoadReport,
    pub age: Duration,
}

impl LoadState {
    pub fn record(&self, at: Instant, report: LoadReport) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((at, report));
        self.sent_since.store(0, Ordering::Relaxed);
    }

    /// A scrape failed or said nothing: what was known is no longer true.
    pub fn forget(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The load as of the last scrape, if it is younger than `fresh`; `in_flight` is what
    /// this gateway has running there now.
    pub fn view(&self, now: Instant, fresh: Duration, in_flight: u32) -> Option<LoadView> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (at, report) = last.as_ref()?;
        let age = now.saturating_duration_since(*at);
        // Sent since the scrape and already answered, a request is in no queue.
        let unseen = self.sent_since.load(Ordering::Relaxed).min(in_flight);
        (age <= fresh).then(|| LoadView {
            queue: report.waiting + f64::from(unseen),
            kv_cache: report.kv_cache,
            report: report.clone(),
            age,
        })
    }

    /// A request went to this endpoint, with these prompt prefix blocks.
    pub fn sent(&self, prefix: &[u64]) {
        self.sent_since.fetch_add(1, Ordering::Relaxed);
        if !prefix.is_empty() {
            self.prefixes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remember(prefix);
        }
    }

    /// How many leading blocks of `prefix` this endpoint served recently.
    pub fn prefix_match(&self, prefix: &[u64]) -> usize {
        if prefix.is_empty() {
            return 0;
        }
        self.prefixes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .matched(prefix)
    }
}

/// Bytes per prefix block: about 64 tokens, a multiple of vLLM's 16-token KV blocks.
pub const PREFIX_BLOCK_BYTES: usize = 256;
/// Blocks hashed per prompt at most: affinity is about the leading part.
const MAX_PREFIX_BLOCKS: usize = 64;

/// Chained hashes of a prompt's leading whole blocks: block i's hash covers blocks 0..=i, so
/// equal hashes mean equal prefixes.
pub fn prefix_blocks(prompt: &str) -> Vec<u64> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut chain = 0u64;
    prompt
        .as_bytes()
        .chunks_exact(PREFIX_BLOCK_BYTES)
        .take(MAX_PREFIX_BLOCKS)
        .map(|block| {
            let mut h = DefaultHasher::new();
            chain.hash(&mut h);
            block.hash(&mut h);
            chain = h.finish();
            chain
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_values_never_add_up_to_nan() {
        let page = "nv_gpu_memory_used_bytes 1e308\nnv_gpu_memory_used_bytes 1e308\n\
                    nv_gpu_memory_total_bytes 1e308\nnv_gpu_memory_total_bytes 1e308\n\
                    nv_gpu_utilization 1e308\nnv_gpu_utilization 1e308\n\
                    vllm:num_requests_waiting 1e308\nvllm:num_requests_waiting 1e308\n\
                    vllm:num_requests_running -1e308\nvllm:num_requests_running -1e308\n";
        let report = LoadReport::parse(page).unwrap();
        assert_eq!(report.kv_cache, Some(1.0));
        assert_eq!(report.gpu_utilization, Some(1.0));
        assert_eq!(report.waiting, f64::MAX);
        assert_eq!(report.running, Some(0.0));
    }

    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 50.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.97
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql,chat",waiting_lora_adapters="tone"} 1.8e9
vllm:prompt_tokens_total{model_name="m"} 12345
"#;

    #[test]
    fn reads_vllm() {
        let r = LoadReport::parse(VLLM).unwrap();
        assert_eq!(r.waiting, 50.0);
        assert_eq!(r.running, Some(3.0));
        assert_eq!(r.kv_cache, Some(0.97));
        assert_eq!(r.lora_adapters, ["sql", "chat", "tone"]);
        // Older servers name the KV gauge after the GPU.
        let old = "vllm:num_requests_waiting 0\nvllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n";
        assert_eq!(LoadReport::parse(old).unwrap().kv_cache, Some(0.5));
    }

    #[test]
    fn reads_triton_and_trt_llm() {
        let text = r#"# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="llama",version="1"} 4
nv_gpu_utilization{gpu_uuid="GPU-a"} 0.5
nv_gpu_utilization{gpu_uuid="GPU-b"} 0.7
nv_gpu_memory_used_bytes{gpu_uuid="GPU-a"} 30000000000
nv_gpu_memory_total_bytes{gpu_uuid="GPU-a"} 80000000000
"#;
        let r = LoadReport::parse(text).unwrap();
        assert_eq!(r.waiting, 4.0);
        assert_eq!(r.kv_cache, Some(0.375));
        assert!((r.gpu_utilization.unwrap() - 0.6).abs() < 1e-9);
        let trt = format!(
            "{text}nv_trt_llm_request_metrics{{model=\"t\",request_type=\"waiting\"}} 9\nnv_trt_llm_request_metrics{{model=\"t\",request_type=\"active\"}} 2\nnv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type=\"fraction\",model=\"t\"}} 0.25\nnv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type=\"max\",model=\"t\"}} 1000\n"
        );
        let r = LoadReport::parse(&trt).unwrap();
        assert_eq!(
            (r.waiting, r.running, r.kv_cache),
            (9.0, Some(2.0), Some(0.25))
        );
    }

    #[test]
    fn nothing_known_is_no_report() {
        assert_eq!(
            LoadReport::parse("go_goroutines 12\n# only comments\n"),
            None
        );
        assert_eq!(LoadReport::parse("garbage {{{ x\n"), None);
    }

    #[test]
    fn labels_with_escapes() {
        let labels = r#"a="x\"y",b="z""#;
        assert_eq!(label(labels, "b"), Some("z"));
        assert_eq!(label(labels, "a"), Some(r#"x\"y"#));
        assert_eq!(label(labels, "c"), None);
    }

    #[test]
    fn views_go_stale_and_count_what_was_sent() {
        let state = LoadState::default();
        let t0 = Instant::now();
        let fresh = Duration::from_secs(1);
        assert!(state.view(t0, fresh, 0).is_none());
        state.record(t0, LoadReport::parse(VLLM).unwrap());
        for _ in 0..3 {
            state.sent(&[]);
        }
        // Two of the three still running.
        assert_eq!(state.view(t0, fresh, 2).unwrap().queue, 52.0);
        assert_eq!(state.view(t0, fresh, 9).unwrap().queue, 53.0);
        assert!(state.view(t0 + Duration::from_secs(2), fresh, 0).is_none());
        state.record(t0, LoadReport::default());
        assert_eq!(state.view(t0, fresh, 5).unwrap().queue, 0.0);
        state.forget();
        assert!(state.view(t0, fresh, 0).is_none());
    }

    #[test]
    fn prefixes_chain_and_match_from_the_start() {
        let shared = "s".repeat(PREFIX_BLOCK_BYTES * 3);
        let a = prefix_blocks(&format!("{shared}{}", "a".repeat(PREFIX_BLOCK_BYTES)));
        let b = prefix_blocks(&format!("{shared}{}", "b".repeat(PREFIX_BLOCK_BYTES)));
        assert_eq!(a.len(), 4);
        assert_eq!(a[..3], b[..3]);
        assert_ne!(a[3], b[3]);
        // The same block after a different prefix hashes differently.
        let shifted = prefix_blocks(&format!("{}{shared}", "x".repeat(PREFIX_BLOCK_BYTES)));
        assert_ne!(shifted[1], a[0]);
        let state = LoadState::default();
        state.sent(&a);
        assert_eq!(state.prefix_match(&b), 3);
        assert_eq!(state.prefix_match(&a), 4);
        assert_eq!(state.prefix_match(&shifted), 0);
        assert!(prefix_blocks("short").is_empty());
    }

    #[test]
    fn prefix_memory_forgets_the_least_recently_served() {
        let mut memory = PrefixMemory::default();
        memory.remember(&[1, 2]);
        for block in 100..100 + 2 * PREFIX_MEMORY as u64 {
            // Block 1 keeps being served; block 2 never again.
            memory.remember(&[1, block]);
        }
        assert!(memory.last_served.len() <= PREFIX_MEMORY + PREFIX_MEMORY / 4);
        assert_eq!(memory.matched(&[1]), 1);
        assert_eq!(memory.matched(&[2]), 0);
    }
}
