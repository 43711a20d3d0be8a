//! DVB SimulCrypt end to end: a third-party scrambler written here (an
//! SCS with its own TS 103 197 framing and a small scrambling MUX) draws
//! its own random control words, gets the ECMs for them from the real
//! `headend run`'s ECMG, scrambles an ffmpeg clip with DVB-CISSA, puts
//! the ECMs on the ECM PID (CA_descriptor in the PMT) and the headend's
//! EMMs on the EMM PID (CA_descriptor in the CAT; they stand in for an
//! EMMG's), and sends it over UDP to the real `receiver`, whose virtual
//! card (`smartcard emulate`) sits behind the real pcscd. The clip comes
//! out clear, byte for byte, and ffprobe decodes all of it.
//!
//! ```text
//!  ffmpeg clip ─▶ SCS + MUX (this test) ──udp──▶ receiver ─▶ clear TS
//!                  │ CW_provision ▲ ECM_response    │ PC/SC
//!                  ▼              │                 pcscd ─ vpcd ─ smartcard emulate
//!                 headend run: ECMG (TCP), EMMs (admin API)
//! ```

use crate::e2e_stream::{
    clip_part, pid_of, prerequisites, provision, wait_for_video, warm_then, CARD, ES,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::vpcd;
use testkit::{ffmpeg, free_udp_addr, workspace_bin, Headend, Process};
use ts::packet::{Packet, Packets, PACKET_LEN};
use ts::psi::{Cat, Descriptor, Pmt, Repeater};
use ts::{Parity, Scrambler};

const VIDEO: u16 = 0x100;
const PMT_PID: u16 = 0x1000;
const ECM_PID: u16 = 0x1E0;
const EMM_PID: u16 = 0x1E1;
/// The SCS's crypto period.
const CP_MS: u64 = 1000;

// The SCS's TS 103 197 framing: testkit's own, from the standard.
use testkit::ts103197::ecmg::*;
use testkit::ts103197::{self as wire, message};

/// A connection to the ECMG, one channel and one stream.
struct Ecmg {
    tcp: TcpStream,
    product: u32,
    service: u16,
}

impl Ecmg {
    fn send(&mut self, ty: u16, params: &[(u16, &[u8])]) {
        self.tcp.write_all(&message(ty, params)).unwrap();
    }

    fn recv(&mut self, want: u16) -> Vec<(u16, Vec<u8>)> {
        let m = wire::read(&mut self.tcp).unwrap();
        assert_eq!(m.ty, want, "ECMG answered 0x{:04x}: {:?}", m.ty, m.params);
        m.params
    }

    fn open(addr: SocketAddr, product: u32, service: u16) -> Ecmg {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut e = Ecmg {
            tcp,
            product,
            service,
        };
        e.send(
            CHANNEL_SETUP,
            &[
                (P_ECM_CHANNEL_ID, &[0, 1]),
                (P_SUPER_CAS_ID, &0xF10D_0000u32.to_be_bytes()),
            ],
        );
        e.recv(CHANNEL_STATUS);
        e.send(
            STREAM_SETUP,
            &[
                (P_ECM_CHANNEL_ID, &[0, 1]),
                (P_ECM_STREAM_ID, &[0, 1]),
                (P_ECM_ID, &[0, 1]),
                (P_NOMINAL_CP_DURATION, &((CP_MS / 100) as u16).to_be_bytes()),
            ],
        );
        e.recv(STREAM_STATUS);
        e
    }

    /// The ECM section for crypto period `cp` with these control words.
    fn ecm(&mut self, cp: u16, this: &[u8; 16], next: &[u8; 16]) -> Vec<u8> {
        let mut c0 = cp.to_be_bytes().to_vec();
        c0.extend_from_slice(this);
        let mut c1 = cp.wrapping_add(1).to_be_bytes().to_vec();
        c1.extend_from_slice(next);
        let mut ac = self.product.to_be_bytes().to_vec();
        ac.extend_from_slice(&self.service.to_be_bytes());
        self.send(
            CW_PROVISION,
            &[
                (P_ECM_CHANNEL_ID, &[0, 1]),
                (P_ECM_STREAM_ID, &[0, 1]),
                (P_CP_NUMBER, &cp.to_be_bytes()),
                (P_CP_CW_COMBINATION, &c0),
                (P_CP_CW_COMBINATION, &c1),
                (P_ACCESS_CRITERIA, &ac),
            ],
        );
        let p = self.recv(ECM_RESPONSE);
        let get = |t| p.iter().find(|(x, _)| *x == t).map(|(_, v)| v.clone());
        assert_eq!(get(P_CP_NUMBER), Some(cp.to_be_bytes().to_vec()));
        get(P_ECM_DATAGRAM).expect("ECM_datagram")
    }
}

// --------------------------------------------------- the scrambling MUX

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The EMM sections the headend makes, from its admin API, as an EMMG
/// would bring them.
fn emm_feed(api: String, token: String, stop: Arc<AtomicBool>) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let queue: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let q = queue.clone();
    std::thread::spawn(move || {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(5))
            .build();
        let mut since = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let got = agent
                .get(&format!("{api}/api/v1/debug/sections?since={since}"))
                .set("Authorization", &format!("Bearer {token}"))
                .call()
                .ok()
                .and_then(|r| r.into_json::<serde_json::Value>().ok());
            if let Some(v) = got {
                for s in v["emms"]["sections"].as_array().into_iter().flatten() {
                    q.lock().unwrap().push(unhex(s.as_str().unwrap()));
                }
                since = v["emms"]["next"].as_u64().unwrap_or(since);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    queue
}

/// The first section on `pid` in a TS (one that fits one packet).
fn first_section(ts: &[u8], pid: u16) -> Vec<u8> {
    for p in Packets::new(ts) {
        let v = Packet::from_array(p).unwrap();
        if v.pid() == pid && v.pusi() {
            let pl = v.payload();
            let at = 1 + usize::from(pl[0]);
            let len = 3 + usize::from(u16::from_be_bytes([pl[at + 1], pl[at + 2]]) & 0x0FFF);
            return pl[at..at + len].to_vec();
        }
    }
    panic!("no section on PID {pid:#x}");
}

/// The SCS and its MUX: paces the segments by the video PCR, scrambles
/// the ES with its own control words, a new pair every crypto period,
/// inserts the ECMs (every 100 ms), the PMT with the CA_descriptor, the
/// CAT and the EMMs, and sends 7 packets a datagram to `to`. Returns the
/// clear packets it took in and how many crypto periods it ran.
fn scs_mux(
    mut ecmg: Ecmg,
    to: SocketAddr,
    emms: Arc<Mutex<Vec<Vec<u8>>>>,
    mut next: impl FnMut() -> Option<Arc<Vec<u8>>>,
) -> (Vec<u8>, u64) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cws: Vec<[u8; 16]> = Vec::new();
    let cw = |k: usize, cws: &mut Vec<[u8; 16]>| {
        while cws.len() <= k {
            let mut b = [0u8; 16];
            proto::secret::fill_random(&mut b);
            cws.push(b);
        }
        cws[k]
    };
    let mut scrambler = Scrambler::new();
    let mut pmt = Repeater::new(PMT_PID).unwrap();
    let mut cat = Repeater::new(1).unwrap();
    let cat_section = Cat {
        version: 0,
        current_next: true,
        descriptors: vec![Descriptor::iodoform_ca(EMM_PID)],
    }
    .to_section()
    .unwrap();
    cat.set_sections(&[&cat_section]).unwrap();
    let mut ecm = Repeater::new(ECM_PID).unwrap();
    let mut emm_cc = 0u8;
    let start = Instant::now();
    let mut cp_k: Option<u64> = None;
    let mut last_tables = Instant::now() - Duration::from_secs(1);
    let mut fed = Vec::new();
    let mut out: Vec<[u8; PACKET_LEN]> = Vec::new();
    let mut seg_start = start;
    // Each PID's continuity counter, carried on across the segments (a
    // loop of the clip), as a MUX keeps it; the first PCR of a segment is
    // flagged as a discontinuity.
    let mut counters: BTreeMap<u16, ts::psi::Continuity> = BTreeMap::new();
    while let Some(seg) = next() {
        let mut pcr_flagged = false;
        if pmt.is_empty() {
            let mut table = Pmt::from_section(&first_section(&seg, PMT_PID)).unwrap();
            table.descriptors.push(Descriptor::iodoform_ca(ECM_PID));
            pmt.set_sections(&[&table.to_section().unwrap()]).unwrap();
        }
        let mut first_pcr = None;
        let mut last = Duration::ZERO;
        for p in Packets::new(&seg) {
            let v = Packet::from_array(p).unwrap();
            if let Some(pcr) = v.pcr().filter(|_| v.pid() == VIDEO) {
                let pcr = pcr.ticks_27mhz();
                let first = *first_pcr.get_or_insert(pcr);
                last = Duration::from_nanos(pcr.saturating_sub(first) * 1000 / 27);
                let at = seg_start + last;
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
            }
            // A new crypto period: its ECM first, then its key.
            let k = start.elapsed().as_millis() as u64 / CP_MS;
            if cp_k != Some(k) {
                cp_k = Some(k);
                let cp = k as u16;
                let (this, next) = (cw(k as usize, &mut cws), cw(k as usize + 1, &mut cws));
                let section = ecmg.ecm(cp, &this, &next);
                assert_eq!(section[0], 0x80 + (cp % 2) as u8, "table_id by CP parity");
                ecm.set_sections(&[&section]).unwrap();
                ecm.emit(&mut out);
                let (even, odd) = if cp % 2 == 0 {
                    (this, next)
                } else {
                    (next, this)
                };
                scrambler.set_even(&proto::secret::ControlWord::from_bytes(even));
                scrambler.set_odd(&proto::secret::ControlWord::from_bytes(odd));
            }
            if last_tables.elapsed() >= Duration::from_millis(100) {
                last_tables = Instant::now();
                ecm.emit(&mut out);
                cat.emit(&mut out);
                let new: Vec<Vec<u8>> = std::mem::take(&mut *emms.lock().unwrap());
                let refs: Vec<&[u8]> = new.iter().map(Vec::as_slice).collect();
                if !refs.is_empty() {
                    ts::psi::packetize(&refs, EMM_PID, &mut emm_cc, &mut out).unwrap();
                }
            }
            fed.extend_from_slice(p);
            let pid = v.pid();
            let mut p = *p;
            if v.has_payload() {
                counters.entry(pid).or_default().stamp(&mut p);
            } else if let Some(last) = counters.get(&pid).and_then(|c| c.last()) {
                p[3] = (p[3] & 0xF0) | last;
            }
            if !pcr_flagged && v.pcr().is_some() {
                pcr_flagged = true;
                p[5] |= 0x80;
            }
            let p = &p;
            if pid == PMT_PID {
                if v.pusi() {
                    pmt.emit(&mut out);
                }
            } else if ES.contains(&pid) {
                let mut q = *p;
                let parity = if cp_k.unwrap_or(0) % 2 == 0 {
                    Parity::Even
                } else {
                    Parity::Odd
                };
                scrambler.scramble(&mut q, parity).unwrap();
                out.push(q);
            } else {
                out.push(*p);
            }
            while out.len() >= 7 {
                let d: Vec<u8> = out.drain(..7).flatten().collect();
                let _ = sock.send_to(&d, to);
            }
        }
        seg_start += last + Duration::from_millis(40);
    }
    let d: Vec<u8> = out.drain(..).flatten().collect();
    let _ = sock.send_to(&d, to);
    (fed, cp_k.unwrap_or(0) + 1)
}

/// The ES packets of a TS, each PID in order, as the clip had them
/// whatever the MUX did to their headers: the continuity counter and the
/// discontinuity indicator are cleared, every other byte must match.
fn es_packets(ts: &[u8]) -> BTreeMap<u16, Vec<[u8; PACKET_LEN]>> {
    let mut m: BTreeMap<u16, Vec<[u8; PACKET_LEN]>> = ES.iter().map(|&p| (p, vec![])).collect();
    for p in Packets::new(ts) {
        if let Some(v) = m.get_mut(&pid_of(p)) {
            let mut q = *p;
            q[3] &= 0xF0;
            if q[3] & 0x20 != 0 && q[4] > 0 {
                q[5] &= 0x7F;
            }
            v.push(q);
        }
    }
    m
}

fn receiver(reader: &str, dir: &Path, input: SocketAddr, output: &Path, log: &Path) -> Process {
    let mut p = Process::spawn(
        Command::new(workspace_bin("receiver"))
            .args(["-i", &format!("udp://{input}"), "-o"])
            .arg(output)
            .args(["--reader", reader, "--entitlement-wait", "30"])
            .arg("--identity")
            .arg(dir.join("receiver.key"))
            .env("RUST_LOG", "receiver=info"),
        log,
    );
    testkit::process::wait_for("the receiver's card", Duration::from_secs(15), || {
        assert!(
            p.is_running(),
            "receiver exited:\n{}",
            testkit::process::tail(log, 20)
        );
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("card session established") || l.contains("card connected"))
    });
    p
}

#[test]
fn a_third_party_scrambler_with_our_ecms_plays_clear_on_a_receiver_with_its_card() {
    let test = "a_third_party_scrambler_with_our_ecms_plays_clear_on_a_receiver_with_its_card";
    if !prerequisites(test) {
        return;
    }
    let slot = vpcd::slot();
    let dir = tempfile::tempdir().unwrap();
    let mut headend = Headend::init(workspace_bin("headend"), 1000, Some(1000));
    let ecmg_addr: SocketAddr = format!("127.0.0.1:{}", testkit::free_tcp_port())
        .parse()
        .unwrap();
    let mut toml = std::fs::read_to_string(headend.config()).unwrap();
    toml.push_str(&format!(
        "\n[[channels]]\nname = \"partner\"\nservice_id = 1\nproduct = \"basic\"\nscrambler = \"simulcrypt\"\n\n[simulcrypt.ecmg]\nlisten = \"{ecmg_addr}\"\n"
    ));
    std::fs::write(headend.config(), toml).unwrap();
    headend.start();
    let product = headend
        .get("/api/v1/products")
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "basic")
        .and_then(|p| p["id"].as_u64())
        .expect("product basic") as u32;
    let card = provision(&headend, &slot, CARD, &dir.path().join("card.img"), true);

    let clip = ffmpeg::clip(
        &dir.path().join("clear.ts"),
        4,
        "testsrc=size=320x240:rate=25",
        1000,
    );
    let warm = ffmpeg::clip(
        &dir.path().join("warm.ts"),
        1,
        "testsrc2=size=160x120:rate=25",
        440,
    );
    let rx_in = free_udp_addr();
    let out_path = dir.path().join("out.ts");
    let log = dir.path().join("receiver.log");
    let mut rx = receiver(slot.reader, dir.path(), rx_in, &out_path, &log);
    let logs = |rx_log: &Path| {
        format!(
            "--- headend ---\n{}\n--- card ---\n{}\n--- receiver ---\n{}",
            headend.log_tail(25),
            card.log_tail(10),
            testkit::process::tail(rx_log, 25)
        )
    };

    let stop = Arc::new(AtomicBool::new(false));
    let emms = emm_feed(headend.api_url(), headend.token.clone(), stop.clone());
    let ecmg = Ecmg::open(ecmg_addr, product, 1);
    // Warm-up loops until the receiver writes clear video, then the clip.
    let go = Arc::new(AtomicBool::new(false));
    let (warm, clip_seg) = (Arc::new(warm), Arc::new(clip.clone()));
    let segments = warm_then(go.clone(), warm, clip_seg);
    let mux = std::thread::spawn(move || scs_mux(ecmg, rx_in, emms, segments));
    wait_for_video(&out_path, Duration::from_secs(20), || logs(&log));
    go.store(true, Ordering::Relaxed);
    let (fed, periods) = mux.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1000));
    let st = rx.terminate(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "receiver: {st:?}\n{}",
        logs(&log)
    );
    let out = std::fs::read(&out_path).unwrap();

    // The receiver's ES packets are the fed ones, byte for byte, from its
    // first clear packet to the end, which covers the whole clip.
    let (fed_es, clip_es, out_es) = (es_packets(&fed), es_packets(&clip), es_packets(&out));
    for pid in ES {
        let (f, o, c) = (&fed_es[&pid], &out_es[&pid], &clip_es[&pid]);
        assert!(!c.is_empty());
        assert!(
            o.len() >= c.len() && o.len() <= f.len(),
            "PID {pid:#x}: the receiver wrote {} packets, the clip has {}:\n{}",
            o.len(),
            c.len(),
            logs(&log)
        );
        assert_eq!(
            o.iter()
                .zip(&f[f.len() - o.len()..])
                .position(|(a, b)| a != b),
            None,
            "PID {pid:#x}: an output packet differs from the input: {:02x?} / {:02x?}",
            &o[0][..8],
            &f[f.len() - o.len()][..8]
        );
    }
    // ffprobe decodes the clip's part of the output completely.
    let clip_out = clip_part(&out, &clip_es, &out_es);
    std::fs::write(dir.path().join("clip-out.ts"), &clip_out).unwrap();
    let (want, _) = ffmpeg::ffprobe_frames(&dir.path().join("clear.ts")).expect("ffprobe");
    let (frames, err) = ffmpeg::ffprobe_frames(&dir.path().join("clip-out.ts")).expect("ffprobe");
    assert!(want >= 90, "the clip has {want} frames");
    assert_eq!(
        (frames, err.trim()),
        (want, ""),
        "ffprobe of the receiver's clip"
    );
    assert!(periods >= 4, "{periods} crypto periods");

    // The ECMG counted the SCS's requests, with no error.
    let status = headend.get("/api/v1/status");
    assert_eq!(
        status["ecmg"]["ecm_responses"].as_u64(),
        Some(periods),
        "{status}"
    );
    assert_eq!(status["ecmg"]["errors"], serde_json::json!({}), "{status}");
    eprintln!("{periods} crypto periods of the SCS, {want} frames out clear");
}
