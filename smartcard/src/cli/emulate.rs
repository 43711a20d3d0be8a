//! `smartcard emulate --state FILE [--vpcd HOST:PORT]`: the card applet as
//! a virtual card in a vpcd slot, until SIGINT or SIGTERM.
//!
//! FILE is the card's EEPROM image: created blank when missing, kept
//! through power cycles, resets and restarts. Only one emulator may use a
//! FILE at a time; a second one is refused, since two cards writing one
//! EEPROM would corrupt it.
//!
//! By default the card answers at once and takes extended-length APDUs.
//! `--apdu-delay-ms`, `--baud` and `--processing-ms` make it as slow as a
//! real card behind a reader; `--short-apdus` makes it refuse extended
//! length as most real cards and readers do.

use anyhow::{bail, Context as _};
use card::eeprom::{self, FileEeprom};
use card::Applet;
use fs2::FileExt;
use smartcard::vpcd::{self, StopHandle, Timing, VirtualCard};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Processing time per APDU with `--baud` when `--processing-ms` is not
/// given: about what an ECM or EMM costs a card's crypto coprocessor.
pub const DEFAULT_PROCESSING_MS: u64 = 10;

/// Longest delay the options accept: a card slower than a minute per
/// APDU is a mistake on the command line.
const MAX_DELAY_MS: u64 = 60_000;

const EXAMPLES: &str = "Examples:
  smartcard emulate --state card.state
      a card that answers at once, in the first vpcd slot
  smartcard emulate --state card.state --baud 9600 --short-apdus
      a T=0 card at 9600 baud: (bytes in + bytes out) x 10 bits / 9600,
      plus 10 ms processing per APDU; long commands come chained and
      long responses by GET RESPONSE
  smartcard emulate --state card.state --apdu-delay-ms 300 --short-apdus
      300 ms per APDU, whatever its size
  smartcard emulate --state card.state --baud 9600 --processing-ms 50 --vpcd 127.0.0.1:35964
      the second slot, with a slower card processor";

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The card's EEPROM image (created blank, mode 0600, if missing).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// The vpcd slot to plug the card into.
    #[arg(long, value_name = "HOST:PORT", default_value = vpcd::DEFAULT_ADDR)]
    pub vpcd: String,
    /// A fixed time per APDU, before the card answers.
    #[arg(long, value_name = "MS", value_parser = parse_delay_ms)]
    pub apdu_delay_ms: Option<u64>,
    /// T=0 character time: (bytes in + bytes out) x 10 bits / BAUD per
    /// APDU, plus the processing time.
    #[arg(long, value_name = "BAUD", value_parser = parse_baud)]
    pub baud: Option<u32>,
    /// The card's processing time per APDU [default: 10 with --baud,
    /// else 0].
    #[arg(long, value_name = "MS", value_parser = parse_delay_ms)]
    pub processing_ms: Option<u64>,
    /// Refuse extended-length APDUs with 6700, as most real cards and
    /// readers do; long commands must then come by chaining (CLA bit
    /// 0x10) and long responses go by 61xx and GET RESPONSE.
    #[arg(long)]
    pub short_apdus: bool,
}

fn parse_delay_ms(s: &str) -> Result<u64, String> {
    let ms: u64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of milliseconds; give e.g. 300"))?;
    if ms > MAX_DELAY_MS {
        return Err(format!(
            "{ms} ms is longer than a card ever takes; give at most {MAX_DELAY_MS}"
        ));
    }
    Ok(ms)
}

fn parse_baud(s: &str) -> Result<u32, String> {
    let baud: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a baud rate; give bits per second, e.g. 9600"))?;
    // ISO 7816-3 readers run from a few thousand bits per second up to
    // about a megabit; refuse what no reader does.
    if !(300..=1_000_000).contains(&baud) {
        return Err(format!(
            "{baud} baud is outside what readers do; give 300 to 1000000 (9600 is the classic T=0 rate)"
        ));
    }
    Ok(baud)
}

impl Args {
    /// The timing model the options describe.
    pub fn timing(&self) -> Timing {
        let processing = self.processing_ms.unwrap_or(if self.baud.is_some() {
            DEFAULT_PROCESSING_MS
        } else {
            0
        });
        Timing {
            per_apdu: Duration::from_millis(self.apdu_delay_ms.unwrap_or(0)),
            baud: self.baud,
            processing: Duration::from_millis(processing),
        }
    }
}

/// Locks FILE for this process; the lock goes with the process.
fn lock_state(path: &Path) -> anyhow::Result<File> {
    let f = eeprom::open_image(path)
        .with_context(|| format!("cannot open card state {}", path.display()))?;
    if f.try_lock_exclusive().is_err() {
        bail!(
            "card state {} is in use by another emulator",
            path.display()
        );
    }
    Ok(f)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let _lock = lock_state(&args.state)?;
    let eeprom = FileEeprom::open(&args.state)
        .with_context(|| format!("cannot use card state {}", args.state.display()))?;
    let applet = Applet::power_on(eeprom)
        .with_context(|| format!("card state {} is unreadable", args.state.display()))?;
    let s = applet.state();
    tracing::info!(
        state = %args.state.display(),
        lifecycle = ?s.lifecycle,
        card_id = s.card_id,
        entitlements = s.entitlements.len(),
        "card ready"
    );
    let timing = args.timing();
    if !timing.is_instant() || args.short_apdus {
        tracing::info!(
            apdu_delay_ms = timing.per_apdu.as_millis() as u64,
            baud = timing.baud,
            processing_ms = timing.processing.as_millis() as u64,
            short_apdus = args.short_apdus,
            "card speed and APDU lengths as a real card's"
        );
    }
    let stop = StopHandle::new();
    let on_signal = stop.clone();
    let signals = ::cli::Signals::new();
    ctrlc::set_handler(move || {
        // The first signal stops cleanly; a second one does not wait. The
        // EEPROM's two-slot commit makes even that safe. (`timeout`
        // delivers one signal twice at once: that is one.)
        if signals.second() {
            std::process::exit(i32::from(::cli::exit::INTERRUPTED));
        }
        on_signal.stop();
    })
    .context("cannot install the signal handler")?;
    let config = vpcd::Config {
        addr: args.vpcd,
        ..vpcd::Config::default()
    };
    let mut card = VirtualCard::new(applet).with_timing(timing);
    if args.short_apdus {
        card = card.with_short_apdus();
    }
    vpcd::run(&mut card, &config, &stop);
    Ok(())
}
