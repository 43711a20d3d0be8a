//! A virtual card behind the system's real pcscd, for the figures that go
//! through PC/SC (`ecm_cw_pcsc`, `zap`): the card applet served by the
//! library behind `smartcard emulate` (`vpcd::run`, TCP_NODELAY and
//! TCP_QUICKACK) on a thread of the perf process, so that no separately
//! built binary is needed.
//!
//! A vpcd slot is taken as every test takes one (`testkit::vpcd`: a
//! file lock, `/tmp/iodoform-vpcd-<port>.lock`, and an empty reader), so
//! that a figure never meets a test's card.

use card::eeprom::FileEeprom;
use card::Applet;
use std::path::Path;
use std::time::Duration;
use testkit::vpcd::{self, Inserted};
use testkit::vpcd::{Timing, VirtualCard};

pub(crate) use testkit::vpcd::Slot;

/// Takes a free vpcd slot whose reader is empty, waiting up to 30 s. The
/// error says what to do when pcscd or its vpcd readers are missing.
pub(crate) fn take_slot() -> Result<Slot, String> {
    vpcd::try_slot(Duration::from_secs(30))
}

/// The emulated card, a blank one on a fresh state file, in the slot's
/// reader until dropped.
pub(crate) struct Emulator {
    /// Dropped (the thread stopped) before the state directory: fields
    /// drop in order.
    _card: Inserted<FileEeprom>,
    dir: tempfile::TempDir,
}

impl Emulator {
    pub(crate) fn start(slot: &Slot) -> Result<Emulator, String> {
        Self::start_with(slot, Timing::default(), false)
    }

    /// [`Emulator::start`] with a card as slow as `timing` says, taking
    /// short APDUs only if `short_apdus` (`smartcard emulate --baud ...
    /// --short-apdus`).
    pub(crate) fn start_with(
        slot: &Slot,
        timing: Timing,
        short_apdus: bool,
    ) -> Result<Emulator, String> {
        let dir = tempfile::Builder::new()
            .prefix("iodoform-perf-")
            .tempdir()
            .map_err(|e| format!("cannot make a state directory: {e}"))?;
        let state = dir.path().join("card.img");
        let eeprom = FileEeprom::open(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        let applet = Applet::power_on(eeprom).map_err(|e| format!("card state: {e}"))?;
        let mut card = VirtualCard::new(applet).with_timing(timing);
        if short_apdus {
            card = card.with_short_apdus();
        }
        Ok(Emulator {
            _card: vpcd::serve_card_at(slot.port, slot.reader, card),
            dir,
        })
    }

    /// Where the card's state file is (ext4 or tmpfs: it says what an
    /// EEPROM write costs).
    pub(crate) fn state_dir(&self) -> &Path {
        self.dir.path()
    }
}
