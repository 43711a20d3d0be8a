//! Iodoform's shared protocol crate: wire formats (EMM, ECM, APDU bodies),
//! the key hierarchy and the crypto primitives.
//!
//! It does no I/O, keeps no state and never logs. Every parser here takes
//! untrusted bytes and must return a typed error, never panic.
#![forbid(unsafe_code)]

pub mod apdu;
pub mod card;
pub mod codec;
pub mod crypto;
pub mod ecm;
pub mod emm;
pub mod operator;
pub mod sd;
pub mod secret;

pub use codec::{Codec, InvalidMessage, Reader};
