//! `smartcard emulate` as a real card is: slow (a T=0 character-time
//! model at 9600 baud, a fixed 300 ms per APDU) and taking short APDUs
//! only. Through the real pcscd the client finds out that the card is
//! short-only, a card is issued, a 4 KB EMM goes in by chaining, and ECMs
//! give their control words; every APDU takes the model's time, within
//! a tolerance for pcscd's own.

use crate::suite;
use cardlink::{CardClient, CardTransport, TransportError};
use proto::apdu::{StatusWord, MAX_SHORT_COMMAND};
use proto::crypto::X25519Secret;
use proto::emm::{EmmCommand, MAX_BLOCK_CARDS};
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::emulator::CardModel;
use testkit::operator::{Operator, CARD, DAY, PRODUCT, T0};
use testkit::vpcd::{self, pcscd_or_skip};
use testkit::Emulator;

/// Any transport, with each exchange's bytes and wall time.
struct Timed<T> {
    inner: T,
    log: Vec<(usize, usize, Duration)>,
}

impl<T: CardTransport> CardTransport for Timed<T> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        let t = Instant::now();
        let r = self.inner.transmit(apdu)?;
        self.log.push((apdu.len(), r.len(), t.elapsed()));
        Ok(r)
    }
    fn reconnect(&mut self) -> Result<(), TransportError> {
        self.inner.reconnect()
    }
    fn supports_extended(&self) -> bool {
        self.inner.supports_extended()
    }
}

/// The card's time for an APDU under `model`, as `smartcard emulate`
/// documents it.
fn model_time(model: &CardModel, bytes_in: usize, bytes_out: usize) -> Duration {
    let fixed = Duration::from_millis(model.apdu_delay_ms.unwrap_or(0));
    match model.baud {
        Some(baud) => {
            let chars = Duration::from_secs_f64((bytes_in + bytes_out) as f64 * 10.0 / baud as f64);
            fixed + chars + Duration::from_millis(model.processing_ms.unwrap_or(10))
        }
        None => fixed + Duration::from_millis(model.processing_ms.unwrap_or(0)),
    }
}

fn random16() -> [u8; 16] {
    let mut b = [0u8; 16];
    proto::secret::fill_random(&mut b);
    b
}

/// Issue, entitle, a 4 KB EMM-G, a session and ECMs on a card of `model`;
/// then every APDU's time against the model.
fn card_of(name: &str, model: CardModel) {
    if !pcscd_or_skip(name) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slot = vpcd::slot();
    let emu = Emulator::start_with(crate::SMARTCARD, &slot, &dir.path().join("card.img"), model);
    let transport = emu.transport();
    assert!(
        !transport.supports_extended(),
        "the probe must find the card short-only"
    );
    let mut c = CardClient::new(Timed {
        inner: transport,
        log: Vec::new(),
    });
    assert!(c.short_apdus());
    // An extended APDU sent anyway is refused with 6700.
    let mut long_nop = vec![0x80, 0x70, 0, 0, 0, 0x01, 0x00];
    long_nop.resize(7 + 256, 0x5A);
    c.select().unwrap();
    assert_eq!(suite::raw(&mut c, &long_nop), StatusWord::WRONG_LENGTH);

    let mut op = Operator::new();
    let info = suite::issue(&mut c, &op);
    let emm = op.emm_u(
        CARD,
        &info.public_key,
        T0,
        vec![op.entitle(T0, T0 + 30 * DAY)],
    );
    c.process_emm(&emm).unwrap();

    // An EMM-G of about 4 KB (the card's largest command) that blocks
    // other cards only.
    let cmds = (0..15u32)
        .map(|k| {
            EmmCommand::BlockCards(
                (0..MAX_BLOCK_CARDS as u32)
                    .map(|i| 10_000 + k * 100 + i)
                    .collect(),
            )
        })
        .collect();
    let big = op.emm_g(T0 + 1, cmds);
    assert!(
        (3800..=card::applet::MAX_COMMAND_DATA).contains(&big.len()),
        "{}",
        big.len()
    );
    c.process_emm(&big).unwrap();
    assert_eq!(c.list_entitlements().unwrap().len(), 1);

    let rx = X25519Secret::random();
    let info = c.info().unwrap();
    c.establish_session(&rx, &info).unwrap();
    for i in 0..4 {
        let (even, odd) = (random16(), random16());
        let ecm = op.ecm(PRODUCT, i, T0 + 10 * (i + 1), even, odd);
        let got = c.process_ecm(&ecm).unwrap();
        assert_eq!(got.cws.even.expose(), &even, "ECM {i}");
        assert_eq!(got.cws.odd.expose(), &odd, "ECM {i}");
    }

    let log = &c.transport().log;
    let chunks = big.len().div_ceil(255);
    assert!(log.len() > chunks + 8, "{} APDUs", log.len());
    let mut excess = Vec::new();
    for (i, &(bytes_in, bytes_out, took)) in log.iter().enumerate() {
        // The refused extended NOP is the only long command; the card
        // charges it its header and status word, and no processing.
        if bytes_in > MAX_SHORT_COMMAND {
            assert_eq!(bytes_out, 2);
            continue;
        }
        let want = model_time(&model, bytes_in, bytes_out);
        // The emulator sleeps until the model's time is up: never sooner.
        assert!(
            took + Duration::from_millis(1) >= want,
            "APDU {i} ({bytes_in} in, {bytes_out} out) took {took:?}, the model says {want:?}"
        );
        excess.push(took - want.min(took));
    }
    excess.sort();
    let median = excess[excess.len() / 2];
    let mean = excess.iter().sum::<Duration>() / excess.len() as u32;
    eprintln!(
        "{name}: {} APDUs, excess over the model: median {median:?}, mean {mean:?}, max {:?}",
        excess.len(),
        excess.last().unwrap()
    );
    assert!(
        median < Duration::from_millis(15),
        "pcscd adds {median:?} (median) to the card's time"
    );
    assert!(
        mean < Duration::from_millis(30),
        "pcscd adds {mean:?} (mean) to the card's time"
    );
}

#[test]
fn card_at_9600_baud_short_apdus() {
    card_of("card_at_9600_baud_short_apdus", CardModel::t0(9600));
}

#[test]
fn card_at_300_ms_per_apdu_short_apdus() {
    card_of("card_at_300_ms_per_apdu_short_apdus", CardModel::fixed(300));
}

/// Bad timing options are refused on the command line, with the fix.
#[test]
fn bad_timing_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("card.img");
    for (args, says) in [
        (&["--baud", "0"][..], "give 300 to 1000000"),
        (&["--baud", "fast"][..], "is not a baud rate"),
        (&["--apdu-delay-ms=-5"][..], "whole number of milliseconds"),
        (&["--apdu-delay-ms", "600000"][..], "at most 60000"),
        (
            &["--processing-ms", "1.5"][..],
            "whole number of milliseconds",
        ),
    ] {
        let out = Command::new(crate::SMARTCARD)
            .args(["emulate", "--vpcd", "127.0.0.1:9", "--state"])
            .arg(&state)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let out = Command::new(crate::SMARTCARD)
        .args(["emulate", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--baud 9600 --short-apdus",
        "--apdu-delay-ms 300",
        "GET RESPONSE",
    ] {
        assert!(help.contains(want), "--help lacks {want:?}:\n{help}");
    }
    assert!(!state.exists(), "a refused command line touched the state");
}
