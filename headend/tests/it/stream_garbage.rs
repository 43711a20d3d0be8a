//! Garbage never panics the stream engine, and never gets a configured
//! service's elementary stream out clear: random bytes, random packets
//! behind a valid PAT and PMT, and a valid stream with random damage.

use crate::stream_support::*;
use headend_engine::stream::{process_buffer, ChannelStreamConfig, Mux};
use proptest::prelude::*;
use std::sync::OnceLock;
use ts::packet::{Packet, Packets, PACKET_LEN};

fn config() -> ChannelStreamConfig {
    let mut c = ChannelStreamConfig::new("garbage", "-", "-", EMM_PID).service(SERVICE, ECM_PID);
    c.start_unix_ms = Some(START_MS);
    c.ecm_interval_ms = 10;
    c
}

fn base() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| synth_stream(|s, ms| psi_every_100ms(s, ms, AV, 0)))
}

/// Runs `input` through the engine and checks what must hold whatever the
/// input: whole packets out, and no payload on the service's PIDs
/// (0x100, 0x101) that is not scrambled.
fn run(input: &[u8]) {
    let (feed, _) = feed(100, 3);
    let (out, stats, _) = process_buffer(&config(), feed, input, START_MS).unwrap();
    assert_eq!(out.len() % PACKET_LEN, 0);
    assert_eq!(out.len() as u64, stats.packets_out * PACKET_LEN as u64);
    for p in Packets::new(&out) {
        let p = Packet::from_array(p).expect("every packet out is valid");
        if matches!(p.pid(), 0x100 | 0x101) && p.has_payload() && p.payload().len() >= 16 {
            assert_ne!(p.scrambling().0, 0, "clear ES packet out");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
        run(&bytes);
    }

    /// Packets with a sync byte and random everything else, after a valid
    /// start, so that headers, adaptation fields, PSI on the PMT and CAT
    /// PIDs, and ES packets in every state reach the engine.
    #[test]
    fn random_packets_behind_valid_psi(
        packets in proptest::collection::vec(
            (prop_oneof![Just(0u16), Just(1), Just(0x1000), Just(0x100), Just(0x101),
                         Just(ECM_PID), Just(0x1FFF), 0u16..0x2000],
             any::<[u8; 185]>()),
            1..120),
    ) {
        let mut input = base()[..40 * PACKET_LEN].to_vec();
        for (pid, rest) in packets {
            let mut p = [0u8; PACKET_LEN];
            p[0] = 0x47;
            p[3..].copy_from_slice(&rest);
            p[1] = (rest[0] & 0xE0) | (pid >> 8) as u8;
            p[2] = pid as u8;
            input.extend_from_slice(&p);
        }
        run(&input);
    }

    /// A valid stream with bytes flipped, cut out or put in.
    #[test]
    fn damaged_stream(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..40),
    ) {
        let mut input = base().to_vec();
        for (at, kind, b) in edits {
            let i = at.index(input.len().max(1));
            match kind {
                0 => input[i] ^= b | 1,
                1 => { input.remove(i); }
                _ => input.insert(i, b),
            }
        }
        run(&input);
    }
}

/// A looping input with damage at the loop point (a cut last packet, junk)
/// goes on without error.
#[test]
fn loop_over_a_damaged_end() {
    let (feed, key) = feed(100, 3);
    let mut mux = Mux::new(&config(), feed, START_MS).unwrap();
    let mut input = base().to_vec();
    input.truncate(input.len() - 100);
    input.extend_from_slice(&[0x47, 0, 0, 0]);
    for pass in 0..3 {
        if pass > 0 {
            mux.input_restarted();
        }
        for p in Packets::new(&input) {
            mux.push(p);
        }
    }
    mux.flush();
    let mut out = Vec::new();
    mux.take_output(&mut out);
    let bytes: Vec<u8> = out.iter().flat_map(|p| p.bytes).collect();
    let a = analyze(&bytes, &key, &[0x100, 0x101]);
    assert_eq!(a.clear_es + a.undecryptable + a.wrong_parity, 0);
    assert!(a.cc_errors.is_empty(), "{:?}", a.cc_errors);
}
