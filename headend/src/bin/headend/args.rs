//! The command line: every subcommand, its options and its help.

use clap::{Args, Parser, Subcommand};
use headend::config::{Config, DEFAULT_PORT};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "headend",
    version,
    about = "The Iodoform headend: subscribers, keys, ECMs and EMMs.",
    after_help = after_help()
)]
pub(crate) struct Cli {
    /// The headend's config file (default: $IODOFORM_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a headend: config, master key, admin token, operator keys,
    /// database and operator.json. Refuses to overwrite any of them.
    ///
    /// Example: headend init --dir /var/lib/iodoform
    Init(InitArgs),
    /// Run the daemon (scheduler, streams, admin API) until SIGTERM or
    /// SIGINT. Logs go to stderr (RUST_LOG=debug for more).
    ///
    /// Example: headend run --config /var/lib/iodoform/headend.toml
    Run(RunArgs),
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
    /// Take a consistent backup of the database into FILE, mode 0600,
    /// while the daemon runs and streams (the daemon writes it, so FILE
    /// must be in a folder the daemon can write), or with the daemon
    /// stopped (this command opens the database itself). The copy is
    /// marked as a backup: a daemon that runs on it once restored renews
    /// every product key. Keep it apart from master.key.
    ///
    /// Example: headend backup /var/lib/iodoform/backup/headend-2026-05-01.db
    Backup {
        /// The file to write (made absolute from the current folder).
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Put a backup in place of the database, with the daemon stopped.
    /// The file is checked (an Iodoform database of a schema this headend
    /// reads), copied with mode 0600, and the replaced database is kept
    /// beside it as headend.db.replaced-SECONDS. At its next start the
    /// daemon seals no ECM that an earlier run may have sealed (channels
    /// are withheld for up to two crypto periods) and renews every
    /// product key.
    ///
    /// Example: headend restore /var/lib/iodoform/backup/headend-2026-05-01.db
    Restore {
        /// The backup `headend backup` wrote.
        file: PathBuf,
    },
    /// The clock check.
    #[command(subcommand)]
    Clock(ClockCmd),
}

/// The options of `headend run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Accept a clock found more than max_clock_jump_secs ahead of the
    /// last time the headend put on the air, at this start only. Check the
    /// system clock first: a card keeps the newest time it has seen.
    #[arg(long)]
    pub(crate) accept_clock_jump: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClockCmd {
    /// Accept the clock that the clock check refuses (more than
    /// max_clock_jump_secs ahead of the last time put on the air, as
    /// `headend status` shows): the headend seals with it again. Check the
    /// system clock (NTP) first: a card keeps the newest time it has seen.
    ///
    /// Example: headend clock accept
    Accept,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// The folder to create the headend in (made if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// The admin API's address; keep it on loopback unless a firewall
    /// guards it.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    pub(crate) listen: SocketAddr,
    /// This operator's number, written into every card it provisions.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) operator_id: u32,
    /// The crypto period: how long one control word is in use (at least
    /// 100).
    #[arg(long, value_name = "MS", default_value_t = Config::default().crypto_period_ms)]
    pub(crate) crypto_period_ms: u64,
    /// The EMM-U carousel reaches every entitled card within this long.
    #[arg(long, value_name = "MS", default_value_t = Config::default().emm_cycle_ms)]
    pub(crate) emm_cycle_ms: u64,
    /// Each product's period key is renewed this often.
    #[arg(long, value_name = "SECS", default_value_t = Config::default().key_renewal_secs)]
    pub(crate) key_renewal_secs: u64,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProductCmd {
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

pub(crate) fn parse_u16(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u16::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number 0..=65535 (decimal or 0x hex)"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum ChannelCmd {
    /// Create a channel. With an input and an output it goes on the air
    /// at once (within a second), no restart needed. It is refused, with
    /// the field and the fix, if the daemon could not run it: a bad URL, a
    /// missing input file, an output folder it cannot write, PIDs that
    /// clash within the channel, with the input or with another channel,
    /// an output another channel uses.
    ///
    /// Example: headend channel add --name news --service-id 1 --product basic --ecm-pid 0x1F0
    /// --emm-pid 0x1F1 --input udp://@:5000 --output udp://239.1.1.1:5000
    Add(ChannelAdd),
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

/// The options of `headend channel add`.
#[derive(Debug, Args)]
pub(crate) struct ChannelAdd {
    /// A name of your choice (not a number).
    #[arg(long)]
    pub(crate) name: String,
    /// The DVB service_id: the input's program number (ffmpeg's is 1);
    /// decimal or 0x hex.
    #[arg(long, value_parser = parse_u16, value_name = "ID")]
    pub(crate) service_id: u16,
    /// The product whose subscribers may watch it (name or id).
    #[arg(long)]
    pub(crate) product: String,
    /// The PID for this channel's ECMs (0x20..=0x1FFE), one the input
    /// does not use and no other channel has.
    #[arg(long, value_parser = parse_u16, value_name = "PID")]
    pub(crate) ecm_pid: u16,
    /// The PID for the EMMs (0x20..=0x1FFE); channels may share it.
    #[arg(long, value_parser = parse_u16, value_name = "PID")]
    pub(crate) emm_pid: u16,
    /// Minimum viewer age, 0 for none.
    #[arg(long, default_value_t = 0)]
    pub(crate) maturity: u8,
    /// Where the clear TS comes from: udp://HOST:PORT (udp://@:PORT on
    /// every address), or a file (relative to the config's folder;
    /// FILE?loop plays it again and again). Default: none (off the air).
    #[arg(long, value_name = "URL")]
    pub(crate) input: Option<String>,
    /// Where the scrambled TS goes: udp://HOST:PORT or a file. Default:
    /// none (off the air).
    #[arg(long, value_name = "URL")]
    pub(crate) output: Option<String>,
    /// Another program of the input to send on unscrambled, on purpose
    /// (repeat for several). Default: none; every program but this
    /// channel's is dropped.
    #[arg(long = "clear-service", value_parser = parse_u16, value_name = "ID")]
    pub(crate) clear_services: Vec<u16>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CardCmd {
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
