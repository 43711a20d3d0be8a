//! Property tests of the PID demultiplexer: hostile bytes and packet
//! sequences never make it panic, and sections cut into packets at any
//! points, on PIDs interleaved in any order, come out as they went in.

use proptest::collection::vec;
use proptest::prelude::*;
use ts::demux::{Demux, PidRole};
use ts::packet::{Packet, PacketBuilder, SYNC_BYTE};
use ts::psi::{PrivateSection, TableId, MAX_SECTION_LEN};
use ts::PACKET_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Sections,
    Pes,
}

impl PidRole for Role {
    fn carries_sections(&self) -> bool {
        *self == Role::Sections
    }
}

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 256;
    }
    c
}

fn private_section() -> impl Strategy<Value = Vec<u8>> {
    (0x80u8..=0x8F, vec(any::<u8>(), 0..600))
        .prop_map(|(t, payload)| PrivateSection::build(TableId(t), &payload).unwrap())
}

/// Cuts `sections`, back to back, into packets on `pid` whose payloads
/// take `sizes` bytes of them in turn (capped to what a packet holds, and
/// to one fewer in a packet where a section starts, for its
/// pointer_field); short payloads are padded with adaptation-field
/// stuffing, so a section may be split at any byte.
fn cut(sections: &[Vec<u8>], pid: u16, sizes: &[usize]) -> Vec<[u8; PACKET_LEN]> {
    let mut data = Vec::new();
    let mut starts = Vec::new();
    for s in sections {
        starts.push(data.len());
        data.extend_from_slice(s);
    }
    let mut out = Vec::new();
    let (mut pos, mut cc, mut i) = (0usize, 0u8, 0usize);
    while pos < data.len() {
        let size = sizes[i % sizes.len()].clamp(1, 184);
        i += 1;
        let mut n = size.min(data.len() - pos);
        let start = starts.iter().copied().find(|&s| s >= pos && s < pos + n);
        let mut b = PacketBuilder::new(pid);
        b.continuity_counter = cc;
        let mut payload = Vec::with_capacity(184);
        match start {
            Some(s) if s - pos < 183 => {
                n = n.min(183);
                b.pusi = true;
                payload.push((s - pos) as u8);
            }
            // A start in the last byte: that byte goes in the next packet.
            Some(_) => n = 183,
            None => {}
        }
        payload.extend_from_slice(&data[pos..pos + n]);
        let (p, took) = b.build(&payload).unwrap();
        assert_eq!(took, payload.len());
        out.push(p);
        pos += n;
        cc = (cc + 1) & 0x0F;
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_into_the_demux(
        bytes in vec(any::<u8>(), 0..4000),
        pids in vec((0u16..8, any::<bool>()), 0..8),
    ) {
        let mut d = Demux::new();
        for (pid, sections) in pids {
            d.set(pid, if sections { Role::Sections } else { Role::Pes }).unwrap();
        }
        for chunk in bytes.chunks(PACKET_LEN - 1) {
            // Raw, then with the sync byte forced and the PID folded onto
            // the few that have roles.
            let _ = d.push_bytes(chunk);
            let mut p = [0xFFu8; PACKET_LEN];
            p[0] = SYNC_BYTE;
            p[1..1 + chunk.len()].copy_from_slice(chunk);
            p[1] &= 0xE0;
            p[2] &= 0x07;
            if let Ok(Some(r)) = d.push_bytes(&p) {
                prop_assert_eq!(d.role(r.pid), Some(r.role));
                if r.role == Role::Pes {
                    prop_assert!(r.sections.is_empty());
                }
                for s in r.sections.into_iter().flatten() {
                    prop_assert!(s.len() >= 3 && s.len() <= MAX_SECTION_LEN);
                }
            }
        }
    }

    #[test]
    fn random_packet_sequences_and_role_changes(
        steps in vec((0u16..4, any::<u8>(), any::<u8>(), vec(any::<u8>(), 184), 0u8..8), 1..60),
    ) {
        let mut d = Demux::new();
        for (pid, b1, b3, body, op) in steps {
            match op {
                0 => { d.set(pid, Role::Sections).unwrap(); }
                1 => { d.set(pid, Role::Pes).unwrap(); }
                2 => { d.clear(pid); }
                3 => d.discontinuity(),
                _ => {
                    let mut p = [0u8; PACKET_LEN];
                    p[0] = SYNC_BYTE;
                    p[1] = (b1 & 0xE0) | (pid >> 8) as u8;
                    p[2] = pid as u8;
                    p[3] = b3;
                    p[4..].copy_from_slice(&body);
                    if let Ok(v) = Packet::from_array(&p) {
                        let got = d.push(&v);
                        prop_assert_eq!(got.as_ref().map(|r| r.role), d.role(pid));
                    }
                }
            }
        }
        prop_assert!(d.roles().all(|(pid, _)| pid < 4));
    }

    #[test]
    fn sections_cut_anywhere_reassemble_identically(
        a in vec(private_section(), 1..6),
        b in vec(private_section(), 1..6),
        sizes_a in vec(1usize..=184, 1..20),
        sizes_b in vec(1usize..=184, 1..20),
        order in vec(any::<bool>(), 0..200),
    ) {
        let pa = cut(&a, 0x100, &sizes_a);
        let pb = cut(&b, 0x1FFE, &sizes_b);
        let mut d = Demux::new();
        d.set(0x100, Role::Sections).unwrap();
        d.set(0x1FFE, Role::Sections).unwrap();
        d.set(0x20, Role::Pes).unwrap();
        let (mut ia, mut ib) = (pa.iter(), pb.iter());
        let mut order = order.into_iter();
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        let (noise, _) = PacketBuilder::new(0x20).build(&[0x47; 184]).unwrap();
        loop {
            // The two PIDs interleaved in a random order, with PES in between.
            let p = match order.next() {
                Some(true) => ia.next().or_else(|| ib.next()),
                Some(false) => ib.next().or_else(|| ia.next()),
                None => ia.next().or_else(|| ib.next()),
            };
            let Some(p) = p else { break };
            for q in [p, &noise] {
                let r = d.push(&Packet::from_array(q).unwrap()).unwrap();
                match r.pid {
                    0x100 => got_a.extend(r.sections),
                    0x1FFE => got_b.extend(r.sections),
                    _ => prop_assert!(r.sections.is_empty()),
                }
            }
        }
        prop_assert_eq!(got_a, a.into_iter().map(Ok).collect::<Vec<_>>());
        prop_assert_eq!(got_b, b.into_iter().map(Ok).collect::<Vec<_>>());
    }
}
