//! The receiver with its card behind the real pcscd and vpcd: the card
//! applet served as a virtual card from a thread of this test (the same
//! code as `smartcard emulate`), found by reader name, pulled out and put
//! back while the receiver runs.
//!
//! Slots are taken as `testkit::vpcd` says (the smartcard tests' file
//! lock). Without pcscd these tests fail under `CI=true` and are skipped
//! (with a note) otherwise; scripts/ensure-pcscd.sh starts it. The test
//! that restarts pcscd holds every slot meanwhile, so the others look for
//! pcscd only once they hold theirs.

use crate::common::*;
use card::MemEeprom;
use proto::crypto::X25519Secret;
use receiver::card::{CardLink, LinkOptions, PcscCard};
use receiver::{Pipeline, PipelineOptions};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::vpcd::*;

#[test]
fn the_receiver_binary_uses_a_card_in_a_named_reader() {
    let slot = slot();
    if !pcscd_or_skip("the_receiver_binary_uses_a_card_in_a_named_reader") {
        return;
    }
    let clear = synthetic_ts(4_000, 6);
    let (engine, applet) = entitled_card();
    let (scrambled, _) = scramble(&clear, TestFeed::new(engine, 500), START_MS, 0);
    let card = insert(&slot, applet);
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.ts"), dir.path().join("out.ts"));
    std::fs::write(&input, &scrambled).unwrap();
    // Every packet: the synthetic stream's payloads hold no picture.
    let o = Command::new(env!("CARGO_BIN_EXE_receiver"))
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .args(["--no-rap-join", "--reader", slot.reader, "--identity"])
        .arg(dir.path().join("rx.key"))
        .output()
        .unwrap();
    card.pull_out();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("0 undecryptable"), "{err}");
    assert_es_identical(&clear, &std::fs::read(&output).unwrap());

    // No card in that reader: a clear error once the timeout is over.
    let o = Command::new(env!("CARGO_BIN_EXE_receiver"))
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .args(["--reader", slot.reader, "--card-timeout", "1", "--identity"])
        .arg(dir.path().join("rx.key"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(i32::from(receiver::exit::NO_CARD)),
        "{err}"
    );
    assert_eq!(
        err.lines().last().unwrap(),
        format!("receiver: no card in reader '{}' within 1 s", slot.reader)
    );
}

/// `clear` scrambled with 0.5 s crypto periods, card 42 entitled to it
/// inserted in `slot`, and a pipeline whose card link waits up to 20 s for
/// the card to come back.
fn entitled_card_and_pipeline(
    clear: &[u8],
    slot: &Slot,
) -> (Vec<u8>, Inserted<MemEeprom>, Pipeline) {
    let (engine, applet) = entitled_card();
    let (scrambled, _) = scramble(clear, TestFeed::new(engine, 500), START_MS, 0);
    let card = insert(slot, applet);
    logs();
    let link = CardLink::open(
        Box::new(PcscCard {
            reader: Some(slot.reader.to_string()),
        }),
        X25519Secret::random(),
        LinkOptions {
            connect_timeout: Duration::from_secs(5),
            reconnect_timeout: Some(Duration::from_secs(20)),
        },
    )
    .unwrap();
    (
        scrambled,
        card,
        Pipeline::new(link, PipelineOptions::default()),
    )
}

#[test]
fn the_card_pulled_out_and_put_back_while_the_receiver_runs() {
    let slot = slot();
    if !pcscd_or_skip("the_card_pulled_out_and_put_back_while_the_receiver_runs") {
        return;
    }
    let clear = synthetic_ts(20_000, 6);
    let (scrambled, card, mut pipeline) = entitled_card_and_pipeline(&clear, &slot);
    let mut out = Vec::new();
    let half = scrambled.len() / 2 / 188 * 188;
    pipeline.push(&scrambled[..half], &mut out).unwrap();

    // Out of the reader; back in 1.5 s later, while the receiver waits
    // for it at its next ECM.
    let applet = card.pull_out();
    let back = {
        let (port, reader) = (slot.port, slot.reader);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            insert_at(port, reader, applet)
        })
    };
    let t = Instant::now();
    pipeline.push(&scrambled[half..], &mut out).unwrap();
    pipeline.finish(&mut out).unwrap();
    let card = back.join().unwrap();
    let stats = pipeline.stats();
    eprintln!("{} (waited {:?})", stats.summary(), t.elapsed());
    assert!(t.elapsed() >= Duration::from_millis(1000));
    assert!(stats.card_reconnects >= 1, "{stats:?}");
    assert_eq!(stats.undecryptable, 0, "{stats:?}");
    assert_es_identical(&clear, &out);
    card.pull_out();
}

/// Stops the system's pcscd (SIGTERM, as an administrator would), waits
/// for it to exit and starts it again with scripts/ensure-pcscd.sh; then
/// waits for the virtual card in `reader` to be plugged in again. Returns
/// how long pcscd was away.
fn restart_pcscd(reader: &'static str) -> Result<Duration, String> {
    let t = Instant::now();
    stop_pcscd()?;
    start_pcscd()?;
    if !wait_reader(reader, true, Duration::from_secs(10)) {
        return Err(format!("the virtual card did not come back in {reader}"));
    }
    Ok(t.elapsed())
}

/// pcscd stops and comes back while the receiver descrambles: the link
/// waits for it, sets a new session up with the card (which plugs itself
/// in again) and clear output resumes. This restarts the system's pcscd,
/// so it runs under CI=true (or IODOFORM_TEST_PCSCD_RESTART=1) only, and
/// holds every vpcd slot meanwhile.
#[test]
fn the_receiver_follows_a_pcscd_restart() {
    if !restart_allowed("the_receiver_follows_a_pcscd_restart") {
        return;
    }
    let slots = all_slots();
    if !pcscd_or_skip("the_receiver_follows_a_pcscd_restart") {
        return;
    }
    let slot = &slots[0];
    // 10 s of stream, 0.5 s crypto periods, fed in 100 ms chunks at twice
    // the live rate.
    let clear = synthetic_ts(10_000, 6);
    let (scrambled, card, mut pipeline) = entitled_card_and_pipeline(&clear, slot);
    let mut out = Vec::new();
    let chunk = scrambled.len() / 100 / 188 * 188;
    let chunks: Vec<&[u8]> = scrambled.chunks(chunk).collect();

    // pcscd goes after 1 s of feeding (2 s of stream).
    let restarted = Arc::new(AtomicBool::new(false));
    let restarter = {
        let (done, reader) = (restarted.clone(), slot.reader);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            let r = restart_pcscd(reader);
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    let mut restarter = Some(restarter);
    let mut outage = None;
    // Input offset from which every chunk went in after pcscd was back.
    let mut after = None;
    let t = Instant::now();
    for (i, c) in chunks.iter().enumerate() {
        // Keep the last 30 % of the stream for after the restart.
        if i == chunks.len() * 7 / 10 || restarted.load(Ordering::SeqCst) {
            if let Some(h) = restarter.take() {
                outage = Some(h.join().unwrap().unwrap_or_else(|e| panic!("{e}")));
                after = Some(i * chunk);
            }
        }
        pipeline
            .push(c, &mut out)
            .expect("the receiver stopped while pcscd restarted");
        std::thread::sleep(Duration::from_millis(50));
    }
    pipeline.finish(&mut out).unwrap();
    let (outage, after) = (outage.unwrap(), after.unwrap());
    let stats = pipeline.stats();
    eprintln!(
        "{} (pcscd away for {outage:?}; fed in {:?}; clear input from byte {after} of {} fed after the restart)",
        stats.summary(),
        t.elapsed(),
        scrambled.len()
    );
    assert!(stats.card_reconnects >= 1, "{stats:?}");

    // Everything fed after the restart comes out clear, byte for byte.
    let want = es(&clear, &[VIDEO, AUDIO]);
    let got = es(&out, &[VIDEO, AUDIO]);
    let before = es(&scrambled[..after], &[VIDEO, AUDIO]);
    for pid in [VIDEO, AUDIO] {
        let tail = want[&pid].len() - before[&pid].len();
        assert!(
            tail >= 50,
            "PID {pid:#x}: only {tail} packets after the restart"
        );
        assert!(
            got[&pid].len() >= tail,
            "PID {pid:#x}: {} packets out, {tail} fed after the restart",
            got[&pid].len()
        );
        assert!(
            got[&pid][got[&pid].len() - tail..] == want[&pid][want[&pid].len() - tail..],
            "PID {pid:#x}: packets after the restart differ from the clear input"
        );
    }
    // Lost packets, if any, only around the outage: at most two crypto
    // periods (60 ES packets a second).
    assert!(stats.undecryptable <= 60, "{stats:?}");
    assert_eq!(stats.before_first_key, 0, "{stats:?}");
    card.pull_out();
}
