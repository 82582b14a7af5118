//! The bundled k6 scripts, as `loadtest/README.md` runs them (`loadtest/run.sh`), briefly and
//! at a low rate against this build: each must pass its own thresholds.

use crate::harness::BIN;
use std::process::Command;

fn run(script: &str, extra: &[&str]) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
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
