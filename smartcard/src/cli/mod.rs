//! The `smartcard` subcommands, one module each, and what they share.

pub mod card;
pub mod emulate;
pub mod info;
pub mod provision;
pub mod readers;
