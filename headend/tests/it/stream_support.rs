//! Shared by the stream engine's tests: real TS from ffmpeg, a key engine
//! feed, and an analyzer that checks what a receiver would check.
#![allow(dead_code)]

use headend_engine::stream::EngineFeed;
use headend_engine::{ControlWordSchedule, KeyEngine, OperatorKeys};
use proto::ecm::Ecm;
use proto::secret::ProductKey;
use proto::Codec;
use std::collections::{BTreeMap, HashMap};
use ts::cissa::{Descrambler, Outcome};
use ts::packet::{Packet, Packets, PACKET_LEN};
use ts::psi::{
    Cat, Descriptor, Pat, Pmt, PrivateSection, SectionAssembler, CA_SYSTEM_ID,
    SCRAMBLING_MODE_CISSA,
};

pub const SERVICE: u16 = 1;
pub const PRODUCT: u32 = 7;
pub const ECM_PID: u16 = 0x1F0;
pub const EMM_PID: u16 = 0x1F1;
pub const START_MS: u64 = 1_700_000_000_000;

#[allow(unused_imports)] // not every test binary makes ffmpeg streams
pub use testkit::ffmpeg::ffmpeg_ts;

/// A feed with one product and service 1, crypto periods of `period_ms`,
/// and an EMM carousel of `emms` sections of 120 bytes. Returns the
/// product key too, to open the ECMs found in the output.
pub fn feed(period_ms: u64, emms: usize) -> (EngineFeed, ProductKey) {
    let key = ProductKey::random();
    let mut engine = KeyEngine::new(OperatorKeys::generate(1));
    engine
        .add_product_with_key(PRODUCT, 1, key.clone())
        .unwrap();
    let mut f = EngineFeed::new(engine, ControlWordSchedule::new(10).unwrap(), period_ms).unwrap();
    f.add_service(SERVICE, PRODUCT, 0);
    for i in 0..emms {
        // An EMM-U-shaped message: kind, version, address, filler.
        let mut emm = vec![0x01, 0x01];
        emm.extend_from_slice(&(i as u32 + 1).to_be_bytes());
        emm.resize(117, i as u8);
        f.push_emm(ts::psi::TableId(0x82 + (i % 2) as u8), &emm)
            .unwrap();
    }
    (f, key)
}

/// One ECM found on the air, opened.
#[derive(Debug, Clone)]
pub struct SeenEcm {
    /// Index of the packet that completed it.
    pub at: usize,
    pub table_id: u8,
    pub epoch: u64,
    pub even: [u8; 16],
    pub odd: [u8; 16],
}

/// What the analyzer found in a scrambled stream.
#[derive(Debug, Default)]
pub struct Analysis {
    pub packets: usize,
    pub pat: Vec<Pat>,
    pub pmts: Vec<Pmt>,
    pub cats: Vec<Cat>,
    pub ecms: Vec<SeenEcm>,
    /// EMM sections, with the index of the packet that completed each.
    pub emms: Vec<(usize, Vec<u8>)>,
    pub emm_packets: usize,
    /// Errors from the section assemblers (CRC, continuity, ...), by PID.
    pub psi_errors: Vec<(u16, String)>,
    /// Continuity errors, by PID.
    pub cc_errors: Vec<(u16, usize, u8, u8)>,
    /// Descrambled packets of each ES PID, in order.
    pub es: BTreeMap<u16, Vec<[u8; PACKET_LEN]>>,
    /// ES packets whose parity was not the current ECM's epoch parity.
    pub wrong_parity: usize,
    /// ES packets with a payload sent clear.
    pub clear_es: usize,
    /// Scrambled packets that the CWs from the ECMs seen so far could not
    /// open.
    pub undecryptable: usize,
    /// Time of each packet (seconds), from the PCR of the PCR PID,
    /// interpolated by position.
    pub times: Vec<f64>,
    /// PCR packets that carry the discontinuity_indicator.
    pub pcr_discontinuities: usize,
}

impl Analysis {
    pub fn duration(&self) -> f64 {
        match (self.times.first(), self.times.last()) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        }
    }
}

/// Walks a scrambled stream as a receiver with the product key would:
/// PAT, PMT (CA descriptor → ECM PID), CAT (→ EMM PID), ECMs opened with
/// the key, both CW slots loaded from each, ES packets descrambled.
pub fn analyze(out: &[u8], key: &ProductKey, es_pids: &[u16]) -> Analysis {
    let mut a = Analysis::default();
    let mut asm: HashMap<u16, SectionAssembler> = HashMap::new();
    let mut last_cc: HashMap<u16, u8> = HashMap::new();
    let mut d = Descrambler::new();
    let mut current_epoch: Option<u64> = None;
    let mut pcrs: Vec<(usize, f64)> = Vec::new();
    let mut pcr_pid = None;
    let mut pmt_pid = None;
    let mut ecm_pid = None;
    let mut emm_pid = None;
    let mut reader = Packets::new(out);
    for (i, raw) in reader.by_ref().enumerate() {
        a.packets += 1;
        let p = Packet::from_array(raw).expect("valid packet out");
        let pid = p.pid();
        // Continuity: +1 with a payload, the same without.
        if pid != 0x1FFF {
            if let Some(&l) = last_cc.get(&pid) {
                let want = if p.has_payload() { (l + 1) & 0x0F } else { l };
                if p.continuity_counter() != want {
                    a.cc_errors.push((pid, i, l, p.continuity_counter()));
                }
            }
            last_cc.insert(pid, p.continuity_counter());
        }
        if let Some(pcr) = p.pcr() {
            if pcr_pid.is_none() || pcr_pid == Some(pid) {
                pcrs.push((i, pcr.ticks_27mhz() as f64 / 27e6));
            }
            if p.adaptation_field().is_some_and(|f| f.discontinuity()) {
                a.pcr_discontinuities += 1;
            }
        }
        if es_pids.contains(&pid) {
            if !p.has_payload() {
                continue;
            }
            let Some(parity) = p.scrambling().parity() else {
                a.clear_es += 1;
                continue;
            };
            if current_epoch.map(|e| e % 2) != Some(u64::from(parity == ts::Parity::Odd)) {
                a.wrong_parity += 1;
            }
            let mut b = *raw;
            match d.descramble(&mut b) {
                Ok(Outcome::Done(_)) => a.es.entry(pid).or_default().push(b),
                _ => a.undecryptable += 1,
            }
            continue;
        }
        let psi = pid == 0
            || pid == 1
            || Some(pid) == pmt_pid
            || Some(pid) == ecm_pid
            || Some(pid) == emm_pid;
        if !psi {
            continue;
        }
        if Some(pid) == emm_pid {
            a.emm_packets += 1;
        }
        for r in asm.entry(pid).or_default().push(&p) {
            let s = match r {
                Ok(s) => s,
                Err(e) => {
                    a.psi_errors.push((pid, e.to_string()));
                    continue;
                }
            };
            match s[0] {
                0x00 => {
                    let pat = Pat::from_section(&s).unwrap();
                    pmt_pid = pat.pmt_pid(super_service());
                    a.pat.push(pat);
                }
                0x01 => {
                    let cat = Cat::from_section(&s).unwrap();
                    emm_pid = cat.emm_pid(CA_SYSTEM_ID);
                    a.cats.push(cat);
                }
                0x02 => {
                    let pmt = Pmt::from_section(&s).unwrap();
                    ecm_pid = pmt.ca_descriptors(CA_SYSTEM_ID).first().map(|c| c.ca_pid);
                    pcr_pid = Some(pmt.pcr_pid);
                    a.pmts.push(pmt);
                }
                0x80 | 0x81 => {
                    let sec = PrivateSection::parse(&s).unwrap();
                    let ecm = Ecm::from_bytes(sec.payload).unwrap();
                    let h = ecm.header;
                    let ek = key.epoch_key(h.product, h.generation, h.epoch).ecm_key();
                    let payload = ecm.open(&ek).expect("ECM opens with the product key");
                    d.set_even(&payload.cws.even);
                    d.set_odd(&payload.cws.odd);
                    current_epoch = Some(h.epoch);
                    a.ecms.push(SeenEcm {
                        at: i,
                        table_id: s[0],
                        epoch: h.epoch,
                        even: *payload.cws.even.expose(),
                        odd: *payload.cws.odd.expose(),
                    });
                }
                0x82..=0x8F => a.emms.push((i, s)),
                other => panic!("unexpected table {other:#04x} on PID {pid:#06x}"),
            }
        }
    }
    assert_eq!(reader.stats().skipped_bytes, 0, "output out of sync");
    // Packet times from the PCR, interpolated by position.
    a.times = vec![0.0; a.packets];
    if pcrs.len() >= 2 {
        let mut k = 0;
        for (i, t) in a.times.iter_mut().enumerate() {
            while k + 2 < pcrs.len() && pcrs[k + 1].0 <= i {
                k += 1;
            }
            let ((i0, t0), (i1, t1)) = (pcrs[k], pcrs[k + 1]);
            let step = if t1 > t0 {
                (t1 - t0) / (i1 - i0) as f64
            } else {
                0.0
            };
            *t = t0 + (i as f64 - i0 as f64) * step;
        }
    }
    a
}

fn super_service() -> u16 {
    SERVICE
}

/// The packets of each PID of a clear stream, in order.
pub fn packets_by_pid(ts: &[u8]) -> BTreeMap<u16, Vec<[u8; PACKET_LEN]>> {
    let mut m: BTreeMap<u16, Vec<[u8; PACKET_LEN]>> = BTreeMap::new();
    for p in Packets::new(ts) {
        let pid = Packet::from_array(p).unwrap().pid();
        m.entry(pid).or_default().push(*p);
    }
    m
}

/// The ES PIDs with a payload only (what `analyze` keeps).
pub fn with_payload(v: &[[u8; PACKET_LEN]]) -> Vec<[u8; PACKET_LEN]> {
    v.iter()
        .filter(|p| Packet::from_array(p).unwrap().has_payload())
        .copied()
        .collect()
}

/// The program-level descriptors a scrambled PMT must carry.
pub fn check_pmt_signalling(pmt: &Pmt) {
    assert!(
        pmt.descriptors.contains(&Descriptor::iodoform_ca(ECM_PID)),
        "PMT has no CA_descriptor for ECM PID {ECM_PID:#x}: {pmt:?}"
    );
    assert!(
        pmt.descriptors.contains(&Descriptor::Scrambling {
            mode: SCRAMBLING_MODE_CISSA
        }),
        "PMT has no scrambling_descriptor: {pmt:?}"
    );
}

/// Builds small synthetic streams packet by packet, with right continuity
/// counters, for the cases ffmpeg does not make.
#[derive(Debug, Default)]
pub struct Synth {
    cc: HashMap<u16, u8>,
    pub out: Vec<u8>,
}

impl Synth {
    pub fn section(&mut self, pid: u16, section: &[u8]) {
        let cc = self.cc.entry(pid).or_insert(0);
        let mut pkts = Vec::new();
        ts::psi::packetize(&[section], pid, cc, &mut pkts).unwrap();
        for p in pkts {
            self.out.extend_from_slice(&p);
        }
    }

    pub fn pat(&mut self, programs: &[(u16, u16)]) {
        let pat = Pat {
            transport_stream_id: 1,
            version: 0,
            current_next: true,
            programs: programs
                .iter()
                .map(|&(program_number, pid)| ts::psi::PatEntry {
                    program_number,
                    pid,
                })
                .collect(),
        };
        self.section(0, &pat.to_section().unwrap());
    }

    pub fn pmt(
        &mut self,
        program: u16,
        pmt_pid: u16,
        pcr_pid: u16,
        streams: &[(u8, u16)],
        version: u8,
    ) {
        let pmt = Pmt {
            program_number: program,
            version,
            current_next: true,
            pcr_pid,
            descriptors: vec![],
            streams: streams
                .iter()
                .map(|&(stream_type, pid)| ts::psi::PmtStream {
                    stream_type,
                    pid,
                    descriptors: vec![],
                })
                .collect(),
        };
        self.section(pmt_pid, &pmt.to_section().unwrap());
    }

    pub fn cat(&mut self, descriptors: Vec<Descriptor>, version: u8) {
        let cat = Cat {
            version,
            current_next: true,
            descriptors,
        };
        self.section(1, &cat.to_section().unwrap());
    }

    /// One ES packet with a full payload (`fill` repeated), with a PCR of
    /// `pcr_ms` if given.
    pub fn es(&mut self, pid: u16, fill: u8, pcr_ms: Option<u64>) {
        let cc = self.cc.entry(pid).or_insert(0);
        let mut b = ts::packet::PacketBuilder::new(pid);
        b.continuity_counter = *cc;
        *cc = (*cc + 1) & 0x0F;
        b.pcr = pcr_ms.map(|ms| ts::packet::Pcr::from_27mhz(ms * 27_000));
        let (p, _) = b.build(&[fill; 184]).unwrap();
        self.out.extend_from_slice(&p);
    }
}

/// The PAT and service 1's PMT (on 0x1000, PCR on 0x100), every 100 ms.
pub fn psi_every_100ms(s: &mut Synth, ms: u64, streams: &[(u8, u16)], version: u8) {
    if ms % 100 == 0 {
        s.pat(&[(SERVICE, 0x1000)]);
        s.pmt(SERVICE, 0x1000, 0x100, streams, version);
    }
}

/// Two seconds of a synthetic stream: a video packet (0x100, with the PCR
/// every 40 ms) and an audio packet (0x101) every 10 ms, after what `at`
/// adds at each 10 ms step (at least the PSI: see [`psi_every_100ms`]).
pub fn synth_stream(mut at: impl FnMut(&mut Synth, u64)) -> Vec<u8> {
    let mut s = Synth::default();
    for step in 0..200u64 {
        let ms = step * 10;
        at(&mut s, ms);
        s.es(0x100, step as u8, (step % 4 == 0).then_some(ms + 1000));
        s.es(0x101, step as u8, None);
    }
    s.out
}

/// The usual service 1: H.264 on 0x100, AAC on 0x101.
pub const AV: &[(u8, u16)] = &[(0x1B, 0x100), (0x0F, 0x101)];
