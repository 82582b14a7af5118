//! `tollgate-mock`: one mock model provider as a process.

use std::process::ExitCode;

use clap::Parser;
use tollgate_mock::{run_foreground, MockArgs};

#[derive(Parser)]
#[command(name = "tollgate-mock", version, about = "A mock model provider")]
struct Cli {
    #[command(flatten)]
    mock: MockArgs,
}

fn main() -> ExitCode {
    let args = Cli::parse().mock;
    let listen = args.listen;
    match run_foreground(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-mock: {listen}: {e}");
            ExitCode::FAILURE
        }
    }
}
