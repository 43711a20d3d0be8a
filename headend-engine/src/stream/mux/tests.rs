//! The multiplexer fails closed: each cause of withholding, the clear
//! services, the last line, the start-up PAT, and our null packets.

use super::output::clear_payload_len;
use super::*;
use crate::stream::feed::{EngineFeed, FeedError};
use crate::{ControlWordSchedule, KeyEngine, OperatorKeys};
use ts::packet::{PacketBuilder, Pcr, ScramblingControl};
use ts::psi::{packetize, PatEntry, PmtStream, SectionAssembler};

const ECM: u16 = 0x1F0;
const EMM: u16 = 0x1F1;
const V: u16 = 0x100;
const A: u16 = 0x101;

/// A feed that knows services 1, 3 and 257 and can be switched off.
struct Switch {
    inner: EngineFeed,
    ready: bool,
}

impl CaFeed for Switch {
    fn period(&mut self, service: u16, now_ms: u64) -> Result<CryptoPeriod, FeedError> {
        if !self.ready {
            return Err(FeedError::NotReady(service));
        }
        self.inner.period(service, now_ms)
    }
    fn emm_sections(&mut self, now_ms: u64, max: usize) -> Vec<Arc<[u8]>> {
        self.inner.emm_sections(now_ms, max)
    }
}

fn mux(services: &[u16], clear: &[u16], ready: bool) -> Mux<Switch> {
    let mut engine = KeyEngine::new(OperatorKeys::generate(1));
    engine.add_product(7).unwrap();
    let mut inner = EngineFeed::new(engine, ControlWordSchedule::new(10).unwrap(), 1000).unwrap();
    let mut cfg = ChannelStreamConfig::new("news", "-", "-", EMM);
    for (i, &s) in services.iter().enumerate() {
        inner.add_service(s, 7, 0);
        cfg = cfg.service(s, ECM + 2 + i as u16);
    }
    if let Some(s) = cfg.services.first_mut() {
        s.ecm_pid = ECM;
    }
    cfg.clear_services = clear.to_vec();
    cfg.emm_bitrate = 0;
    Mux::new(&cfg, Switch { inner, ready }, 1_700_000_000_000).unwrap()
}

#[derive(Default)]
struct Gen {
    cc: HashMap<u16, u8>,
    out: Vec<[u8; PACKET_LEN]>,
}

impl Gen {
    fn section(&mut self, pid: u16, section: &[u8]) {
        let cc = self.cc.entry(pid).or_insert(0);
        packetize(&[section], pid, cc, &mut self.out).unwrap();
    }
    fn pat(&mut self, programs: &[(u16, u16)]) {
        let pat = Pat {
            transport_stream_id: 9,
            version: 4,
            current_next: true,
            programs: programs
                .iter()
                .map(|&(program_number, pid)| PatEntry {
                    program_number,
                    pid,
                })
                .collect(),
        };
        self.section(0, &pat.to_section().unwrap());
    }
    fn pmt(&mut self, program: u16, pid: u16, streams: &[(u8, u16)]) {
        let pmt = Pmt {
            program_number: program,
            version: 0,
            current_next: true,
            pcr_pid: V,
            descriptors: vec![],
            streams: streams
                .iter()
                .map(|&(stream_type, pid)| PmtStream {
                    stream_type,
                    pid,
                    descriptors: vec![],
                })
                .collect(),
        };
        self.section(pid, &pmt.to_section().unwrap());
    }
    fn es(&mut self, pid: u16, ms: u64, pcr: bool, scrambled: bool) {
        let cc = self.cc.entry(pid).or_insert(0);
        let mut b = PacketBuilder::new(pid);
        b.continuity_counter = *cc;
        *cc = (*cc + 1) & 0x0F;
        b.pcr = pcr.then(|| Pcr::from_27mhz((ms + 1000) * 27_000));
        b.scrambling = scrambled.then_some(ScramblingControl(0b10));
        self.out.push(b.build(&[ms as u8; 184]).unwrap().0);
    }
}

/// `ms` of stream: what `psi` adds every 100 ms, then a video packet
/// (PCR every 40 ms) and an audio packet every 10 ms.
fn stream(
    from_ms: u64,
    ms: u64,
    g: &mut Gen,
    mut psi: impl FnMut(&mut Gen, u64),
    scrambled: bool,
) -> Vec<[u8; PACKET_LEN]> {
    for t in (from_ms..from_ms + ms).step_by(10) {
        if t % 100 == 0 {
            psi(g, t);
        }
        g.es(V, t, t % 40 == 0, scrambled);
        g.es(A, t, false, scrambled);
    }
    std::mem::take(&mut g.out)
}

fn program1(g: &mut Gen, _: u64) {
    g.pat(&[(1, 0x1000)]);
    g.pmt(1, 0x1000, &[(0x1B, V), (0x0F, A)]);
}

fn run<F: CaFeed>(m: &mut Mux<F>, input: &[[u8; PACKET_LEN]]) -> Vec<[u8; PACKET_LEN]> {
    for p in input {
        m.push(p);
    }
    m.flush();
    let mut out = Vec::new();
    m.take_output(&mut out);
    out.into_iter().map(|p| p.bytes).collect()
}

fn pid(p: &[u8; PACKET_LEN]) -> u16 {
    u16::from_be_bytes([p[1] & 0x1F, p[2]])
}

fn count(out: &[[u8; PACKET_LEN]], on: u16) -> usize {
    out.iter().filter(|p| pid(p) == on).count()
}

/// Packets with a payload byte and transport_scrambling_control 00.
fn clear_on(out: &[[u8; PACKET_LEN]], pids: &[u16]) -> usize {
    out.iter()
        .filter(|p| pids.contains(&pid(p)) && p[3] >> 6 == 0 && clear_payload_len(p) > 0)
        .count()
}

fn pats(out: &[[u8; PACKET_LEN]]) -> Vec<Pat> {
    let mut asm = SectionAssembler::default();
    out.iter()
        .filter(|p| pid(p) == 0)
        .flat_map(|p| asm.push(&Packet::from_array(p).unwrap()))
        .map(|s| Pat::from_section(&s.unwrap()).unwrap())
        .collect()
}

fn health(m: &Mux<Switch>, i: usize) -> ServiceHealth {
    m.service_health().swap_remove(i)
}

#[test]
fn a_service_on_the_air_is_scrambled_and_announced_alone() {
    let mut m = mux(&[1], &[], true);
    let out = run(
        &mut m,
        &stream(0, 2000, &mut Gen::default(), program1, false),
    );
    assert_eq!(clear_on(&out, &[V, A]), 0);
    assert!(count(&out, V) >= 199 && count(&out, A) == 200);
    let h = health(&m, 0);
    assert!(
        h.on_air && h.withheld.is_none() && h.detail.is_none(),
        "{h:?}"
    );
    assert_eq!(h.scrambled_packets, 400 - m.stats.dropped_unreferenced);
    assert_eq!(h.clear_packets, 0);
    // Our own PAT: the input's transport_stream_id, the service.
    let p = pats(&out);
    assert!(!p.is_empty());
    assert!(p
        .iter()
        .all(|p| p.transport_stream_id == 9 && p.pmt_pid(1) == Some(0x1000)));
    assert_eq!(m.stats.clear_packets, 0);
}

#[test]
fn a_service_missing_from_the_input_sends_nothing() {
    let mut m = mux(&[3], &[], true);
    let out = run(
        &mut m,
        &stream(0, 2000, &mut Gen::default(), program1, false),
    );
    assert_eq!(count(&out, V) + count(&out, A) + count(&out, 0x1000), 0);
    // Nothing on the air: no PAT at all, no PMT, no ECM.
    assert_eq!(count(&out, 0) + count(&out, ECM), 0);
    let h = health(&m, 0);
    assert!(!h.on_air);
    assert_eq!(h.withheld, Some(Withheld::ServiceMissing));
    assert_eq!(
        h.detail.as_deref(),
        Some("the input's PAT lists program 1, not 3")
    );
    assert!(
        h.withheld_packets[&Withheld::ServiceMissing] >= 390,
        "{h:?}"
    );
    assert_eq!(h.scrambled_packets, 0);
    // Logged once, after a second.
    assert_eq!(m.services[0].reports, 1);
    assert_eq!(m.stats.clear_packets, 0);
}

#[test]
fn only_explicitly_clear_services_pass_clear() {
    let both = |g: &mut Gen, _: u64| {
        g.pat(&[(1, 0x1000), (2, 0x1100)]);
        g.pmt(1, 0x1000, &[(0x1B, V), (0x0F, A)]);
        g.pmt(2, 0x1100, &[(0x02, 0x200)]);
    };
    let input = |g: &mut Gen| {
        let mut out = Vec::new();
        for t in (0..2000).step_by(100) {
            let mut s = stream(t, 100, g, both, false);
            for i in 0..10 {
                g.es(0x200, t + i * 10, false, false);
            }
            s.append(&mut g.out);
            out.append(&mut s);
        }
        out
    };
    // Service 3 is missing, programs 1 and 2 are nothing of ours.
    let mut m = mux(&[3], &[], true);
    let out = run(&mut m, &input(&mut Gen::default()));
    assert!(
        out.iter().all(|p| pid(p) == 1 || pid(p) == NULL_PID),
        "only our CAT"
    );
    assert_eq!(
        health(&m, 0).detail.as_deref(),
        Some("the input's PAT lists programs 1, 2, not 3")
    );
    // Program 2 clear on purpose: it, and it alone, passes.
    let mut m = mux(&[3], &[2], true);
    let out = run(&mut m, &input(&mut Gen::default()));
    assert_eq!(count(&out, V) + count(&out, A) + count(&out, 0x1000), 0);
    assert_eq!(count(&out, 0x200), 200);
    assert!(count(&out, 0x1100) >= 20);
    let p = pats(&out);
    assert!(p.iter().all(|p| p.programs
        == vec![PatEntry {
            program_number: 2,
            pid: 0x1100
        }]));
    assert_eq!(m.stats.clear_packets, 0);
}

#[test]
fn without_a_pat_nothing_goes_out() {
    let no_pat = |g: &mut Gen, _: u64| g.pmt(1, 0x1000, &[(0x1B, V), (0x0F, A)]);
    let mut m = mux(&[1], &[], true);
    let out = run(&mut m, &stream(0, 2000, &mut Gen::default(), no_pat, false));
    assert_eq!(
        count(&out, V) + count(&out, A) + count(&out, 0) + count(&out, 0x1000),
        0
    );
    let h = health(&m, 0);
    assert_eq!(h.withheld, Some(Withheld::NoPat));
    assert!(h.withheld_packets[&Withheld::NoPat] >= 390);
}

#[test]
fn without_a_good_pmt_nothing_goes_out() {
    // No PMT at all.
    let no_pmt = |g: &mut Gen, _: u64| g.pat(&[(1, 0x1000)]);
    let mut m = mux(&[1], &[], true);
    let out = run(&mut m, &stream(0, 2000, &mut Gen::default(), no_pmt, false));
    assert_eq!(count(&out, V) + count(&out, A) + count(&out, 0), 0);
    let h = health(&m, 0);
    assert_eq!(h.withheld, Some(Withheld::PmtUnparsable));
    assert_eq!(h.detail.as_deref(), Some("no PMT on PID 0x1000 yet"));
    // A PMT whose CRC is wrong.
    let bad = |g: &mut Gen, _: u64| {
        g.pat(&[(1, 0x1000)]);
        let pmt = Pmt {
            program_number: 1,
            version: 0,
            current_next: true,
            pcr_pid: V,
            descriptors: vec![],
            streams: vec![PmtStream {
                stream_type: 0x1B,
                pid: V,
                descriptors: vec![],
            }],
        };
        let mut s = pmt.to_section().unwrap();
        *s.last_mut().unwrap() ^= 0xFF;
        g.section(0x1000, &s);
    };
    let mut m = mux(&[1], &[], true);
    let out = run(&mut m, &stream(0, 2000, &mut Gen::default(), bad, false));
    assert_eq!(count(&out, V) + count(&out, A) + count(&out, 0), 0);
    let h = health(&m, 0);
    assert_eq!(h.withheld, Some(Withheld::PmtUnparsable));
    assert!(h.detail.as_deref().unwrap().contains("0x1000"), "{h:?}");
}

#[test]
fn an_already_scrambled_input_withholds_the_service_until_it_clears() {
    let mut m = mux(&[1], &[], true);
    let mut g = Gen::default();
    let out = run(&mut m, &stream(0, 2000, &mut g, program1, true));
    assert_eq!(count(&out, V) + count(&out, A), 0);
    // Its PAT and PMT went out before its first ES packet showed it
    // scrambled; none since.
    assert!(count(&out, 0) + count(&out, 0x1000) <= 2, "{}", out.len());
    let h = health(&m, 0);
    assert_eq!(h.withheld, Some(Withheld::Unscramblable));
    assert!(
        h.detail.as_deref().unwrap().contains("already scrambled"),
        "{h:?}"
    );
    assert_eq!(m.services[0].reports, 1);
    // Clear again: on the air after the hold.
    let out = run(&mut m, &stream(2000, 2000, &mut g, program1, false));
    let h = health(&m, 0);
    assert!(h.on_air, "{h:?}");
    assert!(count(&out, V) > 50);
    assert_eq!(clear_on(&out, &[V, A]), 0);
    assert!(pats(&out).last().unwrap().pmt_pid(1).is_some());
    // Scrambled again: withheld at once, and logged again a second later.
    let out = run(&mut m, &stream(4000, 2000, &mut g, program1, true));
    assert_eq!(count(&out, V) + count(&out, A), 0);
    assert_eq!(m.services[0].reports, 2);
    assert_eq!(m.stats.clear_packets, 0);
}

#[test]
fn a_component_on_a_pid_we_cannot_scramble_withholds_the_service() {
    // Audio on the EIT's PID, 0x12.
    let odd = |g: &mut Gen, _: u64| {
        g.pat(&[(1, 0x1000)]);
        g.pmt(1, 0x1000, &[(0x1B, V), (0x0F, 0x12)]);
    };
    let mut m = mux(&[1], &[], true);
    let mut g = Gen::default();
    let mut input = Vec::new();
    for t in (0..2000).step_by(100) {
        input.append(&mut stream(t, 100, &mut g, odd, false));
        g.es(0x12, t, false, false);
        input.append(&mut g.out);
    }
    let out = run(&mut m, &input);
    assert_eq!(count(&out, V) + count(&out, 0x12) + count(&out, 0), 0);
    let h = health(&m, 0);
    assert_eq!(h.withheld, Some(Withheld::Unscramblable));
    assert!(h.detail.as_deref().unwrap().contains("0x0012"), "{h:?}");
    // Video on our ECM PID.
    let clash = |g: &mut Gen, _: u64| {
        g.pat(&[(1, 0x1000)]);
        g.pmt(1, 0x1000, &[(0x1B, ECM), (0x0F, A)]);
    };
    let mut m = mux(&[1], &[], true);
    let out = run(&mut m, &stream(0, 1500, &mut Gen::default(), clash, false));
    assert_eq!(count(&out, A) + count(&out, ECM), 0);
    assert_eq!(health(&m, 0).withheld, Some(Withheld::Unscramblable));
}

#[test]
fn without_a_control_word_nothing_goes_out_until_one_comes() {
    let mut m = mux(&[1], &[], false);
    let mut g = Gen::default();
    let out = run(&mut m, &stream(0, 1500, &mut g, program1, false));
    assert_eq!(
        count(&out, V) + count(&out, A) + count(&out, 0) + count(&out, 0x1000),
        0
    );
    let h = health(&m, 0);
    assert_eq!(h.withheld, Some(Withheld::NoControlWord));
    assert_eq!(
        h.detail.as_deref(),
        Some("no control word from the CA side: service 1 has no crypto period yet")
    );
    assert!(h.withheld_packets[&Withheld::NoControlWord] > 200);
    m.feed_mut().ready = true;
    let out = run(&mut m, &stream(1500, 1000, &mut g, program1, false));
    assert!(health(&m, 0).on_air);
    // The PAT, PMT and ECM come before the first scrambled packet.
    let first = |on: u16| out.iter().position(|p| pid(p) == on).unwrap();
    let first_es = out.iter().position(|p| p[3] >> 6 != 0).unwrap();
    assert!(first(0) < first_es && first(0x1000) < first_es && first(ECM) < first_es);
    assert_eq!(clear_on(&out, &[V, A]), 0);
    // The CA side stops: after the grace, off the air and out of the PAT.
    m.feed_mut().ready = false;
    let out = run(&mut m, &stream(2500, 2000, &mut g, program1, false));
    let h = health(&m, 0);
    assert_eq!(h.withheld, Some(Withheld::NoControlWord), "{h:?}");
    // On with the last CW for the grace (1 s), then nothing but the
    // CAT: no PAT, PMT, ECM or ES.
    let last_es = out.iter().rposition(|p| pid(p) == V).unwrap();
    assert!((150..=250).contains(&(count(&out, V) + count(&out, A))));
    assert!(out[last_es + 1..]
        .iter()
        .all(|p| pid(p) == 1 || pid(p) == A));
    assert!(out.len() - last_es < 10);
    assert_eq!(clear_on(&out, &[V, A]), 0);
}

#[test]
fn the_last_line_drops_clear_content_on_pids_not_allowed() {
    let mut m = mux(&[1], &[], true);
    let mut g = Gen::default();
    run(&mut m, &stream(0, 500, &mut g, program1, false));
    assert!(health(&m, 0).on_air);
    let mut clear = PacketBuilder::new(V).build(&[7; 184]).unwrap().0;
    // A bug that would send a clear video packet: caught.
    m.emit(&clear, 0);
    // Short payloads too: they are content.
    let mut b = PacketBuilder::new(A);
    b.stuffing = 170;
    let (short, n) = b.build(&[7; 184]).unwrap();
    assert!(n < 16);
    m.emit(&short, 0);
    // And on a PID that nothing names.
    clear[1] = 0x05;
    m.emit(&clear, 0);
    assert_eq!(m.stats.clear_packets, 3);
    assert_eq!(health(&m, 0).clear_packets, 2);
    // An adaptation field alone (a PCR) carries no content: it passes.
    let mut b = PacketBuilder::new(V);
    b.pcr = Some(Pcr::from_27mhz(1));
    m.emit(&b.build(&[]).unwrap().0, 0);
    // SI as it came passes.
    m.emit(&PacketBuilder::new(0x11).build(&[1; 184]).unwrap().0, 0);
    let mut out = Vec::new();
    m.take_output(&mut out);
    assert_eq!(
        out.iter()
            .filter(|p| matches!(pid(&p.bytes), V | A | 0x500))
            .count(),
        1
    );
    assert_eq!(m.stats.clear_packets, 3);
}

#[test]
fn at_the_start_the_pat_waits_a_moment_for_every_service() {
    let late = |g: &mut Gen, t: u64| {
        g.pat(&[(1, 0x1000), (2, 0x1100)]);
        g.pmt(1, 0x1000, &[(0x1B, V), (0x0F, A)]);
        if t >= 300 {
            g.pmt(2, 0x1100, &[(0x1B, 0x200)]);
        }
    };
    let mut m = mux(&[1, 2], &[], true);
    let out = run(&mut m, &stream(0, 1000, &mut Gen::default(), late, false));
    let p = pats(&out);
    assert!(!p.is_empty());
    assert!(p
        .iter()
        .all(|p| p.pmt_pid(1).is_some() && p.pmt_pid(2).is_some()));
    // One that never comes holds the PAT back for a second only.
    let never = |g: &mut Gen, _: u64| {
        g.pat(&[(1, 0x1000), (2, 0x1100)]);
        g.pmt(1, 0x1000, &[(0x1B, V), (0x0F, A)]);
    };
    let mut m = mux(&[1, 2], &[], true);
    let out = run(&mut m, &stream(0, 2000, &mut Gen::default(), never, false));
    let first_pat = out.iter().position(|p| pid(p) == 0).unwrap();
    let video_before = out[..first_pat].iter().filter(|p| pid(p) == V).count();
    assert!((80..=110).contains(&video_before), "{video_before}");
    assert!(pats(&out).iter().all(|p| p.programs.len() == 1));
    assert_eq!(health(&m, 1).withheld, Some(Withheld::PmtUnparsable));
}

#[test]
fn null_packets_go_out_as_ours() {
    let mut m = mux(&[1], &[], true);
    let mut g = Gen::default();
    let mut input = stream(0, 200, &mut g, program1, false);
    let mut null = null_packet();
    null[100] = 0x42;
    input.push(null);
    let out = run(&mut m, &input);
    let nulls: Vec<_> = out.iter().filter(|p| pid(p) == NULL_PID).collect();
    assert_eq!(nulls, vec![&null_packet()]);
}
