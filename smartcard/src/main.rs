//! `smartcard`: the card tool. It runs the card applet as a virtual card
//! behind the system's pcscd (`emulate`), looks at the readers
//! (`readers`), provisions blank cards at the factory (`provision`) and
//! shows what a card holds (`info`). Each subcommand lives in its own
//! module under `cli/`.
//!
//! Exit codes: the table every Iodoform tool shares ([`cli::exit`]); the
//! ones this tool uses are 0 success, 1 a failure while running, 4 no
//! reader or card, 64 a bad command line or configuration (an unreadable
//! operator file, a missing token), 69 pcscd not running, 130 a second
//! signal, 141 a closed standard output.
#![forbid(unsafe_code)]

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "smartcard",
    version,
    about = "The Iodoform smartcard tool: virtual card, readers, provisioning, card info",
    after_help = after_help()
)]
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

fn after_help() -> String {
    format!(
        "Examples:\n  smartcard emulate --state card.state &\n  smartcard readers\n  \
         smartcard provision --operator operator.json --card-id 1 --register http://127.0.0.1:7480 --token-file admin.token\n  \
         smartcard info --reader vpcd\n\n{}",
        ::cli::EXIT_CODES_HELP
    )
}

fn main() -> ExitCode {
    let cli: Cli = ::cli::parse();
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
                ExitCode::from(::cli::exit::USAGE)
            } else if let Some(c) = e.downcast_ref::<cli::card::Coded>() {
                ExitCode::from(c.code)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
