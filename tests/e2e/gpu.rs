//! GPU-aware routing: the gateway reads vLLM's and Triton's own metrics and routes by queue,
//! KV cache and prompt prefix.

use crate::harness::*;
use serde_json::{json, Value};
use std::time::Duration;

/// A gateway over one pool of `kind` mocks, `strategy: gpu-aware`, scraping every 100 ms.
async fn gateway(kind: &str, mocks: &[&Mock], model: &str) -> Gateway {
    let endpoints: Vec<String> = mocks.iter().map(|m| format!("\"{}\"", m.addr)).collect();
    Gateway::start(&format!(
        "providers:\n  - {{ name: gpu, kind: {kind}, endpoints: [{}], load_metrics: {{ every: 100ms }} }}\nmodels:\n  - name: m\n    strategy: gpu-aware\n    targets: [{{ provider: gpu, model: {model} }}]\n",
        endpoints.join(", ")
    ))
    .await
}

/// `GET /admin/providers`.
async fn providers(gw: &Gateway) -> Value {
    reqwest::get(gw.admin_url("/admin/providers"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until the gateway has a fresh scrape of every endpoint; returns the admin view.
async fn scraped(gw: &Gateway, endpoints: usize) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let view = providers(gw).await;
        let loads = view["providers"][0]["endpoints"].as_array().unwrap();
        if loads.len() == endpoints && loads.iter().all(|e| e["load"].is_object()) {
            return view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never scraped: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn endpoint_load<'a>(view: &'a Value, mock: &Mock) -> &'a Value {
    view["providers"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == mock.addr.to_string())
        .map(|e| &e["load"])
        .unwrap()
}

/// Sends `n` chats for `model` one after another; returns how many each mock received.
async fn spread(
    gw: &Gateway,
    mocks: &[&Mock],
    n: usize,
    body: impl Fn(usize) -> Value,
) -> Vec<usize> {
    for mock in mocks {
        mock.clear().await;
    }
    let client = reqwest::Client::new();
    for i in 0..n {
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .json(&body(i))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let mut counts = Vec::new();
    for mock in mocks {
        let requests = mock.requests().await;
        counts.push(
            requests
                .iter()
                // Generation only, whatever the kind's path: not the scrapes.
                .filter(|r| r["method"] == "POST")
                .count(),
        );
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn the_idle_vllm_replica_gets_the_traffic_and_it_follows_a_flip() {
    let busy = Mock::start(&["--kind", "vllm"]);
    let idle = Mock::start(&["--kind", "vllm"]);
    busy.configure(json!({"waiting": 50, "kv_cache_usage": 0.97}))
        .await;
    let gw = gateway("vllm", &[&busy, &idle], "llama").await;
    let view = scraped(&gw, 2).await;
    assert_eq!(endpoint_load(&view, &busy)["waiting"], 50.0);
    assert_eq!(endpoint_load(&view, &busy)["kv_cache"], 0.97);
    assert_eq!(endpoint_load(&view, &idle)["waiting"], 0.0);
    assert!(
        endpoint_load(&view, &busy)["score"].as_f64().unwrap()
            < endpoint_load(&view, &idle)["score"].as_f64().unwrap()
    );

    let counts = spread(&gw, &[&busy, &idle], 40, |_| chat_body("m", false)).await;
    assert!(counts[1] >= 36, "{counts:?}");

    // Flip the gauges: within 2 s the traffic follows.
    busy.configure(json!({"waiting": 0, "kv_cache_usage": null}))
        .await;
    idle.configure(json!({"waiting": 50, "kv_cache_usage": 0.97}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = spread(&gw, &[&busy, &idle], 40, |_| chat_body("m", false)).await;
    assert!(counts[0] >= 36, "{counts:?}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("tollgate_endpoint_load_score{"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_kv_cache_alone_keeps_traffic_away() {
    let full = Mock::start(&["--kind", "vllm", "--kv-cache-usage", "0.95"]);
    let roomy = Mock::start(&["--kind", "vllm", "--kv-cache-usage", "0.2"]);
    let gw = gateway("vllm", &[&full, &roomy], "llama").await;
    scraped(&gw, 2).await;
    let counts = spread(&gw, &[&full, &roomy], 20, |_| chat_body("m", false)).await;
    assert_eq!(counts, [0, 20]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_idle_triton_replica_gets_the_traffic() {
    let busy = Mock::start(&["--kind", "triton"]);
    let idle = Mock::start(&["--kind", "triton"]);
    busy.configure(json!({"waiting": 20})).await;
    let gw = gateway("triton", &[&busy, &idle], "llama").await;
    let view = scraped(&gw, 2).await;
    assert_eq!(endpoint_load(&view, &busy)["waiting"], 20.0);
    let counts = spread(&gw, &[&busy, &idle], 40, |_| chat_body("m", false)).await;
    assert!(counts[1] >= 36, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prompts_sharing_a_prefix_stay_on_one_replica_while_it_has_headroom() {
    let a = Mock::start(&["--kind", "vllm"]);
    let b = Mock::start(&["--kind", "vllm"]);
    let gw = gateway("vllm", &[&a, &b], "llama").await;
    scraped(&gw, 2).await;
    let system = "You are a support agent for Tollgate. ".repeat(60);
    let counts = spread(&gw, &[&a, &b], 20, |i| {
        json!({"model": "m", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": format!("Question number {i}?")},
        ]})
    })
    .await;
    assert!(counts.contains(&20), "{counts:?}");

    // Once the holder reports a long queue, the prefix no longer holds traffic there.
    let holder = if counts[0] == 20 { &a } else { &b };
    holder.configure(json!({"waiting": 50})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = spread(&gw, &[&a, &b], 10, |i| {
        json!({"model": "m", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": format!("Another question {i}?")},
        ]})
    })
    .await;
    let at_holder = if std::ptr::eq(holder, &a) {
        counts[0]
    } else {
        counts[1]
    };
    assert_eq!(at_holder, 0, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_whose_metrics_cannot_be_read_never_looks_idle() {
    let reporting = Mock::start(&["--kind", "vllm", "--waiting", "4"]);
    let silent = Mock::start(&["--kind", "vllm"]);
    // The second provider's metrics path does not exist: its load stays unknown.
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: seen, kind: vllm, base_url: \"{}\", load_metrics: {{ every: 100ms }} }}\n  - {{ name: unseen, kind: vllm, base_url: \"{}\", load_metrics: {{ path: /no-metrics-here, every: 100ms }} }}\nmodels:\n  - name: m\n    strategy: gpu-aware\n    targets: [{{ provider: seen, model: llama }}, {{ provider: unseen, model: llama }}]\n",
        reporting.url(),
        silent.url()
    ))
    .await;
    let ready = eventually(Duration::from_secs(5), || async {
        let view = providers(&gw).await;
        view["providers"][0]["endpoints"][0]["load"]["waiting"] == 4.0
            && view["providers"][1]["endpoints"][0]["load"].is_null()
    })
    .await;
    assert!(ready);
    // Taken for idle, the silent replica would win every request; taken for as busy as the
    // busiest known one, it shares them.
    let counts = spread(&gw, &[&reporting, &silent], 40, |_| chat_body("m", false)).await;
    assert!(counts[1] <= 30 && counts[0] >= 10, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lora_adapter_draws_its_requests_to_the_replica_that_has_it_loaded() {
    let with = Mock::start(&["--kind", "vllm", "--lora-adapters", "sql-lora,chat-lora"]);
    let without = Mock::start(&["--kind", "vllm"]);
    let gw = gateway("vllm", &[&with, &without], "sql-lora").await;
    let view = scraped(&gw, 2).await;
    assert_eq!(
        endpoint_load(&view, &with)["lora_adapters"],
        json!(["sql-lora", "chat-lora"]),
        "{view}"
    );
    let counts = spread(&gw, &[&with, &without], 20, |_| chat_body("m", false)).await;
    assert_eq!(counts, [20, 0]);

    // The adapter moves: so does the traffic, once the gateway has scraped again.
    with.configure(json!({"lora_adapters": []})).await;
    without
        .configure(json!({"lora_adapters": ["sql-lora"]}))
        .await;
    let moved = eventually(Duration::from_secs(3), || async {
        let view = providers(&gw).await;
        endpoint_load(&view, &without)["lora_adapters"] == json!(["sql-lora"])
            && endpoint_load(&view, &with)["lora_adapters"] == json!([])
    })
    .await;
    assert!(moved, "{}", providers(&gw).await);
    let counts = spread(&gw, &[&with, &without], 20, |_| chat_body("m", false)).await;
    assert_eq!(counts, [0, 20]);
}
