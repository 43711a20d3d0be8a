//! The card applet's APDU dispatch, driven directly (no PC/SC, no
//! libpcsclite): a sequence of command APDUs, resets and power cuts sent
//! to a blank, a personalized or a locked and entitled card.
//!
//! Input: one byte picks the card (`% 3`: blank, personalized, locked);
//! then records of a 2-byte big-endian length and that many bytes, each
//! an APDU for `Applet::process`, except the lengths 0xFFFF (a warm reset)
//! and 0xFFFE (a power cut: the card powers up again from its EEPROM).
//!
//! Besides "no panic": every answer carries a status word; a refused
//! command leaves the stored state exactly as it was; and what powers up
//! after a cut is the state the card was in.
#![no_main]

use card::{Applet, MemEeprom};
use libfuzzer_sys::fuzz_target;
use proto::apdu::{Cla, Command, Ins};
use proto::card::Personalization;
use proto::codec::Codec;
use proto::crypto::{SigningKey, X25519Secret};
use proto::emm::{Emm, EmmCommand, EmmPayload, Entitle};
use proto::secret::{Kek, ProductKey, Seed};
use std::sync::OnceLock;

const CARD_ID: u32 = 42;
/// 2026-12-01T00:00:00Z.
const T0: u64 = 1_796_083_200;
const RESET: usize = 0xFFFF;
const POWER_CUT: usize = 0xFFFE;

/// EEPROM images of a personalized card and of a locked card entitled to
/// product 7 for 30 days, made once through the applet itself with fixed
/// operator keys (the card's own key pair is random, made inside it).
fn images() -> &'static [MemEeprom; 3] {
    static IMAGES: OnceLock<[MemEeprom; 3]> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let kex = X25519Secret::from_seed(&Seed::from_bytes([0x4B; 32]));
        let sig = SigningKey::from_seed(Seed::from_bytes([0x4F; 32])).expect("valid seed");
        let mut a = Applet::power_on(MemEeprom::default()).expect("blank card");
        let blank = a.store().eeprom().clone();
        let ok = |r: Vec<u8>| {
            assert_eq!(r[r.len() - 2..], [0x90, 0x00], "card set-up refused");
            r[..r.len() - 2].to_vec()
        };
        ok(a.process(&Command::select().to_bytes()));
        let p = Personalization {
            card_id: CARD_ID,
            operator_id: 1,
            operator_kex: kex.public(),
            operator_sig: sig.public(),
        };
        let public: [u8; 32] =
            ok(a.process(&Command::proprietary(Ins::PERSONALIZE, 0, p.to_bytes()).to_bytes()))
                .try_into()
                .expect("a public key");
        let personalized = a.store().eeprom().clone();
        ok(a.process(&Command::new(Cla::PROPRIETARY, Ins::LOCK, 0, 0, vec![], None).to_bytes()));
        let kek = Kek::derive_headend(&kex, CARD_ID, &public).expect("KEK");
        let emm = Emm::seal_unique(
            &kek,
            CARD_ID,
            1,
            &EmmPayload {
                time: T0,
                commands: vec![EmmCommand::Entitle(Entitle {
                    product: 7,
                    generation: 1,
                    start: T0,
                    end: T0 + 30 * 86_400,
                    key: ProductKey::from_bytes([0x50; 32]),
                })],
            },
        );
        ok(a.process(
            &Command::new(Cla::PROPRIETARY, Ins::PROCESS_EMM, 0, 0, emm, None).to_bytes(),
        ));
        [blank, personalized, a.into_eeprom()]
    })
}

/// Whether a response's status word says the command did not go through.
/// 90 00 is success, 61 xx "more data", 6C xx "ask again with this Le";
/// a chained part is answered 90 00 before the command runs.
fn refused(r: &[u8]) -> bool {
    let (sw1, sw2) = (r[r.len() - 2], r[r.len() - 1]);
    !matches!((sw1, sw2), (0x90, 0x00) | (0x61, _) | (0x6C, _))
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let image = images()[usize::from(pick) % 3].clone();
    let mut applet = Applet::power_on(image).expect("a valid image");
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        match len {
            RESET => applet.reset(),
            POWER_CUT => {
                let before = applet.state().clone();
                applet = Applet::power_on(applet.into_eeprom()).expect("the EEPROM reads back");
                assert_eq!(applet.state(), &before, "power-up lost or changed state");
            }
            _ => {
                let (apdu, tail) = rest.split_at(len.min(rest.len()));
                rest = tail;
                let before = applet.state().clone();
                let r = applet.process(apdu);
                assert!(r.len() >= 2, "no status word");
                if refused(&r) {
                    assert_eq!(
                        applet.state(),
                        &before,
                        "a refused command changed the card"
                    );
                }
            }
        }
    }
});
