//! The `scramble` figure of the `perf` report, measured through the
//! headend's real per-packet path: [`Mux::push`] (PID role lookup, the air
//! clock, continuity, CISSA with the period's CW, the copy to the output)
//! rather than the bare [`ts::Scrambler`] that `ts::bench::scramble_rate`
//! times. The limit is a raw AES-128-CBC encryption of exactly the same
//! whole blocks, in the same run, as in `ts::bench`.
//!
//! The stream: one service, video (every tenth packet with a PCR), audio
//! and a third ES, PAT and PMT in front; mostly full 184-byte payloads,
//! every 37th a short one, at 8 Mbit/s of PCR time, played in a loop. The
//! crypto period is the default 10 s and the ECM repeats every 100 ms;
//! EMMs are off. (Sealing ECMs is the feed's work, on the daemon's thread
//! in `headend run`, not scrambling.) Figures are MB/s of input TS (10^6 bytes),
//! best pass of several, the two passes interleaved.

use super::{ChannelStreamConfig, EngineFeed, Mux, OutPacket};
use crate::{ControlWordSchedule, KeyEngine, OperatorKeys};
use aes::cipher::KeyInit;
use aes::Aes128;
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::{Duration, Instant};
use ts::packet::{Packet, PacketBuilder, Pcr, PACKET_LEN};
use ts::psi::{packetize, Pat, PatEntry, Pmt, PmtStream};

/// The bitrate of one channel for `channels_per_core` (as `ts::bench`).
pub const CHANNEL_MBIT_S: f64 = 8.0;
const GOAL_RATIO: f64 = 0.5;

fn stream(n: usize) -> Vec<[u8; PACKET_LEN]> {
    let mut out = Vec::with_capacity(n + 2);
    let pat = Pat {
        transport_stream_id: 1,
        version: 0,
        current_next: true,
        programs: vec![PatEntry {
            program_number: 1,
            pid: 0x1000,
        }],
    };
    let pmt = Pmt {
        program_number: 1,
        version: 0,
        current_next: true,
        pcr_pid: 0x100,
        descriptors: vec![],
        streams: [(0x1B, 0x100), (0x0F, 0x101), (0x06, 0x102)]
            .into_iter()
            .map(|(stream_type, pid)| PmtStream {
                stream_type,
                pid,
                descriptors: vec![],
            })
            .collect(),
    };
    let (mut c0, mut c1) = (0, 0);
    let sections = (pat.to_section(), pmt.to_section());
    if let (Ok(a), Ok(b)) = sections {
        // Valid by construction; an error would only shorten the stream.
        let _ = packetize(&[&a], 0, &mut c0, &mut out);
        let _ = packetize(&[&b], 0x1000, &mut c1, &mut out);
    }
    let payload: Vec<u8> = (0..PACKET_LEN).map(|i| (i * 7 + 3) as u8).collect();
    // 8 Mbit/s: 5,319 packets a second, 188 µs of PCR each.
    let ticks_per_packet = 27_000_000 * 188 * 8 / 8_000_000;
    for i in 0..n {
        let mut b = PacketBuilder::new(0x100 + (i % 3) as u16);
        b.continuity_counter = (i / 3) as u8;
        b.pusi = i % 40 == 0;
        if i % 10 == 0 {
            b.pcr = Some(Pcr::from_27mhz(i as u64 * ticks_per_packet));
        }
        let len = if i % 37 == 0 { 100 } else { 184 };
        if let Ok((p, _)) = b.build(&payload[..len]) {
            out.push(p);
        }
    }
    out
}

/// The headend's scrambling rate through the stream engine, against raw
/// AES-128-CBC encryption, and how many 8 Mbit/s channels one core could
/// serve at that rate.
pub fn scramble_rate(quick: bool) -> Value {
    let n = if quick { 2_000 } else { 10_000 };
    let budget = Duration::from_millis(if quick { 150 } else { 1500 });
    let input = stream(n);
    let mut engine = KeyEngine::new(OperatorKeys::generate(1));
    let schedule = ControlWordSchedule::new(1);
    let (Ok(()), Ok(schedule)) = (engine.add_product(1).map(|_| ()), schedule) else {
        return json!({ "figure": "scramble", "error": "cannot set up the key engine" });
    };
    let Ok(mut feed) = EngineFeed::new(engine, schedule, 10_000) else {
        return json!({ "figure": "scramble", "error": "cannot set up the feed" });
    };
    feed.add_service(1, 1, 0);
    let mut cfg = ChannelStreamConfig::new("bench", "-", "-", 0x1F1).service(1, 0x1F0);
    cfg.emm_bitrate = 0;
    let Ok(mut mux) = Mux::new(&cfg, feed, 1_700_000_000_000) else {
        return json!({ "figure": "scramble", "error": "cannot set up the multiplexer" });
    };
    // The whole-block range of every ES packet's payload, for the raw pass.
    let blocks: Vec<(usize, usize)> = input
        .iter()
        .map(|p| match Packet::from_array(p) {
            Ok(v) if v.pid() >= 0x100 && v.pid() <= 0x102 => {
                let at = v.payload_offset();
                let len = PACKET_LEN - at;
                (at, at + len - len % 16)
            }
            _ => (0, 0),
        })
        .collect();
    let key = Aes128::new(&[0x5A; 16].into());
    let mut raw_buf = input.clone();
    let mut out: Vec<OutPacket> = Vec::with_capacity(n + 64);

    let mut best = (Duration::MAX, Duration::MAX);
    let mut passes = 0;
    let started = Instant::now();
    while passes < 3 || started.elapsed() < budget {
        if passes > 0 {
            mux.input_restarted();
        }
        let t = Instant::now();
        // As the run loop does: a read's worth (348 packets of a 64 KiB
        // read) in, then the output taken and written.
        for chunk in input.chunks(348) {
            for p in chunk {
                mux.push(p);
            }
            mux.take_output(&mut out);
            black_box(&out);
            out.clear();
        }
        mux.flush();
        mux.take_output(&mut out);
        black_box(&out);
        out.clear();
        best.0 = best.0.min(t.elapsed());

        raw_buf.copy_from_slice(&input);
        let t = Instant::now();
        for (p, &(a, b)) in raw_buf.iter_mut().zip(&blocks) {
            if b > a {
                ts::cissa::encrypt_payload(&key, &mut p[a..b]);
            }
        }
        black_box(&raw_buf);
        best.1 = best.1.min(t.elapsed());
        passes += 1;
    }
    let bytes = (input.len() * PACKET_LEN) as f64;
    let mbs = |d: Duration| bytes / d.as_secs_f64().max(1e-9) / 1e6;
    let (o, l) = (mbs(best.0), mbs(best.1));
    let scrambled = mux.stats().scrambled;
    json!({
        "figure": "scramble",
        "ours": (o * 10.0).round() / 10.0,
        "limit": (l * 10.0).round() / 10.0,
        "ratio": ((o / l) * 1000.0).round() / 1000.0,
        "unit": "MB/s",
        "goal_ratio": GOAL_RATIO,
        "packets": input.len(),
        "passes": passes,
        "path": "headend stream engine (Mux::push: roles, air clock, continuity, CISSA, output copy)",
        "scrambled_packets": scrambled,
        "channel_mbit_s": CHANNEL_MBIT_S,
        "channels_per_core": (o * 8.0 / CHANNEL_MBIT_S).floor(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figure_has_the_promised_fields() {
        let v = scramble_rate(true);
        for k in [
            "figure",
            "ours",
            "limit",
            "ratio",
            "unit",
            "goal_ratio",
            "channels_per_core",
        ] {
            assert!(!v[k].is_null(), "{k} missing in {v}");
        }
        assert!(v["ours"].as_f64().unwrap() > 0.0);
        // Every ES packet with a payload was scrambled, in every pass.
        let passes = v["passes"].as_u64().unwrap();
        assert_eq!(v["scrambled_packets"].as_u64().unwrap(), passes * 2_000);
    }
}
