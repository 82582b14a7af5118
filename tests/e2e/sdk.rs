//! The official `openai` Python SDK against the gateway: a completion and a stream.

use crate::harness::*;
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn openai_python_sdk_completion_and_stream() {
    let probe = Command::new("python3")
        .args(["-c", "import openai"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "the openai Python SDK is needed: pip install openai (bash .ci/run installs it)"
    );
    let mock = Mock::start(&["--tokens-per-sec", "200"]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: assistant\n    targets: [{{ provider: up, model: gpt-4o-mini }}]\nkeys:\n  - {{ id: sdk, key: sk-sdk-virtual }}\n",
        provider("up", &mock.url())
    ))
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/sdk/openai_sdk.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .env("OPENAI_BASE_URL", gw.url("/v1"))
            .env("OPENAI_API_KEY", "sk-sdk-virtual")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("completion ok"), "{stdout}");
    assert!(stdout.contains("stream ok"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn anthropic_python_sdk_against_messages_with_an_openai_target() {
    let probe = Command::new("python3")
        .args(["-c", "import anthropic"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "the anthropic Python SDK is needed: pip install anthropic (bash .ci/run installs it)"
    );
    let mock = Mock::start(&["--tokens-per-sec", "200"]);
    let gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: assistant\n    targets: [{{ provider: up, model: gpt-4o-mini }}]\nkeys:\n  - {{ id: sdk, key: sk-anthropic-sdk }}\n",
        provider("up", &mock.url())
    ))
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/sdk/anthropic_sdk.py");
    let url = gw.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .env("TOLLGATE_URL", url)
            .env("TOLLGATE_KEY", "sk-anthropic-sdk")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stream ok"), "{stdout}");
    let seen = mock.requests().await;
    assert_eq!(
        seen[0]["path"], "/v1/chat/completions",
        "translated for the OpenAI-style target"
    );
}
