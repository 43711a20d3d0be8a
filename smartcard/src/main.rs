//! `smartcard`: the card tool. It runs the card applet as a virtual card
//! behind the system's pcscd (`emulate`) and looks at the readers
//! (`readers`). Each subcommand lives in its own module under `cli/`.
//!
//! Exit codes: 0 success, 1 a failure while running, 64 a bad command
//! line.
#![forbid(unsafe_code)]

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "smartcard", version, about = "The Iodoform smartcard tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the card applet as a virtual card in a vpcd reader of pcscd.
    Emulate(cli::emulate::Args),
    /// List the PC/SC readers and whether each holds a card.
    Readers(cli::readers::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Emulate(a) => cli::emulate::run(a),
        Command::Readers(a) => cli::readers::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smartcard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
