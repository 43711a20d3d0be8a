//! `ecm_cw_pcsc`: ECM → control words through the system's real pcscd
//! and the vsmartcard vpcd driver, to the card applet running as a
//! virtual card in this process (the library behind `smartcard emulate`,
//! on a thread of its own, so that no separately built binary is
//! needed).
//!
//! It takes a vpcd slot and plugs in a card on a fresh state file (see
//! [`super::vcard`]), personalizes and entitles it, opens a session, and
//! then times, for each ECM, the whole receiver-side call: PROCESS ECM
//! through pcscd, and opening the sealed control words that
//! come back. The limit is a bare NOP APDU through the same stack,
//! interleaved one per ECM, so that both see the same conditions.
//!
//! ECMs are 10 s of card time apart, as a broadcast's crypto periods are,
//! so the card writes its clock to its (file-backed, fsync'd) EEPROM every
//! `CLOCK_PERSIST_STEP` = 3600 s, i.e. one ECM in 360: those are in the
//! distribution, and reported apart as well.

use card::applet::CLOCK_PERSIST_STEP;
use cardlink::pcsc::{PcscTransport, ReaderChoice};
use cardlink::CardClient;
use proto::card::Personalization;
use proto::crypto::{SigningKey, X25519Secret};
use proto::ecm::{Ecm, EcmHeader, EcmPayload};
use proto::emm::{Emm, EmmCommand, EmmPayload, Entitle};
use proto::secret::{ControlWord, CwPair, Kek, ProductKey};
use proto::Codec;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

use super::vcard::{take_slot, Emulator};

const CARD: u32 = 1;
const PRODUCT: u32 = 1;
/// 2025-12-01T00:00:00Z.
const T0: u64 = 1_764_547_200;
/// Card time between successive ECMs: one crypto period.
const ECM_INTERVAL: u64 = 10;
const WARMUP: usize = 100;

pub fn ecm_cw_pcsc(s: &super::Settings) -> Vec<Value> {
    match measure(s) {
        Ok(v) => vec![v],
        Err(e) => {
            eprintln!("perf: ecm_cw_pcsc: {e}");
            vec![json!({"figure": "ecm_cw_pcsc", "error": e})]
        }
    }
}

/// The `q` quantile of sorted samples (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    proto::secret::fill_random(&mut b);
    b
}

/// An ECM as the headend sends it, and what the card must return for it.
struct TimedEcm {
    bytes: Vec<u8>,
    even: [u8; 16],
    odd: [u8; 16],
    time: u64,
}

fn measure(s: &super::Settings) -> Result<Value, String> {
    use super::round3;
    let n = if s.quick { 1_000 } else { 5_000 };
    let slot = take_slot()?;
    let emu = Emulator::start(&slot)?;
    let transport = PcscTransport::wait_for_card(
        ReaderChoice::Named(slot.reader.into()),
        Duration::from_secs(15),
    )
    .map_err(|e| format!("the emulated card did not appear in {}: {e}", slot.reader))?;
    let extended = cardlink::CardTransport::supports_extended(&transport);
    let mut c = CardClient::new(transport);
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: cardlink::ClientError| format!("{what}: {e}")
    };

    // The operator's side, as ops in the smartcard tests does it.
    let kex = X25519Secret::random();
    let sig = SigningKey::random();
    let product_key = ProductKey::random();
    c.select().map_err(fail("SELECT"))?;
    let public = c
        .personalize(&Personalization {
            card_id: CARD,
            operator_id: 1,
            operator_kex: kex.public(),
            operator_sig: sig.public(),
        })
        .map_err(fail("PERSONALIZE"))?;
    c.lock().map_err(fail("LOCK"))?;
    let kek = Kek::derive_headend(&kex, CARD, &public).map_err(|e| format!("KEK: {e:?}"))?;
    let total = (WARMUP + n) as u64;
    let emm = Emm::seal_unique(
        &kek,
        CARD,
        1,
        &EmmPayload {
            time: T0,
            commands: vec![EmmCommand::Entitle(Entitle {
                product: PRODUCT,
                generation: 1,
                start: T0,
                end: T0 + ECM_INTERVAL * (total + 10),
                key: product_key.clone(),
            })],
        },
    );
    c.process_emm(&emm).map_err(fail("EMM-U"))?;
    let info = c.info().map_err(fail("GET INFO"))?;
    let receiver = X25519Secret::random();
    c.establish_session(&receiver, &info)
        .map_err(fail("ESTABLISH SESSION"))?;

    // Every ECM is made before the clock starts: the headend's cost is
    // not the card's.
    let ecms: Vec<TimedEcm> = (0..total)
        .map(|i| {
            let time = T0 + ECM_INTERVAL * (i + 1);
            let (even, odd) = (random16(), random16());
            let header = EcmHeader {
                product: PRODUCT,
                generation: 1,
                epoch: i,
                service: 100,
            };
            let key = product_key.epoch_key(PRODUCT, 1, i).ecm_key();
            let payload = EcmPayload {
                cws: CwPair {
                    even: ControlWord::from_bytes(even),
                    odd: ControlWord::from_bytes(odd),
                },
                time,
                maturity: 0,
            };
            TimedEcm {
                bytes: Ecm::seal(&key, header, &payload).to_bytes(),
                even,
                odd,
                time,
            }
        })
        .collect();

    // Which ECMs make the card write its clock: the applet's own rule,
    // from the clock the EMM-U stored.
    let mut stored = T0;
    let mut ecm_ms = Vec::with_capacity(n);
    let mut nop_ms = Vec::with_capacity(n);
    let mut write_ms = Vec::new();
    let mut nowrite_ms = Vec::new();
    let started = Instant::now();
    for (i, ecm) in ecms.iter().enumerate() {
        let writes = ecm.time >= stored + CLOCK_PERSIST_STEP;
        if writes {
            stored = ecm.time;
        }
        let t = Instant::now();
        c.nop().map_err(fail("NOP"))?;
        let nop = t.elapsed();
        let t = Instant::now();
        let cws = c.process_ecm(&ecm.bytes).map_err(fail("PROCESS ECM"))?;
        let took = t.elapsed();
        if cws.cws.even.expose() != &ecm.even
            || cws.cws.odd.expose() != &ecm.odd
            || cws.time != ecm.time
        {
            return Err(format!(
                "ECM {i}: the card returned the wrong control words"
            ));
        }
        if i < WARMUP {
            continue;
        }
        ecm_ms.push(ms(took));
        nop_ms.push(ms(nop));
        if writes {
            write_ms.push(ms(took));
        } else {
            nowrite_ms.push(ms(took));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let after = c.info().map_err(fail("GET INFO"))?;
    let state_dir = emu.state_dir().display().to_string();
    drop(c);
    drop(emu);

    let (ecm_ms, nop_ms) = (sorted(ecm_ms), sorted(nop_ms));
    let (write_ms, nowrite_ms) = (sorted(write_ms), sorted(nowrite_ms));
    let p50 = quantile(&ecm_ms, 0.50);
    let p99 = quantile(&ecm_ms, 0.99);
    let limit = quantile(&nop_ms, 0.50);
    let mean = ecm_ms.iter().sum::<f64>() / ecm_ms.len() as f64;
    Ok(json!({
        "figure": "ecm_cw_pcsc",
        "ours": round3(p50),
        "limit": round3(limit),
        "ratio": round3(p50 / limit),
        "unit": "ms",
        "what": "p50 latency of one ECM through pcscd and vpcd to the emulated card (PROCESS ECM, then opening the sealed CWs) vs p50 of a bare NOP APDU round trip, interleaved",
        "n": ecm_ms.len(),
        "p90_ms": round3(quantile(&ecm_ms, 0.90)),
        "p99_ms": round3(p99),
        "max_ms": round3(*ecm_ms.last().unwrap_or(&f64::NAN)),
        "mean_ms": round3(mean),
        "min_ms": round3(*ecm_ms.first().unwrap_or(&f64::NAN)),
        "nop_p99_ms": round3(quantile(&nop_ms, 0.99)),
        "goal_p50_ms": 0.5,
        "goal_p99_ms": 3.0,
        "meets_goal": p50 < 0.5 && p99 < 3.0,
        "ecm_interval_card_s": ECM_INTERVAL,
        "clock_persist_step_s": CLOCK_PERSIST_STEP,
        "eeprom_writes": write_ms.len(),
        "eeprom_write_p50_ms": round3(quantile(&write_ms, 0.50)),
        "eeprom_write_max_ms": round3(*write_ms.last().unwrap_or(&f64::NAN)),
        "no_write_p50_ms": round3(quantile(&nowrite_ms, 0.50)),
        "no_write_p99_ms": round3(quantile(&nowrite_ms, 0.99)),
        "warmup_ecms": WARMUP,
        "card_clock_after": after.clock,
        "reader": slot.reader,
        "extended_apdus": extended,
        "state_dir": state_dir,
        "seconds": round3(seconds),
        "quick": s.quick,
    }))
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
