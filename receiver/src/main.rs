//! The `receiver` command: a set-top box on the command line.
#![forbid(unsafe_code)]

use clap::{Args, Parser, Subcommand};
use receiver::card::{LinkOptions, PcscCard};
use receiver::error::exit;
use receiver::identity::{self, IdentityError};
use receiver::io::Address;
use receiver::{run, Failure, PipelineOptions, RunConfig};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ABOUT: &str =
    "Iodoform receiver: descrambles one service of a broadcast TS with the card's help";

const LONG_ABOUT: &str = "\
Iodoform receiver: descrambles one service of a broadcast TS with the card's help.

It finds the service through the PAT and PMT, the ECM PID in the PMT's
CA_descriptor and the EMM PID in the CAT. It hands the card the EMMs
addressed to it (or to all cards) and every new ECM, over a session that
seals the control words, and writes a clear TS: scrambling bits cleared,
the PMT without CA descriptors, and no CAT, ECM or EMM packets.

Each component's output starts at a random access point (video) or a PES
start (audio), at the start and again after packets were lost, the input
fell silent or the service came back, so a player never gets half a
picture (--no-rap-join writes everything). PMT and CAT changes, a service
that leaves and returns and input outages are followed live, logged and
counted (--stats-json).

Play the output with `receiver -i udp://127.0.0.1:5000 -o - | ffplay -`.";

/// The stream address syntax, shared with the headend (`tsio`).
const ADDRESSES: &str = "\
Stream addresses (-i, -o):
  -                      stdin (-i) or stdout (-o)
  PATH, file://PATH      a file
  PATH?loop              a file input played again and again
  udp://HOST:PORT        UDP; as an input, a multicast group is joined
  udp://@:PORT           UDP input on every local address (not for -o)";

/// Shown after `--help`: the address syntax, the exit codes (one table
/// for every Iodoform tool) and where the logs go.
fn after_help() -> String {
    format!(
        "Examples:\n  receiver identity\n  receiver -i udp://127.0.0.1:5000 -o - | ffplay -\n  \
         receiver -i capture.ts -o clear.ts --service 1 --reader vpcd\n\n{ADDRESSES}\n\n{}\n\n\
         Logs: RUST_LOG=receiver=debug (default: warnings).",
        cli::EXIT_CODES_HELP
    )
}

#[derive(Debug, Parser)]
#[command(
    name = "receiver",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = after_help(),
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
    /// The receiver's key file (created with mode 0600 on first start).
    /// Default: $XDG_STATE_HOME/iodoform/receiver.key, else
    /// ~/.local/state/iodoform/receiver.key.
    #[arg(long, value_name = "FILE", global = true)]
    identity: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints this receiver's public key in hex (for `headend pair CARD KEY`),
    /// creating the key on first use.
    Identity,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The scrambled TS: udp://HOST:PORT (a multicast group is joined), udp://@:PORT (every
    /// local address), a file (PATH or file://PATH; PATH?loop plays it again and again), or -
    /// for stdin.
    #[arg(short, long, value_name = "URL", required = true, value_parser = Address::parse_input)]
    input: Option<Address>,
    /// Where the clear TS goes: a file (PATH or file://PATH), udp://HOST:PORT (7 packets per
    /// datagram; a multicast group is fine), or - for stdout.
    #[arg(short, long, value_name = "URL", required = true, value_parser = Address::parse_output)]
    output: Option<Address>,
    /// The service (program_number) to descramble; default: the first in the PAT.
    #[arg(short, long, value_name = "N", value_parser = parse_u16)]
    service: Option<u16>,
    /// The PC/SC reader (exact name, or part of it); default: the first reader with a card.
    #[arg(long, value_name = "NAME")]
    reader: Option<String>,
    /// How long to wait for a card at start.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    card_timeout: Duration,
    /// How long to wait for the card to come back when the link breaks
    /// (removal, reset, pcscd restart); default: for ever.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    reconnect_timeout: Option<Duration>,
    /// How long the card may refuse the service's ECMs, with the output
    /// stopped, before the receiver gives up (exit 3); EMMs may still bring
    /// the entitlement meanwhile. Stream time or wall time, whichever is
    /// faster. The default outlasts the headend's default EMM cycle (60 s)
    /// plus a crypto period; a new subscription comes within a second or so.
    #[arg(long, value_name = "SECS", default_value = "70", value_parser = parse_secs)]
    entitlement_wait: Duration,
    /// How long the card may stay paired with another receiver before the
    /// receiver gives up (exit 5). Meanwhile it says once what the operator
    /// can run, writes nothing for the service, and hands the card its EMMs,
    /// so `headend pair CARD KEY` or `headend unpair CARD` reaches it and
    /// the picture starts. Default: for ever.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pairing_wait: Option<Duration>,
    /// Give up when the input sends nothing for this long; default: wait for ever.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    input_timeout: Option<Duration>,
    /// Write every packet that can be descrambled as it comes, instead of
    /// starting each component's output at a random access point (video:
    /// the random_access_indicator, or an H.264/H.265 key frame; audio: a
    /// PES start) at the start and after a loss, an input outage or the
    /// service's return. For a recorder that keeps everything, e.g.
    /// `receiver -i udp://@:5000 -o capture.ts --no-rap-join`.
    #[arg(long)]
    no_rap_join: bool,
    /// Write the final counters and the exit reason to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// No live status line (it is drawn only when stderr is a terminal anyway).
    #[arg(short, long)]
    quiet: bool,
}

fn parse_u16(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s} is not a number from 0 to 65535"))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("{s} is not a number of seconds"))
}

fn identity_path(cli: &Cli) -> Result<PathBuf, IdentityError> {
    match &cli.identity {
        Some(p) => Ok(p.clone()),
        None => identity::default_path(),
    }
}

fn fail(msg: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("receiver: {msg}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli: Cli = cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let identity = match identity_path(&cli).and_then(|p| identity::load_or_create(&p)) {
        Ok(i) => i,
        Err(e) => {
            let f = Failure::from(e);
            let code = f.exit_code();
            return fail(f, code);
        }
    };
    if identity.created {
        eprintln!(
            "receiver: created a new receiver key in {}",
            identity.path.display()
        );
    }
    if let Some(Command::Identity) = cli.command {
        cli::outln!("{}", identity.public_hex());
        return ExitCode::SUCCESS;
    }

    let a = cli.run;
    let (Some(input), Some(output)) = (a.input, a.output) else {
        return fail("--input and --output are required", exit::USAGE);
    };
    let connector = Box::new(PcscCard { reader: a.reader });
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // The first signal ends the run cleanly (summary, flushed output);
        // a second one, for a run stuck waiting for a card, exits at once.
        // (`timeout` delivers one signal twice at once: that is one.)
        let signals = cli::Signals::new();
        let _ = ctrlc::set_handler(move || {
            stop.store(true, Ordering::Relaxed);
            if signals.second() {
                std::process::exit(i32::from(cli::exit::INTERRUPTED));
            }
        });
    }
    let cfg = RunConfig {
        input,
        output,
        pipeline: PipelineOptions {
            service: a.service,
            entitlement_wait: a.entitlement_wait,
            pairing_wait: a.pairing_wait,
            rap_join: !a.no_rap_join,
            ..PipelineOptions::default()
        },
        link: LinkOptions {
            connect_timeout: a.card_timeout,
            reconnect_timeout: a.reconnect_timeout,
        },
        input_timeout: a.input_timeout,
        status_line: !a.quiet && std::io::stderr().is_terminal(),
        stop: Some(stop),
    };
    let report = run(&cfg, connector, identity.secret);
    if let Some(path) = &a.stats_json {
        let text = serde_json::to_string_pretty(&report.to_json()).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("receiver: cannot write {}: {e}", path.display());
        }
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", report.stats.summary());
    if let Some(f) = &report.failure {
        let _ = writeln!(err, "receiver: {f}");
    }
    ExitCode::from(report.exit_code())
}
