//! `headend`: the Iodoform headend daemon and its command-line client.
//!
//! ```text
//! headend init --dir DIR                  # a new headend's files
//! headend run --config DIR/headend.toml   # the daemon
//! headend [--config FILE] [--json] product|channel|card|subscribe|unsubscribe|pair|unpair|rotate|status|clock ...
//! headend [--config FILE] backup FILE [--force] # a consistent copy, daemon running or not
//! headend [--config FILE] restore FILE          # a backup put in place, daemon stopped
//! ```
//!
//! Every subcommand other than `init` and `run` is a client of the admin
//! API: it finds the daemon and its token through `--config` or the
//! `IODOFORM_CONFIG` environment variable.
//!
//! * `args`: the subcommands and their options;
//! * `commands`: each client subcommand as one API request;
//! * `backup`: `backup` and `restore`;
//! * `view`: the answers as tables (or `--json`).
#![forbid(unsafe_code)]

mod args;
mod backup;
mod commands;
mod view;

use args::{Cli, Command, InitArgs};
use headend::client::config_path;
use headend::config::Config;
use headend::daemon::{now_ms, shutdown_signal, Daemon};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli: Cli = cli::parse();
    match cli.command {
        Command::Init(a) => init(a),
        Command::Run(r) => run(cli.config, r.accept_clock_jump),
        c @ (Command::Backup { .. } | Command::Restore { .. }) => {
            backup::run(cli.config, cli.json, c)
        }
        other => match commands::run(cli.config, cli.json, other) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("headend: {e}");
                ExitCode::from(e.exit_code())
            }
        },
    }
}

fn init(a: InitArgs) -> ExitCode {
    let mut c = Config {
        operator_id: a.operator_id,
        listen: a.listen,
        ..Config::default()
    };
    c.crypto_period_ms = a.crypto_period_ms;
    c.emm_cycle_ms = a.emm_cycle_ms;
    c.key_renewal_secs = a.key_renewal_secs;
    // The flags are checked as the config file would be, and the error
    // names the flag, not a file that does not exist yet.
    if let Err(e) = c.validate() {
        match e {
            headend::config::ConfigError::Field { field, message, .. } => {
                eprintln!("headend init: --{} {message}", field.replace('_', "-"));
            }
            other => eprintln!("headend init: {other}"),
        }
        return ExitCode::from(cli::exit::USAGE);
    }
    match headend::init::init(&a.dir, &c, now_ms()) {
        Ok(made) => {
            cli::outln!("created {}", made.config.display());
            cli::outln!(
                "operator {} public keys: {}",
                made.operator_id,
                made.operator_public.display()
            );
            cli::outln!(
                "start it with: headend run --config {}",
                made.config.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("headend init: {e}");
            ExitCode::from(match e {
                headend::init::InitError::Io { .. } | headend::init::InitError::Exists(_) => {
                    cli::exit::CANT_CREATE
                }
                headend::init::InitError::Other(_) => cli::exit::USAGE,
            })
        }
    }
}

fn run(config: Option<PathBuf>, accept_clock_jump: bool) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let path = match config_path(config.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("headend run: {e}");
            return ExitCode::from(64);
        }
    };
    let daemon = match Daemon::open_config(&path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("headend run: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    if accept_clock_jump {
        daemon.accept_clock_jump_at_start();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("headend run: cannot start the runtime: {e}");
            return ExitCode::from(70);
        }
    };
    // The channel streams run inside the daemon, under its supervisor:
    // started, changed and stopped as the channels are, and turned off
    // (never the daemon) when they fail.
    let served = rt.block_on(daemon.serve(shutdown_signal()));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("headend run: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
