//! `headend`: the Iodoform headend daemon and its command-line client.
//!
//! ```text
//! headend init --dir DIR                  # a new headend's files
//! headend run --config DIR/headend.toml   # the daemon
//! headend [--config FILE] [--json] product|channel|card|subscribe|unsubscribe|pair|unpair|rotate|status ...
//! ```
//!
//! Every subcommand other than `init` and `run` is a client of the admin
//! API: it finds the daemon and its token through `--config` or the
//! `IODOFORM_CONFIG` environment variable.
#![forbid(unsafe_code)]

use api::{
    path, ChannelUpdate, NewCard, NewChannel, NewPairing, NewProduct, NewSubscription, ProductRef,
    RotateRequest,
};
use clap::{Args, Parser, Subcommand};
use headend::client::{config_path, Client, ClientError};
use headend::config::{Config, DEFAULT_PORT};
use headend::daemon::{now_ms, shutdown_signal, Daemon};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "headend",
    version,
    about = "The Iodoform headend: subscribers, keys, ECMs and EMMs.",
    after_help = after_help()
)]
struct Cli {
    /// The headend's config file (default: $IODOFORM_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a headend: config, master key, admin token, operator keys,
    /// database and operator.json. Refuses to overwrite any of them.
    ///
    /// Example: headend init --dir /var/lib/iodoform
    Init(InitArgs),
    /// Run the daemon (scheduler, streams, admin API) until SIGTERM or
    /// SIGINT. Logs go to stderr (RUST_LOG=debug for more).
    ///
    /// Example: headend run --config /var/lib/iodoform/headend.toml
    Run,
    /// Products (packages of channels).
    #[command(subcommand)]
    Product(ProductCmd),
    /// Channels (DVB services).
    #[command(subcommand)]
    Channel(ChannelCmd),
    /// Smartcards.
    #[command(subcommand)]
    Card(CardCmd),
    /// Give a card a product until a date. The entitlement is sent to the
    /// card at once, ahead of the EMM carousel.
    ///
    /// Example: headend subscribe 42 sports --until 2027-06-30
    Subscribe {
        /// The card id.
        card: u32,
        /// The product: its id or its name.
        product: String,
        /// The last day: YYYY-MM-DD (through that day, UTC) or RFC 3339.
        #[arg(long, value_name = "DATE")]
        until: String,
        /// The first day: YYYY-MM-DD or RFC 3339 [default: today, UTC].
        #[arg(long, value_name = "DATE")]
        start: Option<String>,
    },
    /// Take a product from a card; the product's key is renewed at once,
    /// so the card loses it within one EMM delivery.
    ///
    /// Example: headend unsubscribe 42 sports
    Unsubscribe {
        /// The card id.
        card: u32,
        /// The product: its id or its name.
        product: String,
    },
    /// Pair a card with one receiver: the card then seals control words
    /// only to that receiver. The pairing is sent at once.
    ///
    /// Example: headend pair 42 "$(receiver identity)"
    Pair {
        /// The card id.
        card: u32,
        /// The receiver's X25519 public key, 64 hex digits, as `receiver
        /// identity` prints it.
        receiver_key: String,
    },
    /// End a card's pairing: the card gets UNPAIR at once, ahead of the EMM
    /// carousel, and works with any receiver again. The way out of a
    /// pairing with the wrong key (as is `pair` with the right one).
    ///
    /// Example: headend unpair 42
    Unpair {
        /// The card id.
        card: u32,
    },
    /// Renew one product's period key K_P now, or every product's. The new
    /// key goes into ECMs once its EMMs have had time to reach the cards.
    ///
    /// Example: headend rotate sports
    Rotate {
        /// The product: its id or its name [default: every product].
        product: Option<String>,
    },
    /// The daemon's state: timing, cards, products and their keys, each
    /// channel on the air or why not, and the current ECMs.
    ///
    /// Example: headend status --json
    Status,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The folder to create the headend in (made if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The admin API's address; keep it on loopback unless a firewall
    /// guards it.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    listen: SocketAddr,
    /// This operator's number, written into every card it provisions.
    #[arg(long, value_name = "N", default_value_t = 1)]
    operator_id: u32,
    /// The crypto period: how long one control word is in use (at least
    /// 100).
    #[arg(long, value_name = "MS", default_value_t = Config::default().crypto_period_ms)]
    crypto_period_ms: u64,
    /// The EMM-U carousel reaches every entitled card within this long.
    #[arg(long, value_name = "MS", default_value_t = Config::default().emm_cycle_ms)]
    emm_cycle_ms: u64,
    /// Each product's period key is renewed this often.
    #[arg(long, value_name = "SECS", default_value_t = Config::default().key_renewal_secs)]
    key_renewal_secs: u64,
}

#[derive(Debug, Subcommand)]
enum ProductCmd {
    /// Create a product, with a fresh period key.
    ///
    /// Example: headend product add sports
    Add {
        /// A unique name (1 to 64 characters).
        name: String,
        /// Its number [default: one more than the highest].
        #[arg(long, value_name = "N")]
        id: Option<u32>,
    },
    /// Every product with its key generations and next renewal.
    List,
}

fn parse_u16(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number 0..=65535 (decimal or 0x hex)"))
}

#[derive(Debug, Subcommand)]
enum ChannelCmd {
    /// Create a channel. With an input and an output it goes on the air
    /// at once (within a second), no restart needed. It is refused, with
    /// the field and the fix, if the daemon could not run it: a bad URL, a
    /// missing input file, an output folder it cannot write, PIDs that
    /// clash within the channel, with the input or with another channel,
    /// an output another channel uses.
    ///
    /// Example: headend channel add --name news --service-id 1 --product basic --ecm-pid 0x1F0
    /// --emm-pid 0x1F1 --input udp://@:5000 --output udp://239.1.1.1:5000
    Add {
        /// A name of your choice (not a number).
        #[arg(long)]
        name: String,
        /// The DVB service_id: the input's program number (ffmpeg's is 1);
        /// decimal or 0x hex.
        #[arg(long, value_parser = parse_u16, value_name = "ID")]
        service_id: u16,
        /// The product whose subscribers may watch it (name or id).
        #[arg(long)]
        product: String,
        /// The PID for this channel's ECMs (0x20..=0x1FFE), one the input
        /// does not use and no other channel has.
        #[arg(long, value_parser = parse_u16, value_name = "PID")]
        ecm_pid: u16,
        /// The PID for the EMMs (0x20..=0x1FFE); channels may share it.
        #[arg(long, value_parser = parse_u16, value_name = "PID")]
        emm_pid: u16,
        /// Minimum viewer age, 0 for none.
        #[arg(long, default_value_t = 0)]
        maturity: u8,
        /// Where the clear TS comes from: udp://HOST:PORT (udp://@:PORT on
        /// every address), or a file (relative to the config's folder;
        /// FILE?loop plays it again and again). Default: none (off the air).
        #[arg(long, value_name = "URL")]
        input: Option<String>,
        /// Where the scrambled TS goes: udp://HOST:PORT or a file. Default:
        /// none (off the air).
        #[arg(long, value_name = "URL")]
        output: Option<String>,
        /// Another program of the input to send on unscrambled, on purpose
        /// (repeat for several). Default: none; every program but this
        /// channel's is dropped.
        #[arg(long = "clear-service", value_parser = parse_u16, value_name = "ID")]
        clear_services: Vec<u16>,
    },
    /// Change a channel, live: a new input, output, PID or clear service
    /// restarts its stream within a second; a new product or maturity
    /// goes into the next ECM. Only the options given change. A channel
    /// of headend.toml is changed there instead.
    ///
    /// Example: headend channel update news --input udp://@:5010
    Update {
        /// The channel: its service id or its name.
        channel: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new product (name or id).
        #[arg(long)]
        product: Option<String>,
        /// A new ECM PID.
        #[arg(long, value_parser = parse_u16, value_name = "PID")]
        ecm_pid: Option<u16>,
        /// A new EMM PID.
        #[arg(long, value_parser = parse_u16, value_name = "PID")]
        emm_pid: Option<u16>,
        /// A new minimum viewer age.
        #[arg(long)]
        maturity: Option<u8>,
        /// A new input URL.
        #[arg(long, value_name = "URL", conflicts_with = "no_input")]
        input: Option<String>,
        /// Take the input away (the channel goes off the air).
        #[arg(long)]
        no_input: bool,
        /// A new output URL.
        #[arg(long, value_name = "URL", conflicts_with = "no_output")]
        output: Option<String>,
        /// Take the output away (the channel goes off the air).
        #[arg(long)]
        no_output: bool,
        /// The programs to send unscrambled, replacing the list (repeat
        /// for several).
        #[arg(long = "clear-service", value_parser = parse_u16, value_name = "ID",
              conflicts_with = "no_clear_services")]
        clear_services: Vec<u16>,
        /// Send no program unscrambled.
        #[arg(long)]
        no_clear_services: bool,
    },
    /// Remove a channel: its stream and its ECMs stop at once. A channel
    /// of headend.toml is removed there instead.
    ///
    /// Example: headend channel remove news
    Remove {
        /// The channel: its service id or its name.
        channel: String,
    },
    /// Every channel, with its state (on_air, waiting, failed, ended, off).
    ///
    /// Example: headend channel list --json
    List,
}

#[derive(Debug, Subcommand)]
enum CardCmd {
    /// Register a card from the JSON that `smartcard provision` writes
    /// ({"card_id", "public_key", "operator_id"}).
    ///
    /// Example: headend card add --from card.json
    Add {
        /// The card record file.
        #[arg(long, value_name = "card.json")]
        from: PathBuf,
    },
    /// Cards in id order, a page at a time, with their subscriptions.
    ///
    /// Example: headend card list --after 1000 --limit 50
    List {
        /// Start after this card id (the last id of the previous page).
        #[arg(long, value_name = "ID", default_value_t = 0)]
        after: u32,
        /// At most this many cards (1 to 10000).
        #[arg(long, value_name = "N", default_value_t = 1000,
              value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// One card: state, keys, pairing and subscriptions.
    ///
    /// Example: headend card show 42
    Show {
        /// The card id.
        card: u32,
    },
    /// Revoke a card for good: its products' keys are renewed at once and
    /// it never gets another EMM. To undo a pairing, use `unpair`.
    ///
    /// Example: headend card revoke 42
    Revoke {
        /// The card id.
        card: u32,
    },
}

/// Shown after `--help`: a first session, and the exit codes (one table
/// for every Iodoform tool).
fn after_help() -> String {
    format!(
        "Examples:\n  \
         headend init --dir /var/lib/iodoform\n  \
         headend run --config /var/lib/iodoform/headend.toml\n  \
         export IODOFORM_CONFIG=/var/lib/iodoform/headend.toml\n  \
         headend product add basic\n  \
         headend channel add --name news --service-id 1 --product basic --ecm-pid 0x1F0 --emm-pid 0x1F1 \\\n      \
         --input udp://127.0.0.1:5000 --output udp://127.0.0.1:5002\n  \
         headend subscribe 1 basic --until 2027-12-31\n  \
         headend status\n\n{}",
        cli::EXIT_CODES_HELP
    )
}

fn main() -> ExitCode {
    let cli: Cli = cli::parse();
    match cli.command {
        Command::Init(a) => init(a),
        Command::Run => run(cli.config),
        other => match client_command(cli.config, cli.json, other) {
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
        return match e {
            headend::config::ConfigError::Field { field, message, .. } => {
                eprintln!("headend init: --{} {message}", field.replace('_', "-"));
                ExitCode::from(cli::exit::USAGE)
            }
            other => {
                eprintln!("headend init: {other}");
                ExitCode::from(cli::exit::USAGE)
            }
        };
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

fn run(config: Option<PathBuf>) -> ExitCode {
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

fn client_command(config: Option<PathBuf>, as_json: bool, cmd: Command) -> Result<(), ClientError> {
    let client = Client::from_config(&config_path(config.as_deref())?)?;
    let (value, view): (Value, View) = match cmd {
        Command::Product(ProductCmd::Add { name, id }) => (
            client.post(path::PRODUCTS, &NewProduct { name, id })?,
            View::Products,
        ),
        Command::Product(ProductCmd::List) => (client.get(path::PRODUCTS)?, View::Products),
        Command::Channel(ChannelCmd::Add {
            name,
            service_id,
            product,
            ecm_pid,
            emm_pid,
            maturity,
            input,
            output,
            clear_services,
        }) => {
            let body = NewChannel {
                name,
                service_id,
                product: ProductRef::parse(&product),
                ecm_pid,
                emm_pid,
                maturity,
                input,
                output,
                clear_services,
            };
            (client.post(path::CHANNELS, &body)?, View::Channels)
        }
        Command::Channel(ChannelCmd::Update {
            channel,
            name,
            product,
            ecm_pid,
            emm_pid,
            maturity,
            input,
            no_input,
            output,
            no_output,
            clear_services,
            no_clear_services,
        }) => {
            // A flag that takes a field away sends it as null.
            let gone = |given: Option<String>, remove: bool| match given {
                Some(v) => Some(Some(v)),
                None => remove.then_some(None),
            };
            let body = ChannelUpdate {
                service_id: None,
                name,
                product: product.as_deref().map(ProductRef::parse),
                ecm_pid,
                emm_pid,
                maturity,
                input: gone(input, no_input),
                output: gone(output, no_output),
                clear_services: if !clear_services.is_empty() {
                    Some(clear_services)
                } else {
                    no_clear_services.then(Vec::new)
                },
            };
            if body.is_empty() {
                return Err(ClientError::Api {
                    status: 400,
                    message: "nothing to change: give at least one option (see `headend channel update --help`)".into(),
                });
            }
            (
                client.patch(
                    &format!("{}/{}", path::CHANNELS, urlencode(&channel)),
                    &body,
                )?,
                View::Channels,
            )
        }
        Command::Channel(ChannelCmd::Remove { channel }) => {
            let v = client.delete(&format!("{}/{}", path::CHANNELS, urlencode(&channel)))?;
            let msg = format!(
                "channel {} (service {}) removed; its stream and its ECMs have stopped",
                s(&v, "name"),
                s(&v, "service_id")
            );
            (v, View::Done(msg))
        }
        Command::Channel(ChannelCmd::List) => (client.get(path::CHANNELS)?, View::Channels),
        Command::Card(CardCmd::Add { from }) => {
            let text = std::fs::read_to_string(&from).map_err(|e| ClientError::Api {
                status: 400,
                message: format!("cannot read {}: {e}", from.display()),
            })?;
            let body: NewCard = serde_json::from_str(&text).map_err(|e| ClientError::Api {
                status: 400,
                message: format!(
                    "{} is not the card record `smartcard provision` writes \
                     ({{\"card_id\", \"public_key\", \"operator_id\"}}): {e}",
                    from.display()
                ),
            })?;
            (client.post(path::CARDS, &body)?, View::Card)
        }
        Command::Card(CardCmd::List { after, limit }) => (
            client.get(&format!("{}?after={after}&limit={limit}", path::CARDS))?,
            View::Cards,
        ),
        Command::Card(CardCmd::Show { card }) => {
            (client.get(&format!("{}/{card}", path::CARDS))?, View::Card)
        }
        Command::Card(CardCmd::Revoke { card }) => (
            client.post(
                &format!("{}/{card}/revoke", path::CARDS),
                &serde_json::Map::new(),
            )?,
            View::Card,
        ),
        Command::Subscribe {
            card,
            product,
            until,
            start,
        } => {
            let body = NewSubscription {
                card_id: card,
                product: ProductRef::parse(&product),
                until,
                start,
            };
            (client.post(path::SUBSCRIPTIONS, &body)?, View::Subscription)
        }
        Command::Unsubscribe { card, product } => (
            client.delete(&format!(
                "{}/{card}/{}",
                path::SUBSCRIPTIONS,
                urlencode(&product)
            ))?,
            View::Done(format!(
                "card {card} no longer has product {product}; its key is being renewed"
            )),
        ),
        Command::Pair { card, receiver_key } => (
            client.post(
                path::PAIRINGS,
                &NewPairing {
                    card_id: card,
                    receiver_key,
                },
            )?,
            View::Card,
        ),
        Command::Unpair { card } => (
            client.delete(&format!("{}/{card}", path::PAIRINGS))?,
            View::Card,
        ),
        Command::Rotate { product } => {
            let body = RotateRequest {
                product: product.as_deref().map(ProductRef::parse),
            };
            (client.post(path::ROTATE, &body)?, View::Rotated)
        }
        Command::Status => (client.get(path::STATUS)?, View::Status),
        Command::Init(_) | Command::Run => unreachable!("handled in main"),
    };
    if as_json {
        cli::outln!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        view.print(&value);
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The channels of `headend status`: a line each, then why each one that
/// is not on the air is not, and what to do.
fn channel_states(v: &Value) {
    let bitrate = |c: &Value| match c.get("input_bitrate_bps").and_then(Value::as_u64) {
        Some(b) if b >= 1_000_000 => format!("{:.1} Mbit/s", b as f64 / 1e6),
        Some(b) if b > 0 => format!("{:.0} kbit/s", b as f64 / 1e3),
        Some(_) => "0".into(),
        None => "-".into(),
    };
    let silent = |c: &Value| {
        c.get("input_silence_seconds")
            .and_then(Value::as_f64)
            .map(|x| format!("{x:.1} s"))
            .unwrap_or_else(|| "-".into())
    };
    table(
        &[
            "SERVICE",
            "CHANNEL",
            "STATE",
            "CAUSE",
            "INPUT PACKETS",
            "INPUT RATE",
            "SINCE INPUT",
        ],
        &rows(v, |c| {
            vec![
                s(c, "service_id"),
                s(c, "name"),
                s(c, "state"),
                s(c, "cause"),
                s(c, "input_packets"),
                bitrate(c),
                silent(c),
            ]
        }),
    );
    for c in v.as_array().into_iter().flatten() {
        let name = s(c, "name");
        if let Some(e) = c.get("error").and_then(Value::as_str) {
            let retry = c
                .get("retry_in_seconds")
                .and_then(Value::as_f64)
                .map(|r| format!(" (tried again in {r:.0} s)"))
                .unwrap_or_default();
            cli::outln!("  {name}: {e}{retry}");
        } else if let Some(fix) = c.get("fix").and_then(Value::as_str) {
            let why = c
                .get("detail")
                .and_then(Value::as_str)
                .or_else(|| c.get("cause").and_then(Value::as_str))
                .unwrap_or("");
            cli::outln!("  {name}: {why}: {fix}");
        }
    }
}

enum View {
    Products,
    Channels,
    Cards,
    Card,
    Subscription,
    Rotated,
    Status,
    Done(String),
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A duration for a person: `45s`, `12m 5s`, `3h 20m`, `29d 23h`;
/// negative as `-5s`.
fn human_secs(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let t = secs.unsigned_abs();
    let (d, h, m, sec) = (t / 86_400, t / 3600 % 24, t / 60 % 60, t % 60);
    let body = if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    };
    format!("{sign}{body}")
}

fn ms_date(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_u64)
        .map(|ms| headend::state::rfc3339(ms / 1000))
        .unwrap_or_else(|| "-".into())
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        cli::outln!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn rows(v: &Value, f: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    match v {
        Value::Array(a) => a.iter().map(f).collect(),
        other => vec![f(other)],
    }
}

impl View {
    fn print(&self, v: &Value) {
        match self {
            View::Products => table(
                &["ID", "NAME", "GENERATION", "ACTIVE", "NEXT RENEWAL"],
                &rows(v, |p| {
                    vec![
                        s(p, "id"),
                        s(p, "name"),
                        s(p, "generation"),
                        s(p, "active_generation"),
                        ms_date(p, "next_renewal_ms"),
                    ]
                }),
            ),
            View::Channels => table(
                &[
                    "SERVICE", "NAME", "STATE", "PRODUCT", "ECM PID", "EMM PID", "MATURITY",
                    "INPUT", "OUTPUT",
                ],
                &rows(v, |c| {
                    let pid = |k: &str| {
                        c.get(k)
                            .and_then(Value::as_u64)
                            .map(|p| format!("{p:#06x}"))
                            .unwrap_or_default()
                    };
                    vec![
                        s(c, "service_id"),
                        s(c, "name"),
                        s(c, "state"),
                        s(c, "product"),
                        pid("ecm_pid"),
                        pid("emm_pid"),
                        s(c, "maturity"),
                        s(c, "input"),
                        s(c, "output"),
                    ]
                }),
            ),
            View::Cards => table(
                &["CARD", "STATE", "CREATED", "PAIRED"],
                &rows(v, |c| {
                    vec![
                        s(c, "card_id"),
                        s(c, "state"),
                        s(c, "created"),
                        if c.get("paired_receiver").is_some_and(|x| !x.is_null()) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                    ]
                }),
            ),
            View::Card => {
                cli::outln!("card {}  ({})", s(v, "card_id"), s(v, "state"));
                cli::outln!("  operator     {}", s(v, "operator_id"));
                cli::outln!("  public key   {}", s(v, "public_key"));
                cli::outln!("  created      {}", s(v, "created"));
                if v.get("revoked").is_some_and(|x| !x.is_null()) {
                    cli::outln!("  revoked      {}", s(v, "revoked"));
                }
                cli::outln!("  paired with  {}", s(v, "paired_receiver"));
                let subs = v.get("subscriptions").cloned().unwrap_or(json!([]));
                if subs.as_array().is_some_and(|a| !a.is_empty()) {
                    cli::outln!();
                    View::Subscription.print(&subs);
                }
            }
            View::Subscription => table(
                &["CARD", "PRODUCT", "NAME", "START", "UNTIL", "LAPSED"],
                &rows(v, |x| {
                    vec![
                        s(x, "card_id"),
                        s(x, "product"),
                        s(x, "product_name"),
                        s(x, "start"),
                        s(x, "until"),
                        s(x, "lapsed"),
                    ]
                }),
            ),
            View::Rotated => table(
                &["PRODUCT", "NAME", "GENERATION", "IN ECMS FROM"],
                &rows(&v["rotated"], |r| {
                    vec![
                        s(r, "product"),
                        s(r, "name"),
                        s(r, "generation"),
                        s(r, "activate_at"),
                    ]
                }),
            ),
            View::Status => {
                cli::outln!("run {}  at {}", s(v, "run"), s(v, "now"));
                cli::outln!(
                    "crypto period {} ms (epoch {}), EMM cycle {} ms, key renewal every {} s",
                    s(v, "crypto_period_ms"),
                    s(v, "epoch"),
                    s(v, "emm_cycle_ms"),
                    s(v, "key_renewal_secs")
                );
                cli::outln!(
                    "cards: {} active, {} revoked; {} in the EMM carousel, {} waiting for a changed entitlement",
                    s(&v["cards"], "active"),
                    s(&v["cards"], "revoked"),
                    s(v, "carousel_cards"),
                    s(v, "carousel_pending")
                );
                let b = &v["emm_backlog"];
                cli::outln!(
                    "EMM backlog: {} bytes, about {} s to send at {} kbit/s ({} EMM-Us the carousel owes this cycle, {} sections not yet sent by the slowest channel)",
                    s(b, "bytes"),
                    s(b, "seconds"),
                    b["bitrate"].as_u64().map_or("-".into(), |r| (r / 1000).to_string()),
                    s(b, "carousel_sections"),
                    s(b, "unsent_sections")
                );
                cli::outln!();
                table(
                    &[
                        "ID",
                        "NAME",
                        "GENERATION",
                        "IN ECMS",
                        "KEY AGE",
                        "NEXT RENEWAL",
                        "KEY SWITCH",
                    ],
                    &rows(&v["products"], |p| {
                        let secs = |k: &str| p[k].as_i64().map_or("-".into(), human_secs);
                        let switch = if p["key_switch_pending"].as_bool() == Some(true) {
                            format!(
                                "generation {} in {}",
                                s(p, "generation"),
                                secs("key_switch_secs")
                            )
                        } else {
                            "-".into()
                        };
                        vec![
                            s(p, "id"),
                            s(p, "name"),
                            s(p, "generation"),
                            s(p, "active_generation"),
                            secs("key_age_secs"),
                            format!(
                                "in {} ({})",
                                secs("next_renewal_secs"),
                                ms_date(p, "next_renewal_ms")
                            ),
                            switch,
                        ]
                    }),
                );
                cli::outln!();
                table(
                    &["SERVICE", "PRODUCT", "GENERATION", "EPOCH"],
                    &rows(&v["ecms"], |e| {
                        vec![
                            s(e, "service_id"),
                            s(e, "product"),
                            s(e, "generation"),
                            s(e, "epoch"),
                        ]
                    }),
                );
                if v["channels"].as_array().is_some_and(|a| !a.is_empty()) {
                    cli::outln!();
                    channel_states(&v["channels"]);
                }
            }
            View::Done(msg) => cli::outln!("{msg}"),
        }
    }
}
