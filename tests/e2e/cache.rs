//! The answer cache (`plugins.cache`, exact matches in memory): hits in any format and mode,
//! tenants apart, the client's controls, and what a hit costs.

use crate::harness::*;
use crate::limits::Redis;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

fn config(mock: &Mock, ledger: &Path) -> String {
    format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\n\
         keys:\n  - {{ id: a, key: sk-a, team: red, limits: {{ tpm: 1000000 }} }}\n  - {{ id: a2, key: sk-a2, team: red }}\n  - {{ id: b, key: sk-b, team: blue }}\n\
         plugins:\n  cache: {{ ttl: 1h, scope: team }}\n  ledger: {{ path: \"{}\", flush_every: 10ms }}\n",
        provider("up", &mock.url()),
        ledger.display()
    )
}

async fn post(
    gw: &Gateway,
    path: &str,
    key: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(gw.url(path))
        .bearer_auth(key)
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn chat(prompt: &str, stream: bool) -> Value {
    json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": prompt}]})
}

fn cache_header(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-tollgate-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Waits until the cache holds `entries` answers: an answer is stored once its request has
/// settled, just after its last byte reached the client.
async fn stored(gw: &Gateway, entries: usize) {
    let line = format!("tollgate_cache_entries {entries}\n");
    let done = eventually(Duration::from_secs(5), || async {
        gw.metrics().await.contains(&line)
    })
    .await;
    assert!(done, "{}", gw.metrics().await);
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_requests_are_answered_from_cache_in_the_clients_format_and_mode() {
    let mock = Mock::start(&["--completion-tokens", "5"]);
    let dir = TempDir::new("cache");
    let db = dir.0.join("usage.db");
    let gw = Gateway::start(&config(&mock, &db)).await;
    let question = "What is Kubernetes?";

    // A miss goes upstream and stores the answer.
    let first = post(
        &gw,
        "/v1/chat/completions",
        "sk-a",
        chat(question, false),
        &[],
    )
    .await;
    assert_eq!(first.status(), 200);
    assert_eq!(cache_header(&first), "miss");
    let first: Value = first.json().await.unwrap();
    let text = first["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(mock.requests().await.len(), 1);
    stored(&gw, 1).await;

    // The same question, whole: the same answer, and no upstream call.
    let again = post(
        &gw,
        "/v1/chat/completions",
        "sk-a",
        chat(question, false),
        &[],
    )
    .await;
    assert_eq!(cache_header(&again), "hit");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["choices"][0]["message"]["content"], text.as_str());
    for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(again["usage"][count], first["usage"][count]);
    }

    // Streamed, with usage asked for; another key of the same team shares the entry.
    let mut streamed = chat(question, true);
    streamed["stream_options"] = json!({"include_usage": true});
    let resp = post(&gw, "/v1/chat/completions", "sk-a2", streamed, &[]).await;
    assert_eq!(cache_header(&resp), "hit");
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let body = resp.text().await.unwrap();
    let data = events(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let streamed_text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed_text, text);
    let usage = &chunks.last().unwrap()["usage"];
    for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[count], first["usage"][count], "{body}");
    }
    assert_eq!(mock.requests().await.len(), 1);

    // Another team never sees the red team's entries.
    let other = post(
        &gw,
        "/v1/chat/completions",
        "sk-b",
        chat(question, false),
        &[],
    )
    .await;
    assert_eq!(cache_header(&other), "miss");
    assert_eq!(mock.requests().await.len(), 2);
    stored(&gw, 2).await;

    // The client's controls: no-store neither reads nor stores, no-cache stores without
    // reading; n > 1 is never cached.
    let fresh = "A question never asked";
    let resp = post(
        &gw,
        "/v1/chat/completions",
        "sk-a",
        chat(fresh, false),
        &[("cache-control", "no-store")],
    )
    .await;
    assert_eq!(cache_header(&resp), "bypass");
    let resp = post(
        &gw,
        "/v1/chat/completions",
        "sk-a",
        chat(fresh, false),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(cache_header(&resp), "bypass");
    stored(&gw, 3).await;
    let resp = post(&gw, "/v1/chat/completions", "sk-a", chat(fresh, false), &[]).await;
    assert_eq!(
        cache_header(&resp),
        "hit",
        "no-cache still stored the answer"
    );
    let mut two = chat(question, false);
    two["n"] = json!(2);
    let resp = post(&gw, "/v1/chat/completions", "sk-a", two, &[]).await;
    assert_eq!(cache_header(&resp), "bypass");
    assert_eq!(mock.requests().await.len(), 5);

    // Anthropic-format clients: a whole answer stored, a stream served from it.
    let messages = |stream: bool| {
        json!({"model": "m", "max_tokens": 64, "stream": stream,
               "messages": [{"role": "user", "content": "Tell me about caches"}]})
    };
    let resp = post(&gw, "/v1/messages", "sk-a", messages(false), &[]).await;
    assert_eq!(cache_header(&resp), "miss");
    let whole: Value = resp.json().await.unwrap();
    stored(&gw, 4).await;
    let resp = post(&gw, "/v1/messages", "sk-a", messages(true), &[]).await;
    assert_eq!(cache_header(&resp), "hit");
    let body = resp.text().await.unwrap();
    assert!(body.starts_with("event: message_start\n"), "{body}");
    assert!(
        body.trim_end()
            .ends_with("data: {\"type\":\"message_stop\"}"),
        "{body}"
    );
    let streamed_text: String = events(&body)
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|e| e["delta"]["text"].as_str().map(String::from))
        .collect();
    assert_eq!(
        Some(streamed_text.as_str()),
        whole["content"][0]["text"].as_str()
    );
    assert_eq!(mock.requests().await.len(), 6);

    // Counted: hits in metrics, and in the ledger at no cost with the original tokens (once
    // the last request has settled, after its last byte).
    let settled = eventually(Duration::from_secs(5), || async {
        gw.metrics().await.contains("tollgate_cache_entries 4")
    })
    .await;
    assert!(settled);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("tollgate_cache_requests_total{result=\"hit\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_cache_requests_total{result=\"miss\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_cache_requests_total{result=\"bypass\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_cache_entries 4"), "{metrics}");
    assert!(
        metrics.contains(
            "tollgate_requests_total{cache=\"hit\",model=\"m\",provider=\"\",status=\"200\"} 4"
        ),
        "{metrics}"
    );
    let rows = || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let mut statement = conn
            .prepare(
                "SELECT cache, cost_usd, input_tokens, output_tokens FROM requests ORDER BY ts",
            )
            .unwrap();
        statement
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, f64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    assert!(eventually(Duration::from_secs(5), || async { rows().len() == 10 }).await);
    let rows = rows();
    let first_row = &rows[0];
    assert_eq!(first_row.0, "miss");
    for hit in rows.iter().filter(|r| r.0 == "hit") {
        assert_eq!(hit.1, 0.0, "{hit:?}");
        assert!(hit.3 > 0, "a hit keeps the original token counts: {hit:?}");
    }
    assert_eq!(rows.iter().filter(|r| r.0 == "hit").count(), 4);
    let (first_hit_tokens, miss_tokens) = (
        rows.iter().find(|r| r.0 == "hit").map(|r| (r.2, r.3)),
        Some((first_row.2, first_row.3)),
    );
    assert_eq!(first_hit_tokens, miss_tokens);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_with_cache_off_is_never_cached() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: raw\n    cache: off\n    targets: [{{ provider: up, model: gpt-4o }}]\n\
         plugins:\n  cache: {{ scope: global }}\n",
        provider("up", &mock.url())
    ))
    .await;
    for _ in 0..2 {
        let resp = gw.chat("raw", false).await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("x-tollgate-cache").is_none());
    }
    assert_eq!(mock.requests().await.len(), 2);
    // Counted once each has settled, after its last byte.
    let counted =
        "tollgate_requests_total{cache=\"off\",model=\"raw\",provider=\"up\",status=\"200\"} 2";
    let settled = eventually(Duration::from_secs(5), || async {
        gw.metrics().await.contains(counted)
    })
    .await;
    assert!(settled, "{}", gw.metrics().await);
}

/// How many answers the cache holds in `redis`.
fn redis_entries(redis: &Redis) -> usize {
    let out = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "--scan",
            "--pattern",
            "tollgate:cache:*",
        ])
        .output()
        .expect("redis-cli comes with redis-server");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_share_one_cache_in_redis_and_work_on_without_it() {
    let mut redis = Redis::start();
    let mock = Mock::start(&["--completion-tokens", "5"]);
    let config = format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\n\
         plugins:\n  shared_state: {{ redis: \"{}\", timeout: 300ms }}\n  cache: {{ store: redis, scope: global, ttl: 2s }}\n",
        provider("up", &mock.url()),
        redis.url()
    );
    let (first, second) = (Gateway::start(&config).await, Gateway::start(&config).await);
    let body = chat("Shared across replicas?", false);

    let resp = post(&first, "/v1/chat/completions", "", body.clone(), &[]).await;
    assert_eq!(cache_header(&resp), "miss");
    let stored: Value = resp.json().await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            redis_entries(&redis) == 1
        })
        .await
    );

    // The other replica answers what the first stored.
    let resp = post(&second, "/v1/chat/completions", "", body.clone(), &[]).await;
    assert_eq!(cache_header(&resp), "hit");
    let hit: Value = resp.json().await.unwrap();
    assert_eq!(hit["id"], stored["id"]);
    assert_eq!(mock.requests().await.len(), 1);

    // Redis expires the entry with its time to live.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(redis_entries(&redis), 0);
    let resp = post(&second, "/v1/chat/completions", "", body.clone(), &[]).await;
    assert_eq!(cache_header(&resp), "miss");
    assert_eq!(mock.requests().await.len(), 2);

    // Without Redis the cache is skipped and counted; requests never fail for it.
    redis.stop();
    for _ in 0..3 {
        let resp = post(&first, "/v1/chat/completions", "", body.clone(), &[]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(cache_header(&resp), "bypass");
    }
    assert_eq!(mock.requests().await.len(), 5);
    let metrics = first.metrics().await;
    assert!(
        metrics.contains("tollgate_cache_errors_total{op=\"get\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_identical_streams_in_flight_cost_one_upstream_call() {
    // Slow enough that every request arrives while the first is still streaming.
    let mock = Mock::start(&["--completion-tokens", "20", "--tokens-per-sec", "20"]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\n\
         plugins:\n  cache: {{ scope: global }}\n",
        provider("up", &mock.url())
    ))
    .await;
    let client = reqwest::Client::new();
    let requests = (0..100).map(|_| {
        let request = client
            .post(gw.url("/v1/chat/completions"))
            .json(&chat("Tell me a long story", true))
            .send();
        async move {
            let resp = request.await.unwrap();
            assert_eq!(resp.status(), 200);
            let result = cache_header(&resp);
            (result, resp.text().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    assert_eq!(mock.requests().await.len(), 1, "one upstream call");
    let count = |result: &str| answers.iter().filter(|(r, _)| r == result).count();
    assert_eq!(count("miss"), 1);
    assert_eq!(count("coalesced") + count("hit"), 99);
    assert!(count("coalesced") > 0);
    // Every client got the whole stream, the same one.
    let first = &answers[0].1;
    assert!(first.ends_with("data: [DONE]\n\n"), "{first}");
    for (_, body) in &answers {
        assert_eq!(events(body), events(first));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_fails_releases_its_waiters_to_try_on_their_own() {
    use crate::scripted::{send, Scripted, Step};
    let failing = Scripted::start(vec![
        Step::Sleep(Duration::from_millis(400)),
        send("HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"),
    ]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    retry: {{ attempts: 1 }}\n    targets: [{{ provider: up, model: gpt-4o }}]\n\
         plugins:\n  cache: {{ scope: global }}\n",
        provider("up", &failing.url())
    ))
    .await;
    let client = reqwest::Client::new();
    let requests = (0..5).map(|_| {
        let request = client
            .post(gw.url("/v1/chat/completions"))
            .json(&chat("Will this fail?", false))
            .send();
        async move {
            let resp = request.await.unwrap();
            (resp.status().as_u16(), cache_header(&resp))
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    for (status, result) in &answers {
        assert!(*status >= 500, "{answers:?}");
        assert_ne!(result, "coalesced", "{answers:?}");
    }
    // The leader's call, and each waiter's own once the leader failed.
    assert_eq!(failing.requests(), 5, "{answers:?}");
}
