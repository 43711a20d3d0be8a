//! The stream engine on synthetic streams, for what ffmpeg does not make:
//! a PMT that changes, an input CAT, other programs, PID collisions, and a
//! feed that is not ready.

use crate::stream_support::*;
use headend_engine::stream::{
    process_buffer, CaFeed, ChannelStreamConfig, CryptoPeriod, EngineFeed, FeedError,
};
use std::sync::Arc;
use ts::packet::{Packet, Packets};
use ts::psi::{CaDescriptor, Descriptor, CA_SYSTEM_ID};

fn config() -> ChannelStreamConfig {
    let mut c = ChannelStreamConfig::new("synth", "-", "-", EMM_PID).service(SERVICE, ECM_PID);
    c.start_unix_ms = Some(START_MS);
    c
}

fn count_pid(ts: &[u8], pid: u16) -> usize {
    Packets::new(ts)
        .filter(|p| Packet::from_array(p).unwrap().pid() == pid)
        .count()
}

#[test]
fn a_changed_pmt_gets_a_new_version_and_its_new_stream_is_scrambled() {
    // From 1 s on, the PMT (version 3, then 4) adds a subtitle stream on
    // 0x102; packets on 0x102 run from 0.5 s.
    let clear = synth_stream(|s, ms| {
        let (streams, version): (Vec<(u8, u16)>, u8) = if ms < 1000 {
            (AV.to_vec(), 3)
        } else {
            let mut v = AV.to_vec();
            v.push((0x06, 0x102));
            (v, 4)
        };
        psi_every_100ms(s, ms, &streams, version);
        if ms >= 500 {
            s.es(0x102, 0xAA, None);
        }
    });
    let (feed, key) = feed(100, 0);
    let (out, stats, _) = process_buffer(&config(), feed, &clear, START_MS).unwrap();
    let a = analyze(&out, &key, &[0x100, 0x101, 0x102]);
    assert!(a.psi_errors.is_empty() && a.cc_errors.is_empty(), "{a:?}");
    assert_eq!(a.clear_es + a.undecryptable + a.wrong_parity, 0);
    let versions: Vec<u8> = a.pmts.iter().map(|p| p.version).collect();
    let mut distinct = versions.clone();
    distinct.dedup();
    assert_eq!(distinct, vec![3, 4], "our PMT versions follow the content");
    assert_eq!(stats.pmt_versions, 2);
    for p in &a.pmts {
        check_pmt_signalling(p);
    }
    // 0x102 before its PMT entry was named nowhere: dropped, not sent clear.
    assert_eq!(a.es[&0x102].len(), 100);
    assert_eq!(stats.dropped_unreferenced, 50);
    assert!(a.es[&0x102]
        .iter()
        .all(|p| p[4..].iter().all(|&b| b == 0xAA)));
}

#[test]
fn input_cat_is_merged_and_clear_services_pass_clear() {
    let foreign = Descriptor::Ca(CaDescriptor {
        ca_system_id: 0x0B00,
        ca_pid: 0x300,
        private_data: vec![1, 2],
    });
    let clear = synth_stream(|s, ms| {
        if ms % 100 == 0 {
            s.pat(&[(SERVICE, 0x1000), (2, 0x1100)]);
            s.pmt(SERVICE, 0x1000, 0x100, AV, 0);
            s.pmt(2, 0x1100, 0x200, &[(0x02, 0x200)], 7);
        }
        if ms == 500 {
            // Someone else's EMM PID, and a stray descriptor of ours to drop.
            s.cat(vec![foreign.clone(), Descriptor::iodoform_ca(0x999)], 0);
        }
        s.es(0x200, 0x22, (ms % 40 == 0).then_some(ms));
        // On our ECM PID: must not reach the output.
        s.es(ECM_PID, 0x33, None);
    });
    // By default, program 2 is not sent at all, nor listed in the PAT.
    let (feed0, key0) = feed(100, 0);
    let (out, stats, _) = process_buffer(&config(), feed0, &clear, START_MS).unwrap();
    let by_pid = packets_by_pid(&out);
    assert!(!by_pid.contains_key(&0x200) && !by_pid.contains_key(&0x1100));
    assert_eq!(stats.clear_packets, 0);
    let a = analyze(&out, &key0, &[]);
    assert!(a.pat.iter().all(|p| p.pmt_pid(2).is_none()), "{:?}", a.pat);
    let last = a.pat.last().expect("a PAT");
    assert_eq!(last.programs.len(), 1, "{last:?}");
    assert_eq!(last.pmt_pid(SERVICE), Some(0x1000));

    // Clear on purpose.
    let mut cfg = config();
    cfg.clear_services = vec![2];
    let (feed, key) = feed(100, 0);
    let (out, stats, _) = process_buffer(&cfg, feed, &clear, START_MS).unwrap();
    let a = analyze(&out, &key, &[0x100, 0x101]);
    assert!(a.psi_errors.is_empty() && a.cc_errors.is_empty(), "{a:?}");
    assert_eq!(a.clear_es + a.undecryptable + a.wrong_parity, 0);
    assert_eq!(stats.dropped_collision, 200);
    assert_eq!(a.pat.last().and_then(|p| p.pmt_pid(2)), Some(0x1100));
    // Program 2 is as it came: clear, and its PMT unchanged.
    let by_pid = packets_by_pid(&out);
    assert_eq!(by_pid[&0x200].len(), 200);
    assert!(by_pid[&0x200].iter().all(|p| p[3] >> 6 == 0));
    assert_eq!(by_pid[&0x1100], packets_by_pid(&clear)[&0x1100]);
    // The CAT: ours, then ours merged with the foreign one.
    let first = &a.cats[0];
    assert_eq!(first.version, 0);
    assert_eq!(first.descriptors, vec![Descriptor::iodoform_ca(EMM_PID)]);
    let last = a.cats.last().unwrap();
    assert_eq!(last.version, 1);
    assert_eq!(
        last.descriptors,
        vec![foreign, Descriptor::iodoform_ca(EMM_PID)]
    );
    assert_eq!(last.emm_pid(CA_SYSTEM_ID), Some(EMM_PID));
    // ECMs: only ours on the ECM PID.
    assert_eq!(count_pid(&out, ECM_PID), stats.ecm_sections as usize);
}

/// A feed that is not ready for its first `n` calls.
struct Late {
    inner: EngineFeed,
    n: usize,
}

impl CaFeed for Late {
    fn period(&mut self, service: u16, now_ms: u64) -> Result<CryptoPeriod, FeedError> {
        if self.n > 0 {
            self.n -= 1;
            return Err(FeedError::NotReady(service));
        }
        self.inner.period(service, now_ms)
    }
    fn emm_sections(&mut self, now_ms: u64, max_bytes: usize) -> Vec<Arc<[u8]>> {
        self.inner.emm_sections(now_ms, max_bytes)
    }
}

#[test]
fn nothing_goes_out_clear_while_the_feed_is_not_ready() {
    let clear = synth_stream(|s, ms| psi_every_100ms(s, ms, AV, 0));
    let (inner, key) = feed(100, 0);
    // Polled every 20 ms of stream time: ready after about 200 ms.
    let (out, stats, _) =
        process_buffer(&config(), Late { inner, n: 10 }, &clear, START_MS).unwrap();
    let a = analyze(&out, &key, &[0x100, 0x101]);
    assert_eq!(a.clear_es + a.undecryptable + a.wrong_parity, 0);
    assert!(stats.dropped_no_cw >= 30, "{stats:?}");
    assert_eq!(stats.feed_errors, 10);
    let sent = a.es[&0x100].len() + a.es[&0x101].len();
    assert_eq!(sent as u64 + stats.dropped_no_cw, 400);
    // The first ECM precedes the first scrambled packet.
    let first_es = Packets::new(&out).position(|p| p[3] >> 6 != 0).unwrap();
    assert!(a.ecms[0].at < first_es);
}

#[test]
fn a_feed_that_lies_about_parity_is_refused() {
    struct Wrong(EngineFeed);
    impl CaFeed for Wrong {
        fn period(&mut self, s: u16, now: u64) -> Result<CryptoPeriod, FeedError> {
            let mut p = self.0.period(s, now)?;
            let mut sec = p.ecm_section.to_vec();
            sec[0] ^= 1; // the other parity's table_id
            p.ecm_section = sec.into();
            Ok(p)
        }
        fn emm_sections(&mut self, _: u64, _: usize) -> Vec<Arc<[u8]>> {
            // Not EMM sections: dropped and counted.
            vec![Arc::from(&[0x80u8, 0x70, 0x01, 0x00][..])]
        }
    }
    let clear = synth_stream(|s, ms| psi_every_100ms(s, ms, AV, 0));
    let (inner, _) = feed(100, 0);
    let (out, stats, _) = process_buffer(&config(), Wrong(inner), &clear, START_MS).unwrap();
    assert_eq!(stats.scrambled, 0);
    assert_eq!(stats.dropped_no_cw, 400);
    assert!(stats.emm_rejected > 0);
    assert_eq!(count_pid(&out, 0x100) + count_pid(&out, 0x101), 0);
    assert_eq!(count_pid(&out, ECM_PID), 0);
}

#[test]
fn a_pat_and_a_cat_of_several_sections_are_gathered_whole() {
    use ts::psi::{Cat, Pat, PatEntry};
    let foreign = Descriptor::Ca(CaDescriptor {
        ca_system_id: 0x0B00,
        ca_pid: 0x300,
        private_data: vec![],
    });
    // The service is in the PAT's second section only; the CAT's foreign
    // descriptor in its second section only. The sections go out in
    // reverse order, as nothing says they must come in order.
    let pat = Pat {
        transport_stream_id: 9,
        version: 4,
        current_next: true,
        programs: vec![
            PatEntry {
                program_number: 7,
                pid: 0x1700,
            },
            PatEntry {
                program_number: SERVICE,
                pid: 0x1000,
            },
        ],
    };
    let cat = Cat {
        version: 2,
        current_next: true,
        descriptors: vec![
            Descriptor::Other {
                tag: 0x80,
                data: vec![1],
            },
            foreign.clone(),
        ],
    };
    let pats = pat.to_sections(1).unwrap();
    let cats = cat.to_sections(1).unwrap();
    assert_eq!((pats.len(), cats.len()), (2, 2));
    let clear = synth_stream(|s, ms| {
        if ms % 100 == 0 {
            for p in pats.iter().rev() {
                s.section(0, p);
            }
            s.pmt(SERVICE, 0x1000, 0x100, AV, 0);
        }
        if ms % 500 == 0 {
            for c in cats.iter().rev() {
                s.section(1, c);
            }
        }
    });
    let (feed, key) = feed(100, 0);
    let (out, stats, _) = process_buffer(&config(), feed, &clear, START_MS).unwrap();
    assert_eq!(stats.psi_errors, 0);
    let a = analyze(&out, &key, &[0x100, 0x101]);
    assert!(a.psi_errors.is_empty() && a.cc_errors.is_empty(), "{a:?}");
    assert_eq!(a.clear_es + a.undecryptable + a.wrong_parity, 0);
    // On the air from the first PAT on: nearly every packet descrambled.
    assert!(a.es[&0x100].len() >= 150, "{}", a.es[&0x100].len());
    // Ours: one section, the service only (program 7 is not ours to send).
    let last = a.pat.last().expect("our PAT");
    assert_eq!(last.transport_stream_id, 9);
    assert_eq!(last.programs.len(), 1);
    assert_eq!(last.pmt_pid(SERVICE), Some(0x1000));
    let last = a.cats.last().unwrap();
    assert_eq!(
        last.descriptors,
        vec![
            Descriptor::Other {
                tag: 0x80,
                data: vec![1]
            },
            foreign,
            Descriptor::iodoform_ca(EMM_PID)
        ]
    );
}
