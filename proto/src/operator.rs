//! The operator's public information: what `headend init` writes as
//! `operator.json` and the card factory writes into every card. It crosses
//! from the headend to the provisioning tool, so it lives here. In JSON the
//! keys are lowercase hex strings.

use crate::card::Personalization;
use serde::{Deserialize, Serialize};

/// The public half of the operator's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OperatorPublic {
    pub operator_id: u32,
    /// For `KEK_card`.
    #[serde(with = "hex::serde")]
    pub x25519: [u8; 32],
    /// For signed EMMs.
    #[serde(with = "hex::serde")]
    pub ed25519: [u8; 32],
}

impl OperatorPublic {
    /// The PERSONALIZE data for one card of this operator.
    pub fn personalization(&self, card_id: u32) -> Personalization {
        Personalization {
            card_id,
            operator_id: self.operator_id,
            operator_kex: self.x25519,
            operator_sig: self.ed25519,
        }
    }
}
