//! Expiry and revocation: when a subscription ends or a card is revoked,
//! that card gets no CW from the first ECM after the next period-key
//! renewal, and the other cards are unaffected.

use crate::common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const CARD_KEEP: u32 = 11;
const CARD_ENDS: u32 = 12;
const CARD_REVOKED: u32 = 13;

#[test]
fn ended_and_revoked_cards_lose_cws_at_the_next_renewal_only() {
    let mut h = Headend::init(BIN, 200, Some(500));
    h.start();
    let op = operator(&h);
    h.post("/api/v1/products", json!({"name": "sports"}));
    h.post(
        "/api/v1/channels",
        json!({"name": "s1", "service_id": 257, "product": "sports", "ecm_pid": 0x201, "emm_pid": 0x202}),
    );
    let mut cards = Vec::new();
    for id in [CARD_KEEP, CARD_ENDS, CARD_REVOKED] {
        let (card, public) = new_card(&op, id);
        register(&h, id, &public);
        cards.push((id, card));
    }
    let soon = headend::state::rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 4,
    );
    h.post(
        "/api/v1/subscriptions",
        plan_subscription(CARD_KEEP, "sports", "2099-12-31"),
    );
    h.post(
        "/api/v1/subscriptions",
        plan_subscription(CARD_ENDS, "sports", &soon),
    );
    h.post(
        "/api/v1/subscriptions",
        plan_subscription(CARD_REVOKED, "sports", "2099-12-31"),
    );

    let mut sections = Sections::default();
    // Per card: the results of each ECM, as (generation, got a CW).
    let mut results: Vec<(u32, u32, bool)> = Vec::new();
    let mut step = |cards: &mut Vec<(u32, crate::common::Card)>,
                    results: &mut Vec<(u32, u32, bool)>| {
        if let Some((ecms, emms)) = sections.poll(&h) {
            for (id, card) in cards.iter_mut() {
                feed_emms(card, *id, &emms);
            }
            for s in &ecms {
                let (header, ecm) = ecm_of(s);
                for (id, card) in cards.iter_mut() {
                    results.push((*id, header.generation, card.process_ecm(ecm).is_ok()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    // All three watch.
    let t = Instant::now();
    while results.iter().filter(|r| r.2).count() < 6 {
        step(&mut cards, &mut results);
        assert!(t.elapsed() < Duration::from_secs(5), "{results:?}");
    }
    for id in [CARD_KEEP, CARD_ENDS, CARD_REVOKED] {
        assert!(
            results.iter().any(|r| r.0 == id && r.2),
            "card {id} never watched"
        );
    }

    // Revoke one card: the renewal makes generation g_rev.
    let revoked = h.post(&format!("/api/v1/cards/{CARD_REVOKED}/revoke"), json!({}));
    assert_eq!(revoked["state"], "revoked");
    let g_rev = h.get("/api/v1/products")[0]["generation"].as_u64().unwrap() as u32;
    let mark = results.len();
    let t = Instant::now();
    while results[mark..].iter().filter(|r| r.1 >= g_rev).count() < 9 {
        step(&mut cards, &mut results);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no ECM of generation {g_rev}"
        );
    }

    // Then the subscription of CARD_ENDS runs out: another renewal, g_end.
    let t = Instant::now();
    let g_end = loop {
        step(&mut cards, &mut results);
        let subs = h.get(&format!("/api/v1/subscriptions?card={CARD_ENDS}"));
        if subs[0]["lapsed"] == true {
            break h.get("/api/v1/products")[0]["generation"].as_u64().unwrap() as u32;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "subscription never lapsed"
        );
    };
    assert!(g_end > g_rev);
    let mark = results.len();
    let t = Instant::now();
    while results[mark..].iter().filter(|r| r.1 >= g_end).count() < 9 {
        step(&mut cards, &mut results);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no ECM of generation {g_end}"
        );
    }

    for &(id, generation, got) in &results {
        match id {
            CARD_REVOKED if generation >= g_rev => {
                assert!(!got, "revoked card got a CW from generation {generation}")
            }
            CARD_ENDS if generation >= g_end => {
                assert!(!got, "ended card got a CW from generation {generation}")
            }
            CARD_KEEP => assert!(got, "the paying card lost a CW at generation {generation}"),
            _ => {}
        }
    }
    // The cut-off was the renewal, not earlier: the revoked card still
    // watched the generation before it.
    assert!(results
        .iter()
        .any(|r| r.0 == CARD_REVOKED && r.1 < g_rev && r.2));
    assert!(results
        .iter()
        .any(|r| r.0 == CARD_KEEP && r.1 >= g_end && r.2));
    assert!(h.terminate().success());
}
