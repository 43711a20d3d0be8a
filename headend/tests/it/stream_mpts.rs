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

/// A packet's payload bytes.
pub fn payload_of(p: &[u8; PACKET_LEN]) -> Vec<u8> {
    Packet::from_array(p).unwrap().payload().to_vec()
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

/// What a receiver with `card`, tuned to `service`, gets from the air
/// `air`, in stream order: (packets descrambled to what ffmpeg made, those
/// not, ECMs the card answered, ECMs it refused).
fn receive(
    air: &[u8],
    service: u16,
    card: &mut crate::common::Card,
    card_id: u32,
    clear: &std::collections::HashSet<Vec<u8>>,
) -> (usize, usize, usize, usize) {
    use ts::psi::{emm_section_address, Cat};
    let mut asm: HashMap<u16, SectionAssembler> = HashMap::new();
    let (mut pmt_pid, mut ecm_pid, mut emm_pid) = (None, None, None);
    let mut es_pids: Vec<u16> = Vec::new();
    let mut d = Descrambler::new();
    let (mut have_cw, mut last_ecm) = (false, None::<Vec<u8>>);
    let (mut good, mut bad, mut answered, mut refused) = (0, 0, 0, 0);
    for raw in Packets::new(air) {
        let v = Packet::from_array(raw).unwrap();
        let pid = v.pid();
        if es_pids.contains(&pid) {
            if !v.has_payload() || !have_cw {
                continue;
            }
            assert_ne!(v.scrambling().0, 0, "clear packet of service {service}");
            let mut b = *raw;
            match d.descramble(&mut b) {
                Ok(Outcome::Done(_)) if clear.contains(&payload_of(&b)) => good += 1,
                _ => bad += 1,
            }
            continue;
        }
        if !(pid <= 1 || Some(pid) == pmt_pid || Some(pid) == ecm_pid || Some(pid) == emm_pid) {
            continue;
        }
        for s in asm.entry(pid).or_default().push(&v).into_iter().flatten() {
            match s[0] {
                0x00 => pmt_pid = Pat::from_section(&s).unwrap().pmt_pid(service),
                0x01 => emm_pid = Cat::from_section(&s).unwrap().emm_pid(CA_SYSTEM_ID),
                0x02 => {
                    let pmt = Pmt::from_section(&s).unwrap();
                    if pmt.program_number == service {
                        ecm_pid = pmt.ca_descriptors(CA_SYSTEM_ID).first().map(|c| c.ca_pid);
                        es_pids = pmt.streams.iter().map(|s| s.pid).collect();
                    }
                }
                0x80 | 0x81 if Some(pid) == ecm_pid => {
                    if last_ecm.as_ref() == Some(&s) {
                        continue;
                    }
                    match card.process_ecm(&s[3..]) {
                        Ok(cws) => {
                            d.set_even(&cws.cws.even);
                            d.set_odd(&cws.cws.odd);
                            have_cw = true;
                            answered += 1;
                            last_ecm = Some(s);
                        }
                        Err(_) => refused += 1,
                    }
                }
                0x82..=0x8F => {
                    let addr = emm_section_address(&s);
                    if addr == Some(card_id) || addr == Some(proto::emm::GLOBAL_ADDRESS) {
                        let _ = card.process_emm(&s[3..]);
                    }
                }
                _ => {}
            }
        }
    }
    (good, bad, answered, refused)
}

#[test]
fn headend_run_scrambles_two_channels_of_one_mpts_and_passes_the_third_clear() {
    use crate::common::*;
    let Some(clear) = mpts(3) else { return };
    let mut h = Headend::init(BIN, 300, Some(500));
    std::fs::write(h.home().join("mpts.ts"), &clear).unwrap();
    let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let output = format!("udp://{}", rx.local_addr().unwrap());
    // Two channels on one input and one output: one multiplex.
    let mut cfg = std::fs::read_to_string(h.config()).unwrap();
    for ((service, _, ecm_pid), product) in SCRAMBLED.iter().zip(["basic", "premium"]) {
        cfg.push_str(&format!(
            "\n[[channels]]\nname = \"ch{service}\"\nservice_id = {service}\nproduct = \"{product}\"\n\
             ecm_pid = {ecm_pid}\nemm_pid = {EMM_PID}\ninput = \"mpts.ts?loop\"\n\
             output = \"{output}\"\n{}",
            if *service == 1 { format!("clear_services = [{CLEAR}]\n") } else { String::new() }
        ));
    }
    std::fs::write(h.config(), cfg).unwrap();
    h.start();
    let op = operator(&h);
    let mut cards = Vec::new();
    for (id, product) in [(51u32, "basic"), (52, "premium")] {
        let (card, public) = new_card(&op, id);
        register(&h, id, &public);
        h.post(
            "/api/v1/subscriptions",
            plan_subscription(id, product, "2099-12-31"),
        );
        cards.push((id, card));
    }

    let mut air = Vec::new();
    let mut buf = vec![0u8; 65536];
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(7) {
        if let Ok(n) = rx.recv(&mut buf) {
            air.extend_from_slice(&buf[..n]);
        }
    }
    // Each channel reports its own service of the one stream on the air.
    let status = h.get("/api/v1/status");
    for (service, ..) in SCRAMBLED {
        let c = status["channels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["service_id"] == service)
            .unwrap_or_else(|| panic!("service {service}: {status:#}"));
        assert_eq!(c["state"], "on_air", "{c:#}");
        let services = c["health"]["services"].as_array().unwrap();
        assert_eq!(services.len(), 1, "{c:#}");
        assert_eq!(services[0]["service_id"], service);
    }
    assert!(h.terminate().success(), "log:\n{}", h.log());
    assert!(
        air.len() > 100_000,
        "{} bytes on the air; log:\n{}",
        air.len(),
        h.log()
    );

    for (i, (service, ..)) in SCRAMBLED.into_iter().enumerate() {
        let (_, _, _, video, audio) = MPTS_PROGRAMS[usize::from(service) - 1];
        let payloads: std::collections::HashSet<Vec<u8>> = [video, audio]
            .into_iter()
            .flat_map(|pid| payload_packets(&clear, pid))
            .map(|p| payload_of(&p))
            .collect();
        let (id, card) = &mut cards[i];
        let (good, bad, answered, refused) = receive(&air, service, card, *id, &payloads);
        assert!(
            good >= 200 && answered >= 5,
            "service {service}: {good} good, {bad} bad, {answered} ECMs answered, {refused} refused; log:\n{}",
            h.log_tail(40)
        );
        assert_eq!(bad, 0, "service {service}");
        // The other card is not entitled: the card refuses every ECM.
        let (id, card) = &mut cards[1 - i];
        let (good, _, answered, refused) = receive(&air, service, card, *id, &payloads);
        assert_eq!((good, answered), (0, 0), "service {service} with card {id}");
        assert!(refused >= 5);
    }

    // The clear service: its packets' payloads as ffmpeg made them (the
    // continuity counter and the PCR's discontinuity_indicator aside, set
    // at each loop).
    let (_, _, _, video, audio) = MPTS_PROGRAMS[usize::from(CLEAR) - 1];
    for pid in [video, audio] {
        let want: std::collections::HashSet<Vec<u8>> = payload_packets(&clear, pid)
            .iter()
            .map(payload_of)
            .collect();
        let got = payload_packets(&air, pid);
        assert!(
            got.len() >= want.len(),
            "PID {pid:#06x}: {} packets",
            got.len()
        );
        for p in &got {
            assert_eq!(p[3] & 0xC0, 0, "sent clear");
            assert!(
                want.contains(&payload_of(p)),
                "PID {pid:#06x} passes untouched"
            );
        }
    }

    check_sdt(&air, &clear);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("air.ts");
    std::fs::write(&path, &air).unwrap();
    if let Some(programs) = ffprobe_programs(&path) {
        let want: Vec<(u16, Option<String>)> = MPTS_PROGRAMS
            .iter()
            .map(|(n, name, ..)| (*n, Some((*name).to_owned())))
            .collect();
        assert_eq!(programs, want);
    }
}
