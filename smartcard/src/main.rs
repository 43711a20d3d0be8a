//! `smartcard`: the card tool. It runs the card applet as a virtual card
//! behind the system's pcscd (`emulate`), looks at the readers
//! (`readers`), provisions blank cards at the factory (`provision`) and
//! shows what a card holds (`info`). Each subcommand lives in its own
//! module under `cli/`.
//!
//! Exit codes: 0 success, 1 a failure while running, 64 a bad command
//! line or configuration (an unreadable operator file, a missing token).
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
    /// Personalize and lock blank cards, print their records, and
    /// optionally register them with the headend.
    Provision(cli::provision::Args),
    /// Show a card's id, state, clock, pairing and entitlements.
    Info(cli::info::Args),
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
        Command::Provision(a) => cli::provision::run(a),
        Command::Info(a) => cli::info::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smartcard: {e:#}");
            if e.downcast_ref::<cli::card::Usage>().is_some() {
                ExitCode::from(64)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
