//! The key engine: cards, products, entitlements and the messages made
//! from them.
//!
//! Nonce discipline, which this module exists to enforce:
//! * EMM-U: the nonce is the card's sequence number under the card's own
//!   KEK. Each card's counter only increases, survives the card's removal
//!   (a re-registered card resumes where it stopped) and is never reset.
//! * EMM-G: signed, not sealed; a global counter keeps cards' replay
//!   checks working.
//! * ECM: the nonce is (service, epoch) under a key unique to
//!   (product, generation, epoch). The engine remembers the last ECM it
//!   sealed per (product, generation, service): the same epoch again gives
//!   the identical bytes, other content for it or an older epoch is refused.
//!
//! The EMM-U path ([`KeyEngine::write_emm_u_into`],
//! [`KeyEngine::emm_u_batch`]) is the hot one: each card's KEK is derived
//! once, when it is added, and kept in a 64-byte record in a dense table
//! (see `cards.rs`); the payload is built in a reused buffer and the EMM
//! is sealed with ring straight into the caller's buffer, so that nothing
//! is allocated per message.

use crate::cards::{Card, CardTable, IdMap};
use crate::error::EngineError;
use crate::operator::OperatorKeys;
use proto::crypto::{Sealer, SIG_LEN, TAG_LEN};
use proto::ecm::{Ecm, EcmHeader, EcmPayload};
use proto::emm::{
    Emm, EmmCommand, EmmPayload, Entitle, EMM_HEADER_LEN, GLOBAL_ADDRESS, MAX_BODY_LEN,
};
use proto::secret::{CwPair, Kek, ProductKey};
use proto::Codec;
use std::collections::HashMap;
use zeroize::Zeroize;

/// Products one card can hold: the card applet's capacity. An EMM-U that
/// would give a card more is refused by the card as a whole.
pub const MAX_ENTITLEMENTS_PER_CARD: usize = 32;

/// Encoded size of one ENTITLE command: tag, length, then product,
/// generation, start, end and the 32-byte key.
const ENTITLE_LEN: usize = 2 + 4 + 4 + 8 + 8 + 32;

/// The ids in one BLOCK CARDS command (its length field is one byte).
const BLOCK_IDS_PER_COMMAND: usize = 63;

/// A subscriber's right to a product, in Unix seconds (both inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entitlement {
    pub product: u32,
    pub start: u64,
    pub end: u64,
}

/// A card whose KEK is derived but which is not yet in the engine.
/// [`KeyEngine::prepare_card`] takes `&self`, so many threads can derive
/// KEKs at once (one X25519 each, the slow part of loading millions of
/// cards) before [`KeyEngine::insert_card`] adds them one by one.
#[derive(Debug)]
pub struct PreparedCard {
    id: u32,
    public: [u8; 32],
    operator_kex: [u8; 32],
    kek: Kek,
}

impl PreparedCard {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The derived KEK, for sealed storage only.
    pub fn kek(&self) -> &Kek {
        &self.kek
    }
}

#[derive(Debug)]
struct Generation {
    number: u32,
    key: ProductKey,
}

#[derive(Debug)]
struct Product {
    current: Generation,
    previous: Option<Generation>,
}

impl Product {
    fn key(&self, generation: u32) -> Option<&ProductKey> {
        if self.current.number == generation {
            return Some(&self.current.key);
        }
        match &self.previous {
            Some(p) if p.number == generation => Some(&p.key),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct SealedEcm {
    epoch: u64,
    payload: EcmPayload,
    ecm: Ecm,
}

/// The headend's keys and subscriber state, and the messages made from
/// them. It does no I/O; see the crate docs.
pub struct KeyEngine {
    operator: OperatorKeys,
    /// The operator's X25519 public key, computed once (each computation
    /// is a scalar multiplication).
    operator_kex: [u8; 32],
    cards: CardTable,
    /// Sequence numbers of removed cards, so that a card registered again
    /// never reuses a nonce under its KEK.
    retired_seq: IdMap<u64>,
    products: IdMap<Product>,
    emm_g_seq: u64,
    ecms: HashMap<(u32, u32, u16), SealedEcm>,
    /// Reused payload for the EMM-U hot path, so it allocates nothing.
    scratch: EmmPayload,
    /// Reused card slots for [`KeyEngine::emm_u_batch`].
    batch_slots: Vec<usize>,
}

/// A summary: with millions of cards, a field-by-field dump would be
/// useless, and it keeps even redacted key fields out of logs.
impl std::fmt::Debug for KeyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEngine")
            .field("operator_id", &self.operator.operator_id())
            .field("cards", &self.cards.len())
            .field("products", &self.products.len())
            .field("emm_g_seq", &self.emm_g_seq)
            .finish_non_exhaustive()
    }
}

impl KeyEngine {
    pub fn new(operator: OperatorKeys) -> Self {
        KeyEngine {
            operator_kex: operator.kex().public(),
            operator,
            cards: CardTable::default(),
            retired_seq: IdMap::default(),
            products: IdMap::default(),
            emm_g_seq: 0,
            ecms: HashMap::new(),
            scratch: EmmPayload {
                time: 0,
                commands: Vec::with_capacity(MAX_ENTITLEMENTS_PER_CARD),
            },
            batch_slots: Vec::new(),
        }
    }

    pub fn operator(&self) -> &OperatorKeys {
        &self.operator
    }

    // ---- cards -------------------------------------------------------

    /// Derives a card's KEK without changing the engine.
    pub fn prepare_card(
        &self,
        card_id: u32,
        card_pub: [u8; 32],
    ) -> Result<PreparedCard, EngineError> {
        if card_id == 0 || card_id == GLOBAL_ADDRESS {
            return Err(EngineError::InvalidCardId(card_id));
        }
        let kek =
            Kek::derive_headend(self.operator.kex(), card_id, &card_pub).map_err(|source| {
                EngineError::CardKey {
                    card: card_id,
                    source,
                }
            })?;
        Ok(PreparedCard {
            id: card_id,
            public: card_pub,
            operator_kex: self.operator_kex,
            kek,
        })
    }

    /// A card whose KEK was derived earlier and kept sealed at rest: the
    /// daemon loads millions of cards this way without one X25519
    /// agreement each. The caller vouches that `kek` belongs to
    /// (`card_id`, `card_pub`) under this engine's operator key.
    pub fn prepare_stored_card(
        &self,
        card_id: u32,
        card_pub: [u8; 32],
        kek: Kek,
    ) -> Result<PreparedCard, EngineError> {
        if card_id == 0 || card_id == GLOBAL_ADDRESS {
            return Err(EngineError::InvalidCardId(card_id));
        }
        Ok(PreparedCard {
            id: card_id,
            public: card_pub,
            operator_kex: self.operator_kex,
            kek,
        })
    }

    /// Adds a card prepared by [`KeyEngine::prepare_card`].
    pub fn insert_card(&mut self, card: PreparedCard) -> Result<(), EngineError> {
        if card.operator_kex != self.operator_kex {
            return Err(EngineError::ForeignPreparedCard(card.id));
        }
        if self.cards.contains(card.id) {
            return Err(EngineError::CardExists(card.id));
        }
        let last_seq = self.retired_seq.remove(&card.id).unwrap_or(0);
        self.cards.insert(
            card.id,
            card.public,
            Card {
                kek: card.kek,
                last_seq,
                entitlements: Vec::new(),
            },
        );
        Ok(())
    }

    /// Registers a card by its id and X25519 public key.
    pub fn add_card(&mut self, card_id: u32, card_pub: [u8; 32]) -> Result<(), EngineError> {
        let prepared = self.prepare_card(card_id, card_pub)?;
        self.insert_card(prepared)
    }

    /// Removes a card and returns the entitlements it had. Each of their
    /// products should get a new key ([`KeyEngine::renew_product_key`]),
    /// since the card still holds the current one.
    pub fn remove_card(&mut self, card_id: u32) -> Result<Vec<Entitlement>, EngineError> {
        let card = self
            .cards
            .remove(card_id)
            .ok_or(EngineError::UnknownCard(card_id))?;
        self.retired_seq.insert(card_id, card.last_seq);
        Ok(card.entitlements)
    }

    pub fn has_card(&self, card_id: u32) -> bool {
        self.cards.contains(card_id)
    }

    pub fn card_count(&self) -> usize {
        self.cards.len()
    }

    pub fn card_public(&self, card_id: u32) -> Result<[u8; 32], EngineError> {
        self.cards
            .public(card_id)
            .ok_or(EngineError::UnknownCard(card_id))
    }

    /// The last EMM-U sequence number used for the card (0: none yet).
    pub fn last_emm_u_seq(&self, card_id: u32) -> Result<u64, EngineError> {
        Ok(self.card(card_id)?.last_seq)
    }

    /// Restores a card's EMM-U counter from storage. It only moves
    /// forward, so it can never make a nonce repeat.
    pub fn raise_emm_u_seq(&mut self, card_id: u32, last_seq: u64) -> Result<(), EngineError> {
        let card = self
            .cards
            .get_mut(card_id)
            .ok_or(EngineError::UnknownCard(card_id))?;
        card.last_seq = card.last_seq.max(last_seq);
        Ok(())
    }

    /// The card's KEK, for sealed storage only.
    pub fn card_kek(&self, card_id: u32) -> Result<&Kek, EngineError> {
        Ok(&self.card(card_id)?.kek)
    }

    fn card(&self, card_id: u32) -> Result<&Card, EngineError> {
        self.cards
            .get(card_id)
            .ok_or(EngineError::UnknownCard(card_id))
    }

    // ---- products ----------------------------------------------------

    /// Creates a product with a fresh random key of generation 1.
    pub fn add_product(&mut self, product: u32) -> Result<u32, EngineError> {
        self.add_product_with_key(product, 1, ProductKey::random())?;
        Ok(1)
    }

    /// Creates a product with a known key (restored from storage).
    pub fn add_product_with_key(
        &mut self,
        product: u32,
        generation: u32,
        key: ProductKey,
    ) -> Result<(), EngineError> {
        if self.products.contains_key(&product) {
            return Err(EngineError::ProductExists(product));
        }
        self.products.insert(
            product,
            Product {
                current: Generation {
                    number: generation,
                    key,
                },
                previous: None,
            },
        );
        Ok(())
    }

    /// Replaces the product's key with fresh randomness and returns the
    /// new generation. The old key stays as the previous generation, for
    /// ECMs sealed during the change-over; the one before it is dropped.
    pub fn renew_product_key(&mut self, product: u32) -> Result<u32, EngineError> {
        self.renew_product_key_with(product, ProductKey::random())
    }

    /// Like [`KeyEngine::renew_product_key`], with a fresh key that the
    /// caller made and stored first (the daemon persists a key before any
    /// message can carry it).
    pub fn renew_product_key_with(
        &mut self,
        product: u32,
        key: ProductKey,
    ) -> Result<u32, EngineError> {
        let p = self
            .products
            .get_mut(&product)
            .ok_or(EngineError::UnknownProduct(product))?;
        let number = p
            .current
            .number
            .checked_add(1)
            .ok_or(EngineError::GenerationExhausted(product))?;
        let old = std::mem::replace(&mut p.current, Generation { number, key });
        let previous = old.number;
        p.previous = Some(old);
        self.ecms
            .retain(|&(pr, g, _), _| pr != product || g == number || g == previous);
        Ok(number)
    }

    /// The product's current key generation.
    pub fn product_generation(&self, product: u32) -> Result<u32, EngineError> {
        self.products
            .get(&product)
            .map(|p| p.current.number)
            .ok_or(EngineError::UnknownProduct(product))
    }

    /// The product's current generation and key, for sealed storage only.
    pub fn product_key(&self, product: u32) -> Result<(u32, &ProductKey), EngineError> {
        self.products
            .get(&product)
            .map(|p| (p.current.number, &p.current.key))
            .ok_or(EngineError::UnknownProduct(product))
    }

    pub fn has_product(&self, product: u32) -> bool {
        self.products.contains_key(&product)
    }

    // ---- entitlements ------------------------------------------------

    /// Grants `card` the product from `start` to `end` (Unix seconds,
    /// inclusive), replacing any earlier dates for that product.
    pub fn entitle(
        &mut self,
        card_id: u32,
        product: u32,
        start: u64,
        end: u64,
    ) -> Result<(), EngineError> {
        if start > end {
            return Err(EngineError::InvalidDates { start, end });
        }
        if !self.products.contains_key(&product) {
            return Err(EngineError::UnknownProduct(product));
        }
        let card = self
            .cards
            .get_mut(card_id)
            .ok_or(EngineError::UnknownCard(card_id))?;
        let e = Entitlement {
            product,
            start,
            end,
        };
        if let Some(x) = card.entitlements.iter_mut().find(|x| x.product == product) {
            *x = e;
        } else if card.entitlements.len() >= MAX_ENTITLEMENTS_PER_CARD {
            return Err(EngineError::TooManyEntitlements(card_id));
        } else {
            card.entitlements.push(e);
        }
        Ok(())
    }

    /// Withdraws the product from the card and returns what it had. The
    /// card still holds the current key, so the product should be renewed.
    pub fn unentitle(
        &mut self,
        card_id: u32,
        product: u32,
    ) -> Result<Option<Entitlement>, EngineError> {
        let card = self
            .cards
            .get_mut(card_id)
            .ok_or(EngineError::UnknownCard(card_id))?;
        let at = card.entitlements.iter().position(|x| x.product == product);
        Ok(at.map(|i| card.entitlements.swap_remove(i)))
    }

    pub fn entitlements(&self, card_id: u32) -> Result<&[Entitlement], EngineError> {
        Ok(&self.card(card_id)?.entitlements)
    }

    // ---- EMM-U -------------------------------------------------------

    /// Appends one sealed EMM-U for the card to `out`: its time is `now`,
    /// and it carries one ENTITLE, with the current key, per product the
    /// card is entitled to at or after `now` (an ended entitlement must
    /// not receive new keys). Allocates nothing once `out` has room.
    pub fn write_emm_u_into(
        &mut self,
        card_id: u32,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), EngineError> {
        let slot = self
            .cards
            .slot(card_id)
            .ok_or(EngineError::UnknownCard(card_id))?;
        self.write_emm_u_at(slot, card_id, now, out)
    }

    fn write_emm_u_at(
        &mut self,
        slot: usize,
        card_id: u32,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), EngineError> {
        let card = self.cards.at_mut(slot);
        let seq = card
            .last_seq
            .checked_add(1)
            .ok_or(EngineError::SequenceExhausted)?;
        let payload = &mut self.scratch;
        payload.time = now;
        payload.commands.clear();
        for e in card.entitlements.iter().filter(|e| e.end >= now) {
            // `entitle` checks the product exists and products are never
            // removed, so this lookup always succeeds.
            let p = self
                .products
                .get(&e.product)
                .ok_or(EngineError::UnknownProduct(e.product))?;
            payload.commands.push(EmmCommand::Entitle(Entitle {
                product: e.product,
                generation: p.current.number,
                start: e.start,
                end: e.end,
                key: p.current.key.clone(),
            }));
        }
        debug_assert!(8 + payload.commands.len() * ENTITLE_LEN + TAG_LEN <= MAX_BODY_LEN);
        Emm::seal_unique_into(&Sealer::new(&card.kek), card_id, seq, payload, out);
        card.last_seq = seq;
        // Drop (and so zeroize) the key copies now, not at the next call.
        payload.commands.clear();
        Ok(())
    }

    /// Appends the EMM-U of each card in turn (see
    /// [`KeyEngine::write_emm_u_into`]); EMMs are self-delimiting, so the
    /// result can be cut into sections as it is. An unknown card fails the
    /// batch before anything is written.
    pub fn emm_u_batch(
        &mut self,
        cards: &[u32],
        now: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), EngineError> {
        // Resolve every id first: the lookups are independent, so the CPU
        // overlaps their cache misses instead of taking one per EMM.
        let mut slots = std::mem::take(&mut self.batch_slots);
        slots.clear();
        let resolved = cards.iter().try_for_each(|&id| {
            let slot = self.cards.slot(id).ok_or(EngineError::UnknownCard(id))?;
            slots.push(slot);
            Ok(())
        });
        let written = resolved.and_then(|()| {
            cards
                .iter()
                .zip(&slots)
                .try_for_each(|(&id, &slot)| self.write_emm_u_at(slot, id, now, out))
        });
        self.batch_slots = slots;
        written
    }

    /// One EMM-U for the card with its current entitlements and keys.
    pub fn emm_u_for(&mut self, card_id: u32, now: u64) -> Result<Vec<u8>, EngineError> {
        let n = self.card(card_id)?.entitlements.len();
        let mut out = Vec::with_capacity(EMM_HEADER_LEN + 8 + n * ENTITLE_LEN + TAG_LEN);
        self.write_emm_u_into(card_id, now, &mut out)?;
        Ok(out)
    }

    /// An EMM-U with arbitrary commands (UNPAIR, REMOVE PRODUCT, ...).
    /// BLOCK CARDS is for EMM-Gs only.
    pub fn emm_u(
        &mut self,
        card_id: u32,
        now: u64,
        commands: Vec<EmmCommand>,
    ) -> Result<Vec<u8>, EngineError> {
        for c in &commands {
            if matches!(c, EmmCommand::BlockCards(_)) {
                return Err(EngineError::CommandNotAllowed {
                    kind: "EMM-U",
                    command: command_name(c),
                });
            }
        }
        let payload = EmmPayload {
            time: now,
            commands,
        };
        let body_len = encoded_len(&payload) + TAG_LEN;
        if body_len > MAX_BODY_LEN {
            return Err(EngineError::EmmTooLarge(body_len));
        }
        let card = self
            .cards
            .get_mut(card_id)
            .ok_or(EngineError::UnknownCard(card_id))?;
        let seq = card
            .last_seq
            .checked_add(1)
            .ok_or(EngineError::SequenceExhausted)?;
        let mut out = Vec::with_capacity(EMM_HEADER_LEN + body_len);
        Emm::seal_unique_into(&Sealer::new(&card.kek), card_id, seq, &payload, &mut out);
        card.last_seq = seq;
        Ok(out)
    }

    /// An EMM-U that pairs the card with one receiver: from then on it
    /// seals control words only to that receiver's static key.
    pub fn emm_u_pair(
        &mut self,
        card_id: u32,
        receiver_pub: [u8; 32],
        now: u64,
    ) -> Result<Vec<u8>, EngineError> {
        self.emm_u(
            card_id,
            now,
            vec![EmmCommand::Pair {
                receiver: receiver_pub,
            }],
        )
    }

    // ---- EMM-G -------------------------------------------------------

    /// A signed EMM-G. It is not encrypted, so it may carry no key: only
    /// BLOCK CARDS (what cards accept in an EMM-G), each of at most 63 ids.
    pub fn emm_g(&mut self, now: u64, commands: Vec<EmmCommand>) -> Result<Vec<u8>, EngineError> {
        for c in &commands {
            match c {
                EmmCommand::BlockCards(ids) if ids.len() > BLOCK_IDS_PER_COMMAND => {
                    return Err(EngineError::BlockListTooLong(ids.len()))
                }
                EmmCommand::BlockCards(_) => {}
                other => {
                    return Err(EngineError::CommandNotAllowed {
                        kind: "EMM-G",
                        command: command_name(other),
                    })
                }
            }
        }
        let payload = EmmPayload {
            time: now,
            commands,
        };
        let body_len = encoded_len(&payload) + SIG_LEN;
        if body_len > MAX_BODY_LEN {
            return Err(EngineError::EmmTooLarge(body_len));
        }
        let seq = self
            .emm_g_seq
            .checked_add(1)
            .ok_or(EngineError::SequenceExhausted)?;
        let out = Emm::sign_global(self.operator.signing(), seq, &payload);
        self.emm_g_seq = seq;
        Ok(out)
    }

    /// Signed EMM-Gs that block the given cards, split into as many
    /// commands and EMMs as the layout needs.
    pub fn emm_g_block_cards(
        &mut self,
        now: u64,
        cards: &[u32],
    ) -> Result<Vec<Vec<u8>>, EngineError> {
        // Header, time and signature around commands of 2 + 4 * 63 bytes.
        let per_emm = (MAX_BODY_LEN - 8 - SIG_LEN) / (2 + 4 * BLOCK_IDS_PER_COMMAND);
        cards
            .chunks(per_emm * BLOCK_IDS_PER_COMMAND)
            .map(|chunk| {
                let commands = chunk
                    .chunks(BLOCK_IDS_PER_COMMAND)
                    .map(|ids| EmmCommand::BlockCards(ids.to_vec()))
                    .collect();
                self.emm_g(now, commands)
            })
            .collect()
    }

    /// The last EMM-G sequence number used (0: none yet).
    pub fn emm_g_seq(&self) -> u64 {
        self.emm_g_seq
    }

    /// Restores the EMM-G counter from storage; it only moves forward.
    pub fn raise_emm_g_seq(&mut self, last_seq: u64) {
        self.emm_g_seq = self.emm_g_seq.max(last_seq);
    }

    // ---- ECM ---------------------------------------------------------

    /// The ECM of `service` for `epoch`, sealed under the product's
    /// current key generation.
    pub fn ecm(
        &mut self,
        product: u32,
        epoch: u64,
        service: u16,
        cws: &CwPair,
        time: u64,
        maturity: u8,
    ) -> Result<Ecm, EngineError> {
        let generation = self.product_generation(product)?;
        let header = EcmHeader {
            product,
            generation,
            epoch,
            service,
        };
        self.seal_ecm(header, cws, time, maturity)
    }

    /// An ECM for an explicit header, whose generation may be the current
    /// or the previous one (while cards still receive the new key).
    /// Sealing the same header again returns the same bytes if the
    /// content is the same, and fails if it is not or if the epoch is
    /// older than one already sealed for this product, generation and
    /// service: either would reuse a nonce.
    pub fn seal_ecm(
        &mut self,
        header: EcmHeader,
        cws: &CwPair,
        time: u64,
        maturity: u8,
    ) -> Result<Ecm, EngineError> {
        let EcmHeader {
            product,
            generation,
            epoch,
            service,
        } = header;
        let key = self
            .products
            .get(&product)
            .ok_or(EngineError::UnknownProduct(product))?
            .key(generation)
            .ok_or(EngineError::UnknownGeneration {
                product,
                generation,
            })?;
        let payload = EcmPayload {
            cws: cws.clone(),
            time,
            maturity,
        };
        let slot = (product, generation, service);
        if let Some(last) = self.ecms.get(&slot) {
            if epoch < last.epoch {
                return Err(EngineError::EcmEpochRegressed {
                    product,
                    service,
                    epoch,
                    last: last.epoch,
                });
            }
            if epoch == last.epoch {
                return if last.payload == payload {
                    Ok(last.ecm.clone())
                } else {
                    Err(EngineError::EcmResealed {
                        product,
                        service,
                        epoch,
                    })
                };
            }
        }
        let ecm_key = key.epoch_key(product, generation, epoch).ecm_key();
        let ecm = Ecm::seal(&ecm_key, header, &payload);
        self.ecms.insert(
            slot,
            SealedEcm {
                epoch,
                payload,
                ecm: ecm.clone(),
            },
        );
        Ok(ecm)
    }
}

fn encoded_len(payload: &EmmPayload) -> usize {
    let mut buf = payload.to_bytes();
    let n = buf.len();
    // The encoding may hold product keys.
    buf.zeroize();
    n
}

fn command_name(c: &EmmCommand) -> &'static str {
    match c {
        EmmCommand::Entitle(_) => "ENTITLE",
        EmmCommand::Pair { .. } => "PAIR",
        EmmCommand::Unpair => "UNPAIR",
        EmmCommand::RemoveProduct { .. } => "REMOVE PRODUCT",
        EmmCommand::BlockCards(_) => "BLOCK CARDS",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::ControlWordSchedule;
    use proto::crypto::X25519Secret;
    use proto::emm::EmmKind;

    const NOW: u64 = 1_700_000_000;
    const DAY: u64 = 86_400;

    struct TestCard {
        id: u32,
        secret: X25519Secret,
    }

    impl TestCard {
        fn new(id: u32) -> Self {
            TestCard {
                id,
                secret: X25519Secret::random(),
            }
        }
        fn kek(&self, op: [u8; 32]) -> Kek {
            Kek::derive_card(&self.secret, self.id, &op).unwrap()
        }
        /// What the card does: parse, check the address, open with its KEK.
        fn open(&self, op: [u8; 32], bytes: &[u8]) -> (Emm, EmmPayload) {
            let emm = Emm::from_bytes(bytes).unwrap();
            assert_eq!(emm.kind, EmmKind::UNIQUE);
            assert_eq!(emm.address, self.id);
            let payload = emm.open_unique(&self.kek(op)).unwrap();
            (emm, payload)
        }
    }

    /// The operator's X25519 public key, as personalization gives it to
    /// the card.
    fn op(e: &KeyEngine) -> [u8; 32] {
        e.operator().public().x25519
    }

    fn engine_with(cards: &[&TestCard]) -> KeyEngine {
        let mut e = KeyEngine::new(OperatorKeys::generate(1));
        for c in cards {
            e.add_card(c.id, c.secret.public()).unwrap();
        }
        e
    }

    fn entitle_of(c: &EmmCommand) -> &Entitle {
        match c {
            EmmCommand::Entitle(e) => e,
            other => panic!("expected ENTITLE, got {other:?}"),
        }
    }

    #[test]
    fn emm_u_opens_on_the_card_with_its_entitlements() {
        let card = TestCard::new(42);
        let mut e = engine_with(&[&card]);
        e.add_product(7).unwrap();
        e.add_product(8).unwrap();
        e.add_product(9).unwrap();
        e.entitle(42, 7, NOW - DAY, NOW + 30 * DAY).unwrap();
        e.entitle(42, 8, NOW, NOW + DAY).unwrap();

        let bytes = e.emm_u_for(42, NOW).unwrap();
        let (emm, payload) = card.open(op(&e), &bytes);
        assert_eq!(emm.seq, 1);
        assert_eq!(payload.time, NOW);
        assert_eq!(payload.commands.len(), 2);
        let first = entitle_of(&payload.commands[0]);
        assert_eq!(
            (first.product, first.generation, first.start, first.end),
            (7, 1, NOW - DAY, NOW + 30 * DAY)
        );
        assert_eq!(&first.key, e.product_key(7).unwrap().1);
        assert_eq!(entitle_of(&payload.commands[1]).product, 8);

        // Another card's KEK does not open it.
        let other = TestCard::new(42);
        let emm = Emm::from_bytes(&bytes).unwrap();
        assert!(emm.open_unique(&other.kek(op(&e))).is_err());
    }

    #[test]
    fn sequence_numbers_strictly_increase_per_card() {
        let a = TestCard::new(1);
        let b = TestCard::new(2);
        let mut e = engine_with(&[&a, &b]);
        let mut last = 0;
        for i in 0..5 {
            let (emm, _) = a.open(op(&e), &e.emm_u_for(1, NOW + i).unwrap());
            assert!(emm.seq > last, "{} after {last}", emm.seq);
            last = emm.seq;
        }
        assert_eq!(last, 5);
        assert_eq!(e.last_emm_u_seq(1).unwrap(), 5);
        // Card 2 has its own counter, starting at 1.
        let (emm, _) = b.open(op(&e), &e.emm_u_for(2, NOW).unwrap());
        assert_eq!(emm.seq, 1);
        // Pairing EMMs share the counter.
        let (emm, payload) = a.open(op(&e), &e.emm_u_pair(1, [9; 32], NOW).unwrap());
        assert_eq!(emm.seq, 6);
        assert_eq!(
            payload.commands,
            vec![EmmCommand::Pair { receiver: [9; 32] }]
        );
        // A removed and re-registered card resumes, never reusing a nonce.
        e.remove_card(1).unwrap();
        assert_eq!(e.emm_u_for(1, NOW), Err(EngineError::UnknownCard(1)));
        e.add_card(1, a.secret.public()).unwrap();
        let (emm, _) = a.open(op(&e), &e.emm_u_for(1, NOW).unwrap());
        assert_eq!(emm.seq, 7);
        // Restoring from storage only moves the counter forward.
        e.raise_emm_u_seq(1, 3).unwrap();
        e.raise_emm_u_seq(1, 100).unwrap();
        let (emm, _) = a.open(op(&e), &e.emm_u_for(1, NOW).unwrap());
        assert_eq!(emm.seq, 101);
    }

    #[test]
    fn batch_matches_single_and_allocates_once() {
        let cards: Vec<TestCard> = (1..=20).map(TestCard::new).collect();
        let refs: Vec<&TestCard> = cards.iter().collect();
        let mut e = engine_with(&refs);
        e.add_product(5).unwrap();
        for c in &cards {
            e.entitle(c.id, 5, NOW, NOW + DAY).unwrap();
        }
        let ids: Vec<u32> = cards.iter().map(|c| c.id).collect();
        let mut out = Vec::with_capacity(4096);
        let ptr = out.as_ptr();
        e.emm_u_batch(&ids, NOW, &mut out).unwrap();
        assert_eq!(out.as_ptr(), ptr, "the batch reallocated");
        // 16-byte header, 8-byte time, one 58-byte ENTITLE, 16-byte tag.
        assert_eq!(out.len(), ids.len() * (16 + 8 + ENTITLE_LEN + 16));
        for (c, emm) in cards.iter().zip(out.chunks(16 + 8 + ENTITLE_LEN + 16)) {
            let (_, p) = c.open(op(&e), emm);
            assert_eq!(entitle_of(&p.commands[0]).product, 5);
        }
        // An unknown card fails the batch before anything is written.
        out.clear();
        assert_eq!(
            e.emm_u_batch(&[1, 99, 2], NOW, &mut out),
            Err(EngineError::UnknownCard(99))
        );
        assert!(out.is_empty());
        assert_eq!(e.last_emm_u_seq(1).unwrap(), 1);
    }

    #[test]
    fn ended_entitlements_get_no_new_key() {
        let card = TestCard::new(3);
        let mut e = engine_with(&[&card]);
        e.add_product(1).unwrap();
        e.add_product(2).unwrap();
        e.entitle(3, 1, NOW - 2 * DAY, NOW - DAY).unwrap();
        e.entitle(3, 2, NOW + DAY, NOW + 2 * DAY).unwrap();
        let (_, p) = card.open(op(&e), &e.emm_u_for(3, NOW).unwrap());
        assert_eq!(p.commands.len(), 1);
        assert_eq!(entitle_of(&p.commands[0]).product, 2);
        assert_eq!(
            e.unentitle(3, 2).unwrap(),
            Some(Entitlement {
                product: 2,
                start: NOW + DAY,
                end: NOW + 2 * DAY
            })
        );
        assert_eq!(e.unentitle(3, 2).unwrap(), None);
        let (_, p) = card.open(op(&e), &e.emm_u_for(3, NOW).unwrap());
        assert!(p.commands.is_empty());
    }

    #[test]
    fn renewal_changes_generation_and_key() {
        let card = TestCard::new(5);
        let mut e = engine_with(&[&card]);
        assert_eq!(e.add_product(10).unwrap(), 1);
        e.entitle(5, 10, NOW, NOW + DAY).unwrap();
        let (_, before) = card.open(op(&e), &e.emm_u_for(5, NOW).unwrap());
        let old_key = entitle_of(&before.commands[0]).key.clone();

        assert_eq!(e.renew_product_key(10).unwrap(), 2);
        assert_eq!(e.product_generation(10).unwrap(), 2);
        let (_, after) = card.open(op(&e), &e.emm_u_for(5, NOW).unwrap());
        let ent = entitle_of(&after.commands[0]);
        assert_eq!(ent.generation, 2);
        assert_ne!(ent.key, old_key);
        assert_eq!(
            e.renew_product_key(11),
            Err(EngineError::UnknownProduct(11))
        );

        // ECMs can still be sealed under the previous generation, not older.
        let cws = ControlWordSchedule::new(10).unwrap().pair(1, 0).unwrap();
        let header = |generation| EcmHeader {
            product: 10,
            generation,
            epoch: 0,
            service: 1,
        };
        let ecm = e.seal_ecm(header(1), &cws, NOW, 0).unwrap();
        let k1 = old_key.epoch_key(10, 1, 0).ecm_key();
        assert_eq!(ecm.open(&k1).unwrap().cws, cws);
        e.renew_product_key(10).unwrap();
        assert_eq!(
            e.seal_ecm(header(1), &cws, NOW, 0),
            Err(EngineError::UnknownGeneration {
                product: 10,
                generation: 1
            })
        );
        e.seal_ecm(header(2), &cws, NOW, 0).unwrap();
    }

    #[test]
    fn ecm_opens_with_the_epoch_key() {
        let mut e = engine_with(&[]);
        e.add_product(4).unwrap();
        let mut sched = ControlWordSchedule::new(10).unwrap();
        let epoch = sched.epoch_at(NOW);
        let cws = sched.pair(100, epoch).unwrap();
        let ecm = e.ecm(4, epoch, 100, &cws, NOW, 16).unwrap();
        assert_eq!(
            ecm.header,
            EcmHeader {
                product: 4,
                generation: 1,
                epoch,
                service: 100
            }
        );
        // Through the wire format, as the card sees it.
        let ecm = Ecm::from_bytes(&ecm.to_bytes()).unwrap();
        let (gen, kp) = e.product_key(4).unwrap();
        let key = kp.epoch_key(4, gen, epoch).ecm_key();
        let p = ecm.open(&key).unwrap();
        assert_eq!((&p.cws, p.time, p.maturity), (&cws, NOW, 16));
        // Another epoch's key does not open it.
        assert!(ecm
            .open(&kp.epoch_key(4, gen, epoch + 1).ecm_key())
            .is_err());
        assert_eq!(
            e.ecm(5, epoch, 100, &cws, NOW, 0),
            Err(EngineError::UnknownProduct(5))
        );
    }

    #[test]
    fn ecm_never_reuses_a_nonce() {
        let mut e = engine_with(&[]);
        e.add_product(4).unwrap();
        let mut sched = ControlWordSchedule::new(10).unwrap();
        let cws = sched.pair(1, 50).unwrap();
        let a = e.ecm(4, 50, 1, &cws, NOW, 0).unwrap();
        // A repetition is byte-identical.
        assert_eq!(e.ecm(4, 50, 1, &cws, NOW, 0).unwrap(), a);
        // Other content under the same (key, nonce) is refused.
        assert_eq!(
            e.ecm(4, 50, 1, &cws, NOW + 1, 0),
            Err(EngineError::EcmResealed {
                product: 4,
                service: 1,
                epoch: 50
            })
        );
        // Another service has its own nonce.
        e.ecm(4, 50, 2, &sched.pair(2, 50).unwrap(), NOW, 0)
            .unwrap();
        let next = sched.pair(1, 51).unwrap();
        e.ecm(4, 51, 1, &next, NOW + 10, 0).unwrap();
        assert!(matches!(
            e.ecm(4, 50, 1, &cws, NOW, 0),
            Err(EngineError::EcmEpochRegressed {
                epoch: 50,
                last: 51,
                ..
            })
        ));
    }

    #[test]
    fn emm_g_is_signed_and_carries_no_keys() {
        let mut e = engine_with(&[]);
        let op = e.operator().public().ed25519;
        let bytes = e
            .emm_g(NOW, vec![EmmCommand::BlockCards(vec![1, 2, 3])])
            .unwrap();
        let emm = Emm::from_bytes(&bytes).unwrap();
        assert_eq!(
            (emm.kind, emm.address, emm.seq),
            (EmmKind::GLOBAL, GLOBAL_ADDRESS, 1)
        );
        let p = emm.verify_global(&op).unwrap();
        assert_eq!(p.commands, vec![EmmCommand::BlockCards(vec![1, 2, 3])]);
        let second = Emm::from_bytes(&e.emm_g(NOW, vec![]).unwrap()).unwrap();
        assert_eq!(second.seq, 2);

        let entitle = EmmCommand::Entitle(Entitle {
            product: 1,
            generation: 1,
            start: 0,
            end: 1,
            key: ProductKey::random(),
        });
        assert_eq!(
            e.emm_g(NOW, vec![entitle]),
            Err(EngineError::CommandNotAllowed {
                kind: "EMM-G",
                command: "ENTITLE"
            })
        );
        assert_eq!(
            e.emm_g(NOW, vec![EmmCommand::BlockCards((1..=64).collect())]),
            Err(EngineError::BlockListTooLong(64))
        );
        assert_eq!(e.emm_g_seq(), 2, "refused EMM-Gs use no sequence number");
    }

    #[test]
    fn blocking_many_cards_spans_several_emm_gs() {
        let mut e = engine_with(&[]);
        let op = e.operator().public().ed25519;
        let ids: Vec<u32> = (1..=2000).collect();
        let emms = e.emm_g_block_cards(NOW, &ids).unwrap();
        assert!(emms.len() > 1);
        let mut blocked = Vec::new();
        for bytes in &emms {
            let p = Emm::from_bytes(bytes).unwrap().verify_global(&op).unwrap();
            for c in p.commands {
                match c {
                    EmmCommand::BlockCards(v) => blocked.extend(v),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(blocked, ids);
    }

    #[test]
    fn emm_u_rejects_global_only_and_oversized_commands() {
        let card = TestCard::new(8);
        let mut e = engine_with(&[&card]);
        assert_eq!(
            e.emm_u(8, NOW, vec![EmmCommand::BlockCards(vec![8])]),
            Err(EngineError::CommandNotAllowed {
                kind: "EMM-U",
                command: "BLOCK CARDS"
            })
        );
        let many = vec![EmmCommand::Pair { receiver: [0; 32] }; 200];
        assert!(matches!(
            e.emm_u(8, NOW, many),
            Err(EngineError::EmmTooLarge(_))
        ));
        assert_eq!(e.last_emm_u_seq(8).unwrap(), 0);
        let (_, p) = card.open(op(&e), &e.emm_u(8, NOW, vec![EmmCommand::Unpair]).unwrap());
        assert_eq!(p.commands, vec![EmmCommand::Unpair]);
    }

    #[test]
    fn card_and_product_bookkeeping_errors() {
        let card = TestCard::new(9);
        let mut e = engine_with(&[&card]);
        assert_eq!(
            e.add_card(9, card.secret.public()),
            Err(EngineError::CardExists(9))
        );
        assert_eq!(e.add_card(0, [9; 32]), Err(EngineError::InvalidCardId(0)));
        assert_eq!(
            e.add_card(GLOBAL_ADDRESS, [9; 32]),
            Err(EngineError::InvalidCardId(GLOBAL_ADDRESS))
        );
        // The all-zero point is of low order: no contributory secret.
        assert!(matches!(
            e.add_card(10, [0; 32]),
            Err(EngineError::CardKey { card: 10, .. })
        ));
        assert_eq!(e.entitle(9, 1, 0, 1), Err(EngineError::UnknownProduct(1)));
        e.add_product(1).unwrap();
        assert_eq!(e.add_product(1), Err(EngineError::ProductExists(1)));
        assert_eq!(e.entitle(10, 1, 0, 1), Err(EngineError::UnknownCard(10)));
        assert_eq!(
            e.entitle(9, 1, 5, 4),
            Err(EngineError::InvalidDates { start: 5, end: 4 })
        );
        for p in 100..100 + MAX_ENTITLEMENTS_PER_CARD as u32 {
            e.add_product(p).unwrap();
            e.entitle(9, p, 0, NOW).unwrap();
        }
        assert_eq!(
            e.entitle(9, 1, 0, 1),
            Err(EngineError::TooManyEntitlements(9))
        );
        // Re-entitling a held product only changes its dates.
        e.entitle(9, 100, 1, NOW + 1).unwrap();
        assert_eq!(e.entitlements(9).unwrap().len(), MAX_ENTITLEMENTS_PER_CARD);
        // The largest EMM-U a card can get still fits the protocol.
        let (_, p) = card.open(op(&e), &e.emm_u_for(9, 0).unwrap());
        assert_eq!(p.commands.len(), MAX_ENTITLEMENTS_PER_CARD);
        let removed = e.remove_card(9).unwrap();
        assert_eq!(removed.len(), MAX_ENTITLEMENTS_PER_CARD);
        assert_eq!(e.card_count(), 0);
        assert_eq!(e.remove_card(9), Err(EngineError::UnknownCard(9)));
    }

    #[test]
    fn prepared_cards_belong_to_their_operator() {
        let card = TestCard::new(11);
        let mut a = engine_with(&[]);
        let b = engine_with(&[]);
        let prepared = b.prepare_card(11, card.secret.public()).unwrap();
        assert_eq!(prepared.id(), 11);
        assert_eq!(
            a.insert_card(prepared),
            Err(EngineError::ForeignPreparedCard(11))
        );
        let prepared = a.prepare_card(11, card.secret.public()).unwrap();
        a.insert_card(prepared).unwrap();
        assert_eq!(a.card_public(11).unwrap(), card.secret.public());
        assert_eq!(a.card_kek(11).unwrap(), &card.kek(op(&a)));
    }

    #[test]
    fn debug_prints_no_key() {
        let card = TestCard::new(12);
        let mut e = engine_with(&[&card]);
        e.add_product(1).unwrap();
        let key_hex = hex::encode(e.product_key(1).unwrap().1.expose());
        let kek_hex = hex::encode(e.card_kek(12).unwrap().expose());
        let dbg = format!("{e:?}");
        assert!(!dbg.contains(&key_hex));
        assert!(!dbg.contains(&kek_hex));
        // Nor as a list of decimal bytes.
        let key_dec = format!("{:?}", e.product_key(1).unwrap().1.expose());
        assert!(!dbg.contains(key_dec.trim_matches(&['[', ']'][..])));
    }
}
