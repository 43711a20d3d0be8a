//! The TS layer of `ts`: the resynchronizing packet readers, packet views
//! and DVB-CISSA, fed arbitrary bytes as a stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::secret::ControlWord;
use ts::cissa::{CissaError, Outcome};
use ts::packet::{Packet, PacketMut, PacketReader, Packets, SYNC_BYTE};
use ts::{Descrambler, Parity, Scrambler, ScramblingControl, PACKET_LEN};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the read size of the push reader.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk) * 7 + 1;

    let mut it = Packets::new(stream);
    let packets: Vec<[u8; PACKET_LEN]> = it.by_ref().copied().collect();
    let stats = it.stats();
    assert_eq!(
        packets.len() * PACKET_LEN + stats.skipped_bytes as usize,
        stream.len(),
        "every byte is in a packet or skipped"
    );

    // The same stream in reads of `chunk` bytes gives the same packets.
    let mut r = PacketReader::new();
    let mut pushed = Vec::new();
    for piece in stream.chunks(chunk) {
        r.push(piece);
        while let Some(p) = r.next_packet() {
            pushed.push(*p);
        }
    }
    r.finish();
    while let Some(p) = r.next_packet() {
        pushed.push(*p);
    }
    assert_eq!(pushed, packets);
    assert_eq!(r.stats(), stats);

    let mut scrambler = Scrambler::new();
    scrambler.set_even(&ControlWord::from_bytes([0x11; 16]));
    scrambler.set_odd(&ControlWord::from_bytes([0x22; 16]));
    let mut descrambler = Descrambler::new();
    descrambler.set_even(&ControlWord::from_bytes([0x11; 16]));
    descrambler.set_odd(&ControlWord::from_bytes([0x22; 16]));

    for (i, original) in packets.iter().enumerate() {
        assert_eq!(original[0], SYNC_BYTE);
        let view = Packet::from_array(original);
        if let Ok(v) = view {
            let _ = (v.pid(), v.pusi(), v.tei(), v.continuity_counter(), v.pcr());
            if let Some(af) = v.adaptation_field() {
                let _ = (af.discontinuity(), af.random_access(), af.opcr());
            }
            assert!(v.payload_offset() <= PACKET_LEN);
        }

        // Descrambling anything never panics and clears the bits it used.
        let mut p = *original;
        match descrambler.descramble(&mut p) {
            Ok(Outcome::Done(_)) => assert_eq!(p[3] >> 6, 0),
            Ok(_) => assert_eq!(&p, original),
            Err(CissaError::ReservedScramblingControl) | Err(CissaError::Packet(_)) => {
                assert_eq!(&p, original)
            }
            Err(e) => panic!("unexpected {e}"),
        }

        // A clear packet scrambles and descrambles back to itself.
        let mut p = *original;
        if let Ok(mut m) = PacketMut::from_array(&mut p) {
            m.set_scrambling(ScramblingControl::CLEAR);
        }
        let clear = p;
        let parity = if i % 2 == 0 {
            Parity::Even
        } else {
            Parity::Odd
        };
        if let Ok(Outcome::Done(_)) = scrambler.scramble(&mut p, parity) {
            assert_eq!(
                Packet::from_array(&p).unwrap().scrambling().parity(),
                Some(parity)
            );
            assert_eq!(descrambler.descramble(&mut p), Ok(Outcome::Done(parity)));
            assert_eq!(p, clear);
        }
    }
});
