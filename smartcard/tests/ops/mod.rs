//! A minimal operator for card tests, built on `proto` alone: it writes
//! the EMMs and ECMs a headend would.
#![allow(dead_code)]

use card::eeprom::MemEeprom;
use card::Applet;
use cardlink::{CardClient, InProcessCard};
use proto::card::Personalization;
use proto::crypto::{SigningKey, X25519Secret};
use proto::ecm::{Ecm, EcmHeader, EcmPayload};
use proto::emm::{Emm, EmmCommand, EmmPayload, Entitle};
use proto::secret::{ControlWord, CwPair, Kek, ProductKey};
use proto::Codec;

pub const CARD: u32 = 42;
pub const PRODUCT: u32 = 7;
pub const DAY: u64 = 86_400;
/// 2026-12-01T00:00:00Z.
pub const T0: u64 = 1_796_083_200;

pub struct Operator {
    pub kex: X25519Secret,
    pub sig: SigningKey,
    pub product_key: ProductKey,
    pub seq: u64,
    pub g_seq: u64,
}

impl Operator {
    pub fn new() -> Self {
        Operator {
            kex: X25519Secret::random(),
            sig: SigningKey::random(),
            product_key: ProductKey::random(),
            seq: 0,
            g_seq: 0,
        }
    }

    pub fn personalization(&self, card_id: u32) -> Personalization {
        Personalization {
            card_id,
            operator_id: 1,
            operator_kex: self.kex.public(),
            operator_sig: self.sig.public(),
        }
    }

    pub fn emm_u(
        &mut self,
        card_id: u32,
        card_pub: &[u8; 32],
        time: u64,
        commands: Vec<EmmCommand>,
    ) -> Vec<u8> {
        self.seq += 1;
        let kek = Kek::derive_headend(&self.kex, card_id, card_pub).unwrap();
        Emm::seal_unique(&kek, card_id, self.seq, &EmmPayload { time, commands })
    }

    pub fn entitle(&self, start: u64, end: u64) -> EmmCommand {
        EmmCommand::Entitle(Entitle {
            product: PRODUCT,
            generation: 1,
            start,
            end,
            key: self.product_key.clone(),
        })
    }

    pub fn emm_g(&mut self, time: u64, commands: Vec<EmmCommand>) -> Vec<u8> {
        self.g_seq += 1;
        Emm::sign_global(&self.sig, self.g_seq, &EmmPayload { time, commands })
    }

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

pub type MemCard = CardClient<InProcessCard<MemEeprom>>;

pub fn blank_card() -> MemCard {
    CardClient::new(InProcessCard::new(
        Applet::power_on(MemEeprom::default()).unwrap(),
    ))
}

/// A personalized, locked card entitled to PRODUCT for December 2026,
/// with a session open.
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

pub fn applet(c: &mut MemCard) -> &Applet<MemEeprom> {
    &c.transport().applet
}
