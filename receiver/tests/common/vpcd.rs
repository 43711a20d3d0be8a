//! A card in a reader of the system's real pcscd: the card applet served
//! as a virtual card from a thread of the test (the same code as
//! `smartcard emulate`), in one of vpcd's stock two slots.
//!
//! The slots are shared with the smartcard tests and the whole-system
//! tests, which may run at the same time: a slot is taken with the same
//! file lock they use. Without pcscd, [`pcscd_or_skip`] fails the test
//! under `CI=true` and skips it (with a note) otherwise;
//! scripts/ensure-pcscd.sh starts it.

use card::{Applet, MemEeprom};
use cardlink::pcsc::list_readers;
use fs2::FileExt;
use smartcard::vpcd::{self, StopHandle, VirtualCard};
use std::fs::File;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const SLOTS: [(u16, &str); 2] = [(35963, "Virtual PCD 00 00"), (35964, "Virtual PCD 00 01")];

pub fn pcscd_or_skip(test: &str) -> bool {
    let why = match list_readers() {
        Ok(r) if SLOTS.iter().all(|(_, n)| r.iter().any(|x| x.name == *n)) => return true,
        Ok(r) => format!(
            "pcscd has readers {:?}",
            r.iter().map(|x| &x.name).collect::<Vec<_>>()
        ),
        Err(e) => e.to_string(),
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: pcscd with vpcd is required under CI=true: {why}. Run scripts/ensure-pcscd.sh"
    );
    eprintln!("SKIPPED {test}: pcscd with vpcd is not available ({why})");
    false
}

pub fn card_in(reader: &str) -> bool {
    list_readers()
        .map(|r| r.iter().any(|x| x.name == reader && x.card_present))
        .unwrap_or(false)
}

pub fn wait_reader(reader: &str, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while card_in(reader) != present {
        assert!(
            Instant::now() < deadline,
            "{reader}: card present should be {present}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A vpcd slot, held with the smartcard tests' lock.
pub struct Slot {
    pub port: u16,
    pub reader: &'static str,
    _lock: File,
}

pub fn lock_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("iodoform-vpcd-{port}.lock"))
}

pub fn slot() -> Slot {
    loop {
        for (port, reader) in SLOTS {
            let f = File::create(lock_path(port)).unwrap();
            if f.try_lock_exclusive().is_ok() {
                wait_reader(reader, false);
                return Slot {
                    port,
                    reader,
                    _lock: f,
                };
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every vpcd slot, taken in port order as the smartcard tests'
/// `harness::all_slots` does (the same order everywhere: no deadlock), for
/// a test that disturbs pcscd itself.
pub fn all_slots() -> Vec<Slot> {
    SLOTS
        .iter()
        .map(|&(port, reader)| {
            let f = File::create(lock_path(port)).unwrap();
            f.lock_exclusive().expect("slot lock");
            wait_reader(reader, false);
            Slot {
                port,
                reader,
                _lock: f,
            }
        })
        .collect()
}

/// The card in the slot's reader, served from a thread.
pub struct Inserted {
    stop: StopHandle,
    thread: JoinHandle<Applet<MemEeprom>>,
}

pub fn insert(slot: &Slot, applet: Applet<MemEeprom>) -> Inserted {
    insert_at(slot.port, slot.reader, applet)
}

pub fn insert_at(port: u16, reader: &str, applet: Applet<MemEeprom>) -> Inserted {
    let stop = StopHandle::new();
    let config = vpcd::Config {
        addr: format!("127.0.0.1:{port}"),
        ..vpcd::Config::default()
    };
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut card = VirtualCard::new(applet);
        vpcd::run(&mut card, &config, &s);
        card.into_applet()
    });
    wait_reader(reader, true);
    Inserted { stop, thread }
}

pub fn pull_out(slot: &Slot, card: Inserted) -> Applet<MemEeprom> {
    card.stop.stop();
    let applet = card.thread.join().unwrap();
    wait_reader(slot.reader, false);
    applet
}

/// A card in a reader of pcscd, for a test of the receiver binary: a
/// slot held and the applet inserted; pulled out when dropped.
pub struct CardInReader {
    slot: Slot,
    card: Option<Inserted>,
}

impl CardInReader {
    /// Takes a slot and inserts the card; `None` (after a note) when
    /// pcscd with vpcd is not there outside CI.
    pub fn insert(test: &str, applet: Applet<MemEeprom>) -> Option<Self> {
        let slot = slot();
        if !pcscd_or_skip(test) {
            return None;
        }
        let card = Some(insert(&slot, applet));
        Some(CardInReader { slot, card })
    }

    /// The reader's name, for `--reader`.
    pub fn reader(&self) -> &'static str {
        self.slot.reader
    }

    /// Pulls the card out, lets `f` work on the applet (as an operator's
    /// terminal would) and puts it back.
    pub fn with_applet(&mut self, f: impl FnOnce(Applet<MemEeprom>) -> Applet<MemEeprom>) {
        let card = self.card.take().expect("the card is in");
        let applet = f(pull_out(&self.slot, card));
        self.card = Some(insert(&self.slot, applet));
    }
}

impl Drop for CardInReader {
    fn drop(&mut self) {
        // The next holder of the slot waits for the reader to be empty.
        if let Some(card) = self.card.take() {
            card.stop.stop();
            let _ = card.thread.join();
        }
    }
}
