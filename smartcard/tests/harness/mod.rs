//! The real PC/SC stack for tests: the system's pcscd with vpcd, and
//! `smartcard emulate` run as a child process on a state file of the
//! test's own.
//!
//! vpcd has two slots in Debian's stock configuration, and tests run in
//! parallel (and test binaries may too), so a test takes a slot with a
//! file lock first and holds it until its emulator has gone.
//!
//! Without pcscd these tests fail when `CI=true` and are skipped, with a
//! message, otherwise.
#![allow(dead_code)]

use cardlink::pcsc::{list_readers, PcscTransport, ReaderChoice};
use cardlink::CardClient;
use fs2::FileExt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The stock vpcd slots: port and reader name.
pub const SLOTS: [(u16, &str); 2] = [(35963, "Virtual PCD 00 00"), (35964, "Virtual PCD 00 01")];

/// How long pcscd gets to notice a card coming or going (it polls vpcd
/// every 400 ms).
pub const SETTLE: Duration = Duration::from_secs(10);

pub type PcscCard = CardClient<PcscTransport>;

/// Whether pcscd answers with the stock vpcd readers. Under `CI=true` a
/// missing pcscd is a failure; otherwise the test is skipped.
pub fn pcscd_or_skip(test: &str) -> bool {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    // Under CI=true a missing pcscd fails the test, so first give a sibling
    // test that restarts pcscd (it holds every slot meanwhile) time to
    // bring it back.
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(if ci { 15 } else { 0 });
    loop {
        match list_readers() {
            Ok(r) if SLOTS.iter().all(|(_, n)| r.iter().any(|x| x.name == *n)) => return true,
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            _ => break,
        }
    }
    let why = match list_readers() {
        Ok(r) => {
            let missing: Vec<&str> = SLOTS
                .iter()
                .map(|(_, n)| *n)
                .filter(|n| !r.iter().any(|x| x.name == *n))
                .collect();
            if missing.is_empty() {
                return true;
            }
            format!("pcscd has no reader {missing:?}")
        }
        Err(e) => e.to_string(),
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test}: pcscd with vpcd is required under CI=true: {why}. Run scripts/ensure-pcscd.sh"
        );
    }
    eprintln!(
        "SKIPPED {test}: pcscd with vpcd is not available ({why}); run scripts/ensure-pcscd.sh"
    );
    false
}

/// A vpcd slot held by this test.
#[derive(Debug)]
pub struct Slot {
    pub port: u16,
    pub reader: &'static str,
    _lock: File,
}

impl Slot {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn lock_file(port: u16) -> File {
    let p = std::env::temp_dir().join(format!("iodoform-vpcd-{port}.lock"));
    File::create(&p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()))
}

fn claimed(port: u16, reader: &'static str, lock: File) -> Slot {
    let slot = Slot {
        port,
        reader,
        _lock: lock,
    };
    assert!(
        wait_reader(reader, false, SETTLE),
        "a card is already in {reader}: is another `smartcard emulate` on port {port}?"
    );
    slot
}

/// Takes the first free slot, waiting for one.
pub fn slot() -> Slot {
    loop {
        for (port, reader) in SLOTS {
            let f = lock_file(port);
            if f.try_lock_exclusive().is_ok() {
                return claimed(port, reader, f);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Takes every slot, for a test that disturbs pcscd itself.
pub fn all_slots() -> Vec<Slot> {
    SLOTS
        .iter()
        .map(|&(port, reader)| {
            let f = lock_file(port);
            f.lock_exclusive().expect("slot lock");
            claimed(port, reader, f)
        })
        .collect()
}

/// Whether `reader` holds a card.
pub fn card_in(reader: &str) -> bool {
    list_readers()
        .map(|r| r.iter().any(|x| x.name == reader && x.card_present))
        .unwrap_or(false)
}

/// Waits until `reader` holds a card (`present`) or not; returns whether
/// it happened in time.
pub fn wait_reader(reader: &str, present: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if card_in(reader) == present {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `smartcard emulate` as a child process.
#[derive(Debug)]
pub struct Emulator {
    child: Option<Child>,
    pub state: PathBuf,
    pub reader: &'static str,
    pub addr: String,
    log: PathBuf,
}

impl Emulator {
    /// Starts the emulator on `state` in `slot` and waits until pcscd
    /// sees the card.
    pub fn start(slot: &Slot, state: &Path) -> Emulator {
        let mut e = Emulator {
            child: None,
            state: state.to_path_buf(),
            reader: slot.reader,
            addr: slot.addr(),
            log: state.with_extension("log"),
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("emulator log");
        let child = Command::new(env!("CARGO_BIN_EXE_smartcard"))
            .args(["emulate", "--state"])
            .arg(&self.state)
            .args(["--vpcd", &self.addr])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start smartcard emulate");
        self.child = Some(child);
        if !wait_reader(self.reader, true, SETTLE) {
            panic!(
                "pcscd did not see the emulated card in {}:\n{}",
                self.reader,
                self.log()
            );
        }
    }

    /// The emulator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the reader to be empty after the process is gone, so that
    /// the next card in the slot is seen as a new insertion.
    fn reaped(&mut self) {
        if !wait_reader(self.reader, false, SETTLE) {
            eprintln!("warning: {} still shows a card", self.reader);
        }
    }

    /// SIGKILL: the card is pulled out with no warning.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.reaped();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("emulator running");
        let ok = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", c.id())])
            .status()
            .expect("sh")
            .success();
        assert!(ok, "could not signal the emulator");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = c.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("emulator ignored SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.reaped();
        status
    }

    /// Starts the process again on the same state file.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the emulator first");
        self.spawn();
    }

    /// A client on this emulator's card (not yet selected).
    pub fn connect(&self) -> PcscCard {
        CardClient::new(self.transport())
    }

    pub fn transport(&self) -> PcscTransport {
        PcscTransport::wait_for_card(ReaderChoice::Named(self.reader.to_string()), SETTLE)
            .unwrap_or_else(|e| panic!("no card in {}: {e}\n{}", self.reader, self.log()))
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}
