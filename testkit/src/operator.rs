//! A minimal operator for card tests, written on `proto` alone (no
//! headend): it personalizes cards and writes the EMMs and ECMs a headend
//! would, with keys of its own. With the `in-process` feature, the applet
//! in this process as a blank or an entitled card.

use proto::card::Personalization;
use proto::crypto::{SigningKey, X25519Secret};
use proto::ecm::{Ecm, EcmHeader, EcmPayload};
use proto::emm::{Emm, EmmCommand, EmmPayload, Entitle};
use proto::secret::{ControlWord, CwPair, Kek, ProductKey};
use proto::Codec;

/// The card id the tests issue.
pub const CARD: u32 = 42;
/// The product the tests entitle.
pub const PRODUCT: u32 = 7;
pub const DAY: u64 = 86_400;
/// 2026-12-01T00:00:00Z.
pub const T0: u64 = 1_796_083_200;

/// An operator's keys and its EMM sequence numbers.
#[derive(Debug)]
pub struct Operator {
    pub kex: X25519Secret,
    pub sig: SigningKey,
    /// The key of [`PRODUCT`], generation 1.
    pub product_key: ProductKey,
    /// The last EMM-U sequence number used.
    pub seq: u64,
    /// The last EMM-G sequence number used.
    pub g_seq: u64,
}

impl Default for Operator {
    fn default() -> Self {
        Self::new()
    }
}

impl Operator {
    /// An operator with fresh random keys.
    pub fn new() -> Self {
        Operator {
            kex: X25519Secret::random(),
            sig: SigningKey::random(),
            product_key: ProductKey::random(),
            seq: 0,
            g_seq: 0,
        }
    }

    /// What a card of this operator is personalized with (operator id 1).
    pub fn personalization(&self, card_id: u32) -> Personalization {
        Personalization {
            card_id,
            operator_id: 1,
            operator_kex: self.kex.public(),
            operator_sig: self.sig.public(),
        }
    }

    /// An EMM-U for the card, with the next sequence number.
    pub fn emm_u(
        &mut self,
        card_id: u32,
        card_pub: &[u8; 32],
        time: u64,
        commands: Vec<EmmCommand>,
    ) -> Vec<u8> {
        self.seq += 1;
        let kek = Kek::derive_headend(&self.kex, card_id, card_pub).expect("a card public key");
        Emm::seal_unique(&kek, card_id, self.seq, &EmmPayload { time, commands })
    }

    /// An entitlement to [`PRODUCT`] (generation 1) from `start` to `end`.
    pub fn entitle(&self, start: u64, end: u64) -> EmmCommand {
        EmmCommand::Entitle(Entitle {
            product: PRODUCT,
            generation: 1,
            start,
            end,
            key: self.product_key.clone(),
        })
    }

    /// An EMM-G, with the next sequence number.
    pub fn emm_g(&mut self, time: u64, commands: Vec<EmmCommand>) -> Vec<u8> {
        self.g_seq += 1;
        Emm::sign_global(&self.sig, self.g_seq, &EmmPayload { time, commands })
    }

    /// An ECM of `product` (generation 1, service 100) for `epoch`,
    /// carrying the `even` and `odd` control words.
    pub fn ecm(
        &self,
        product: u32,
        epoch: u64,
        time: u64,
        even: [u8; 16],
        odd: [u8; 16],
    ) -> Vec<u8> {
        let header = EcmHeader {
            product,
            generation: 1,
            epoch,
            service: 100,
        };
        let key = self.product_key.epoch_key(product, 1, epoch).ecm_key();
        Ecm::seal(
            &key,
            header,
            &EcmPayload {
                cws: CwPair {
                    even: ControlWord::from_bytes(even),
                    odd: ControlWord::from_bytes(odd),
                },
                time,
                maturity: 0,
            },
        )
        .to_bytes()
    }
}

#[cfg(feature = "in-process")]
pub use in_process::*;

#[cfg(feature = "in-process")]
mod in_process {
    use super::{Operator, CARD, DAY, T0};
    use card::{Applet, MemEeprom};
    use cardlink::{CardClient, InProcessCard};
    use proto::crypto::X25519Secret;

    /// A client on the applet in this process, in RAM.
    pub type MemCard = CardClient<InProcessCard<MemEeprom>>;

    /// A blank card, powered on (not yet selected).
    pub fn blank_card() -> MemCard {
        CardClient::new(InProcessCard::new(
            Applet::power_on(MemEeprom::default()).expect("a blank card powers on"),
        ))
    }

    /// A card personalized as [`CARD`], locked and entitled to the
    /// product for December 2026, with a session open; and the
    /// receiver's key of that session.
    pub fn entitled_card(op: &mut Operator) -> (MemCard, X25519Secret) {
        let mut c = blank_card();
        c.select().unwrap();
        let public = c.personalize(&op.personalization(CARD)).unwrap();
        c.lock().unwrap();
        let emm = op.emm_u(CARD, &public, T0, vec![op.entitle(T0, T0 + 30 * DAY)]);
        c.process_emm(&emm).unwrap();
        let rx = X25519Secret::random();
        let info = c.info().unwrap();
        c.establish_session(&rx, &info).unwrap();
        (c, rx)
    }

    /// The applet behind the card, to look at its stored state.
    pub fn applet(c: &mut MemCard) -> &Applet<MemEeprom> {
        &c.transport().applet
    }
}
