use super::*;
use crate::schedule::ControlWordSchedule;
use proto::crypto::X25519Secret;
use proto::emm::EmmKind;

const NOW: u64 = 1_700_000_000;
const DAY: u64 = 86_400;

struct TestCard {
    id: u32,
    secret: X25519Secret,
}

impl TestCard {
    fn new(id: u32) -> Self {
        TestCard {
            id,
            secret: X25519Secret::random(),
        }
    }
    fn kek(&self, op: [u8; 32]) -> Kek {
        Kek::derive_card(&self.secret, self.id, &op).unwrap()
    }
    /// What the card does: parse, check the address, open with its KEK.
    fn open(&self, op: [u8; 32], bytes: &[u8]) -> (Emm, EmmPayload) {
        let emm = Emm::from_bytes(bytes).unwrap();
        assert_eq!(emm.kind, EmmKind::UNIQUE);
        assert_eq!(emm.address, self.id);
        let payload = emm.open_unique(&self.kek(op)).unwrap();
        (emm, payload)
    }
}

/// The operator's X25519 public key, as personalization gives it to
/// the card.
fn op(e: &KeyEngine) -> [u8; 32] {
    e.operator().public().x25519
}

fn engine_with(cards: &[&TestCard]) -> KeyEngine {
    let mut e = KeyEngine::new(OperatorKeys::generate(1));
    for c in cards {
        e.add_card(c.id, c.secret.public()).unwrap();
    }
    e
}

fn entitle_of(c: &EmmCommand) -> &Entitle {
    match c {
        EmmCommand::Entitle(e) => e,
        other => panic!("expected ENTITLE, got {other:?}"),
    }
}

#[test]
fn emm_u_opens_on_the_card_with_its_entitlements() {
    let card = TestCard::new(42);
    let mut e = engine_with(&[&card]);
    e.add_product(7).unwrap();
    e.add_product(8).unwrap();
    e.add_product(9).unwrap();
    e.entitle(42, 7, NOW - DAY, NOW + 30 * DAY).unwrap();
    e.entitle(42, 8, NOW, NOW + DAY).unwrap();

    let bytes = e.emm_u_for(42, NOW).unwrap();
    let (emm, payload) = card.open(op(&e), &bytes);
    assert_eq!(emm.seq, 1);
    assert_eq!(payload.time, NOW);
    assert_eq!(payload.commands.len(), 2);
    let first = entitle_of(&payload.commands[0]);
    assert_eq!(
        (first.product, first.generation, first.start, first.end),
        (7, 1, NOW - DAY, NOW + 30 * DAY)
    );
    assert_eq!(&first.key, e.product_key(7).unwrap().1);
    assert_eq!(entitle_of(&payload.commands[1]).product, 8);

    // Another card's KEK does not open it.
    let other = TestCard::new(42);
    let emm = Emm::from_bytes(&bytes).unwrap();
    assert!(emm.open_unique(&other.kek(op(&e))).is_err());
}

#[test]
fn sequence_numbers_strictly_increase_per_card() {
    let a = TestCard::new(1);
    let b = TestCard::new(2);
    let mut e = engine_with(&[&a, &b]);
    let mut last = 0;
    for i in 0..5 {
        let (emm, _) = a.open(op(&e), &e.emm_u_for(1, NOW + i).unwrap());
        assert!(emm.seq > last, "{} after {last}", emm.seq);
        last = emm.seq;
    }
    assert_eq!(last, 5);
    assert_eq!(e.last_emm_u_seq(1).unwrap(), 5);
    // Card 2 has its own counter, starting at 1.
    let (emm, _) = b.open(op(&e), &e.emm_u_for(2, NOW).unwrap());
    assert_eq!(emm.seq, 1);
    // Pairing EMMs share the counter.
    let (emm, payload) = a.open(op(&e), &e.emm_u_pair(1, [9; 32], NOW).unwrap());
    assert_eq!(emm.seq, 6);
    assert_eq!(
        payload.commands,
        vec![EmmCommand::Pair { receiver: [9; 32] }]
    );
    // A removed and re-registered card resumes, never reusing a nonce.
    e.remove_card(1).unwrap();
    assert_eq!(e.emm_u_for(1, NOW), Err(EngineError::UnknownCard(1)));
    e.add_card(1, a.secret.public()).unwrap();
    let (emm, _) = a.open(op(&e), &e.emm_u_for(1, NOW).unwrap());
    assert_eq!(emm.seq, 7);
    // Restoring from storage only moves the counter forward.
    e.raise_emm_u_seq(1, 3).unwrap();
    e.raise_emm_u_seq(1, 100).unwrap();
    let (emm, _) = a.open(op(&e), &e.emm_u_for(1, NOW).unwrap());
    assert_eq!(emm.seq, 101);
}

#[test]
fn batch_matches_single_and_allocates_once() {
    let cards: Vec<TestCard> = (1..=20).map(TestCard::new).collect();
    let refs: Vec<&TestCard> = cards.iter().collect();
    let mut e = engine_with(&refs);
    e.add_product(5).unwrap();
    for c in &cards {
        e.entitle(c.id, 5, NOW, NOW + DAY).unwrap();
    }
    let ids: Vec<u32> = cards.iter().map(|c| c.id).collect();
    let mut out = Vec::with_capacity(4096);
    let ptr = out.as_ptr();
    e.emm_u_batch(&ids, NOW, &mut out).unwrap();
    assert_eq!(out.as_ptr(), ptr, "the batch reallocated");
    // 16-byte header, 8-byte time, one 58-byte ENTITLE, 16-byte tag.
    assert_eq!(out.len(), ids.len() * (16 + 8 + ENTITLE_LEN + 16));
    for (c, emm) in cards.iter().zip(out.chunks(16 + 8 + ENTITLE_LEN + 16)) {
        let (_, p) = c.open(op(&e), emm);
        assert_eq!(entitle_of(&p.commands[0]).product, 5);
    }
    // An unknown card fails the batch before anything is written.
    out.clear();
    assert_eq!(
        e.emm_u_batch(&[1, 99, 2], NOW, &mut out),
        Err(EngineError::UnknownCard(99))
    );
    assert!(out.is_empty());
    assert_eq!(e.last_emm_u_seq(1).unwrap(), 1);
}

#[test]
fn ended_entitlements_get_no_new_key() {
    let card = TestCard::new(3);
    let mut e = engine_with(&[&card]);
    e.add_product(1).unwrap();
    e.add_product(2).unwrap();
    e.entitle(3, 1, NOW - 2 * DAY, NOW - DAY).unwrap();
    e.entitle(3, 2, NOW + DAY, NOW + 2 * DAY).unwrap();
    let (_, p) = card.open(op(&e), &e.emm_u_for(3, NOW).unwrap());
    assert_eq!(p.commands.len(), 1);
    assert_eq!(entitle_of(&p.commands[0]).product, 2);
    assert_eq!(
        e.unentitle(3, 2).unwrap(),
        Some(Entitlement {
            product: 2,
            start: NOW + DAY,
            end: NOW + 2 * DAY
        })
    );
    assert_eq!(e.unentitle(3, 2).unwrap(), None);
    let (_, p) = card.open(op(&e), &e.emm_u_for(3, NOW).unwrap());
    assert!(p.commands.is_empty());
}

#[test]
fn renewal_changes_generation_and_key() {
    let card = TestCard::new(5);
    let mut e = engine_with(&[&card]);
    assert_eq!(e.add_product(10).unwrap(), 1);
    e.entitle(5, 10, NOW, NOW + DAY).unwrap();
    let (_, before) = card.open(op(&e), &e.emm_u_for(5, NOW).unwrap());
    let old_key = entitle_of(&before.commands[0]).key.clone();

    assert_eq!(e.renew_product_key(10).unwrap(), 2);
    assert_eq!(e.product_generation(10).unwrap(), 2);
    let (_, after) = card.open(op(&e), &e.emm_u_for(5, NOW).unwrap());
    let ent = entitle_of(&after.commands[0]);
    assert_eq!(ent.generation, 2);
    assert_ne!(ent.key, old_key);
    assert_eq!(
        e.renew_product_key(11),
        Err(EngineError::UnknownProduct(11))
    );

    // ECMs can still be sealed under the previous generation, not older.
    let cws = ControlWordSchedule::new(10).unwrap().pair(1, 0).unwrap();
    let header = |generation| EcmHeader {
        product: 10,
        generation,
        epoch: 0,
        service: 1,
    };
    let ecm = e.seal_ecm(header(1), &cws, NOW, 0).unwrap();
    let k1 = old_key.epoch_key(10, 1, 0).ecm_key();
    assert_eq!(ecm.open(&k1).unwrap().cws, cws);
    e.renew_product_key(10).unwrap();
    assert_eq!(
        e.seal_ecm(header(1), &cws, NOW, 0),
        Err(EngineError::UnknownGeneration {
            product: 10,
            generation: 1
        })
    );
    e.seal_ecm(header(2), &cws, NOW, 0).unwrap();
}

#[test]
fn ecm_opens_with_the_epoch_key() {
    let mut e = engine_with(&[]);
    e.add_product(4).unwrap();
    let mut sched = ControlWordSchedule::new(10).unwrap();
    let epoch = sched.epoch_at(NOW);
    let cws = sched.pair(100, epoch).unwrap();
    let ecm = e.ecm(4, epoch, 100, &cws, NOW, 16).unwrap();
    assert_eq!(
        ecm.header,
        EcmHeader {
            product: 4,
            generation: 1,
            epoch,
            service: 100
        }
    );
    // Through the wire format, as the card sees it.
    let ecm = Ecm::from_bytes(&ecm.to_bytes()).unwrap();
    let (gen, kp) = e.product_key(4).unwrap();
    let key = kp.epoch_key(4, gen, epoch).ecm_key();
    let p = ecm.open(&key).unwrap();
    assert_eq!((&p.cws, p.time, p.maturity), (&cws, NOW, 16));
    // Another epoch's key does not open it.
    assert!(ecm
        .open(&kp.epoch_key(4, gen, epoch + 1).ecm_key())
        .is_err());
    assert_eq!(
        e.ecm(5, epoch, 100, &cws, NOW, 0),
        Err(EngineError::UnknownProduct(5))
    );
}

#[test]
fn ecm_never_reuses_a_nonce() {
    let mut e = engine_with(&[]);
    e.add_product(4).unwrap();
    let mut sched = ControlWordSchedule::new(10).unwrap();
    let cws = sched.pair(1, 50).unwrap();
    let a = e.ecm(4, 50, 1, &cws, NOW, 0).unwrap();
    // A repetition is byte-identical.
    assert_eq!(e.ecm(4, 50, 1, &cws, NOW, 0).unwrap(), a);
    // Other content under the same (key, nonce) is refused.
    assert_eq!(
        e.ecm(4, 50, 1, &cws, NOW + 1, 0),
        Err(EngineError::EcmResealed {
            product: 4,
            service: 1,
            epoch: 50
        })
    );
    // Another service has its own nonce.
    e.ecm(4, 50, 2, &sched.pair(2, 50).unwrap(), NOW, 0)
        .unwrap();
    let next = sched.pair(1, 51).unwrap();
    e.ecm(4, 51, 1, &next, NOW + 10, 0).unwrap();
    assert!(matches!(
        e.ecm(4, 50, 1, &cws, NOW, 0),
        Err(EngineError::EcmEpochRegressed {
            epoch: 50,
            last: 51,
            ..
        })
    ));
}

#[test]
fn emm_g_is_signed_and_carries_no_keys() {
    let mut e = engine_with(&[]);
    let op = e.operator().public().ed25519;
    let bytes = e
        .emm_g(NOW, vec![EmmCommand::BlockCards(vec![1, 2, 3])])
        .unwrap();
    let emm = Emm::from_bytes(&bytes).unwrap();
    assert_eq!(
        (emm.kind, emm.address, emm.seq),
        (EmmKind::GLOBAL, GLOBAL_ADDRESS, 1)
    );
    let p = emm.verify_global(&op).unwrap();
    assert_eq!(p.commands, vec![EmmCommand::BlockCards(vec![1, 2, 3])]);
    let second = Emm::from_bytes(&e.emm_g(NOW, vec![]).unwrap()).unwrap();
    assert_eq!(second.seq, 2);

    let entitle = EmmCommand::Entitle(Entitle {
        product: 1,
        generation: 1,
        start: 0,
        end: 1,
        key: ProductKey::random(),
    });
    assert_eq!(
        e.emm_g(NOW, vec![entitle]),
        Err(EngineError::CommandNotAllowed {
            kind: "EMM-G",
            command: "ENTITLE"
        })
    );
    assert_eq!(
        e.emm_g(NOW, vec![EmmCommand::BlockCards((1..=64).collect())]),
        Err(EngineError::BlockListTooLong(64))
    );
    assert_eq!(e.emm_g_seq(), 2, "refused EMM-Gs use no sequence number");
}

#[test]
fn blocking_many_cards_spans_several_emm_gs() {
    let mut e = engine_with(&[]);
    let op = e.operator().public().ed25519;
    let ids: Vec<u32> = (1..=2000).collect();
    let emms = e.emm_g_block_cards(NOW, &ids).unwrap();
    assert!(emms.len() > 1);
    let mut blocked = Vec::new();
    for bytes in &emms {
        let p = Emm::from_bytes(bytes).unwrap().verify_global(&op).unwrap();
        for c in p.commands {
            match c {
                EmmCommand::BlockCards(v) => blocked.extend(v),
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(blocked, ids);
}

#[test]
fn emm_u_rejects_global_only_and_oversized_commands() {
    let card = TestCard::new(8);
    let mut e = engine_with(&[&card]);
    assert_eq!(
        e.emm_u(8, NOW, vec![EmmCommand::BlockCards(vec![8])]),
        Err(EngineError::CommandNotAllowed {
            kind: "EMM-U",
            command: "BLOCK CARDS"
        })
    );
    let many = vec![EmmCommand::Pair { receiver: [0; 32] }; 200];
    assert!(matches!(
        e.emm_u(8, NOW, many),
        Err(EngineError::EmmTooLarge(_))
    ));
    assert_eq!(e.last_emm_u_seq(8).unwrap(), 0);
    let (_, p) = card.open(op(&e), &e.emm_u(8, NOW, vec![EmmCommand::Unpair]).unwrap());
    assert_eq!(p.commands, vec![EmmCommand::Unpair]);
}

#[test]
fn card_and_product_bookkeeping_errors() {
    let card = TestCard::new(9);
    let mut e = engine_with(&[&card]);
    assert_eq!(
        e.add_card(9, card.secret.public()),
        Err(EngineError::CardExists(9))
    );
    assert_eq!(e.add_card(0, [9; 32]), Err(EngineError::InvalidCardId(0)));
    assert_eq!(
        e.add_card(GLOBAL_ADDRESS, [9; 32]),
        Err(EngineError::InvalidCardId(GLOBAL_ADDRESS))
    );
    // The all-zero point is of low order: no contributory secret.
    assert!(matches!(
        e.add_card(10, [0; 32]),
        Err(EngineError::CardKey { card: 10, .. })
    ));
    assert_eq!(e.entitle(9, 1, 0, 1), Err(EngineError::UnknownProduct(1)));
    e.add_product(1).unwrap();
    assert_eq!(e.add_product(1), Err(EngineError::ProductExists(1)));
    assert_eq!(e.entitle(10, 1, 0, 1), Err(EngineError::UnknownCard(10)));
    assert_eq!(
        e.entitle(9, 1, 5, 4),
        Err(EngineError::InvalidDates { start: 5, end: 4 })
    );
    for p in 100..100 + MAX_ENTITLEMENTS_PER_CARD as u32 {
        e.add_product(p).unwrap();
        e.entitle(9, p, 0, NOW).unwrap();
    }
    assert_eq!(
        e.entitle(9, 1, 0, 1),
        Err(EngineError::TooManyEntitlements(9))
    );
    // Re-entitling a held product only changes its dates.
    e.entitle(9, 100, 1, NOW + 1).unwrap();
    assert_eq!(e.entitlements(9).unwrap().len(), MAX_ENTITLEMENTS_PER_CARD);
    // The largest EMM-U a card can get still fits the protocol.
    let (_, p) = card.open(op(&e), &e.emm_u_for(9, 0).unwrap());
    assert_eq!(p.commands.len(), MAX_ENTITLEMENTS_PER_CARD);
    let removed = e.remove_card(9).unwrap();
    assert_eq!(removed.len(), MAX_ENTITLEMENTS_PER_CARD);
    assert_eq!(e.card_count(), 0);
    assert_eq!(e.remove_card(9), Err(EngineError::UnknownCard(9)));
}

#[test]
fn prepared_cards_belong_to_their_operator() {
    let card = TestCard::new(11);
    let mut a = engine_with(&[]);
    let b = engine_with(&[]);
    let prepared = b.prepare_card(11, card.secret.public()).unwrap();
    assert_eq!(prepared.id(), 11);
    assert_eq!(
        a.insert_card(prepared),
        Err(EngineError::ForeignPreparedCard(11))
    );
    let prepared = a.prepare_card(11, card.secret.public()).unwrap();
    a.insert_card(prepared).unwrap();
    assert_eq!(a.card_public(11).unwrap(), card.secret.public());
    assert_eq!(a.card_kek(11).unwrap(), &card.kek(op(&a)));
}

#[test]
fn debug_prints_no_key() {
    let card = TestCard::new(12);
    let mut e = engine_with(&[&card]);
    e.add_product(1).unwrap();
    let key_hex = hex::encode(e.product_key(1).unwrap().1.expose());
    let kek_hex = hex::encode(e.card_kek(12).unwrap().expose());
    let dbg = format!("{e:?}");
    assert!(!dbg.contains(&key_hex));
    assert!(!dbg.contains(&kek_hex));
    // Nor as a list of decimal bytes.
    let key_dec = format!("{:?}", e.product_key(1).unwrap().1.expose());
    assert!(!dbg.contains(key_dec.trim_matches(&['[', ']'][..])));
}
