//! The card's EEPROM writes per day in steady state: one card of a fleet
//! of 1 M at the default 100 kbit/s of EMM and 60 s cycle (so the
//! carousel's cycle is what the bandwidth allows, about 4.2 h), watching
//! one channel with 10 s crypto periods for a whole simulated day. The
//! applet in this process counts its own page writes.

use super::Settings;
use serde_json::{json, Value};
use testkit::operator::{applet, entitled_card, Operator, CARD, DAY, PRODUCT, T0};

const FLEET: u64 = 1_000_000;
const EMM_BITRATE: u64 = 100_000;
const MIN_CYCLE_S: u64 = 60;
/// One EMM-U, one TS packet.
const EMM_U_AIR_BYTES: u64 = 188;
const PERIOD_S: u64 = 10;

pub fn eeprom_wear(_: &Settings) -> Vec<Value> {
    let cycle_s = MIN_CYCLE_S.max(FLEET * EMM_U_AIR_BYTES * 8 / EMM_BITRATE);
    let mut op = Operator::new();
    let (mut c, _) = entitled_card(&mut op);
    let public = c.info().expect("GET INFO").public_key;
    let before = applet(&mut c).eeprom_writes();
    let (mut ecms, mut emms, mut refused) = (0u64, 0u64, 0u64);
    let start = T0 + 60;
    for s in (0..DAY).step_by(PERIOD_S as usize) {
        let t = start + s;
        let epoch = t / PERIOD_S;
        let ecm = op.ecm(PRODUCT, epoch, t, [epoch as u8; 16], [!(epoch as u8); 16]);
        ecms += 1;
        if c.process_ecm(&ecm).is_err() {
            refused += 1;
        }
        if s % cycle_s == 0 {
            // The carousel's EMM-U: the same entitlement, a new seq.
            let emm = op.emm_u(CARD, &public, t, vec![op.entitle(T0, T0 + 30 * DAY)]);
            emms += 1;
            if c.process_emm(&emm).is_err() {
                refused += 1;
            }
        }
    }
    let writes = applet(&mut c).eeprom_writes() - before;
    // A card that wrote its state for every message it accepted.
    let naive = ecms + emms;
    vec![json!({
        "figure": "eeprom_wear",
        "ours": writes,
        "limit": naive,
        "ratio": writes as f64 / naive as f64,
        "unit": "EEPROM writes per card per day",
        "fleet": FLEET,
        "emm_bitrate": EMM_BITRATE,
        "cycle_s": cycle_s,
        "crypto_period_s": PERIOD_S,
        "ecms": ecms,
        "emm_us": emms,
        "refused": refused,
    })]
}
