//! The card's behaviour, written once over any [`CardTransport`]: the
//! in-process applet and the real pcscd + vpcd + `smartcard emulate` run
//! the very same functions. Each takes a blank card, not yet selected.
#![allow(dead_code)]

use cardlink::{CardClient, CardTransport};
use proto::apdu::{Cla, Command, Ins, StatusWord};
use proto::card::{CardInfo, LifeCycle};
use proto::emm::EmmCommand;
use proto::Codec;
use testkit::operator::{Operator, CARD, DAY, T0};

/// Sends raw bytes; returns the status word (and checks there is one).
pub fn raw<T: CardTransport>(c: &mut CardClient<T>, apdu: &[u8]) -> StatusWord {
    let r = c
        .transport()
        .transmit(apdu)
        .unwrap_or_else(|e| panic!("transport failed on {apdu:02X?}: {e}"));
    assert!(r.len() >= 2, "no status word for {apdu:02X?}");
    StatusWord::from_bytes(r[r.len() - 2], r[r.len() - 1])
}

fn refused<T>(r: Result<T, cardlink::ClientError>) -> StatusWord {
    match r {
        Ok(_) => panic!("the card must refuse"),
        Err(e) => e
            .status()
            .unwrap_or_else(|| panic!("not a status word: {e}")),
    }
}

/// Personalizes and locks a blank card; returns its info.
pub fn issue<T: CardTransport>(c: &mut CardClient<T>, op: &Operator) -> CardInfo {
    c.select().unwrap();
    c.personalize(&op.personalization(CARD)).unwrap();
    c.lock().unwrap();
    c.info().unwrap()
}

pub fn personalize_blank_card<T: CardTransport>(c: &mut CardClient<T>) {
    let op = Operator::new();
    c.select().unwrap();
    let blank = c.info().unwrap();
    assert_eq!(blank.state, LifeCycle::BLANK);
    assert_eq!(blank.card_id, 0);
    assert_eq!(blank.public_key, [0; 32]);
    let public = c.personalize(&op.personalization(CARD)).unwrap();
    assert_ne!(public, [0; 32]);
    let info = c.info().unwrap();
    assert_eq!(info.state, LifeCycle::PERSONALIZED);
    assert_eq!(info.card_id, CARD);
    assert_eq!(info.public_key, public);
    assert_eq!(info.operator_kex, op.kex.public());
    assert_eq!(info.operator_sig, op.sig.public());
}

pub fn lock_card<T: CardTransport>(c: &mut CardClient<T>) {
    let op = Operator::new();
    let info = issue(c, &op);
    assert_eq!(info.state, LifeCycle::LOCKED);
    assert_eq!(info.card_id, CARD);
    // A locked card stays locked.
    assert_eq!(refused(c.lock()), StatusWord::CONDITIONS_NOT_SATISFIED);
    c.select().unwrap();
    assert_eq!(c.info().unwrap().state, LifeCycle::LOCKED);
}

pub fn locked_card_refuses_personalization<T: CardTransport>(c: &mut CardClient<T>) {
    let op = Operator::new();
    let before = issue(c, &op);
    let other = Operator::new();
    assert_eq!(
        refused(c.personalize(&other.personalization(CARD + 1))),
        StatusWord::CONDITIONS_NOT_SATISFIED
    );
    assert_eq!(c.info().unwrap(), before);
}

pub fn wrong_cla_and_ins<T: CardTransport>(c: &mut CardClient<T>) {
    // Before SELECT, the proprietary class finds no application.
    assert_eq!(raw(c, &[0x80, 0xCA, 0, 0, 0]), StatusWord::FILE_NOT_FOUND);
    c.select().unwrap();
    let before = c.info().unwrap();
    for (apdu, sw) in [
        (&[0xA0, 0x40, 0, 0][..], StatusWord::CLA_NOT_SUPPORTED),
        (&[0xFF, 0xCA, 0, 0, 0], StatusWord::CLA_NOT_SUPPORTED),
        (&[0x10, 0xA4, 4, 0], StatusWord::CLA_NOT_SUPPORTED),
        (&[0x80, 0x99, 0, 0], StatusWord::INS_NOT_SUPPORTED),
        (&[0x80, 0xA4, 4, 0], StatusWord::INS_NOT_SUPPORTED),
        (&[0x00, 0xB0, 0, 0], StatusWord::INS_NOT_SUPPORTED),
        (&[0x00, 0xCA, 0, 0, 0], StatusWord::INS_NOT_SUPPORTED),
        (&[0x80, 0xCA, 1, 0, 0], StatusWord::INCORRECT_P1P2),
        (&[0x00, 0xA4, 0, 0, 1, 0x3F], StatusWord::INCORRECT_P1P2),
        (&[0x00, 0xC0, 0, 0, 0], StatusWord::CONDITIONS_NOT_SATISFIED),
    ] {
        assert_eq!(raw(c, apdu), sw, "{apdu:02X?}");
    }
    // Selecting another application deselects this one.
    assert_eq!(
        raw(c, &[0x00, 0xA4, 4, 0, 3, 1, 2, 3]),
        StatusWord::FILE_NOT_FOUND
    );
    assert_eq!(raw(c, &[0x80, 0xCA, 0, 0, 0]), StatusWord::FILE_NOT_FOUND);
    c.select().unwrap();
    assert_eq!(c.info().unwrap(), before);
}

pub fn malformed_and_truncated_apdus<T: CardTransport>(c: &mut CardClient<T>) {
    let op = Operator::new();
    c.select().unwrap();
    let blank = c.info().unwrap();
    for apdu in [
        &[0x80, 0xCA][..],
        &[0x80, 0xCA, 0],
        &[0x80, 0xCA, 0, 0, 5, 1],
        &[0x80, 0xCA, 0, 0, 1, 2, 3, 4],
        &[0x80, 0x10, 0, 0, 0, 0, 0, 1],
        &[0x80, 0x10, 0, 0, 0, 0, 9, 1, 2],
    ] {
        assert_eq!(raw(c, apdu), StatusWord::WRONG_LENGTH, "{apdu:02X?}");
    }
    // PERSONALIZE with its data cut short, or padded.
    let p = op.personalization(CARD).to_bytes();
    for data in [
        &p[..p.len() - 1],
        &p[..10],
        &[p.clone(), vec![0]].concat()[..],
    ] {
        let cmd = Command::proprietary(Ins::PERSONALIZE, 0, data.to_vec());
        assert_eq!(refused(c.command(cmd)), StatusWord::WRONG_DATA);
    }
    assert_eq!(c.info().unwrap(), blank);
    // On a locked card: a truncated EMM and a truncated chain.
    c.personalize(&op.personalization(CARD)).unwrap();
    c.lock().unwrap();
    let locked = c.info().unwrap();
    let mut op = op;
    let emm = op.emm_u(CARD, &locked.public_key, T0, vec![op.entitle(T0, T0 + DAY)]);
    assert_eq!(
        refused(c.process_emm(&emm[..emm.len() - 5])),
        StatusWord::WRONG_DATA
    );
    assert_eq!(raw(c, &[0x90, 0x40, 0, 0, 2, 1, 2]), StatusWord::OK);
    assert_eq!(
        raw(c, &[0x80, 0x42, 0, 0, 2, 1, 2]),
        StatusWord::LAST_COMMAND_EXPECTED
    );
    assert_eq!(c.info().unwrap(), locked);
    assert!(c.list_entitlements().unwrap().is_empty());
    // The genuine EMM still goes through.
    c.process_emm(&emm).unwrap();
    assert_eq!(c.list_entitlements().unwrap().len(), 1);
}

pub fn get_info<T: CardTransport>(c: &mut CardClient<T>) {
    let op = Operator::new();
    let info = issue(c, &op);
    assert_eq!(info.applet_version, proto::card::APPLET_VERSION);
    assert_eq!(info.operator_id, 1);
    assert_eq!(info.entitlements, 0);
    assert_eq!(info.emm_u_seq, 0);
    assert_eq!(info.paired_receiver, None);
    // Asked with a short Le, the card says the right one (6Cxx) and the
    // client asks again; asked with no Le, 61xx and GET RESPONSE.
    let len = info.to_bytes().len();
    let short = Command::new(Cla::PROPRIETARY, Ins::GET_INFO, 0, 0, vec![], Some(4));
    assert_eq!(c.command(short).unwrap().len(), len);
    let none = Command::new(Cla::PROPRIETARY, Ins::GET_INFO, 0, 0, vec![], None);
    assert_eq!(raw(c, &none.to_bytes()).sw1(), 0x61);
    assert_eq!(c.command(none).unwrap(), info.to_bytes());
    assert_eq!(c.info().unwrap(), info);
}

pub fn large_emm_goes_through<T: CardTransport>(c: &mut CardClient<T>) {
    let mut op = Operator::new();
    let info = issue(c, &op);
    let emm = op.emm_u(
        CARD,
        &info.public_key,
        T0,
        vec![op.entitle(T0, T0 + 30 * DAY)],
    );
    c.process_emm(&emm).unwrap();
    // An EMM-G of 8 BLOCK_CARDS commands that leave this card alone.
    let ids: Vec<u32> = (1000..1063).collect();
    let cmds = (0..8)
        .map(|_| EmmCommand::BlockCards(ids.clone()))
        .collect();
    let emm = op.emm_g(T0 + 1, cmds);
    assert!(emm.len() > 2000, "{}", emm.len());
    c.process_emm(&emm).unwrap();
    // It changes nothing, so nothing is stored, not even its seq.
    let after = c.info().unwrap();
    assert_eq!(after.emm_g_seq, 0);
    assert_eq!(c.list_entitlements().unwrap().len(), 1);
    // One that names it among many blocks it.
    let mut ids: Vec<u32> = (2000..2062).collect();
    ids.push(CARD);
    let emm = op.emm_g(T0 + 2, vec![EmmCommand::BlockCards(ids); 6]);
    assert!(emm.len() > 255);
    c.process_emm(&emm).unwrap();
    assert!(c.list_entitlements().unwrap().is_empty());
    assert_eq!(c.info().unwrap().emm_g_seq, 2);
}
