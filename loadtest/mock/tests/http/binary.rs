//! The `tollgate-mock` executable as end-to-end tests start it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::client::get_json;

/// Kills the child even when an assertion fails.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_prints_its_address_and_serves() {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_tollgate-mock"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--kind",
                "vllm",
                "--models",
                "x,y",
            ])
            .args(["--threads", "1"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Blocking is fine here: the server lives in another process.
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_suffix('\n')
        .and_then(|l| l.strip_prefix("listening on "))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();

    let models = get_json(addr, "/v1/models").await;
    assert_eq!(models["data"][1]["id"], "y");
}
