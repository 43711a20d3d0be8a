//! `slow_card`: what a card as slow as a real one does to the receiver's
//! output, on a live-paced stream, with the card behind the real pcscd.
//!
//! Card models: the instant card, a T=0 card at 9600 baud (character time
//! plus 10 ms processing per APDU), 300 ms and 1,000 ms per APDU; all but
//! the instant one take short APDUs only, so ECMs and EMMs longer than
//! 255 bytes go chained. Each is the applet served into a vpcd slot
//! ([`super::vcard`]) with the timing model of `smartcard emulate`.
//!
//! The stream is `zap`'s clear TS scrambled by the headend's stream engine
//! with 2 s crypto periods (1 s with `--quick`), long enough for a fixed
//! number of control-word changes; the 1,000 ms card runs a second time
//! with the default 10 s periods (6 changes, 2 with `--quick`), where its
//! lag behind live must stay bounded (`lag_max_steady_ms`, the largest
//! after the first period of output, and `lag_end_ms`). It is played
//! over loopback UDP paced by its PCR. The receiver is the real one: its UDP input (its own thread and
//! bounded queue) and its pipeline with a PC/SC card link, started before
//! the stream. Every output packet of the service is timed as it leaves
//! the pipeline and matched with its input packet, which went out at its
//! datagram's time. Per model:
//!
//! - `undecryptable`: the receiver's count (a control word too late);
//! - `dropped`: service packets neither output nor counted otherwise, and
//!   `datagrams_dropped` by the input queue;
//! - `max_added_gap_ms`: the largest gap between consecutive output
//!   packets minus the input's own gap there (the freeze a viewer sees);
//! - `lag_end_ms`: how far behind live the last output packet left.
//!
//! `ours` is `max_added_gap_ms` with the 300 ms card, `limit` the same
//! with the instant card in the same run.

use super::vcard::{take_slot, Emulator};
use super::zap_figure::{clear_ts, issue_card, AUDIO, ECM_PID, EMM_PID, SERVICE, START_S, VIDEO};
use super::{round3, Settings};
use headend_engine::stream::{process_buffer, ChannelStreamConfig};
use headend_engine::DEFAULT_PERIOD_SECS;
use proto::crypto::X25519Secret;
use receiver::io::{Chunk, Input, PACKETS_PER_DATAGRAM};
use receiver::pipeline::{PacketSink, Pipeline, PipelineOptions};
use receiver::{CardLink, LinkOptions, PcscCard};
use serde_json::{json, Value};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::vpcd::Timing;
use ts::packet::Packets;
use ts::PACKET_LEN;

/// How long the receiver may take, after the stream ends, to empty its
/// queue before the run is cut off.
const DRAIN: Duration = Duration::from_secs(60);

/// A T=0 card at 9600 baud: the character time plus 10 ms of
/// processing per APDU (`smartcard emulate --baud 9600`).
pub(crate) fn t0_9600() -> Timing {
    Timing {
        baud: Some(9600),
        processing: Duration::from_millis(10),
        ..Timing::default()
    }
}

fn models() -> Vec<(&'static str, Timing, bool)> {
    let ms = Duration::from_millis;
    vec![
        ("0ms", Timing::default(), false),
        ("9600baud", t0_9600(), true),
        (
            "300ms",
            Timing {
                per_apdu: ms(300),
                ..Timing::default()
            },
            true,
        ),
        (
            "1000ms",
            Timing {
                per_apdu: ms(1000),
                ..Timing::default()
            },
            true,
        ),
    ]
}

pub(crate) fn slow_card(s: &Settings) -> Vec<Value> {
    let (period_s, changes) = if s.quick { (1, 5) } else { (2, 30) };
    let mut runs: Vec<_> = models()
        .into_iter()
        .map(|(name, timing, short)| (name, timing, short, period_s, changes))
        .collect();
    // The 1,000 ms card again at the default crypto period, where its
    // lag must stay bounded over several periods.
    let slowest = models().pop().expect("the 1,000 ms model");
    runs.push((
        slowest.0,
        slowest.1,
        slowest.2,
        DEFAULT_PERIOD_SECS,
        if s.quick { 2 } else { 6 },
    ));
    let mut lines = Vec::new();
    for (name, timing, short, period_s, changes) in runs {
        match measure(name, timing, short, period_s, changes) {
            Ok(v) => lines.push(v),
            Err(e) => {
                eprintln!("perf: slow_card {name}: {e}");
                return vec![json!({"figure": "slow_card", "card": name, "error": e})];
            }
        }
    }
    let gap = |card: &str| {
        lines
            .iter()
            .find(|l| l["card"] == card && l["crypto_period_s"] == period_s)
            .and_then(|l| l["max_added_gap_ms"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let (ours, limit) = (gap("300ms"), gap("0ms"));
    for l in &mut lines {
        if let Value::Object(o) = l {
            o.insert("ours".into(), json!(ours));
            o.insert("limit".into(), json!(limit));
            o.insert("ratio".into(), json!(round3(ours / limit)));
            o.insert("unit".into(), json!("ms"));
            o.insert("quick".into(), json!(s.quick));
        }
    }
    lines
}

/// Times each output packet of the service.
struct Timed(Vec<Instant>);

impl PacketSink for Timed {
    fn packet(&mut self, p: &[u8; PACKET_LEN]) -> io::Result<()> {
        if is_service(p) {
            self.0.push(Instant::now());
        }
        Ok(())
    }
}

fn is_service(p: &[u8]) -> bool {
    let pid = u16::from_be_bytes([p[1] & 0x1F, p[2]]);
    pid == VIDEO || pid == AUDIO
}

fn measure(
    name: &str,
    timing: Timing,
    short: bool,
    period_s: u64,
    changes: u64,
) -> Result<Value, String> {
    let slot = take_slot()?;
    let setup = Instant::now();
    let _emu = Emulator::start_with(&slot, timing, short)?;
    let feed = issue_card(slot.reader, period_s)?;
    let mut cfg = ChannelStreamConfig::new("perf", "-", "-", EMM_PID).service(SERVICE, ECM_PID);
    cfg.start_unix_ms = Some(START_S * 1000);
    let clear = clear_ts((changes + 1) * period_s * 1000 + 500)?;
    let (scrambled, stats, _) = process_buffer(&cfg, feed, &clear, START_S * 1000)
        .map_err(|e| format!("headend stream engine: {e}"))?;
    if stats.dropped_no_cw != 0 {
        return Err(format!("the headend dropped packets: {stats:?}"));
    }
    // When each service packet went out: its datagram's time.
    let times = receiver::bench::air_times(&scrambled);
    let sent: Vec<f64> = Packets::new(&scrambled)
        .enumerate()
        .filter(|(_, p)| is_service(&p[..]))
        .map(|(i, _)| times[i / PACKETS_PER_DATAGRAM * PACKETS_PER_DATAGRAM])
        .collect();
    let setup_seconds = setup.elapsed().as_secs_f64();

    // The receiver, then the stream.
    let input = Input::open(
        &receiver::io::Address::parse("udp://127.0.0.1:0").map_err(|e| format!("address: {e}"))?,
    )
    .map_err(|e| format!("receiver input: {e}"))?;
    let addr = input.local_addr.ok_or("the UDP input has no address")?;
    let link = CardLink::open(
        Box::new(PcscCard {
            reader: Some(slot.reader.to_string()),
        }),
        X25519Secret::random(),
        LinkOptions::default(),
    )
    .map_err(|e| format!("card link: {e}"))?;
    // A live UDP input, as `receiver` sets it for one: the card works on
    // its own thread and packets do not wait for it.
    let mut pipeline = Pipeline::new(
        link,
        PipelineOptions {
            live: true,
            ..PipelineOptions::default()
        },
    );
    let mut out = Timed(Vec::with_capacity(sent.len()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let sender = {
        let stream = scrambled.clone();
        let stop = stop.clone();
        std::thread::spawn(move || receiver::bench::pace_udp(&stream, addr, &stop))
    };
    let mut ended: Option<Instant> = None;
    let mut drained = false;
    loop {
        if ended.is_none() && sender.is_finished() {
            ended = Some(Instant::now());
        }
        if ended.is_some_and(|e| e.elapsed() > DRAIN) {
            break;
        }
        match input.next(Duration::from_millis(200)) {
            Some(Chunk::Data(d, _)) => pipeline
                .push(&d, &mut out)
                .map_err(|e| format!("receiver: {e}"))?,
            Some(Chunk::End) => break,
            Some(Chunk::Failed(e)) => return Err(format!("receiver input: {e}")),
            None if ended.is_some() => {
                drained = true;
                break;
            }
            None => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    // What the pipeline still holds at the end is counted, not timed:
    // it leaves only when the run is cut off.
    let timed = out.0.len();
    pipeline
        .stop(&mut out)
        .map_err(|e| format!("receiver: {e}"))?;
    let st = pipeline.stats();
    // The card's thread lets go of the reader once its queue is done;
    // the virtual card leaves the slot only after that (a reader whose
    // card vanished under an open connection is deaf to the next card
    // for a while).
    drop(pipeline);
    std::thread::sleep(Duration::from_millis(1500));

    // Output packet k is input packet `before_first_key + k`.
    let skip = st.before_first_key as usize;
    let lag: Vec<f64> = out.0[..timed]
        .iter()
        .zip(sent.iter().skip(skip))
        .map(|(t, &s)| t.duration_since(t0).as_secs_f64() - s)
        .collect();
    let max_added_gap = lag.windows(2).map(|w| w[1] - w[0]).fold(0.0f64, f64::max);
    let lag_end = lag.last().copied().unwrap_or(f64::NAN);
    // Behind live once the first crypto period of output is over: the
    // packets held at the start while the card opened the first ECM
    // (the zap) are behind by its time, and say nothing of keeping up.
    let first_out = out.0.first().copied();
    let steady_from = first_out.map(|t| t + Duration::from_secs(period_s));
    let lag_max = out.0[..timed]
        .iter()
        .zip(&lag)
        .filter(|(t, _)| steady_from.is_some_and(|f| **t >= f))
        .map(|(_, &l)| l)
        .fold(f64::NAN, f64::max);
    let dropped = sent.len() as i64
        - out.0.len() as i64
        - st.before_first_key as i64
        - st.undecryptable as i64;
    Ok(json!({
        "figure": "slow_card",
        "card": name,
        "apdu_delay_ms": timing.per_apdu.as_millis() as u64,
        "baud": timing.baud,
        "processing_ms": timing.processing.as_millis() as u64,
        "short_apdus": short,
        "undecryptable": st.undecryptable,
        "dropped": dropped,
        "datagrams_dropped": input.dropped(),
        "max_added_gap_ms": round3(max_added_gap * 1e3),
        "lag_end_ms": round3(lag_end * 1e3),
        "lag_max_steady_ms": round3(lag_max * 1e3),
        "drained": drained,
        "before_first_key": st.before_first_key,
        "cw_changes": st.cw_changes,
        "ecms_to_card": st.ecms_to_card,
        "service_packets_in": sent.len(),
        "service_packets_out": out.0.len(),
        "crypto_period_s": period_s,
        "stream_s": round3(times.last().copied().unwrap_or(0.0)),
        "reader": slot.reader,
        "setup_seconds": round3(setup_seconds),
        "seconds": round3(t0.elapsed().as_secs_f64()),
        "what": "largest gap between consecutive clear output packets minus the input's own gap, the real receiver (UDP input, pipeline, PC/SC card link) on a live-paced stream, card behind the real pcscd with a timing model",
    }))
}
