//! The `maestro` binary: parse the command line, read the environment once, run.

use std::process::ExitCode;

use clap::Parser as _;
use maestro_host::cli::{Cli, run};
use maestro_host::config::Env;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: Env = std::env::vars().collect();
    match run(cli, &env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
