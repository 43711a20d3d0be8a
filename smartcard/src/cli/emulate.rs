//! `smartcard emulate --state FILE [--vpcd HOST:PORT]`: the card applet as
//! a virtual card in a vpcd slot, until SIGINT or SIGTERM.
//!
//! FILE is the card's EEPROM image: created blank when missing, kept
//! through power cycles, resets and restarts. Only one emulator may use a
//! FILE at a time; a second one is refused, since two cards writing one
//! EEPROM would corrupt it.

use anyhow::{bail, Context as _};
use card::eeprom::{self, FileEeprom};
use card::Applet;
use fs2::FileExt;
use smartcard::vpcd::{self, StopHandle, VirtualCard};
use std::fs::File;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The card's EEPROM image (created blank, mode 0600, if missing).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// The vpcd slot to plug the card into.
    #[arg(long, value_name = "HOST:PORT", default_value = vpcd::DEFAULT_ADDR)]
    pub vpcd: String,
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
    let mut card = VirtualCard::new(applet);
    vpcd::run(&mut card, &config, &stop);
    Ok(())
}
