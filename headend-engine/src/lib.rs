//! The Iodoform headend's engines, as a library with no I/O: what turns
//! the operator's keys, cards, products and entitlements into EMMs and
//! ECMs, and a clear MPEG-TS into the scrambled one.
//!
//! * [`operator`]: the operator's X25519 and Ed25519 keys and their public
//!   half for provisioning.
//! * [`engine`]: the [`KeyEngine`] (cards, products and their period
//!   keys, entitlements, EMM sequence numbers), with the EMM-U hot path,
//!   EMM-Gs and sealed ECMs.
//! * [`schedule`]: crypto periods and control words: one
//!   [`ControlWordSchedule`] over a [`CwStore`] ([`MemoryCws`] here).
//! * [`stream`]: the multiplexer ([`stream::Mux`]) and what it asks of
//!   the CA side ([`stream::CaFeed`]), one channel's stream config and
//!   its checks, the air clock, the health of each service, and the
//!   `scramble` figure of the `perf` report.
//! * [`error`]: the typed errors of the key engine and the schedule.
//!
//! Where its responsibility ends: it opens no file or socket, reads no
//! clock (callers pass Unix seconds and the TS brings its own PCR time),
//! spawns no thread and keeps nothing on disk. Control words live in
//! whatever [`CwStore`] it is given; TS comes in and goes out as buffers
//! of packets. The key engine logs nothing; the multiplexer reports what
//! it withholds through `tracing`. Reading and writing streams (UDP,
//! files), the channel threads, the SQLite store, the admin API and the
//! daemon are the `headend` crate's. Secrets stay inside `proto::secret`
//! types, whose `Debug` prints `REDACTED`; nothing here formats key bytes.
#![forbid(unsafe_code)]

mod cards;
pub mod engine;
pub mod error;
pub mod operator;
pub mod schedule;
pub mod stream;

pub use engine::{Entitlement, KeyEngine, PreparedCard, MAX_ENTITLEMENTS_PER_CARD};
pub use error::{EngineError, ScheduleError};
pub use operator::{OperatorKeys, OperatorPublic};
pub use schedule::{ControlWordSchedule, CwStore, MemoryCws, DEFAULT_PERIOD_SECS};
