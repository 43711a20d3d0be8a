//! Cards behind the system's real pcscd, through four vpcd slots: the
//! two stock ones and the two that `scripts/ensure-pcscd.sh` adds.
//!
//! Tests run in parallel within a binary, and test binaries (and `perf`)
//! may run at the same time, so a test takes a slot with a file lock
//! (`<tmp>/iodoform-vpcd-<port>.lock`) and holds it until its card has
//! gone; every user of vpcd in the workspace takes it here. A test that
//! disturbs pcscd itself takes every slot, always in port order, so that
//! no two takers deadlock.
//!
//! Without pcscd (or without its vpcd readers), [`pcscd_or_skip`] fails
//! the test under `CI=true` and skips it, with a note, otherwise;
//! `scripts/ensure-pcscd.sh` installs and starts it.
//!
//! A card gets into a slot in one of two ways: `smartcard emulate` as a
//! child process ([`Emulator`](crate::Emulator)), or the applet served from
//! a thread of the test ([`insert`]), for a test that wants to hold the
//! applet itself.

use card::{Applet, Eeprom, MemEeprom};
use cardlink::pcsc::list_readers;
use cardlink::TransportError;
use fs2::FileExt;
use smartcard::vpcd::{self, StopHandle};
/// The virtual card and its timing model, for callers that set one up.
pub use smartcard::vpcd::{Timing, VirtualCard};
use std::fs::File;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The vpcd slots, port and reader name: Debian's stock two, and the two
/// that `scripts/ensure-pcscd.sh` adds.
pub const SLOTS: [(u16, &str); 4] = [
    (35963, "Virtual PCD 00 00"),
    (35964, "Virtual PCD 00 01"),
    (35965, "Iodoform VPCD 00 00"),
    (35966, "Iodoform VPCD 00 01"),
];

/// How long pcscd gets to notice a card coming or going (it polls vpcd
/// every 400 ms).
pub const SETTLE: Duration = Duration::from_secs(10);

/// Why pcscd with every vpcd reader cannot be used, or `None` when it
/// can.
pub fn missing() -> Option<String> {
    match list_readers() {
        Ok(r) => {
            let absent: Vec<&str> = SLOTS
                .iter()
                .map(|(_, n)| *n)
                .filter(|n| !r.iter().any(|x| x.name == *n))
                .collect();
            (!absent.is_empty())
                .then(|| format!("pcscd has no reader {absent:?}; run scripts/ensure-pcscd.sh"))
        }
        Err(e) => Some(format!(
            "pcscd with vpcd is not available ({e}); run scripts/ensure-pcscd.sh"
        )),
    }
}

/// Whether pcscd answers with every vpcd reader; if not, the test fails
/// under `CI=true` and is skipped otherwise (see [`env`](mod@crate::env)). Under
/// `CI=true` it first gives a sibling test that restarts pcscd (holding
/// every slot meanwhile) 15 s to bring it back.
pub fn pcscd_or_skip(test: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(if crate::env::ci() { 15 } else { 0 });
    loop {
        let Some(why) = missing() else {
            return true;
        };
        if Instant::now() >= deadline {
            return crate::env::unavailable(test, &why);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether `reader` holds a card (`false` when pcscd does not answer).
pub fn card_in(reader: &str) -> bool {
    list_readers()
        .map(|r| r.iter().any(|x| x.name == reader && x.card_present))
        .unwrap_or(false)
}

/// Waits until `reader` holds a card (`present`) or is empty; whether that
/// happened within `timeout`.
pub fn wait_reader(reader: &str, present: bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if card_in(reader) == present {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A vpcd slot held by this test (its lock is released when dropped).
#[derive(Debug)]
pub struct Slot {
    pub port: u16,
    pub reader: &'static str,
    _lock: File,
}

impl Slot {
    /// vpcd's address for this slot, for `smartcard emulate --vpcd`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn lock_file(port: u16) -> Result<File, String> {
    let p = std::env::temp_dir().join(format!("iodoform-vpcd-{port}.lock"));
    File::create(&p).map_err(|e| format!("cannot create the slot lock {}: {e}", p.display()))
}

fn claimed(port: u16, reader: &'static str, lock: File) -> Slot {
    assert!(
        wait_reader(reader, false, SETTLE),
        "a card is already in {reader}: is another `smartcard emulate` on port {port}?"
    );
    Slot {
        port,
        reader,
        _lock: lock,
    }
}

/// Takes the first free slot, waiting as long as it takes, and waits for
/// its reader to be empty.
pub fn slot() -> Slot {
    loop {
        for (port, reader) in SLOTS {
            let f = lock_file(port).unwrap_or_else(|e| panic!("{e}"));
            if f.try_lock_exclusive().is_ok() {
                return claimed(port, reader, f);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Takes `n` free slots at once, waiting as long as it takes, for a test
/// with several cards. It holds none while it waits, so two such tests
/// never deadlock.
pub fn slots(n: usize) -> Vec<Slot> {
    assert!(
        n <= SLOTS.len(),
        "there are only {} vpcd slots",
        SLOTS.len()
    );
    loop {
        let mut free = Vec::new();
        for (port, reader) in SLOTS {
            if free.len() == n {
                break;
            }
            let f = lock_file(port).unwrap_or_else(|e| panic!("{e}"));
            if f.try_lock_exclusive().is_ok() {
                free.push((port, reader, f));
            }
        }
        if free.len() == n {
            return free
                .into_iter()
                .map(|(port, reader, f)| claimed(port, reader, f))
                .collect();
        }
        drop(free);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Takes every slot, in port order, for a test that disturbs pcscd
/// itself.
pub fn all_slots() -> Vec<Slot> {
    SLOTS
        .iter()
        .map(|&(port, reader)| {
            let f = lock_file(port).unwrap_or_else(|e| panic!("{e}"));
            f.lock_exclusive().expect("the slot lock");
            claimed(port, reader, f)
        })
        .collect()
}

/// Takes a free slot whose reader pcscd shows empty, waiting up to
/// `wait`; for a program rather than a test (`perf`): the error says
/// what to do when pcscd or its vpcd readers are missing.
pub fn try_slot(wait: Duration) -> Result<Slot, String> {
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
    let deadline = Instant::now() + wait;
    loop {
        for &(port, reader) in &present {
            let f = lock_file(port)?;
            if f.try_lock_exclusive().is_ok() && !card_in(reader) {
                return Ok(Slot {
                    port,
                    reader,
                    _lock: f,
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "every vpcd slot stayed busy for {} s (are tests running?)",
                wait.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The applet in a vpcd slot, served from a thread of this process (the
/// code behind `smartcard emulate`). Dropping it stops the thread; the
/// next holder of the slot waits for the reader to be empty.
#[derive(Debug)]
pub struct Inserted<E: Eeprom + Send + 'static> {
    reader: &'static str,
    stop: StopHandle,
    thread: Option<JoinHandle<Applet<E>>>,
}

/// Serves `applet` in the slot at `port` from a thread, without waiting
/// for pcscd to see it.
pub fn serve_at<E: Eeprom + Send + 'static>(
    port: u16,
    reader: &'static str,
    applet: Applet<E>,
) -> Inserted<E> {
    serve_card_at(port, reader, VirtualCard::new(applet))
}

/// [`serve_at`] for a virtual card already set up (a timing model,
/// short APDUs only).
pub fn serve_card_at<E: Eeprom + Send + 'static>(
    port: u16,
    reader: &'static str,
    card: VirtualCard<E>,
) -> Inserted<E> {
    let stop = StopHandle::new();
    let config = vpcd::Config {
        addr: format!("127.0.0.1:{port}"),
        ..vpcd::Config::default()
    };
    let on_thread = stop.clone();
    let thread = std::thread::Builder::new()
        .name("vpcd-card".into())
        .spawn(move || {
            let mut card = card;
            vpcd::run(&mut card, &config, &on_thread);
            card.into_applet()
        })
        .expect("start the virtual card's thread");
    Inserted {
        reader,
        stop,
        thread: Some(thread),
    }
}

/// [`serve_at`] in `slot`, without waiting for pcscd to see the card.
pub fn serve<E: Eeprom + Send + 'static>(slot: &Slot, applet: Applet<E>) -> Inserted<E> {
    serve_at(slot.port, slot.reader, applet)
}

/// Puts `applet` in `slot` and waits until pcscd sees it.
pub fn insert<E: Eeprom + Send + 'static>(slot: &Slot, applet: Applet<E>) -> Inserted<E> {
    insert_at(slot.port, slot.reader, applet)
}

/// [`insert`] by port and reader name, for a thread that does not hold
/// the [`Slot`].
pub fn insert_at<E: Eeprom + Send + 'static>(
    port: u16,
    reader: &'static str,
    applet: Applet<E>,
) -> Inserted<E> {
    let card = serve_at(port, reader, applet);
    assert!(
        wait_reader(reader, true, SETTLE),
        "pcscd did not see the card inserted in {reader}"
    );
    card
}

impl<E: Eeprom + Send + 'static> Inserted<E> {
    /// Pulls the card out: stops serving it, waits until pcscd shows the
    /// reader empty, and gives the applet back as it was left.
    pub fn pull_out(mut self) -> Applet<E> {
        self.stop.stop();
        let applet = self
            .thread
            .take()
            .expect("the card's thread")
            .join()
            .expect("the virtual card's thread panicked");
        assert!(
            wait_reader(self.reader, false, SETTLE),
            "{} still shows a card after it was pulled out",
            self.reader
        );
        applet
    }
}

impl<E: Eeprom + Send + 'static> Drop for Inserted<E> {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A slot held and a card in it, for a test of a program that looks for
/// a card in a named reader; pulled out when dropped.
#[derive(Debug)]
pub struct CardInReader<E: Eeprom + Send + 'static = MemEeprom> {
    slot: Slot,
    card: Option<Inserted<E>>,
}

impl<E: Eeprom + Send + 'static> CardInReader<E> {
    /// Takes a slot and inserts the card; `None` (after a note) when
    /// pcscd with vpcd is not there outside CI.
    pub fn insert(test: &str, applet: Applet<E>) -> Option<Self> {
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
    pub fn with_applet(&mut self, f: impl FnOnce(Applet<E>) -> Applet<E>) {
        let card = self.card.take().expect("the card is in");
        let applet = f(card.pull_out());
        self.card = Some(insert(&self.slot, applet));
    }
}

/// Whether a test may stop and restart the system's pcscd: under
/// `CI=true` or with `IODOFORM_TEST_PCSCD_RESTART=1`; otherwise it prints
/// why `test` is skipped.
pub fn restart_allowed(test: &str) -> bool {
    let wanted =
        crate::env::ci() || std::env::var("IODOFORM_TEST_PCSCD_RESTART").is_ok_and(|v| v == "1");
    if !wanted {
        eprintln!(
            "SKIPPED {test}: set CI=true or IODOFORM_TEST_PCSCD_RESTART=1 to let it restart pcscd"
        );
    }
    wanted
}

/// Stops the system's pcscd with SIGTERM, as an administrator would, and
/// waits for it to exit. Hold [`all_slots`] meanwhile.
pub fn stop_pcscd() -> Result<(), String> {
    let pid: String = std::fs::read_to_string("/run/pcscd/pcscd.pid")
        .map_err(|e| format!("pcscd pid file: {e}"))?
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .map_err(|e| e.to_string())?;
    if !killed.success() {
        return Err(format!("cannot stop pcscd {pid}"));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() >= deadline {
            return Err(format!("pcscd {pid} did not stop"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Starts pcscd again with scripts/ensure-pcscd.sh, which waits for its
/// vpcd readers.
pub fn start_pcscd() -> Result<(), String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/ensure-pcscd.sh");
    let out = Command::new("bash")
        .arg(script)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "ensure-pcscd.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
