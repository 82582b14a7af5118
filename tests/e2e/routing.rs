//! Routing that thinks: latency-aware choice, weights, health checks, cooldowns, ejection.

use crate::harness::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Sends `n` sequential requests; returns how many each mock received.
async fn spread(gw: &Gateway, n: usize, mocks: &[&Mock]) -> Vec<usize> {
    for mock in mocks {
        mock.clear().await;
    }
    for _ in 0..n {
        let r = gw.chat("m", false).await;
        assert_eq!(r.status(), 200);
    }
    let mut counts = Vec::new();
    for mock in mocks {
        counts.push(mock.requests().await.len());
    }
    counts
}

#[tokio::test(flavor = "multi_thread")]
async fn latency_routing_follows_the_faster_endpoint_and_shifts_back() {
    let (fast, slow) = (Mock::start(&[]), Mock::start(&["--latency-ms", "150"]));
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: gpu, kind: vllm, endpoints: [\"{}\", \"{}\"], ewma_decay: 1s }}\nmodels:\n  - name: m\n    strategy: latency\n    targets: [{{ provider: gpu, model: llama }}]\n",
        fast.addr, slow.addr
    ))
    .await;
    let r = gw.chat("m", false).await;
    assert_eq!(r.headers()["x-tollgate-route"], "latency");
    spread(&gw, 10, &[&fast, &slow]).await; // warm-up: both get measured

    let counts = spread(&gw, 40, &[&fast, &slow]).await;
    assert!(
        counts[0] * 10 >= 40 * 8,
        "≥ 80% to the faster endpoint: {counts:?}"
    );

    // The latencies swap: traffic follows.
    fast.configure(json!({"latency_ms": 150})).await;
    slow.configure(json!({"latency_ms": 0})).await;
    spread(&gw, 10, &[&fast, &slow]).await;
    let counts = spread(&gw, 40, &[&fast, &slow]).await;
    assert!(
        counts[1] * 10 >= 40 * 8,
        "≥ 80% to the now faster endpoint: {counts:?}"
    );

    let ewma = |v: Value| v["ewma_ms"].as_f64().unwrap();
    let now_fast = ewma(gw.endpoint_state("gpu", slow.addr).await);
    let now_slow = ewma(gw.endpoint_state("gpu", fast.addr).await);
    assert!(
        now_slow >= 100.0,
        "a slow sample lifted the estimate at once: {now_slow}"
    );
    assert!(now_fast < now_slow, "{now_fast} vs {now_slow}");
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("tollgate_endpoint_ewma_seconds{endpoint="),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn weighted_targets_share_by_weight() {
    let (a, b) = (Mock::start(&[]), Mock::start(&[]));
    let gw = Gateway::start(&format!(
        "providers:\n{}{}models:\n  - name: m\n    strategy: weighted\n    targets:\n      - {{ provider: a, model: x, weight: 3 }}\n      - {{ provider: b, model: x, weight: 1 }}\n",
        provider("a", &a.url()),
        provider("b", &b.url())
    ))
    .await;
    assert_eq!(spread(&gw, 40, &[&a, &b]).await, [30, 10]);
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_health_checks_take_an_endpoint_out_and_recovery_brings_it_back() {
    let (a, b) = (
        Mock::start(&["--kind", "vllm"]),
        Mock::start(&["--kind", "vllm"]),
    );
    let every = Duration::from_millis(300);
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: gpu, kind: vllm, endpoints: [\"{}\", \"{}\"], health_check: {{ every: 300ms, unhealthy_after: 2, healthy_after: 1 }} }}\nmodels:\n  - name: m\n    targets: [{{ provider: gpu, model: llama }}]\n",
        a.addr, b.addr
    ))
    .await;
    b.configure(json!({"healthy": false})).await;
    let flipped_at = Instant::now();
    let out = eventually(Duration::from_secs(5), || async {
        gw.endpoint_state("gpu", b.addr).await["healthy"] == false
    })
    .await;
    assert!(out, "the failing endpoint was never marked unhealthy");
    // Two failed checks are needed; allow the checker's tick and some scheduling slack.
    assert!(
        flipped_at.elapsed() <= every * 3 + Duration::from_millis(500),
        "took {:?}",
        flipped_at.elapsed()
    );
    assert_eq!(spread(&gw, 20, &[&a, &b]).await, [20, 0]);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "tollgate_endpoint_healthy{{endpoint=\"{}\",provider=\"gpu\"}} 0",
            b.addr
        )),
        "{metrics}"
    );

    // Every endpoint down: a fast 503 that says why, not a hang.
    a.configure(json!({"healthy": false})).await;
    let both_out = eventually(Duration::from_secs(5), || async {
        gw.endpoint_state("gpu", a.addr).await["healthy"] == false
    })
    .await;
    assert!(both_out);
    let e = expect_error(gw.chat("m", false).await, 503, Some("no_eligible_target")).await;
    assert!(
        e["message"].as_str().unwrap().contains("2 unhealthy"),
        "{e}"
    );

    a.configure(json!({"healthy": true})).await;
    b.configure(json!({"healthy": true})).await;
    let back = eventually(Duration::from_secs(5), || async {
        gw.endpoint_state("gpu", b.addr).await["healthy"] == true
    })
    .await;
    assert!(back, "the recovered endpoint never came back");
    let counts = spread(&gw, 20, &[&a, &b]).await;
    assert!(
        counts[1] > 0,
        "the recovered endpoint gets traffic again: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_cools_an_endpoint_down_for_that_long() {
    let limited = Mock::start(&[
        "--error-rate",
        "1",
        "--error-status",
        "429",
        "--retry-after",
        "2",
    ]);
    let spare = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n{}{}models:\n  - name: m\n    targets:\n      - {{ provider: limited, model: x }}\n      - {{ provider: spare, model: x }}\n",
        provider("limited", &limited.url()),
        provider("spare", &spare.url())
    ))
    .await;
    let r = gw.chat("m", false).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tollgate-attempts"], "2");
    let started = Instant::now();
    let state = gw.endpoint_state("limited", limited.addr).await;
    let remaining = state["cooldown_remaining_ms"].as_f64().unwrap();
    assert!(remaining > 1000.0 && remaining <= 2000.0, "{state}");

    // While it cools down, the first target is skipped without an attempt.
    limited.configure(json!({"error_rate": 0})).await;
    while started.elapsed() < Duration::from_millis(1500) {
        let r = gw.chat("m", false).await;
        assert_eq!(r.headers()["x-tollgate-provider"], "spare");
        assert_eq!(r.headers()["x-tollgate-attempts"], "1");
    }
    assert_eq!(limited.requests().await.len(), 1);
    // After ~2 s it serves again.
    let back = eventually(Duration::from_secs(3), || async {
        gw.chat("m", false).await.headers()["x-tollgate-provider"] == "limited"
    })
    .await;
    assert!(back);
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "the cooldown ended early"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consecutive_failures_eject_an_endpoint_and_state_survives_reload() {
    let good = Mock::start(&[]);
    let dead = format!("127.0.0.1:{}", dead_port());
    let config = |extra: &str| {
        format!(
            "providers:\n  - {{ name: pool, kind: vllm, endpoints: [\"{dead}\", \"{}\"], outlier: {{ consecutive_failures: 2, ejection: 30s }} }}\nmodels:\n  - name: m\n    targets: [{{ provider: pool, model: x }}]\n{extra}",
            good.addr
        )
    };
    let gw = Gateway::start(&config("")).await;
    let dead_addr = dead.parse().unwrap();
    let ejected = eventually(Duration::from_secs(10), || async {
        assert_eq!(gw.chat("m", false).await.status(), 200);
        gw.endpoint_state("pool", dead_addr).await["ejections"] == 1
    })
    .await;
    assert!(ejected, "{}", gw.endpoint_state("pool", dead_addr).await);
    let state = gw.endpoint_state("pool", dead_addr).await;
    assert!(
        state["ejected_remaining_ms"].as_f64().unwrap() > 20_000.0,
        "{state}"
    );
    for _ in 0..5 {
        assert_eq!(
            gw.chat("m", false).await.headers()["x-tollgate-attempts"],
            "1"
        );
    }
    assert!(gw
        .metrics()
        .await
        .contains("tollgate_endpoint_ejections_total"));

    // A reload that leaves the provider unchanged keeps what the router learned.
    let ewma_before: Value = gw.endpoint_state("pool", good.addr).await["ewma_ms"].clone();
    assert!(ewma_before.is_number());
    gw.rewrite(&config(
        "  - name: other\n    targets: [{ provider: pool, model: y }]\n",
    ));
    let reloaded = eventually(Duration::from_secs(3), || async {
        gw.chat("other", false).await.status() == 200
    })
    .await;
    assert!(reloaded);
    let state = gw.endpoint_state("pool", dead_addr).await;
    assert_eq!(
        state["ejections"], 1,
        "ejection survived the reload: {state}"
    );
    assert!(gw.endpoint_state("pool", good.addr).await["ewma_ms"].is_number());
}

/// A name in /etc/hosts for the length of a test (the tests run as root, as CI does).
struct HostsEntry {
    name: String,
    original: String,
}

impl HostsEntry {
    fn new() -> HostsEntry {
        let original = std::fs::read_to_string("/etc/hosts").unwrap();
        HostsEntry {
            name: format!("tollgate-e2e-{}.test", fastrand::u32(..)),
            original,
        }
    }

    /// Points the name at `ips` (none: the name stops resolving).
    fn set(&self, ips: &[&str]) {
        let mut text = self.original.clone();
        for ip in ips {
            text += &format!("{ip} {}\n", self.name);
        }
        write_hosts(&text).expect("tests need to write /etc/hosts (run as root)");
    }
}

/// Replaces /etc/hosts atomically where it can (other tests resolve `localhost` meanwhile);
/// a bind-mounted /etc/hosts cannot be renamed over, so it is then written in place.
fn write_hosts(text: &str) -> std::io::Result<()> {
    let staged = format!("/etc/hosts.tollgate-{}", std::process::id());
    std::fs::write(&staged, text)?;
    std::fs::set_permissions(&staged, std::fs::metadata("/etc/hosts")?.permissions())?;
    if std::fs::rename(&staged, "/etc/hosts").is_err() {
        let _ = std::fs::remove_file(&staged);
        std::fs::write("/etc/hosts", text)?;
    }
    Ok(())
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        let _ = write_hosts(&self.original);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dns_discovered_pool_follows_the_name() {
    let a = Mock::start(&["--kind", "vllm"]);
    let port = a.addr.port();
    // Same port, another loopback address: what a second pod behind the service looks like.
    let b = Mock::start_at(&format!("127.0.0.2:{port}"), &["--kind", "vllm"]);
    let hosts = HostsEntry::new();
    hosts.set(&["127.0.0.1"]);
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: gpu, kind: vllm, discovery: {{ dns: \"{}:{port}\", every: 200ms }} }}\nmodels:\n  - name: m\n    targets: [{{ provider: gpu, model: llama }}]\n",
        hosts.name
    ))
    .await;
    assert_eq!(spread(&gw, 5, &[&a, &b]).await, [5, 0]);

    hosts.set(&["127.0.0.2"]);
    let moved = eventually(Duration::from_secs(3), || async {
        gw.chat("m", false).await.status() == 200 && !b.requests().await.is_empty()
    })
    .await;
    assert!(moved, "the pool did not follow the new address");
    assert_eq!(spread(&gw, 5, &[&a, &b]).await, [0, 5]);

    // A failed lookup keeps the previous set.
    hosts.set(&[]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(spread(&gw, 3, &[&a, &b]).await, [0, 3]);
    assert!(
        gw.log().contains("discovery kept the previous endpoints"),
        "{}",
        gw.log()
    );

    hosts.set(&["127.0.0.1", "127.0.0.2"]);
    let both = eventually(Duration::from_secs(3), || async {
        reqwest::get(gw.admin_url("/admin/providers"))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()["providers"][0]["endpoints"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    assert!(both);
}
