//! Provider secrets never leave the gateway: not upstream of their provider, not in logs,
//! admin output, metrics or error messages.

use crate::harness::*;
use serde_json::Value;
use std::time::Duration;

/// What a response shows: its headers and its body.
async fn shown(r: reqwest::Response) -> String {
    let headers = format!("{:?}", r.headers());
    headers + &r.text().await.unwrap()
}

/// The running config as the admin API shows it, and that config and the metrics as text.
async fn admin_output(gw: &Gateway) -> (Value, String) {
    let config: Value = reqwest::get(gw.admin_url("/admin/config"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let metrics = gw.metrics().await;
    let text = format!("{config}{metrics}");
    (config, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_key_never_appears_in_logs_admin_metrics_or_errors() {
    let good = Mock::start(&[]);
    let failing = Mock::start(&["--error-rate", "1", "--error-status", "500"]);
    let gw = Gateway::start(&format!(
        "providers:\n{}{}  - {{ name: dead, kind: openai, base_url: \"http://127.0.0.1:{}\", api_key: \"{UPSTREAM_KEY}\" }}\nmodels:\n  - name: m\n    targets:\n      - {{ provider: failing, model: a }}\n      - {{ provider: good, model: b }}\n  - name: down\n    targets: [{{ provider: dead, model: c }}]\n",
        provider("failing", &failing.url()),
        provider("good", &good.url()),
        dead_port()
    ))
    .await;
    let c = reqwest::Client::new();
    let mut seen = String::new();
    for (model, stream) in [("m", false), ("m", true), ("down", false), ("nope", false)] {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .json(&chat_body(model, stream))
            .send()
            .await
            .unwrap();
        seen += &shown(r).await;
    }
    let (config, admin) = admin_output(&gw).await;
    assert_eq!(config["providers"][0]["api_key"], "***redacted***");
    seen += &admin;
    // Reload with a config whose secret sits where a number belongs: the error must not echo it.
    gw.rewrite(&format!("providers:\n  - {{ name: x, kind: openai, base_url: \"http://127.0.0.1:1\", timeouts: {{ connect: \"${{{UPSTREAM_KEY_VAR}}}\" }} }}\n"));
    seen += &gw.reload().await.text().await.unwrap();
    let log = gw.log();
    assert!(
        log.contains("attempt 1"),
        "the failures were logged, so the check means something"
    );
    seen += &log;
    assert!(!seen.contains(UPSTREAM_KEY), "the provider key leaked");
    assert!(
        !seen.contains("SECRET-7f3a9c"),
        "part of the provider key leaked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_token_guards_admin_endpoints_but_not_health() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start_with(
        &format!("providers:\n{}models: []\n", provider("up", &mock.url())),
        "  admin_token: adm-t0ken\n",
    )
    .await;
    let c = reqwest::Client::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            c.get(gw.admin_url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    let r = c.get(gw.admin_url("/admin/config")).send().await.unwrap();
    expect_error(r, 401, None).await;
    let r = c
        .get(gw.admin_url("/admin/config"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    expect_error(r, 401, None).await;
    let r = gw.reload().await;
    expect_error(r, 401, None).await;
    let r = c
        .get(gw.admin_url("/admin/config"))
        .bearer_auth("adm-t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["server"]["admin_token"], "***redacted***");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_password_never_appears_in_logs_admin_or_metrics() {
    const PASSWORD: &str = "redis-PASS-4e1d";
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: gpt-4o }}]\nkeys:\n  - {{ id: app, key: sk-app, limits: {{ rpm: 100 }} }}\nplugins:\n  shared_state: {{ redis: \"redis://:{PASSWORD}@127.0.0.1:{}\", on_error: fail_open, timeout: 100ms }}\n",
        provider("up", &mock.url()),
        dead_port()
    ))
    .await;
    let c = reqwest::Client::new();
    let mut seen = String::new();
    for _ in 0..3 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("sk-app")
            .json(&chat_body("m", false))
            .send()
            .await
            .unwrap();
        // Redis is down and the policy is to fail open.
        assert_eq!(r.status(), 200);
        seen += &shown(r).await;
    }
    let (config, admin) = admin_output(&gw).await;
    assert_eq!(config["shared_state"]["redis"], "***redacted***");
    seen += &admin;
    let log = gw.log();
    assert!(log.contains("Redis"), "the failures were logged:\n{log}");
    seen += &log;
    assert!(!seen.contains(PASSWORD), "the Redis password leaked");
}

/// Every secret of the mixed run below, and a recognisable piece of each.
const SECRETS: [&str; 6] = [
    UPSTREAM_KEY,
    "sk-ant-SECRET-91b2",
    "gem-SECRET-55c0",
    "adm-SECRET-token-3d4e",
    "sk-virtual-SECRET-aa17",
    "sk-virtual-WRONG-bb28",
];

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_any_output_after_a_mixed_run() {
    let good = Mock::start(&["--api-key", UPSTREAM_KEY]);
    // A provider that refuses the gateway's credential, and one that fails.
    let refusing = Mock::start(&["--api-key", "some-other-key"]);
    let failing = Mock::start(&["--error-rate", "1", "--error-status", "500"]);
    let claude = Mock::start(&["--kind", "anthropic", "--api-key", SECRETS[1]]);
    let gemini = Mock::start(&["--kind", "gemini", "--api-key", SECRETS[2]]);
    let dir = TempDir::new("secrets");
    let db = dir.0.join("usage.db");
    let body = format!(
        "providers:\n{}{}{}  - {{ name: claude, kind: anthropic, base_url: \"{}\", api_key: \"{}\" }}\n\
         \x20 - {{ name: gemini, kind: gemini, base_url: \"{}\", api_key: \"{}\" }}\n\
         models:\n  - {{ name: m, targets: [{{ provider: refusing, model: a }}, {{ provider: failing, model: b }}, {{ provider: good, model: c }}] }}\n\
         \x20 - {{ name: refused, targets: [{{ provider: refusing, model: a }}] }}\n\
         \x20 - {{ name: claude, targets: [{{ provider: claude, model: claude-sonnet-4-5 }}] }}\n\
         \x20 - {{ name: gemini, targets: [{{ provider: gemini, model: gemini-2.5-flash }}] }}\n\
         keys:\n  - {{ id: app, key: \"{}\", team: t }}\n\
         plugins:\n  access_log: true\n  ledger: {{ path: \"{}\", flush_every: 10ms }}\n",
        provider("good", &good.url()),
        provider("refusing", &refusing.url()),
        provider("failing", &failing.url()),
        claude.url(),
        SECRETS[1],
        gemini.url(),
        SECRETS[2],
        SECRETS[4],
        db.display()
    );
    let gw = Gateway::start_with(&body, &format!("  admin_token: \"{}\"\n", SECRETS[3])).await;
    let c = reqwest::Client::new();
    let mut seen = String::new();

    // Good requests in both formats, streams, refusals, upstream 401 and 500, bad keys.
    let post = |path: &str, key: &str, body: Value| {
        c.post(gw.url(path)).bearer_auth(key).json(&body).send()
    };
    for (path, key, body) in [
        ("/v1/chat/completions", SECRETS[4], chat_body("m", false)),
        ("/v1/chat/completions", SECRETS[4], chat_body("m", true)),
        (
            "/v1/chat/completions",
            SECRETS[4],
            chat_body("refused", false),
        ),
        (
            "/v1/chat/completions",
            SECRETS[4],
            chat_body("claude", true),
        ),
        (
            "/v1/chat/completions",
            SECRETS[4],
            chat_body("gemini", false),
        ),
        ("/v1/chat/completions", SECRETS[5], chat_body("m", false)),
        ("/v1/chat/completions", SECRETS[4], chat_body("nope", false)),
        (
            "/v1/messages",
            SECRETS[4],
            serde_json::json!({"model": "claude", "max_tokens": 20,
                               "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/embeddings",
            SECRETS[4],
            serde_json::json!({"model": "m", "input": "x"}),
        ),
    ] {
        seen += &shown(post(path, key, body).await.unwrap()).await;
    }
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .header("x-api-key", SECRETS[5])
        .body("{not json")
        .send()
        .await
        .unwrap();
    seen += &shown(r).await;

    // Every admin answer, with and without the token.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/config",
        "/admin/providers",
        "/admin/usage?group_by=key",
        "/admin/stats",
        "/dashboard",
        "/admin/nope",
    ] {
        for token in [None, Some(SECRETS[3]), Some(SECRETS[5])] {
            let mut request = c.get(gw.admin_url(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            seen += &shown(request.send().await.unwrap()).await;
        }
    }

    // Bad reloads: a broken reference to a secret, a secret where a number belongs.
    let reload = || {
        c.post(gw.admin_url("/admin/reload"))
            .bearer_auth(SECRETS[3])
            .send()
    };
    for bad in [
        body.replace(
            &format!("api_key: \"{}\"", SECRETS[1]),
            &format!("api_key: \"${{{}", SECRETS[1]),
        ),
        body.replace(
            "flush_every: 10ms",
            &format!("flush_every: \"{}\"", SECRETS[2]),
        ),
        body.replace(
            "team: t",
            &format!("team: t, limits: {{ rpm: \"{}\" }}", SECRETS[4]),
        ),
    ] {
        gw.rewrite(&bad);
        seen += &shown(reload().await.unwrap()).await;
    }
    gw.rewrite(&body);
    seen += &shown(reload().await.unwrap()).await;

    let logged = gw.log();
    assert!(
        logged.contains("attempt 1") && logged.contains("rejected"),
        "{logged}"
    );
    seen += &logged;
    seen += &gw.stdout();
    tokio::time::sleep(Duration::from_millis(200)).await;
    seen += &String::from_utf8_lossy(&std::fs::read(&db).unwrap());
    for secret in SECRETS {
        if let Some(at) = seen.find(secret) {
            let start = seen.floor_char_boundary(at.saturating_sub(300));
            let end = seen.ceil_char_boundary((at + 100).min(seen.len()));
            panic!("{secret} leaked: …{}…", &seen[start..end]);
        }
        // Nor a recognisable part of it.
        let part = &secret[secret.len() - 8..];
        assert!(!seen.contains(part), "part of {secret} leaked");
    }
}
