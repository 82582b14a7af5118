//! The command line: check, serve's config errors, graceful shutdown, and the demo's own
//! instructions run as printed.

use crate::harness::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn check_prints_a_summary_and_rejects_bad_configs_with_exit_2() {
    let dir = TempDir::new("check");
    let good = dir.0.join("good.yaml");
    std::fs::write(
        &good,
        "providers:\n  - { name: openai, kind: openai, base_url: https://api.openai.com, api_key: \"${TOLLGATE_TEST_KEY}\" }\n  - { name: llama-gpu, kind: vllm, endpoints: [\"10.0.0.5:8000\", \"10.0.0.6:8000\"] }\nmodels:\n  - name: support\n    targets: [{ provider: openai, model: gpt-4o }, { provider: llama-gpu, model: llama }]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&good)
        .env("TOLLGATE_TEST_KEY", "sk-check-secret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("support: fallback → openai/gpt-4o → llama-gpu/llama"),
        "{stdout}"
    );
    assert!(stdout.contains("http://10.0.0.6:8000"), "{stdout}");
    assert!(!stdout.contains("sk-check-secret"));

    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&good)
        .env_remove("TOLLGATE_TEST_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("providers[0].api_key") && stderr.contains("TOLLGATE_TEST_KEY is not set"),
        "{stderr}"
    );

    let bad = dir.0.join("bad.yaml");
    std::fs::write(
        &bad,
        "providers:\n  - { name: openai, kind: openai, base_url: \"http://127.0.0.1:1\" }\n  - { name: llama-gpu, kind: vllm, base_url: \"http://127.0.0.1:2\" }\nmodels:\n  - name: a\n    targets: [{ provider: openai, model: x }]\n  - name: b\n    targets: [{ provider: opneai, model: x }]\n",
    )
    .unwrap();
    refused_with_exit_2(
        &bad,
        &format!(
            "{}: models[1].targets[0].provider: unknown provider \"opneai\" (known: openai, llama-gpu)",
            bad.display()
        ),
    );
}

/// `check` and `serve` both refuse the config at `path` with exit 2, saying `says`.
fn refused_with_exit_2(path: &std::path::Path, says: &str) {
    for command in ["check", "serve"] {
        let out = Command::new(BIN)
            .args([command, "--config"])
            .arg(path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{command}: {stderr}");
    }
}

#[test]
fn a_misspelt_plugin_section_is_refused() {
    let dir = TempDir::new("check-plugins");
    let path = dir.0.join("plugins.yaml");
    std::fs::write(
        &path,
        "providers:\n  - { name: openai, kind: openai, base_url: \"http://127.0.0.1:1\" }\nmodels:\n  - name: a\n    targets: [{ provider: openai, model: x }]\nplugins:\n  acess_log: true\n",
    )
    .unwrap();
    refused_with_exit_2(
        &path,
        "plugins.acess_log: unknown plugin (known: access_log, cache, ledger, shared_state)",
    );
}

#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/example.yaml");
    let out = Command::new(BIN)
        .args(["check", "--config", example])
        .env("OPENAI_API_KEY", "sk-a")
        .env("AZURE_OPENAI_API_KEY", "sk-b")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits_within_the_grace_period() {
    let slow = Mock::start(&["--latency-ms", "400"]);
    let mut gw = Gateway::start(&format!(
        "providers:\n{}models:\n  - name: m\n    targets: [{{ provider: up, model: x }}]\n",
        provider("up", &slow.url())
    ))
    .await;
    let url = gw.url("/v1/chat/completions");
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&chat_body("m", false))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.signal("TERM");
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the in-flight request finished"
    );
    // The config says shutdown_grace: 1s; Pingora's own default would be 300 s.
    assert!(
        gw.wait_exit(Duration::from_secs(10)),
        "still running 10 s after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_answers_its_own_curl_lines() {
    let ports: Vec<u16> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            &format!("127.0.0.1:{}", ports[0]),
            "--admin-listen",
            &format!("127.0.0.1:{}", ports[1]),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    while !printed.contains("/admin/stats") {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        printed += &line;
    }
    let up = eventually(Duration::from_secs(20), || async {
        reqwest::get(format!("http://127.0.0.1:{}/healthz", ports[1]))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "the demo did not start");

    // Each instruction is one or two lines (a trailing backslash continues it).
    let commands: Vec<String> = printed
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl "))
        .map(str::to_string)
        .collect();
    assert!(commands.len() >= 6, "{printed}");
    let mut outputs = Vec::new();
    for command in &commands {
        let out = Command::new("bash").args(["-c", command]).output().unwrap();
        assert!(out.status.success(), "{command} failed");
        outputs.push(String::from_utf8_lossy(&out.stdout).to_string());
    }
    let _ = child.kill();
    let _ = child.wait();
    let all = outputs.join("\n");
    assert!(all.contains("\"object\":\"chat.completion\""), "{all}");
    assert!(
        all.contains("chat.completion.chunk") && all.contains("data: [DONE]"),
        "streaming works"
    );
    assert!(
        all.to_lowercase().contains("x-tollgate-attempts: 2"),
        "the failover line shows two attempts"
    );
    assert!(all.contains("\"embedding\""));
    assert!(
        all.to_lowercase().contains("x-tollgate-cache: hit"),
        "the repeated question is answered from the cache"
    );
    assert!(all.contains("tollgate_requests_total"));
    assert!(all.contains("\"ewma_ms\""), "the router's view is printed");
    assert!(
        all.contains("\"type\":\"message\""),
        "the Anthropic-format line is answered"
    );
    assert!(
        all.contains("\"model\":\"claude-sonnet-4-5\""),
        "the Anthropic failover answers"
    );
    assert!(
        all.contains("\"group_by\":\"model\"") && all.contains("\"group\":\"gpt-4o-mini\""),
        "the ledger has the first requests"
    );
    assert!(
        all.contains("\"time_to_first_token_ms\""),
        "percentiles are printed"
    );
    assert!(
        !all.contains("sk-demo-upstream"),
        "the demo's upstream key stays hidden"
    );
}

#[test]
fn serve_fails_fast_when_its_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new("taken");
    let config = dir.0.join("c.yaml");
    std::fs::write(
        &config,
        format!("server:\n  listen: [\"127.0.0.1:{port}\"]\n  admin_listen: \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(status) = child.try_wait().unwrap() else {
        let _ = child.kill();
        panic!("serve kept running on a taken port");
    };
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
}
