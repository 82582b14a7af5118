//! Token-aware routing: prompts go where they fit; cost picks the cheapest target.

use crate::harness::*;
use serde_json::{json, Value};

fn config(policy: &str, a: &Mock, b: &Mock, small_window: u64) -> String {
    format!(
        "providers:\n{}{}models:\n  - name: m\n    context: {policy}\n    targets:\n      - {{ provider: a, model: small-model }}\n      - {{ provider: b, model: big-model }}\ncatalog:\n  small-model: {{ context_window: {small_window}, tokenizer: o200k_base }}\n  big-model: {{ context_window: 128000, tokenizer: o200k_base }}\n",
        provider("a", &a.url()),
        provider("b", &b.url())
    )
}

async fn send(gw: &Gateway, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap()
}

fn prompt(words: usize, max_tokens: u64) -> Value {
    json!({
        "model": "m",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "word ".repeat(words)}],
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_prompt_overflows_to_the_larger_window() {
    let (a, b) = (Mock::start(&[]), Mock::start(&[]));
    let gw = Gateway::start(&config("overflow_to_larger", &a, &b, 32_000)).await;

    let r = send(&gw, &prompt(100_000, 1_000)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-tollgate-provider"],
        "b",
        "100k tokens do not fit 32k"
    );
    assert_eq!(r.headers()["x-tollgate-attempts"], "1");
    assert!(a.requests().await.is_empty());

    let r = send(&gw, &prompt(1_000, 100)).await;
    assert_eq!(
        r.headers()["x-tollgate-provider"],
        "a",
        "a short prompt stays on the first"
    );

    let r = send(&gw, &prompt(140_000, 0)).await;
    let e = expect_error(r, 400, Some("context_length_exceeded")).await;
    assert!(e["message"].as_str().unwrap().contains("128000"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_answers_400_before_any_upstream_call() {
    let (a, b) = (Mock::start(&[]), Mock::start(&[]));
    let gw = Gateway::start(&config("reject", &a, &b, 1_000)).await;
    let e = expect_error(
        send(&gw, &prompt(2_000, 10)).await,
        400,
        Some("context_length_exceeded"),
    )
    .await;
    assert_eq!(e["param"], "messages");
    assert!(a.requests().await.is_empty() && b.requests().await.is_empty());
    assert_eq!(send(&gw, &prompt(100, 10)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn truncate_middle_drops_old_turns_and_says_so() {
    let (a, b) = (Mock::start(&[]), Mock::start(&[]));
    let gw = Gateway::start(&config("truncate_middle", &a, &b, 2_000)).await;
    let mut messages = vec![json!({"role": "system", "content": "Be brief."})];
    for i in 0..10 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages
            .push(json!({"role": role, "content": format!("turn {i} {}", "word ".repeat(300))}));
    }
    let body = json!({"model": "m", "max_tokens": 100, "messages": messages});
    let original = serde_json::to_vec(&body).unwrap().len();
    let r = send(&gw, &body).await;
    assert_eq!(r.status(), 200);
    let dropped = r.headers()["x-tollgate-truncated"]
        .to_str()
        .unwrap()
        .to_string();
    let count: usize = dropped.strip_suffix(" messages").unwrap().parse().unwrap();
    // ~3000 tokens of turns into a 2000-token window with 100 for the answer.
    assert!((4..10).contains(&count), "{dropped}");
    let seen = a.requests().await;
    assert_eq!(seen.len(), 1);
    let sent = seen[0]["body_bytes"].as_u64().unwrap() as usize;
    assert!(
        sent < original * (11 - count) / 11 + 200,
        "{sent} of {original}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cost_strategy_picks_the_cheapest_target_that_fits() {
    let (a, b) = (Mock::start(&[]), Mock::start(&[]));
    let gw = Gateway::start(&format!(
        "providers:\n{}{}models:\n  - name: m\n    strategy: cost\n    targets:\n      - {{ provider: a, model: gpt-4o }}\n      - {{ provider: b, model: cheap-8k }}\ncatalog:\n  cheap-8k: {{ context_window: 8000, price_per_mtok: {{ input: 0.1, output: 0.2 }} }}\n",
        provider("a", &a.url()),
        provider("b", &b.url())
    ))
    .await;
    let r = send(&gw, &prompt(100, 50)).await;
    assert_eq!(r.headers()["x-tollgate-provider"], "b");
    assert_eq!(r.headers()["x-tollgate-route"], "cost");
    // Too long for the cheap one: the pricier target that fits takes it.
    let r = send(&gw, &prompt(20_000, 50)).await;
    assert_eq!(r.headers()["x-tollgate-provider"], "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_send_short_prompts_small_and_code_strong() {
    let (small, strong) = (Mock::start(&[]), Mock::start(&[]));
    let gw = Gateway::start(&format!(
        "providers:\n{}{}models:\n  - name: m\n    targets: [{{ provider: small, model: llama-8b }}, {{ provider: strong, model: gpt-4o }}]\n    rules:\n      - {{ when: {{ header: {{ x-tier: premium }} }}, use: [strong] }}\n      - {{ when: {{ last_user_matches: \"(?i)\\\\b(code|rust|python)\\\\b\" }}, use: [gpt-4o] }}\n      - {{ when: {{ prompt_tokens_below: 200 }}, use: [small] }}\n",
        provider("small", &small.url()),
        provider("strong", &strong.url())
    ))
    .await;
    let ask = |text: String, premium: bool| {
        let mut req = reqwest::Client::new()
            .post(gw.url("/v1/chat/completions"))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": text}]}));
        if premium {
            req = req.header("x-tier", "premium");
        }
        req.send()
    };
    let routed = |r: reqwest::Response| {
        (
            r.headers()["x-tollgate-provider"]
                .to_str()
                .unwrap()
                .to_string(),
            r.headers()["x-tollgate-route"]
                .to_str()
                .unwrap()
                .to_string(),
        )
    };
    assert_eq!(
        routed(ask("hi".into(), false).await.unwrap()),
        ("small".into(), "fallback (rule 2)".into())
    );
    assert_eq!(
        routed(ask("Write Rust code".into(), false).await.unwrap()),
        ("strong".into(), "fallback (rule 1)".into())
    );
    assert_eq!(
        routed(ask("hi".into(), true).await.unwrap()),
        ("strong".into(), "fallback (rule 0)".into())
    );
    let long = "tell me a long story ".repeat(200);
    assert_eq!(
        routed(ask(long, false).await.unwrap()),
        ("small".into(), "fallback".into())
    );
}
