//! The card's persistent state: what the EEPROM record holds, encoded with
//! postcard. Keys inside are secret types (zeroized, redacted).
//!
//! [`CardState`] is readable from outside the crate (the emulator logs the
//! life cycle, tests compare states before and after a power cut), but its
//! secrets are not: the card's key seed and the product keys are private
//! fields, and the state has no public encoding. The record's serde types
//! are private to this module.

use proto::card::{EntitlementRecord, LifeCycle};
use proto::sd::{CardAddress, Forest};
use proto::secret::{ProductKey, SdLabel, Seed};
use serde::{Deserialize, Serialize};

/// Products a card can hold at once.
pub const MAX_ENTITLEMENTS: usize = 32;
/// Period-key generations kept per product. When a fourth comes, the
/// oldest that is neither the active one (that of the last ECM the card
/// opened) nor the newest goes: the ECMs in use keep opening while newer
/// keys are delivered ahead of their activation, and a headend restored
/// from an older backup (whose EMM-Us give an older active generation and
/// a newer pending one) is followed without a gap.
pub const MAX_GENERATIONS: usize = 3;
/// Version of this record's layout. Version 1 records (without the active
/// generation and the Subset Difference labels) still load.
pub const STATE_VERSION: u8 = 2;

/// One product the card is entitled to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntitlement {
    pub product: u32,
    pub start: u64,
    pub end: u64,
    /// (generation, K_P), newest last.
    pub(crate) keys: Vec<(u32, ProductKey)>,
    /// The generation of the last ECM of this product the card opened.
    pub active: Option<u32>,
}

impl StoredEntitlement {
    pub(crate) fn new(product: u32, start: u64, end: u64) -> Self {
        StoredEntitlement {
            product,
            start,
            end,
            keys: Vec::with_capacity(MAX_GENERATIONS),
            active: None,
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
        // Drop the oldest key that is neither the active one, nor the
        // newest, nor the one just given (with no active generation yet:
        // the oldest other than the one just given).
        while self.keys.len() > MAX_GENERATIONS {
            let newest = self.keys.last().map(|(g, _)| *g);
            let drop = self
                .keys
                .iter()
                .position(|(g, _)| {
                    Some(*g) != self.active && Some(*g) != newest && *g != generation
                })
                .unwrap_or(0);
            self.keys.remove(drop);
        }
    }

    /// The newest generation held.
    pub fn newest(&self) -> Option<u32> {
        self.keys.last().map(|(g, _)| *g)
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

/// The card's Subset Difference address and entries (its labels, then its
/// tree's whole-tree key, in `proto::sd::Forest::label_index` order), as
/// received so far.
#[derive(Clone, PartialEq, Eq)]
pub struct SdState {
    pub depth: u8,
    pub address: CardAddress,
    pub(crate) entries: Vec<Option<SdLabel>>,
}

impl std::fmt::Debug for SdState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdState")
            .field("depth", &self.depth)
            .field("address", &self.address)
            .field("held", &self.held())
            .field("of", &self.entries.len())
            .finish()
    }
}

impl SdState {
    /// An address with no entry received yet; `None` for a bad depth.
    pub(crate) fn new(depth: u8, address: CardAddress) -> Option<SdState> {
        let f = Forest::new(depth).ok()?;
        Some(SdState {
            depth,
            address,
            entries: vec![None; f.card_entries()],
        })
    }
    /// Entries received.
    pub fn held(&self) -> usize {
        self.entries.iter().filter(|e| e.is_some()).count()
    }
    /// Whether every entry has been received.
    pub fn complete(&self) -> bool {
        self.entries.iter().all(Option::is_some)
    }
    pub fn forest(&self) -> Option<Forest> {
        Forest::new(self.depth).ok()
    }
    pub(crate) fn entry(&self, n: usize) -> Option<&SdLabel> {
        self.entries.get(n).and_then(Option::as_ref)
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
    /// Subset Difference address and labels, from SD_LABELS commands.
    pub sd: Option<SdState>,
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
            sd: None,
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
        let bad = |e: postcard::Error| format!("card state record: {e}");
        match bytes.first() {
            Some(1) => {
                let r: RecordV1 = postcard::from_bytes(bytes).map_err(bad)?;
                Ok(r.into())
            }
            Some(&STATE_VERSION) => {
                let r: Record = postcard::from_bytes(bytes).map_err(bad)?;
                Ok(r.into())
            }
            Some(v) => Err(format!(
                "card state record version {v} is neither 1 nor {STATE_VERSION}; \
                 the card image was written by another applet version"
            )),
            None => Err("card state record: empty".into()),
        }
    }
}

/// Version 1 of the record, as earlier applets wrote it (see the test
/// `record_layout_is_stable`): read, never written.
#[derive(Deserialize)]
struct RecordV1 {
    _version: u8,
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
    entitlements: Vec<RecordEntitlementV1>,
}

#[derive(Deserialize)]
struct RecordEntitlementV1 {
    product: u32,
    start: u64,
    end: u64,
    keys: Vec<(u32, ProductKey)>,
}

impl From<RecordV1> for CardState {
    fn from(r: RecordV1) -> CardState {
        CardState {
            version: STATE_VERSION,
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
                    active: None,
                })
                .collect(),
            sd: None,
        }
    }
}

/// The record as stored (version 2), field for field in [`CardState`]'s
/// order: version 1's fields, each entitlement's active generation after
/// its keys, and the Subset Difference state at the end.
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
    sd: Option<RecordSd>,
}

#[derive(Serialize, Deserialize)]
struct RecordEntitlement {
    product: u32,
    start: u64,
    end: u64,
    keys: Vec<(u32, ProductKey)>,
    active: Option<u32>,
}

#[derive(Serialize, Deserialize)]
struct RecordSd {
    depth: u8,
    tree: u32,
    leaf: u32,
    entries: Vec<Option<SdLabel>>,
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
                    active: e.active,
                })
                .collect(),
            sd: s.sd.as_ref().map(|sd| RecordSd {
                depth: sd.depth,
                tree: sd.address.tree,
                leaf: sd.address.leaf,
                entries: sd.entries.clone(),
            }),
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
                    active: e.active,
                })
                .collect(),
            // A record whose entry count does not fit its depth loses its
            // labels (they are re-sent in EMM-Us) rather than the card.
            sd: r.sd.and_then(|sd| {
                let mut st = SdState::new(
                    sd.depth,
                    CardAddress {
                        tree: sd.tree,
                        leaf: sd.leaf,
                    },
                )?;
                (st.entries.len() == sd.entries.len()).then(|| {
                    st.entries = sd.entries;
                    st
                })
            }),
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
            sd: None,
        }
    }

    /// Card state files written by earlier versions still load, and this
    /// version's record is pinned: postcard (varints, a length before the
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
        // Version 1: read as it was written, with no active generation and
        // no Subset Difference state.
        assert_eq!(CardState::decode(&bytes).unwrap(), sample());
        // Version 2: the version byte, version 1's fields, `00` (no active
        // generation) after the entitlement's keys, `00` (no SD state).
        let mut v2 = bytes.clone();
        v2[0] = 2;
        v2.extend_from_slice(&[0, 0]);
        assert_eq!(sample().encode(), v2);
        assert_eq!(CardState::decode(&v2).unwrap(), sample());
        let mut with_sd = sample();
        with_sd.entitlements[0].active = Some(1);
        let mut sd = SdState::new(2, CardAddress { tree: 1, leaf: 3 }).unwrap();
        sd.entries[1] = Some(SdLabel::from_bytes([0x33; 32]));
        with_sd.sd = Some(sd);
        let enc = with_sd.encode();
        assert_eq!(enc[v2.len() - 2..v2.len()], [1, 1], "active Some(1)");
        assert_eq!(enc[v2.len()..v2.len() + 6], [1, 2, 1, 3, 4, 0], "sd header");
        assert_eq!(CardState::decode(&enc).unwrap(), with_sd);
        let blank = CardState::blank().encode();
        assert_eq!(blank.len(), 75);
        assert_eq!(blank[0], STATE_VERSION);
        assert!(blank[1..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_record_of_another_version_is_refused() {
        let mut bytes = sample().encode();
        bytes[0] = 3;
        assert_eq!(
            CardState::decode(&bytes).unwrap_err(),
            "card state record version 3 is neither 1 nor 2; \
             the card image was written by another applet version"
        );
        assert!(CardState::decode(&bytes[..10]).is_err());
    }

    #[test]
    fn product_keys_keep_three_generations_and_debug_hides_secrets() {
        let mut s = sample();
        let e = &mut s.entitlements[0];
        e.add_key(3, ProductKey::from_bytes([0x52; 32]));
        e.add_key(4, ProductKey::from_bytes([0x53; 32]));
        // No active generation yet: the oldest goes.
        assert_eq!(e.generations(), [2, 3, 4]);
        assert_eq!(e.record().generation, 4);
        assert!(e.key(1).is_none());
        // With an active generation, a newer key evicts neither it nor the
        // newest: the oldest of the others goes.
        e.active = Some(2);
        e.add_key(5, ProductKey::from_bytes([0x54; 32]));
        assert_eq!(e.generations(), [2, 4, 5]);
        e.add_key(6, ProductKey::from_bytes([0x55; 32]));
        assert_eq!(e.generations(), [2, 5, 6]);
        e.active = Some(6);
        e.add_key(7, ProductKey::from_bytes([0x56; 32]));
        assert_eq!(e.generations(), [5, 6, 7]);
        e.add_key(7, ProductKey::from_bytes([0x57; 32]));
        assert_eq!(e.generations(), [5, 6, 7]);
        // An older key (a headend restored from an older backup names its
        // active generation) is kept beside the active and the newest.
        e.add_key(1, ProductKey::from_bytes([0x58; 32]));
        assert_eq!(e.generations(), [1, 6, 7]);
        e.active = Some(1);
        e.add_key(8, ProductKey::from_bytes([0x59; 32]));
        assert_eq!(e.generations(), [1, 7, 8]);
        assert!(s.has_key());
        let debug = format!("{s:?}");
        assert!(debug.contains("REDACTED"), "{debug}");
        // The seed (0x53) and the product keys (0x51, 0x52), in decimal.
        for secret in ["83, 83", "81, 81", "82, 82"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}
