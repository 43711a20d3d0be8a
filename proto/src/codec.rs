//! Explicit byte codecs for everything that crosses the air or the card
//! interface, in the style of rustls' `msgs/codec.rs`.
//!
//! Every wire type implements [`Codec`]. Reading is bounded: a [`Reader`]
//! never reads past its slice, `sub(len)` bounds nested structures, and
//! [`Codec::from_bytes`] treats leftover bytes as an error. Nothing here
//! may panic on any input.

use thiserror::Error;

/// Why bytes could not be parsed. Non-exhaustive so that new checks do not
/// break callers.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    #[error("message truncated: needed {needed} more bytes for {what}")]
    Truncated { what: &'static str, needed: usize },
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("unknown protocol version 0x{0:02x}")]
    UnknownVersion(u8),
    #[error("unknown message kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("unknown command tag 0x{0:02x}")]
    UnknownCommand(u8),
    #[error("invalid length for {0}")]
    BadLength(&'static str),
    #[error("invalid value for {0}")]
    InvalidValue(&'static str),
}

/// A bounded cursor over untrusted bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    offs: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, offs: 0 }
    }

    /// Bytes consumed so far.
    pub fn used(&self) -> usize {
        self.offs
    }

    /// Bytes not yet consumed.
    pub fn left(&self) -> usize {
        self.buf.len() - self.offs
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let r = &self.buf[self.offs..];
        self.offs = self.buf.len();
        r
    }

    pub fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], InvalidMessage> {
        if self.left() < len {
            return Err(InvalidMessage::Truncated {
                what,
                needed: len - self.left(),
            });
        }
        let r = &self.buf[self.offs..self.offs + len];
        self.offs += len;
        Ok(r)
    }

    /// A reader over the next `len` bytes, which are consumed from `self`.
    pub fn sub(&mut self, len: usize, what: &'static str) -> Result<Reader<'a>, InvalidMessage> {
        self.take(len, what).map(Reader::new)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], InvalidMessage> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, InvalidMessage> {
        Ok(self.array::<1>(what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, InvalidMessage> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, InvalidMessage> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, InvalidMessage> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Fails unless every byte was consumed.
    pub fn expect_empty(&self) -> Result<(), InvalidMessage> {
        match self.left() {
            0 => Ok(()),
            n => Err(InvalidMessage::TrailingBytes(n)),
        }
    }
}

/// A type with an explicit, documented byte layout (see `docs/PROTOCOL.md`).
pub trait Codec: Sized {
    fn encode(&self, out: &mut Vec<u8>);
    fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage>;

    fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Parses exactly one value; leftover bytes are an error.
    fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidMessage> {
        let mut r = Reader::new(bytes);
        let v = Self::read(&mut r)?;
        r.expect_empty()?;
        Ok(v)
    }
}

macro_rules! impl_int_codec {
    ($($t:ty => $m:ident),*) => {$(
        impl Codec for $t {
            fn encode(&self, out: &mut Vec<u8>) { out.extend_from_slice(&self.to_be_bytes()); }
            fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> { r.$m(stringify!($t)) }
        }
    )*};
}
impl_int_codec!(u8 => u8, u16 => u16, u32 => u32, u64 => u64);

impl<const N: usize> Codec for [u8; N] {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        r.array("byte array")
    }
}

/// Declares an open wire enum: `struct Name(pub uN)` with named constants,
/// so unknown values survive a round trip and print in hex.
#[macro_export]
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident($t:ty) { $($(#[$vm:meta])* $var:ident = $val:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $t);
        #[allow(missing_docs)]
        impl $name {
            $($(#[$vm])* pub const $var: $name = $name($val);)*
            /// The constant's name, if this value has one.
            pub fn name(self) -> Option<&'static str> {
                match self { $($name::$var => Some(stringify!($var)),)* _ => None }
            }
        }
        impl ::core::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                match self.name() {
                    Some(n) => write!(f, "{}", n),
                    None => write!(f, "{}(0x{:0w$x})", stringify!($name), self.0, w = ::core::mem::size_of::<$t>() * 2),
                }
            }
        }
        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                write!(f, "{:0w$X}", self.0, w = ::core::mem::size_of::<$t>() * 2)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_bounds() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16("x").unwrap(), 0x0102);
        assert!(matches!(
            r.u16("y"),
            Err(InvalidMessage::Truncated { needed: 1, .. })
        ));
        assert_eq!(r.u8("z").unwrap(), 3);
        r.expect_empty().unwrap();
        assert!(u32::from_bytes(&[0, 0, 0, 1, 5]).is_err());
    }
}
