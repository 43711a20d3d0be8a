//! A virtual card behind the system's real pcscd, for the figures that go
//! through PC/SC (`ecm_cw_pcsc`, `zap`): the card applet served by the
//! library behind `smartcard emulate` (`vpcd::run`, TCP_NODELAY and
//! TCP_QUICKACK) on a thread of the perf process, so that no separately
//! built binary is needed.
//!
//! A vpcd slot is taken the way the smartcard and receiver tests do (a
//! file lock, `/tmp/iodoform-vpcd-<port>.lock`, and an empty reader), so
//! that a figure never meets a test's card.

use card::eeprom::FileEeprom;
use card::Applet;
use cardlink::pcsc::list_readers;
use cardlink::TransportError;
use fs2::FileExt;
use smartcard::vpcd::{self, StopHandle, VirtualCard};
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

/// Debian's stock vpcd slots: port and reader name.
const SLOTS: [(u16, &str); 2] = [(35963, "Virtual PCD 00 00"), (35964, "Virtual PCD 00 01")];

/// A vpcd slot held for the run.
pub(crate) struct Slot {
    pub(crate) port: u16,
    pub(crate) reader: &'static str,
    _lock: File,
}

fn card_in(reader: &str) -> Result<bool, String> {
    Ok(list_readers()
        .map_err(|e| e.to_string())?
        .iter()
        .any(|r| r.name == reader && r.card_present))
}

/// Takes a free vpcd slot whose reader is empty, waiting up to 30 s. The
/// error says what to do when pcscd or its vpcd readers are missing.
pub(crate) fn take_slot() -> Result<Slot, String> {
    let readers = match list_readers() {
        Ok(r) => r,
        Err(TransportError::NoService(e)) => {
            return Err(format!(
                "pcscd is not running ({e}); start it with scripts/ensure-pcscd.sh"
            ))
        }
        Err(e) => return Err(format!("cannot list the PC/SC readers: {e}")),
    };
    let present: Vec<(u16, &'static str)> = SLOTS
        .into_iter()
        .filter(|(_, name)| readers.iter().any(|r| r.name == *name))
        .collect();
    if present.is_empty() {
        return Err(
            "pcscd has no vpcd reader (\"Virtual PCD 00 00\"); run scripts/ensure-pcscd.sh".into(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for &(port, reader) in &present {
            let path = std::env::temp_dir().join(format!("iodoform-vpcd-{port}.lock"));
            let f = File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if f.try_lock_exclusive().is_ok() && !card_in(reader)? {
                return Ok(Slot {
                    port,
                    reader,
                    _lock: f,
                });
            }
        }
        if Instant::now() >= deadline {
            return Err("every vpcd slot stayed busy for 30 s (are tests running?)".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The emulated card, a blank one on a fresh state file, in the slot's
/// reader until dropped.
pub(crate) struct Emulator {
    stop: StopHandle,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Dropped (removed) after the thread has stopped: fields drop after
    /// `Drop::drop`.
    dir: tempfile::TempDir,
}

impl Emulator {
    pub(crate) fn start(slot: &Slot) -> Result<Emulator, String> {
        let dir = tempfile::Builder::new()
            .prefix("iodoform-perf-")
            .tempdir()
            .map_err(|e| format!("cannot make a state directory: {e}"))?;
        let state = dir.path().join("card.img");
        let eeprom = FileEeprom::open(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        let applet = Applet::power_on(eeprom).map_err(|e| format!("card state: {e}"))?;
        let stop = StopHandle::new();
        let config = vpcd::Config {
            addr: format!("127.0.0.1:{}", slot.port),
            ..vpcd::Config::default()
        };
        let on_thread = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vpcd-card".into())
            .spawn(move || {
                let mut card = VirtualCard::new(applet);
                vpcd::run(&mut card, &config, &on_thread);
            })
            .map_err(|e| format!("cannot start the emulator thread: {e}"))?;
        Ok(Emulator {
            stop,
            thread: Some(thread),
            dir,
        })
    }

    /// Where the card's state file is (ext4 or tmpfs: it says what an
    /// EEPROM write costs).
    pub(crate) fn state_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
