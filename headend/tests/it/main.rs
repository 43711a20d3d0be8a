//! The headend's integration tests, in one binary.
//!
//! - The daemon and its CLI as an operator runs them (`api`, `cli`,
//!   `channels`, `expiry`, `crash`, `renewal_crash`, `metrics`, `restore`,
//!   `clock`, `ecmg`: the SimulCrypt ECMG and an SCS written from the
//!   standard), each on
//!   a real `headend` process with its folder in a temporary directory (see `common`).
//! - The stream engine on real TS from ffmpeg and on synthetic TS
//!   (`stream_engine`, `stream_psi`, `stream_garbage`, `stream_mpts`), over UDP
//!   (`stream_udp`, `stream_fail_closed`) and inside the daemon
//!   (`stream_daemon`); what they share is in `stream_support`.

mod api;
mod channels;
mod cli;
mod clock;
mod common;
mod crash;
mod ecmg;
mod expiry;
mod metrics;
mod renewal_crash;
mod restore;
mod stream_daemon;
mod stream_engine;
mod stream_fail_closed;
mod stream_garbage;
mod stream_mpts;
mod stream_psi;
mod stream_support;
mod stream_udp;
