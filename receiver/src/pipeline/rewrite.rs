//! What the pipeline writes in place of what it read: the PAT of the one
//! service, its PMT without CA signalling, and the PCR of a PID that is
//! not the service's to descramble. (Components are descrambled in place
//! with the CW slots, [`crate::keys`].)
//!
//! A rewritten table is made once per new input section and re-emitted at
//! the input's own rhythm by a [`Repeater`], with continuity counters of
//! its own, so that a repeated table costs a copy and a PMT version change
//! comes out as a continuous stream.
//!
//! What it must never do: write a scrambled packet or a CA_descriptor,
//! decide which PID is which ([`super::discovery`] does), or talk to the
//! CA module.

use super::PacketSink;
use crate::stats::Stats;
use std::io;
use ts::psi::{descriptor_tag, Descriptor, Pat, Pmt, Repeater};
use ts::{Packet, PacketMut, PACKET_LEN};

/// A rewritten table, cached by the input section it came from.
#[derive(Debug, Default)]
pub(super) struct Rewritten {
    input: Vec<u8>,
    output: Repeater,
    /// The packets of one emission, on their way to the sink.
    scratch: Vec<[u8; PACKET_LEN]>,
}

impl Rewritten {
    /// Emits the rewrite of `input`, making it with `make` when the input
    /// changed.
    pub(super) fn emit(
        &mut self,
        input: &[u8],
        pid: u16,
        make: impl FnOnce() -> Option<Vec<u8>>,
        sink: &mut dyn PacketSink,
        stats: &mut Stats,
    ) -> io::Result<()> {
        if self.input != input {
            let Some(section) = make() else {
                return Ok(());
            };
            self.input = input.to_vec();
            if self.output.set_pid(pid).is_err() || self.output.set_sections(&[&section]).is_err() {
                self.output.clear();
            }
        }
        self.scratch.clear();
        self.output.emit(&mut self.scratch);
        for p in &self.scratch {
            sink.packet(p)?;
            stats.packets_out += 1;
        }
        Ok(())
    }
}

/// The PAT with the one service (and the network PID, if listed).
pub(super) fn service_pat(pat: &Pat, program: Option<u16>) -> Option<Vec<u8>> {
    let mut out = pat.clone();
    out.programs
        .retain(|e| e.program_number == 0 || Some(e.program_number) == program);
    out.to_section().ok()
}

/// The PMT without CA or scrambling descriptors: the output is clear.
pub(super) fn clear_pmt(pmt: &Pmt) -> Pmt {
    let keep =
        |d: &Descriptor| d.tag() != descriptor_tag::CA && d.tag() != descriptor_tag::SCRAMBLING;
    let mut out = pmt.clone();
    out.descriptors.retain(keep);
    for s in &mut out.streams {
        s.descriptors.retain(keep);
    }
    out
}

/// A scrambled packet of a PID the service only takes its PCR from, as a
/// clear packet with its adaptation field alone (same PID and counter);
/// `None` when it carries no PCR, and so nothing for this service.
pub(super) fn adaptation_only(view: &Packet<'_>) -> Option<[u8; PACKET_LEN]> {
    view.pcr()?;
    let p = view.bytes();
    let af = view.adaptation_field().map_or(&[][..], |a| a.bytes());
    let mut out = [0xFFu8; PACKET_LEN];
    out[..3].copy_from_slice(&p[..3]);
    // adaptation_field_control 10 (no payload), clear.
    out[3] = 0x20;
    out[4] = 183;
    out[5..5 + af.len()].copy_from_slice(af);
    PacketMut::from_array(&mut out)
        .ok()?
        .set_continuity_counter(view.continuity_counter());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ts::packet::{PacketBuilder, Pcr};
    use ts::psi::{PmtStream, SectionAssembler, CA_SYSTEM_ID};
    use ts::ScramblingControl;

    #[test]
    fn clear_pmt_drops_ca_and_scrambling_descriptors_only() {
        let lang = Descriptor::Other {
            tag: 0x0A,
            data: b"eng\0".to_vec(),
        };
        let pmt = Pmt {
            program_number: 1,
            version: 3,
            current_next: true,
            pcr_pid: 0x101,
            descriptors: vec![Descriptor::iodoform_ca(0x1F0), Descriptor::cissa()],
            streams: vec![PmtStream {
                stream_type: 0x03,
                pid: 0x101,
                descriptors: vec![Descriptor::iodoform_ca(0x1F2), lang.clone()],
            }],
        };
        let out = clear_pmt(&pmt);
        assert!(out.descriptors.is_empty());
        assert_eq!(out.streams[0].descriptors, [lang]);
        assert!(out.ca_descriptors(CA_SYSTEM_ID).is_empty());
        assert_eq!((out.version, out.pcr_pid), (3, 0x101));
    }

    #[test]
    fn a_rewritten_table_keeps_its_own_continuity_across_a_change() {
        let mut r = Rewritten::default();
        let mut out = Vec::new();
        let mut stats = Stats::default();
        let mut made = 0;
        let section = |v: u8| {
            Pmt {
                program_number: 1,
                version: v,
                current_next: true,
                pcr_pid: 0x101,
                descriptors: vec![],
                streams: vec![],
            }
            .to_section()
            .unwrap()
        };
        for v in [0, 0, 0, 1, 1] {
            let s = section(v);
            r.emit(
                &s,
                0x100,
                || {
                    made += 1;
                    Some(s.clone())
                },
                &mut out,
                &mut stats,
            )
            .unwrap();
        }
        // Made once per new input, emitted every time.
        assert_eq!(made, 2);
        assert_eq!(stats.packets_out, 5);
        let mut asm = SectionAssembler::new();
        let mut versions = Vec::new();
        for (i, p) in ts::packet::Packets::new(&out).enumerate() {
            let v = Packet::from_array(p).unwrap();
            assert_eq!(usize::from(v.continuity_counter()), i);
            for s in asm.push(&v) {
                versions.push(Pmt::from_section(&s.unwrap()).unwrap().version);
            }
        }
        assert_eq!(versions, [0, 0, 0, 1, 1]);
    }

    #[test]
    fn adaptation_only_keeps_the_pcr_and_the_counter() {
        let pcr = Pcr::from_27mhz(123_456_789);
        let mut b = PacketBuilder::new(0x201);
        b.continuity_counter = 9;
        b.pcr = Some(pcr);
        b.scrambling = Some(ScramblingControl(0b10));
        let (p, _) = b.build(&[0xAB; 100]).unwrap();
        let out = adaptation_only(&Packet::from_array(&p).unwrap()).unwrap();
        let v = Packet::from_array(&out).unwrap();
        assert_eq!((v.pid(), v.continuity_counter()), (0x201, 9));
        assert_eq!(v.scrambling().0, 0);
        assert!(!v.has_payload());
        assert_eq!(v.pcr(), Some(pcr));
        // Without a PCR there is nothing to keep.
        b.pcr = None;
        let (p, _) = b.build(&[0xAB; 184]).unwrap();
        assert_eq!(adaptation_only(&Packet::from_array(&p).unwrap()), None);
    }
}
