//! `sd_revocation`: what a Subset Difference renewal costs at 10 M cards,
//! against the same renewal sent as one EMM-U per entitled card.

use crate::{round3, splitmix, Settings};
use proto::crypto::SigningKey;
use proto::emm::{Emm, EmmCommand, SdKey};
use proto::sd::{cover, find_and_derive, CardAddress, Forest, Node, SdAuthority, Subset};
use proto::secret::{ProductKey, SdMaster};
use proto::Codec;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::hint::black_box;
use std::time::Instant;

const CARDS: u64 = 10_000_000;
/// 100 kbit/s of EMM bandwidth, in bytes per second.
const EMM_BYTES_PER_S: f64 = 100_000.0 / 8.0;
/// The budget at r = 1,000: 80 KB on the air.
const BUDGET: f64 = 80_000.0;
/// One EMM-U with one ENTITLE: header, time, the 58-byte command, tag.
const FLAT_EMM_U: u64 = 16 + 8 + 58 + 16;

/// TS bytes of one EMM in a private section (3-byte section header, one
/// pointer_field byte), in 188-byte packets of 184 payload bytes.
fn ts_bytes(emm_len: usize) -> u64 {
    ((emm_len + 3 + 1).div_ceil(184) * 188) as u64
}

pub fn sd_revocation(s: &Settings) -> Vec<Value> {
    let forest = Forest::default();
    let auth = SdAuthority::new(forest, SdMaster::random());
    let op = SigningKey::random();
    let kp = ProductKey::random();
    let rs: &[u64] = if s.quick {
        &[1, 10, 100, 1_000, 10_000]
    } else {
        &[1, 10, 100, 1_000, 10_000, 100_000]
    };
    let card_walk_us = card_walk(&auth);
    let mut st = 0x5D5D_u64;
    let mut lines = Vec::new();
    for &r in rs {
        let mut ex = HashSet::with_capacity(r as usize);
        while (ex.len() as u64) < r {
            ex.insert(splitmix(&mut st) % CARDS);
        }
        let ex: Vec<u64> = ex.into_iter().collect();
        // Best of a few runs for the timed part: cover, wraps, EMM-Gs.
        let mut best = f64::MAX;
        let mut result = (Vec::new(), Vec::new());
        for _ in 0..if r >= 10_000 { 1 } else { 3 } {
            let t = Instant::now();
            let cov = cover(forest, CARDS, &ex);
            let delivery = SdKey::wrap(&auth, &cov, 1, 2, 3, &kp);
            let emms: Vec<Vec<u8>> = delivery
                .payloads(1_800_000_000)
                .iter()
                .enumerate()
                .map(|(n, p)| Emm::sign_global(&op, 1000 + n as u64, p))
                .collect();
            best = best.min(t.elapsed().as_secs_f64());
            result = (cov, emms);
        }
        let (cov, emms) = result;
        black_box(&emms);
        // What was measured opens on a card that is not excluded, and not
        // on an excluded one.
        check(&auth, &op, &emms, &ex, &kp);
        let emm_bytes: u64 = emms.iter().map(|e| e.len() as u64).sum();
        let air: u64 = emms.iter().map(|e| ts_bytes(e.len())).sum();
        let trees = forest.trees_for(CARDS);
        let tail = trees * forest.leaves_per_tree() - CARDS;
        let goal = r == 1_000;
        let bound = 2 * r - 1;
        lines.push(json!({
            "figure": "sd_revocation",
            "ours": emm_bytes,
            "limit": BUDGET,
            "ratio": round3(emm_bytes as f64 / BUDGET),
            "unit": "bytes",
            "what": "EMM-G bytes of one SD renewal of 10 M cards with r random revocations, against the 80 KB budget",
            "cards": CARDS,
            "depth": forest.depth(),
            "trees": trees,
            "unassigned_leaves": tail,
            "r": r,
            "subsets": cov.len(),
            "bound": bound,
            "subsets_per_r": round3(cov.len() as f64 / r as f64),
            "emm_gs": emms.len(),
            "emm_bytes": emm_bytes,
            "ts_bytes": air,
            "air_s": round3(air as f64 / EMM_BYTES_PER_S),
            "headend_s": round3(best),
            "flat_bytes": (CARDS - r) * FLAT_EMM_U,
            "flat_ts_bytes": (CARDS - r) * 188,
            "flat_air_s": round3(((CARDS - r) * 188) as f64 / EMM_BYTES_PER_S),
            "card_walk_us": round3(card_walk_us),
            "goal": goal.then(|| json!({"subsets": 1999, "ts_bytes": 80_000, "air_s": 10.0, "headend_s": 1.0})),
            "meets_goal": !goal
                || (cov.len() as u64 <= bound
                    && (air as f64) < BUDGET
                    && (air as f64) / EMM_BYTES_PER_S < 10.0
                    && best < 1.0),
            "quick": s.quick,
        }));
    }
    lines
}

/// The card's worst case: the subset S(root, j) with j a leaf under the
/// root's other child, so 17 PRG steps and G_M on a depth-18 tree, plus
/// the unwrap; microseconds on this host, best of 200.
fn card_walk(auth: &SdAuthority) -> f64 {
    let forest = auth.forest();
    let a = CardAddress {
        tree: 0,
        leaf: 12_345,
    };
    let labels = auth.card_labels(a).expect("labels");
    let j = forest.leaf_node(a.leaf ^ (1 << (forest.depth() - 1)));
    let s = Subset::Difference {
        tree: 0,
        i: Node::ROOT,
        j,
    };
    let kp = ProductKey::random();
    let d = SdKey::wrap(auth, &[s], 1, 2, 3, &kp);
    let mut best = f64::MAX;
    for _ in 0..200 {
        let t = Instant::now();
        let k = d.open(&labels).expect("in the subset").expect("unwraps");
        best = best.min(t.elapsed().as_secs_f64());
        black_box(k);
    }
    assert!(find_and_derive(forest, a, [&s], |n| labels.entries().get(n)).is_some());
    best * 1e6
}

fn check(auth: &SdAuthority, op: &SigningKey, emms: &[Vec<u8>], ex: &[u64], kp: &ProductKey) {
    let forest = auth.forest();
    let keys: Vec<SdKey> = emms
        .iter()
        .map(|b| {
            let p = Emm::from_bytes(b)
                .expect("EMM-G parses")
                .verify_global(&op.public())
                .expect("EMM-G verifies");
            match &p.commands[..] {
                [EmmCommand::SdKey(k)] => k.clone(),
                _ => panic!("one SD_KEY per EMM-G"),
            }
        })
        .collect();
    let excluded: HashSet<u64> = ex.iter().copied().collect();
    let included = (0..CARDS).step_by(999_983).find(|n| !excluded.contains(n));
    for (n, want) in [(ex[0], false)]
        .into_iter()
        .chain(included.map(|n| (n, true)))
    {
        let labels = auth
            .card_labels(forest.address(n).expect("address"))
            .expect("labels");
        let got: Vec<ProductKey> = keys
            .iter()
            .filter_map(|k| k.open(&labels))
            .map(|r| r.expect("unwraps"))
            .collect();
        assert_eq!(got.len(), usize::from(want), "card {n}");
        assert!(got.iter().all(|k| k == kp));
    }
}
