//! kill -9 at random moments, mid-rotation and mid-write, at least 20
//! times, restarting the real daemon each time.
//!
//! Checked across every run:
//! * every acknowledged write (product, card, subscription, rotation) is
//!   there after the last restart;
//! * ECM epochs and EMM sequence numbers only move forward;
//! * no (key, nonce) pair is used with two different plaintexts: an ECM
//!   header (which fixes the key and the nonce) always comes with the same
//!   bytes, and an EMM-U (card, seq) never comes with other bytes;
//! * a card that stays powered in this process keeps accepting every EMM
//!   addressed to it and gets control words from every run's ECMs.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const PERIOD_MS: u64 = 150;
const CYCLE_MS: u64 = 400;
const RUNS: usize = 22;
const SERVICE: u16 = 0x101;
const CARD: u32 = 1001;

#[test]
fn kill_dash_nine_loses_nothing_and_reuses_no_nonce() {
    let started = Instant::now();
    let mut rng = Rng::from_env();
    let mut h = Headend::init(BIN, PERIOD_MS, Some(CYCLE_MS));
    h.start();
    let op = operator(&h);
    h.post("/api/v1/products", json!({"name": "sports", "id": 1}));
    h.post(
        "/api/v1/channels",
        json!({"name": "sport1", "service_id": SERVICE, "product": 1, "ecm_pid": 0x201, "emm_pid": 0x202}),
    );
    let (mut card, public) = new_card(&op, CARD);
    register(&h, CARD, &public);
    h.post(
        "/api/v1/subscriptions",
        plan_subscription(CARD, 1, "2099-12-31"),
    );

    // Acknowledged writes.
    let mut acked_products: Vec<String> = vec!["sports".into()];
    let mut acked_cards: Vec<u32> = vec![CARD];
    let mut acked_subs: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    let mut acked_generation: HashMap<u32, u64> = HashMap::new();
    // What was on the air.
    let mut ecm_bytes: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut emm_bytes: HashMap<(u32, u64), Vec<u8>> = HashMap::new();
    let mut last_seq: HashMap<u32, u64> = HashMap::new();
    let mut last_epoch: u64 = 0;
    let mut last_generation: u64 = 0;
    let mut runs_with_cw = 0;
    let mut cws_total = 0;
    let mut next_card = 5000u32;
    let mut next_product = 0u32;
    let mut sections = Sections::default();

    for run in 0..RUNS {
        if run > 0 {
            h.start();
        }
        let run_start = Instant::now();
        let length = Duration::from_millis(700 + rng.below(600));
        let mut got_cw = false;
        let mut writes = 0;
        while run_start.elapsed() < length {
            // Some API writes, acknowledged only on a 2xx answer.
            match rng.below(6) {
                0 => {
                    next_card += 1;
                    let mut k = [0u8; 32];
                    for b in &mut k {
                        *b = rng.next() as u8;
                    }
                    k[31] &= 0x7f;
                    k[0] |= 0x40;
                    if let Some((201, _)) = h.request(
                        "POST",
                        "/api/v1/cards",
                        Some(&json!({"card_id": next_card, "public_key": hex::encode(k), "operator_id": op.operator_id})),
                    ) {
                        acked_cards.push(next_card);
                    }
                }
                1 => {
                    if let Some(&id) = acked_cards.last() {
                        if id != CARD && !acked_subs.contains_key(&(id, 1)) {
                            let until = 4_000_000_000 + rng.below(100_000_000);
                            let until_text = headend::state::rfc3339(until);
                            if let Some((201, _)) = h.request(
                                "POST",
                                "/api/v1/subscriptions",
                                Some(&plan_subscription(id, 1, &until_text)),
                            ) {
                                acked_subs.insert((id, 1), until);
                            }
                        }
                    }
                }
                2 => {
                    next_product += 1;
                    let name = format!("extra{next_product}");
                    if let Some((201, _)) =
                        h.request("POST", "/api/v1/products", Some(&json!({"name": name})))
                    {
                        acked_products.push(name);
                    }
                }
                3 => {
                    if let Some((200, v)) =
                        h.request("POST", "/api/v1/rotate", Some(&json!({"product": 1})))
                    {
                        let g = v["rotated"][0]["generation"].as_u64().unwrap();
                        acked_generation.insert(1, g);
                    }
                }
                _ => {}
            }
            writes += 1;
            // Watch the air and feed the card.
            if let Some((ecms, emms)) = sections.poll(&h) {
                for s in &emms {
                    let (addr, seq, _) = emm_of(s);
                    if let Some(prev) = emm_bytes.insert((addr, seq), s.clone()) {
                        assert_eq!(&prev, s, "EMM for card {addr} seq {seq} with other bytes");
                    }
                    // EMM-Us only move forward; EMM-Gs may be repeats of
                    // a delivery (the same bytes, checked above).
                    if addr != u32::MAX {
                        let last = last_seq.entry(addr).or_insert(0);
                        assert!(seq > *last, "card {addr}: seq {seq} after {last}");
                        *last = seq;
                    }
                }
                feed_emms(&mut card, CARD, &emms);
                for s in &ecms {
                    let (header, ecm) = ecm_of(s);
                    let key = proto::Codec::to_bytes(&header);
                    if let Some(prev) = ecm_bytes.insert(key, s.clone()) {
                        assert_eq!(&prev, s, "ECM {header:?} with other bytes");
                    }
                    assert!(
                        header.epoch >= last_epoch,
                        "epoch {} after {last_epoch}",
                        header.epoch
                    );
                    last_epoch = header.epoch;
                    assert!(u64::from(header.generation) >= last_generation);
                    last_generation = u64::from(header.generation);
                    if card.process_ecm(ecm).is_ok() {
                        got_cw = true;
                        cws_total += 1;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(15 + rng.below(30)));
        }
        if got_cw {
            runs_with_cw += 1;
        } else {
            panic!(
                "run {run}: the card got no control word from the restarted daemon in {length:?}; log:\n{}",
                h.log()
            );
        }
        // Kill: half the time just after a rotation or a write was sent,
        // the rest at an arbitrary point.
        let agent = h.agent.clone();
        let url = h.url("/api/v1/rotate");
        let token = h.token.clone();
        let in_flight = std::thread::spawn(move || {
            agent
                .post(&url)
                .set("Authorization", &format!("Bearer {token}"))
                .send_json(json!({"product": 1}))
                .ok()
                .and_then(|r| r.into_json::<Value>().ok())
        });
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        h.kill9();
        if let Some(v) = in_flight.join().unwrap() {
            if let Some(g) = v["rotated"][0]["generation"].as_u64() {
                acked_generation.insert(1, g);
            }
        }
        eprintln!("run {run}: {writes} steps, {length:?}, killed");
    }

    // The last restart: everything acknowledged is there.
    h.start();
    let products = h.get("/api/v1/products");
    for name in &acked_products {
        assert!(
            products
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == *name),
            "acknowledged product {name} lost"
        );
    }
    let generation = products
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == 1)
        .unwrap()["generation"]
        .as_u64()
        .unwrap();
    if let Some(&g) = acked_generation.get(&1) {
        assert!(
            generation >= g,
            "acknowledged generation {g} lost ({generation})"
        );
    }
    for id in &acked_cards {
        let (st, _) = h
            .request("GET", &format!("/api/v1/cards/{id}"), None)
            .unwrap();
        assert_eq!(st, 200, "acknowledged card {id} lost");
    }
    let subs = h.get("/api/v1/subscriptions");
    for ((card, product), until) in &acked_subs {
        assert!(
            subs.as_array()
                .unwrap()
                .iter()
                .any(|s| s["card_id"] == *card
                    && s["product"] == *product
                    && s["end_unix"] == *until),
            "acknowledged subscription of card {card} lost"
        );
    }
    // The card still works with the last run.
    let mut ok_after = false;
    wait_for(
        "a CW after the last restart",
        Duration::from_secs(5),
        || {
            if let Some((ecms, emms)) = sections.poll(&h) {
                feed_emms(&mut card, CARD, &emms);
                for s in &ecms {
                    if card.process_ecm(ecm_of(s).1).is_ok() {
                        ok_after = true;
                    }
                }
            }
            ok_after
        },
    );
    let status = h.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
    eprintln!(
        "{RUNS} kills in {:?}: {} ECMs ({} re-emitted identically after a restart), {} EMMs seen, {cws_total} CWs, {runs_with_cw} runs with CWs, {} cards, {} subscriptions acknowledged",
        started.elapsed(),
        ecm_bytes.len(),
        sections.repeated_across_runs,
        emm_bytes.len(),
        acked_cards.len(),
        acked_subs.len()
    );
    assert!(ecm_bytes.len() > RUNS);
    assert!(last_seq.contains_key(&CARD));
}
