//! Card storage laid out for the EMM-U hot path.
//!
//! An EMM-U needs a card's KEK, its counter and its entitlements: those
//! sit in a dense `Vec` of 64-byte records (one cache line), in the order
//! the cards were added, so that a pass over the subscriber base reads
//! memory front to back. A small id → slot map finds a record, and the
//! cold data (public key) lives in a parallel `Vec`.
//!
//! Why not a ring sealing key per card: ring's `LessSafeKey` is sized for
//! its largest algorithm (AES-256-GCM tables), over 500 bytes, so caching
//! one per card made each record ten cache lines and the table a memory
//! stream. Building the ChaCha20 key from the 32-byte KEK costs a copy.

use proto::secret::Kek;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::engine::Entitlement;

/// A multiplicative hasher for card and product ids. Ids are chosen by
/// the operator's own factory and database, not by an attacker, so
/// SipHash's flooding resistance buys nothing, and the lookup is on the
/// hot path.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads sequential ids over all the bits,
        // including the high ones that hashbrown uses for control bytes.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// What an EMM-U needs of a card.
#[derive(Debug)]
pub(crate) struct Card {
    pub kek: Kek,
    /// The last EMM-U sequence number used (0: none yet).
    pub last_seq: u64,
    pub entitlements: Vec<Entitlement>,
}

#[derive(Debug)]
struct ColdCard {
    id: u32,
    public: [u8; 32],
}

#[derive(Debug, Default)]
pub(crate) struct CardTable {
    slots: IdMap<u32>,
    hot: Vec<Card>,
    cold: Vec<ColdCard>,
}

impl CardTable {
    pub fn len(&self) -> usize {
        self.hot.len()
    }

    pub fn contains(&self, id: u32) -> bool {
        self.slots.contains_key(&id)
    }

    /// The slot of a card, valid until the next removal.
    pub fn slot(&self, id: u32) -> Option<usize> {
        self.slots.get(&id).map(|&s| s as usize)
    }

    pub fn get(&self, id: u32) -> Option<&Card> {
        self.slot(id).map(|s| &self.hot[s])
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Card> {
        self.slot(id).map(|s| &mut self.hot[s])
    }

    pub fn at_mut(&mut self, slot: usize) -> &mut Card {
        &mut self.hot[slot]
    }

    pub fn public(&self, id: u32) -> Option<[u8; 32]> {
        self.slot(id).map(|s| self.cold[s].public)
    }

    /// Adds a card that is not yet present (the caller checks).
    pub fn insert(&mut self, id: u32, public: [u8; 32], card: Card) {
        debug_assert!(!self.contains(id));
        let slot = u32::try_from(self.hot.len()).expect("fewer than 2^32 cards");
        self.slots.insert(id, slot);
        self.hot.push(card);
        self.cold.push(ColdCard { id, public });
    }

    /// Removes a card; the last card moves into its slot.
    pub fn remove(&mut self, id: u32) -> Option<Card> {
        let slot = self.slots.remove(&id)? as usize;
        let card = self.hot.swap_remove(slot);
        self.cold.swap_remove(slot);
        if let Some(moved) = self.cold.get(slot) {
            self.slots.insert(moved.id, slot as u32);
        }
        Some(card)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(seq: u64) -> Card {
        Card {
            kek: Kek::from_bytes([seq as u8; 32]),
            last_seq: seq,
            entitlements: Vec::new(),
        }
    }

    #[test]
    fn hot_record_is_one_cache_line() {
        assert!(std::mem::size_of::<Card>() <= 64);
    }

    #[test]
    fn removal_keeps_every_other_card_reachable() {
        let mut t = CardTable::default();
        for id in 1..=5 {
            t.insert(id, [id as u8; 32], card(u64::from(id)));
        }
        assert_eq!(t.remove(2).unwrap().last_seq, 2);
        assert!(t.remove(2).is_none());
        assert_eq!(t.remove(5).unwrap().last_seq, 5);
        assert_eq!(t.len(), 3);
        for id in [1, 3, 4] {
            assert_eq!(t.get(id).unwrap().last_seq, u64::from(id));
            assert_eq!(t.public(id), Some([id as u8; 32]));
        }
        assert!(t.get(2).is_none() && t.get(5).is_none());
        t.insert(2, [9; 32], card(20));
        assert_eq!(t.get_mut(2).unwrap().last_seq, 20);
        assert_eq!(t.public(2), Some([9; 32]));
    }
}
