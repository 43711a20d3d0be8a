//! The card's persistent state: what the EEPROM record holds, encoded with
//! postcard. Keys inside are secret types (zeroized, redacted).

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntitlement {
    pub product: u32,
    pub start: u64,
    pub end: u64,
    /// (generation, K_P), newest last.
    pub keys: Vec<(u32, ProductKey)>,
}

impl StoredEntitlement {
    pub fn key(&self, generation: u32) -> Option<&ProductKey> {
        self.keys
            .iter()
            .find(|(g, _)| *g == generation)
            .map(|(_, k)| k)
    }

    pub fn add_key(&mut self, generation: u32, key: ProductKey) {
        match self.keys.iter_mut().find(|(g, _)| *g == generation) {
            Some(slot) => slot.1 = key,
            None => self.keys.push((generation, key)),
        }
        self.keys.sort_by_key(|(g, _)| *g);
        while self.keys.len() > MAX_GENERATIONS {
            self.keys.remove(0);
        }
    }

    pub fn record(&self) -> EntitlementRecord {
        EntitlementRecord {
            product: self.product,
            generation: self.keys.last().map(|(g, _)| *g).unwrap_or_default(),
            start: self.start,
            end: self.end,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardState {
    pub version: u8,
    #[serde(with = "lifecycle")]
    pub lifecycle: LifeCycle,
    pub card_id: u32,
    pub operator_id: u32,
    /// The card's X25519 private key; `None` while blank.
    pub secret: Option<Seed>,
    pub operator_kex: [u8; 32],
    pub operator_sig: [u8; 32],
    /// Newest authenticated time persisted (Unix seconds).
    pub clock: u64,
    pub emm_u_seq: u64,
    pub emm_g_seq: u64,
    pub paired: Option<[u8; 32]>,
    pub entitlements: Vec<StoredEntitlement>,
}

mod lifecycle {
    use proto::card::LifeCycle;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(l: &LifeCycle, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(l.0)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LifeCycle, D::Error> {
        u8::deserialize(d).map(LifeCycle)
    }
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

    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs into a Vec cannot fail.
        postcard::to_allocvec(self).expect("card state serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let s: CardState =
            postcard::from_bytes(bytes).map_err(|e| format!("card state record: {e}"))?;
        if s.version != STATE_VERSION {
            return Err(format!(
                "card state record version {} is not {STATE_VERSION}",
                s.version
            ));
        }
        Ok(s)
    }
}
