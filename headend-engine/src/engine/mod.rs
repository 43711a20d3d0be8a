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

mod ecm;
mod emm;
#[cfg(test)]
mod tests;

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

/// A product's period keys: the one ECMs use, the one before it (ECMs
/// sealed during the change-over), and the one being delivered, if a
/// renewal is under way.
#[derive(Debug)]
struct Product {
    active: Generation,
    previous: Option<Generation>,
    pending: Option<Generation>,
}

impl Product {
    fn key(&self, generation: u32) -> Option<&ProductKey> {
        [
            Some(&self.active),
            self.pending.as_ref(),
            self.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        .find(|g| g.number == generation)
        .map(|g| &g.key)
    }

    /// The highest generation number this product has used.
    fn newest(&self) -> u32 {
        self.pending
            .as_ref()
            .map_or(self.active.number, |p| p.number.max(self.active.number))
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
                commands: Vec::with_capacity(2 * MAX_ENTITLEMENTS_PER_CARD),
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

    /// Creates a product with a known key (restored from storage): the
    /// generation ECMs use.
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
                active: Generation {
                    number: generation,
                    key,
                },
                previous: None,
                pending: None,
            },
        );
        Ok(())
    }

    /// Replaces the product's key with fresh randomness, in use at once,
    /// and returns the new generation. The old key stays as the previous
    /// generation, for ECMs sealed during the change-over; the one before
    /// it is dropped. (The daemon delivers a key before ECMs use it: see
    /// [`KeyEngine::set_pending_key`].)
    pub fn renew_product_key(&mut self, product: u32) -> Result<u32, EngineError> {
        self.renew_product_key_with(product, ProductKey::random())
    }

    /// Like [`KeyEngine::renew_product_key`], with a fresh key that the
    /// caller made and stored first.
    pub fn renew_product_key_with(
        &mut self,
        product: u32,
        key: ProductKey,
    ) -> Result<u32, EngineError> {
        let number = self
            .products
            .get(&product)
            .ok_or(EngineError::UnknownProduct(product))?
            .newest()
            .checked_add(1)
            .ok_or(EngineError::GenerationExhausted(product))?;
        self.set_pending_key(product, number, key)?;
        self.activate_pending(product)?;
        Ok(number)
    }

    /// Makes `key`, of `generation`, the product's pending key: EMM-Us
    /// carry it beside the active one, ECMs do not use it until
    /// [`KeyEngine::activate_pending`]. A pending key not yet activated is
    /// replaced (superseded). `generation` must be above every generation
    /// the product has used.
    pub fn set_pending_key(
        &mut self,
        product: u32,
        generation: u32,
        key: ProductKey,
    ) -> Result<(), EngineError> {
        let p = self
            .products
            .get_mut(&product)
            .ok_or(EngineError::UnknownProduct(product))?;
        if generation <= p.newest() {
            return Err(EngineError::GenerationNotNewer {
                product,
                generation,
                newest: p.newest(),
            });
        }
        if let Some(old) = p.pending.replace(Generation {
            number: generation,
            key,
        }) {
            let dropped = old.number;
            self.ecms
                .retain(|&(pr, g, _), _| pr != product || g != dropped);
        }
        Ok(())
    }

    /// Switches ECMs to the pending key; returns its generation, or `None`
    /// if there is none. The active key becomes the previous one.
    pub fn activate_pending(&mut self, product: u32) -> Result<Option<u32>, EngineError> {
        let p = self
            .products
            .get_mut(&product)
            .ok_or(EngineError::UnknownProduct(product))?;
        let Some(next) = p.pending.take() else {
            return Ok(None);
        };
        let number = next.number;
        let old = std::mem::replace(&mut p.active, next);
        let previous = old.number;
        p.previous = Some(old);
        self.ecms
            .retain(|&(pr, g, _), _| pr != product || g == number || g == previous);
        Ok(Some(number))
    }

    /// A generation of the product's key that the engine still holds
    /// (active, pending or previous).
    fn key_of(&self, product: u32, generation: u32) -> Result<&ProductKey, EngineError> {
        self.products
            .get(&product)
            .ok_or(EngineError::UnknownProduct(product))?
            .key(generation)
            .ok_or(EngineError::UnknownGeneration {
                product,
                generation,
            })
    }

    /// The generation ECMs use.
    pub fn product_generation(&self, product: u32) -> Result<u32, EngineError> {
        self.products
            .get(&product)
            .map(|p| p.active.number)
            .ok_or(EngineError::UnknownProduct(product))
    }

    /// The generation being delivered, if a renewal is under way.
    pub fn pending_generation(&self, product: u32) -> Result<Option<u32>, EngineError> {
        self.products
            .get(&product)
            .map(|p| p.pending.as_ref().map(|g| g.number))
            .ok_or(EngineError::UnknownProduct(product))
    }

    /// The active generation and key.
    pub fn product_key(&self, product: u32) -> Result<(u32, &ProductKey), EngineError> {
        self.products
            .get(&product)
            .map(|p| (p.active.number, &p.active.key))
            .ok_or(EngineError::UnknownProduct(product))
    }

    /// The pending generation and key, if a renewal is under way.
    pub fn pending_key(&self, product: u32) -> Result<Option<(u32, &ProductKey)>, EngineError> {
        self.products
            .get(&product)
            .map(|p| p.pending.as_ref().map(|g| (g.number, &g.key)))
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
}
