//! MPEG-TS building blocks for Iodoform's broadcast stream: zero-copy
//! packet views, their setters and a resynchronizing reader ([`packet`]),
//! PSI and CA sections ([`psi`]), where a decoder can start in a PES
//! stream ([`pes`]: the PES header, the first picture's kind), DVB-CISSA
//! scrambling ([`cissa`]) and the
//! throughput benchmarks that the `perf` report prints
//! ([`bench`](mod@bench)). Both ends of the stream build on the same
//! three pieces here: the PID demultiplexer with per-PID section assembly
//! ([`demux`]), the PSI repeater that re-emits a table with its continuity
//! counter ([`psi::Repeater`]) and the PCR time base ([`clock`]).
//!
//! Its responsibility ends at the packet and the section: it does no I/O
//! and keeps no global state (the headend and the receiver own sockets,
//! files and pacing), it never decides what a PID is for (the caller's
//! role type does), and it knows no key beyond the 16-byte control word.
//! Every parser takes untrusted bytes and returns a typed error, never
//! panics. The per-packet paths allocate nothing.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cissa;
pub mod clock;
pub mod demux;
pub mod packet;
pub mod pes;
pub mod psi;

pub use cissa::{Descrambler, Outcome, Scrambler};
pub use packet::{Packet, PacketMut, PacketReader, Parity, ScramblingControl, PACKET_LEN};
