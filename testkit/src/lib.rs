//! What the workspace's tests share, written once: the real components
//! they run against, and the rules for when one is missing.
//!
//! - [`env`](mod@env): whether a missing tool fails a test (under `CI=true`) or
//!   skips it with a note (elsewhere).
//! - [`ports`]: free loopback ports for daemons and UDP streams.
//! - [`process`]: a child process that logs to a file and is killed when
//!   dropped, and the workspace's own binaries.
//! - [`headend`]: a `headend` folder made by `headend init`, its daemon,
//!   its CLI and its admin API.
//! - [`ffmpeg`]: clear MPEG-TS made by ffmpeg, and what ffprobe decodes.
//! - [`operator`]: an operator written on `proto` alone, which writes the
//!   EMMs and ECMs a headend would; with the `in-process` feature, cards
//!   of the applet in this process.
//! - [`vpcd`] (feature `pcsc`): the system's pcscd with four vpcd
//!   readers (the stock two and two that `scripts/ensure-pcscd.sh` adds),
//!   the file lock that gives a test a slot of its own
//!   among every test binary, and the applet served into a slot from a
//!   thread.
//! - [`emulator`] (feature `pcsc`): `smartcard emulate` as a child
//!   process in a slot.
//!
//! It is a dev-dependency of the crates it tests (and a dependency of the
//! `perf` report, which takes vpcd slots the same way); no production
//! crate depends on it. Its helpers panic with a message that names the
//! fix rather than return errors, except where `perf` needs a `Result`.
#![forbid(unsafe_code)]

#[cfg(feature = "pcsc")]
pub mod emulator;
pub mod env;
pub mod ffmpeg;
pub mod headend;
pub mod operator;
pub mod ports;
pub mod process;
pub mod ts103197;
#[cfg(feature = "pcsc")]
pub mod vpcd;

#[cfg(feature = "pcsc")]
pub use emulator::Emulator;
pub use headend::Headend;
pub use operator::Operator;
pub use ports::{free_tcp_port, free_udp_addr, free_udp_port};
pub use process::{workspace_bin, Process};
#[cfg(feature = "pcsc")]
pub use vpcd::Slot;
