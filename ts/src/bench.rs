//! Throughput figures for the `perf` report: our [`Descrambler`] and
//! [`Scrambler`] against a raw AES-128-CBC pass over exactly the same
//! bytes, measured in the same run so that the machine's speed cancels
//! out.
//!
//! The buffer is a realistic stretch of a scrambled service: 10,000
//! packets (2,000 when `quick`), mostly full 184-byte payloads, every
//! tenth with a PCR in an adaptation field, every 37th with a short
//! stuffed payload, and the parity switching every 500 packets as at a
//! crypto-period change. The raw pass is what no CISSA implementation can
//! beat: the same whole blocks, located in advance, decrypted (or
//! encrypted) with the `cbc` crate under key schedules built once. Ours
//! also parses every header and handles the scrambling bits. Both figures
//! are in MB/s of TS (10^6 bytes of whole packets per second), best pass
//! of several, passes interleaved.

use crate::cissa::{Descrambler, Scrambler, CISSA_IV};
use crate::packet::{PacketBuilder, Parity, Pcr, PACKET_LEN};
use aes::cipher::{
    consts::U16, inout::InOutBuf, BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit,
};
use aes::Aes128;
use proto::secret::ControlWord;
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The bitrate of one channel for `channels_per_core`.
pub const CHANNEL_MBIT_S: f64 = 8.0;
const GOAL_RATIO: f64 = 0.5;
const PARITY_RUN: usize = 500;

struct Stream {
    packets: Vec<[u8; PACKET_LEN]>,
    parities: Vec<Parity>,
    /// The whole-block range of each packet's payload.
    blocks: Vec<(usize, usize)>,
    even: ControlWord,
    odd: ControlWord,
}

fn stream(quick: bool) -> Stream {
    let n = if quick { 2_000 } else { 10_000 };
    let mut packets = Vec::with_capacity(n);
    let mut parities = Vec::with_capacity(n);
    let mut blocks = Vec::with_capacity(n);
    let payload: Vec<u8> = (0..PACKET_LEN).map(|i| (i * 7 + 3) as u8).collect();
    for i in 0..n {
        let mut b = PacketBuilder::new(0x100 + (i % 3) as u16);
        b.continuity_counter = (i / 3) as u8;
        b.pusi = i % 40 == 0;
        let len = if i % 37 == 0 { 100 } else { 184 };
        if i % 10 == 0 {
            b.pcr = Some(Pcr::from_27mhz(i as u64 * 1000));
        }
        let (p, took) = b.build(&payload[..len]).expect("valid bench packet");
        let start = PACKET_LEN - took;
        blocks.push((start, start + took - took % 16));
        packets.push(p);
        parities.push(if (i / PARITY_RUN) % 2 == 0 {
            Parity::Even
        } else {
            Parity::Odd
        });
    }
    Stream {
        packets,
        parities,
        blocks,
        even: ControlWord::from_bytes([0x5A; 16]),
        odd: ControlWord::from_bytes([0xA5; 16]),
    }
}

fn set_bits(s: &mut Stream, scrambled: bool) {
    for (p, parity) in s.packets.iter_mut().zip(&s.parities) {
        let sc = if scrambled {
            parity.scrambling_control().0 << 6
        } else {
            0
        };
        p[3] = (p[3] & 0x3F) | sc;
    }
}

fn raw_keys(s: &Stream) -> (Aes128, Aes128) {
    (
        Aes128::new(s.even.expose().into()),
        Aes128::new(s.odd.expose().into()),
    )
}

/// Runs `ours` and `raw` alternately until `budget` is spent (at least 3
/// passes each) and returns the best time of each.
fn race(
    budget: Duration,
    s: &mut Stream,
    prepare: &dyn Fn(&mut Stream),
    ours: &dyn Fn(&mut Stream),
    raw: &dyn Fn(&mut Stream),
) -> (Duration, Duration, usize) {
    let mut best = (Duration::MAX, Duration::MAX);
    let started = Instant::now();
    let mut passes = 0;
    while passes < 3 || started.elapsed() < budget {
        prepare(s);
        let t = Instant::now();
        ours(s);
        best.0 = best.0.min(t.elapsed());
        prepare(s);
        let t = Instant::now();
        raw(s);
        best.1 = best.1.min(t.elapsed());
        passes += 1;
    }
    (best.0, best.1, passes)
}

fn figure(name: &str, s: &Stream, ours: Duration, raw: Duration, passes: usize) -> Value {
    let bytes = (s.packets.len() * PACKET_LEN) as f64;
    let mbs = |d: Duration| bytes / d.as_secs_f64().max(1e-9) / 1e6;
    let (o, l) = (mbs(ours), mbs(raw));
    json!({
        "figure": name,
        "ours": (o * 10.0).round() / 10.0,
        "limit": (l * 10.0).round() / 10.0,
        "ratio": ((o / l) * 1000.0).round() / 1000.0,
        "unit": "MB/s",
        "goal_ratio": GOAL_RATIO,
        "packets": s.packets.len(),
        "passes": passes,
    })
}

fn budget(quick: bool) -> Duration {
    Duration::from_millis(if quick { 150 } else { 1500 })
}

/// The receiver's descrambling rate against raw AES-128-CBC decryption.
pub fn descramble_rate(quick: bool) -> Value {
    let mut s = stream(quick);
    let mut d = Descrambler::new();
    d.set_even(&s.even);
    d.set_odd(&s.odd);
    let (even, odd) = raw_keys(&s);
    let (ours, raw, passes) = race(
        budget(quick),
        &mut s,
        // The data itself need not be real ciphertext: AES runs in
        // constant time. Only the bits that say "scrambled" are reset.
        &|s| set_bits(s, true),
        &|s| {
            for p in s.packets.iter_mut() {
                black_box(d.descramble(p).ok());
            }
        },
        &|s| {
            for ((p, &(a, b)), parity) in s.packets.iter_mut().zip(&s.blocks).zip(&s.parities) {
                let key = if *parity == Parity::Even { &even } else { &odd };
                let (blocks, _) = InOutBuf::from(&mut p[a..b]).into_chunks::<U16>();
                cbc::Decryptor::<&Aes128>::inner_iv_init(key, &CISSA_IV.into())
                    .decrypt_blocks_inout_mut(blocks);
            }
            black_box(&s.packets);
        },
    );
    figure("descramble", &s, ours, raw, passes)
}

/// The headend's scrambling rate against raw AES-128-CBC encryption, and
/// how many 8 Mbit/s channels one core could scramble at that rate.
pub fn scramble_rate(quick: bool) -> Value {
    let mut s = stream(quick);
    let mut sc = Scrambler::new();
    sc.set_even(&s.even);
    sc.set_odd(&s.odd);
    let (even, odd) = raw_keys(&s);
    let (ours, raw, passes) = race(
        budget(quick),
        &mut s,
        &|s| set_bits(s, false),
        &|s| {
            for (p, parity) in s.packets.iter_mut().zip(&s.parities) {
                black_box(sc.scramble(p, *parity).ok());
            }
        },
        &|s| {
            for ((p, &(a, b)), parity) in s.packets.iter_mut().zip(&s.blocks).zip(&s.parities) {
                let key = if *parity == Parity::Even { &even } else { &odd };
                let (blocks, _) = InOutBuf::from(&mut p[a..b]).into_chunks::<U16>();
                cbc::Encryptor::<&Aes128>::inner_iv_init(key, &CISSA_IV.into())
                    .encrypt_blocks_inout_mut(blocks);
            }
            black_box(&s.packets);
        },
    );
    let mut v = figure("scramble", &s, ours, raw, passes);
    let ours_mbs = v["ours"].as_f64().unwrap_or(0.0);
    v["channel_mbit_s"] = json!(CHANNEL_MBIT_S);
    v["channels_per_core"] = json!((ours_mbs * 8.0 / CHANNEL_MBIT_S).floor());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_have_the_promised_fields() {
        for v in [descramble_rate(true), scramble_rate(true)] {
            for k in ["figure", "ours", "limit", "ratio", "unit", "goal_ratio"] {
                assert!(!v[k].is_null(), "{k} missing in {v}");
            }
            assert!(v["ours"].as_f64().unwrap() > 0.0);
        }
        assert!(scramble_rate(true)["channels_per_core"].as_f64().unwrap() > 0.0);
    }
}
