//! 10,000 random and mutated APDUs through pcscd to the emulator: wrong
//! lengths, wrong CLA and INS, truncated and padded data, broken chains,
//! random bytes. Every one is answered with a status word; afterwards the
//! emulator still runs and the card, and its state file, hold exactly what
//! they held before.

use crate::suite;
use card::eeprom::FileEeprom;
use card::Applet;
use cardlink::CardTransport;
use pcsc::Disposition;
use proto::apdu::{Command, Ins, StatusWord, AID};
use proto::Codec;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use testkit::operator::{self, Operator, CARD, DAY, PRODUCT, T0};
use testkit::vpcd::{self, pcscd_or_skip};
use testkit::Emulator;

const APDUS: usize = 10_000;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    /// Up to `max - 1` random bytes.
    fn some_bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const CLAS: &[u8] = &[0x00, 0x80, 0x90, 0x10, 0x84, 0xA0, 0xFF, 0x0C];
const INSS: &[u8] = &[
    0xA4, 0xC0, 0xCA, 0x10, 0x12, 0x40, 0x42, 0x44, 0x50, 0x70, 0xB0, 0xD6, 0x00, 0xFF,
];

/// Valid commands, to be mutated.
fn templates(op: &mut Operator, public: &[u8; 32]) -> Vec<Vec<u8>> {
    let p = |ins, data: Vec<u8>| Command::proprietary(ins, 0, data).to_bytes();
    let entitle = op.entitle(T0, T0 + 99 * DAY);
    // Sequence numbers far below the one the card holds: replays at best.
    op.seq = 0;
    op.g_seq = 0;
    let emm_u = op.emm_u(CARD, public, T0, vec![entitle]);
    let emm_g = op.emm_g(
        T0,
        vec![proto::emm::EmmCommand::BlockCards((0..63).collect()); 5],
    );
    let ecm = op.ecm(PRODUCT, 1, T0 + 10, [1; 16], [2; 16]);
    let init = proto::crypto::PendingSession::start(&proto::crypto::X25519Secret::random())
        .0
        .to_bytes();
    vec![
        Command::select().to_bytes(),
        p(Ins::GET_INFO, vec![]),
        p(Ins::LIST_ENTITLEMENTS, vec![]),
        p(Ins::NOP, vec![]),
        p(Ins::LOCK, vec![]),
        p(Ins::PERSONALIZE, op.personalization(CARD + 1).to_bytes()),
        p(Ins::PROCESS_EMM, emm_u),
        p(Ins::PROCESS_EMM, emm_g),
        p(Ins::PROCESS_ECM, ecm),
        p(Ins::ESTABLISH_SESSION, init),
        vec![0x00, 0xC0, 0x00, 0x00, 0x00],
    ]
}

fn mutate(rng: &mut Rng, t: &[u8]) -> Vec<u8> {
    let mut v = t.to_vec();
    while v.len() < 4 {
        v.push(rng.byte());
    }
    match rng.below(9) {
        // Truncated anywhere past the first two bytes.
        0 => v.truncate(2 + rng.below(v.len().saturating_sub(1).max(1))),
        // Padded.
        1 => v.extend([rng.some_bytes(8), vec![rng.byte()]].concat()),
        // Bit flips.
        2 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
        }
        // Wrong Lc.
        3 if v.len() > 4 => v[4] = rng.byte(),
        // Wrong class or instruction.
        4 => v[0] = *rng.pick(CLAS),
        5 => v[1] = *rng.pick(INSS),
        // Wrong P1 P2.
        6 => {
            v[2] = rng.byte();
            v[3] = rng.byte();
        }
        // Chaining bit set: the card waits for a continuation that
        // usually never comes.
        7 => v[0] |= 0x10,
        // Short body re-encoded as extended, with a random Lc.
        _ if v.len() > 5 => {
            let data = v.split_off(5);
            v.truncate(4);
            v.push(0);
            v.extend((rng.below(data.len() + 3) as u16).to_be_bytes());
            v.extend(data);
        }
        _ => v.push(rng.byte()),
    }
    v
}

fn random_apdu(rng: &mut Rng, templates: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(10) {
        // Pure noise of any length the transport will send.
        0 | 1 => {
            let max = if rng.below(10) == 0 { 1200 } else { 40 };
            let n = 2 + rng.below(max);
            rng.bytes(n)
        }
        // A plausible header with a random, usually wrong, body.
        2 | 3 => {
            let mut v = vec![*rng.pick(CLAS), *rng.pick(INSS), rng.byte(), rng.byte()];
            match rng.below(4) {
                0 => {}
                1 => v.push(rng.byte()),
                2 => {
                    let n = rng.below(300);
                    v.push(n as u8);
                    v.extend(rng.some_bytes(300));
                }
                _ => {
                    v.push(0);
                    v.extend((rng.below(5000) as u16).to_be_bytes());
                    v.extend(rng.some_bytes(1500));
                }
            }
            v
        }
        // SELECT of the right or a wrong AID; GET RESPONSE with any Le.
        4 => {
            let mut aid = AID.to_vec();
            if rng.below(2) == 0 {
                let i = rng.below(aid.len());
                aid[i] ^= 0x01;
            }
            let mut v = vec![0x00, 0xA4, 0x04, 0x00, aid.len() as u8];
            v.extend(aid);
            v
        }
        5 => vec![0x00, 0xC0, 0x00, 0x00, rng.byte()],
        // A mutated genuine command.
        _ => {
            let t = rng.pick(templates).clone();
            let mut v = mutate(rng, &t);
            if rng.below(4) == 0 {
                v = mutate(rng, &v);
            }
            v
        }
    }
}

fn stored_state(path: &Path) -> card::state::CardState {
    Applet::power_on(FileEeprom::open(path).unwrap())
        .unwrap()
        .state()
        .clone()
}

#[test]
fn ten_thousand_random_and_mutated_apdus_through_pcscd() {
    if !pcscd_or_skip("ten_thousand_random_and_mutated_apdus_through_pcscd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("card.img");
    let slot = vpcd::slot();
    let mut emu = Emulator::start(crate::SMARTCARD, &slot, &state);
    let mut op = Operator::new();
    let mut c = emu.connect();
    let info = suite::issue(&mut c, &op);
    let emm = op.emm_u(
        CARD,
        &info.public_key,
        T0,
        vec![op.entitle(T0, T0 + 30 * DAY)],
    );
    c.process_emm(&emm).unwrap();
    // An EMM-G an hour on: it blocks no one, but moves the clock a
    // checkpoint step, so the card stores its seq and the templates' are
    // replays.
    let g = op.emm_g(T0 + 3600, vec![proto::emm::EmmCommand::BlockCards(vec![1])]);
    c.process_emm(&g).unwrap();
    let before = (c.info().unwrap(), c.list_entitlements().unwrap());
    let stored_before = stored_state(&state);
    let templates = templates(&mut op, &info.public_key);

    let mut rng = Rng(0x1D0D_0F0A_2026_0003);
    let mut sws: BTreeMap<u16, usize> = BTreeMap::new();
    let t0 = Instant::now();
    let t = c.transport();
    for i in 0..APDUS {
        let apdu = random_apdu(&mut rng, &templates);
        let r = t
            .transmit(&apdu)
            .unwrap_or_else(|e| panic!("APDU {i} {apdu:02X?}: {e}\n{}", emu.log()));
        assert!(r.len() >= 2, "APDU {i} {apdu:02X?}: no status word");
        let sw = StatusWord::from_bytes(r[r.len() - 2], r[r.len() - 1]);
        *sws.entry(sw.0).or_default() += 1;
    }
    let took = t0.elapsed();
    println!("{APDUS} APDUs in {took:?}; status words:");
    for (sw, n) in &sws {
        println!("  {:?}: {n}", StatusWord(*sw));
    }
    // Nothing random got through to the stored state.
    assert!(sws.len() > 8, "too few kinds of answer: {sws:?}");
    assert!(emu.is_alive(), "the emulator died:\n{}", emu.log());

    // A reset drops what random commands left in RAM (a chain, a session,
    // pending data); the card then reports exactly what it did before.
    c.into_transport()
        .disconnect(Disposition::ResetCard)
        .unwrap();
    let mut c = emu.connect();
    c.select().unwrap();
    assert_eq!((c.info().unwrap(), c.list_entitlements().unwrap()), before);
    drop(c);
    assert!(emu.is_alive());
    assert!(emu.terminate().success());
    assert!(
        stored_state(&state) == stored_before,
        "the state file changed"
    );
    assert!(!emu.log().contains("panicked"), "{}", emu.log());
}

/// The same generator against the in-process applet, and the card's
/// stored state compared exactly.
#[test]
fn ten_thousand_random_and_mutated_apdus_in_process() {
    let mut op = Operator::new();
    let mut c = operator::blank_card();
    let info = suite::issue(&mut c, &op);
    let emm = op.emm_u(
        CARD,
        &info.public_key,
        T0,
        vec![op.entitle(T0, T0 + 30 * DAY)],
    );
    c.process_emm(&emm).unwrap();
    // An EMM-G an hour on: it blocks no one, but moves the clock a
    // checkpoint step, so the card stores its seq and the templates' are
    // replays.
    let g = op.emm_g(T0 + 3600, vec![proto::emm::EmmCommand::BlockCards(vec![1])]);
    c.process_emm(&g).unwrap();
    let before = operator::applet(&mut c).state().clone();
    let templates = templates(&mut op, &info.public_key);
    let mut rng = Rng(0x1D0D_0F0A_2026_0003);
    for i in 0..APDUS {
        let apdu = random_apdu(&mut rng, &templates);
        let r = c.transport().transmit(&apdu).unwrap();
        assert!(r.len() >= 2, "APDU {i} {apdu:02X?}: no status word");
        assert!(
            operator::applet(&mut c).state() == &before,
            "APDU {i} {apdu:02X?}"
        );
    }
}
