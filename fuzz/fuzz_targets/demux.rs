//! The PID demultiplexer of `ts`: the first byte assigns roles to PIDs 0-7
//! (one bit each: sections or not), the rest is cut into packets whose PIDs
//! are folded onto those eight, with a few role changes and
//! discontinuities on the way; then the input, as a section payload, is cut
//! into packets on two interleaved PIDs and must come out as it went in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ts::demux::{Demux, PidRole};
use ts::packet::{Packet, SYNC_BYTE};
use ts::psi::{packetize, PrivateSection, TableId, MAX_SECTION_LEN};
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

fn role(bit: bool) -> Role {
    if bit {
        Role::Sections
    } else {
        Role::Pes
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&roles, rest)) = data.split_first() else {
        return;
    };
    let mut d = Demux::new();
    for pid in 0..8u16 {
        d.set(pid, role((roles >> pid) & 1 != 0)).unwrap();
    }
    for chunk in rest.chunks(PACKET_LEN - 1) {
        let _ = d.push_bytes(chunk);
        let mut p = [0xFFu8; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1..1 + chunk.len()].copy_from_slice(chunk);
        p[1] &= 0xE0;
        p[2] &= 0x07;
        // The low bits of the chunk's first byte double as a control:
        // role changes and discontinuities between packets.
        match chunk.first().map(|b| b & 0x1F) {
            Some(0x1F) => d.discontinuity(),
            Some(0x1E) => {
                let pid = u16::from(p[2]);
                let r = d.role(pid).map(|r| r == Role::Sections);
                d.set(pid, role(r != Some(true))).unwrap();
            }
            _ => {}
        }
        let Ok(v) = Packet::from_array(&p) else {
            continue;
        };
        let r = d.push(&v).expect("every PID 0-7 has a role");
        assert_eq!(Some(r.role), d.role(r.pid));
        if r.role == Role::Pes {
            assert!(r.sections.is_empty());
        }
        for s in r.sections.into_iter().flatten() {
            assert!(s.len() >= 3 && s.len() <= MAX_SECTION_LEN);
        }
    }

    // The input as a section on two PIDs, packets interleaved as its bits
    // say: each PID gives back exactly its sections.
    if rest.len() <= MAX_SECTION_LEN - 3 {
        let s = PrivateSection::build(TableId(0x82), rest).unwrap();
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut cc = roles;
        packetize(&[&s, &s], 0x100, &mut cc, &mut a).unwrap();
        packetize(&[&s], 0x101, &mut 0, &mut b).unwrap();
        let mut d = Demux::new();
        d.set(0x100, Role::Sections).unwrap();
        d.set(0x101, Role::Sections).unwrap();
        let (mut ia, mut ib) = (a.iter(), b.iter());
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        let mut bits = rest
            .iter()
            .flat_map(|x| (0..8).map(move |i| (x >> i) & 1 != 0));
        loop {
            let p = if bits.next().unwrap_or(true) {
                ia.next().or_else(|| ib.next())
            } else {
                ib.next().or_else(|| ia.next())
            };
            let Some(p) = p else { break };
            let r = d.push(&Packet::from_array(p).unwrap()).unwrap();
            if r.pid == 0x100 {
                got_a.extend(r.sections);
            } else {
                got_b.extend(r.sections);
            }
        }
        assert_eq!(got_a, vec![Ok(s.clone()), Ok(s.clone())]);
        assert_eq!(got_b, vec![Ok(s)]);
    }
});
