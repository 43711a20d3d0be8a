//! The operator's long-term keys: the static X25519 key from which every
//! card's KEK is derived, and the Ed25519 key that signs every message
//! sealed under a key that more than one card holds.
//!
//! The private halves never leave this type except as `proto` secret
//! types (for sealed storage). [`OperatorPublic`] is what the card factory
//! writes into each card, and it is the only part that serializes.

use proto::crypto::{SigningKey, X25519Secret};

/// The operator's private keys.
#[derive(Debug)]
pub struct OperatorKeys {
    operator_id: u32,
    kex: X25519Secret,
    signing: SigningKey,
}

impl OperatorKeys {
    /// Fresh keys from the operating system's CSPRNG.
    pub fn generate(operator_id: u32) -> Self {
        OperatorKeys {
            operator_id,
            kex: X25519Secret::random(),
            signing: SigningKey::random(),
        }
    }

    /// Keys loaded from sealed storage.
    pub fn from_parts(operator_id: u32, kex: X25519Secret, signing: SigningKey) -> Self {
        OperatorKeys {
            operator_id,
            kex,
            signing,
        }
    }

    pub fn operator_id(&self) -> u32 {
        self.operator_id
    }

    /// The static X25519 key (for `KEK_card`).
    pub fn kex(&self) -> &X25519Secret {
        &self.kex
    }

    /// The Ed25519 key (for EMM-Gs).
    pub fn signing(&self) -> &SigningKey {
        &self.signing
    }

    pub fn public(&self) -> OperatorPublic {
        OperatorPublic {
            operator_id: self.operator_id,
            x25519: self.kex.public(),
            ed25519: self.signing.public(),
        }
    }
}

pub use proto::operator::OperatorPublic;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_info_round_trips_through_json() {
        let op = OperatorKeys::generate(7);
        let public = op.public();
        let json = serde_json::to_string(&public).unwrap();
        assert!(json.contains(&hex::encode(public.x25519)));
        assert!(json.contains(&hex::encode(public.ed25519)));
        let back: OperatorPublic = serde_json::from_str(&json).unwrap();
        assert_eq!(back, public);
        assert!(serde_json::from_str::<OperatorPublic>(
            r#"{"operator_id":1,"x25519":"00","ed25519":"00"}"#
        )
        .is_err());
    }

    #[test]
    fn debug_does_not_print_secrets() {
        let op = OperatorKeys::generate(7);
        let seed = hex::encode(op.signing().seed().expose());
        let dbg = format!("{op:?}");
        assert!(dbg.contains("REDACTED"));
        assert!(!dbg.contains(&seed));
    }

    #[test]
    fn personalization_carries_both_public_keys() {
        let op = OperatorKeys::generate(7);
        let p = op.public().personalization(42);
        assert_eq!(p.card_id, 42);
        assert_eq!(p.operator_id, 7);
        assert_eq!(p.operator_kex, op.kex().public());
        assert_eq!(p.operator_sig, op.signing().public());
    }
}
