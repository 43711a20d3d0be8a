//! The Iodoform smartcard: the card applet and its anti-tearing EEPROM,
//! the card transports (in process, and PC/SC), and the client that the
//! receiver and the provisioning tool use to talk to a card.
#![forbid(unsafe_code)]

pub use card::{applet, eeprom, state};
pub mod client;
pub mod pcsc;
pub mod transport;
pub mod vpcd;

pub use applet::{Applet, CardError};
pub use client::{CardClient, ClientError};
pub use transport::{CardTransport, InProcessCard, Recording, TransportError};
