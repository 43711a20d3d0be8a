//! A real multiplex: ffmpeg's three-program TS through the stream engine,
//! two services scrambled under different products, the third passed
//! through clear, and the SDT rewritten to say which are scrambled (read
//! back with our parser and with ffprobe).

use crate::stream_support::START_MS;
use headend_engine::stream::{process_buffer, ChannelStreamConfig, EngineFeed};
use headend_engine::{ControlWordSchedule, KeyEngine, OperatorKeys};
use proto::ecm::Ecm;
use proto::secret::ProductKey;
use proto::Codec;
use std::collections::{BTreeMap, HashMap};
use testkit::ffmpeg::{ffprobe_programs, mpts, MPTS_PROGRAMS};
use ts::cissa::{Descrambler, Outcome};
use ts::packet::{Packet, Packets, PACKET_LEN};
use ts::psi::{Pat, Pmt, PrivateSection, Sdt, SectionAssembler, CA_SYSTEM_ID, SDT_PID};

pub const EMM_PID: u16 = 0x1F1;
/// (service, product, ECM PID) of the two scrambled services.
pub const SCRAMBLED: [(u16, u32, u16); 2] = [(1, 7, 0x1F0), (2, 8, 0x1F2)];
pub const CLEAR: u16 = 3;

/// What a receiver told to tune to one service finds in a multiplex.
#[derive(Debug, Default)]
pub struct Tuned {
    /// Its components, descrambled, by PID.
    pub es: BTreeMap<u16, Vec<[u8; PACKET_LEN]>>,
    pub undecryptable: usize,
    pub clear_es: usize,
    /// ECMs on its ECM PID that opened with the key, and those that did
    /// not.
    pub ecms_opened: usize,
    pub ecms_refused: usize,
    pub ecm_pid: Option<u16>,
    pub errors: Vec<String>,
}

/// Walks `out` as a receiver tuned to `service` with `key`: PAT → its
/// PMT → CA descriptor → ECM PID; ECMs opened, components descrambled.
pub fn tune(out: &[u8], service: u16, key: &ProductKey) -> Tuned {
    let mut t = Tuned::default();
    let mut asm: HashMap<u16, SectionAssembler> = HashMap::new();
    let mut d = Descrambler::new();
    let (mut pmt_pid, mut es_pids, mut have_cw) = (None, Vec::new(), false);
    for raw in Packets::new(out) {
        let p = Packet::from_array(raw).unwrap();
        let pid = p.pid();
        if es_pids.contains(&pid) {
            if !p.has_payload() {
                continue;
            }
            if p.scrambling().parity().is_none() {
                t.clear_es += 1;
                continue;
            }
            if !have_cw {
                continue;
            }
            let mut b = *raw;
            match d.descramble(&mut b) {
                Ok(Outcome::Done(_)) => t.es.entry(pid).or_default().push(b),
                _ => t.undecryptable += 1,
            }
            continue;
        }
        if pid != 0 && Some(pid) != pmt_pid && Some(pid) != t.ecm_pid {
            continue;
        }
        for r in asm.entry(pid).or_default().push(&p) {
            let s = match r {
                Ok(s) => s,
                Err(e) => {
                    t.errors.push(format!("PID {pid:#06x}: {e}"));
                    continue;
                }
            };
            match s[0] {
                0x00 => pmt_pid = Pat::from_section(&s).unwrap().pmt_pid(service),
                0x02 => {
                    let pmt = Pmt::from_section(&s).unwrap();
                    if pmt.program_number != service {
                        continue;
                    }
                    t.ecm_pid = pmt.ca_descriptors(CA_SYSTEM_ID).first().map(|c| c.ca_pid);
                    es_pids = pmt.streams.iter().map(|s| s.pid).collect();
                }
                0x80 | 0x81 => {
                    let sec = PrivateSection::parse(&s).unwrap();
                    let ecm = Ecm::from_bytes(sec.payload).unwrap();
                    let h = ecm.header;
                    let ek = key.epoch_key(h.product, h.generation, h.epoch).ecm_key();
                    match ecm.open(&ek) {
                        Ok(payload) => {
                            d.set_even(&payload.cws.even);
                            d.set_odd(&payload.cws.odd);
                            have_cw = true;
                            t.ecms_opened += 1;
                        }
                        Err(_) => t.ecms_refused += 1,
                    }
                }
                _ => {}
            }
        }
    }
    t
}

/// The packets with a payload on `pid`.
pub fn payload_packets(ts: &[u8], pid: u16) -> Vec<[u8; PACKET_LEN]> {
    Packets::new(ts)
        .filter(|p| {
            let v = Packet::from_array(p).unwrap();
            v.pid() == pid && v.has_payload()
        })
        .copied()
        .collect()
}

/// Every SDT (actual TS) section on PID 0x11 of `ts`, parsed.
pub fn sdts(ts: &[u8]) -> Vec<Sdt> {
    let mut asm = SectionAssembler::new();
    Packets::new(ts)
        .map(|p| Packet::from_array(p).unwrap())
        .filter(|p| p.pid() == SDT_PID)
        .flat_map(|p| asm.push(&p))
        .map(|r| r.expect("SDT PID assembles"))
        .filter(|s| s[0] == 0x42)
        .map(|s| Sdt::from_section(&s).expect("our SDT parses"))
        .collect()
}

/// Checks the SDT of a scrambled multiplex: the scrambled services
/// marked, with our CA system; the clear one as ffmpeg made it; names
/// kept.
pub fn check_sdt(out: &[u8], clear_in: &[u8]) {
    let theirs = sdts(clear_in);
    assert!(!theirs.is_empty(), "ffmpeg's MPTS carries an SDT");
    assert!(
        theirs[0].services.iter().all(|s| !s.free_ca_mode),
        "ffmpeg says free-to-air: {theirs:?}"
    );
    let ours = sdts(out);
    assert!(ours.len() >= theirs.len() / 2, "the SDT goes out: {ours:?}");
    for sdt in &ours {
        assert_eq!(sdt.services.len(), 3, "{sdt:?}");
        for (n, name, ..) in MPTS_PROGRAMS {
            let e = sdt.service(n).unwrap();
            assert_eq!(e.names().unwrap().1, name.as_bytes());
            let scrambled = n != CLEAR;
            assert_eq!(e.free_ca_mode, scrambled, "service {n}: {e:?}");
            assert_eq!(
                e.ca_identifiers(),
                if scrambled {
                    vec![CA_SYSTEM_ID]
                } else {
                    vec![]
                },
                "service {n}"
            );
        }
        let clear_entry = theirs[0].service(CLEAR).unwrap();
        assert_eq!(sdt.service(CLEAR).unwrap(), clear_entry);
    }
}

#[test]
fn an_mpts_has_two_services_scrambled_under_two_products_and_one_clear() {
    let Some(clear) = mpts(3) else { return };
    let keys: Vec<ProductKey> = SCRAMBLED.iter().map(|_| ProductKey::random()).collect();
    let mut engine = KeyEngine::new(OperatorKeys::generate(1));
    for ((_, product, _), key) in SCRAMBLED.iter().zip(&keys) {
        engine
            .add_product_with_key(*product, 1, key.clone())
            .unwrap();
    }
    let mut feed = EngineFeed::new(engine, ControlWordSchedule::new(10).unwrap(), 500).unwrap();
    let mut cfg = ChannelStreamConfig::new("mpts", "-", "-", EMM_PID);
    for (service, product, ecm_pid) in SCRAMBLED {
        feed.add_service(service, product, 0);
        cfg = cfg.service(service, ecm_pid);
    }
    cfg.clear_services = vec![CLEAR];
    cfg.start_unix_ms = Some(START_MS);
    let (out, stats, _) = process_buffer(&cfg, feed, &clear, START_MS).unwrap();
    assert_eq!(stats.clear_packets, 0);

    for (i, (service, _, ecm_pid)) in SCRAMBLED.into_iter().enumerate() {
        let (_, _, _, video, audio) = MPTS_PROGRAMS[usize::from(service) - 1];
        let t = tune(&out, service, &keys[i]);
        assert!(t.errors.is_empty(), "service {service}: {:?}", t.errors);
        assert_eq!(t.ecm_pid, Some(ecm_pid));
        assert_eq!((t.clear_es, t.undecryptable, t.ecms_refused), (0, 0, 0));
        assert!(t.ecms_opened >= 10, "service {service}: {t:?}");
        for pid in [video, audio] {
            // What the receiver descrambles is what ffmpeg made, but the
            // packets before the first CW.
            let want = payload_packets(&clear, pid);
            let got = &t.es[&pid];
            assert!(got.len() * 10 >= want.len() * 9, "PID {pid:#06x}");
            let tail = &want[want.len() - got.len()..];
            for (g, w) in got.iter().zip(tail) {
                assert_eq!(g[4..], w[4..], "PID {pid:#06x}");
            }
        }
        // The other product's key opens none of its ECMs.
        let other = tune(&out, service, &keys[1 - i]);
        assert_eq!(other.ecms_opened, 0);
        assert!(other.ecms_refused >= 10);
        assert!(other.es.is_empty());
    }

    // The clear service: every packet of its components as it came.
    let (_, _, pmt_pid, video, audio) = MPTS_PROGRAMS[usize::from(CLEAR) - 1];
    for pid in [video, audio, pmt_pid] {
        let want: Vec<_> = Packets::new(&clear)
            .filter(|p| Packet::from_array(p).unwrap().pid() == pid)
            .collect();
        let got: Vec<_> = Packets::new(&out)
            .filter(|p| Packet::from_array(p).unwrap().pid() == pid)
            .collect();
        assert_eq!(got, want, "PID {pid:#06x} passes untouched");
    }

    check_sdt(&out, &clear);
    // An independent reader: ffprobe finds the three programs and reads
    // their names from our SDT (which it drops if its CRC is wrong).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.ts");
    std::fs::write(&path, &out).unwrap();
    let Some(programs) = ffprobe_programs(&path) else {
        return;
    };
    let want: Vec<(u16, Option<String>)> = MPTS_PROGRAMS
        .iter()
        .map(|(n, name, ..)| (*n, Some((*name).to_owned())))
        .collect();
    assert_eq!(programs, want);
}
