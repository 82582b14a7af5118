//! Upstream faults: each ends in a failover or a clear error within its timeout, and the
//! request is settled once.

use crate::harness::*;
use crate::scripted::{Scripted, Step};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_never_answers_times_out_and_fails_over() {
    let silent = Scripted::start(vec![Step::Hang]);
    let good = Mock::start(&[]);
    let gw = Gateway::start(&format!(
        "providers:\n  - {{ name: silent, kind: openai, base_url: \"{}\", api_key: k, timeouts: {{ first_token: 300ms }} }}\n{}\
         models:\n  - name: m\n    retry: {{ attempts: 2, on: [timeout] }}\n    targets: [{{ provider: silent, model: a }}, {{ provider: good, model: b }}]\n\
         \x20 - name: only\n    targets: [{{ provider: silent, model: a }}]\n",
        silent.url(),
        provider("good", &good.url()),
    ))
    .await;
    for stream in [false, true] {
        let started = Instant::now();
        let r = gw.chat("m", stream).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-tollgate-provider"], "good");
        assert_eq!(r.headers()["x-tollgate-attempts"], "2");
        r.bytes().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let r = gw.chat("only", false).await;
    expect_error(r, 504, Some("upstream_timeout")).await;
    assert_eq!(silent.requests(), 3);
}
