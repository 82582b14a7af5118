//! Provider secrets never leave the gateway: not upstream of their provider, not in logs,
//! admin output, metrics or error messages.

use crate::harness::*;
use serde_json::Value;

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
