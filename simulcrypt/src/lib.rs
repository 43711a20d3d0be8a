//! DVB SimulCrypt (ETSI TS 103 197) as Iodoform speaks it: the generic
//! message layer both interfaces share ([`Message`]: a header of
//! protocol_version, message_type and message_length, then type-length-value
//! parameters), and on top of it the typed messages of the ECMG⇔SCS
//! interface ([`ecmg::EcmgMessage`]) and of the EMMG⇔MUX interface
//! ([`emmg::EmmgMessage`]).
//!
//! Everything here parses bytes from a peer on the network, so nothing
//! panics: the framing layer answers with a [`DecodeError`], and the typed
//! layer with a [`Violation`] that carries the `error_status` the standard
//! assigns to it on each interface ([`Violation::ecmg_status`],
//! [`Violation::emmg_status`]), ready to go back to the peer in a
//! `channel_error` or `stream_error`.
//!
//! Control words travel in the clear on the ECMG⇔SCS interface (§5.7):
//! parameter values are wiped when dropped, and no `Debug` output here ever
//! shows a parameter's bytes.
//!
//! No I/O: the daemon frames messages off its sockets with
//! [`Header::parse`] and [`Message::decode_body`].
#![forbid(unsafe_code)]

mod check;
pub mod ecmg;
pub mod emmg;
mod tlv;

pub use check::{ErrorEntry, Violation, ViolationKind};
pub use tlv::{DecodeError, Header, Message, Param, HEADER_LEN, MAX_MESSAGE_LEN};

/// The protocol version this implementation speaks on both interfaces
/// (version 3 of TS 103 197).
pub const PROTOCOL_VERSION: u8 = 0x03;

/// `error_status` values common to both interfaces (their numbering differs
/// from 0x0005 on; each interface's module has its own table).
pub mod common_status {
    /// The message cannot be understood.
    pub const INVALID_MESSAGE: u16 = 0x0001;
    /// The header's protocol_version is not one this side speaks.
    pub const UNSUPPORTED_PROTOCOL_VERSION: u16 = 0x0002;
    /// No such message_type on this interface.
    pub const UNKNOWN_MESSAGE_TYPE: u16 = 0x0003;
    /// The message is longer than this side accepts, or than its length field.
    pub const MESSAGE_TOO_LONG: u16 = 0x0004;
    /// An error with no better code.
    pub const UNKNOWN_ERROR: u16 = 0x7000;
    /// The channel or stream the message was about must be closed.
    pub const UNRECOVERABLE_ERROR: u16 = 0x7001;
}
