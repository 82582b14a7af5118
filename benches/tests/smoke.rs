//! The benchmark binaries, run briefly against the real gateway and mock so they keep working.
//! They find `tollgate` and `tollgate-mock` beside themselves, as `cargo test --workspace`
//! builds them. Only that each run completes and reports is checked, never a figure.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .output()
        .expect("the binary starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{bin} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn proxy_bench_prints_both_phases_and_the_goals() {
    let out = run(
        env!("CARGO_BIN_EXE_proxy-bench"),
        &[
            "--scenario",
            "stream",
            "--duration",
            "1",
            "--connections",
            "2",
            "--cache",
        ],
    );
    assert!(out.contains("closed loop"), "{out}");
    assert!(out.contains("open loop at"), "{out}");
    for path in ["direct", "bare", "tollgate", "tollgate+cache"] {
        assert!(
            out.lines().any(|l| l.starts_with(path)),
            "no {path} row:\n{out}"
        );
    }
    assert!(
        out.contains("time to first token p99 added at half load"),
        "{out}"
    );
    assert!(
        out.contains("per-chunk latency p99 added at half load"),
        "{out}"
    );
}

#[test]
fn scale_bench_holds_streams_and_soaks() {
    let out = run(
        env!("CARGO_BIN_EXE_scale-bench"),
        &[
            "streams",
            "--streams",
            "40",
            "--ramp",
            "200",
            "--stream-secs",
            "5",
        ],
    );
    assert!(
        out.contains("streams opened 40, completed to [DONE] 40, failed 0"),
        "{out}"
    );
    assert!(out.contains("per stream (peak - before)"), "{out}");

    let out = run(
        env!("CARGO_BIN_EXE_scale-bench"),
        &[
            "soak",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--rate",
            "40",
            "--sample-every",
            "1",
        ],
    );
    assert!(out.contains("errors 0"), "{out}");
    assert!(out.contains("RSS growth from start to end"), "{out}");
}
