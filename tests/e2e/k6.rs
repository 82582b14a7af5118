//! The bundled k6 scripts, as `loadtest/README.md` runs them (`loadtest/run.sh`), briefly and
//! at a low rate against this build: each must pass its own thresholds.

use crate::harness::BIN;
use std::process::Command;

/// Processes whose environment carries `tag`: what a run left behind.
fn tagged_processes(tag: &str) -> Vec<String> {
    let needle = format!("TOLLGATE_RUN_TAG={tag}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = entry.path();
        let Ok(environ) = std::fs::read(path.join("environ")) else {
            continue;
        };
        if environ.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
            let cmdline = std::fs::read(path.join("cmdline")).unwrap_or_default();
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}

fn run(script: &str, extra: &[&str]) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let tag = format!("{}-{}", std::process::id(), fastrand::u64(..));
    let out = Command::new("bash")
        .current_dir(root)
        .args([
            "loadtest/run.sh",
            script,
            "-e",
            "DURATION=4s",
            "-e",
            "RATE=25",
        ])
        .args(extra)
        .env("TOLLGATE_BIN", BIN)
        .env("TOLLGATE_RUN_TAG", &tag)
        .output()
        .expect("bash runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{script} failed its thresholds:\n{text}"
    );
    // k6 really ran, with thresholds.
    assert!(text.contains("THRESHOLDS") || text.contains('✓'), "{text}");
    // Every mock, the gateway and the config writer went with the script.
    let left = tagged_processes(&tag);
    assert!(
        left.is_empty(),
        "{script} left processes running: {left:#?}"
    );
}

#[test]
fn chat_stream_and_mixed_pass() {
    for script in ["chat.js", "stream.js", "mixed.js"] {
        run(script, &[]);
    }
}

#[test]
fn failover_reload_and_limits_pass() {
    for script in ["failover.js", "reload.js", "limits.js"] {
        run(script, &[]);
    }
}
