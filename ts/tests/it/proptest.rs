//! Property tests: hostile input gives errors, never a panic, and every
//! builder round-trips through its parser.

use proptest::collection::vec;
use proptest::prelude::*;
use proto::secret::ControlWord;
use ts::cissa::Outcome;
use ts::packet::{Packet, PacketBuilder, PacketReader, Packets, Pcr, NULL_PID, SYNC_BYTE};
use ts::psi::{
    emm_section_address, packetize, CaDescriptor, Cat, Descriptor, Pat, PatEntry, Pmt, PmtStream,
    PrivateSection, Sdt, SdtService, SectionAssembler, SectionHeader, TableId, TableSections,
};
use ts::{Descrambler, Parity, Scrambler, PACKET_LEN};

/// 256 cases (a second or so in debug) unless PROPTEST_CASES says more.
fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 256;
    }
    c
}

// ------------------------------------------------------------ packets

/// A valid packet whose bytes after the sync byte hold no 0x47, so that
/// it can never be mistaken for a packet boundary.
fn clean_packet() -> impl Strategy<Value = [u8; PACKET_LEN]> {
    (0u16..=0x1FFF, any::<u8>(), vec(any::<u8>(), PACKET_LEN)).prop_map(|(pid, cc, fill)| {
        let mut b = PacketBuilder::new(pid);
        b.continuity_counter = cc;
        let payload: Vec<u8> = fill
            .iter()
            .map(|&x| if x == SYNC_BYTE { 0 } else { x })
            .collect();
        let (mut p, _) = b.build(&payload).unwrap();
        for x in p[1..].iter_mut() {
            if *x == SYNC_BYTE {
                *x = 0x46;
            }
        }
        p
    })
}

fn garbage() -> impl Strategy<Value = Vec<u8>> {
    vec(
        any::<u8>().prop_filter("no sync", |&b| b != SYNC_BYTE),
        0..300,
    )
}

/// Reads `stream` through a PacketReader fed in chunks of the given sizes.
fn read_chunked(stream: &[u8], chunks: &[usize]) -> (Vec<[u8; PACKET_LEN]>, ts::packet::SyncStats) {
    let mut r = PacketReader::new();
    let mut out = Vec::new();
    let mut at = 0;
    let mut sizes = chunks.iter().cycle();
    while at < stream.len() {
        let n = (*sizes.next().unwrap()).min(stream.len() - at);
        r.push(&stream[at..at + n]);
        at += n;
        while let Some(p) = r.next_packet() {
            out.push(*p);
        }
    }
    r.finish();
    while let Some(p) = r.next_packet() {
        out.push(*p);
    }
    (out, r.stats())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_into_the_packet_readers(
        bytes in vec(prop_oneof![Just(SYNC_BYTE), any::<u8>()], 0..2000),
        chunks in vec(1usize..400, 1..5),
    ) {
        let mut it = Packets::new(&bytes);
        let got: Vec<_> = it.by_ref().copied().collect();
        let stats = it.stats();
        // Every byte is either in a packet or counted as skipped.
        prop_assert_eq!(got.len() * PACKET_LEN + stats.skipped_bytes as usize, bytes.len());
        for p in &got {
            prop_assert_eq!(p[0], SYNC_BYTE);
            let _ = Packet::from_array(p); // may be an error, never a panic
        }
        // Splitting the stream into reads changes nothing.
        let (chunked, cstats) = read_chunked(&bytes, &chunks);
        prop_assert_eq!(chunked, got);
        prop_assert_eq!(cstats, stats);
    }

    #[test]
    fn resync_recovers_every_whole_packet(
        runs in vec((garbage(), vec(clean_packet(), 4..7), 0usize..188), 1..5),
        chunks in vec(1usize..1000, 1..4),
    ) {
        // Each run: garbage, the first `cut` bytes of a packet (a packet
        // cut short), then at least SYNC_CONFIRM whole packets, which is
        // what it takes to find sync again.
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (junk, packets, cut) in &runs {
            stream.extend_from_slice(junk);
            if *cut > 0 {
                stream.extend_from_slice(&packets[0][..*cut]);
            }
            for p in &packets[1..] {
                stream.extend_from_slice(p);
                expected.push(*p);
            }
        }
        let got: Vec<_> = Packets::new(&stream).copied().collect();
        prop_assert_eq!(&got, &expected);
        let (chunked, _) = read_chunked(&stream, &chunks);
        prop_assert_eq!(chunked, expected);
    }

    #[test]
    fn packet_views_never_panic(mut bytes in vec(any::<u8>(), PACKET_LEN)) {
        bytes[0] = SYNC_BYTE;
        if let Ok(p) = Packet::new(&bytes) {
            prop_assert!(p.payload_offset() <= PACKET_LEN);
            let _ = (p.pid(), p.pusi(), p.tei(), p.scrambling(), p.continuity_counter(), p.pcr());
            if let Some(af) = p.adaptation_field() {
                let _ = (af.discontinuity(), af.random_access(), af.pcr(), af.opcr());
            }
        }
    }

    #[test]
    fn packet_builder_round_trip(
        pid in 0u16..=0x1FFF,
        cc in 0u8..16,
        pusi in any::<bool>(),
        pcr in proptest::option::of(0u64..(1 << 33) * 300),
        stuffing in 0usize..100,
        payload in vec(any::<u8>(), 0..200),
    ) {
        let mut b = PacketBuilder::new(pid);
        b.continuity_counter = cc;
        b.pusi = pusi;
        b.pcr = pcr.map(Pcr::from_27mhz);
        b.stuffing = stuffing;
        let (p, took) = b.build(&payload).unwrap();
        let v = Packet::new(&p).unwrap();
        prop_assert_eq!(v.pid(), pid);
        prop_assert_eq!(v.continuity_counter(), cc);
        prop_assert_eq!(v.pusi(), pusi);
        prop_assert_eq!(v.payload(), &payload[..took]);
        prop_assert_eq!(v.pcr(), b.pcr);
        prop_assert_eq!(v.pcr().map(|p| p.ticks_27mhz()), pcr);
    }
}

// ------------------------------------------------------------ sections

fn descriptor() -> impl Strategy<Value = Descriptor> {
    prop_oneof![
        (any::<u16>(), 0u16..=0x1FFF, vec(any::<u8>(), 0..12)).prop_map(|(id, pid, data)| {
            Descriptor::Ca(CaDescriptor {
                ca_system_id: id,
                ca_pid: pid,
                private_data: data,
            })
        }),
        any::<u8>().prop_map(|mode| Descriptor::Scrambling { mode }),
        (
            any::<u8>().prop_filter("interpreted tag", |t| *t != 0x09 && *t != 0x65),
            vec(any::<u8>(), 0..12)
        )
            .prop_map(|(tag, data)| Descriptor::Other { tag, data }),
    ]
}

fn pat() -> impl Strategy<Value = Pat> {
    (
        any::<u16>(),
        0u8..32,
        any::<bool>(),
        vec((any::<u16>(), 0u16..=0x1FFF), 0..40),
    )
        .prop_map(|(tsid, version, cn, progs)| Pat {
            transport_stream_id: tsid,
            version,
            current_next: cn,
            programs: progs
                .into_iter()
                .map(|(n, pid)| PatEntry {
                    program_number: n,
                    pid,
                })
                .collect(),
        })
}

fn pmt() -> impl Strategy<Value = Pmt> {
    (
        any::<u16>(),
        0u8..32,
        any::<bool>(),
        0u16..=0x1FFF,
        vec(descriptor(), 0..4),
        vec((any::<u8>(), 0u16..=0x1FFF, vec(descriptor(), 0..3)), 0..8),
    )
        .prop_map(|(n, version, cn, pcr_pid, descriptors, streams)| Pmt {
            program_number: n,
            version,
            current_next: cn,
            pcr_pid,
            descriptors,
            streams: streams
                .into_iter()
                .map(|(stream_type, pid, descriptors)| PmtStream {
                    stream_type,
                    pid,
                    descriptors,
                })
                .collect(),
        })
}

fn cat() -> impl Strategy<Value = Cat> {
    (0u8..32, any::<bool>(), vec(descriptor(), 0..8)).prop_map(|(version, cn, descriptors)| Cat {
        version,
        current_next: cn,
        descriptors,
    })
}

fn sdt() -> impl Strategy<Value = Sdt> {
    (
        (any::<bool>(), any::<u16>(), 0u8..32, any::<bool>()),
        (any::<u8>(), any::<u8>(), any::<u16>()),
        vec(
            (
                any::<u16>(),
                (any::<bool>(), any::<bool>(), 0u8..8, any::<bool>()),
                vec(descriptor(), 0..3),
            ),
            0..12,
        ),
    )
        .prop_map(
            |((actual, tsid, version, cn), (a, b, onid), services)| Sdt {
                table_id: if actual {
                    TableId::SDT_ACTUAL
                } else {
                    TableId::SDT_OTHER
                },
                transport_stream_id: tsid,
                version,
                current_next: cn,
                section_number: a.min(b),
                last_section_number: a.max(b),
                original_network_id: onid,
                services: services
                    .into_iter()
                    .map(|(service_id, (s, pf, rs, ca), descriptors)| SdtService {
                        service_id,
                        eit_schedule: s,
                        eit_present_following: pf,
                        running_status: rs,
                        free_ca_mode: ca,
                        descriptors,
                    })
                    .collect(),
            },
        )
}

fn private_section() -> impl Strategy<Value = Vec<u8>> {
    (0x80u8..=0x8F, vec(any::<u8>(), 0..600))
        .prop_map(|(t, payload)| PrivateSection::build(TableId(t), &payload).unwrap())
}

/// Any section a stream of ours carries.
fn section() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        pat().prop_map(|t| t.to_section().unwrap()),
        pmt().prop_map(|t| t.to_section().unwrap()),
        cat().prop_map(|t| t.to_section().unwrap()),
        sdt().prop_map(|t| t.to_section().unwrap()),
        private_section(),
    ]
}

/// A long-syntax section around arbitrary bytes, with a correct CRC, so
/// that the table parsers get past the CRC check with garbage.
fn crc_valid_garbage(table_id: u8, body: &[u8]) -> Vec<u8> {
    let mut s = vec![table_id, 0, 0];
    let len = body.len() + 4;
    s[1] = 0xB0 | ((len >> 8) as u8 & 0x0F);
    s[2] = len as u8;
    s.extend_from_slice(body);
    let crc = ts::psi::crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

fn parse_all(bytes: &[u8]) {
    let _ = SectionHeader::parse(bytes);
    let _ = Pat::from_section(bytes);
    let _ = Pmt::from_section(bytes);
    let _ = Cat::from_section(bytes);
    let _ = Sdt::from_section(bytes);
    let _ = PrivateSection::parse(bytes);
    let _ = emm_section_address(bytes);
}

fn assemble(packets: &[[u8; PACKET_LEN]]) -> Vec<Result<Vec<u8>, ts::psi::PsiError>> {
    let mut a = SectionAssembler::new();
    packets
        .iter()
        .filter_map(|p| Packet::from_array(p).ok())
        .flat_map(|p| a.push(&p))
        .collect()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn table_round_trips(p in pat(), m in pmt(), c in cat()) {
        prop_assert_eq!(Pat::from_section(&p.to_section().unwrap()).unwrap(), p);
        prop_assert_eq!(Pmt::from_section(&m.to_section().unwrap()).unwrap(), m);
        prop_assert_eq!(Cat::from_section(&c.to_section().unwrap()).unwrap(), c);
    }

    #[test]
    fn multi_section_tables_gather_whole_and_in_any_order(
        p in pat(),
        c in cat(),
        per in 1usize..10,
        rotate in any::<prop::sample::Index>(),
    ) {
        for (sections, whole) in [
            (p.to_sections(per).unwrap(), p.to_section().unwrap()),
            (c.to_sections(per).unwrap(), c.to_section().unwrap()),
        ] {
            let refs: Vec<&[u8]> = sections.iter().map(Vec::as_slice).collect();
            if whole[0] == 0 {
                prop_assert_eq!(Pat::from_sections(&refs).unwrap(), p.clone());
            } else {
                prop_assert_eq!(Cat::from_sections(&refs).unwrap(), c.clone());
            }
            // One section alone is refused when there are several.
            prop_assert_eq!(
                Pat::from_section(&sections[0]).is_ok() || Cat::from_section(&sections[0]).is_ok(),
                sections.len() == 1
            );
            // Gathered in any order (repeats allowed), the table comes out
            // once every section is in, in order.
            let mut t = TableSections::new();
            let n = sections.len();
            let start = rotate.index(n);
            let mut got = None;
            for k in 0..n {
                let s = &sections[(start + k) % n];
                let r = t.push(s).unwrap();
                prop_assert_eq!(r.is_some(), k + 1 == n);
                got = r;
            }
            prop_assert_eq!(got.unwrap(), sections.clone());
            // Out of order or missing, from_sections refuses.
            if n > 1 {
                let mut swapped = refs.clone();
                swapped.swap(0, 1);
                prop_assert!(Pat::from_sections(&swapped).is_err() && Cat::from_sections(&swapped).is_err());
                prop_assert!(Pat::from_sections(&refs[1..]).is_err() && Cat::from_sections(&refs[1..]).is_err());
            }
        }
    }

    #[test]
    fn sdt_round_trips_and_rejects_flips(t in sdt(), bit in any::<prop::sample::Index>()) {
        let s = t.to_section().unwrap();
        prop_assert_eq!(Sdt::from_section(&s).unwrap(), t.clone());
        let mut flipped = s.clone();
        let i = bit.index(s.len() * 8);
        flipped[i / 8] ^= 1 << (i % 8);
        prop_assert!(Sdt::from_section(&flipped).is_err());
        // Re-encoding what was read gives the same bytes.
        let again = Sdt::from_section(&s).unwrap().to_section().unwrap();
        prop_assert_eq!(again, s);
    }

    #[test]
    fn private_section_round_trip(t in 0x80u8..=0x8F, payload in vec(any::<u8>(), 0..4093)) {
        let s = PrivateSection::build(TableId(t), &payload).unwrap();
        let p = PrivateSection::parse(&s).unwrap();
        prop_assert_eq!(p.table_id, TableId(t));
        prop_assert_eq!(p.payload, &payload[..]);
        if (0x82..=0x8F).contains(&t) && payload.len() >= 6 {
            let addr = u32::from_be_bytes(payload[2..6].try_into().unwrap());
            prop_assert_eq!(emm_section_address(&s), Some(addr));
        } else {
            prop_assert_eq!(emm_section_address(&s), None);
        }
    }

    #[test]
    fn any_bit_flip_breaks_a_table(m in pmt(), bit in any::<prop::sample::Index>()) {
        let mut s = m.to_section().unwrap();
        let i = bit.index(s.len() * 8);
        s[i / 8] ^= 1 << (i % 8);
        // CRC32 catches every single-bit error; a flip in the header may be
        // caught earlier as a wrong table or length.
        prop_assert!(Pmt::from_section(&s).is_err());
    }

    #[test]
    fn truncated_or_extended_tables_are_errors(p in pat(), cut in 1usize..20, extra in vec(any::<u8>(), 1..5)) {
        let s = p.to_section().unwrap();
        let short = &s[..s.len().saturating_sub(cut)];
        prop_assert!(Pat::from_section(short).is_err());
        let mut long = s.clone();
        long.extend_from_slice(&extra);
        prop_assert!(Pat::from_section(&long).is_err());
    }

    #[test]
    fn garbage_into_the_table_parsers(
        bytes in vec(any::<u8>(), 0..1100),
        table_id in prop_oneof![0u8..4, Just(0x42u8), Just(0x46u8)],
    ) {
        parse_all(&bytes);
        let s = crc_valid_garbage(table_id, &bytes[..bytes.len().min(1000)]);
        parse_all(&s);
    }

    #[test]
    fn sections_survive_packetization(
        sections in vec(section(), 1..6),
        cc0 in any::<u8>(),
        dup in any::<prop::sample::Index>(),
    ) {
        let refs: Vec<&[u8]> = sections.iter().map(|s| &s[..]).collect();
        let mut cc = cc0;
        let mut pkts = Vec::new();
        packetize(&refs, 0x0ABC, &mut cc, &mut pkts).unwrap();
        prop_assert_eq!(usize::from(cc), (usize::from(cc0 & 15) + pkts.len()) % 16);
        let want: Vec<_> = sections.iter().cloned().map(Ok).collect();
        prop_assert_eq!(assemble(&pkts), want.clone());
        // A repeated packet (same continuity counter) is dropped.
        let i = dup.index(pkts.len());
        pkts.insert(i, pkts[i]);
        prop_assert_eq!(assemble(&pkts), want);
    }

    #[test]
    fn lost_packets_give_errors_not_wrong_sections(
        sections in vec(section(), 1..6),
        lose in any::<prop::sample::Index>(),
    ) {
        let refs: Vec<&[u8]> = sections.iter().map(|s| &s[..]).collect();
        let mut cc = 0;
        let mut pkts = Vec::new();
        packetize(&refs, 0x0ABC, &mut cc, &mut pkts).unwrap();
        if pkts.len() > 1 {
            pkts.remove(lose.index(pkts.len()));
        }
        // With a packet missing, what comes out is either an original
        // section or an error.
        for r in assemble(&pkts).into_iter().flatten() {
            prop_assert!(sections.contains(&r));
        }
    }

    #[test]
    fn random_packets_into_the_assembler(
        packets in vec((any::<u8>(), any::<u8>(), vec(any::<u8>(), 184)), 1..30),
    ) {
        let mut a = SectionAssembler::new();
        for (b1, b3, body) in packets {
            let mut p = [0u8; PACKET_LEN];
            p[0] = SYNC_BYTE;
            p[1] = b1 & 0x5F; // no TEI, so the assembler looks further
            p[2] = 0x10;
            p[3] = b3 & 0x3F; // clear
            p[4..].copy_from_slice(&body);
            if let Ok(v) = Packet::from_array(&p) {
                for r in a.push(&v).into_iter().flatten() {
                    prop_assert!(r.len() >= 3 && r.len() <= 4096);
                }
            }
        }
    }
}

// -------------------------------------------------------------- CISSA

proptest! {
    #![proptest_config(config())]

    #[test]
    fn scramble_descramble_round_trip(
        cw in any::<[u8; 16]>(),
        odd in any::<bool>(),
        stuffing in 0usize..184,
        pcr in proptest::option::of(any::<u32>()),
        payload in vec(any::<u8>(), 184),
    ) {
        let parity = if odd { Parity::Odd } else { Parity::Even };
        let cw = ControlWord::from_bytes(cw);
        let mut b = PacketBuilder::new(0x123);
        b.stuffing = stuffing;
        b.pcr = pcr.map(|t| Pcr::from_27mhz(u64::from(t)));
        let Ok((clear, took)) = b.build(&payload) else {
            return Ok(()); // the adaptation field alone would not fit
        };
        let mut s = Scrambler::new();
        s.set(parity, &cw);
        let mut p = clear;
        let outcome = s.scramble(&mut p, parity).unwrap();
        let start = PACKET_LEN - took;
        let end = start + took - took % 16;
        if took == 0 {
            prop_assert_eq!(outcome, Outcome::Clear);
            prop_assert_eq!(p, clear);
        } else {
            prop_assert_eq!(outcome, Outcome::Done(parity));
            prop_assert_eq!(p[3] >> 6, parity.scrambling_control().0);
            prop_assert_eq!(&p[4..start], &clear[4..start]); // adaptation field
            prop_assert_eq!(&p[end..], &clear[end..]); // residue
        }
        let mut d = Descrambler::new();
        d.set(parity.other(), &ControlWord::from_bytes([0; 16]));
        let mut q = p;
        if took > 0 {
            prop_assert_eq!(d.descramble(&mut q).unwrap(), Outcome::NoKey(parity));
            prop_assert_eq!(q, p);
        }
        d.set(parity, &cw);
        d.descramble(&mut q).unwrap();
        prop_assert_eq!(q, clear);
    }

    #[test]
    fn random_packets_into_cissa(mut p in vec(any::<u8>(), PACKET_LEN), sync in any::<bool>()) {
        if sync {
            p[0] = SYNC_BYTE;
        }
        let mut arr: [u8; PACKET_LEN] = p.try_into().unwrap();
        let mut d = Descrambler::new();
        d.set_even(&ControlWord::from_bytes([1; 16]));
        d.set_odd(&ControlWord::from_bytes([2; 16]));
        let _ = d.descramble(&mut arr);
        let mut s = Scrambler::new();
        s.set_even(&ControlWord::from_bytes([1; 16]));
        let _ = s.scramble(&mut arr, Parity::Even);
        let _ = s.scramble(&mut arr, Parity::Odd);
    }
}

#[test]
fn null_packets_are_not_sections() {
    let p = ts::packet::null_packet();
    let v = Packet::new(&p).unwrap();
    assert_eq!(v.pid(), NULL_PID);
    assert!(SectionAssembler::new().push(&v).is_empty());
}

// ------------------------------------------------------------- PES

/// Elementary stream bytes rich in start codes: pieces of arbitrary bytes
/// and 00 00 01 / 00 00 00 01 prefixes, then a NAL header or code byte.
fn es_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            vec(any::<u8>(), 0..8),
            any::<u8>().prop_map(|b| vec![0, 0, 1, b]),
            any::<u8>().prop_map(|b| vec![0, 0, 0, 1, b]),
        ],
        0..24,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config())]

    /// The scan's answer does not depend on how the data is cut, and
    /// agrees with a byte-by-byte reading of the start codes.
    #[test]
    fn picture_scan_is_independent_of_the_cuts(
        es in es_bytes(),
        cuts in vec(1usize..16, 1..8),
        codec in 0u8..3,
    ) {
        use ts::pes::{Picture, PictureScan, VideoCodec};
        let codec = [VideoCodec::H264, VideoCodec::Hevc, VideoCodec::Mpeg2][usize::from(codec)];
        let whole = PictureScan::new(codec).push(&es);
        let mut s = PictureScan::new(codec);
        let (mut at, mut k) = (0, 0);
        while at < es.len() {
            let n = cuts[k % cuts.len()].min(es.len() - at);
            s.push(&es[at..at + n]);
            at += n;
            k += 1;
        }
        prop_assert_eq!(s.found(), whole);
        // The reference: the first unit after a start code that is a picture.
        let mut want = None;
        for i in 3..es.len() {
            if es[i - 3..i] != [0, 0, 1] {
                continue;
            }
            let b = es[i];
            let kind = match codec {
                VideoCodec::H264 if b & 0x80 == 0 => match b & 0x1F {
                    5 => Some(Picture::RandomAccess),
                    1..=4 => Some(Picture::Dependent),
                    _ => None,
                },
                VideoCodec::Hevc if b & 0x80 == 0 => match (b >> 1) & 0x3F {
                    16..=21 => Some(Picture::RandomAccess),
                    0..=9 => Some(Picture::Dependent),
                    _ => None,
                },
                VideoCodec::Mpeg2 => match b {
                    0xB3 => Some(Picture::RandomAccess),
                    0 => Some(Picture::Dependent),
                    _ => None,
                },
                _ => None,
            };
            if kind.is_some() {
                want = kind;
                break;
            }
        }
        prop_assert_eq!(whole, want);
    }

    /// Arbitrary payloads: the header reader errs or points inside the
    /// payload, never panics.
    #[test]
    fn pes_header_of_random_bytes(mut p in vec(any::<u8>(), 0..200), prefix in any::<bool>()) {
        if prefix && p.len() >= 3 {
            p[..3].copy_from_slice(&[0, 0, 1]);
        }
        if let Ok(n) = ts::pes::header_len(&p) {
            prop_assert!(n >= 6 && n <= p.len());
        }
        let _ = ts::pes::first_picture(ts::pes::VideoCodec::H264, &p);
    }
}
