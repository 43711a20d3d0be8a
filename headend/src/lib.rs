//! The Iodoform headend, as a library: the daemon around the engine crate
//! (`headend_engine`).
//!
//! The engines themselves (the key engine, the control-word schedule and
//! the stream multiplexer) are [`headend_engine`]'s and do no I/O. This
//! crate owns persistence, time and I/O: the control words kept in the
//! database (a [`CwStore`](headend_engine::CwStore)), the channel streams
//! read and written ([`stream`]), and the daemon ([`state`], [`store`],
//! [`server`], [`daemon`], [`supervisor`]). Secrets stay inside
//! `proto::secret` types, whose `Debug` prints `REDACTED`; nothing here
//! formats key bytes.
//!
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
//! * [`backup`]: `headend backup` (a consistent copy while the daemon
//!   runs) and `headend restore`.
//! * [`simulcrypt`]: DVB SimulCrypt peers, the EMMG client that feeds the
//!   EMM carousel to third-party MUXes.
//! * [`supervisor`]: the channel streams inside `headend run`, started,
//!   changed and stopped live, and turned off and retried when they fail.
//! * [`simulcrypt`]: DVB SimulCrypt, the ECMG that third-party
//!   scramblers get their ECMs from.
#![forbid(unsafe_code)]

pub mod atrest;
pub mod backup;
pub mod client;
pub mod config;
pub mod daemon;
pub mod init;
pub mod metrics;
pub mod output;
pub mod server;
pub mod simulcrypt;
pub mod state;
pub mod store;
pub mod stream;
pub mod supervisor;

pub use output::{CaOutput, EcmOutput, EmmOutput};
