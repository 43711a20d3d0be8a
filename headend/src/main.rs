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
    about = "The Iodoform headend: subscribers, keys, ECMs and EMMs."
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
    /// database and operator.json.
    Init(InitArgs),
    /// Run the daemon until SIGTERM or SIGINT.
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
    /// Give a card a product until a date.
    Subscribe {
        card: u32,
        product: String,
        /// YYYY-MM-DD (through that day, UTC) or RFC 3339.
        #[arg(long)]
        until: String,
        /// YYYY-MM-DD or RFC 3339 (default: today).
        #[arg(long)]
        start: Option<String>,
    },
    /// Take a product from a card (its key is renewed at once).
    Unsubscribe { card: u32, product: String },
    /// Pair a card with one receiver's X25519 public key (hex).
    Pair { card: u32, receiver_key: String },
    /// End a card's pairing: the card gets UNPAIR at once, ahead of the EMM
    /// carousel, and works with any receiver again. The way out of a
    /// pairing with the wrong key (as is `pair` with the right one).
    ///
    /// Example: headend unpair 42
    Unpair {
        /// The card id.
        card: u32,
    },
    /// Renew one product's period key, or every product's.
    Rotate { product: Option<String> },
    /// The daemon's state.
    Status,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The folder to create the headend in.
    #[arg(long)]
    dir: PathBuf,
    /// The admin API's address.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    listen: SocketAddr,
    #[arg(long, default_value_t = 1)]
    operator_id: u32,
    #[arg(long)]
    crypto_period_ms: Option<u64>,
    #[arg(long)]
    emm_cycle_ms: Option<u64>,
    #[arg(long)]
    key_renewal_secs: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum ProductCmd {
    /// Create a product.
    Add {
        name: String,
        #[arg(long)]
        id: Option<u32>,
    },
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
    /// Create a channel.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = parse_u16)]
        service_id: u16,
        #[arg(long)]
        product: String,
        #[arg(long, value_parser = parse_u16)]
        ecm_pid: u16,
        #[arg(long, value_parser = parse_u16)]
        emm_pid: u16,
        #[arg(long, default_value_t = 0)]
        maturity: u8,
        #[arg(long)]
        input: Option<String>,
        #[arg(long)]
        output: Option<String>,
    },
    List,
}

#[derive(Debug, Subcommand)]
enum CardCmd {
    /// Register a card from the JSON that `smartcard provision` writes
    /// ({"card_id", "public_key", "operator_id"}).
    Add {
        #[arg(long, value_name = "card.json")]
        from: PathBuf,
    },
    List {
        #[arg(long, default_value_t = 0)]
        after: u32,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    Show {
        card: u32,
    },
    /// Revoke a card: its products' keys are renewed at once.
    Revoke {
        card: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    if let Some(v) = a.crypto_period_ms {
        c.crypto_period_ms = v;
    }
    if let Some(v) = a.emm_cycle_ms {
        c.emm_cycle_ms = v;
    }
    if let Some(v) = a.key_renewal_secs {
        c.key_renewal_secs = v;
    }
    match headend::init::init(&a.dir, &c, now_ms()) {
        Ok(made) => {
            println!("created {}", made.config.display());
            println!(
                "operator {} public keys: {}",
                made.operator_id,
                made.operator_public.display()
            );
            println!(
                "start it with: headend run --config {}",
                made.config.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("headend init: {e}");
            ExitCode::from(73)
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
    // The stream engine: a thread per channel with an input and an output,
    // scrambling with the CWs and carrying the ECMs and EMMs that the
    // scheduler publishes. A bad URL is a config error.
    let streams_stop = headend::stream::Shutdown::new();
    let channels = {
        let core = daemon.core();
        let mut core = core.lock().unwrap_or_else(|e| e.into_inner());
        // One scheduler step now, so that every channel's current ECM is
        // published before its stream starts: a file input is read at
        // once, and the packets read before the CA side is ready are
        // dropped (never sent clear), the start of the file with them.
        if let Err(e) = core.tick(now_ms()) {
            tracing::warn!(error = %e, "first scheduler step failed; the scheduler retries");
        }
        core.channels()
    };
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let streams =
        match headend::stream::spawn_configured(&channels, base, &daemon.output(), &streams_stop) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("headend run: {}: {e}", path.display());
                return ExitCode::from(64);
            }
        };
    let served = rt.block_on(daemon.serve(shutdown_signal()));
    streams_stop.trigger();
    for h in streams {
        // Each stream thread logs how it ended.
        let _ = h.join();
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("headend run: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A product argument as JSON: a number is an id, anything else a name.
fn product_ref(s: &str) -> Value {
    match s.parse::<u32>() {
        Ok(n) => json!(n),
        Err(_) => json!(s),
    }
}

fn client_command(config: Option<PathBuf>, as_json: bool, cmd: Command) -> Result<(), ClientError> {
    let client = Client::from_config(&config_path(config.as_deref())?)?;
    let (value, view): (Value, View) = match cmd {
        Command::Product(ProductCmd::Add { name, id }) => {
            let mut body = json!({ "name": name });
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            (client.post("/api/v1/products", &body)?, View::Products)
        }
        Command::Product(ProductCmd::List) => (client.get("/api/v1/products")?, View::Products),
        Command::Channel(ChannelCmd::Add {
            name,
            service_id,
            product,
            ecm_pid,
            emm_pid,
            maturity,
            input,
            output,
        }) => {
            let body = json!({
                "name": name, "service_id": service_id, "product": product_ref(&product),
                "ecm_pid": ecm_pid, "emm_pid": emm_pid, "maturity": maturity,
                "input": input, "output": output,
            });
            (client.post("/api/v1/channels", &body)?, View::Channels)
        }
        Command::Channel(ChannelCmd::List) => (client.get("/api/v1/channels")?, View::Channels),
        Command::Card(CardCmd::Add { from }) => {
            let text = std::fs::read_to_string(&from).map_err(|e| ClientError::Api {
                status: 400,
                message: format!("cannot read {}: {e}", from.display()),
            })?;
            let v: Value = serde_json::from_str(&text).map_err(|e| ClientError::Api {
                status: 400,
                message: format!("{} is not JSON: {e}", from.display()),
            })?;
            let body = json!({
                "card_id": v.get("card_id"),
                "public_key": v.get("public_key"),
                "operator_id": v.get("operator_id"),
            });
            (client.post("/api/v1/cards", &body)?, View::Card)
        }
        Command::Card(CardCmd::List { after, limit }) => (
            client.get(&format!("/api/v1/cards?after={after}&limit={limit}"))?,
            View::Cards,
        ),
        Command::Card(CardCmd::Show { card }) => {
            (client.get(&format!("/api/v1/cards/{card}"))?, View::Card)
        }
        Command::Card(CardCmd::Revoke { card }) => (
            client.post(&format!("/api/v1/cards/{card}/revoke"), &json!({}))?,
            View::Card,
        ),
        Command::Subscribe {
            card,
            product,
            until,
            start,
        } => {
            let mut body =
                json!({ "card_id": card, "product": product_ref(&product), "until": until });
            if let Some(s) = start {
                body["start"] = json!(s);
            }
            (
                client.post("/api/v1/subscriptions", &body)?,
                View::Subscription,
            )
        }
        Command::Unsubscribe { card, product } => (
            client.delete(&format!(
                "/api/v1/subscriptions/{card}/{}",
                urlencode(&product)
            ))?,
            View::Done(format!(
                "card {card} no longer has product {product}; its key is being renewed"
            )),
        ),
        Command::Pair { card, receiver_key } => (
            client.post(
                "/api/v1/pairings",
                &json!({ "card_id": card, "receiver_key": receiver_key }),
            )?,
            View::Card,
        ),
        Command::Unpair { card } => (
            client.delete(&format!("/api/v1/pairings/{card}"))?,
            View::Card,
        ),
        Command::Rotate { product } => {
            let body = match product {
                Some(p) => json!({ "product": product_ref(&p) }),
                None => json!({}),
            };
            (client.post("/api/v1/rotate", &body)?, View::Rotated)
        }
        Command::Status => (client.get("/api/v1/status")?, View::Status),
        Command::Init(_) | Command::Run => unreachable!("handled in main"),
    };
    if as_json {
        println!(
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

fn ms_date(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_u64)
        .map(|ms| headend::core::rfc3339(ms / 1000))
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
        println!("{}", parts.join("  ").trim_end());
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
                    "SERVICE", "NAME", "PRODUCT", "ECM PID", "EMM PID", "MATURITY", "INPUT",
                    "OUTPUT",
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
                println!("card {}  ({})", s(v, "card_id"), s(v, "state"));
                println!("  operator     {}", s(v, "operator_id"));
                println!("  public key   {}", s(v, "public_key"));
                println!("  created      {}", s(v, "created"));
                if v.get("revoked").is_some_and(|x| !x.is_null()) {
                    println!("  revoked      {}", s(v, "revoked"));
                }
                println!("  paired with  {}", s(v, "paired_receiver"));
                let subs = v.get("subscriptions").cloned().unwrap_or(json!([]));
                if subs.as_array().is_some_and(|a| !a.is_empty()) {
                    println!();
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
                println!("run {}  at {}", s(v, "run"), s(v, "now"));
                println!(
                    "crypto period {} ms (epoch {}), EMM cycle {} ms, key renewal every {} s",
                    s(v, "crypto_period_ms"),
                    s(v, "epoch"),
                    s(v, "emm_cycle_ms"),
                    s(v, "key_renewal_secs")
                );
                println!(
                    "cards: {} active, {} revoked; {} in the EMM carousel, {} waiting for a changed entitlement",
                    s(&v["cards"], "active"),
                    s(&v["cards"], "revoked"),
                    s(v, "carousel_cards"),
                    s(v, "carousel_pending")
                );
                println!();
                View::Products.print(&v["products"]);
                println!();
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
            }
            View::Done(msg) => println!("{msg}"),
        }
    }
}
