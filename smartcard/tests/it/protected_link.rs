//! The card-to-host link through the real pcscd and vpcd: everything
//! that crosses it is recorded, as a probe on the reader's cable would,
//! and no control word (nor the product key) is ever in it in the clear,
//! while the receiver gets every control word right. In pairing mode the
//! card serves only the receiver it was paired with.
//!
//! Without pcscd these tests fail under `CI=true` and are skipped, with a
//! message, otherwise (see `testkit::vpcd`).

use crate::suite;
use cardlink::{CardClient, Recording};
use proto::apdu::StatusWord;
use proto::crypto::X25519Secret;
use proto::emm::EmmCommand;
use testkit::operator::{Operator, CARD, DAY, PRODUCT, T0};
use testkit::vpcd::{self, pcscd_or_skip};
use testkit::Emulator;

const ECMS: u64 = 50;

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    proto::secret::fill_random(&mut b);
    b
}

/// Whether `needle` occurs anywhere in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_clear_control_word_crosses_pcsc() {
    if !pcscd_or_skip("no_clear_control_word_crosses_pcsc") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slot = vpcd::slot();
    let emu = Emulator::start(crate::SMARTCARD, &slot, &dir.path().join("card.img"));
    let mut op = Operator::new();
    let mut c = CardClient::new(Recording::new(emu.transport()));

    let info = suite::issue(&mut c, &op);
    let emm = op.emm_u(
        CARD,
        &info.public_key,
        T0,
        vec![op.entitle(T0, T0 + 30 * DAY)],
    );
    c.process_emm(&emm).unwrap();
    let rx = X25519Secret::random();
    let info = c.info().unwrap();
    c.establish_session(&rx, &info).unwrap();

    let mut cws = Vec::new();
    for i in 0..ECMS {
        let (even, odd) = (random16(), random16());
        let time = T0 + 10 * (i + 1);
        let ecm = op.ecm(PRODUCT, i, time, even, odd);
        let got = c.process_ecm(&ecm).unwrap();
        assert_eq!(got.cws.even.expose(), &even, "ECM {i}");
        assert_eq!(got.cws.odd.expose(), &odd, "ECM {i}");
        assert_eq!(got.time, time);
        cws.push(even);
        cws.push(odd);
    }

    let rec = c.into_transport();
    let ecm_commands = rec
        .log
        .iter()
        .filter(|(cmd, _)| cmd.get(1) == Some(&proto::apdu::Ins::PROCESS_ECM.0))
        .count();
    assert_eq!(ecm_commands as u64, ECMS, "every ECM went through pcscd");
    let messages: Vec<&[u8]> = rec.messages().collect();
    assert!(messages.iter().all(|m| !m.is_empty()), "no failed exchange");
    // The search works: a piece of a recorded ECM is found.
    let probe = &rec.log.last().unwrap().0[10..26];
    assert!(messages.iter().any(|m| contains(m, probe)));
    for (n, cw) in cws.iter().enumerate() {
        for m in &messages {
            assert!(
                !contains(m, cw),
                "control word {n} crossed the link in clear"
            );
        }
    }
    let key = op.product_key.expose();
    for m in &messages {
        assert!(
            !contains(m, &key[..16]),
            "the product key crossed the link in clear"
        );
    }
}

#[test]
fn paired_card_serves_only_its_receiver() {
    if !pcscd_or_skip("paired_card_serves_only_its_receiver") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slot = vpcd::slot();
    let emu = Emulator::start(crate::SMARTCARD, &slot, &dir.path().join("card.img"));
    let mut op = Operator::new();
    let mut c = emu.connect();
    let info = suite::issue(&mut c, &op);

    let ours = X25519Secret::random();
    let emm = op.emm_u(
        CARD,
        &info.public_key,
        T0,
        vec![
            op.entitle(T0, T0 + 30 * DAY),
            EmmCommand::Pair {
                receiver: ours.public(),
            },
        ],
    );
    c.process_emm(&emm).unwrap();
    let info = c.info().unwrap();
    assert_eq!(info.paired_receiver, Some(ours.public()));

    let (even, odd) = (random16(), random16());
    let ecm = op.ecm(PRODUCT, 1, T0 + 10, even, odd);
    c.establish_session(&ours, &info).unwrap();
    let got = c.process_ecm(&ecm).unwrap();
    assert_eq!(got.cws.even.expose(), &even);
    assert_eq!(got.cws.odd.expose(), &odd);

    // A second receiver with the same card, in another box.
    let theirs = X25519Secret::random();
    let mut other = CardClient::new(Recording::new(emu.transport()));
    other.select().unwrap();
    let err = other
        .establish_session(&theirs, &info)
        .expect_err("a card paired elsewhere refuses the session");
    assert_eq!(err.status(), Some(StatusWord::NOT_PAIRED_RECEIVER));
    assert_eq!(StatusWord::NOT_PAIRED_RECEIVER, StatusWord(0x9B05));
    assert!(
        err.to_string().contains("paired with another receiver"),
        "{err}"
    );
    let ecm2 = op.ecm(PRODUCT, 2, T0 + 20, random16(), random16());
    let err = other
        .process_ecm(&ecm2)
        .expect_err("no session, no control word");
    assert_eq!(err.status(), Some(StatusWord::NO_SESSION));
    let rec = other.into_transport();
    assert_eq!(rec.log.last().unwrap().1.len(), 2, "a bare status word");
    for m in rec.messages() {
        assert!(!contains(m, &even) && !contains(m, &odd));
    }
    for (_, response) in &rec.log {
        assert!(
            response.len() < proto::card::CW_REPLY_LEN,
            "no sealed reply either"
        );
    }

    // The paired receiver is not locked out: it opens a new session.
    c.select().unwrap();
    c.establish_session(&ours, &info).unwrap();
    let (even, odd) = (random16(), random16());
    let got = c
        .process_ecm(&op.ecm(PRODUCT, 3, T0 + 30, even, odd))
        .unwrap();
    assert_eq!(got.cws.even.expose(), &even);
    assert_eq!(got.cws.odd.expose(), &odd);
}
