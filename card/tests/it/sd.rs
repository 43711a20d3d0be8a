//! Subset Difference on the card, through the applet's APDU dispatch:
//! labels delivered in EMM-Us, an SD EMM-G taken by the included cards and
//! ignored by the excluded ones, repeats that cost no EEPROM write, the
//! retention of the active and the newest generation, and refusals.

use card::state::CardState;
use proto::apdu::StatusWord;
use proto::ecm::{Ecm, EcmHeader, EcmPayload};
use proto::emm::{pack_payloads, EmmCommand, SdKey, SdLabels, MAX_EMM_U_PAYLOAD};
use proto::sd::{cover, CardAddress, Forest, SdAuthority};
use proto::secret::{ControlWord, CwPair, ProductKey, SdMaster};
use proto::Codec;
use testkit::operator::*;

fn authority(depth: u8) -> SdAuthority {
    SdAuthority::new(Forest::new(depth).unwrap(), SdMaster::random())
}

/// An entitled card (generation 1 of PRODUCT, session open) with the SD
/// labels of card number `n`, delivered in as many EMM-Us as they need.
fn sd_card(op: &mut Operator, auth: &SdAuthority, n: u64) -> MemCard {
    let (mut c, _) = entitled_card(op);
    give_labels(&mut c, op, auth, auth.forest().address(n).unwrap());
    c
}

fn give_labels(c: &mut MemCard, op: &mut Operator, auth: &SdAuthority, a: CardAddress) -> usize {
    let public = c.info().unwrap().public_key;
    let cmds = SdLabels::for_card(&auth.card_labels(a).unwrap());
    let payloads = pack_payloads(T0 + 1, cmds, MAX_EMM_U_PAYLOAD);
    for p in &payloads {
        let emm = op.emm_u(CARD, &public, p.time, p.commands.clone());
        c.process_emm(&emm).unwrap();
    }
    let sd = applet(c).state().sd.clone().expect("SD state");
    assert!(sd.complete(), "{sd:?}");
    assert_eq!(sd.address, a);
    payloads.len()
}

/// The signed EMM-Gs of one SD delivery of `key` as `generation`.
fn sd_emm_gs(
    op: &mut Operator,
    auth: &SdAuthority,
    assigned: u64,
    excluded: &[u64],
    generation: u32,
    key: &ProductKey,
) -> Vec<Vec<u8>> {
    let cov = cover(auth.forest(), assigned, excluded);
    let d = SdKey::wrap(
        auth,
        &cov,
        PRODUCT,
        generation,
        1000 + u64::from(generation),
        key,
    );
    d.payloads(T0 + 2)
        .into_iter()
        .map(|p| op.emm_g(p.time, p.commands))
        .collect()
}

fn ecm(key: &ProductKey, generation: u32, epoch: u64) -> Vec<u8> {
    let header = EcmHeader {
        product: PRODUCT,
        generation,
        epoch,
        service: 100,
    };
    let cw = ControlWord::from_bytes([generation as u8; 16]);
    Ecm::seal(
        &key.epoch_key(PRODUCT, generation, epoch).ecm_key(),
        header,
        &EcmPayload {
            cws: CwPair {
                even: cw.clone(),
                odd: cw,
            },
            time: T0 + 10,
            maturity: 0,
        },
    )
    .to_bytes()
}

fn generations(c: &mut MemCard) -> Vec<u32> {
    applet(c).state().entitlements[0].generations()
}

fn writes(c: &mut MemCard) -> u64 {
    applet(c).eeprom_writes()
}

#[test]
fn included_cards_take_the_key_excluded_cards_do_not() {
    let mut op = Operator::new();
    let auth = authority(4);
    // 10 cards of a 16-leaf tree: the 6 unassigned leaves count as
    // excluded, and cards 2 and 7 are revoked.
    let excluded = [2u64, 7];
    let mut cards: Vec<MemCard> = (0..10).map(|n| sd_card(&mut op, &auth, n)).collect();
    let k2 = ProductKey::random();
    let emms = sd_emm_gs(&mut op, &auth, 10, &excluded, 2, &k2);
    for (n, c) in cards.iter_mut().enumerate() {
        let before = writes(c);
        for e in &emms {
            c.process_emm(e).unwrap();
        }
        let out = excluded.contains(&(n as u64));
        assert_eq!(writes(c) - before, u64::from(!out), "card {n}");
        let r = c.process_ecm(&ecm(&k2, 2, 1000));
        if out {
            assert_eq!(generations(c), [1], "card {n}");
            assert_eq!(
                r.unwrap_err().status(),
                Some(StatusWord::ECM_UNKNOWN_GENERATION),
                "card {n}"
            );
        } else {
            assert_eq!(generations(c), [1, 2], "card {n}");
            assert_eq!(r.unwrap().cws.even.expose(), &[2; 16], "card {n}");
            assert_eq!(c.list_entitlements().unwrap()[0].generation, 2);
        }
        // The old generation still opens on every card.
        let old = ecm(&op.product_key.clone(), 1, 1001);
        c.process_ecm(&old).unwrap();
    }
}

#[test]
fn a_repeated_sd_emm_g_costs_no_write_and_needs_no_fresh_seq() {
    let mut op = Operator::new();
    let auth = authority(4);
    let mut c = sd_card(&mut op, &auth, 3);
    let k2 = ProductKey::random();
    let emms = sd_emm_gs(&mut op, &auth, 16, &[9], 2, &k2);
    c.process_emm(&emms[0]).unwrap();
    let image = applet(&mut c).store().eeprom().0.clone();
    let state: CardState = applet(&mut c).state().clone();
    let w = writes(&mut c);
    // A newer EMM-G (BLOCK_CARDS of someone else, a day later so that the
    // clock checkpoint is written with it) raises the EMM-G seq.
    let block = op.emm_g(T0 + DAY, vec![EmmCommand::BlockCards(vec![CARD + 1])]);
    c.process_emm(&block).unwrap();
    assert_eq!(writes(&mut c), w + 1);
    let after_block = applet(&mut c).store().eeprom().0.clone();
    // The carousel repeats the SD EMM-G, with its older seq: accepted,
    // nothing written, nothing changed.
    for _ in 0..5 {
        c.process_emm(&emms[0]).unwrap();
    }
    assert_eq!(writes(&mut c), w + 1);
    assert!(applet(&mut c).store().eeprom().0 == after_block);
    assert_eq!(applet(&mut c).state().entitlements, state.entitlements);
    assert!(image != after_block);
    // BLOCK_CARDS is still bound to its seq.
    assert_eq!(
        c.process_emm(&block).unwrap_err().status(),
        Some(StatusWord::EMM_REPLAYED)
    );
}

#[test]
fn an_sd_key_of_an_old_generation_or_unheld_product_changes_nothing() {
    let mut op = Operator::new();
    let auth = authority(4);
    let mut c = sd_card(&mut op, &auth, 0);
    let w = writes(&mut c);
    let state = applet(&mut c).state().clone();
    // Generation 1 again, with another key: not newer than what is held.
    let emms = sd_emm_gs(&mut op, &auth, 16, &[], 1, &ProductKey::random());
    c.process_emm(&emms[0]).unwrap();
    // Another product.
    let cov = cover(auth.forest(), 16, &[]);
    let other = SdKey::wrap(&auth, &cov, PRODUCT + 1, 5, 1, &ProductKey::random());
    let g = op.emm_g(T0 + 2, other.payloads(T0 + 2).remove(0).commands);
    c.process_emm(&g).unwrap();
    assert_eq!(writes(&mut c), w);
    assert_eq!(applet(&mut c).state(), &state);
}

#[test]
fn retention_keeps_the_active_generation_and_the_newest() {
    let mut op = Operator::new();
    let auth = authority(4);
    let mut c = sd_card(&mut op, &auth, 5);
    let k1 = op.product_key.clone();
    // The card watches generation 1: it becomes the active one (one write).
    let w = writes(&mut c);
    c.process_ecm(&ecm(&k1, 1, 500)).unwrap();
    assert_eq!(writes(&mut c), w + 1);
    assert_eq!(applet(&mut c).state().entitlements[0].active, Some(1));
    // Still generation 1: no further write.
    c.process_ecm(&ecm(&k1, 1, 501)).unwrap();
    assert_eq!(writes(&mut c), w + 1);
    // Three renewals are delivered before the ECMs switch: 2, 3, then 4.
    // The card keeps 1 (in use) and the newest; "the highest numbers"
    // would have dropped 1 and refused every ECM on the air.
    let keys: Vec<ProductKey> = (0..6).map(|_| ProductKey::random()).collect();
    let deliver = |c: &mut MemCard, op: &mut Operator, g: u32| {
        for e in sd_emm_gs(op, &auth, 16, &[], g, &keys[g as usize - 1]) {
            c.process_emm(&e).unwrap();
        }
    };
    for g in 2..=4 {
        deliver(&mut c, &mut op, g);
    }
    let held = generations(&mut c);
    assert!(held.contains(&1) && held.contains(&4), "{held:?}");
    c.process_ecm(&ecm(&k1, 1, 502)).unwrap();
    // The ECMs move to 4; then 5 and 6 arrive: 4 and 6 are kept, 1 goes.
    c.process_ecm(&ecm(&keys[3], 4, 503)).unwrap();
    assert_eq!(applet(&mut c).state().entitlements[0].active, Some(4));
    deliver(&mut c, &mut op, 5);
    deliver(&mut c, &mut op, 6);
    let held = generations(&mut c);
    assert!(
        held.contains(&4) && held.contains(&6) && !held.contains(&1),
        "{held:?}"
    );
    c.process_ecm(&ecm(&keys[3], 4, 504)).unwrap();
    c.process_ecm(&ecm(&keys[5], 6, 505)).unwrap();
    assert_eq!(
        c.process_ecm(&ecm(&k1, 1, 506)).unwrap_err().status(),
        Some(StatusWord::ECM_UNKNOWN_GENERATION)
    );
    // The active generation survives a power cut.
    let image = c.into_transport().applet.into_eeprom();
    let a = card::Applet::power_on(image).unwrap();
    assert_eq!(a.state().entitlements[0].active, Some(6));
}

#[test]
fn depth_18_labels_take_two_emm_us_and_a_full_emm_g_opens() {
    let mut op = Operator::new();
    let auth = authority(18);
    let forest = auth.forest();
    let n = 77_777u64;
    let (mut c, _) = entitled_card(&mut op);
    let emm_us = give_labels(&mut c, &mut op, &auth, forest.address(n).unwrap());
    assert_eq!(emm_us, 2);
    // 300 random revocations among 300,000 cards: the card's wrap is in
    // one of several EMM-Gs of about 4 KB, each sent whole.
    let mut st = 1u64;
    let excluded: Vec<u64> = (0..300)
        .map(|_| {
            st = st
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (st >> 20) % 300_000
        })
        .filter(|x| *x != n)
        .collect();
    let k2 = ProductKey::random();
    let emms = sd_emm_gs(&mut op, &auth, 300_000, &excluded, 2, &k2);
    assert!(emms.len() >= 3, "{}", emms.len());
    assert!(emms.iter().any(|e| e.len() > 3900));
    let w = writes(&mut c);
    for e in &emms {
        c.process_emm(e).unwrap();
    }
    assert_eq!(writes(&mut c), w + 1);
    c.process_ecm(&ecm(&k2, 2, 9)).unwrap();
    // New labels for another address replace the old ones.
    give_labels(&mut c, &mut op, &auth, forest.address(5).unwrap());
}

#[test]
fn sd_commands_in_the_wrong_emm_or_with_a_bad_check_are_refused() {
    let mut op = Operator::new();
    let auth = authority(4);
    let mut c = sd_card(&mut op, &auth, 1);
    let public = c.info().unwrap().public_key;
    let cov = cover(auth.forest(), 16, &[]);
    let k = SdKey::wrap(&auth, &cov, PRODUCT, 2, 9, &ProductKey::random());
    let check = |c: &mut MemCard, emm: Vec<u8>, sw: StatusWord| {
        let image = applet(c).store().eeprom().0.clone();
        assert_eq!(c.process_emm(&emm).unwrap_err().status(), Some(sw));
        assert!(applet(c).store().eeprom().0 == image);
    };
    // SD_KEY in an EMM-U, SD_LABELS in an EMM-G.
    let u = op.emm_u(CARD, &public, T0 + 5, vec![EmmCommand::SdKey(k.clone())]);
    check(&mut c, u, StatusWord::EMM_BAD_COMMAND);
    let labels = SdLabels::for_card(&auth.card_labels(CardAddress { tree: 0, leaf: 1 }).unwrap());
    let g = op.emm_g(T0 + 5, labels);
    check(&mut c, g, StatusWord::EMM_BAD_COMMAND);
    // A signed SD_KEY whose key check value does not match what the
    // card unwraps.
    let mut bad = k.clone();
    bad.check[7] ^= 1;
    let g = op.emm_g(T0 + 5, vec![EmmCommand::SdKey(bad)]);
    check(&mut c, g, StatusWord::EMM_BAD_COMMAND);
    // An SD EMM-G with a broken signature.
    let mut g = op.emm_g(T0 + 5, vec![EmmCommand::SdKey(k)]);
    let n = g.len();
    g[n - 1] ^= 1;
    check(&mut c, g, StatusWord::EMM_BAD_SIGNATURE);
    assert_eq!(generations(&mut c), [1]);
}
