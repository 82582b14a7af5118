//! The `tollgate` binary: the command line with the built-in plugins.

use std::process::ExitCode;
use tollgate::pipeline::Extensions;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    tollgate::cli::main(Extensions::default())
}
