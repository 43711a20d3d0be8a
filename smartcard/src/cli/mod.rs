//! The `smartcard` subcommands, one module each.

pub mod emulate;
pub mod readers;
