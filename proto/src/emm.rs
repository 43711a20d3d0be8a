//! Entitlement management messages.
//!
//! Layout (all integers big-endian; see `docs/PROTOCOL.md`):
//!
//! ```text
//! off len field
//!   0   1 kind        0x01 EMM-U (one card), 0x02 EMM-G (all cards)
//!   1   1 version     0x01
//!   2   4 address     card id, or 0xFFFFFFFF for EMM-G  <- receivers filter here
//!   6   8 seq         per-kind sequence number, strictly increasing
//!  14   2 body_len
//!  16   n body        EMM-U: ChaCha20-Poly1305(payload) ‖ tag16, AAD = bytes 0..16
//!                     EMM-G: payload ‖ Ed25519 signature over bytes 0..16+len(payload)
//! ```
//!
//! The payload is `time:u64` followed by commands, each `tag:u8 len:u8 value`.
//! Parsing never panics; opening checks authenticity before any command is
//! looked at.

use crate::codec::{Codec, InvalidMessage, Reader};
use crate::crypto::{self, CryptoError, Sealer, SigningKey, SIG_LEN, TAG_LEN};
use crate::secret::{Kek, ProductKey};
use crate::wire_enum;
use thiserror::Error;

pub const EMM_VERSION: u8 = 1;
pub const EMM_HEADER_LEN: usize = 16;
/// Offset of the 32-bit card address inside the EMM, for receiver filters.
pub const ADDRESS_OFFSET: usize = 2;
/// The address of an EMM-G.
pub const GLOBAL_ADDRESS: u32 = 0xFFFF_FFFF;
/// The largest EMM body (so the whole EMM fits an extended APDU and a
/// private section).
pub const MAX_BODY_LEN: usize = 4000;

wire_enum! {
    /// The first byte of an EMM.
    EmmKind(u8) {
        /// Addressed to one card, sealed under its KEK.
        UNIQUE = 0x01,
        /// For every card, signed by the operator.
        GLOBAL = 0x02,
    }
}

wire_enum! {
    /// The tag of a command inside an EMM payload.
    CommandTag(u8) {
        ENTITLE = 0x01,
        PAIR = 0x02,
        UNPAIR = 0x03,
        REMOVE_PRODUCT = 0x04,
        BLOCK_CARDS = 0x05,
    }
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EmmError {
    #[error("malformed EMM: {0}")]
    Malformed(#[from] InvalidMessage),
    #[error("EMM {0}")]
    Crypto(#[from] CryptoError),
    #[error("wrong EMM kind {0:?} for this operation")]
    WrongKind(EmmKind),
}

/// The subscriber's right to a product, with the product's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitle {
    pub product: u32,
    pub generation: u32,
    /// Unix seconds, inclusive.
    pub start: u64,
    /// Unix seconds, inclusive.
    pub end: u64,
    pub key: ProductKey,
}

/// One instruction to the card.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmmCommand {
    /// Grant or renew a product and give its current period key.
    Entitle(Entitle),
    /// Seal control words only to this receiver's static key.
    Pair { receiver: [u8; 32] },
    /// Leave pairing mode.
    Unpair,
    /// Forget a product.
    RemoveProduct { product: u32 },
    /// EMM-G only: the listed cards wipe their entitlements.
    BlockCards(Vec<u32>),
}

impl EmmCommand {
    fn tag(&self) -> CommandTag {
        match self {
            EmmCommand::Entitle(_) => CommandTag::ENTITLE,
            EmmCommand::Pair { .. } => CommandTag::PAIR,
            EmmCommand::Unpair => CommandTag::UNPAIR,
            EmmCommand::RemoveProduct { .. } => CommandTag::REMOVE_PRODUCT,
            EmmCommand::BlockCards(_) => CommandTag::BLOCK_CARDS,
        }
    }
}

/// Card ids one BLOCK_CARDS command carries (its length byte is a u8).
pub const MAX_BLOCK_CARDS: usize = 63;

impl Codec for EmmCommand {
    fn encode(&self, out: &mut Vec<u8>) {
        // A longer list is written as several BLOCK_CARDS commands, which
        // the card applies one after another: nothing is dropped.
        if let EmmCommand::BlockCards(ids) = self {
            if ids.len() > MAX_BLOCK_CARDS {
                for chunk in ids.chunks(MAX_BLOCK_CARDS) {
                    EmmCommand::BlockCards(chunk.to_vec()).encode(out);
                }
                return;
            }
        }
        out.push(self.tag().0);
        let len_at = out.len();
        out.push(0);
        match self {
            EmmCommand::Entitle(e) => {
                out.extend_from_slice(&e.product.to_be_bytes());
                out.extend_from_slice(&e.generation.to_be_bytes());
                out.extend_from_slice(&e.start.to_be_bytes());
                out.extend_from_slice(&e.end.to_be_bytes());
                out.extend_from_slice(e.key.expose());
            }
            EmmCommand::Pair { receiver } => out.extend_from_slice(receiver),
            EmmCommand::Unpair => {}
            EmmCommand::RemoveProduct { product } => out.extend_from_slice(&product.to_be_bytes()),
            EmmCommand::BlockCards(ids) => {
                for id in ids {
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
        }
        out[len_at] = (out.len() - len_at - 1) as u8;
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        let tag = CommandTag(r.u8("command tag")?);
        let len = r.u8("command length")? as usize;
        let mut v = r.sub(len, "command value")?;
        let cmd = match tag {
            CommandTag::ENTITLE => EmmCommand::Entitle(Entitle {
                product: v.u32("product")?,
                generation: v.u32("generation")?,
                start: v.u64("start")?,
                end: v.u64("end")?,
                key: ProductKey::from_bytes(v.array("product key")?),
            }),
            CommandTag::PAIR => EmmCommand::Pair {
                receiver: v.array("receiver key")?,
            },
            CommandTag::UNPAIR => EmmCommand::Unpair,
            CommandTag::REMOVE_PRODUCT => EmmCommand::RemoveProduct {
                product: v.u32("product")?,
            },
            CommandTag::BLOCK_CARDS => {
                if len % 4 != 0 {
                    return Err(InvalidMessage::BadLength("card list"));
                }
                let mut ids = Vec::with_capacity(len / 4);
                while v.left() > 0 {
                    ids.push(v.u32("card id")?);
                }
                EmmCommand::BlockCards(ids)
            }
            other => return Err(InvalidMessage::UnknownCommand(other.0)),
        };
        v.expect_empty()?;
        if let EmmCommand::Entitle(e) = &cmd {
            if e.start > e.end {
                return Err(InvalidMessage::InvalidValue("entitlement dates"));
            }
        }
        Ok(cmd)
    }
}

/// The clear content of an EMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmmPayload {
    /// The headend's clock when it wrote the EMM (Unix seconds).
    pub time: u64,
    pub commands: Vec<EmmCommand>,
}

impl Codec for EmmPayload {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.time.to_be_bytes());
        for c in &self.commands {
            c.encode(out);
        }
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        let time = r.u64("time")?;
        let mut commands = Vec::new();
        while r.left() > 0 {
            commands.push(EmmCommand::read(r)?);
        }
        Ok(EmmPayload { time, commands })
    }
}

/// An EMM as carried on the air: header fields and the opaque body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emm {
    pub kind: EmmKind,
    pub address: u32,
    pub seq: u64,
    pub body: Vec<u8>,
}

impl Codec for Emm {
    fn encode(&self, out: &mut Vec<u8>) {
        write_header(out, self.kind, self.address, self.seq, self.body.len());
        out.extend_from_slice(&self.body);
    }
    fn read(r: &mut Reader<'_>) -> Result<Self, InvalidMessage> {
        let kind = EmmKind(r.u8("EMM kind")?);
        if kind != EmmKind::UNIQUE && kind != EmmKind::GLOBAL {
            return Err(InvalidMessage::UnknownKind(kind.0));
        }
        let version = r.u8("EMM version")?;
        if version != EMM_VERSION {
            return Err(InvalidMessage::UnknownVersion(version));
        }
        let address = r.u32("EMM address")?;
        let seq = r.u64("EMM sequence")?;
        let len = r.u16("EMM body length")? as usize;
        let min = if kind == EmmKind::UNIQUE {
            TAG_LEN
        } else {
            SIG_LEN
        };
        if !(min + 8..=MAX_BODY_LEN).contains(&len) {
            return Err(InvalidMessage::BadLength("EMM body"));
        }
        let body = r.take(len, "EMM body")?.to_vec();
        Ok(Emm {
            kind,
            address,
            seq,
            body,
        })
    }
}

fn write_header(out: &mut Vec<u8>, kind: EmmKind, address: u32, seq: u64, body_len: usize) {
    out.push(kind.0);
    out.push(EMM_VERSION);
    out.extend_from_slice(&address.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(body_len as u16).to_be_bytes());
}

/// The nonce of an EMM-U. `KEK_card` is unique to one card and the
/// headend never reuses a sequence number for a card, so (key, nonce)
/// never repeats.
pub fn emm_u_nonce(seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[0] = EmmKind::UNIQUE.0;
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

impl Emm {
    /// Writes a sealed EMM-U for `card_id` to `out` (appending), with no
    /// intermediate allocation. This is the headend's hot path.
    pub fn seal_unique_into(
        sealer: &Sealer,
        card_id: u32,
        seq: u64,
        payload: &EmmPayload,
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        write_header(out, EmmKind::UNIQUE, card_id, seq, 0);
        payload.encode(out);
        let body_len = out.len() - start - EMM_HEADER_LEN + TAG_LEN;
        out[start + 14..start + 16].copy_from_slice(&(body_len as u16).to_be_bytes());
        let (head, _) = out.split_at(start + EMM_HEADER_LEN);
        let mut aad = [0u8; EMM_HEADER_LEN];
        aad.copy_from_slice(&head[start..]);
        sealer.seal_tail(emm_u_nonce(seq), &aad, out, start + EMM_HEADER_LEN);
    }

    /// A sealed EMM-U as bytes.
    pub fn seal_unique(kek: &Kek, card_id: u32, seq: u64, payload: &EmmPayload) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        Self::seal_unique_into(&Sealer::new(kek), card_id, seq, payload, &mut out);
        out
    }

    /// A signed EMM-G as bytes.
    pub fn sign_global(key: &SigningKey, seq: u64, payload: &EmmPayload) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        write_header(&mut out, EmmKind::GLOBAL, GLOBAL_ADDRESS, seq, 0);
        payload.encode(&mut out);
        let body_len = out.len() - EMM_HEADER_LEN + SIG_LEN;
        out[14..16].copy_from_slice(&(body_len as u16).to_be_bytes());
        let sig = key.sign(&out);
        out.extend_from_slice(&sig);
        out
    }

    fn header_bytes(&self) -> [u8; EMM_HEADER_LEN] {
        let mut h = Vec::with_capacity(EMM_HEADER_LEN);
        write_header(&mut h, self.kind, self.address, self.seq, self.body.len());
        let mut a = [0u8; EMM_HEADER_LEN];
        a.copy_from_slice(&h);
        a
    }

    /// Opens an EMM-U with the card's KEK (RustCrypto, card side).
    pub fn open_unique(&self, kek: &Kek) -> Result<EmmPayload, EmmError> {
        if self.kind != EmmKind::UNIQUE {
            return Err(EmmError::WrongKind(self.kind));
        }
        let mut body = self.body.clone();
        let pt =
            crypto::open_in_place(kek, emm_u_nonce(self.seq), &self.header_bytes(), &mut body)?;
        let payload = EmmPayload::from_bytes(pt);
        zeroize::Zeroize::zeroize(&mut body);
        Ok(payload?)
    }

    /// Verifies an EMM-G against the operator's Ed25519 public key.
    pub fn verify_global(&self, operator: &[u8; 32]) -> Result<EmmPayload, EmmError> {
        if self.kind != EmmKind::GLOBAL {
            return Err(EmmError::WrongKind(self.kind));
        }
        let split = self
            .body
            .len()
            .checked_sub(SIG_LEN)
            .ok_or(InvalidMessage::BadLength("EMM-G body"))?;
        let (payload, sig) = self.body.split_at(split);
        let mut signed = self.header_bytes().to_vec();
        signed.extend_from_slice(payload);
        crypto::verify_signature(operator, &signed, sig)?;
        Ok(EmmPayload::from_bytes(payload)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_block_lists_are_split_not_truncated() {
        let ids: Vec<u32> = (0..200).collect();
        let p = EmmPayload {
            time: 1,
            commands: vec![EmmCommand::BlockCards(ids.clone())],
        };
        let back = EmmPayload::from_bytes(&p.to_bytes()).unwrap();
        let all: Vec<u32> = back
            .commands
            .iter()
            .flat_map(|c| match c {
                EmmCommand::BlockCards(v) => v.clone(),
                _ => vec![],
            })
            .collect();
        assert_eq!(all, ids);
        assert_eq!(back.commands.len(), 4);
    }
}
