//! `revocation_latency`: from the revoke call to the first ECM that the
//! revoked card cannot use, with 1,000,000 cards holding the product in
//! the headend's SQLite store and the default 100 kbit/s of EMM.
//!
//! The headend's state (`headend::state::Headend`, the daemon's own code)
//! is driven by `tick` on a simulated clock in steps of [`STEP_MS`]: the
//! carousel's byte budget follows that clock, so the EMMs come out at the
//! EMM bandwidth as they would on the air, without a daemon. Everything
//! the output carries (EMM sections, the channel's current ECM) goes to
//! cards of the applet in this process, personalized for the headend's
//! operator and registered through the state as the API registers them:
//! a few paying cards, and the cards to revoke. A revoked card is modelled
//! as a pirate's: it takes no EMM after its revocation (the BLOCK_CARDS
//! EMM-G sent with it would stop an honest card at once), so only the
//! renewal of the product key cuts it off. Its first refused ECM is the
//! first on the new generation.

use super::{round3, splitmix, Settings};
use api::{NewCard, NewChannel, NewProduct, NewSubscription, ProductRef};
use headend::atrest::MasterKey;
use headend::daemon::now_ms;
use headend::metrics::Metrics;
use headend::state::{Headend, Timing};
use headend::store::init_database;
use headend::CaOutput;
use headend_engine::OperatorKeys;
use proto::crypto::X25519Secret;
use proto::emm::GLOBAL_ADDRESS;
use proto::secret::{Kek, Key32};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use testkit::operator::{blank_card, MemCard};

/// The simulated clock's step: the daemon's scheduler ticks every 10 to
/// 50 ms.
const STEP_MS: u64 = 20;
/// The goal: a revoked card is cut off within 30 s.
const GOAL_S: f64 = 30.0;
const PERIOD_MS: u64 = 10_000;
const PRODUCT: u32 = 1;
const SERVICE: u16 = 0x101;
const PAYING: usize = 3;
/// Revocations, one after the other, each at another point of the crypto
/// period (the activation waits for an epoch boundary).
const PHASES: [f64; 3] = [0.1, 0.5, 0.81];
/// The in-process cards' ids: above the imported ones.
const FIRST_REAL: u32 = 2_000_000_001;

/// A card of the applet in this process, and what it made of the air.
struct SimCard {
    id: u32,
    card: MemCard,
    /// When it was revoked (simulated ms): it takes no EMM from then on.
    revoked_ms: Option<u64>,
    cws: u64,
    refused: Vec<String>,
}

impl SimCard {
    fn new(id: u32, core: &mut Headend, now: u64) -> SimCard {
        let op = core.operator_public();
        let mut card = blank_card();
        card.select().expect("SELECT");
        let public = card
            .personalize(&op.personalization(id))
            .expect("personalize");
        card.lock().expect("lock");
        let info = card.info().expect("GET INFO");
        card.establish_session(&X25519Secret::random(), &info)
            .expect("session");
        core.add_card(NewCard::new(id, &public, op.operator_id), now)
            .expect("register");
        core.subscribe(
            NewSubscription {
                card_id: id,
                product: ProductRef::Id(PRODUCT),
                until: "2099-12-31".into(),
                start: None,
            },
            now,
        )
        .expect("subscribe");
        SimCard {
            id,
            card,
            revoked_ms: None,
            cws: 0,
            refused: Vec::new(),
        }
    }
}

/// The air between the headend's output and the cards.
struct Air {
    cards: Vec<SimCard>,
    emm_cursor: u64,
    last_ecm: Option<Arc<[u8]>>,
    /// EMM-G sections seen, and the bytes on the air of those first seen
    /// since the last [`Air::new_emm_g`] call (a delivery's passes repeat
    /// the same sections: this is one pass).
    emm_g_seen: HashSet<Arc<[u8]>>,
    emm_g_new_bytes: u64,
    emm_g_new: u64,
}

/// TS bytes a section takes on the air: a pointer field, then 184
/// payload bytes a packet.
fn air_bytes(len: usize) -> u64 {
    (len as u64 + 1).div_ceil(184) * 188
}

impl Air {
    /// Hands the cards what the output holds since the last call: each
    /// EMM to its card (EMM-Gs to every card), then the channel's ECM if
    /// it is new. Returns the generation of a new ECM.
    fn deliver(&mut self, core: &Headend) -> Option<u32> {
        let out = core.output();
        let (emms, next, dropped) = out.emm_sections_since(self.emm_cursor, usize::MAX);
        assert_eq!(dropped, 0, "the EMM log overflowed between two steps");
        self.emm_cursor = next;
        for e in emms {
            let Some(addr) = ts::psi::emm_section_address(&e.section) else {
                continue;
            };
            if addr == GLOBAL_ADDRESS && self.emm_g_seen.insert(e.section.clone()) {
                self.emm_g_new_bytes += air_bytes(e.section.len());
                self.emm_g_new += 1;
            }
            let emm = &e.section[3..];
            for c in &mut self.cards {
                if c.revoked_ms.is_some() || (addr != c.id && addr != GLOBAL_ADDRESS) {
                    continue;
                }
                if let Err(err) = c.card.process_emm(emm) {
                    panic!("card {} refused an EMM for {addr:#x}: {err}", c.id);
                }
            }
        }
        let ecm = out.current_ecm(SERVICE)?;
        if self.last_ecm.as_ref() == Some(&ecm.section) {
            return None;
        }
        self.last_ecm = Some(ecm.section.clone());
        let body = &ecm.section[3..];
        for c in &mut self.cards {
            match c.card.process_ecm(body) {
                Ok(_) => c.cws += 1,
                Err(e) => c.refused.push(format!(
                    "generation {} epoch {}: {e}",
                    ecm.generation, ecm.epoch
                )),
            }
        }
        Some(ecm.generation)
    }

    /// Bytes and count of the EMM-G sections first seen since the last call.
    fn new_emm_g(&mut self) -> (u64, u64) {
        let r = (self.emm_g_new_bytes, self.emm_g_new);
        self.emm_g_new_bytes = 0;
        self.emm_g_new = 0;
        r
    }
}

pub(crate) fn revocation_latency(s: &Settings) -> Vec<Value> {
    let cards: u32 = if s.quick { 100_000 } else { 1_000_000 };
    let wall = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("headend.db");
    let master = Key32::random();
    // On the step grid, so that points of the period can be hit.
    let mut t = now_ms() / STEP_MS * STEP_MS;
    init_database(&db, &MasterKey::new(&master), &OperatorKeys::generate(1), t).expect("database");
    let timing = Timing {
        period_ms: PERIOD_MS,
        renewal_ms: 30 * 86_400_000,
        cycle_ms: 60_000,
        emm_bitrate: headend_engine::stream::DEFAULT_EMM_BITRATE,
    };
    let mut core = Headend::open(
        &db,
        MasterKey::new(&master),
        1,
        timing,
        &[],
        CaOutput::new(),
        Arc::new(Metrics::default()),
        t,
    )
    .expect("open");
    core.add_product(
        NewProduct {
            name: "basic".into(),
            id: Some(PRODUCT),
        },
        t,
    )
    .expect("product");
    core.add_channel(
        NewChannel {
            name: "one".into(),
            service_id: SERVICE,
            product: ProductRef::Id(PRODUCT),
            ecm_pid: 0x201,
            emm_pid: 0x202,
            maturity: 0,
            input: None,
            output: None,
            clear_services: Vec::new(),
        },
        t,
    )
    .expect("channel");
    // The fleet, as carousel_sqlite imports it: random card keys and KEKs
    // (an X25519 each would change nothing here), every card holding the
    // product.
    let setup = Instant::now();
    let (start, end) = (t / 1000 - 86_400, t / 1000 + 30 * 86_400);
    let mut st = 0x1e70_u64;
    let mut random32 = || {
        let mut b = [0u8; 32];
        for w in b.chunks_mut(8) {
            w.copy_from_slice(&splitmix(&mut st).to_le_bytes());
        }
        b
    };
    let mut id = 1u32;
    while id <= cards {
        let last = (id + 99_999).min(cards);
        let chunk: Vec<(u32, [u8; 32], Kek)> = (id..=last)
            .map(|i| (i, random32(), Kek::from_bytes(random32())))
            .collect();
        core.import_cards(chunk, PRODUCT, start, end, t)
            .expect("import");
        id = last + 1;
    }
    let setup_seconds = setup.elapsed().as_secs_f64();
    let mut air = Air {
        cards: (0..PAYING + PHASES.len())
            .map(|i| SimCard::new(FIRST_REAL + i as u32, &mut core, t))
            .collect(),
        emm_cursor: 0,
        last_ecm: None,
        emm_g_seen: HashSet::new(),
        emm_g_new_bytes: 0,
        emm_g_new: 0,
    };
    let sim_start = t;
    let mut max_tick_ms = 0f64;
    let mut step = |core: &mut Headend, air: &mut Air, t: &mut u64| {
        *t += STEP_MS;
        let w = Instant::now();
        core.tick(*t).expect("tick");
        max_tick_ms = max_tick_ms.max(w.elapsed().as_secs_f64() * 1000.0);
        air.deliver(core)
    };

    // Until every card opens ECMs (their labels and EMM-Us go out when
    // they are registered), and until their fast lane is over: from then
    // on the regular round would reach them in hours, so a paying card
    // has each new key from the renewal's delivery alone, as the
    // imported fleet does.
    while air.cards.iter().any(|c| c.cws == 0) {
        step(&mut core, &mut air, &mut t);
        assert!(
            t - sim_start < 120_000,
            "the in-process cards got no control word in 120 s of air"
        );
    }
    let warm = (t + PERIOD_MS).max(sim_start + headend::state::FAST_WINDOW_MS + PERIOD_MS);
    while t < warm {
        step(&mut core, &mut air, &mut t);
    }
    for c in &mut air.cards {
        c.refused.clear();
    }
    air.new_emm_g();

    let mut samples = Vec::new();
    let mut rows = Vec::new();
    for (k, phase) in PHASES.iter().enumerate() {
        // Wait for the point of the crypto period to revoke at.
        let at = (phase * PERIOD_MS as f64) as u64;
        while t % PERIOD_MS != at - at % STEP_MS {
            step(&mut core, &mut air, &mut t);
        }
        let victim = PAYING + k;
        let old_generation = core.products()[0].active_generation;
        let w = Instant::now();
        core.revoke(air.cards[victim].id, t).expect("revoke");
        let revoke_call_ms = w.elapsed().as_secs_f64() * 1000.0;
        air.cards[victim].revoked_ms = Some(t);
        let revoked_at = t;
        // The BLOCK_CARDS EMM-G sent by the call itself.
        air.deliver(&core);
        air.new_emm_g();
        let mut renewal = None;
        let cut_off_ms = loop {
            step(&mut core, &mut air, &mut t);
            let delivered = renewal
                .as_ref()
                .is_some_and(|r: &api::RenewalStatus| r.delivered);
            if !delivered {
                if let Some(r) = &core.status(t).products[0].renewal {
                    if r.state == "delivering" {
                        renewal = Some(r.clone());
                    }
                }
            }
            if let Some(refusal) = air.cards[victim].refused.first() {
                let ecm = core.output().current_ecm(SERVICE).expect("an ECM");
                assert!(
                    ecm.generation > old_generation,
                    "the revoked card refused {refusal} before the new generation"
                );
                break t - revoked_at;
            }
            assert!(
                t - revoked_at < 300_000,
                "the revoked card still opens ECMs 300 s after its revocation"
            );
        };
        let (pass_bytes, pass_sections) = air.new_emm_g();
        let r = renewal.expect("the renewal was seen on the air");
        let latency = cut_off_ms as f64 / 1000.0;
        samples.push(latency);
        rows.push(json!({
            "phase_of_period": phase,
            "latency_s": round3(latency),
            "method": r.method,
            "subsets": r.subsets,
            "holders": r.holders,
            "passes": r.passes_needed,
            "sd_sections": pass_sections,
            "sd_pass_bytes": pass_bytes,
            "flat_pass_bytes": r.holders * 188,
            "delivery_air_bytes": if r.method == "sd" { pass_bytes } else { r.holders * 188 } * u64::from(r.passes_needed),
            "revoke_call_ms": round3(revoke_call_ms),
        }));
    }
    // Another period on the last generation: the paying cards still open
    // every ECM.
    let end_at = t + PERIOD_MS;
    while t < end_at {
        step(&mut core, &mut air, &mut t);
    }

    let paying = &air.cards[..PAYING];
    let refused: Vec<&String> = paying.iter().flat_map(|c| &c.refused).collect();
    let ours = samples.iter().copied().fold(0f64, f64::max);
    let first = &rows[0];
    vec![json!({
        "figure": "revocation_latency",
        "ours": round3(ours),
        "limit": GOAL_S,
        "ratio": round3(ours / GOAL_S),
        "unit": "s",
        "what": "simulated time from Headend::revoke to the first ECM the revoked card cannot open (the first on the new generation), the worst of revocations at three points of the crypto period, 1 M cards holding the product in SQLite, 100 kbit/s of EMM, vs the 30 s goal",
        "samples_s": samples.iter().map(|&x| round3(x)).collect::<Vec<_>>(),
        "method": first["method"],
        "subsets": first["subsets"],
        "sd_pass_bytes": first["sd_pass_bytes"],
        "flat_pass_bytes": first["flat_pass_bytes"],
        "delivery_air_bytes": first["delivery_air_bytes"],
        "revocations": rows,
        "paying_cards": PAYING,
        "paying_refused": refused.len(),
        "paying_refusals": refused,
        "paying_cws": paying.iter().map(|c| c.cws).sum::<u64>(),
        "meets_goal": ours < GOAL_S && refused.is_empty(),
        "cards": cards as usize + air.cards.len(),
        "emm_bitrate": timing.emm_bitrate,
        "crypto_period_s": PERIOD_MS / 1000,
        "step_ms": STEP_MS,
        "max_tick_ms": round3(max_tick_ms),
        "simulated_s": round3((t - sim_start) as f64 / 1000.0),
        "setup_seconds": round3(setup_seconds),
        "wall_seconds": round3(wall.elapsed().as_secs_f64()),
        "quick": s.quick,
    })]
}
