//! Rate limits and budgets per key, team and provider: in process, and shared by two gateway
//! processes through a real Redis.

use crate::harness::*;
use crate::metering::metric_sum;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` of our own on a free port, stopped on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    pub fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn chat(gw: &Gateway, key: &str, body: Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
}

fn small_chat(model: &str, stream: bool) -> Value {
    let mut body = chat_body(model, stream);
    body["max_tokens"] = json!(40);
    body
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn rpm_answers_the_sixth_request_429_with_retry_after_and_openai_headers() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\nkeys:\n  - {{ id: app, key: sk-app, limits: {{ rpm: 5 }} }}\n  - {{ id: free, key: sk-free }}\n",
        provider("up", &mock.url())
    ))
    .await;
    for remaining in (0..5).rev() {
        let r = chat(&gw, "sk-app", small_chat("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests"), "5");
        assert_eq!(
            header(&r, "x-ratelimit-remaining-requests"),
            remaining.to_string()
        );
        assert!(header(&r, "x-ratelimit-reset-requests").ends_with('s'));
    }
    let r = chat(&gw, "sk-app", small_chat("m", true))
        .send()
        .await
        .unwrap();
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    // One request refills every 12 s.
    assert!((11..=12).contains(&retry), "retry-after {retry}");
    assert_eq!(header(&r, "x-ratelimit-remaining-requests"), "0");
    let error = expect_error(r, 429, Some("rate_limit_exceeded")).await;
    assert_eq!(error["type"], "requests");
    assert!(error["message"].as_str().unwrap().contains("`app`"));
    // Another key is not affected, and the refused request never went upstream.
    let r = chat(&gw, "sk-free", small_chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-ratelimit-limit-requests").is_none());
    assert_eq!(mock.requests().await.len(), 6);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "tollgate_ratelimited_total", &["scope=\"key\""]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_streams_never_exceed_tpm() {
    // Slow streams, so that every admission happens while the others are still running.
    let mock = Mock::start(&["--completion-tokens", "16", "--tokens-per-sec", "40"]);
    let dir = TempDir::new("tpm");
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\nkeys:\n  - {{ id: app, key: sk-app, limits: {{ tpm: 300 }} }}\nplugins:\n  ledger: {{ path: \"{}\" }}\n",
        provider("up", &mock.url()),
        dir.0.join("usage.db").display()
    ))
    .await;
    let started = Instant::now();
    let requests = (0..20).map(|_| async {
        let r = chat(&gw, "sk-app", small_chat("m", true))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status == 429 {
            let error = expect_error(r, 429, Some("rate_limit_exceeded")).await;
            assert_eq!(error["type"], "tokens");
        } else {
            assert_eq!(status, 200);
            r.bytes().await.unwrap();
        }
        status
    });
    let statuses = futures_util::future::join_all(requests).await;
    let elapsed = started.elapsed();
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    assert!((1..20).contains(&admitted), "{statuses:?}");

    // What the admitted streams used, as the provider reported it.
    let used = mock.stats().await["usage"].clone();
    let tokens = used["input_tokens"].as_u64().unwrap() + used["output_tokens"].as_u64().unwrap();
    // 300 a minute, plus what refilled while the test ran.
    let refill = (300.0 * elapsed.as_secs_f64() / 60.0).ceil() as u64;
    assert!(
        tokens <= 300 + refill,
        "{tokens} tokens used in {elapsed:?}"
    );
    assert_eq!(used["answers"].as_u64().unwrap() as usize, admitted);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tiny_daily_budget_stops_the_key_once_spent() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\nkeys:\n  - {{ id: app, key: sk-app, budget: {{ usd_per_day: 0.0001 }} }}\n",
        provider("up", &mock.url())
    ))
    .await;
    // With max_tokens its worst case would not fit the budget; without, it reserves what is
    // left.
    let r = chat(&gw, "sk-app", small_chat("m", false))
        .send()
        .await
        .unwrap();
    let error = expect_error(r, 429, Some("budget_exceeded")).await;
    assert!(
        error["message"].as_str().unwrap().contains("worst case"),
        "{error}"
    );
    let r = chat(&gw, "sk-app", chat_body("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // The first answer cost more than the whole budget (16 output tokens at $10/M).
    let mut refused = None;
    for _ in 0..20 {
        let r = chat(&gw, "sk-app", chat_body("m", false))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = refused.expect("the budget never stopped the key");
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=86_400).contains(&retry));
    let error = expect_error(r, 429, Some("budget_exceeded")).await;
    assert!(
        error["message"].as_str().unwrap().contains("day"),
        "{error}"
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_sum(
            &metrics,
            "tollgate_budget_exceeded_total",
            &["scope=\"key\"", "period=\"day\""]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_team_limit_counts_all_its_keys_and_provider_quotas_route_elsewhere() {
    let primary = Mock::start(&[]);
    let spare = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n{}  - {{ name: spare, kind: openai, base_url: \"{}\", api_key: k }}\nmodels:\n  - name: m\n    targets: [{{ provider: primary, model: gpt-4o }}, {{ provider: spare, model: gpt-4o }}]\n  - name: only\n    targets: [{{ provider: primary, model: gpt-4o }}]\nkeys:\n  - {{ id: a, key: sk-a, team: red }}\n  - {{ id: b, key: sk-b, team: red }}\n  - {{ id: c, key: sk-c }}\nteams:\n  red: {{ limits: {{ rpm: 3 }} }}\n",
        provider("primary", &primary.url()).replace(
            "api_key:",
            "limits: { rpm: 2 }, api_key:"
        ),
        spare.url()
    ))
    .await;
    let mut providers = Vec::new();
    for key in ["sk-a", "sk-b", "sk-a"] {
        let r = chat(&gw, key, small_chat("m", false)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        providers.push(header(&r, "x-tollgate-provider"));
    }
    // The primary's own quota is 2 a minute: the third request went to the spare.
    assert_eq!(providers, ["primary", "primary", "spare"]);
    let r = chat(&gw, "sk-b", small_chat("m", false))
        .send()
        .await
        .unwrap();
    let error = expect_error(r, 429, Some("rate_limit_exceeded")).await;
    assert!(
        error["message"].as_str().unwrap().contains("team `red`"),
        "{error}"
    );
    // A model with no target under quota answers 429 too, naming the provider.
    let r = chat(&gw, "sk-c", small_chat("only", false))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
    let error = expect_error(r, 429, Some("rate_limit_exceeded")).await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("provider `primary`"),
        "{error}"
    );
    let metrics = gw.metrics().await;
    for scope in ["team", "provider"] {
        assert!(
            metric_sum(
                &metrics,
                "tollgate_ratelimited_total",
                &[&format!("scope=\"{scope}\"")]
            ) >= 1.0,
            "{scope}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_sharing_redis_enforce_one_limit_together() {
    let redis = Redis::start();
    let mock = Mock::start(&["--completion-tokens", "4"]);
    // Slow streams, so that the token reservations overlap.
    // Each stream uses nearly what it reserves: over-admission would show in the usage.
    let slow = Mock::start(&["--completion-tokens", "36", "--tokens-per-sec", "40"]);
    let config = format!(
        "providers:\n{}{}models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\n  - name: slow\n    targets: [{{ provider: slow, model: gpt-4o }}]\nkeys:\n  - {{ id: app, key: sk-app, limits: {{ rpm: 10 }} }}\n  - {{ id: tok, key: sk-tok, limits: {{ tpm: 500 }} }}\nplugins:\n  shared_state: {{ redis: \"{}\", on_error: fail_closed, timeout: 5s }}\n",
        provider("up", &mock.url()),
        provider("slow", &slow.url()),
        redis.url()
    );
    // Failing closed with a generous timeout: a slow call on a busy machine must show, not
    // admit unlimited.
    let one = Gateway::start(&config).await;
    let two = Gateway::start(&config).await;

    let requests = (0..30).map(|i| {
        let gw = if i % 2 == 0 { &one } else { &two };
        async move {
            chat(gw, "sk-app", small_chat("m", false))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(admitted, 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 20);

    // Each request reserves its prompt plus 40 output tokens: 500 a minute holds 10 at once.
    let requests = (0..30).map(|i| {
        let gw = if i % 2 == 0 { &one } else { &two };
        async move {
            chat(gw, "sk-tok", small_chat("m", true))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let started = Instant::now();
    let statuses = futures_util::future::join_all(requests).await;
    let elapsed = started.elapsed();
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    assert!((1..30).contains(&admitted), "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        30 - admitted
    );
    // What the admitted streams used, as the provider reported it, stayed within 500 a
    // minute (plus what refilled while the test ran), whichever gateway admitted them.
    let used = slow.stats().await["usage"].clone();
    let tokens = used["input_tokens"].as_u64().unwrap() + used["output_tokens"].as_u64().unwrap();
    let refill = (500.0 * elapsed.as_secs_f64() / 60.0).ceil() as u64;
    assert!(
        tokens <= 500 + refill,
        "{tokens} tokens used in {elapsed:?}"
    );
    for gw in [&one, &two] {
        assert_eq!(
            metric_sum(&gw.metrics().await, "tollgate_shared_state_up", &[]),
            1.0,
            "{}",
            gw.log()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_fails_open_or_closed_as_configured() {
    let mut redis = Redis::start();
    let port = redis.port;
    let mock = Mock::start(&[]);
    let config = |policy: &str| {
        format!(
            "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\nkeys:\n  - {{ id: app, key: sk-app, limits: {{ rpm: 100 }} }}\nplugins:\n  shared_state: {{ redis: \"{}\", on_error: {policy}, timeout: 200ms }}\n",
            provider("up", &mock.url()),
            redis.url()
        )
    };
    let open = Gateway::start(&config("fail_open")).await;
    let closed = Gateway::start(&config("fail_closed")).await;
    for gw in [&open, &closed] {
        let r = chat(gw, "sk-app", small_chat("m", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    redis.stop();
    let r = chat(&open, "sk-app", small_chat("m", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = chat(&closed, "sk-app", small_chat("m", false))
        .send()
        .await
        .unwrap();
    expect_error(r, 503, Some("limits_unavailable")).await;
    for gw in [&open, &closed] {
        let metrics = gw.metrics().await;
        assert_eq!(metric_sum(&metrics, "tollgate_shared_state_up", &[]), 0.0);
        assert!(metric_sum(&metrics, "tollgate_shared_state_errors_total", &[]) >= 1.0);
    }

    // Back on the same port: both recover by themselves.
    let _redis = Redis::start_on(port);
    let recovered = eventually(Duration::from_secs(10), || async {
        chat(&closed, "sk-app", small_chat("m", false))
            .send()
            .await
            .unwrap()
            .status()
            == 200
    })
    .await;
    assert!(recovered, "{}", closed.log());
    assert_eq!(
        metric_sum(&closed.metrics().await, "tollgate_shared_state_up", &[]),
        1.0
    );
}
