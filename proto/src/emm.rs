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
use crate::crypto::{self, hkdf32, CryptoError, Sealer, SigningKey, KDF_VERSION, SIG_LEN, TAG_LEN};
use crate::sd::{self, CardAddress, CardLabels, SdAuthority, Subset, SUBSET_ID_LEN};
use crate::secret::{Kek, ProductKey, SdLabel, SubsetKey};
use crate::wire_enum;
use subtle::ConstantTimeEq;
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
        /// A product key delivered by Subset Difference: its header.
        SD_KEY = 0x06,
        /// Up to 6 wraps of the SD_KEY just before.
        SD_WRAPS = 0x07,
        /// Part of a card's Subset Difference labels.
        SD_LABELS = 0x08,
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
    /// EMM-G only: a product's period key wrapped under each subset of
    /// (part of) a Subset Difference cover. One SD_KEY command and as
    /// many SD_WRAPS commands as its wraps need.
    SdKey(SdKey),
    /// EMM-U only: some of the card's Subset Difference labels.
    SdLabels(SdLabels),
}

impl EmmCommand {
    fn tag(&self) -> CommandTag {
        match self {
            EmmCommand::Entitle(_) => CommandTag::ENTITLE,
            EmmCommand::Pair { .. } => CommandTag::PAIR,
            EmmCommand::Unpair => CommandTag::UNPAIR,
            EmmCommand::RemoveProduct { .. } => CommandTag::REMOVE_PRODUCT,
            EmmCommand::BlockCards(_) => CommandTag::BLOCK_CARDS,
            EmmCommand::SdKey(_) => CommandTag::SD_KEY,
            EmmCommand::SdLabels(_) => CommandTag::SD_LABELS,
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
        if let EmmCommand::SdKey(k) = self {
            k.encode(out);
            return;
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
            // Written whole, with its SD_WRAPS, above.
            EmmCommand::SdKey(_) => {}
            EmmCommand::SdLabels(l) => {
                out.push(l.depth);
                out.extend_from_slice(&l.address.tree.to_be_bytes());
                out.extend_from_slice(&l.address.leaf.to_be_bytes());
                out.extend_from_slice(&l.first.to_be_bytes());
                for label in &l.labels {
                    out.extend_from_slice(label.expose());
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
            CommandTag::SD_KEY => EmmCommand::SdKey(SdKey::read_rest(&mut v, r)?),
            CommandTag::SD_WRAPS => {
                return Err(InvalidMessage::InvalidValue("SD_WRAPS not after SD_KEY"))
            }
            CommandTag::SD_LABELS => EmmCommand::SdLabels(SdLabels::read(&mut v, len)?),
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

// ------------------------------------------------------- Subset Difference

/// Bytes of the SD_KEY value: `product:u32 ‖ generation:u32 ‖ issue:u64 ‖
/// check[8]`.
pub const SD_KEY_LEN: usize = 24;
/// Bytes of one wrap: `subset id[8] ‖ wrapped K_P[32]`.
pub const SD_WRAP_LEN: usize = SUBSET_ID_LEN + 32;
/// Wraps one SD_WRAPS command carries (its length byte is a u8).
pub const SD_WRAPS_PER_COMMAND: usize = 6;
/// Bytes of the SD_LABELS value before the labels:
/// `depth:u8 ‖ tree:u32 ‖ leaf:u32 ‖ first:u16`.
pub const SD_LABELS_HEADER_LEN: usize = 11;
/// Labels one SD_LABELS command carries.
pub const SD_LABELS_PER_COMMAND: usize = 7;
/// The largest payload of an EMM-U and of an EMM-G.
pub const MAX_EMM_U_PAYLOAD: usize = MAX_BODY_LEN - TAG_LEN;
pub const MAX_EMM_G_PAYLOAD: usize = MAX_BODY_LEN - SIG_LEN;
/// Salts of the wrap key and of the key-check value.
pub const SD_WRAP_SALT: &[u8] = b"iodoform/v1/sd-wrap";
pub const SD_CHECK_SALT: &[u8] = b"iodoform/v1/sd-check";

/// `K_P` wrapped for the cards of one subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdWrap {
    pub subset: Subset,
    /// `K_P ⊕ KW`, KW from [`sd_wrap_key`].
    pub wrapped: [u8; 32],
}

/// A product's period key delivered by Subset Difference: the cards of
/// every subset listed can unwrap it, no other card can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdKey {
    pub product: u32,
    pub generation: u32,
    /// A number the headend never uses for two different keys of one
    /// (product, generation): it enters every wrap key, so that a subset
    /// key, which lives for years, never makes the same pad twice.
    pub issue: u64,
    /// [`sd_check_value`] of the key: lets a card know it unwrapped right.
    pub check: [u8; 8],
    /// At least one.
    pub wraps: Vec<SdWrap>,
}

/// The one-time pad of one wrap:
/// `KW = HKDF(salt = "iodoform/v1/sd-wrap", IKM = subset key,
///            info = 01 ‖ issue:u64 ‖ product:u32 ‖ generation:u32 ‖ subset id[8])`.
pub fn sd_wrap_key(
    key: &SubsetKey,
    issue: u64,
    product: u32,
    generation: u32,
    subset: &Subset,
) -> [u8; 32] {
    let mut info = [0u8; 25];
    info[0] = KDF_VERSION;
    info[1..9].copy_from_slice(&issue.to_be_bytes());
    info[9..13].copy_from_slice(&product.to_be_bytes());
    info[13..17].copy_from_slice(&generation.to_be_bytes());
    info[17..25].copy_from_slice(&subset.to_id());
    hkdf32(SD_WRAP_SALT, key.expose(), &[&info])
}

/// The key-check value: the first 8 bytes of
/// `HKDF(salt = "iodoform/v1/sd-check", IKM = K_P,
///       info = 01 ‖ issue:u64 ‖ product:u32 ‖ generation:u32)`.
pub fn sd_check_value(key: &ProductKey, issue: u64, product: u32, generation: u32) -> [u8; 8] {
    let mut info = [0u8; 17];
    info[0] = KDF_VERSION;
    info[1..9].copy_from_slice(&issue.to_be_bytes());
    info[9..13].copy_from_slice(&product.to_be_bytes());
    info[13..17].copy_from_slice(&generation.to_be_bytes());
    let mut full = hkdf32(SD_CHECK_SALT, key.expose(), &[&info]);
    let mut out = [0u8; 8];
    out.copy_from_slice(&full[..8]);
    zeroize::Zeroize::zeroize(&mut full);
    out
}

fn xor32(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut o = [0u8; 32];
    for (o, (a, b)) in o.iter_mut().zip(a.iter().zip(b)) {
        *o = a ^ b;
    }
    o
}

impl SdKey {
    /// Headend: wraps `key` under every subset of `cover`.
    pub fn wrap(
        authority: &SdAuthority,
        cover: &[Subset],
        product: u32,
        generation: u32,
        issue: u64,
        key: &ProductKey,
    ) -> SdKey {
        let wraps = cover
            .iter()
            .map(|s| {
                let mut kw = sd_wrap_key(&authority.subset_key(s), issue, product, generation, s);
                let wrapped = xor32(key.expose(), &kw);
                zeroize::Zeroize::zeroize(&mut kw);
                SdWrap {
                    subset: *s,
                    wrapped,
                }
            })
            .collect();
        SdKey {
            product,
            generation,
            issue,
            check: sd_check_value(key, issue, product, generation),
            wraps,
        }
    }

    /// Card: unwraps wrap `index` with its subset's key and checks the
    /// result against the key-check value.
    pub fn unwrap(&self, index: usize, key: &SubsetKey) -> Result<ProductKey, CryptoError> {
        let w = self.wraps.get(index).ok_or(CryptoError::Auth)?;
        let mut kw = sd_wrap_key(key, self.issue, self.product, self.generation, &w.subset);
        let k = ProductKey::from_bytes(xor32(&w.wrapped, &kw));
        zeroize::Zeroize::zeroize(&mut kw);
        let check = sd_check_value(&k, self.issue, self.product, self.generation);
        if bool::from(check.ct_eq(&self.check)) {
            Ok(k)
        } else {
            Err(CryptoError::Auth)
        }
    }

    /// Card: finds the wrap for the card with these labels and unwraps it.
    /// `None` if the card is in no subset listed (or lacks the label).
    pub fn open_with<'l>(
        &self,
        forest: sd::Forest,
        address: CardAddress,
        entry: impl Fn(usize) -> Option<&'l SdLabel>,
    ) -> Option<Result<ProductKey, CryptoError>> {
        let (n, key) =
            sd::find_and_derive(forest, address, self.wraps.iter().map(|w| &w.subset), entry)?;
        Some(self.unwrap(n, &key))
    }

    /// [`SdKey::open_with`] for a [`CardLabels`].
    pub fn open(&self, labels: &CardLabels) -> Option<Result<ProductKey, CryptoError>> {
        self.open_with(labels.forest(), labels.address(), |n| {
            labels.entries().get(n)
        })
    }

    /// Bytes of the commands for `wraps` wraps.
    pub fn encoded_len(wraps: usize) -> usize {
        2 + SD_KEY_LEN + wraps * SD_WRAP_LEN + 2 * wraps.div_ceil(SD_WRAPS_PER_COMMAND)
    }

    /// The most wraps whose commands fit in `room` bytes.
    pub fn wraps_fitting(room: usize) -> usize {
        let full = 2 + SD_WRAPS_PER_COMMAND * SD_WRAP_LEN;
        let Some(room) = room.checked_sub(2 + SD_KEY_LEN) else {
            return 0;
        };
        let tail = (room % full).saturating_sub(2) / SD_WRAP_LEN;
        (room / full) * SD_WRAPS_PER_COMMAND + tail.min(SD_WRAPS_PER_COMMAND - 1)
    }

    /// The EMM-G payloads (to be signed with [`Emm::sign_global`], one
    /// sequence number each) that carry this delivery: each holds an
    /// SD_KEY with as many of the wraps as fit in one EMM-G.
    pub fn payloads(&self, time: u64) -> Vec<EmmPayload> {
        let per = Self::wraps_fitting(MAX_EMM_G_PAYLOAD - 8).max(1);
        self.wraps
            .chunks(per)
            .map(|chunk| EmmPayload {
                time,
                commands: vec![EmmCommand::SdKey(SdKey {
                    wraps: chunk.to_vec(),
                    ..self.clone()
                })],
            })
            .collect()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push(CommandTag::SD_KEY.0);
        out.push(SD_KEY_LEN as u8);
        out.extend_from_slice(&self.product.to_be_bytes());
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.issue.to_be_bytes());
        out.extend_from_slice(&self.check);
        for chunk in self.wraps.chunks(SD_WRAPS_PER_COMMAND) {
            out.push(CommandTag::SD_WRAPS.0);
            out.push((chunk.len() * SD_WRAP_LEN) as u8);
            for w in chunk {
                out.extend_from_slice(&w.subset.to_id());
                out.extend_from_slice(&w.wrapped);
            }
        }
    }

    /// The SD_KEY value in `v`, then the SD_WRAPS commands that follow it
    /// in `r`: all full (6 wraps) but the last, at least one.
    fn read_rest(v: &mut Reader<'_>, r: &mut Reader<'_>) -> Result<SdKey, InvalidMessage> {
        let mut k = SdKey {
            product: v.u32("product")?,
            generation: v.u32("generation")?,
            issue: v.u64("issue")?,
            check: v.array("key check value")?,
            wraps: Vec::new(),
        };
        loop {
            let mut peek = r.clone();
            if peek.left() == 0 || CommandTag(peek.u8("command tag")?) != CommandTag::SD_WRAPS {
                break;
            }
            if k.wraps.len() % SD_WRAPS_PER_COMMAND != 0 {
                return Err(InvalidMessage::BadLength("SD_WRAPS after a short one"));
            }
            r.u8("command tag")?;
            let len = r.u8("command length")? as usize;
            let n = len / SD_WRAP_LEN;
            if len % SD_WRAP_LEN != 0 || !(1..=SD_WRAPS_PER_COMMAND).contains(&n) {
                return Err(InvalidMessage::BadLength("SD_WRAPS"));
            }
            let mut w = r.sub(len, "SD_WRAPS value")?;
            for _ in 0..n {
                let subset = Subset::from_id(&w.array("subset id")?)?;
                k.wraps.push(SdWrap {
                    subset,
                    wrapped: w.array("wrapped key")?,
                });
            }
        }
        if k.wraps.is_empty() {
            return Err(InvalidMessage::InvalidValue("SD_KEY without SD_WRAPS"));
        }
        Ok(k)
    }
}

/// Some of one card's Subset Difference entries (labels, then the
/// whole-tree key, in [`sd::Forest::label_index`] order), from entry
/// `first` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdLabels {
    pub depth: u8,
    pub address: CardAddress,
    pub first: u16,
    /// 1 to [`SD_LABELS_PER_COMMAND`].
    pub labels: Vec<SdLabel>,
}

impl SdLabels {
    /// The SD_LABELS commands that deliver all of a card's entries.
    pub fn for_card(labels: &CardLabels) -> Vec<EmmCommand> {
        labels
            .entries()
            .chunks(SD_LABELS_PER_COMMAND)
            .enumerate()
            .map(|(n, chunk)| {
                EmmCommand::SdLabels(SdLabels {
                    depth: labels.forest().depth(),
                    address: labels.address(),
                    first: (n * SD_LABELS_PER_COMMAND) as u16,
                    labels: chunk.to_vec(),
                })
            })
            .collect()
    }

    fn read(v: &mut Reader<'_>, len: usize) -> Result<SdLabels, InvalidMessage> {
        let n = len.saturating_sub(SD_LABELS_HEADER_LEN) / 32;
        if len < SD_LABELS_HEADER_LEN + 32
            || (len - SD_LABELS_HEADER_LEN) % 32 != 0
            || n > SD_LABELS_PER_COMMAND
        {
            return Err(InvalidMessage::BadLength("SD_LABELS"));
        }
        let depth = v.u8("depth")?;
        let forest =
            sd::Forest::new(depth).map_err(|_| InvalidMessage::InvalidValue("SD tree depth"))?;
        let address = CardAddress {
            tree: v.u32("tree")?,
            leaf: v.u32("leaf")?,
        };
        forest
            .check(address)
            .map_err(|_| InvalidMessage::InvalidValue("SD card address"))?;
        let first = v.u16("first label")?;
        if usize::from(first) + n > forest.card_entries() {
            return Err(InvalidMessage::InvalidValue("SD label index"));
        }
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            labels.push(SdLabel::from_bytes(v.array("label")?));
        }
        Ok(SdLabels {
            depth,
            address,
            first,
            labels,
        })
    }
}

/// Packs commands, in order, into as few payloads of at most `max` bytes
/// as a greedy fill gives (`MAX_EMM_U_PAYLOAD`, `MAX_EMM_G_PAYLOAD`).
/// A command longer than `max` on its own gets a payload of its own.
pub fn pack_payloads(time: u64, commands: Vec<EmmCommand>, max: usize) -> Vec<EmmPayload> {
    let mut out = Vec::new();
    let mut cur = EmmPayload {
        time,
        commands: Vec::new(),
    };
    let mut used = 8;
    for c in commands {
        let len = c.to_bytes().len();
        if used + len > max && !cur.commands.is_empty() {
            out.push(std::mem::replace(
                &mut cur,
                EmmPayload {
                    time,
                    commands: Vec::new(),
                },
            ));
            used = 8;
        }
        used += len;
        cur.commands.push(c);
    }
    if !cur.commands.is_empty() {
        out.push(cur);
    }
    out
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
