//! `tollgate-mock`: one mock model provider as a process.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tollgate_mock::{bind, serve, MockArgs};

#[derive(Parser)]
#[command(name = "tollgate-mock", version, about = "A mock model provider")]
struct Cli {
    #[command(flatten)]
    mock: MockArgs,
}

fn main() -> ExitCode {
    let args = Cli::parse().mock;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tollgate-mock: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = args.listen;
    let result = runtime.block_on(async move {
        let listener = bind(listen)?;
        let mut stdout = std::io::stdout().lock();
        // Tests read this line to learn the ephemeral port.
        writeln!(stdout, "listening on {}", listener.local_addr()?)?;
        stdout.flush()?;
        drop(stdout);
        serve(listener, args.into_config()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-mock: {listen}: {e}");
            ExitCode::FAILURE
        }
    }
}
