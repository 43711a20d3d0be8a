//! Entitlement control messages.
//!
//! ```text
//! off len field
//!   0   1 version     0x01
//!   1   4 product
//!   5   4 generation  of the product's period key K_P
//!   9   8 epoch       crypto period number; K_{P,e} = HKDF(K_P, product ‖ generation ‖ epoch)
//!  17   2 service     DVB service_id
//!  19   2 body_len    always 57
//!  21  57 body        ChaCha20-Poly1305 under K_ecm(K_{P,e}), AAD = bytes 0..21:
//!                     cw_even[16] ‖ cw_odd[16] ‖ time:u64 ‖ maturity:u8 ‖ tag[16]
//! ```
//!
//! The nonce is `00 00 ‖ service ‖ epoch`. The key is unique to
//! (product, generation, epoch), and the headend seals one ECM per service
//! per epoch (repetitions are byte-identical copies), so (key, nonce) never
//! repeats with different plaintext.

use crate::codec::{Codec, InvalidMessage, Reader};
use crate::crypto::{self, CryptoError, Sealer, TAG_LEN};
use crate::secret::{ControlWord, CwPair, EcmKey};
use thiserror::Error;

pub const ECM_VERSION: u8 = 1;
pub const ECM_HEADER_LEN: usize = 21;
pub const ECM_PLAIN_LEN: usize = 41;
pub const ECM_BODY_LEN: usize = ECM_PLAIN_LEN + TAG_LEN;
pub const ECM_LEN: usize = ECM_HEADER_LEN + ECM_BODY_LEN;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EcmError {
    #[error("malformed ECM: {0}")]
    Malformed(#[from] InvalidMessage),
    #[error("ECM {0}")]
    Crypto(#[from] CryptoError),
}

/// The clear access criteria: which key opens the ECM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EcmHeader {
    pub product: u32,
    pub generation: u32,
    pub epoch: u64,
    pub service: u16,
}

impl Codec for EcmHeader {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(ECM_VERSION);
        out.extend_from_slice(&self.product.to_be_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.service.to_be_bytes());
        out.extend_from_slice(&(ECM_BODY_LEN as u16).to_be_bytes());
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        let v = r.u8("ECM version")?;
        if v != ECM_VERSION {
            return Err(InvalidMessage::UnknownVersion(v));
        }
        let h = EcmHeader {
            product: r.u32("product")?,
            generation: r.u32("generation")?,
            epoch: r.u64("epoch")?,
            service: r.u16("service")?,
        };
        if r.u16("ECM body length")? as usize != ECM_BODY_LEN {
            return Err(InvalidMessage::BadLength("ECM body"));
        }
        Ok(h)
    }
}

impl EcmHeader {
    pub fn nonce(&self) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[2..4].copy_from_slice(&self.service.to_be_bytes());
        n[4..].copy_from_slice(&self.epoch.to_be_bytes());
        n
    }
    pub fn bytes(&self) -> [u8; ECM_HEADER_LEN] {
        let mut a = [0u8; ECM_HEADER_LEN];
        a.copy_from_slice(&self.to_bytes());
        a
    }
}

/// The sealed content of an ECM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EcmPayload {
    /// `CW_epoch` and `CW_{epoch+1}`, each in its parity's slot.
    pub cws: CwPair,
    /// The headend's clock (Unix seconds); the card checks entitlements at
    /// this time and advances its own clock to it.
    pub time: u64,
    /// Minimum viewer age, 0 for none.
    pub maturity: u8,
}

/// A whole ECM as carried in a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ecm {
    pub header: EcmHeader,
    pub body: [u8; ECM_BODY_LEN],
}

impl Codec for Ecm {
    fn encode(&self, out: &mut Vec<u8>) {
        self.header.encode(out);
        out.extend_from_slice(&self.body);
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        Ok(Ecm {
            header: EcmHeader::read(r)?,
            body: r.array("ECM body")?,
        })
    }
}

impl Ecm {
    /// Seals an ECM with ring (headend side).
    pub fn seal(key: &EcmKey, header: EcmHeader, p: &EcmPayload) -> Ecm {
        let mut buf = Vec::with_capacity(ECM_BODY_LEN);
        buf.extend_from_slice(p.cws.even.expose());
        buf.extend_from_slice(p.cws.odd.expose());
        buf.extend_from_slice(&p.time.to_be_bytes());
        buf.push(p.maturity);
        Sealer::new(key).seal_tail(header.nonce(), &header.bytes(), &mut buf, 0);
        let mut body = [0u8; ECM_BODY_LEN];
        body.copy_from_slice(&buf);
        zeroize::Zeroize::zeroize(&mut buf);
        Ecm { header, body }
    }

    /// Opens an ECM with RustCrypto (card side).
    pub fn open(&self, key: &EcmKey) -> Result<EcmPayload, EcmError> {
        let mut body = self.body;
        let pt = crypto::open_in_place(key, self.header.nonce(), &self.header.bytes(), &mut body)?;
        let mut r = Reader::new(pt);
        let p = EcmPayload {
            cws: CwPair {
                even: ControlWord::from_bytes(r.array("even CW")?),
                odd: ControlWord::from_bytes(r.array("odd CW")?),
            },
            time: r.u64("time")?,
            maturity: r.u8("maturity")?,
        };
        r.expect_empty()?;
        zeroize::Zeroize::zeroize(&mut body);
        Ok(p)
    }
}
