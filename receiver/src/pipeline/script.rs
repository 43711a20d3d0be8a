//! For the pipeline's unit tests: a scripted CA module that needs no
//! card, and a small multiplexer that puts tables, ECMs, EMMs and
//! scrambled packets on the air in the order a test writes them.
//!
//! The scripted module answers the ECM of epoch n with CW_n and
//! CW_{n+1} (the keys of [`crate::keys::tests_support`]), refuses it
//! when not entitled or paired with another receiver, and obeys a command
//! in the first body byte of each EMM. The packets of epoch n are
//! scrambled with CW_n, and their payload names their PID and a sequence
//! number, so a test can tell a lost packet from a garbled one.

use super::ca::{CaModule, EcmOutcome, EmmOutcome};
use crate::card::LinkError;
use crate::error::Failure;
use crate::keys::{parity_of, tests_support};
use proto::apdu::StatusWord;
use proto::card::EntitlementRecord;
use proto::codec::{Codec, Reader};
use proto::ecm::{EcmHeader, ECM_BODY_LEN};
use proto::emm::{ADDRESS_OFFSET, EMM_HEADER_LEN};
use std::collections::{BTreeMap, HashMap};
use ts::packet::{PacketBuilder, Packets, Pcr, PAT_PID};
use ts::psi::{
    ecm_section, emm_section, packetize, CaDescriptor, Cat, Descriptor, Pat, PatEntry, Pmt,
    PmtStream, TableId, CA_SYSTEM_ID,
};
use ts::{Packet, Scrambler, PACKET_LEN};

pub const CARD: u32 = 42;
pub const OTHER_CARD: u32 = 43;
pub const PRODUCT: u32 = 7;
pub const SERVICE: u16 = 1;
pub const PMT_PID: u16 = 0x100;
pub const VIDEO: u16 = 0x101;
pub const AUDIO: u16 = 0x102;
pub const ECM_PID: u16 = 0x1F0;
pub const EMM_PID: u16 = 0x1F1;

/// What an EMM tells the scripted module to do: its first body byte.
pub mod command {
    pub const NOTHING: u8 = 0;
    /// The card is entitled from now on.
    pub const ENTITLE: u8 = 1;
    /// The card is no longer entitled.
    pub const REVOKE: u8 = 2;
    /// The card is paired with this receiver from now on.
    pub const PAIR: u8 = 3;
}

/// A card, as far as the pipeline can tell, without one.
#[derive(Debug)]
pub struct ScriptedCa {
    pub card_id: u32,
    pub entitled: bool,
    pub paired_elsewhere: bool,
    /// The epoch of each ECM it was given, in order.
    pub ecms: Vec<u64>,
    /// The address and command of each EMM it was given, in order.
    pub emms: Vec<(u32, u8)>,
    /// How long it takes per command, as a real card does.
    pub delay: std::time::Duration,
}

impl ScriptedCa {
    /// Card [`CARD`], entitled, paired with this receiver.
    pub fn new() -> Self {
        ScriptedCa {
            card_id: CARD,
            entitled: true,
            paired_elsewhere: false,
            ecms: Vec::new(),
            emms: Vec::new(),
            delay: std::time::Duration::ZERO,
        }
    }

    pub fn not_entitled() -> Self {
        ScriptedCa {
            entitled: false,
            ..Self::new()
        }
    }

    pub fn paired_elsewhere() -> Self {
        ScriptedCa {
            paired_elsewhere: true,
            ..Self::new()
        }
    }
}

impl CaModule for ScriptedCa {
    fn card_id(&self) -> u32 {
        self.card_id
    }

    fn process_ecm(&mut self, ecm: &[u8]) -> Result<EcmOutcome, Failure> {
        std::thread::sleep(self.delay);
        let h = EcmHeader::read(&mut Reader::new(ecm)).expect("the pipeline sent a whole ECM");
        assert_eq!(ecm.len(), proto::ecm::ECM_LEN);
        self.ecms.push(h.epoch);
        Ok(if self.paired_elsewhere {
            EcmOutcome::Refused(StatusWord::NOT_PAIRED_RECEIVER)
        } else if !self.entitled {
            EcmOutcome::Refused(StatusWord::ECM_NOT_ENTITLED)
        } else {
            EcmOutcome::ControlWords(tests_support::ecm(h.epoch))
        })
    }

    fn process_emm(&mut self, emm: &[u8]) -> Result<EmmOutcome, Failure> {
        std::thread::sleep(self.delay);
        let at = ADDRESS_OFFSET;
        let address = u32::from_be_bytes(emm[at..at + 4].try_into().unwrap());
        let cmd = emm[EMM_HEADER_LEN];
        self.emms.push((address, cmd));
        match cmd {
            command::ENTITLE => self.entitled = true,
            command::REVOKE => self.entitled = false,
            command::PAIR => self.paired_elsewhere = false,
            _ => {}
        }
        Ok(EmmOutcome::Accepted)
    }

    fn paired_elsewhere(&self) -> bool {
        self.paired_elsewhere
    }

    fn paired_elsewhere_error(&self) -> Failure {
        Failure::Card(LinkError::PairedElsewhere {
            card_id: self.card_id,
            receiver: self.receiver_public(),
        })
    }

    fn receiver_public(&self) -> [u8; 32] {
        [0xAB; 32]
    }

    fn entitlement(&mut self, _product: u32) -> Option<(EntitlementRecord, u64)> {
        None
    }
}

/// The PMT of a service scrambled by Iodoform (`ecm_pid`), or clear.
pub fn service_pmt(program: u16, pcr_pid: u16, es: &[u16], ecm_pid: Option<u16>) -> Pmt {
    Pmt {
        program_number: program,
        version: 0,
        current_next: true,
        pcr_pid,
        descriptors: ecm_pid
            .map(|pid| vec![Descriptor::iodoform_ca(pid), Descriptor::cissa()])
            .unwrap_or_default(),
        streams: es
            .iter()
            .map(|&pid| PmtStream {
                stream_type: 0x1B,
                pid,
                descriptors: Vec::new(),
            })
            .collect(),
    }
}

/// The same PMT with a CA_descriptor of another CA system.
pub fn foreign_pmt(program: u16, pid: u16) -> Pmt {
    let mut pmt = service_pmt(program, pid, &[pid], None);
    pmt.descriptors.push(Descriptor::Ca(CaDescriptor {
        ca_system_id: 0x0B00,
        ca_pid: 0x1E0,
        private_data: Vec::new(),
    }));
    pmt
}

/// A stream in the making: packets in the order they are put on it, each
/// PID with its own continuity counter.
#[derive(Debug, Default)]
pub struct Air {
    pub ts: Vec<u8>,
    cc: HashMap<u16, u8>,
}

impl Air {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counter of the next packet on `pid`.
    fn next_cc(&mut self, pid: u16) -> u8 {
        let cc = self.cc.entry(pid).or_default();
        let now = *cc;
        *cc = (*cc + 1) & 0x0F;
        now
    }

    pub fn section(&mut self, pid: u16, section: &[u8]) {
        let cc = self.cc.entry(pid).or_default();
        let mut out = Vec::new();
        packetize(&[section], pid, cc, &mut out).unwrap();
        for p in out {
            self.ts.extend_from_slice(&p);
        }
    }

    pub fn pat(&mut self, services: &[(u16, u16)]) {
        let pat = Pat {
            transport_stream_id: 1,
            version: 0,
            current_next: true,
            programs: services
                .iter()
                .map(|&(program_number, pid)| PatEntry {
                    program_number,
                    pid,
                })
                .collect(),
        };
        self.section(PAT_PID, &pat.to_section().unwrap());
    }

    pub fn cat(&mut self, emm_pid: u16) {
        let cat = Cat {
            version: 0,
            current_next: true,
            descriptors: vec![Descriptor::iodoform_ca(emm_pid)],
        };
        self.section(ts::packet::CAT_PID, &cat.to_section().unwrap());
    }

    pub fn pmt(&mut self, pid: u16, pmt: &Pmt) {
        self.section(pid, &pmt.to_section().unwrap());
    }

    /// The PAT, CAT and PMT of [`SERVICE`]: video (which carries the PCR)
    /// and audio, ECMs on [`ECM_PID`], EMMs on [`EMM_PID`].
    pub fn tables(&mut self) {
        self.pat(&[(SERVICE, PMT_PID)]);
        self.cat(EMM_PID);
        self.pmt(
            PMT_PID,
            &service_pmt(SERVICE, VIDEO, &[VIDEO, AUDIO], Some(ECM_PID)),
        );
    }

    /// The ECM of `epoch` on `pid` (the same bytes every time).
    pub fn ecm(&mut self, pid: u16, epoch: u64) {
        let mut ecm = Vec::new();
        EcmHeader {
            product: PRODUCT,
            generation: 1,
            epoch,
            service: SERVICE,
        }
        .encode(&mut ecm);
        ecm.extend_from_slice(&[0x5A; ECM_BODY_LEN]);
        self.section(pid, &ecm_section(parity_of(epoch), &ecm).unwrap());
    }

    /// An EMM on [`EMM_PID`] for `address` carrying `cmd`; `n` makes it
    /// differ from another with the same command.
    pub fn emm(&mut self, address: u32, cmd: u8, n: u8) {
        let mut emm = vec![0u8; EMM_HEADER_LEN + 2];
        emm[ADDRESS_OFFSET..ADDRESS_OFFSET + 4].copy_from_slice(&address.to_be_bytes());
        emm[EMM_HEADER_LEN] = cmd;
        emm[EMM_HEADER_LEN + 1] = n;
        self.section(EMM_PID, &emm_section(TableId(0x82), &emm).unwrap());
    }

    /// Packet `seq` of a component on `pid`: scrambled with CW_epoch, or
    /// clear without an epoch; with a PCR (27 MHz ticks) if given.
    pub fn es(&mut self, pid: u16, epoch: Option<u64>, seq: u32, pcr: Option<u64>) {
        let mut b = PacketBuilder::new(pid);
        b.pcr = pcr.map(Pcr::from_27mhz);
        self.es_built(b, epoch, &[], seq);
    }

    /// Packet `seq` of a component on `pid` that starts a PES packet: a
    /// PES header, then `es` (start codes and NAL headers), then the mark
    /// of [`Air::es`]; with the random_access_indicator if `rai`.
    pub fn pes_start(&mut self, pid: u16, epoch: Option<u64>, seq: u32, es: &[u8], rai: bool) {
        let mut b = PacketBuilder::new(pid);
        b.pusi = true;
        b.random_access = rai;
        let mut prefix = vec![0, 0, 1, 0xE0, 0, 0, 0x80, 0, 0];
        prefix.extend_from_slice(es);
        self.es_built(b, epoch, &prefix, seq);
    }

    /// Packet `seq` in the middle of a PES packet, its payload starting
    /// with `es`.
    pub fn pes_more(&mut self, pid: u16, epoch: Option<u64>, seq: u32, es: &[u8]) {
        self.es_built(PacketBuilder::new(pid), epoch, es, seq);
    }

    fn es_built(&mut self, mut b: PacketBuilder, epoch: Option<u64>, prefix: &[u8], seq: u32) {
        let pid = b.pid;
        b.continuity_counter = self.next_cc(pid);
        let mut body = prefix.to_vec();
        body.extend_from_slice(&payload(pid, seq));
        let (mut p, _) = b.build(&body).unwrap();
        if let Some(e) = epoch {
            let mut s = Scrambler::new();
            s.set(parity_of(e), &tests_support::cw(e));
            s.scramble(&mut p, parity_of(e)).unwrap();
        }
        self.ts.extend_from_slice(&p);
    }

    /// `n` packets of `pid` lost on the way: its continuity counter jumps.
    pub fn lose(&mut self, pid: u16, n: u8) {
        let cc = self.cc.entry(pid).or_default();
        *cc = (*cc + n) & 0x0F;
    }

    /// A packet with an adaptation field only (a PCR), on `pid`.
    pub fn pcr_alone(&mut self, pid: u16, pcr: u64) {
        let mut b = PacketBuilder::new(pid);
        // The counter does not advance without a payload: that of the
        // packet before.
        b.continuity_counter = self.cc.get(&pid).map_or(0, |c| c.wrapping_sub(1) & 0x0F);
        b.pcr = Some(Pcr::from_27mhz(pcr));
        let (p, _) = b.build(&[]).unwrap();
        self.ts.extend_from_slice(&p);
    }
}

/// The clear payload of a component's packet: a mark, its PID and its
/// sequence number, then filler.
fn payload(pid: u16, seq: u32) -> [u8; 184] {
    let mut p = [0u8; 184];
    p[..2].copy_from_slice(&[0xC1, 0xEA]);
    p[2..4].copy_from_slice(&pid.to_be_bytes());
    p[4..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// The output's packets by PID.
pub fn by_pid(out: &[u8]) -> BTreeMap<u16, Vec<[u8; PACKET_LEN]>> {
    assert_eq!(out.len() % PACKET_LEN, 0);
    let mut m: BTreeMap<u16, Vec<[u8; PACKET_LEN]>> = BTreeMap::new();
    for p in Packets::new(out) {
        let v = Packet::from_array(p).unwrap();
        assert_eq!(
            v.scrambling().0,
            0,
            "scrambled packet on PID {:#x}",
            v.pid()
        );
        m.entry(v.pid()).or_default().push(*p);
    }
    m
}

/// The sequence numbers of the component packets on `pid` in the output;
/// panics on a packet whose payload is not the clear one. The mark may
/// follow a PES header and start codes ([`Air::pes_start`]).
pub fn seqs(out: &[u8], pid: u16) -> Vec<u32> {
    by_pid(out)
        .remove(&pid)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let v = Packet::from_array(p).unwrap();
            let body = v.payload();
            if body.is_empty() {
                return None; // adaptation field only
            }
            let mark = [0xC1, 0xEA, (pid >> 8) as u8, pid as u8];
            let at = body
                .windows(4)
                .position(|w| w == mark)
                .unwrap_or_else(|| panic!("garbled packet on PID {pid:#x}"));
            let body = &body[at..];
            let seq = u32::from_be_bytes(body[4..8].try_into().unwrap());
            assert_eq!(body, &payload(pid, seq)[..body.len()], "garbled packet");
            Some(seq)
        })
        .collect()
}

/// The tables of the output on `pid`, each as sections.
pub fn sections(out: &[u8], pid: u16) -> Vec<Vec<u8>> {
    let mut asm = ts::psi::SectionAssembler::new();
    let mut v = Vec::new();
    for p in by_pid(out).remove(&pid).unwrap_or_default() {
        for s in asm.push(&Packet::from_array(&p).unwrap()) {
            v.push(s.expect("a whole section"));
        }
    }
    v
}

/// Whether a PMT signals scrambling with Iodoform.
pub fn has_ca(pmt: &Pmt) -> bool {
    !pmt.ca_descriptors(CA_SYSTEM_ID).is_empty()
        || pmt
            .descriptors
            .iter()
            .any(|d| d.tag() == ts::psi::descriptor_tag::SCRAMBLING)
}
