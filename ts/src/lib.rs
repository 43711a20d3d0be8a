//! MPEG-TS building blocks for Iodoform's broadcast stream: zero-copy
//! packet views and a resynchronizing reader ([`packet`]), PSI and CA
//! sections with their re-emission ([`psi`]), the PCR time base both
//! ends share ([`clock`]), DVB-CISSA scrambling ([`cissa`]) and the
//! throughput benchmarks that the `perf` report prints
//! ([`bench`](mod@bench)).
//!
//! It does no I/O and keeps no global state; the headend and the receiver
//! own sockets and files. Every parser takes untrusted bytes and returns a
//! typed error, never panics. The per-packet paths allocate nothing.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cissa;
pub mod clock;
pub mod demux;
pub mod packet;
pub mod psi;

pub use cissa::{Descrambler, Outcome, Scrambler};
pub use packet::{Packet, PacketMut, PacketReader, Parity, ScramblingControl, PACKET_LEN};
