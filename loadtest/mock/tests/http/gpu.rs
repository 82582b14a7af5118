//! The simulated GPU over loopback: queueing for slots and KV room,
//! prefix-cache reuse, batch-dependent decode, cancellation and the
//! metrics overrides. Exact timings are unit-tested with paused time;
//! here only lower bounds are taken from the wall clock, as sleeps never
//! end early.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tollgate_mock::{GpuSim, MockConfig, MockKind};

use crate::client::{get_json, open_stream, post_json, raw_request, send, start};

const CHAT: &str = "/v1/chat/completions";
const TRITON_STREAM: &str = "/v2/models/llm/generate_stream";

fn sim(slots: u32, kv_tokens: u32) -> GpuSim {
    GpuSim {
        slots,
        kv_tokens,
        prefill_us_per_token: 0.0,
        decode_ms: 20.0,
        decode_ms_per_batch: 0.0,
        prefix_block_tokens: 16,
    }
}

fn vllm(gpu: Option<GpuSim>) -> SocketAddr {
    start(MockConfig {
        kind: MockKind::Vllm,
        completion_tokens: 500,
        gpu,
        ..MockConfig::default()
    })
}

/// A chat whose 8-byte prompt counts 2 tokens.
fn chat(stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "12345678"}]})
}

async fn metrics(addr: SocketAddr) -> String {
    String::from_utf8(send(addr, "GET", "/metrics", &[], b"").await.body()).unwrap()
}

/// The value of the series named exactly `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn vllm_series(name: &str) -> String {
    format!(r#"{name}{{engine="0",model_name="mock-gpt"}}"#)
}

/// Polls `/metrics` until `series` shows `want` (or fails after 5s).
async fn wait_for_metric(addr: SocketAddr, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics(addr).await;
        if value(&text, series) == Some(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends a request without reading the answer; dropping the connection
/// is the client going away.
async fn fire(addr: SocketAddr, path: &str, body: &Value) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let req = raw_request("POST", path, &[], body.to_string().as_bytes());
    conn.write_all(&req).await.unwrap();
    conn
}

#[tokio::test]
async fn a_full_batch_queues_and_cancelling_frees_the_slot() {
    let addr = vllm(Some(sim(1, 1000)));
    let running = vllm_series("vllm:num_requests_running");
    let waiting = vllm_series("vllm:num_requests_waiting");
    let kv = vllm_series("vllm:kv_cache_usage_perc");

    let first = open_stream(addr, CHAT, &[], &chat(true)).await;
    let text = metrics(addr).await;
    assert_eq!(value(&text, &running), Some(1.0), "{text}");
    assert_eq!(value(&text, &waiting), Some(0.0), "{text}");
    // 2 prompt tokens and 500 output tokens of 1000.
    assert_eq!(value(&text, &kv), Some(0.502), "{text}");

    let second = fire(addr, CHAT, &chat(true)).await;
    wait_for_metric(addr, &waiting, 1.0).await;
    let whole = fire(addr, CHAT, &chat(false)).await;
    wait_for_metric(addr, &waiting, 2.0).await;
    // A client that leaves the queue is out of it at once.
    drop(whole);
    wait_for_metric(addr, &waiting, 1.0).await;

    // Cancelling the running stream hands its slot to the next in line.
    drop(first);
    let text = wait_for_metric(addr, &waiting, 0.0).await;
    assert_eq!(value(&text, &running), Some(1.0), "{text}");
    drop(second);
    let text = wait_for_metric(addr, &running, 0.0).await;
    assert_eq!(value(&text, &kv), Some(0.0), "{text}");
}

#[tokio::test]
async fn too_little_kv_queues_with_slots_free() {
    let addr = vllm(Some(sim(4, 600)));
    let waiting = vllm_series("vllm:num_requests_waiting");
    let first = open_stream(addr, CHAT, &[], &chat(true)).await;
    let second = fire(addr, CHAT, &chat(true)).await;
    let text = wait_for_metric(addr, &waiting, 1.0).await;
    assert_eq!(
        value(&text, &vllm_series("vllm:num_requests_running")),
        Some(1.0)
    );
    assert_eq!(
        value(&text, &vllm_series("vllm:kv_cache_usage_perc")),
        Some(502.0 / 600.0)
    );
    // A shorter answer fits beside the first, but may not overtake the second.
    let mut short = chat(true);
    short["max_tokens"] = json!(10);
    let third = fire(addr, CHAT, &short).await;
    wait_for_metric(addr, &waiting, 2.0).await;
    drop((first, second, third));
}

#[tokio::test]
async fn a_shared_prefix_skips_its_prefill() {
    let addr = vllm(Some(GpuSim {
        prefill_us_per_token: 2000.0,
        decode_ms: 0.0,
        ..sim(4, 10_000)
    }));
    // 800 bytes: 200 tokens, 12 whole blocks of 64 bytes.
    let context = "The quick brown fox jumps over the lazy dog. ".repeat(18)[..800].to_owned();
    let ask = |question: &str| {
        json!({"model": "m", "max_tokens": 1,
               "messages": [{"role": "system", "content": context},
                            {"role": "user", "content": question}]})
    };

    let started = Instant::now();
    assert_eq!(post_json(addr, CHAT, &ask("")).await.status, 200);
    let cold = started.elapsed();
    assert!(cold >= Duration::from_millis(400), "{cold:?}");

    let started = Instant::now();
    let reply = post_json(addr, CHAT, &ask("Why?")).await;
    let warm = started.elapsed();
    assert_eq!(reply.json()["usage"]["prompt_tokens"], 201);
    // 192 of 201 tokens were cached: 18 ms of prefill, not 402.
    assert!(warm < cold / 2, "warm {warm:?}, cold {cold:?}");

    let text = metrics(addr).await;
    let queries = vllm_series("vllm:prefix_cache_queries_total");
    let hits = vllm_series("vllm:prefix_cache_hits_total");
    assert_eq!(value(&text, &queries), Some(401.0), "{text}");
    assert_eq!(value(&text, &hits), Some(192.0), "{text}");
    assert!(text.contains("# TYPE vllm:prefix_cache_hits counter\n"));
}

#[tokio::test]
async fn decode_slows_as_the_batch_grows() {
    let addr = vllm(Some(GpuSim {
        decode_ms: 10.0,
        decode_ms_per_batch: 10.0,
        ..sim(4, 10_000)
    }));
    let mut body = chat(false);
    body["max_tokens"] = json!(20);
    let timed = || async {
        let started = Instant::now();
        assert_eq!(post_json(addr, CHAT, &body).await.status, 200);
        started.elapsed()
    };
    // 19 decode steps: 20 ms each alone (380 ms), 30 ms each two at a
    // time (570 ms, less the steps one took before the other arrived).
    let alone = timed().await;
    assert!(alone >= Duration::from_millis(380), "{alone:?}");
    let (a, b) = tokio::join!(timed(), timed());
    assert!(a.max(b) >= Duration::from_millis(500), "{a:?} {b:?}");
}

#[tokio::test]
async fn overrides_replace_what_metrics_report() {
    let addr = vllm(None);
    let kv = vllm_series("vllm:kv_cache_usage_perc");
    let waiting = vllm_series("vllm:num_requests_waiting");
    let update = json!({"kv_cache_usage": 0.9, "waiting": 3});
    assert_eq!(post_json(addr, "/mock/config", &update).await.status, 200);
    let text = metrics(addr).await;
    assert_eq!(value(&text, &kv), Some(0.9), "{text}");
    assert_eq!(value(&text, &waiting), Some(3.0), "{text}");

    // Switched on, the simulation's queue adds to `waiting`, and the override stays.
    let on = post_json(addr, "/mock/config", &json!({"gpu": {"slots": 1}})).await;
    assert_eq!(on.json()["gpu"]["kv_tokens"], GpuSim::DEFAULT.kv_tokens);
    let first = open_stream(addr, CHAT, &[], &chat(true)).await;
    let second = fire(addr, CHAT, &chat(true)).await;
    let text = wait_for_metric(addr, &waiting, 4.0).await;
    assert_eq!(value(&text, &kv), Some(0.9), "{text}");

    let update = json!({"kv_cache_usage": null, "waiting": 0});
    post_json(addr, "/mock/config", &update).await;
    let text = metrics(addr).await;
    assert_eq!(value(&text, &waiting), Some(1.0), "{text}");
    assert_eq!(
        value(&text, &kv),
        Some(502.0 / f64::from(GpuSim::DEFAULT.kv_tokens))
    );
    drop((first, second));
}

fn triton(gpu: Option<GpuSim>) -> SocketAddr {
    start(MockConfig {
        kind: MockKind::Triton,
        models: vec!["llm".into()],
        completion_tokens: 300,
        gpu,
        ..MockConfig::default()
    })
}

/// 15 bytes of prompt: 4 tokens.
fn generate() -> Value {
    json!({"text_input": "What is Triton?"})
}

const PENDING: &str = r#"nv_inference_pending_request_count{model="llm",version="1"}"#;
const UTILIZATION: &str =
    r#"nv_gpu_utilization{gpu_uuid="GPU-00000000-0000-0000-0000-000000000000"}"#;
const MEMORY_USED: &str =
    r#"nv_gpu_memory_used_bytes{gpu_uuid="GPU-00000000-0000-0000-0000-000000000000"}"#;
const MEMORY_TOTAL: &str =
    r#"nv_gpu_memory_total_bytes{gpu_uuid="GPU-00000000-0000-0000-0000-000000000000"}"#;
const ACTIVE: &str = r#"nv_trt_llm_request_metrics{model="llm",request_type="active",version="1"}"#;
const WAITING: &str =
    r#"nv_trt_llm_request_metrics{model="llm",request_type="waiting",version="1"}"#;
const KV_FRACTION: &str =
    r#"nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="llm",version="1"}"#;

#[tokio::test]
async fn triton_reports_the_simulated_gpu() {
    let addr = triton(Some(sim(2, 1000)));
    let first = open_stream(addr, TRITON_STREAM, &[], &generate()).await;
    let second = open_stream(addr, TRITON_STREAM, &[], &generate()).await;
    let third = fire(addr, TRITON_STREAM, &generate()).await;
    let text = wait_for_metric(addr, WAITING, 1.0).await;
    for (series, want) in [
        (PENDING, 1.0),
        (UTILIZATION, 1.0),
        (ACTIVE, 2.0),
        (KV_FRACTION, 0.608),
        (MEMORY_USED, 608.0 * 131_072.0),
        (MEMORY_TOTAL, 1000.0 * 131_072.0),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
    }
    drop((first, second, third));
    let text = wait_for_metric(addr, ACTIVE, 0.0).await;
    assert_eq!(value(&text, UTILIZATION), Some(0.0), "{text}");
}

#[tokio::test]
async fn triton_overrides_without_the_simulation() {
    let addr = triton(None);
    let text = metrics(addr).await;
    assert_eq!(value(&text, KV_FRACTION), Some(0.0), "{text}");
    assert_eq!(
        value(&text, MEMORY_TOTAL),
        None,
        "no GPU, no memory:\n{text}"
    );
    let update = json!({"kv_cache_usage": 0.75, "waiting": 2, "tokens_per_sec": 10});
    post_json(addr, "/mock/config", &update).await;
    let stream = open_stream(addr, TRITON_STREAM, &[], &generate()).await;
    let text = metrics(addr).await;
    // Without the simulation, requests in flight count as pending, as before.
    for (series, want) in [
        (KV_FRACTION, 0.75),
        (WAITING, 2.0),
        (ACTIVE, 1.0),
        (PENDING, 3.0),
        (UTILIZATION, 0.05),
    ] {
        assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
    }
    drop(stream);
    assert_eq!(get_json(addr, "/mock/config").await["kv_cache_usage"], 0.75);
}
