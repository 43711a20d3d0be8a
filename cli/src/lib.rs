//! What the three Iodoform command-line tools (`headend`, `smartcard`,
//! `receiver`) share, so that they behave alike from a shell:
//!
//! * [`exit`]: one exit-code table (sysexits.h for the generic causes, 3 to
//!   7 for the receiver's broadcast-specific ones), printed by every
//!   `--help` through [`EXIT_CODES_HELP`] and in the README;
//! * [`outln!`](crate::outln) and [`out`]: standard output that ends the
//!   process quietly with [`exit::CLOSED_PIPE`] when the reader has gone
//!   (`headend status --json | head -c1`), instead of the panic that
//!   `println!` gives;
//! * [`parse`]: clap's parser, with a bad command line exiting
//!   [`exit::USAGE`] (64) rather than clap's own 2.
//!
//! It must stay small and free of I/O beyond stdout and stderr: it is
//! linked into every tool, the production receiver included.
#![forbid(unsafe_code)]

use std::fmt::Arguments;
use std::io::{ErrorKind, Write};

/// Exit codes of every Iodoform tool.
pub mod exit {
    /// Success. For the receiver also: the input ended, the output was
    /// closed by its reader, or a signal stopped it.
    pub const OK: u8 = 0;
    /// A failure while running that no code below describes.
    pub const FAILURE: u8 = 1;
    /// The card refused the service's ECMs: no entitlement, outside its
    /// dates, or the product's current key has not reached the card.
    pub const NOT_ENTITLED: u8 = 3;
    /// No reader, no card in time, or a card that cannot be used.
    pub const NO_CARD: u8 = 4;
    /// The card is paired with another receiver, and stayed so for the
    /// whole wait.
    pub const PAIRED_ELSEWHERE: u8 = 5;
    /// The service is not in the stream, or not scrambled by Iodoform.
    pub const UNKNOWN_SERVICE: u8 = 6;
    /// The input is not an MPEG transport stream.
    pub const NOT_TS: u8 = 7;
    /// A bad command line or argument value (EX_USAGE).
    pub const USAGE: u8 = 64;
    /// Input data was refused: a request the headend found invalid, a
    /// malformed file (EX_DATAERR).
    pub const DATA: u8 = 65;
    /// A file that is needed is missing or unreadable (EX_NOINPUT).
    pub const NO_INPUT: u8 = 66;
    /// Something to talk to is not there: the headend daemon, pcscd
    /// (EX_UNAVAILABLE).
    pub const UNAVAILABLE: u8 = 69;
    /// An internal error: a bug to report (EX_SOFTWARE).
    pub const SOFTWARE: u8 = 70;
    /// A file or folder cannot be created (EX_CANTCREAT).
    pub const CANT_CREATE: u8 = 73;
    /// Reading the input or writing the output failed (EX_IOERR).
    pub const IO: u8 = 74;
    /// A temporary failure; trying again later may work (EX_TEMPFAIL).
    pub const TEMP_FAIL: u8 = 75;
    /// Permission denied: a token refused, a key file others can read
    /// (EX_NOPERM).
    pub const NO_PERMISSION: u8 = 77;
    /// A second SIGINT or SIGTERM cut a clean stop short (128 + 2).
    pub const INTERRUPTED: u8 = 130;
    /// Standard output was closed by its reader (128 + SIGPIPE), as a
    /// shell reports a tool that SIGPIPE ended.
    pub const CLOSED_PIPE: u8 = 141;
}

/// The exit-code table as every `--help` prints it (clap `after_help`).
pub const EXIT_CODES_HELP: &str = "\
Exit codes (the same for headend, smartcard and receiver):
    0  success (receiver: the input ended, the output was closed, or a signal stopped it)
    1  a failure while running that no code below describes
    3  receiver: the card refused the service's ECMs (no entitlement, dates, key)
    4  no reader, no card in time, or a card that cannot be used
    5  receiver: the card stayed paired with another receiver for the whole wait
    6  receiver: the service is not in the stream, or not scrambled by Iodoform
    7  receiver: the input is not an MPEG transport stream
   64  bad command line or argument value
   65  input data refused (a request the headend found invalid, a malformed file)
   66  a needed file is missing or unreadable
   69  the headend daemon or pcscd is not reachable
   70  internal error (a bug: please report it)
   73  a file or folder cannot be created
   74  reading the input or writing the output failed
   75  temporary failure (the database is in use by another headend); try again
   77  permission denied (token refused, key file readable by others)
  130  a second SIGINT or SIGTERM cut a clean stop short
  141  standard output was closed by its reader (e.g. `| head`)";

/// Writes `s` to standard output. If the reader has gone (a closed pipe)
/// the process exits at once, quietly, with [`exit::CLOSED_PIPE`]; any
/// other write error exits with [`exit::IO`] after a one-line message.
pub fn out(s: &str) {
    write_out(|o| o.write_all(s.as_bytes()));
}

/// [`out`] for formatted text with a newline; see [`outln!`](crate::outln).
pub fn out_line(args: Arguments<'_>) {
    write_out(|o| o.write_fmt(args).and_then(|()| o.write_all(b"\n")));
}

/// Runs `write` on the locked standard output and flushes it; a failure
/// ends the process (see [`out`]).
fn write_out(write: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = write(&mut o).and_then(|()| o.flush()) {
        closed_or_failed(&e);
    }
}

fn closed_or_failed(e: &std::io::Error) -> ! {
    if e.kind() == ErrorKind::BrokenPipe {
        std::process::exit(i32::from(exit::CLOSED_PIPE));
    }
    let _ = writeln!(std::io::stderr(), "cannot write to standard output: {e}");
    std::process::exit(i32::from(exit::IO));
}

/// `println!` for the tools' standard output: a closed pipe ends the
/// process quietly with exit code 141 instead of panicking.
#[macro_export]
macro_rules! outln {
    () => { $crate::out("\n") };
    ($($arg:tt)*) => { $crate::out_line(::std::format_args!($($arg)*)) };
}

/// Parses the command line. `--help` and `--version` print and exit 0 (or
/// 141 if their reader has gone); a bad command line prints clap's
/// message and exits [`exit::USAGE`].
pub fn parse<P: clap::Parser>() -> P {
    match P::try_parse() {
        Ok(p) => p,
        Err(e) => {
            let code = if e.use_stderr() {
                let _ = e.print();
                exit::USAGE
            } else {
                // Help and version go to stdout, which may be a closed pipe.
                out(&e.render().to_string());
                exit::OK
            };
            std::process::exit(i32::from(code));
        }
    }
}

/// Tells a first stop signal (stop cleanly) from a second one (stop at
/// once, [`exit::INTERRUPTED`]), for the tools' SIGINT/SIGTERM handlers.
///
/// Signals within [`Signals::SAME_WITHIN`] of the first count as the same
/// one: `timeout(1)` signals the tool and then its whole process group, and
/// a service manager may signal a process and its group too, so one
/// request to stop often arrives twice at once. A person pressing Ctrl-C
/// again, or a supervisor escalating, comes later than that.
#[derive(Debug, Default)]
pub struct Signals {
    first: std::sync::OnceLock<std::time::Instant>,
}

impl Signals {
    /// How close together two signals are one request.
    pub const SAME_WITHIN: std::time::Duration = std::time::Duration::from_millis(250);

    pub fn new() -> Self {
        Self::default()
    }

    /// Records a signal; true if it is a second request to stop.
    pub fn second(&self) -> bool {
        let now = std::time::Instant::now();
        let first = *self.first.get_or_init(|| now);
        now.duration_since(first) > Self::SAME_WITHIN
    }
}

/// For the tools' tests: run a tool whose standard output is a pipe that
/// its reader has already closed.
#[cfg(feature = "testing")]
pub mod testing {
    use std::process::{Command, Output};

    /// Runs `cmd` as `{ sleep 0.3; exec cmd; } | true`: `true` has long
    /// exited when the tool first writes, so the write meets a closed
    /// pipe every time, not just when a race is lost. The status is the
    /// tool's own (bash's `PIPESTATUS[0]`); stderr is the tool's.
    pub fn into_closed_pipe(cmd: &Command) -> Output {
        let mut sh = Command::new("bash");
        sh.arg("-c")
            .arg(r#"{ sleep 0.3; exec "$0" "$@"; } | true; exit "${PIPESTATUS[0]}""#)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            sh.current_dir(d);
        }
        sh.output().expect("bash runs")
    }

    /// Asserts that `out` is a quiet end on a closed pipe: exit 141, no
    /// panic, nothing on stderr.
    pub fn assert_quiet_closed_pipe(what: &str, out: &Output) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{what}: panicked: {err}");
        assert_eq!(
            out.status.code(),
            Some(i32::from(crate::exit::CLOSED_PIPE)),
            "{what}: {err}"
        );
        assert!(err.trim().is_empty(), "{what}: said {err:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_repeated_at_once_is_one_request() {
        let s = Signals::new();
        assert!(!s.second());
        assert!(!s.second(), "the same request, delivered twice");
        std::thread::sleep(Signals::SAME_WITHIN + std::time::Duration::from_millis(50));
        assert!(s.second());
    }

    #[test]
    fn the_help_table_lists_every_code_once() {
        let codes = [
            exit::OK,
            exit::FAILURE,
            exit::NOT_ENTITLED,
            exit::NO_CARD,
            exit::PAIRED_ELSEWHERE,
            exit::UNKNOWN_SERVICE,
            exit::NOT_TS,
            exit::USAGE,
            exit::DATA,
            exit::NO_INPUT,
            exit::UNAVAILABLE,
            exit::SOFTWARE,
            exit::CANT_CREATE,
            exit::IO,
            exit::TEMP_FAIL,
            exit::NO_PERMISSION,
            exit::INTERRUPTED,
            exit::CLOSED_PIPE,
        ];
        let listed: Vec<u8> = EXIT_CODES_HELP
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(listed, codes);
    }
}
