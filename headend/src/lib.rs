//! The Iodoform headend, as a library: its key engine, and the daemon
//! around it.
//!
//! It holds the operator's keys, the cards and their pairwise KEKs, the
//! products and their period keys, the entitlements, and the sequence
//! numbers that keep every EMM nonce unique. It turns them into sealed
//! EMM-Us, signed EMM-Gs and sealed ECMs, and it schedules the control
//! words of each service's crypto periods.
//!
//! The key engine ([`engine`], [`schedule`], [`operator`]) does no I/O:
//! no files, no sockets, no clock (callers pass Unix seconds in) and no
//! logging; its control words are kept by whatever [`CwStore`] it is
//! given. The stream engine ([`stream`]) reads and writes TS and keeps
//! nothing. The daemon around them ([`state`], [`store`], [`server`],
//! [`daemon`], [`supervisor`]) owns persistence and time. Secrets stay inside `proto::secret` types, whose `Debug` prints
//! `REDACTED`; nothing here formats key bytes.
//!
//! * [`operator`]: the operator's X25519 and Ed25519 keys and their public
//!   half for provisioning.
//! * [`engine`]: the [`KeyEngine`], with the EMM-U hot path.
//! * [`schedule`]: crypto periods and control words: one
//!   [`ControlWordSchedule`] over a [`CwStore`], in memory or in the
//!   database.
//! * [`config`] reads and checks `headend.toml`, and holds the channel
//!   checks.
//! * [`atrest`]: secrets sealed under the master key.
//! * [`store`]: every SQL statement, one module per group of tables, and
//!   the schema.
//! * [`state`]: the daemon's state and operations, crash-safe by the order
//!   in which they write; their errors are typed, in the domain's terms.
//! * [`output`]: [`CaOutput`], the ECM and EMM sections for the stream
//!   engine.
//! * [`server`]: the admin API (its bodies are the `api` crate's types),
//!   the one place where errors become HTTP status codes.
//! * [`daemon`], [`client`], [`init`]: `headend run`, the CLI's API client
//!   and `headend init`.
//! * [`supervisor`]: the channel streams inside `headend run`, started,
//!   changed and stopped live, and turned off and retried when they fail.
#![forbid(unsafe_code)]

pub mod atrest;
mod cards;
pub mod client;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod init;
pub mod metrics;
pub mod operator;
pub mod output;
pub mod schedule;
pub mod server;
pub mod state;
pub mod store;
pub mod stream;
pub mod supervisor;

pub use engine::{Entitlement, KeyEngine, PreparedCard, MAX_ENTITLEMENTS_PER_CARD};
pub use error::{EngineError, ScheduleError};
pub use operator::{OperatorKeys, OperatorPublic};
pub use output::{CaOutput, EcmOutput, EmmOutput};
pub use schedule::{ControlWordSchedule, CwStore, MemoryCws, DEFAULT_PERIOD_SECS};
