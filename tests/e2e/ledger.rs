//! The usage ledger: every answered request one row, token totals equal to what the providers
//! reported, `/admin/usage` and `/metrics` agreeing, and nothing lost to a SIGTERM.

use crate::harness::*;
use crate::metering::metric_sum;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn ledger_section(path: &Path) -> String {
    format!("plugins:\n  ledger: {{ path: \"{}\" }}\n", path.display())
}

async fn usage(gw: &Gateway, query: &str) -> Value {
    reqwest::get(gw.admin_url(&format!("/admin/usage?{query}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Sends one request of kind `i % 6` and reads (or abandons) its answer.
async fn mixed_request(client: &reqwest::Client, gw: &Gateway, i: usize) {
    let key = if i % 2 == 0 { "sk-one" } else { "sk-two" };
    let post = |path: &str, body: Value| {
        client
            .post(gw.url(path))
            .bearer_auth(key)
            .header("x-tollgate-tags", format!("batch=mixed,n={}", i % 3))
            .json(&body)
    };
    let stream_with_usage = |model: &str| {
        let mut body = chat_body(model, true);
        body["stream_options"] = json!({"include_usage": true});
        body
    };
    match i % 6 {
        // Fails over from a provider that answers 503 (or skips it while it cools down).
        0 => {
            let r = post("/v1/chat/completions", chat_body("failover", false))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-tollgate-provider"], "fast");
            r.bytes().await.unwrap();
        }
        // A stream whose client did not ask for usage.
        1 => {
            let r = post("/v1/chat/completions", chat_body("fast", true))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
        // An OpenAI client answered by Anthropic, streaming.
        2 => {
            let r = post("/v1/chat/completions", stream_with_usage("claude"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
        // A client that leaves a slow vLLM stream after a few chunks.
        3 => {
            let r = post("/v1/chat/completions", chat_body("slow", true))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let mut body = r.bytes_stream();
            let mut seen = 0;
            while seen < 3 {
                let chunk = body.next().await.unwrap().unwrap();
                seen += chunk.windows(6).filter(|w| w == b"data: ").count();
            }
        }
        // A vLLM stream the upstream cuts after four chunks.
        4 => {
            let r = post("/v1/chat/completions", stream_with_usage("cut"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            assert!(text.contains("\"error\""), "{text}");
        }
        // Anthropic clients, passed through: whole answers and streams.
        _ => {
            let r = post(
                "/v1/messages",
                json!({"model": "claude", "max_tokens": 64, "stream": i % 12 == 5,
                       "messages": [{"role": "user", "content": "Say hello"}]}),
            )
            .send()
            .await
            .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_mixed_requests_meter_exactly_what_the_providers_reported() {
    let down = Mock::start(&["--error-rate", "1", "--error-status", "503"]);
    let fast = Mock::start(&["--completion-tokens", "9"]);
    let slow = Mock::start(&[
        "--kind",
        "vllm",
        "--completion-tokens",
        "40",
        "--tokens-per-sec",
        "20",
    ]);
    let cut = Mock::start(&["--kind", "vllm", "--drop-after-chunks", "4"]);
    let claude = Mock::start(&["--kind", "anthropic", "--completion-tokens", "6"]);
    let mocks = [&down, &fast, &slow, &cut, &claude];
    let dir = TempDir::new("ledger");
    let db = dir.0.join("usage.db");
    let gw = Gateway::start(&format!(
        "providers:\n{}{}  - {{ name: slow, kind: vllm, base_url: \"{}\" }}\n  - {{ name: cut, kind: vllm, base_url: \"{}\" }}\n  - {{ name: claude, kind: anthropic, base_url: \"{}\", api_key: k }}\n\
         models:\n  - name: failover\n    targets: [{{ provider: down, model: gpt-4o }}, {{ provider: fast, model: gpt-4o-mini }}]\n\
         \x20 - name: fast\n    targets: [{{ provider: fast, model: gpt-4o }}]\n\
         \x20 - name: slow\n    targets: [{{ provider: slow, model: llama }}]\n\
         \x20 - name: cut\n    targets: [{{ provider: cut, model: llama }}]\n\
         \x20 - name: claude\n    targets: [{{ provider: claude, model: claude-sonnet-4-5 }}]\n\
         keys:\n  - {{ id: one, key: sk-one, team: red, project: alpha }}\n  - {{ id: two, key: sk-two, team: blue }}\n{}",
        provider("down", &down.url()),
        provider("fast", &fast.url()),
        slow.url(),
        cut.url(),
        claude.url(),
        ledger_section(&db),
    ))
    .await;

    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..12)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            let gw = &gw;
            async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= 200 {
                        break;
                    }
                    mixed_request(&client, gw, i).await;
                }
            }
        })
        .collect();
    futures_util::future::join_all(workers).await;

    // Abandoned streams settle once the gateway sees the client gone.
    let settled = eventually(Duration::from_secs(10), || async {
        usage(&gw, "group_by=key").await["totals"]["requests"] == 200
    })
    .await;
    assert!(settled, "{}", usage(&gw, "group_by=key").await);

    let mut reported = (0u64, 0u64);
    for mock in mocks {
        let stats = mock.stats().await;
        reported.0 += stats["usage"]["input_tokens"].as_u64().unwrap();
        reported.1 += stats["usage"]["output_tokens"].as_u64().unwrap();
    }
    let by_key = usage(&gw, "group_by=key").await;
    let totals = &by_key["totals"];
    assert_eq!(
        (
            totals["input_tokens"].as_u64().unwrap(),
            totals["output_tokens"].as_u64().unwrap()
        ),
        reported,
        "{by_key}"
    );
    assert_eq!(by_key["group_by"], "key");
    let keys: HashSet<&str> = by_key["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(keys, HashSet::from(["one", "two"]));

    // Every grouping adds up to the same totals.
    for group_by in ["team", "project", "model", "provider"] {
        let report = usage(&gw, &format!("group_by={group_by}")).await;
        let sum = |field: &str| -> u64 {
            report["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g[field].as_u64().unwrap())
                .sum()
        };
        assert_eq!(sum("input_tokens"), reported.0, "{report}");
        assert_eq!(sum("output_tokens"), reported.1, "{report}");
        assert_eq!(sum("requests"), 200, "{report}");
    }

    let metrics = gw.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "tollgate_tokens_total", &["direction=\"input\""]),
        reported.0 as f64
    );
    assert_eq!(
        metric_sum(&metrics, "tollgate_tokens_total", &["direction=\"output\""]),
        reported.1 as f64
    );
    let cost = metric_sum(&metrics, "tollgate_cost_usd_total", &[]);
    let ledger_cost = totals["cost_usd"].as_f64().unwrap();
    assert!(
        cost > 0.0 && (cost - ledger_cost).abs() < 1e-9,
        "{cost} vs {ledger_cost}"
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "tollgate_ledger_rows_total",
            &["result=\"written\""]
        ),
        200.0
    );
    assert_eq!(
        metric_sum(
            &metrics,
            "tollgate_ledger_rows_total",
            &["result=\"overflow\""]
        ),
        0.0
    );

    // Percentiles per model and provider, one sample per request.
    let stats: Value = reqwest::get(gw.admin_url("/admin/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let routes = stats["routes"].as_array().unwrap();
    let sampled: u64 = routes.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
    assert_eq!(sampled, 200, "{stats}");
    let slow = routes
        .iter()
        .find(|r| r["model"] == "slow" && r["provider"] == "slow")
        .unwrap();
    // Twenty tokens a second: the first chunk after the opening one takes ~50 ms.
    assert!(
        slow["latency_ms"]["p50"].as_f64().unwrap() >= 50.0,
        "{slow}"
    );

    // A time window that ends before the requests holds none of them.
    let before = usage(&gw, "group_by=team&until=2020-01-01T00:00:00Z").await;
    assert_eq!(before["totals"]["requests"], 0, "{before}");
    assert_eq!(before["until"], "2020-01-01T00:00:00Z");
    let since = usage(&gw, "group_by=team&since=1577836800").await;
    assert_eq!(since["totals"]["requests"], 200, "{since}");
    for bad in ["group_by=colour", "since=yesterday"] {
        let r = reqwest::get(gw.admin_url(&format!("/admin/usage?{bad}")))
            .await
            .unwrap();
        expect_error(r, 400, None).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_keeps_every_answered_request_in_the_ledger() {
    let mock = Mock::start(&["--latency-ms", "40", "--completion-tokens", "3"]);
    let dir = TempDir::new("ledger-term");
    let db = dir.0.join("usage.db");
    let mut gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\n{}",
        provider("up", &mock.url()),
        ledger_section(&db),
    ))
    .await;

    let answered = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (answered, stop, url) = (
                answered.clone(),
                stop.clone(),
                gw.url("/v1/chat/completions"),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let id = format!("term-{w}-{n}");
                    let sent = client
                        .post(&url)
                        .header("x-request-id", &id)
                        .json(&chat_body("m", n % 2 == 0))
                        .send()
                        .await;
                    let Ok(r) = sent else { continue };
                    if r.status() == 200 && r.bytes().await.is_ok() {
                        answered.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(gw.wait_exit(Duration::from_secs(10)), "{}", gw.log());

    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() > 50, "only {} answered", answered.len());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut query = conn.prepare("SELECT id FROM requests").unwrap();
    let stored: HashSet<String> = query
        .query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let missing: Vec<&String> = answered.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} answered but not in the ledger: {missing:?}\n{}",
        missing.len(),
        gw.log()
    );
}
