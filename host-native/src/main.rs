//! The `shoal` command line.
//!
//! For now it prints the version and the validated default configuration
//! of a site; the node, client commands, demo and bench arrive with the
//! native host (issue 5).

use clap::{Parser, Subcommand};
use shoal_core::{wire::PROTOCOL_VERSION, Config};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A replicated, embeddable key-value database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what a site of this build would run with (the replication demo
    /// comes with the native host).
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo => {
            let config = Config::default();
            println!(
                "shoal {} (protocol version {PROTOCOL_VERSION})",
                env!("CARGO_PKG_VERSION")
            );
            match config.validate() {
                Ok(()) => {
                    println!("default site configuration (valid):\n{config:#?}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
