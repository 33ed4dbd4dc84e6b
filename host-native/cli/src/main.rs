//! The `dbguard` command: `serve`, `check`, `info`, `schemas`, `token`, `wasi run`.

use std::process::ExitCode;

use dbguard_cli::cli;

fn main() -> ExitCode {
    cli::Cli::run()
}
