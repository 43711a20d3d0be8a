//! The data fields of the applet's commands and responses (APDU bodies).
//! Layouts are in `docs/PROTOCOL.md`; each type here is that layout.

use crate::codec::{Codec, InvalidMessage, Reader};
use crate::crypto::{self, CryptoError, SessionInit, TAG_LEN};
use crate::ecm::EcmHeader;
use crate::secret::{ControlWord, CwPair, SessionKey};
use crate::wire_enum;

/// Version of the applet's command set, reported by GET INFO.
pub const APPLET_VERSION: u8 = 1;

wire_enum! {
    /// The card's life-cycle state.
    LifeCycle(u8) {
        BLANK = 0,
        PERSONALIZED = 1,
        LOCKED = 2,
    }
}

/// PERSONALIZE data: what the factory writes into a blank card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Personalization {
    pub card_id: u32,
    pub operator_id: u32,
    /// The headend's X25519 public key (for `KEK_card`).
    pub operator_kex: [u8; 32],
    /// The headend's Ed25519 public key (for signed EMMs).
    pub operator_sig: [u8; 32],
}

impl Codec for Personalization {
    fn encode(&self, out: &mut Vec<u8>) {
        self.card_id.encode(out);
        self.operator_id.encode(out);
        self.operator_kex.encode(out);
        self.operator_sig.encode(out);
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        let p = Personalization {
            card_id: r.u32("card id")?,
            operator_id: r.u32("operator id")?,
            operator_kex: r.array("operator X25519 key")?,
            operator_sig: r.array("operator Ed25519 key")?,
        };
        if p.card_id == 0 || p.card_id == crate::emm::GLOBAL_ADDRESS {
            return Err(InvalidMessage::InvalidValue("card id"));
        }
        Ok(p)
    }
}

/// GET INFO response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardInfo {
    pub applet_version: u8,
    pub state: LifeCycle,
    /// Zero while blank.
    pub card_id: u32,
    pub operator_id: u32,
    /// The card's X25519 public key; zero while blank.
    pub public_key: [u8; 32],
    pub operator_kex: [u8; 32],
    pub operator_sig: [u8; 32],
    /// The card's clock (Unix seconds).
    pub clock: u64,
    pub emm_u_seq: u64,
    pub emm_g_seq: u64,
    pub paired_receiver: Option<[u8; 32]>,
    pub entitlements: u8,
}

impl Codec for CardInfo {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.applet_version);
        out.push(self.state.0);
        self.card_id.encode(out);
        self.operator_id.encode(out);
        self.public_key.encode(out);
        self.operator_kex.encode(out);
        self.operator_sig.encode(out);
        self.clock.encode(out);
        self.emm_u_seq.encode(out);
        self.emm_g_seq.encode(out);
        match &self.paired_receiver {
            Some(k) => {
                out.push(1);
                k.encode(out);
            }
            None => {
                out.push(0);
                [0u8; 32].encode(out);
            }
        }
        out.push(self.entitlements);
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        let applet_version = r.u8("applet version")?;
        let state = LifeCycle(r.u8("state")?);
        let card_id = r.u32("card id")?;
        let operator_id = r.u32("operator id")?;
        let public_key = r.array("public key")?;
        let operator_kex = r.array("operator X25519 key")?;
        let operator_sig = r.array("operator Ed25519 key")?;
        let clock = r.u64("clock")?;
        let emm_u_seq = r.u64("EMM-U seq")?;
        let emm_g_seq = r.u64("EMM-G seq")?;
        let paired = r.u8("paired flag")?;
        let key: [u8; 32] = r.array("paired receiver")?;
        let paired_receiver = match paired {
            0 => None,
            1 => Some(key),
            _ => return Err(InvalidMessage::InvalidValue("paired flag")),
        };
        Ok(CardInfo {
            applet_version,
            state,
            card_id,
            operator_id,
            public_key,
            operator_kex,
            operator_sig,
            clock,
            emm_u_seq,
            emm_g_seq,
            paired_receiver,
            entitlements: r.u8("entitlement count")?,
        })
    }
}

impl Codec for SessionInit {
    fn encode(&self, out: &mut Vec<u8>) {
        self.receiver_static.encode(out);
        self.receiver_ephemeral.encode(out);
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        Ok(SessionInit {
            receiver_static: r.array("receiver static key")?,
            receiver_ephemeral: r.array("receiver ephemeral key")?,
        })
    }
}

/// One entitlement as LIST ENTITLEMENTS reports it (never the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntitlementRecord {
    pub product: u32,
    pub generation: u32,
    pub start: u64,
    pub end: u64,
}

impl Codec for EntitlementRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        self.product.encode(out);
        self.generation.encode(out);
        self.start.encode(out);
        self.end.encode(out);
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        Ok(EntitlementRecord {
            product: r.u32("product")?,
            generation: r.u32("generation")?,
            start: r.u64("start")?,
            end: r.u64("end")?,
        })
    }
}

/// Entitlement records per LIST ENTITLEMENTS page.
pub const ENTITLEMENTS_PER_PAGE: usize = 8;

/// LIST ENTITLEMENTS response: `total:u8 ‖ count:u8 ‖ records`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitlementPage {
    pub total: u8,
    pub records: Vec<EntitlementRecord>,
}

impl Codec for EntitlementPage {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.total);
        out.push(self.records.len() as u8);
        for r in &self.records {
            r.encode(out);
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        let total = r.u8("total")?;
        let count = r.u8("count")? as usize;
        if count > ENTITLEMENTS_PER_PAGE {
            return Err(InvalidMessage::BadLength("entitlement page"));
        }
        let records = (0..count)
            .map(|_| EntitlementRecord::read(r))
            .collect::<Result<_, _>>()?;
        Ok(EntitlementPage { total, records })
    }
}

/// Length of a PROCESS ECM response.
pub const CW_REPLY_LEN: usize = 8 + CW_PLAIN_LEN + TAG_LEN;
const CW_PLAIN_LEN: usize = 40;

/// The control words the card releases, in clear (inside the receiver only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlWords {
    /// The ECM's pair: `CW_epoch` and `CW_{epoch+1}`, each in its
    /// parity's slot.
    pub cws: CwPair,
    /// The ECM's time.
    pub time: u64,
}

fn cw_nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[0] = b'C';
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

fn cw_aad(counter: u64, ecm: &EcmHeader) -> [u8; 29] {
    let mut a = [0u8; 29];
    a[..8].copy_from_slice(&counter.to_be_bytes());
    a[8..].copy_from_slice(&ecm.bytes());
    a
}

/// PROCESS ECM response: `counter:u64 ‖ ChaCha20-Poly1305(even ‖ odd ‖ time) ‖ tag`,
/// under the session key, with nonce `'C' 00 00 00 ‖ counter` and AAD
/// `counter ‖ ECM header`. The counter starts at 0 for every session and
/// the session key is fresh per session, so (key, nonce) never repeats.
pub fn seal_control_words(
    key: &SessionKey,
    counter: u64,
    ecm: &EcmHeader,
    cw: &ControlWords,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(CW_REPLY_LEN);
    out.extend_from_slice(&counter.to_be_bytes());
    out.extend_from_slice(cw.cws.even.expose());
    out.extend_from_slice(cw.cws.odd.expose());
    out.extend_from_slice(&cw.time.to_be_bytes());
    crypto::seal_rustcrypto(key, cw_nonce(counter), &cw_aad(counter, ecm), &mut out, 8);
    out
}

/// Receiver side of [`seal_control_words`]. Returns the counter and the CWs.
pub fn open_control_words(
    key: &SessionKey,
    ecm: &EcmHeader,
    reply: &[u8],
) -> Result<(u64, ControlWords), CryptoError> {
    if reply.len() != CW_REPLY_LEN {
        return Err(CryptoError::Auth);
    }
    let mut buf = [0u8; CW_REPLY_LEN];
    buf.copy_from_slice(reply);
    let counter = u64::from_be_bytes(buf[..8].try_into().map_err(|_| CryptoError::Auth)?);
    let pt = crypto::open_in_place(key, cw_nonce(counter), &cw_aad(counter, ecm), &mut buf[8..])?;
    let mut even = [0u8; 16];
    let mut odd = [0u8; 16];
    even.copy_from_slice(&pt[..16]);
    odd.copy_from_slice(&pt[16..32]);
    let time = u64::from_be_bytes(pt[32..40].try_into().map_err(|_| CryptoError::Auth)?);
    let cws = ControlWords {
        cws: CwPair {
            even: ControlWord::from_bytes(even),
            odd: ControlWord::from_bytes(odd),
        },
        time,
    };
    zeroize::Zeroize::zeroize(&mut buf);
    zeroize::Zeroize::zeroize(&mut even);
    zeroize::Zeroize::zeroize(&mut odd);
    Ok((counter, cws))
}
