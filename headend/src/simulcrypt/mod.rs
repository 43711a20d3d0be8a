//! DVB SimulCrypt (ETSI TS 103 197) inside `headend run`: the daemon's
//! side of the interfaces whose messages the `simulcrypt` crate encodes.
//!
//! * [`emmg`]: the EMMG client, which feeds the EMM carousel to the
//!   third-party MUXes of `[[simulcrypt.mux]]`.
//! * [`ecmg`]: the ECM generator a third-party scrambler's SCS connects
//!   to (`[simulcrypt.ecmg]`).

pub mod ecmg;
pub mod emmg;

pub use emmg::{MuxPeer, MuxPeers};
