//! The `tollgate` command: serve, check, demo, mock. A custom build with plugins of its own
//! calls [`main`] with them (see `pipeline::Extensions`).

use crate::pipeline::Extensions;
use crate::{config, demo, server};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "An OpenAI-compatible AI gateway on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file.
    Serve {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file and print what would run.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the gateway with built-in mock providers and print requests to try.
    Demo(demo::DemoArgs),
    /// Run one mock model provider.
    Mock(tollgate_mock::MockArgs),
}

/// Exit status for an invalid config, as the contract says.
const CONFIG_ERROR: u8 = 2;

/// Runs the command line, with `extensions` beside the built-in plugins.
pub fn main(extensions: Extensions) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let load = |path: &PathBuf| {
        let runtime = config::load(path, None)?;
        extensions.check(&runtime)?;
        Ok::<_, config::ConfigError>(runtime)
    };
    match Cli::parse().command {
        Command::Serve { config: path } => match load(&path) {
            Ok(runtime) => match server::run(path, runtime, extensions.clone()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(CONFIG_ERROR)
            }
        },
        Command::Check { config: path } => match load(&path) {
            Ok(runtime) => {
                println!("{}: ok\n{}", path.display(), runtime.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(CONFIG_ERROR)
            }
        },
        Command::Demo(args) => match demo::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Mock(args) => {
            let listen = args.listen;
            match tollgate_mock::run_foreground(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: mock on {listen}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
