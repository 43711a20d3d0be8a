//! The performance report: each figure measures one of the numbers that
//! DESIGN.md promises, against the raw primitive it is built on, in the
//! same run on the same machine.
//!
//! ```text
//! cargo run --release --bin perf -- [--quick] [FIGURE ...]
//! ```
//!
//! With no figure named, every figure runs. Each prints one JSON object
//! per line with at least `figure`, `ours`, `limit`, `ratio` (ours / limit)
//! and `unit`. To add a figure, write a `fn(&Settings) -> Vec<Value>` and
//! add it to [`FIGURES`]. A figure that cannot be measured (say, pcscd is
//! not running) prints an object with `figure` and `error` instead, and
//! the report exits 1 after the other figures.
#![forbid(unsafe_code)]

#[path = "perf/pcsc.rs"]
mod pcsc_figures;

#[path = "perf/headend.rs"]
mod headend_figures;

#[path = "perf/vcard.rs"]
mod vcard;

#[path = "perf/zap.rs"]
mod zap_figure;

#[path = "perf/slow_card.rs"]
mod slow_card_figure;

#[path = "perf/sd.rs"]
mod sd_figure;

#[path = "perf/eeprom.rs"]
mod eeprom_figure;

#[path = "perf/revocation.rs"]
mod revocation_figure;

#[path = "perf/ecmg.rs"]
mod ecmg_figure;

use clap::Parser;
use headend_engine::{KeyEngine, OperatorKeys, PreparedCard};
use proto::crypto::X25519Secret;
use proto::emm::{Emm, EmmCommand, EMM_HEADER_LEN};
use proto::secret::Kek;
use proto::Codec;
use serde_json::{json, Value};
use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long and how big each measurement is.
#[derive(Debug, Clone, Copy)]
struct Settings {
    quick: bool,
    /// Length of one timed run.
    run: Duration,
    /// Alternating rounds of each measurement; the best of each counts.
    rounds: u32,
}

impl Settings {
    fn new(quick: bool) -> Self {
        if quick {
            Settings {
                quick,
                run: Duration::from_millis(200),
                rounds: 3,
            }
        } else {
            Settings {
                quick,
                run: Duration::from_secs(1),
                rounds: 5,
            }
        }
    }
}

type Figure = fn(&Settings) -> Vec<Value>;

/// Every figure: name, what it measures, and the function that does.
const FIGURES: &[(&str, &str, Figure)] = &[
    (
        "emm_u",
        "EMM-U generation per core against ring's raw ChaCha20-Poly1305 seal of the same plaintext",
        emm_u,
    ),
    (
        "descramble",
        "receiver DVB-CISSA descrambling, MB/s of TS, against raw AES-128-CBC decrypt of the same blocks",
        |s| vec![ts::bench::descramble_rate(s.quick)],
    ),
    (
        "scramble",
        "headend DVB-CISSA scrambling, MB/s of TS, against raw AES-128-CBC encrypt of the same blocks",
        |s| vec![headend_engine::stream::bench::scramble_rate(s.quick)],
    ),
    (
        "zap",
        "receiver start to first clear packet on a live-paced stream, card through the real pcscd (median ms, with p90/max), against the ECM repetition interval",
        zap_figure::zap,
    ),
    (
        "slow_card",
        "the largest added gap in the receiver's clear output (ms) with a 300 ms-per-APDU card, short APDUs only, through the real pcscd on a live stream, against the same with an instant card; also 9600 baud and 1,000 ms",
        slow_card_figure::slow_card,
    ),
    (
        "ecm_cw_pcsc",
        "ECM to control words through the real pcscd and vpcd (p50 ms, with p90/p99/max), against a bare NOP APDU round trip",
        pcsc_figures::ecm_cw_pcsc,
    ),
    (
        "carousel_sqlite",
        "a full EMM-U carousel cycle of the daemon over 1 M cards stored in SQLite, against the bare in-memory EMM-U rate",
        headend_figures::carousel_sqlite,
    ),
    (
        "sd_revocation",
        "one Subset Difference renewal of 10 M cards with r = 1 .. 100,000 random revocations: subsets, EMM-G bytes and air time against the 80 KB budget, headend time, the flat EMM-U cost, the card's worst walk",
        sd_figure::sd_revocation,
    ),
    (
        "eeprom_wear",
        "a card's EEPROM writes in one simulated day of steady state (1 M cards, 100 kbit/s of EMM, 60 s cycle, 10 s crypto periods), against one write per message it accepts",
        eeprom_figure::eeprom_wear,
    ),
    (
        "revocation_latency",
        "from the revoke call to the first ECM the revoked card cannot open, 1 M cards holding the product in SQLite, 100 kbit/s of EMM, on a simulated clock (worst of three points of the crypto period), with in-process paying cards fed from the output, against the 30 s goal",
        revocation_figure::revocation_latency,
    ),
    (
        "ecmg",
        "SimulCrypt ECMG: CW_provision -> ECM_response round trips over loopback TCP, 1,000 streams on 10 channels (p50/p99 ms), ECMs per second per core against the raw ECM sealing rate on one core",
        ecmg_figure::ecmg,
    ),
    (
        "api_writes",
        "subscriptions per second through the admin API over loopback HTTP, against bare one-row SQLite commits",
        headend_figures::api_writes,
    ),
];

#[derive(Debug, Parser)]
#[command(
    name = "perf",
    about = "Iodoform's performance figures, one JSON object per line."
)]
struct Args {
    /// Shorter runs and smaller data sets (for CI and quick checks).
    #[arg(long)]
    quick: bool,
    /// List the figures and exit.
    #[arg(long)]
    list: bool,
    /// Figures to run; all of them if none is named.
    figures: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.list {
        for (name, what, _) in FIGURES {
            println!("{name}\t{what}");
        }
        return ExitCode::SUCCESS;
    }
    let mut chosen: Vec<Figure> = Vec::new();
    for name in &args.figures {
        match FIGURES.iter().find(|(n, _, _)| n == name) {
            Some((_, _, f)) => chosen.push(*f),
            None => {
                let known: Vec<&str> = FIGURES.iter().map(|(n, _, _)| *n).collect();
                eprintln!(
                    "perf: unknown figure {name:?}; known figures: {}",
                    known.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    }
    if chosen.is_empty() {
        chosen = FIGURES.iter().map(|(_, _, f)| *f).collect();
    }
    let settings = Settings::new(args.quick);
    let mut failed = false;
    for figure in chosen {
        for line in figure(&settings) {
            failed |= line.get("error").is_some();
            println!("{line}");
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Operations per second of `step`, which does a batch of operations and
/// returns how many. It runs until `run` has passed.
fn rate(run: Duration, mut step: impl FnMut() -> u64) -> f64 {
    let start = Instant::now();
    let mut ops = 0u64;
    loop {
        ops += step();
        let elapsed = start.elapsed();
        if elapsed >= run {
            return ops as f64 / elapsed.as_secs_f64();
        }
    }
}

/// A cheap deterministic generator (SplitMix64) for bulk test data.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Registers `ids` with KEKs derived on every core (one X25519 each),
/// using arbitrary 32-byte strings as card public keys: any u-coordinate
/// gives a contributory X25519 result except a handful of low-order ones.
fn add_cards_parallel(engine: &mut KeyEngine, ids: &[u32]) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = ids.len().div_ceil(threads).max(1);
    let shared = &*engine;
    let prepared: Vec<Vec<PreparedCard>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(per_thread)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&id| {
                            let mut st = u64::from(id);
                            let mut public = [0u8; 32];
                            for word in public.chunks_mut(8) {
                                word.copy_from_slice(&splitmix(&mut st).to_le_bytes());
                            }
                            shared.prepare_card(id, public).expect("card key")
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("KEK thread"))
            .collect()
    });
    for card in prepared.into_iter().flatten() {
        engine.insert_card(card).expect("new card");
    }
}

/// EMM-U generation rate on one core, against the raw seal rate of the
/// same 66-byte plaintext (8-byte time and one 58-byte ENTITLE).
fn emm_u(s: &Settings) -> Vec<Value> {
    const PRODUCT: u32 = 1;
    const NOW: u64 = 1_700_000_000;
    const DAY: u64 = 86_400;
    const PLAINTEXT: usize = 8 + 58;
    const BATCH: usize = 1024;
    let cards: u32 = if s.quick { 100_000 } else { 1_000_000 };

    let setup = Instant::now();
    let mut engine = KeyEngine::new(OperatorKeys::generate(1));
    engine.add_product(PRODUCT).expect("product");
    let ids: Vec<u32> = (1..=cards).collect();
    add_cards_parallel(&mut engine, &ids);
    for &id in &ids {
        engine
            .entitle(id, PRODUCT, NOW - DAY, NOW + 30 * DAY)
            .expect("entitle");
    }
    // One real card, to prove that what is measured opens on a card.
    let probe_id = cards + 1;
    let probe = X25519Secret::random();
    engine
        .add_card(probe_id, probe.public())
        .expect("probe card");
    engine
        .entitle(probe_id, PRODUCT, NOW - DAY, NOW + 30 * DAY)
        .expect("entitle");
    let setup_seconds = setup.elapsed().as_secs_f64();

    let emm_len = EMM_HEADER_LEN + PLAINTEXT + proto::crypto::TAG_LEN;
    let mut out = Vec::with_capacity(BATCH * emm_len);
    let mut next = 0usize;
    let mut now = NOW;
    let mut ours = move |engine: &mut KeyEngine| {
        let end = (next + BATCH).min(ids.len());
        let batch = &ids[next..end];
        next = if end == ids.len() { 0 } else { end };
        now += 1;
        out.clear();
        engine
            .emm_u_batch(batch, now, &mut out)
            .expect("EMM-U batch");
        debug_assert_eq!(out.len(), batch.len() * emm_len);
        black_box(&out);
        batch.len() as u64
    };

    // The limit: ring's ChaCha20-Poly1305, a fixed key, a fresh nonce per
    // message, sealing the plaintext in place.
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
    let ring_key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7u8; 32]).expect("key"));
    let mut ring_buf = [0x5Au8; PLAINTEXT];
    let mut ring_ctr = 0u64;
    let mut limit = || {
        for _ in 0..BATCH {
            ring_ctr += 1;
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&ring_ctr.to_be_bytes());
            let tag = ring_key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(n),
                    Aad::empty(),
                    &mut ring_buf,
                )
                .expect("seal");
            black_box(tag.as_ref());
        }
        black_box(&ring_buf);
        BATCH as u64
    };

    // For information: the RustCrypto crate the card side uses.
    use chacha20poly1305::aead::AeadInPlace;
    use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
    let rc_key = ChaCha20Poly1305::new(&[7u8; 32].into());
    let mut rc_buf = [0x5Au8; PLAINTEXT];
    let mut rc_ctr = 0u64;
    let mut rustcrypto = || {
        for _ in 0..BATCH {
            rc_ctr += 1;
            let mut n = [0u8; 12];
            n[4..].copy_from_slice(&rc_ctr.to_be_bytes());
            let tag = rc_key
                .encrypt_in_place_detached(&n.into(), b"", &mut rc_buf)
                .expect("seal");
            black_box(tag);
        }
        black_box(&rc_buf);
        BATCH as u64
    };

    // Warm up, then alternate so that every measurement sees the same
    // machine conditions; keep the best round of each.
    rate(s.run / 4, &mut limit);
    rate(s.run / 4, || ours(&mut engine));
    let (mut best_ours, mut best_limit, mut best_rc) = (0f64, 0f64, 0f64);
    for _ in 0..s.rounds {
        best_limit = best_limit.max(rate(s.run, &mut limit));
        best_ours = best_ours.max(rate(s.run, || ours(&mut engine)));
        best_rc = best_rc.max(rate(s.run / 2, &mut rustcrypto));
    }

    // What was measured really is a valid EMM-U that opens on the card.
    let bytes = engine.emm_u_for(probe_id, NOW).expect("probe EMM-U");
    assert_eq!(bytes.len(), emm_len);
    let kek = Kek::derive_card(&probe, probe_id, &engine.operator().public().x25519).expect("KEK");
    let payload = Emm::from_bytes(&bytes)
        .expect("EMM-U parses")
        .open_unique(&kek)
        .expect("EMM-U opens");
    assert!(
        matches!(payload.commands.as_slice(), [EmmCommand::Entitle(e)] if e.product == PRODUCT)
    );

    let ratio = best_ours / best_limit;
    let core_seconds = 10_000_000.0 / best_ours;
    vec![json!({
        "figure": "emm_u",
        "ours": best_ours.round(),
        "limit": best_limit.round(),
        "ratio": round3(ratio),
        "unit": "messages/s",
        "what": "EMM-U (one ENTITLE) per second on one core vs ring ChaCha20-Poly1305 seals of the same 66-byte plaintext per second",
        "core_seconds_per_10m": round3(core_seconds),
        "goal_ratio": 0.5,
        "goal_core_seconds_10m": 5.0,
        "meets_goal": ratio >= 0.5 && core_seconds <= 5.0,
        "ns_per_emm": round3(1e9 / best_ours),
        "ns_per_seal": round3(1e9 / best_limit),
        "rustcrypto_seal_per_s": best_rc.round(),
        "cards": cards,
        "plaintext_bytes": PLAINTEXT,
        "emm_bytes": emm_len,
        "rounds": s.rounds,
        "seconds_per_round": s.run.as_secs_f64(),
        "setup_seconds": round3(setup_seconds),
        "quick": s.quick,
    })]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
