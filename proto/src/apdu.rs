//! ISO 7816-4 command and response APDUs, short and extended, and the
//! applet's instruction set and status words.
//!
//! [`Command::parse`] accepts the seven ISO cases (1, 2S, 3S, 4S, 2E, 3E,
//! 4E) and rejects everything else with a typed error. [`Command::to_bytes`]
//! chooses short or extended length by itself.

use crate::wire_enum;
use thiserror::Error;

wire_enum! {
    /// Class byte.
    Cla(u8) {
        /// Interindustry (SELECT).
        ISO = 0x00,
        /// This applet's proprietary commands.
        PROPRIETARY = 0x80,
    }
}

wire_enum! {
    /// Instruction byte.
    Ins(u8) {
        SELECT = 0xA4,
        GET_RESPONSE = 0xC0,
        GET_INFO = 0xCA,
        PERSONALIZE = 0x10,
        LOCK = 0x12,
        PROCESS_EMM = 0x40,
        PROCESS_ECM = 0x42,
        LIST_ENTITLEMENTS = 0x44,
        ESTABLISH_SESSION = 0x50,
        /// Does nothing; used to measure the bare transport round trip.
        NOP = 0x70,
    }
}

wire_enum! {
    /// SW1-SW2. ISO 7816-4 codes where one fits; `9Axx` (EMM) and `9Bxx`
    /// (ECM) are this applet's own, one per rejection reason.
    StatusWord(u16) {
        OK = 0x9000,
        WRONG_LENGTH = 0x6700,
        SECURITY_NOT_SATISFIED = 0x6982,
        CONDITIONS_NOT_SATISFIED = 0x6985,
        WRONG_DATA = 0x6A80,
        FILE_NOT_FOUND = 0x6A82,
        INCORRECT_P1P2 = 0x6A86,
        INS_NOT_SUPPORTED = 0x6D00,
        CLA_NOT_SUPPORTED = 0x6E00,
        MEMORY_FAILURE = 0x6581,
        NOT_ENOUGH_MEMORY = 0x6A84,
        /// A chained command sequence was broken off.
        LAST_COMMAND_EXPECTED = 0x6883,
        UNKNOWN_ERROR = 0x6F00,
        /// The EMM is addressed to another card.
        EMM_WRONG_ADDRESS = 0x9A01,
        /// The EMM-U failed AEAD authentication (forged or modified).
        EMM_AUTH_FAILED = 0x9A02,
        /// The EMM-G signature did not verify.
        EMM_BAD_SIGNATURE = 0x9A03,
        /// The EMM's sequence number is not above the last one accepted.
        EMM_REPLAYED = 0x9A04,
        /// The authenticated EMM carries a command the card refuses.
        EMM_BAD_COMMAND = 0x9A05,
        /// The ECM failed AEAD authentication (forged or modified).
        ECM_AUTH_FAILED = 0x9B01,
        /// The card holds no entitlement (or no key) for the ECM's product.
        ECM_NOT_ENTITLED = 0x9B02,
        /// The ECM's time is outside the entitlement's dates, or older
        /// than the card's clock allows.
        ECM_OUTSIDE_DATES = 0x9B03,
        /// The card holds the product, but not the key generation the ECM
        /// names.
        ECM_UNKNOWN_GENERATION = 0x9B04,
        /// The card is paired with another receiver.
        NOT_PAIRED_RECEIVER = 0x9B05,
        /// No session: ESTABLISH SESSION must come before PROCESS ECM.
        NO_SESSION = 0x9B06,
    }
}

impl StatusWord {
    pub fn sw1(self) -> u8 {
        (self.0 >> 8) as u8
    }
    pub fn sw2(self) -> u8 {
        self.0 as u8
    }
    pub fn from_bytes(sw1: u8, sw2: u8) -> Self {
        StatusWord(u16::from_be_bytes([sw1, sw2]))
    }
}

/// The application identifier of the Iodoform applet ("IODOFORM" behind a
/// proprietary RID prefix).
pub const AID: &[u8] = &[0xF0, b'I', b'O', b'D', b'O', b'F', b'O', b'R', b'M'];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ApduError {
    #[error("APDU shorter than its 4-byte header")]
    TooShort,
    #[error("APDU length does not match Lc/Le")]
    LengthMismatch,
    #[error("extended Lc of zero")]
    ZeroLc,
    #[error("response APDU without a status word")]
    NoStatusWord,
}

/// A command APDU.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    pub cla: Cla,
    pub ins: Ins,
    pub p1: u8,
    pub p2: u8,
    pub data: Vec<u8>,
    /// Expected response length; `Some(256)` / `Some(65536)` for "all".
    pub le: Option<usize>,
}

impl std::fmt::Debug for Command {
    // Data may hold an EMM; print its length only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Command {{ cla: {:?}, ins: {:?}, p1: {:02x}, p2: {:02x}, lc: {}, le: {:?} }}",
            self.cla,
            self.ins,
            self.p1,
            self.p2,
            self.data.len(),
            self.le
        )
    }
}

impl Command {
    pub fn new(cla: Cla, ins: Ins, p1: u8, p2: u8, data: Vec<u8>, le: Option<usize>) -> Self {
        Command {
            cla,
            ins,
            p1,
            p2,
            data,
            le,
        }
    }

    /// A proprietary command expecting any length of response.
    pub fn proprietary(ins: Ins, p1: u8, data: Vec<u8>) -> Self {
        Command::new(Cla::PROPRIETARY, ins, p1, 0, data, Some(256))
    }

    pub fn select() -> Self {
        Command::new(Cla::ISO, Ins::SELECT, 0x04, 0x00, AID.to_vec(), None)
    }

    /// Whether this command needs extended length fields.
    pub fn is_extended(&self) -> bool {
        self.data.len() > 255 || self.le.is_some_and(|le| le > 256)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![self.cla.0, self.ins.0, self.p1, self.p2];
        let ext = self.is_extended();
        if !self.data.is_empty() {
            if ext {
                out.push(0);
                out.extend_from_slice(&(self.data.len() as u16).to_be_bytes());
            } else {
                out.push(self.data.len() as u8);
            }
            out.extend_from_slice(&self.data);
        }
        if let Some(le) = self.le {
            if ext {
                if self.data.is_empty() {
                    out.push(0);
                }
                out.extend_from_slice(&((le.min(65536) % 65536) as u16).to_be_bytes());
            } else {
                out.push((le.min(256) % 256) as u8);
            }
        }
        out
    }

    /// Parses a command APDU; any length inconsistency is an error.
    pub fn parse(b: &[u8]) -> Result<Command, ApduError> {
        if b.len() < 4 {
            return Err(ApduError::TooShort);
        }
        let (cla, ins, p1, p2) = (Cla(b[0]), Ins(b[1]), b[2], b[3]);
        let body = &b[4..];
        let short_le = |x: u8| if x == 0 { 256 } else { x as usize };
        let ext_le = |hi: u8, lo: u8| match u16::from_be_bytes([hi, lo]) {
            0 => 65536,
            n => n as usize,
        };
        let (data, le) = match body.len() {
            0 => (&[][..], None),
            1 => (&[][..], Some(short_le(body[0]))),
            _ if body[0] != 0 => {
                let lc = body[0] as usize;
                match body.len() - 1 {
                    n if n == lc => (&body[1..], None),
                    n if n == lc + 1 => (&body[1..=lc], Some(short_le(body[lc + 1]))),
                    _ => return Err(ApduError::LengthMismatch),
                }
            }
            3 => (&[][..], Some(ext_le(body[1], body[2]))),
            n if n < 3 => return Err(ApduError::LengthMismatch),
            _ => {
                let lc = u16::from_be_bytes([body[1], body[2]]) as usize;
                if lc == 0 {
                    return Err(ApduError::ZeroLc);
                }
                match body.len() - 3 {
                    n if n == lc => (&body[3..], None),
                    n if n == lc + 2 => {
                        (&body[3..3 + lc], Some(ext_le(body[3 + lc], body[4 + lc])))
                    }
                    _ => return Err(ApduError::LengthMismatch),
                }
            }
        };
        Ok(Command {
            cla,
            ins,
            p1,
            p2,
            data: data.to_vec(),
            le,
        })
    }
}

/// Whether raw command bytes use extended length fields (ISO 7816-4
/// 5.1: a zero byte where a short Lc or Le would be, followed by at least
/// two more bytes). Decided from the encoding alone, without parsing the
/// rest, so that a short-APDU-only card can refuse such a command with
/// `6700` as a T=0 card does, however the rest of it looks.
pub fn is_extended_encoding(b: &[u8]) -> bool {
    b.len() >= 7 && b[4] == 0
}

/// Largest short command APDU: header, Lc, 255 data bytes, Le.
pub const MAX_SHORT_COMMAND: usize = 4 + 1 + 255 + 1;

/// A response APDU: data and status word.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    pub data: Vec<u8>,
    pub sw: StatusWord,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Response {{ len: {}, sw: {:?} }}",
            self.data.len(),
            self.sw
        )
    }
}

impl Response {
    pub fn ok(data: Vec<u8>) -> Self {
        Response {
            data,
            sw: StatusWord::OK,
        }
    }
    pub fn status(sw: StatusWord) -> Self {
        Response {
            data: Vec::new(),
            sw,
        }
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = self.data.clone();
        v.push(self.sw.sw1());
        v.push(self.sw.sw2());
        v
    }
    pub fn parse(b: &[u8]) -> Result<Response, ApduError> {
        if b.len() < 2 {
            return Err(ApduError::NoStatusWord);
        }
        let (data, sw) = b.split_at(b.len() - 2);
        Ok(Response {
            data: data.to_vec(),
            sw: StatusWord::from_bytes(sw[0], sw[1]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases() {
        for (data, le) in [
            (vec![], None),
            (vec![], Some(256)),
            (vec![], Some(10)),
            (vec![1, 2, 3], None),
            (vec![1, 2, 3], Some(256)),
            (vec![7; 300], None),
            (vec![7; 300], Some(65536)),
            (vec![], Some(1000)),
            (vec![1], Some(4096)),
        ] {
            let c = Command::new(Cla::PROPRIETARY, Ins::PROCESS_EMM, 1, 2, data, le);
            assert_eq!(Command::parse(&c.to_bytes()).unwrap(), c, "{c:?}");
        }
        assert_eq!(
            Command::parse(&[0x80, 0x40, 0, 0, 5, 1]),
            Err(ApduError::LengthMismatch)
        );
        assert_eq!(Command::parse(&[0x80, 0x40, 0]), Err(ApduError::TooShort));
        assert_eq!(
            Command::parse(&[0x80, 0x40, 0, 0, 0, 0, 0, 1]),
            Err(ApduError::ZeroLc)
        );
        assert_eq!(format!("{:?}", Ins(0x99)), "Ins(0x99)");
        // The encoding alone says short or extended.
        for (data, le) in [
            (vec![], None),
            (vec![], Some(256)),
            (vec![9; 255], Some(256)),
            (vec![9; 256], None),
            (vec![], Some(257)),
        ] {
            let c = Command::new(Cla::PROPRIETARY, Ins::NOP, 0, 0, data, le);
            let b = c.to_bytes();
            assert_eq!(is_extended_encoding(&b), c.is_extended(), "{c:?}");
            assert!(c.is_extended() || b.len() <= MAX_SHORT_COMMAND);
        }
        assert_eq!(format!("{:?}", StatusWord::EMM_REPLAYED), "EMM_REPLAYED");
    }
}
