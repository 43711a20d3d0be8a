//! The framing both interfaces share: a five-byte header (protocol_version
//! u8, message_type u16, message_length u16) and then parameters, each a
//! type u16, a length u16 and that many bytes. All integers big-endian.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes in a message header.
pub const HEADER_LEN: usize = 5;
/// The longest message body the length field can announce.
pub const MAX_MESSAGE_LEN: usize = u16::MAX as usize;

/// What goes wrong below the typed layer: the bytes do not frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a header.
    #[error("SimulCrypt message cut short: {have} bytes, a header needs {HEADER_LEN}")]
    ShortHeader {
        /// Bytes present.
        have: usize,
    },
    /// The body is shorter than the header's message_length.
    #[error("SimulCrypt message cut short: message_length says {declared} bytes, {have} present")]
    ShortBody {
        /// message_length.
        declared: usize,
        /// Bytes present after the header.
        have: usize,
    },
    /// A parameter's header does not fit in what is left of the body.
    #[error("SimulCrypt parameter header cut short at byte {at} of a {len}-byte message body")]
    ShortParameterHeader {
        /// Offset of the parameter in the body.
        at: usize,
        /// message_length.
        len: usize,
    },
    /// A parameter's length runs past the end of the message.
    #[error("SimulCrypt parameter 0x{ty:04x} says {declared} bytes but only {left} are left in the message")]
    ParameterOverrun {
        /// parameter_type.
        ty: u16,
        /// parameter_length.
        declared: usize,
        /// Bytes left in the body after the parameter header.
        left: usize,
    },
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// protocol_version.
    pub version: u8,
    /// message_type.
    pub message_type: u16,
    /// message_length: the bytes that follow the header.
    pub length: u16,
}

impl Header {
    /// Reads a header from its five bytes.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        Header {
            version: bytes[0],
            message_type: u16::from_be_bytes([bytes[1], bytes[2]]),
            length: u16::from_be_bytes([bytes[3], bytes[4]]),
        }
    }
}

/// One parameter: its type and its value. The value is wiped on drop and
/// never shown by `Debug` (it may be a control word).
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Param {
    /// parameter_type.
    #[zeroize(skip)]
    pub ty: u16,
    /// parameter_value.
    pub value: Vec<u8>,
}

impl fmt::Debug for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Param(0x{:04x}, {} bytes)", self.ty, self.value.len())
    }
}

impl Param {
    /// A parameter from its type and value.
    pub fn new(ty: u16, value: impl Into<Vec<u8>>) -> Param {
        Param {
            ty,
            value: value.into(),
        }
    }
}

/// A whole message: header fields and parameters in the order they came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// protocol_version.
    pub version: u8,
    /// message_type.
    pub message_type: u16,
    /// The parameters, in order.
    pub params: Vec<Param>,
}

impl Message {
    /// A message of this type in [`crate::PROTOCOL_VERSION`], no parameters yet.
    pub fn new(message_type: u16) -> Message {
        Message {
            version: crate::PROTOCOL_VERSION,
            message_type,
            params: Vec::new(),
        }
    }

    /// Appends a parameter (builder style).
    pub fn with(mut self, ty: u16, value: impl Into<Vec<u8>>) -> Message {
        self.params.push(Param::new(ty, value));
        self
    }

    /// Parses the parameters of a body whose header is already read.
    pub fn decode_body(header: Header, body: &[u8]) -> Result<Message, DecodeError> {
        let len = usize::from(header.length);
        if body.len() < len {
            return Err(DecodeError::ShortBody {
                declared: len,
                have: body.len(),
            });
        }
        let body = &body[..len];
        let mut params = Vec::new();
        let mut at = 0;
        while at < len {
            let Some(head) = body.get(at..at + 4) else {
                return Err(DecodeError::ShortParameterHeader { at, len });
            };
            let ty = u16::from_be_bytes([head[0], head[1]]);
            let declared = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let start = at + 4;
            let left = len - start;
            if declared > left {
                return Err(DecodeError::ParameterOverrun { ty, declared, left });
            }
            params.push(Param::new(ty, &body[start..start + declared]));
            at = start + declared;
        }
        Ok(Message {
            version: header.version,
            message_type: header.message_type,
            params,
        })
    }

    /// Parses one message from the front of `bytes`; returns it and the
    /// bytes it took (a UDP datagram may hold several).
    pub fn decode(bytes: &[u8]) -> Result<(Message, usize), DecodeError> {
        let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::ShortHeader { have: bytes.len() });
        };
        let header = Header::parse(head);
        let message = Message::decode_body(header, &bytes[HEADER_LEN..])?;
        Ok((message, HEADER_LEN + usize::from(header.length)))
    }

    /// The bytes of the body (parameters only).
    fn body_len(&self) -> usize {
        self.params.iter().map(|p| 4 + p.value.len()).sum()
    }

    /// Encodes the message. `None` when the parameters do not fit in the
    /// 16-bit length fields, which a caller building from our own values
    /// treats as a bug to report, never as bytes to send.
    pub fn encode(&self) -> Option<Vec<u8>> {
        let len = u16::try_from(self.body_len()).ok()?;
        let mut out = Vec::with_capacity(HEADER_LEN + usize::from(len));
        out.push(self.version);
        out.extend_from_slice(&self.message_type.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        for p in &self.params {
            let plen = u16::try_from(p.value.len()).ok()?;
            out.extend_from_slice(&p.ty.to_be_bytes());
            out.extend_from_slice(&plen.to_be_bytes());
            out.extend_from_slice(&p.value);
        }
        Some(out)
    }

    /// Every parameter of this type, in order.
    pub fn all(&self, ty: u16) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(move |p| p.ty == ty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_from_its_bytes() {
        let m = Message::new(0x0001)
            .with(0x000E, [0, 7])
            .with(0x0001, [1, 2, 3, 4]);
        let bytes = m.encode().unwrap();
        assert_eq!(
            bytes,
            [3, 0, 1, 0, 14, 0, 0x0E, 0, 2, 0, 7, 0, 1, 0, 4, 1, 2, 3, 4]
        );
        assert_eq!(Message::decode(&bytes).unwrap(), (m, bytes.len()));
    }

    #[test]
    fn a_parameter_longer_than_its_message_is_refused() {
        // message_length 6, but the parameter says 5 bytes of value.
        let bytes = [3, 0, 1, 0, 6, 0, 0x0E, 0, 5, 0, 7];
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::ParameterOverrun {
                ty: 0x000E,
                declared: 5,
                left: 2
            })
        );
    }

    #[test]
    fn debug_never_shows_a_value() {
        let p = Param::new(0x0014, [0xAB; 18]);
        assert_eq!(format!("{p:?}"), "Param(0x0014, 18 bytes)");
    }
}
