//! The `polpo-api` binary: parse the command line and hand over to the library.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    polpo_api::cli::run(polpo_api::cli::Cli::parse()).await
}
