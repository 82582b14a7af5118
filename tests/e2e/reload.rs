//! Hot reload: file changes, SIGHUP and the admin API; bad files never replace a good config.

use crate::harness::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn config(mock: &Mock, models: &[&str]) -> String {
    let mut text = format!("providers:\n{}models:\n", provider("up", &mock.url()));
    for m in models {
        text += &format!("  - name: {m}\n    targets: [{{ provider: up, model: x }}]\n");
    }
    text
}

async fn status_of(gw: &Gateway, model: &str) -> u16 {
    gw.chat(model, false).await.status().as_u16()
}

async fn reload_count(gw: &Gateway, result: &str) -> u64 {
    let text = gw.metrics().await;
    let prefix = format!("tollgate_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn file_change_adds_a_model_and_a_bad_file_keeps_the_old_config() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock, &["first"])).await;
    assert_eq!(status_of(&gw, "second").await, 404);

    // A client keeps calling throughout; it must never see an error.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let background = {
        let (stop, failures, calls) = (stop.clone(), failures.clone(), calls.clone());
        let url = gw.url("/v1/chat/completions");
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let ok = client
                    .post(&url)
                    .json(&chat_body("first", false))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                calls.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    gw.rewrite(&config(&mock, &["first", "second"]));
    let added = eventually(Duration::from_secs(2), || async {
        status_of(&gw, "second").await == 200
    })
    .await;
    assert!(
        added,
        "the new model was not served within 2 s of the file change"
    );
    assert_eq!(reload_count(&gw, "ok").await, 1);

    // A broken file: rejected, counted, and the running config keeps serving.
    gw.rewrite("models:\n  - name: broken\n    targets: [{ provider: nowhere, model: x }]\n");
    let rejected = eventually(Duration::from_secs(3), || async {
        reload_count(&gw, "error").await >= 1
    })
    .await;
    assert!(rejected, "the bad file was not noticed");
    assert_eq!(status_of(&gw, "second").await, 200);
    assert_eq!(status_of(&gw, "broken").await, 404);
    assert!(
        gw.log().contains("unknown provider \"nowhere\""),
        "the rejection is logged"
    );

    // The admin API reports the same validation error, in OpenAI's error shape.
    let r = gw.reload().await;
    let e = expect_error(r, 400, Some("invalid_config")).await;
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("models[0].targets[0].provider: unknown provider \"nowhere\""),
        "{message}"
    );

    stop.store(true, Ordering::Relaxed);
    background.await.unwrap();
    assert!(
        calls.load(Ordering::Relaxed) > 5,
        "the background client barely ran"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "a request failed during reloads"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn atomic_rename_sighup_and_admin_reload() {
    let mock = Mock::start(&[]);
    let gw = Gateway::start(&config(&mock, &["a"])).await;

    // Editors and Kubernetes replace the file by rename rather than writing in place.
    let staged = gw.config.with_extension("staged");
    let current = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&staged, current.replace("- name: a\n", "- name: b\n")).unwrap();
    std::fs::rename(&staged, &gw.config).unwrap();
    let renamed = eventually(Duration::from_secs(2), || async {
        status_of(&gw, "b").await == 200
    })
    .await;
    assert!(renamed, "an atomic rename was not picked up within 2 s");

    // SIGHUP reloads (and must not kill the process, Pingora's default).
    let text = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, text.replace("- name: b\n", "- name: c\n")).unwrap();
    gw.signal("HUP");
    let reloaded = eventually(Duration::from_secs(2), || async {
        status_of(&gw, "c").await == 200
    })
    .await;
    assert!(reloaded);
    let hup_logged = eventually(Duration::from_secs(2), || async {
        gw.log().contains("config reloaded (SIGHUP)")
    })
    .await;
    assert!(hup_logged, "SIGHUP did not trigger a reload");

    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "reloaded");

    // A Kubernetes ConfigMap volume: the file is a symlink, swapped to a new target directory.
    let dir = gw.config.parent().unwrap().to_path_buf();
    for (generation, model) in [(1, "d"), (2, "e")] {
        let data = dir.join(format!("..data-{generation}"));
        std::fs::create_dir_all(&data).unwrap();
        let text = std::fs::read_to_string(&gw.config).unwrap();
        let previous = ["a", "b", "c", "d"]
            .iter()
            .find(|m| text.contains(&format!("- name: {m}\n")))
            .unwrap();
        std::fs::write(
            data.join("tollgate.yaml"),
            text.replace(
                &format!("- name: {previous}\n"),
                &format!("- name: {model}\n"),
            ),
        )
        .unwrap();
        let link = dir.join("tollgate.yaml.new");
        std::os::unix::fs::symlink(data.join("tollgate.yaml"), &link).unwrap();
        std::fs::rename(&link, &gw.config).unwrap();
        let swapped = eventually(Duration::from_secs(2), || async {
            status_of(&gw, model).await == 200
        })
        .await;
        assert!(
            swapped,
            "symlink swap {generation} was not picked up within 2 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_requests_finish_on_their_snapshot() {
    let slow = Mock::start(&["--latency-ms", "1500"]);
    let gw = Gateway::start(&config(&slow, &["m"])).await;
    let url = gw.url("/v1/chat/completions");
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&chat_body("m", false))
            .send()
            .await
            .unwrap()
            .status()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The model disappears while its request is still running.
    gw.rewrite(&config(&slow, &["other"]));
    let r = gw.reload().await;
    assert_eq!(r.status(), 200);
    assert_eq!(status_of(&gw, "m").await, 404);
    assert_eq!(in_flight.await.unwrap(), 200);
}
