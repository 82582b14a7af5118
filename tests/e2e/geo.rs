//! Geo routing and residency: the client's region first; regulated traffic never leaves its
//! regions, failover included.

use crate::harness::*;
use serde_json::json;

fn providers(us: &str, eu: &str) -> String {
    format!(
        "providers:\n  - {{ name: us, kind: openai, base_url: \"{us}\", region: us-east }}\n  - {{ name: eu, kind: openai, base_url: \"{eu}\", region: eu-west }}\n"
    )
}

async fn chat_from(
    gw: &Gateway,
    model: &str,
    region: Option<&str>,
    key: Option<&str>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
    if let Some(region) = region {
        req = req.header("x-tollgate-region", region);
    }
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn geo_prefers_the_clients_region_then_the_nearest() {
    let (us, eu) = (Mock::start(&[]), Mock::start(&[]));
    let gw = Gateway::start(&format!(
        "{}models:\n  - name: m\n    strategy: geo\n    targets: [{{ provider: us, model: x }}, {{ provider: eu, model: x }}]\ngeo:\n  client_regions: {{ \"127.0.0.0/8\": eu-west }}\n  nearest:\n    ap-south: [eu-west, us-east]\n    us-west: [us-east, eu-west]\n",
        providers(&us.url(), &eu.url())
    ))
    .await;
    let provider = |r: reqwest::Response| {
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-tollgate-route"], "geo");
        r.headers()["x-tollgate-provider"]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        provider(chat_from(&gw, "m", Some("us-east"), None).await),
        "us"
    );
    assert_eq!(
        provider(chat_from(&gw, "m", Some("eu-west"), None).await),
        "eu"
    );
    assert_eq!(
        provider(chat_from(&gw, "m", Some("ap-south"), None).await),
        "eu"
    );
    assert_eq!(
        provider(chat_from(&gw, "m", Some("us-west"), None).await),
        "us"
    );
    // No header: the client's address (127.0.0.1) maps to eu-west.
    assert_eq!(provider(chat_from(&gw, "m", None, None).await), "eu");
}

#[tokio::test(flavor = "multi_thread")]
async fn residency_never_crosses_its_regions_even_on_failover() {
    let us = Mock::start(&[]);
    let dead_eu = format!("http://127.0.0.1:{}", dead_port());
    let gw = Gateway::start(&format!(
        "{}models:\n  - name: eu-only\n    residency: [eu-west]\n    targets: [{{ provider: us, model: x }}, {{ provider: eu, model: x }}]\n  - name: us-only-target\n    residency: [eu-west]\n    targets: [{{ provider: us, model: x }}]\n  - name: open\n    targets: [{{ provider: us, model: x }}]\nkeys:\n  - {{ id: eu-app, key: sk-eu, residency: [eu-west] }}\n  - {{ id: any-app, key: sk-any }}\n",
        providers(&us.url(), &dead_eu)
    ))
    .await;

    // The eu target is down; the us target would answer, but residency forbids it.
    let r = chat_from(&gw, "eu-only", None, Some("sk-any")).await;
    assert_eq!(r.headers()["x-tollgate-attempts"], "1");
    expect_error(r, 502, Some("upstream_failed")).await;

    let r = chat_from(&gw, "us-only-target", None, Some("sk-any")).await;
    let e = expect_error(r, 503, Some("no_eligible_target")).await;
    assert!(e["message"].as_str().unwrap().contains("residency"), "{e}");

    // A key's residency applies to every model it calls.
    let r = chat_from(&gw, "open", None, Some("sk-eu")).await;
    expect_error(r, 503, Some("no_eligible_target")).await;
    assert_eq!(
        chat_from(&gw, "open", None, Some("sk-any")).await.status(),
        200
    );

    assert!(
        us.requests().await.len() == 1,
        "only the unrestricted call reached us-east"
    );
    assert!(
        gw.log().contains("outside the model's residency"),
        "the load warned"
    );
}
