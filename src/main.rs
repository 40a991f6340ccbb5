//! The `keyscope` binary: glue only. Parse the command line; `serve` loads config and runs
//! the server (telemetry, serving, graceful shutdown); every other command is a gRPC client.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use keyscope::{
    cli::{Cli, Command},
    config::Settings,
    server,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { config, check_config } => runtime.block_on(async {
            let settings = match Settings::load(config.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if check_config {
                return match settings.validate() {
                    Ok(_) => {
                        println!("config: ok");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            match server::run(settings).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        _ => runtime.block_on(keyscope::cli::run(cli)),
    }
}
