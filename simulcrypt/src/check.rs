//! What a peer's message can do wrong, and how the two interfaces number it.
//!
//! Both interfaces check a message the same way (its version, its type, then
//! each parameter's type, length and count against the message's table in
//! the standard), and both answer a fault with an `error_status`; only the
//! numbers differ. [`Violation`] names the fault once and gives each
//! interface's number.

use std::fmt;

use crate::{common_status as common, Message, Param};

/// The kinds of fault, in the standard's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// The message cannot be understood (it does not frame, or a parameter
    /// appears more often than its message allows).
    InvalidMessage,
    /// protocol_version is not [`crate::PROTOCOL_VERSION`].
    UnsupportedVersion,
    /// No such message_type on this interface, or not one this side accepts.
    UnknownMessageType,
    /// Longer than this side accepts.
    MessageTooLong,
    /// A DVB parameter_type the message does not define.
    UnknownParameterType,
    /// A fixed-length DVB parameter with another length.
    InconsistentLength,
    /// A mandatory DVB parameter is absent.
    MissingParameter,
    /// A DVB parameter's value is out of range.
    InvalidValue,
}

/// One fault in a peer's message: its kind, the parameter concerned if
/// any, and a one-line explanation for the log and `error_information`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// What went wrong.
    pub kind: ViolationKind,
    /// The parameter_type concerned, if any.
    pub param: Option<u16>,
    /// One line for the log and for `error_information`.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Violation {}

impl Violation {
    /// A fault of this kind.
    pub fn new(kind: ViolationKind, param: Option<u16>, detail: impl Into<String>) -> Violation {
        Violation {
            kind,
            param,
            detail: detail.into(),
        }
    }

    /// The ECMG⇔SCS `error_status` for this fault (TS 103 197 §5.6).
    pub fn ecmg_status(&self) -> u16 {
        use crate::ecmg::status;
        match self.kind {
            ViolationKind::InvalidMessage => common::INVALID_MESSAGE,
            ViolationKind::UnsupportedVersion => common::UNSUPPORTED_PROTOCOL_VERSION,
            ViolationKind::UnknownMessageType => common::UNKNOWN_MESSAGE_TYPE,
            ViolationKind::MessageTooLong => common::MESSAGE_TOO_LONG,
            ViolationKind::UnknownParameterType => status::UNKNOWN_PARAMETER_TYPE,
            ViolationKind::InconsistentLength => status::INCONSISTENT_LENGTH,
            ViolationKind::MissingParameter => status::MISSING_PARAMETER,
            ViolationKind::InvalidValue => status::INVALID_VALUE,
        }
    }

    /// The EMMG⇔MUX `error_status` for this fault (TS 103 197 §6.2.6).
    pub fn emmg_status(&self) -> u16 {
        use crate::emmg::status;
        match self.kind {
            ViolationKind::InvalidMessage => common::INVALID_MESSAGE,
            ViolationKind::UnsupportedVersion => common::UNSUPPORTED_PROTOCOL_VERSION,
            ViolationKind::UnknownMessageType => common::UNKNOWN_MESSAGE_TYPE,
            ViolationKind::MessageTooLong => common::MESSAGE_TOO_LONG,
            ViolationKind::UnknownParameterType => status::UNKNOWN_PARAMETER_TYPE,
            ViolationKind::InconsistentLength => status::INCONSISTENT_LENGTH,
            ViolationKind::MissingParameter => status::MISSING_PARAMETER,
            ViolationKind::InvalidValue => status::INVALID_VALUE,
        }
    }
}

/// One `error_status` with its optional `error_information`, as carried by
/// `channel_error` and `stream_error` on both interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEntry {
    /// error_status.
    pub status: u16,
    /// error_information, if any (free text here).
    pub information: Option<Vec<u8>>,
}

/// How often a parameter may appear in a message, and how long it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub ty: u16,
    pub name: &'static str,
    /// Fixed length in bytes, or `None` for a variable one.
    pub len: Option<usize>,
    pub min: usize,
    pub max: usize,
}

/// One message type's parameter table.
pub(crate) struct Table {
    pub name: &'static str,
    pub slots: &'static [Slot],
}

/// Shorthands for the tables: exactly one, zero or one, any number.
pub(crate) const fn one(ty: u16, name: &'static str, len: Option<usize>) -> Slot {
    Slot {
        ty,
        name,
        len,
        min: 1,
        max: 1,
    }
}
pub(crate) const fn opt(ty: u16, name: &'static str, len: Option<usize>) -> Slot {
    Slot {
        ty,
        name,
        len,
        min: 0,
        max: 1,
    }
}
pub(crate) const fn many(ty: u16, name: &'static str, len: Option<usize>, min: usize) -> Slot {
    Slot {
        ty,
        name,
        len,
        min,
        max: usize::MAX,
    }
}

/// The first parameter_type of the user-defined range: such parameters are
/// the CA system's own, and a message that carries one we do not know is
/// still served (the parameter is ignored).
pub const USER_DEFINED_PARAMETERS: u16 = 0x8000;

/// Checks a message's parameters against its table: lengths,
/// counts, and no DVB parameter the message does not define.
pub(crate) fn check(message: &Message, table: &Table) -> Result<(), Violation> {
    for p in &message.params {
        let Some(slot) = table.slots.iter().find(|s| s.ty == p.ty) else {
            if p.ty >= USER_DEFINED_PARAMETERS {
                continue;
            }
            return Err(Violation::new(
                ViolationKind::UnknownParameterType,
                Some(p.ty),
                format!("{} has no parameter of type 0x{:04x}", table.name, p.ty),
            ));
        };
        if let Some(len) = slot.len {
            if p.value.len() != len {
                return Err(Violation::new(
                    ViolationKind::InconsistentLength,
                    Some(p.ty),
                    format!(
                        "{} in {} is {} bytes long; the standard says {len}",
                        slot.name,
                        table.name,
                        p.value.len()
                    ),
                ));
            }
        }
    }
    for slot in table.slots {
        let n = message.all(slot.ty).count();
        if n < slot.min {
            return Err(Violation::new(
                ViolationKind::MissingParameter,
                Some(slot.ty),
                format!("{} lacks its mandatory {}", table.name, slot.name),
            ));
        }
        if n > slot.max {
            return Err(Violation::new(
                ViolationKind::InvalidMessage,
                Some(slot.ty),
                format!(
                    "{} carries {n} {} parameters; it may carry at most {}",
                    table.name, slot.name, slot.max
                ),
            ));
        }
    }
    Ok(())
}

/// Reads checked parameters. Only used after [`check`], so a missing or
/// short fixed-length parameter is already refused; the fallbacks below are
/// never reached for a checked message and keep this code free of panics.
pub(crate) fn first(message: &Message, ty: u16) -> Option<&Param> {
    message.all(ty).next()
}

pub(crate) fn u8_of(message: &Message, ty: u16) -> u8 {
    first(message, ty)
        .and_then(|p| p.value.first().copied())
        .unwrap_or(0)
}

pub(crate) fn opt_u16_of(message: &Message, ty: u16) -> Option<u16> {
    first(message, ty)
        .and_then(|p| p.value.first_chunk::<2>())
        .map(|b| u16::from_be_bytes(*b))
}

pub(crate) fn u16_of(message: &Message, ty: u16) -> u16 {
    opt_u16_of(message, ty).unwrap_or(0)
}

pub(crate) fn u32_of(message: &Message, ty: u16) -> u32 {
    first(message, ty)
        .and_then(|p| p.value.first_chunk::<4>())
        .map(|b| u32::from_be_bytes(*b))
        .unwrap_or(0)
}

pub(crate) fn bytes_of(message: &Message, ty: u16) -> Option<Vec<u8>> {
    first(message, ty).map(|p| p.value.clone())
}

/// The error entries of a `channel_error` or `stream_error`: each
/// error_status, with the error_information that follows it if any.
pub(crate) fn errors_of(message: &Message, status_ty: u16, info_ty: u16) -> Vec<ErrorEntry> {
    let mut out: Vec<ErrorEntry> = Vec::new();
    for p in &message.params {
        if p.ty == status_ty {
            if let Some(b) = p.value.first_chunk::<2>() {
                out.push(ErrorEntry {
                    status: u16::from_be_bytes(*b),
                    information: None,
                });
            }
        } else if p.ty == info_ty {
            if let Some(last) = out.last_mut() {
                if last.information.is_none() {
                    last.information = Some(p.value.clone());
                }
            }
        }
    }
    out
}

/// Appends error entries to a message being built.
pub(crate) fn push_errors(
    mut message: Message,
    errors: &[ErrorEntry],
    status_ty: u16,
    info_ty: u16,
) -> Message {
    for e in errors {
        message = message.with(status_ty, e.status.to_be_bytes());
        if let Some(info) = &e.information {
            message = message.with(info_ty, info.clone());
        }
    }
    message
}

/// Refuses a version other than [`crate::PROTOCOL_VERSION`]; checked
/// before anything else in the message.
pub(crate) fn check_version(message: &Message) -> Result<(), Violation> {
    if message.version == crate::PROTOCOL_VERSION {
        return Ok(());
    }
    Err(Violation::new(
        ViolationKind::UnsupportedVersion,
        None,
        format!(
            "protocol_version {} is not supported: this side speaks version {} of TS 103 197",
            message.version,
            crate::PROTOCOL_VERSION
        ),
    ))
}

/// The message type's table, or the fault of an unknown type.
pub(crate) fn table_for<'t>(
    tables: &'t [(u16, Table)],
    message: &Message,
    interface: &str,
) -> Result<&'t Table, Violation> {
    tables
        .iter()
        .find(|(t, _)| *t == message.message_type)
        .map(|(_, table)| table)
        .ok_or_else(|| {
            Violation::new(
                ViolationKind::UnknownMessageType,
                None,
                format!(
                    "message_type 0x{:04x} is not a message of the {interface} interface",
                    message.message_type
                ),
            )
        })
}
