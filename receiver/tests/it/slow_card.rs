//! A card as slow as a real one (the in-process card behind a transport
//! that takes its time over every APDU): the packets keep flowing while
//! it works, on a live input paced as it comes off the air, and a file
//! waits for it and loses nothing.

use crate::common::*;
use proto::crypto::X25519Secret;
use receiver::card::{CardLink, LinkOptions};
use receiver::{Pipeline, PipelineOptions};
use std::time::{Duration, Instant};

fn slow(applet: card::Applet<card::MemEeprom>, delay: Duration) -> SharedCard {
    let card = SharedCard::new(applet);
    card.faults.lock().unwrap().delay = delay;
    card
}

#[test]
fn a_live_stream_is_not_held_up_by_a_slow_card() {
    // 6 s of stream in 1 s crypto periods, fed at its own pace; the card
    // takes 100 ms per APDU (an ECM is more than one).
    let duration_ms = 6_000;
    let clear = synthetic_ts(duration_ms, 6);
    let (engine, applet) = entitled_card();
    let (scrambled, _) = scramble(&clear, TestFeed::new(engine, 1000), START_MS, 0);
    let delay = Duration::from_millis(100);
    logs();
    let link = CardLink::open(
        Box::new(slow(applet, delay)),
        X25519Secret::random(),
        LinkOptions::default(),
    )
    .unwrap();
    let opts = PipelineOptions {
        live: true,
        ..PipelineOptions::default()
    };
    let mut p = Pipeline::new(link, opts);
    let mut out = Vec::new();
    let mut longest = Duration::ZERO;
    let start = Instant::now();
    let total = scrambled.len() as f64;
    let mut at = 0usize;
    for chunk in scrambled.chunks(1316) {
        let due = start + Duration::from_secs_f64(duration_ms as f64 / 1000.0 * at as f64 / total);
        at += chunk.len();
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let keyed = p.first_clear_at().is_some();
        let t = Instant::now();
        p.push(chunk, &mut out).unwrap();
        if keyed {
            longest = longest.max(t.elapsed());
        }
    }
    p.finish(&mut out).unwrap();
    let stats = p.stats();
    eprintln!("{}; longest push {longest:?}", stats.summary());
    assert_eq!(
        (stats.undecryptable, stats.before_first_key),
        (0, 0),
        "{stats:?}"
    );
    assert!(stats.ecms_to_card >= 6, "{stats:?}");
    assert_eq!(stats.ecms_stale, 0, "{stats:?}");
    assert!(stats.card_us_p50 >= 100_000, "{stats:?}");
    // Once the first key is in, no read waits for the card.
    assert!(
        longest < Duration::from_millis(50),
        "a push took {longest:?}"
    );
    assert_es_identical(&clear, &out);
}

#[test]
fn a_file_waits_for_a_slow_card_and_loses_nothing() {
    // 20 crypto periods pushed as fast as they can be read.
    let clear = synthetic_ts(10_000, 6);
    let (engine, applet) = entitled_card();
    let (scrambled, _) = scramble(&clear, TestFeed::new(engine, 500), START_MS, 20_000);
    let card = slow(applet, Duration::from_millis(20));
    let (out, result, stats) = receive(
        card,
        &X25519Secret::random(),
        &scrambled,
        PipelineOptions::default(),
        64 * 1316,
    );
    result.unwrap();
    eprintln!("{}", stats.summary());
    assert_eq!(
        (stats.undecryptable, stats.before_first_key),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!((stats.ecms_stale, stats.emms_dropped), (0, 0), "{stats:?}");
    assert!(stats.ecms_to_card >= 20, "{stats:?}");
    assert_es_identical(&clear, &out);
}
