//! The pipeline on hostile input: random bytes, and real scrambled
//! streams with bytes flipped, ranges cut out or repeated, in reads of
//! any size. Whatever comes, it returns (an error or not) and never
//! panics, and what it writes is whole packets.

use crate::common::*;
use card::eeprom::MemEeprom;
use card::Applet;
use proptest::prelude::*;
use proto::crypto::X25519Secret;
use receiver::PipelineOptions;
use std::sync::OnceLock;

/// A provisioned, entitled card image and a scrambled stream with EMMs.
fn fixture() -> &'static (MemEeprom, Vec<u8>) {
    static F: OnceLock<(MemEeprom, Vec<u8>)> = OnceLock::new();
    F.get_or_init(|| {
        let mut engine = engine();
        let (applet, given) = mem_card(&mut engine, CARD, Some((DAY0 - DAY, DAY0 + DAY)));
        let _ = mem_card(&mut engine, OTHER_CARD, Some((DAY0 - DAY, DAY0 + DAY)));
        let other = engine.emm_u_for(OTHER_CARD, START_MS / 1000).unwrap();
        let mut feed = TestFeed::new(engine, 500);
        feed.carousel_emm(&given.unwrap());
        feed.carousel_emm(&other);
        let (scrambled, _) = scramble(&synthetic_ts(3_000, 6), feed, START_MS, 100_000);
        (applet.into_eeprom(), scrambled)
    })
}

fn card() -> SharedCard {
    SharedCard::new(Applet::power_on(fixture().0.clone()).unwrap())
}

fn check(input: &[u8], chunk: usize, service: Option<u16>) {
    let opts = PipelineOptions {
        service,
        hold_limit: 2_000,
        ..PipelineOptions::default()
    };
    let (out, _result, stats) = receive(card(), &X25519Secret::random(), input, opts, chunk);
    assert_eq!(out.len() % 188, 0);
    assert_eq!(stats.packets_out as usize * 188, out.len());
    assert!(out.chunks(188).all(|p| p[0] == 0x47 && p[3] >> 6 == 0));
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, xor: u8 },
    Cut { at: usize, len: usize },
    Repeat { at: usize, len: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 1u8..).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        1 => (any::<usize>(), 1usize..2_000).prop_map(|(at, len)| Mutation::Cut { at, len }),
        1 => (any::<usize>(), 1usize..2_000).prop_map(|(at, len)| Mutation::Repeat { at, len }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..400))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn apply(s: &mut Vec<u8>, m: &Mutation) {
    if s.is_empty() {
        return;
    }
    match m {
        Mutation::Flip { at, xor } => {
            let i = at % s.len();
            s[i] ^= xor;
        }
        Mutation::Cut { at, len } => {
            let i = at % s.len();
            let end = (i + len).min(s.len());
            s.drain(i..end);
        }
        Mutation::Repeat { at, len } => {
            let i = at % s.len();
            let end = (i + len).min(s.len());
            let copy = s[i..end].to_vec();
            s.splice(end..end, copy);
        }
        Mutation::Insert { at, bytes } => {
            let i = at % s.len();
            s.splice(i..i, bytes.iter().copied());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..20_000),
        chunk in 1usize..5_000,
    ) {
        check(&bytes, chunk, None);
    }

    #[test]
    fn random_packets_never_panic(
        packets in prop::collection::vec(
            (0u16..0x30, any::<u8>(), prop::collection::vec(any::<u8>(), 185)), 0..300),
        chunk in 1usize..5_000,
    ) {
        // Valid sync and PIDs where the tables live, anything after.
        let mut s = Vec::new();
        for (pid, flags, rest) in packets {
            s.extend_from_slice(&[0x47, (pid >> 8) as u8 | (flags & 0xE0), pid as u8]);
            s.extend_from_slice(&rest[..185]);
        }
        check(&s, chunk, None);
    }

    #[test]
    fn mutated_streams_never_panic(
        mutations in prop::collection::vec(mutation(), 1..12),
        chunk in 1usize..10_000,
        service in prop::option::of(0u16..3),
    ) {
        let mut s = fixture().1.clone();
        for m in &mutations {
            apply(&mut s, m);
        }
        check(&s, chunk, service);
    }
}

#[test]
fn the_fixture_itself_descrambles() {
    let (out, result, stats) = receive(
        card(),
        &X25519Secret::random(),
        &fixture().1,
        PipelineOptions::default(),
        1316,
    );
    result.unwrap();
    assert_eq!(stats.descrambled, 180, "{stats:?}");
    assert_eq!(stats.undecryptable, 0);
    assert!(!out.is_empty());
}
