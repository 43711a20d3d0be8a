//! DVB-CISSA, the Common IPTV Software-oriented Scrambling Algorithm
//! (ETSI TS 103 127 §6): AES-128 in CBC mode over each TS packet's payload.
//!
//! - The key is the 16-byte control word; the IV is the ASCII string
//!   `DVBTMCPTAESCISSA`, restarted on every packet, so that packets are
//!   independent and a receiver can start anywhere.
//! - Scrambling starts at the first payload byte, after the adaptation
//!   field: the 4-byte header and the whole adaptation field (PCR included)
//!   stay clear, so that a multiplexer can read and restamp them.
//! - Only the whole 16-byte blocks are scrambled. The residue (the last
//!   `payload_len % 16` bytes) stays clear: CISSA has no ciphertext
//!   stealing. A payload shorter than 16 bytes is therefore all clear,
//!   yet the packet is still marked scrambled, as TSDuck's reference
//!   scrambler does (`tsTSScrambling.cpp`): the bits say which key the
//!   packet belongs to, not how many bytes changed.
//! - A packet without a payload is left clear and unmarked.
//! - transport_scrambling_control `10` selects the even key, `11` the odd.
//!
//! The AES key schedule runs once per control word (in `set_even` /
//! `set_odd`); the per-packet path only runs CBC over the payload in
//! place, with no allocation. Round keys are wiped when a slot is
//! replaced or dropped (the `aes` crate's `zeroize` feature).

use crate::packet::{payload_offset, PacketError, Parity, ScramblingControl, PACKET_LEN};
use aes::cipher::{
    consts::U16, inout::InOutBuf, BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit,
};
use aes::Aes128;
use proto::secret::ControlWord;
use thiserror::Error;

/// The fixed CISSA IV, "DVBTMCPTAESCISSA".
pub const CISSA_IV: [u8; 16] = *b"DVBTMCPTAESCISSA";
/// The CBC block size: only whole blocks of the payload are scrambled.
pub const BLOCK_LEN: usize = 16;

/// Why a packet could not be (de)scrambled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CissaError {
    #[error(transparent)]
    Packet(#[from] PacketError),
    #[error("packet is already scrambled")]
    AlreadyScrambled,
    #[error("reserved transport_scrambling_control 01")]
    ReservedScramblingControl,
}

/// What happened to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do: a clear packet (descrambling) or one without a
    /// payload (scrambling). Left untouched.
    Clear,
    /// Scrambled or descrambled with the key of this parity.
    Done(Parity),
    /// The slot for this parity holds no key. The packet is untouched.
    NoKey(Parity),
}

/// Two AES-128 key slots, even and odd.
#[derive(Default)]
struct Keys {
    even: Option<Aes128>,
    odd: Option<Aes128>,
}

impl Keys {
    fn set(&mut self, parity: Parity, cw: &ControlWord) {
        // Replacing the slot drops (and so wipes) the old round keys.
        let k = Some(Aes128::new(cw.expose().into()));
        match parity {
            Parity::Even => self.even = k,
            Parity::Odd => self.odd = k,
        }
    }

    fn clear(&mut self, parity: Parity) {
        match parity {
            Parity::Even => self.even = None,
            Parity::Odd => self.odd = None,
        }
    }

    #[inline]
    fn get(&self, parity: Parity) -> Option<&Aes128> {
        match parity {
            Parity::Even => self.even.as_ref(),
            Parity::Odd => self.odd.as_ref(),
        }
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("even", &self.even.as_ref().map(|_| "REDACTED"))
            .field("odd", &self.odd.as_ref().map(|_| "REDACTED"))
            .finish()
    }
}

/// The whole 16-byte blocks of a payload; the residue is left out.
#[inline]
fn whole_blocks(payload: &mut [u8]) -> InOutBuf<'_, '_, u8> {
    let n = payload.len() - payload.len() % BLOCK_LEN;
    InOutBuf::from(&mut payload[..n])
}

/// AES-128-CBC encryption of the whole blocks of `payload` under `key`,
/// with the CISSA IV. Exposed for the benchmarks' comparison.
#[inline]
pub fn encrypt_payload(key: &Aes128, payload: &mut [u8]) {
    let (blocks, _) = whole_blocks(payload).into_chunks::<U16>();
    cbc::Encryptor::<&Aes128>::inner_iv_init(key, &CISSA_IV.into())
        .encrypt_blocks_inout_mut(blocks);
}

/// AES-128-CBC decryption of the whole blocks of `payload` under `key`,
/// with the CISSA IV.
#[inline]
pub fn decrypt_payload(key: &Aes128, payload: &mut [u8]) {
    let (blocks, _) = whole_blocks(payload).into_chunks::<U16>();
    cbc::Decryptor::<&Aes128>::inner_iv_init(key, &CISSA_IV.into())
        .decrypt_blocks_inout_mut(blocks);
}

/// The two key slots' methods, the same for both directions.
macro_rules! key_slots {
    ($t:ty) => {
        impl $t {
            pub fn new() -> Self {
                Self::default()
            }

            pub fn set_even(&mut self, cw: &ControlWord) {
                self.keys.set(Parity::Even, cw);
            }

            pub fn set_odd(&mut self, cw: &ControlWord) {
                self.keys.set(Parity::Odd, cw);
            }

            pub fn set(&mut self, parity: Parity, cw: &ControlWord) {
                self.keys.set(parity, cw);
            }

            /// Forgets a key (for example when the card stops being
            /// entitled).
            pub fn clear(&mut self, parity: Parity) {
                self.keys.clear(parity);
            }

            pub fn has_key(&self, parity: Parity) -> bool {
                self.keys.get(parity).is_some()
            }
        }
    };
}

key_slots!(Descrambler);
key_slots!(Scrambler);

/// The receiver's descrambler: it holds both control words so that a
/// change of crypto period loses no packet.
#[derive(Debug, Default)]
pub struct Descrambler {
    keys: Keys,
}

impl Descrambler {
    /// Descrambles one packet in place and clears its scrambling bits.
    /// A clear packet is left alone; a packet whose key is missing is left
    /// scrambled and reported as [`Outcome::NoKey`].
    #[inline]
    pub fn descramble(&self, packet: &mut [u8; PACKET_LEN]) -> Result<Outcome, CissaError> {
        let sc = ScramblingControl(packet[3] >> 6);
        let parity = match sc {
            ScramblingControl::CLEAR => return Ok(Outcome::Clear),
            ScramblingControl::EVEN => Parity::Even,
            ScramblingControl::ODD => Parity::Odd,
            _ => return Err(CissaError::ReservedScramblingControl),
        };
        let at = payload_offset(packet)?;
        let Some(key) = self.keys.get(parity) else {
            return Ok(Outcome::NoKey(parity));
        };
        decrypt_payload(key, &mut packet[at..]);
        packet[3] &= 0x3F;
        Ok(Outcome::Done(parity))
    }
}

/// The headend's scrambler. It holds both control words too, so that the
/// next period's key can be loaded before the switch.
#[derive(Debug, Default)]
pub struct Scrambler {
    keys: Keys,
}

impl Scrambler {
    /// Scrambles one clear packet in place with the key of `parity` and
    /// sets its scrambling bits. A packet without a payload is left clear.
    /// A packet that is already scrambled is refused: scrambling it again
    /// would make it undecryptable.
    #[inline]
    pub fn scramble(
        &self,
        packet: &mut [u8; PACKET_LEN],
        parity: Parity,
    ) -> Result<Outcome, CissaError> {
        let at = payload_offset(packet)?;
        if packet[3] >> 6 != 0 {
            return Err(CissaError::AlreadyScrambled);
        }
        if at >= PACKET_LEN {
            return Ok(Outcome::Clear);
        }
        let Some(key) = self.keys.get(parity) else {
            return Ok(Outcome::NoKey(parity));
        };
        encrypt_payload(key, &mut packet[at..]);
        packet[3] |= parity.scrambling_control().0 << 6;
        Ok(Outcome::Done(parity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{Packet, PacketBuilder};

    fn cw(b: u8) -> ControlWord {
        ControlWord::from_bytes([b; 16])
    }

    #[test]
    fn round_trip_and_residue_stays_clear() {
        let mut s = Scrambler::new();
        s.set_odd(&cw(3));
        let mut d = Descrambler::new();
        let mut b = PacketBuilder::new(0x100);
        b.stuffing = 10; // payload of 184 - 12 = 172 = 10 blocks + 12
        let payload: Vec<u8> = (0..200u32).map(|i| i as u8).collect();
        let (clear, n) = b.build(&payload).unwrap();
        assert_eq!(n, 172);
        let mut p = clear;
        assert_eq!(
            s.scramble(&mut p, Parity::Odd),
            Ok(Outcome::Done(Parity::Odd))
        );
        assert_eq!(
            Packet::new(&p).unwrap().scrambling(),
            ScramblingControl::ODD
        );
        assert_eq!(p[..3], clear[..3]); // header
        assert_eq!(p[3] & 0x3F, clear[3]);
        assert_eq!(p[4..16], clear[4..16]); // adaptation field
        assert_eq!(p[176..], clear[176..]); // the 12-byte residue
        assert_ne!(p[16..176], clear[16..176]);
        assert_eq!(
            s.scramble(&mut p, Parity::Odd),
            Err(CissaError::AlreadyScrambled)
        );

        assert_eq!(d.descramble(&mut p), Ok(Outcome::NoKey(Parity::Odd)));
        d.set_even(&cw(3));
        assert_eq!(d.descramble(&mut p), Ok(Outcome::NoKey(Parity::Odd)));
        d.set_odd(&cw(3));
        assert_eq!(d.descramble(&mut p), Ok(Outcome::Done(Parity::Odd)));
        assert_eq!(p, clear);
        assert_eq!(d.descramble(&mut p), Ok(Outcome::Clear));
    }

    #[test]
    fn debug_redacts() {
        let mut d = Descrambler::new();
        d.set_even(&cw(1));
        let s = format!("{d:?}");
        assert!(s.contains("REDACTED") && s.contains("odd: None"), "{s}");
    }
}
