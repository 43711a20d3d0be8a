//! kill -9 of the real daemon during a product key renewal, once in each
//! of its states: prepared (killed as soon as the rotation is
//! acknowledged, before the scheduler puts it on the air), delivering,
//! delivered but not yet active, and active.
//!
//! The daemon carries thousands of holders at a low EMM bandwidth, so a
//! delivery takes seconds and every state lasts long enough to be caught
//! from `GET /api/v1/status` (`products[].renewal`). After each restart:
//! * the renewal resumes with the same generation: delivering again, then
//!   active (one killed when active stays active);
//! * no ECM header is sealed twice with different bodies, no EMM (address,
//!   seq) comes with other bytes, EMM-U seqs only go up, and ECM
//!   generations never go down;
//! * a paying card in this process, fed only from the air, keeps getting
//!   control words: no ECM is refused once it has had its first EMM.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PERIOD_MS: u64 = 1000;
const CYCLE_MS: u64 = 60_000;
const EMM_BITRATE: u64 = 20_000;
const SERVICE: u16 = 0x101;
const PRODUCT: u32 = 1;
const PAYING: u32 = 1;
/// Imported cards: ids from 100, one in [`EXCLUDED_EVERY`] holding another
/// product only, so that the key goes to a cover of scattered excluded
/// cards and its delivery takes a few seconds at [`EMM_BITRATE`].
const IMPORTED: u32 = 3000;
const EXCLUDED_EVERY: u32 = 40;

/// What was on the air across every run, and the paying card fed from it.
struct Air {
    sections: Sections,
    ecm_bytes: HashMap<Vec<u8>, Vec<u8>>,
    emm_bytes: HashMap<(u32, u64), Vec<u8>>,
    last_emm_u_seq: HashMap<u32, u64>,
    last_generation: u32,
    card: Card,
    /// EMMs the card accepted; ECMs count from the first.
    emms_accepted: usize,
    /// Control words, per ECM generation.
    cws: HashMap<u32, u64>,
    refused: Vec<String>,
}

impl Air {
    /// Polls the air once, checks what is new and feeds the card.
    fn watch(&mut self, h: &Headend) {
        let Some((ecms, emms)) = self.sections.poll(h) else {
            return;
        };
        for s in &emms {
            let (addr, seq, _) = emm_of(s);
            if let Some(prev) = self.emm_bytes.insert((addr, seq), s.clone()) {
                assert_eq!(&prev, s, "EMM for {addr:#x} seq {seq} with other bytes");
                continue;
            }
            if addr != proto::emm::GLOBAL_ADDRESS {
                let last = self.last_emm_u_seq.entry(addr).or_insert(0);
                assert!(seq > *last, "card {addr}: EMM-U seq {seq} after {last}");
                *last = seq;
            }
        }
        self.emms_accepted += feed_emms(&mut self.card, PAYING, &emms);
        for s in &ecms {
            let (header, ecm) = ecm_of(s);
            let key = proto::Codec::to_bytes(&header);
            if let Some(prev) = self.ecm_bytes.insert(key, s.clone()) {
                assert_eq!(&prev, s, "ECM {header:?} sealed twice with other bytes");
            }
            assert!(
                header.generation >= self.last_generation,
                "ECM generation {} after {}",
                header.generation,
                self.last_generation
            );
            self.last_generation = header.generation;
            match self.card.process_ecm(ecm) {
                Ok(_) => *self.cws.entry(header.generation).or_insert(0) += 1,
                Err(e) if self.emms_accepted > 0 => self.refused.push(format!(
                    "ECM generation {} epoch {}: {e}",
                    header.generation, header.epoch
                )),
                Err(_) => {}
            }
        }
    }

    /// Watches the air until `done` holds (at most `timeout`).
    fn until(
        &mut self,
        h: &Headend,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&mut Air, &Headend) -> bool,
    ) {
        let start = Instant::now();
        loop {
            self.watch(h);
            if done(self, h) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "{what}: not within {timeout:?} ({} EMMs on the air, {} accepted by the paying card, {} ECMs, refused {:?}); status: {}\nlog:\n{}",
                self.emm_bytes.len(),
                self.emms_accepted,
                self.ecm_bytes.len(),
                self.refused,
                product_status(h),
                h.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The product's entry in `GET /api/v1/status`.
fn product_status(h: &Headend) -> Value {
    h.get("/api/v1/status")["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == PRODUCT)
        .cloned()
        .unwrap()
}

/// Where a renewal of `generation` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Prepared,
    Delivering,
    Delivered,
    Active,
    Other,
}

fn stage(p: &Value, generation: u64) -> Stage {
    let r = &p["renewal"];
    if r.is_null() || r["generation"] != generation {
        return if p["active_generation"] == generation {
            Stage::Active
        } else {
            Stage::Other
        };
    }
    match (r["state"].as_str().unwrap(), r["delivered"].as_bool()) {
        ("prepared", _) => Stage::Prepared,
        ("delivering", Some(false)) => Stage::Delivering,
        ("delivering", Some(true)) => Stage::Delivered,
        _ => Stage::Other,
    }
}

/// The daemon's folder with a low EMM bandwidth, the two products and the
/// imported cards, written by the library with the daemon stopped.
fn headend_with_many_holders() -> Headend {
    let h = Headend::init(BIN, PERIOD_MS, Some(CYCLE_MS));
    let cfg = std::fs::read_to_string(h.config()).unwrap();
    let cfg: String = cfg
        .lines()
        .map(|l| {
            if l.starts_with("emm_bitrate") {
                format!("emm_bitrate = {EMM_BITRATE}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(cfg.contains(&format!("emm_bitrate = {EMM_BITRATE}\n")));
    std::fs::write(h.config(), cfg).unwrap();
    let daemon = headend::daemon::Daemon::open_config(&h.config()).unwrap();
    let core = daemon.headend();
    let mut core = core.lock().unwrap();
    let now = headend::daemon::now_ms();
    for (id, name) in [(PRODUCT, "basic"), (2, "other")] {
        core.add_product(
            api::NewProduct {
                name: name.into(),
                id: Some(id),
            },
            now,
        )
        .unwrap();
    }
    let mut st = 0x5eed_u64;
    let mut random32 = || {
        let mut b = [0u8; 32];
        for w in b.chunks_mut(8) {
            st = st
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            w.copy_from_slice(&st.to_le_bytes());
        }
        b
    };
    let (start, end) = (now / 1000 - 86_400, now / 1000 + 30 * 86_400);
    let (mut holders, mut others) = (Vec::new(), Vec::new());
    for id in 100..100 + IMPORTED {
        let card = (id, random32(), proto::secret::Kek::from_bytes(random32()));
        if id % EXCLUDED_EVERY == 0 {
            others.push(card);
        } else {
            holders.push(card);
        }
    }
    // In card order, so that their places in the forest interleave; dated
    // before the fast lane's window, as an import made earlier would be
    // (otherwise the restarted daemon repeats all of them first).
    let now = now - 2 * headend::state::FAST_WINDOW_MS;
    for chunk in holders.chunks(EXCLUDED_EVERY as usize - 1) {
        core.import_cards(chunk.to_vec(), PRODUCT, start, end, now)
            .unwrap();
        if !others.is_empty() {
            core.import_cards(vec![others.remove(0)], 2, start, end, now)
                .unwrap();
        }
    }
    drop(core);
    drop(daemon);
    h
}

#[test]
fn kill_dash_nine_in_every_renewal_state_resumes_it_and_refuses_no_paying_card() {
    let started = Instant::now();
    let mut h = headend_with_many_holders();
    h.start();
    let op = operator(&h);
    h.post(
        "/api/v1/channels",
        json!({"name": "one", "service_id": SERVICE, "product": PRODUCT, "ecm_pid": 0x201, "emm_pid": 0x202}),
    );
    let (card, public) = new_card(&op, PAYING);
    register(&h, PAYING, &public);
    h.post(
        "/api/v1/subscriptions",
        plan_subscription(PAYING, PRODUCT, "2099-12-31"),
    );
    let mut air = Air {
        sections: Sections::default(),
        ecm_bytes: HashMap::new(),
        emm_bytes: HashMap::new(),
        last_emm_u_seq: HashMap::new(),
        last_generation: 0,
        card,
        emms_accepted: 0,
        cws: HashMap::new(),
        refused: Vec::new(),
    };
    air.until(
        &h,
        "the paying card's first CW",
        Duration::from_secs(20),
        |a, _| !a.cws.is_empty(),
    );
    // A delivery that takes long enough to be caught mid-way.
    let rotate = |h: &Headend| -> u64 {
        let v = h.post("/api/v1/rotate", json!({"product": PRODUCT}));
        v["rotated"][0]["generation"].as_u64().unwrap()
    };
    let mut delivery_s = Vec::new();

    for target in [
        Stage::Prepared,
        Stage::Delivering,
        Stage::Delivered,
        Stage::Active,
    ] {
        let t0 = Instant::now();
        let generation = match target {
            Stage::Prepared => {
                // Killed as soon as the rotation is acknowledged; the log
                // tells whether a scheduler step came first, and then it
                // is tried again with the next renewal.
                let mut tries = 0;
                loop {
                    tries += 1;
                    let log_before = h.log().len();
                    let g = rotate(&h);
                    h.kill9();
                    let log = h.log();
                    let on_air = format!("generation={g}");
                    let went_on_air = log[log_before..]
                        .lines()
                        .any(|l| l.contains("renewal on the air") && l.contains(&on_air));
                    if !went_on_air {
                        break g;
                    }
                    assert!(
                        tries < 5,
                        "the scheduler put every rotation on the air before the kill"
                    );
                    h.start();
                    air.until(&h, "the renewal active", Duration::from_secs(60), |_, h| {
                        stage(&product_status(h), g) == Stage::Active
                    });
                }
            }
            _ => {
                let g = rotate(&h);
                air.until(
                    &h,
                    &format!("renewal {g} {target:?}"),
                    Duration::from_secs(60),
                    |_, h| {
                        let s = stage(&product_status(h), g);
                        assert!(
                            s != Stage::Other,
                            "renewal {g} in no expected stage: {}",
                            product_status(h)
                        );
                        s == target
                    },
                );
                if target == Stage::Delivering {
                    // Part-way: some passes are still to go.
                    let r = &product_status(&h)["renewal"];
                    assert!(r["emms_left"].as_u64().unwrap() > 0, "{r}");
                    eprintln!("delivery: {r}");
                }
                h.kill9();
                g
            }
        };
        eprintln!(
            "killed with generation {generation} {target:?}, {:?} after the rotation",
            t0.elapsed()
        );
        h.start();
        let resumed = Instant::now();
        let first = product_status(&h);
        if target == Stage::Active {
            assert_eq!(stage(&first, generation), Stage::Active, "{first}");
        } else {
            // The same generation, delivered again from its first pass.
            assert!(
                matches!(
                    stage(&first, generation),
                    Stage::Prepared | Stage::Delivering
                ),
                "after the restart: {first}"
            );
            assert_eq!(first["renewal"]["reason"], "resumed after a restart");
            let mut seen_delivering = false;
            air.until(
                &h,
                &format!("renewal {generation} active after the restart"),
                Duration::from_secs(60),
                |_, h| {
                    let s = stage(&product_status(h), generation);
                    assert!(s != Stage::Other, "{}", product_status(h));
                    seen_delivering |= s == Stage::Delivering;
                    s == Stage::Active
                },
            );
            assert!(seen_delivering, "the resumed renewal was never delivering");
            // The log line the prepared kill is judged by.
            let on_air = format!("generation={generation}");
            assert!(
                h.log()
                    .lines()
                    .any(|l| l.contains("renewal on the air") && l.contains(&on_air)),
                "no \"renewal on the air\" line for generation {generation}"
            );
            delivery_s.push(resumed.elapsed().as_secs_f64());
        }
        // The card opens ECMs of the new generation.
        air.until(
            &h,
            &format!("a CW of generation {generation}"),
            Duration::from_secs(10),
            |a, _| a.cws.get(&(generation as u32)).is_some_and(|&n| n > 0),
        );
        assert!(air.refused.is_empty(), "refused: {:?}", air.refused);
    }

    let status = h.terminate();
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(air.refused.is_empty(), "refused: {:?}", air.refused);
    eprintln!(
        "4 kills in {:?}: {} ECMs, {} EMMs ({} accepted by the paying card), CWs per generation {:?}, resumed renewals active after {delivery_s:?} s",
        started.elapsed(),
        air.ecm_bytes.len(),
        air.emm_bytes.len(),
        air.emms_accepted,
        air.cws
    );
}
