//! The Iodoform receiver, as a library: what a set-top box does between
//! the broadcast and the screen.
//!
//! * [`identity`]: the receiver's long-term X25519 key (0600 file).
//! * [`card`]: [`CardLink`], the protected link to the card over PC/SC
//!   (or any `cardlink` transport a test brings), which survives removal,
//!   resets and pcscd restarts.
//! * [`pipeline`]: [`Pipeline`], scrambled TS in, clear TS out: the
//!   service found through the PAT, PMT and CAT; EMMs filtered by address
//!   before they reach the card; new ECMs to the card; both CW slots; PSI
//!   rewritten without CA signalling. It talks to the card through the
//!   [`CaModule`] trait, which [`CardLink`] implements.
//! * [`keys`]: the CW slots and which crypto period each key belongs to.
//! * [`io`], [`run`](mod@run): files, pipes and UDP; one whole run with its report.
//! * [`stats`], [`error`]: counters, the status line, and why a run ended
//!   (one line, one exit code each).
//! * [`bench`](mod@bench): the zap time, for the `perf` report.
//!
//! Control words exist in clear only inside this process, in
//! [`proto::card::ControlWords`] and the descrambler's key slots, whose
//! `Debug` is redacted. Nothing here logs one, nor the receiver's private
//! key.
#![forbid(unsafe_code)]

pub mod bench;
pub mod card;
pub mod error;
pub mod identity;
pub mod io;
pub mod keys;
pub mod pipeline;
pub mod run;
pub mod stats;

pub use card::{CardConnector, CardLink, LinkError, LinkOptions, PcscCard};
pub use error::{exit, Failure};
pub use pipeline::{CaModule, PacketSink, Pipeline, PipelineOptions};
pub use run::{run, Report, RunConfig};
pub use stats::Stats;
