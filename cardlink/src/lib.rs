//! The host side of the Iodoform card interface: how a receiver or a
//! provisioning tool talks to a card. [`CardClient`] makes typed calls
//! (SELECT, GET INFO, PERSONALIZE, EMMs, the protected session with the
//! receiver's key, ECMs whose control words come back sealed under it)
//! over any [`CardTransport`], and handles GET RESPONSE, Le correction and
//! command chaining in one place. Transports: PC/SC (`pcsc::PcscTransport`,
//! feature `pcsc`) and the applet in this process (`InProcessCard`, feature
//! `in-process`, for tests).
//!
//! Its responsibility ends at the transport and the session: it holds no
//! card secret and runs no applet logic (that is the `card` crate, linked
//! only with `in-process`), it keeps no link alive across removals (the
//! receiver's `CardLink` does that on top of it), and it never logs a
//! control word or a session key.
#![forbid(unsafe_code)]

pub mod client;
#[cfg(feature = "in-process")]
pub mod in_process;
#[cfg(feature = "pcsc")]
pub mod pcsc;
pub mod transport;

pub use client::{describe, CardClient, ClientError};
#[cfg(feature = "in-process")]
pub use in_process::InProcessCard;
pub use transport::{CardTransport, Recording, TransportError};
