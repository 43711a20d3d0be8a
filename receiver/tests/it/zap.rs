//! The zap time helper for the `perf` report: a live-paced stream over
//! loopback UDP, a receiver started part-way into it, the time to its
//! first clear packet.

use crate::common::*;
use proto::crypto::X25519Secret;
use receiver::card::CardConnector;

#[test]
fn zap_figure_on_a_live_paced_stream() {
    let clear = synthetic_ts(3_200, 10);
    let mut engine = engine();
    let (applet, _) = mem_card(&mut engine, CARD, Some((DAY0 - DAY, DAY0 + DAY)));
    // ECMs every 100 ms (the stream engine's default), 1 s crypto periods.
    let (scrambled, _) = scramble(&clear, TestFeed::new(engine, 1000), START_MS, 0);
    let image = applet.into_eeprom();
    let mut card = || -> Box<dyn CardConnector> {
        Box::new(SharedCard::new(
            card::Applet::power_on(image.clone()).unwrap(),
        ))
    };
    let figure =
        receiver::bench::zap_ms(&scrambled, &mut card, &X25519Secret::random(), 3, 100).unwrap();
    eprintln!("{figure}");
    assert_eq!(figure["figure"], "zap");
    assert_eq!(figure["limit"], 100);
    let samples = figure["samples_ms"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    for s in samples {
        let ms = s.as_f64().unwrap();
        // One ECM interval plus the PAT/PMT wait and slack for a loaded
        // test machine; the goal (interval + 10 ms) is for perf, not here.
        assert!(ms > 0.0 && ms < 400.0, "zap {ms} ms");
    }
}

/// The whole pipeline's rate on a big stream (run with --release --ignored).
#[test]
#[ignore]
fn pipeline_throughput() {
    let clear = synthetic_ts(300_000, 400);
    let mut engine = engine();
    let (applet, _) = mem_card(&mut engine, CARD, Some((DAY0 - DAY, DAY0 + DAY)));
    let (scrambled, _) = scramble(&clear, TestFeed::new(engine, 1000), START_MS, 0);
    let link = receiver::CardLink::open(
        Box::new(SharedCard::new(applet)),
        X25519Secret::random(),
        receiver::LinkOptions::default(),
    )
    .unwrap();
    let mut p = receiver::Pipeline::new(link, receiver::PipelineOptions::default());
    let t = std::time::Instant::now();
    for c in scrambled.chunks(65_424) {
        p.push(c, &mut receiver::pipeline::Discard).unwrap();
    }
    p.finish(&mut receiver::pipeline::Discard).unwrap();
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "{:.1} MB in {secs:.3} s: {:.1} MB/s; {}",
        scrambled.len() as f64 / 1e6,
        scrambled.len() as f64 / 1e6 / secs,
        p.stats().summary()
    );
}
