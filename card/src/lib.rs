//! The Iodoform card: what runs on the smartcard itself. The [`Applet`]
//! takes a command APDU and returns a response APDU; behind it are the
//! card's stored state ([`state`]) and the two-slot EEPROM that keeps that
//! state whole through a power cut at any page write ([`eeprom`]).
//!
//! Its responsibility ends at the APDU: it never talks to a reader, a
//! PC/SC service or a socket (the host side is the `cardlink` crate; the
//! vpcd emulator that puts this applet behind pcscd is in `smartcard`).
//! The card's secrets (its X25519 key, `KEK_card`, the product keys and
//! the session key) stay inside this crate: no public method or field
//! returns one, and only public keys, status words and sealed control
//! words leave through [`Applet::process`]. The EEPROM image holds them,
//! as a chip's memory does, so whoever supplies the [`eeprom::Eeprom`]
//! (the emulator's 0600 state file) must guard it.
#![forbid(unsafe_code)]

pub mod applet;
pub mod eeprom;
pub mod state;

pub use applet::{Applet, CardError, ATR};
pub use eeprom::{Eeprom, FileEeprom, MemEeprom};
