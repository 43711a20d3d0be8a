//! `smartcard emulate` as a child process in a vpcd slot, on a state file
//! of the test's own: the card as a subscriber's receiver meets it, which
//! the test can pull out (SIGKILL), stop cleanly (SIGTERM) and start
//! again on the same state.

use crate::process::Process;
use crate::vpcd::{wait_reader, Slot, SETTLE};
use cardlink::pcsc::{PcscTransport, ReaderChoice};
use cardlink::CardClient;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// A client on a card behind pcscd.
pub type PcscCard = CardClient<PcscTransport>;

/// How fast the emulated card is and which APDUs it takes: the
/// `smartcard emulate` options of the same names. The default is the
/// instant card with extended length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CardModel {
    /// `--apdu-delay-ms`.
    pub apdu_delay_ms: Option<u64>,
    /// `--baud`.
    pub baud: Option<u32>,
    /// `--processing-ms`.
    pub processing_ms: Option<u64>,
    /// `--short-apdus`.
    pub short_apdus: bool,
}

impl CardModel {
    /// A T=0 card at `baud` with the default processing time, short APDUs.
    pub fn t0(baud: u32) -> Self {
        CardModel {
            baud: Some(baud),
            short_apdus: true,
            ..Self::default()
        }
    }

    /// A fixed `ms` per APDU, short APDUs.
    pub fn fixed(ms: u64) -> Self {
        CardModel {
            apdu_delay_ms: Some(ms),
            short_apdus: true,
            ..Self::default()
        }
    }

    /// The options for `smartcard emulate`.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(ms) = self.apdu_delay_ms {
            a.extend(["--apdu-delay-ms".to_string(), ms.to_string()]);
        }
        if let Some(b) = self.baud {
            a.extend(["--baud".to_string(), b.to_string()]);
        }
        if let Some(ms) = self.processing_ms {
            a.extend(["--processing-ms".to_string(), ms.to_string()]);
        }
        if self.short_apdus {
            a.push("--short-apdus".to_string());
        }
        a
    }
}

/// `smartcard emulate` in a slot; killed when dropped.
#[derive(Debug)]
pub struct Emulator {
    program: PathBuf,
    proc: Option<Process>,
    /// The card's state file.
    pub state: PathBuf,
    pub reader: &'static str,
    /// vpcd's address for the slot.
    pub addr: String,
    /// Its speed and APDU lengths.
    pub model: CardModel,
    log: PathBuf,
}

impl Emulator {
    /// Starts `program` (the `smartcard` binary:
    /// `env!("CARGO_BIN_EXE_smartcard")` in its own crate's tests,
    /// [`workspace_bin`](crate::workspace_bin) elsewhere) on `state` in
    /// `slot`, logging to `state` with the extension `log`, and waits
    /// until pcscd sees the card.
    pub fn start(program: impl AsRef<Path>, slot: &Slot, state: &Path) -> Emulator {
        Self::start_with(program, slot, state, CardModel::default())
    }

    /// [`Emulator::start`] with a card of the given speed and APDU
    /// lengths (kept across [`Emulator::restart`]).
    pub fn start_with(
        program: impl AsRef<Path>,
        slot: &Slot,
        state: &Path,
        model: CardModel,
    ) -> Emulator {
        let mut e = Emulator {
            program: program.as_ref().to_path_buf(),
            proc: None,
            state: state.to_path_buf(),
            reader: slot.reader,
            addr: slot.addr(),
            model,
            log: state.with_extension("log"),
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let mut proc = Process::spawn(
            Command::new(&self.program)
                .args(["emulate", "--state"])
                .arg(&self.state)
                .args(["--vpcd", &self.addr])
                .args(self.model.args())
                .env("RUST_LOG", "info"),
            &self.log,
        );
        if !wait_reader(self.reader, true, SETTLE) {
            proc.kill();
            panic!(
                "pcscd did not see the emulated card in {}:\n{}",
                self.reader,
                self.log()
            );
        }
        self.proc = Some(proc);
    }

    /// The emulator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        crate::process::tail(&self.log, n)
    }

    /// Its process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().and_then(Process::pid).unwrap_or(0)
    }

    /// Whether the process still runs.
    pub fn is_alive(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Process::is_running)
    }

    /// Waits for the reader to be empty after the process is gone, so that
    /// the next card in the slot is seen as a new insertion.
    fn reaped(&self) {
        if !wait_reader(self.reader, false, SETTLE) {
            eprintln!("warning: {} still shows a card", self.reader);
        }
    }

    /// SIGKILL: the card is pulled out with no warning.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
            self.reaped();
        }
    }

    /// SIGTERM, and the exit status (it must exit within 10 s).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut p = self.proc.take().expect("the emulator is running");
        let Some(status) = p.terminate(Duration::from_secs(10)) else {
            panic!("the emulator ignored SIGTERM:\n{}", self.log());
        };
        self.reaped();
        status
    }

    /// Starts the process again on the same state file.
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "stop the emulator first");
        self.spawn();
    }

    /// A client on this emulator's card (not yet selected).
    pub fn connect(&self) -> PcscCard {
        CardClient::new(self.transport())
    }

    /// A PC/SC connection to this emulator's card.
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
