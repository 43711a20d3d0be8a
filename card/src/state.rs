//! The card's persistent state: what the EEPROM record holds, encoded with
//! postcard. Keys inside are secret types (zeroized, redacted).
//!
//! [`CardState`] is readable from outside the crate (the emulator logs the
//! life cycle, tests compare states before and after a power cut), but its
//! secrets are not: the card's key seed and the product keys are private
//! fields, and the state has no public encoding. The record's serde types
//! are private to this module.

use proto::card::{EntitlementRecord, LifeCycle};
use proto::secret::{ProductKey, Seed};
use serde::{Deserialize, Serialize};

/// Products a card can hold at once.
pub const MAX_ENTITLEMENTS: usize = 32;
/// Period-key generations kept per product: the current one and the one
/// before, so ECMs of the old generation still open during a renewal.
pub const MAX_GENERATIONS: usize = 2;
/// Version of this record's layout.
pub const STATE_VERSION: u8 = 1;

/// One product the card is entitled to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntitlement {
    pub product: u32,
    pub start: u64,
    pub end: u64,
    /// (generation, K_P), newest last.
    pub(crate) keys: Vec<(u32, ProductKey)>,
}

impl StoredEntitlement {
    pub(crate) fn new(product: u32, start: u64, end: u64) -> Self {
        StoredEntitlement {
            product,
            start,
            end,
            keys: Vec::with_capacity(MAX_GENERATIONS),
        }
    }

    pub(crate) fn key(&self, generation: u32) -> Option<&ProductKey> {
        self.keys
            .iter()
            .find(|(g, _)| *g == generation)
            .map(|(_, k)| k)
    }

    pub(crate) fn add_key(&mut self, generation: u32, key: ProductKey) {
        match self.keys.iter_mut().find(|(g, _)| *g == generation) {
            Some(slot) => slot.1 = key,
            None => self.keys.push((generation, key)),
        }
        self.keys.sort_by_key(|(g, _)| *g);
        while self.keys.len() > MAX_GENERATIONS {
            self.keys.remove(0);
        }
    }

    /// The key generations held, oldest first.
    pub fn generations(&self) -> Vec<u32> {
        self.keys.iter().map(|(g, _)| *g).collect()
    }

    /// What GET INFO and LIST ENTITLEMENTS say about it.
    pub fn record(&self) -> EntitlementRecord {
        EntitlementRecord {
            product: self.product,
            generation: self.keys.last().map(|(g, _)| *g).unwrap_or_default(),
            start: self.start,
            end: self.end,
        }
    }
}

/// Everything the card keeps across power cuts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardState {
    pub version: u8,
    pub lifecycle: LifeCycle,
    pub card_id: u32,
    pub operator_id: u32,
    /// The card's X25519 private key; `None` while blank.
    pub(crate) secret: Option<Seed>,
    pub operator_kex: [u8; 32],
    pub operator_sig: [u8; 32],
    /// Newest authenticated time persisted (Unix seconds).
    pub clock: u64,
    pub emm_u_seq: u64,
    pub emm_g_seq: u64,
    pub paired: Option<[u8; 32]>,
    pub entitlements: Vec<StoredEntitlement>,
}

impl CardState {
    pub fn blank() -> Self {
        CardState {
            version: STATE_VERSION,
            lifecycle: LifeCycle::BLANK,
            card_id: 0,
            operator_id: 0,
            secret: None,
            operator_kex: [0; 32],
            operator_sig: [0; 32],
            clock: 0,
            emm_u_seq: 0,
            emm_g_seq: 0,
            paired: None,
            entitlements: Vec::new(),
        }
    }

    /// Whether the card holds its key pair (made at personalization).
    pub fn has_key(&self) -> bool {
        self.secret.is_some()
    }

    /// The EEPROM record. Crate-private: it holds the secrets.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Serializing plain structs into a Vec cannot fail.
        postcard::to_allocvec(&Record::from(self)).expect("card state serializes")
    }

    /// Reads an EEPROM record.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let r: Record =
            postcard::from_bytes(bytes).map_err(|e| format!("card state record: {e}"))?;
        if r.version != STATE_VERSION {
            return Err(format!(
                "card state record version {} is not {STATE_VERSION}",
                r.version
            ));
        }
        Ok(r.into())
    }
}

/// The record as stored, field for field in [`CardState`]'s order (the
/// layout of state files written before this type was split out is
/// unchanged, see the test `record_layout_is_stable`).
#[derive(Serialize, Deserialize)]
struct Record {
    version: u8,
    lifecycle: u8,
    card_id: u32,
    operator_id: u32,
    secret: Option<Seed>,
    operator_kex: [u8; 32],
    operator_sig: [u8; 32],
    clock: u64,
    emm_u_seq: u64,
    emm_g_seq: u64,
    paired: Option<[u8; 32]>,
    entitlements: Vec<RecordEntitlement>,
}

#[derive(Serialize, Deserialize)]
struct RecordEntitlement {
    product: u32,
    start: u64,
    end: u64,
    keys: Vec<(u32, ProductKey)>,
}

impl From<&CardState> for Record {
    fn from(s: &CardState) -> Record {
        Record {
            version: s.version,
            lifecycle: s.lifecycle.0,
            card_id: s.card_id,
            operator_id: s.operator_id,
            secret: s.secret.clone(),
            operator_kex: s.operator_kex,
            operator_sig: s.operator_sig,
            clock: s.clock,
            emm_u_seq: s.emm_u_seq,
            emm_g_seq: s.emm_g_seq,
            paired: s.paired,
            entitlements: s
                .entitlements
                .iter()
                .map(|e| RecordEntitlement {
                    product: e.product,
                    start: e.start,
                    end: e.end,
                    keys: e.keys.clone(),
                })
                .collect(),
        }
    }
}

impl From<Record> for CardState {
    fn from(r: Record) -> CardState {
        CardState {
            version: r.version,
            lifecycle: LifeCycle(r.lifecycle),
            card_id: r.card_id,
            operator_id: r.operator_id,
            secret: r.secret,
            operator_kex: r.operator_kex,
            operator_sig: r.operator_sig,
            clock: r.clock,
            emm_u_seq: r.emm_u_seq,
            emm_g_seq: r.emm_g_seq,
            paired: r.paired,
            entitlements: r
                .entitlements
                .into_iter()
                .map(|e| StoredEntitlement {
                    product: e.product,
                    start: e.start,
                    end: e.end,
                    keys: e.keys,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CardState {
        let mut e = StoredEntitlement::new(7, 1_796_083_200, 1_798_675_200);
        e.add_key(1, ProductKey::from_bytes([0x50; 32]));
        e.add_key(2, ProductKey::from_bytes([0x51; 32]));
        CardState {
            version: STATE_VERSION,
            lifecycle: LifeCycle::LOCKED,
            card_id: 42,
            operator_id: 1,
            secret: Some(Seed::from_bytes([0x53; 32])),
            operator_kex: [0x4B; 32],
            operator_sig: [0x5A; 32],
            clock: 1_796_086_800,
            emm_u_seq: 3,
            emm_g_seq: 300,
            paired: Some([0x70; 32]),
            entitlements: vec![e],
        }
    }

    /// Card state files written by earlier versions still load: the
    /// record's bytes are pinned (postcard: varints, a length before the
    /// seed and each key, none before fixed arrays).
    #[test]
    fn record_layout_is_stable() {
        let hex = concat!(
            "01022a0101",
            "20",
            "5353535353535353535353535353535353535353535353535353535353535353",
            "4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b",
            "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
            "90b8b8d806",
            "03",
            "ac02",
            "01",
            "7070707070707070707070707070707070707070707070707070707070707070",
            "01",
            "07",
            "809cb8d806",
            "80b6d6d906",
            "02",
            "0120",
            "5050505050505050505050505050505050505050505050505050505050505050",
            "0220",
            "5151515151515151515151515151515151515151515151515151515151515151",
        );
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(sample().encode(), bytes);
        assert_eq!(CardState::decode(&bytes).unwrap(), sample());
        let blank = CardState::blank().encode();
        assert_eq!(blank.len(), 74);
        assert_eq!(blank[0], STATE_VERSION);
        assert!(blank[1..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_record_of_another_version_is_refused() {
        let mut bytes = sample().encode();
        bytes[0] = 2;
        assert_eq!(
            CardState::decode(&bytes).unwrap_err(),
            "card state record version 2 is not 1"
        );
        assert!(CardState::decode(&bytes[..10]).is_err());
    }

    #[test]
    fn product_keys_keep_two_generations_and_debug_hides_secrets() {
        let mut s = sample();
        let e = &mut s.entitlements[0];
        e.add_key(3, ProductKey::from_bytes([0x52; 32]));
        assert_eq!(e.generations(), [2, 3]);
        assert_eq!(e.record().generation, 3);
        assert!(e.key(1).is_none());
        assert!(s.has_key());
        let debug = format!("{s:?}");
        assert!(debug.contains("REDACTED"), "{debug}");
        // The seed (0x53) and the product keys (0x51, 0x52), in decimal.
        for secret in ["83, 83", "81, 81", "82, 82"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}
