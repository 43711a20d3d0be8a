//! Every way the card must say no: each with its own status word, and with
//! the stored state (the EEPROM image itself) unchanged.

use proto::apdu::{Cla, Command, Ins, StatusWord};
use proto::emm::EmmCommand;
use proto::Codec;
use testkit::operator::*;

/// Runs `f`, expects `sw`, and checks the EEPROM and state are untouched.
fn rejects(
    c: &mut MemCard,
    sw: StatusWord,
    f: impl FnOnce(&mut MemCard) -> Result<(), cardlink::ClientError>,
) {
    let before_mem = applet(c).store().eeprom().0.clone();
    let before = applet(c).state().clone();
    let err = f(c).expect_err("the card must refuse");
    assert_eq!(err.status(), Some(sw), "{err}");
    assert_eq!(applet(c).state(), &before);
    assert!(applet(c).store().eeprom().0 == before_mem, "EEPROM changed");
}

#[test]
fn whole_flow_releases_the_right_control_words() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let ecm = op.ecm(PRODUCT, 1000, T0 + 10, [1; 16], [2; 16]);
    let cw = c.process_ecm(&ecm).unwrap();
    assert_eq!(cw.cws.even.expose(), &[1; 16]);
    assert_eq!(cw.cws.odd.expose(), &[2; 16]);
    let ents = c.list_entitlements().unwrap();
    assert_eq!(ents.len(), 1);
    assert_eq!(ents[0].product, PRODUCT);
    assert_eq!(ents[0].end, T0 + 30 * DAY);
}

#[test]
fn emm_for_another_card() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let other = proto::crypto::X25519Secret::random().public();
    let emm = op.emm_u(
        CARD + 1,
        &other,
        T0 + 1,
        vec![op.entitle(T0, T0 + 99 * DAY)],
    );
    rejects(&mut c, StatusWord::EMM_WRONG_ADDRESS, |c| {
        c.process_emm(&emm)
    });
}

#[test]
fn forged_or_bit_flipped_emm() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let public = c.info().unwrap().public_key;
    let good = op.emm_u(CARD, &public, T0 + 1, vec![op.entitle(T0, T0 + 99 * DAY)]);
    // A flip in the body, the sequence number, or the tag.
    for i in [6, 13, 20, good.len() - 1] {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        rejects(&mut c, StatusWord::EMM_AUTH_FAILED, |c| c.process_emm(&bad));
    }
    // Sealed under a KEK the operator does not have.
    let mut forger = Operator::new();
    forger.seq = 100;
    let forged = forger.emm_u(
        CARD,
        &public,
        T0 + 1,
        vec![forger.entitle(T0, T0 + 99 * DAY)],
    );
    rejects(&mut c, StatusWord::EMM_AUTH_FAILED, |c| {
        c.process_emm(&forged)
    });
    // Truncated: no longer parses.
    rejects(&mut c, StatusWord::WRONG_DATA, |c| {
        c.process_emm(&good[..good.len() - 3])
    });
    // The genuine one still goes through afterwards.
    c.process_emm(&good).unwrap();
}

#[test]
fn bad_signature_on_global_emm() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let good = op.emm_g(T0 + 5, vec![EmmCommand::BlockCards(vec![CARD])]);
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 10] ^= 0x80;
    rejects(&mut c, StatusWord::EMM_BAD_SIGNATURE, |c| {
        c.process_emm(&bad)
    });
    let mut bad = good.clone();
    bad[20] ^= 0x01;
    rejects(&mut c, StatusWord::EMM_BAD_SIGNATURE, |c| {
        c.process_emm(&bad)
    });
    let mut impostor = Operator::new();
    let forged = impostor.emm_g(T0 + 5, vec![EmmCommand::BlockCards(vec![CARD])]);
    rejects(&mut c, StatusWord::EMM_BAD_SIGNATURE, |c| {
        c.process_emm(&forged)
    });
    // The real one blocks the card.
    c.process_emm(&good).unwrap();
    assert!(c.list_entitlements().unwrap().is_empty());
}

#[test]
fn replayed_or_older_emm() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let public = c.info().unwrap().public_key;
    let first = op.emm_u(CARD, &public, T0 + 1, vec![op.entitle(T0, T0 + 40 * DAY)]);
    let second = op.emm_u(CARD, &public, T0 + 2, vec![op.entitle(T0, T0 + 50 * DAY)]);
    c.process_emm(&second).unwrap();
    rejects(&mut c, StatusWord::EMM_REPLAYED, |c| c.process_emm(&second));
    rejects(&mut c, StatusWord::EMM_REPLAYED, |c| c.process_emm(&first));
    let g1 = op.emm_g(T0 + 3, vec![EmmCommand::BlockCards(vec![CARD])]);
    c.process_emm(&g1).unwrap();
    rejects(&mut c, StatusWord::EMM_REPLAYED, |c| c.process_emm(&g1));
}

/// A carousel repeat (the same entitlement under a newer seq) and an EMM-G
/// that names other cards change nothing: accepted, and not a byte of
/// EEPROM written, until the clock has moved a checkpoint step (3600 s).
/// An older change still cannot be replayed after a newer one.
#[test]
fn an_emm_that_changes_nothing_writes_nothing() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let public = c.info().unwrap().public_key;
    let change = op.emm_u(CARD, &public, T0 + 1, vec![op.entitle(T0, T0 + 40 * DAY)]);
    c.process_emm(&change).unwrap();
    let before = applet(&mut c).store().eeprom().0.clone();
    let writes = applet(&mut c).eeprom_writes();
    for t in [T0 + 60, T0 + 120, T0 + 3000] {
        let repeat = op.emm_u(CARD, &public, t, vec![op.entitle(T0, T0 + 40 * DAY)]);
        c.process_emm(&repeat).unwrap();
        let others = op.emm_g(t, vec![EmmCommand::BlockCards(vec![CARD + 1])]);
        c.process_emm(&others).unwrap();
    }
    assert_eq!(applet(&mut c).eeprom_writes(), writes, "a repeat wrote");
    assert!(
        applet(&mut c).store().eeprom().0 == before,
        "EEPROM changed"
    );
    // The clock checkpoint: one write, an hour on.
    let later = op.emm_u(
        CARD,
        &public,
        T0 + 3700,
        vec![op.entitle(T0, T0 + 40 * DAY)],
    );
    c.process_emm(&later).unwrap();
    assert!(applet(&mut c).eeprom_writes() > writes);
    // A real change is stored, and the change before it is refused.
    let shorter = op.emm_u(
        CARD,
        &public,
        T0 + 3800,
        vec![op.entitle(T0, T0 + 30 * DAY)],
    );
    c.process_emm(&shorter).unwrap();
    rejects(&mut c, StatusWord::EMM_REPLAYED, |c| c.process_emm(&later));
    rejects(&mut c, StatusWord::EMM_REPLAYED, |c| c.process_emm(&change));
}

#[test]
fn ecm_for_a_product_not_held() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let ecm = op.ecm(PRODUCT + 1, 1000, T0 + 10, [1; 16], [2; 16]);
    rejects(&mut c, StatusWord::ECM_NOT_ENTITLED, |c| {
        c.process_ecm(&ecm).map(drop)
    });
}

#[test]
fn forged_or_bit_flipped_ecm() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let good = op.ecm(PRODUCT, 1000, T0 + 10, [1; 16], [2; 16]);
    // The epoch and service in the header, and the body, are all bound.
    for i in [12, 18, 30, good.len() - 1] {
        let mut bad = good.clone();
        bad[i] ^= 0x04;
        rejects(&mut c, StatusWord::ECM_AUTH_FAILED, |c| {
            c.process_ecm(&bad).map(drop)
        });
    }
    let forger = Operator::new();
    let forged = forger.ecm(PRODUCT, 1000, T0 + 10, [9; 16], [9; 16]);
    rejects(&mut c, StatusWord::ECM_AUTH_FAILED, |c| {
        c.process_ecm(&forged).map(drop)
    });
    rejects(&mut c, StatusWord::WRONG_DATA, |c| {
        c.process_ecm(&good[..40]).map(drop)
    });
    assert!(c.process_ecm(&good).is_ok());
}

#[test]
fn ecm_outside_entitlement_dates() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let before = op.ecm(PRODUCT, 1, T0 - 10, [1; 16], [2; 16]);
    rejects(&mut c, StatusWord::ECM_OUTSIDE_DATES, |c| {
        c.process_ecm(&before).map(drop)
    });
    let after = op.ecm(PRODUCT, 2, T0 + 31 * DAY, [1; 16], [2; 16]);
    rejects(&mut c, StatusWord::ECM_OUTSIDE_DATES, |c| {
        c.process_ecm(&after).map(drop)
    });
}

#[test]
fn old_ecm_replayed_after_the_entitlement_ended() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let public = c.info().unwrap().public_key;
    let old = op.ecm(PRODUCT, 1, T0 + DAY, [1; 16], [2; 16]);
    c.process_ecm(&old).unwrap();
    // Time moves past the end: an authenticated EMM carries the new time.
    let later = op.emm_u(CARD, &public, T0 + 40 * DAY, vec![]);
    c.process_emm(&later).unwrap();
    assert_eq!(c.info().unwrap().clock, T0 + 40 * DAY);
    rejects(&mut c, StatusWord::ECM_OUTSIDE_DATES, |c| {
        c.process_ecm(&old).map(drop)
    });
    // And the clock survives a power cycle.
    let mem = c.into_transport().applet.into_eeprom();
    let mut c = MemCard::new(cardlink::InProcessCard::new(
        card::Applet::power_on(mem).unwrap(),
    ));
    c.select().unwrap();
    assert_eq!(c.info().unwrap().clock, T0 + 40 * DAY);
}

#[test]
fn ecm_without_session_and_paired_to_another_receiver() {
    let mut op = Operator::new();
    let (mut c, rx) = entitled_card(&mut op);
    let ecm = op.ecm(PRODUCT, 1000, T0 + 10, [1; 16], [2; 16]);
    c.select().unwrap(); // re-selection drops the session
    rejects(&mut c, StatusWord::NO_SESSION, |c| {
        c.process_ecm(&ecm).map(drop)
    });
    let public = c.info().unwrap().public_key;
    let pair = op.emm_u(
        CARD,
        &public,
        T0 + 1,
        vec![EmmCommand::Pair {
            receiver: rx.public(),
        }],
    );
    c.process_emm(&pair).unwrap();
    let other = proto::crypto::X25519Secret::random();
    let info = c.info().unwrap();
    rejects(&mut c, StatusWord::NOT_PAIRED_RECEIVER, |c| {
        c.establish_session(&other, &info)
    });
    c.establish_session(&rx, &info).unwrap();
    c.process_ecm(&ecm).unwrap();
}

#[test]
fn malformed_apdus_and_unknown_cla_ins() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let raw = |c: &mut MemCard, b: &[u8]| {
        let before = applet(c).state().clone();
        let r = cardlink::CardTransport::transmit(c.transport(), b).unwrap();
        assert_eq!(applet(c).state(), &before);
        StatusWord::from_bytes(r[r.len() - 2], r[r.len() - 1])
    };
    assert_eq!(raw(&mut c, &[0x80]), StatusWord::WRONG_LENGTH);
    assert_eq!(
        raw(&mut c, &[0x80, 0x40, 0, 0, 10, 1, 2]),
        StatusWord::WRONG_LENGTH
    );
    assert_eq!(
        raw(&mut c, &[0x80, 0x40, 0, 0, 0, 0, 0]),
        StatusWord::WRONG_DATA
    );
    assert_eq!(
        raw(&mut c, &[0xA0, 0x40, 0, 0]),
        StatusWord::CLA_NOT_SUPPORTED
    );
    assert_eq!(
        raw(&mut c, &[0x80, 0x99, 0, 0]),
        StatusWord::INS_NOT_SUPPORTED
    );
    assert_eq!(
        raw(&mut c, &[0x00, 0xB0, 0, 0]),
        StatusWord::INS_NOT_SUPPORTED
    );
    assert_eq!(raw(&mut c, &[0x80, 0xCA, 1, 0]), StatusWord::INCORRECT_P1P2);
    assert_eq!(
        raw(&mut c, &[0x80, 0x42, 0, 0, 3, 1, 2, 3]),
        StatusWord::WRONG_DATA
    );
    // A chain that switches instruction half way.
    assert_eq!(raw(&mut c, &[0x90, 0x40, 0, 0, 2, 1, 2]), StatusWord::OK);
    assert_eq!(
        raw(&mut c, &[0x80, 0x42, 0, 0, 2, 1, 2]),
        StatusWord::LAST_COMMAND_EXPECTED
    );
    let unselected =
        Command::new(Cla::PROPRIETARY, Ins::GET_INFO, 0, 0, vec![], Some(256)).to_bytes();
    let mut fresh = blank_card();
    let r = cardlink::CardTransport::transmit(fresh.transport(), &unselected).unwrap();
    assert_eq!(&r[..], &[0x6A, 0x82]);
}

#[test]
fn life_cycle_is_enforced() {
    let op = Operator::new();
    let mut c = blank_card();
    c.select().unwrap();
    let ecm = op.ecm(PRODUCT, 1, T0, [0; 16], [0; 16]);
    rejects(&mut c, StatusWord::CONDITIONS_NOT_SATISFIED, |c| c.lock());
    rejects(&mut c, StatusWord::CONDITIONS_NOT_SATISFIED, |c| {
        c.process_ecm(&ecm).map(drop)
    });
    c.personalize(&op.personalization(CARD)).unwrap();
    // Not operational before lock.
    rejects(&mut c, StatusWord::CONDITIONS_NOT_SATISFIED, |c| {
        c.process_emm(&ecm)
    });
    rejects(&mut c, StatusWord::CONDITIONS_NOT_SATISFIED, |c| {
        c.personalize(&op.personalization(CARD)).map(drop)
    });
    c.lock().unwrap();
    rejects(&mut c, StatusWord::CONDITIONS_NOT_SATISFIED, |c| {
        c.personalize(&op.personalization(CARD + 1)).map(drop)
    });
    rejects(&mut c, StatusWord::CONDITIONS_NOT_SATISFIED, |c| c.lock());
    // Only the public key and card id ever come out (that the key seed is
    // in no response is the applet's unit test `the_card_key_never_leaves`).
    let info = c.info().unwrap();
    assert_eq!(info.card_id, CARD);
    assert_eq!(info.state, proto::card::LifeCycle::LOCKED);
    assert!(applet(&mut c).state().has_key());
}

#[test]
fn bad_personalization_data() {
    let mut c = blank_card();
    c.select().unwrap();
    let op = Operator::new();
    let mut p = op.personalization(CARD).to_bytes();
    p.pop();
    let err = c
        .command(Command::proprietary(Ins::PERSONALIZE, 0, p))
        .expect_err("truncated personalization");
    assert_eq!(err.status(), Some(StatusWord::WRONG_DATA));
    let mut weak = op.personalization(CARD);
    weak.operator_kex = [0; 32];
    let err = c.personalize(&weak).expect_err("low-order operator key");
    assert_eq!(err.status(), Some(StatusWord::WRONG_DATA));
    assert_eq!(c.info().unwrap().state, proto::card::LifeCycle::BLANK);
}

#[test]
fn long_emm_by_chaining_over_a_short_only_reader() {
    let mut op = Operator::new();
    let mut c = MemCard::new(
        cardlink::InProcessCard::new(card::Applet::power_on(Default::default()).unwrap())
            .short_only(),
    );
    c.select().unwrap();
    c.personalize(&op.personalization(CARD)).unwrap();
    c.lock().unwrap();
    let ids: Vec<u32> = (1000..1063).collect();
    let cmds = (0..8)
        .map(|_| EmmCommand::BlockCards(ids.clone()))
        .collect();
    let emm = op.emm_g(T0, cmds);
    assert!(emm.len() > 1000);
    c.process_emm(&emm).unwrap();
    assert_eq!(c.info().unwrap().emm_g_seq, 1);
}

#[test]
fn get_response_reports_what_is_still_waiting() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let t =
        |c: &mut MemCard, b: &[u8]| cardlink::CardTransport::transmit(c.transport(), b).unwrap();
    // GET INFO without Le: the data waits behind 61xx.
    let r = t(&mut c, &[0x80, 0xCA, 0, 0]);
    assert_eq!(r[0], 0x61);
    let total = r[1] as usize;
    let r = t(&mut c, &[0x00, 0xC0, 0, 0, 10]);
    assert_eq!(r.len(), 12);
    assert_eq!(&r[10..], &[0x61, (total - 10) as u8]);
    let r = t(&mut c, &[0x00, 0xC0, 0, 0, 0]);
    assert_eq!(r.len(), total - 10 + 2);
    assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
}

#[test]
fn a_current_ecm_refused_for_its_dates_still_moves_the_clock() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let old = op.ecm(PRODUCT, 1, T0 + DAY, [1; 16], [2; 16]);
    c.process_ecm(&old).unwrap();
    // The headend's current ECM, after the end: refused, stored state
    // untouched, but the card now knows what time it is.
    let current = op.ecm(PRODUCT, 2, T0 + 31 * DAY, [1; 16], [2; 16]);
    rejects(&mut c, StatusWord::ECM_OUTSIDE_DATES, |c| {
        c.process_ecm(&current).map(drop)
    });
    rejects(&mut c, StatusWord::ECM_OUTSIDE_DATES, |c| {
        c.process_ecm(&old).map(drop)
    });
}

#[test]
fn passing_an_end_date_is_persisted_at_once() {
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let public = c.info().unwrap().public_key;
    // A second product that ends a minute after T0.
    let mut short = op.entitle(T0, T0 + 60);
    if let proto::emm::EmmCommand::Entitle(e) = &mut short {
        e.product = PRODUCT + 1;
    }
    let emm = op.emm_u(CARD, &public, T0, vec![short]);
    c.process_emm(&emm).unwrap();
    let stored = applet(&mut c).state().clock;
    // Two minutes later: well under CLOCK_PERSIST_STEP, but past an end.
    let ecm = op.ecm(PRODUCT, 3, T0 + 120, [1; 16], [2; 16]);
    c.process_ecm(&ecm).unwrap();
    assert_eq!(applet(&mut c).state().clock, T0 + 120);
    assert!(stored < T0 + 60);
}
