//! The Iodoform smartcard: the card applet and its anti-tearing EEPROM,
//! the card transports (in process, and PC/SC), and the client that the
//! receiver and the provisioning tool use to talk to a card.
#![forbid(unsafe_code)]

pub use card::{applet, eeprom, state};
pub use cardlink::{client, pcsc, transport};
pub mod vpcd;

pub use applet::{Applet, CardError};
pub use cardlink::{CardTransport, InProcessCard, Recording, TransportError};
pub use client::{CardClient, ClientError};
