//! The whole CA core in process: a blank card is personalized for the
//! headend's operator, given product P until a date by an EMM-U from the
//! headend's key engine, and then opens P's ECMs: the CWs it returns are the
//! ones the headend put in.

use card::eeprom::MemEeprom;
use card::Applet;
use cardlink::{CardClient, InProcessCard};
use headend_engine::schedule::ControlWordSchedule;
use headend_engine::{KeyEngine, OperatorKeys};
use proto::apdu::StatusWord;
use proto::crypto::X25519Secret;

const CARD: u32 = 42;
const SPORTS: u32 = 7;
const SERVICE: u16 = 0x0101;
/// 2026-12-01T00:00:00Z.
const T0: u64 = 1_796_083_200;
const DAY: u64 = 86_400;

type Card = CardClient<InProcessCard<MemEeprom>>;

fn provision(engine: &mut KeyEngine, card_id: u32) -> Card {
    let mut card = CardClient::new(InProcessCard::new(
        Applet::power_on(MemEeprom::default()).unwrap(),
    ));
    card.select().unwrap();
    let public = card
        .personalize(&engine.operator().public().personalization(card_id))
        .unwrap();
    card.lock().unwrap();
    engine.add_card(card_id, public).unwrap();
    card
}

fn open_session(card: &mut Card) -> X25519Secret {
    let rx = X25519Secret::random();
    let info = card.info().unwrap();
    card.establish_session(&rx, &info).unwrap();
    rx
}

#[test]
fn blank_card_to_control_words() {
    let mut engine = KeyEngine::new(OperatorKeys::generate(1));
    engine.add_product(SPORTS).unwrap();
    let mut card = provision(&mut engine, CARD);
    let info = card.info().unwrap();
    assert_eq!(info.card_id, CARD);
    assert_eq!(info.state, proto::card::LifeCycle::LOCKED);

    let until = T0 + 30 * DAY;
    engine.entitle(CARD, SPORTS, T0, until).unwrap();
    let emm = engine.emm_u_for(CARD, T0).unwrap();
    card.process_emm(&emm).unwrap();
    let ents = card.list_entitlements().unwrap();
    assert_eq!(ents.len(), 1);
    assert_eq!(
        (ents[0].product, ents[0].start, ents[0].end),
        (SPORTS, T0, until)
    );

    open_session(&mut card);
    let mut cws = ControlWordSchedule::new(10).unwrap();
    let first = cws.epoch_at(T0 + DAY);
    for epoch in first..first + 20 {
        let pair = cws.pair(SERVICE, epoch).unwrap();
        let time = epoch * 10;
        let ecm = engine.ecm(SPORTS, epoch, SERVICE, &pair, time, 0).unwrap();
        let got = card.process_ecm(&proto::Codec::to_bytes(&ecm)).unwrap();
        assert_eq!(got.cws, pair, "epoch {epoch}");
        assert_eq!(got.time, time);
    }

    // After the end date, the same product's ECMs are refused.
    let late = cws.epoch_at(until + 60);
    let pair = cws.pair(SERVICE, late).unwrap();
    let ecm = engine
        .ecm(SPORTS, late, SERVICE, &pair, until + 60, 0)
        .unwrap();
    let err = card.process_ecm(&proto::Codec::to_bytes(&ecm)).unwrap_err();
    assert_eq!(err.status(), Some(StatusWord::ECM_OUTSIDE_DATES));
}

#[test]
fn losing_a_product_cuts_off_at_the_next_key_generation_only_for_that_card() {
    let mut engine = KeyEngine::new(OperatorKeys::generate(1));
    engine.add_product(SPORTS).unwrap();
    let mut keep = provision(&mut engine, 1);
    let mut lose = provision(&mut engine, 2);
    for (id, card) in [(1, &mut keep), (2, &mut lose)] {
        engine.entitle(id, SPORTS, T0, T0 + 30 * DAY).unwrap();
        card.process_emm(&engine.emm_u_for(id, T0).unwrap())
            .unwrap();
        open_session(card);
    }
    // Card 2 loses the product: the headend renews K_P at once and sends
    // the new generation to the cards that still hold the product.
    engine.unentitle(2, SPORTS).unwrap();
    engine.renew_product_key(SPORTS).unwrap();
    keep.process_emm(&engine.emm_u_for(1, T0 + 60).unwrap())
        .unwrap();
    lose.process_emm(&engine.emm_u_for(2, T0 + 60).unwrap())
        .unwrap();

    let mut cws = ControlWordSchedule::new(10).unwrap();
    let epoch = cws.epoch_at(T0 + 120);
    let pair = cws.pair(SERVICE, epoch).unwrap();
    let ecm = proto::Codec::to_bytes(
        &engine
            .ecm(SPORTS, epoch, SERVICE, &pair, T0 + 120, 0)
            .unwrap(),
    );
    assert_eq!(keep.process_ecm(&ecm).unwrap().cws, pair);
    let err = lose.process_ecm(&ecm).unwrap_err();
    assert_eq!(err.status(), Some(StatusWord::ECM_UNKNOWN_GENERATION));
}
