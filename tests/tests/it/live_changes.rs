//! A stream that changes under a running receiver, through the real
//! binaries: the headend's scrambled broadcast goes through a relay that
//! rewrites it, phase by phase, as a multiplexer upstream would, on its
//! way to the `receiver` (UDP on 127.0.0.1, the card behind pcscd):
//!
//! ```text
//!  feeder ──udp──▶ headend run ──udp──▶ relay (rewrites) ──udp──▶ receiver ──udp──▶ tap
//! ```
//!
//! normal → a new PMT version with a new ECM PID (a new CA_descriptor) →
//! the audio removed → the audio back on a new PID → a new CAT version with
//! a new EMM PID, the PAT and the CAT now in two sections each → 2 s of
//! silence → the service leaves the PAT (its PMT, ECMs and packets stop)
//! → it comes back. The receiver runs throughout: its clear output resumes
//! after each step, starts each time at a random access point, ffprobe
//! decodes all of it, and its statistics count each event.

use crate::e2e_stream::{prerequisites, Feeder, System, Tap, ECM_PID, EMM_PID};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use testkit::{ffmpeg, vpcd};
use ts::packet::{Packet, PacketMut, Packets, CAT_PID, PACKET_LEN, PAT_PID};
use ts::pes::{first_picture, Picture, VideoCodec};
use ts::psi::{
    packetize, CaDescriptor, Cat, Descriptor, Pat, PatEntry, Pmt, SectionAssembler, CA_SYSTEM_ID,
};

/// ffmpeg's PIDs.
const VIDEO: u16 = 0x100;
const AUDIO: u16 = 0x101;
const PMT_PID: u16 = 0x1000;
/// Where the relay moves things.
const NEW_ECM_PID: u16 = 0x1F4;
const NEW_EMM_PID: u16 = 0x1F5;
const NEW_AUDIO: u16 = 0x105;

/// The relay's phases, in the order the test plays them.
const NORMAL: u8 = 0;
const NEW_ECM: u8 = 1;
const NO_AUDIO: u8 = 2;
const NEW_AUDIO_PID: u8 = 3;
const NEW_CAT: u8 = 4;
const SILENT: u8 = 5;
const GONE: u8 = 6;
const BACK: u8 = 7;

/// What the relay does to a packet in a phase, and its own PSI.
struct Rewrite {
    asm: HashMap<u16, SectionAssembler>,
    cc: HashMap<u16, u8>,
}

impl Rewrite {
    fn new() -> Self {
        Rewrite {
            asm: HashMap::new(),
            cc: HashMap::new(),
        }
    }

    /// The packets that go out for `p` in `phase`.
    fn packet(&mut self, p: &[u8; PACKET_LEN], phase: u8, out: &mut Vec<[u8; PACKET_LEN]>) {
        let pid = u16::from_be_bytes([p[1] & 0x1F, p[2]]);
        let gone = phase == GONE;
        let moved = |to: u16| {
            let mut q = *p;
            PacketMut::from_array(&mut q).unwrap().set_pid(to).unwrap();
            q
        };
        match pid {
            _ if phase == SILENT => {}
            PAT_PID | CAT_PID | PMT_PID => {
                if gone && pid == PMT_PID {
                    return;
                }
                let sections: Vec<Vec<u8>> = self
                    .asm
                    .entry(pid)
                    .or_default()
                    .push(&Packet::from_array(p).unwrap())
                    .into_iter()
                    .flatten()
                    .collect();
                for s in sections {
                    for t in table(pid, &s, phase) {
                        packetize(&[&t], pid, self.cc.entry(pid).or_default(), out).unwrap();
                    }
                }
            }
            ECM_PID if gone => {}
            ECM_PID if phase >= NEW_ECM => out.push(moved(NEW_ECM_PID)),
            EMM_PID if phase >= NEW_CAT => out.push(moved(NEW_EMM_PID)),
            VIDEO if gone => {}
            AUDIO if gone || phase == NO_AUDIO => {}
            AUDIO if phase >= NEW_AUDIO_PID => out.push(moved(NEW_AUDIO)),
            _ => out.push(*p),
        }
    }
}

/// The sections that replace a section of the headend's PAT, CAT or PMT
/// in `phase`.
fn table(pid: u16, section: &[u8], phase: u8) -> Vec<Vec<u8>> {
    match pid {
        PAT_PID => {
            let mut pat = Pat::from_section(section).unwrap();
            if phase < NEW_CAT {
                return vec![section.to_vec()];
            }
            // Another service, then ours, one per section; ours leaves
            // while gone. A new version at each step.
            let ours = pat.programs.clone();
            pat.programs = vec![PatEntry {
                program_number: 2,
                pid: 0x1100,
            }];
            let step = match phase {
                GONE => 2,
                BACK => 3,
                _ => 1,
            };
            if phase != GONE {
                pat.programs.extend(ours);
            }
            pat.version = (pat.version + step) & 0x1F;
            pat.to_sections(1).unwrap()
        }
        CAT_PID => {
            let mut cat = Cat::from_section(section).unwrap();
            if phase < NEW_CAT {
                return vec![section.to_vec()];
            }
            cat.version = (cat.version + 1) & 0x1F;
            cat.descriptors = vec![
                Descriptor::Ca(CaDescriptor {
                    ca_system_id: 0x0B00,
                    ca_pid: 0x1E1,
                    private_data: Vec::new(),
                }),
                Descriptor::iodoform_ca(NEW_EMM_PID),
            ];
            cat.to_sections(1).unwrap()
        }
        _ => {
            let mut pmt = Pmt::from_section(section).unwrap();
            pmt.version = (pmt.version + phase.min(NEW_AUDIO_PID)) & 0x1F;
            if phase >= NEW_ECM {
                for d in pmt.descriptors.iter_mut().chain(
                    pmt.streams
                        .iter_mut()
                        .flat_map(|s| s.descriptors.iter_mut()),
                ) {
                    if let Descriptor::Ca(ca) = d {
                        if ca.ca_system_id == CA_SYSTEM_ID {
                            ca.ca_pid = NEW_ECM_PID;
                            ca.private_data = b"v2".to_vec();
                        }
                    }
                }
            }
            if phase == NO_AUDIO {
                pmt.streams.retain(|s| s.pid != AUDIO);
            }
            if phase >= NEW_AUDIO_PID {
                for s in &mut pmt.streams {
                    if s.pid == AUDIO {
                        s.pid = NEW_AUDIO;
                    }
                }
            }
            vec![pmt.to_section().unwrap()]
        }
    }
}

/// The relay: datagrams in from the headend, rewritten as its phase says,
/// out to the receiver.
struct Relay {
    addr: SocketAddr,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(to: SocketAddr) -> Relay {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let phase = Arc::new(AtomicU8::new(NORMAL));
        let stop = Arc::new(AtomicBool::new(false));
        let (ph, st) = (phase.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let out_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut rw = Rewrite::new();
            let mut buf = vec![0u8; 65536];
            let mut out = Vec::new();
            while !st.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let phase = ph.load(Ordering::Relaxed);
                out.clear();
                for p in Packets::new(&buf[..n]) {
                    rw.packet(p, phase, &mut out);
                }
                for d in out.chunks(7) {
                    let bytes: Vec<u8> = d.iter().flatten().copied().collect();
                    let _ = out_sock.send_to(&bytes, to);
                }
            }
        });
        Relay {
            addr,
            phase,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, phase: u8) -> Instant {
        self.phase.store(phase, Ordering::Relaxed);
        Instant::now()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A clear clip `secs` long with a key frame every second (ffmpeg's
/// default is every 10 s), so that a join waits a second at most.
fn clip(path: &Path, secs: u32) -> Vec<u8> {
    let o = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=160x120:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=1000"])
        .args(["-t", &secs.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25"])
        .args(["-c:a", "aac", "-f", "mpegts"])
        .arg(path)
        .output()
        .expect("ffmpeg (apt-get install ffmpeg)");
    assert!(
        o.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(path).unwrap()
}

/// The receiver's clear output (datagrams to `tap`): the packets of `pid`
/// with the time their datagram arrived.
fn output_of(tap: &Tap, pid: u16) -> Vec<(Instant, [u8; PACKET_LEN])> {
    tap.datagrams_from(0)
        .into_iter()
        .flat_map(|(t, d)| {
            Packets::new(&d)
                .filter(|p| u16::from_be_bytes([p[1] & 0x1F, p[2]]) == pid)
                .map(|p| (t, *p))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits until clear packets of `pid` arrive at `tap` after `since` (10 of
/// them, within `timeout`).
fn wait_output(
    tap: &Tap,
    pid: u16,
    since: Instant,
    timeout: Duration,
    what: &str,
    logs: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while output_of(tap, pid)
        .iter()
        .filter(|(t, _)| *t > since)
        .count()
        < 10
    {
        assert!(
            Instant::now() < deadline,
            "{what}: no clear output on PID {pid:#x} within {} s:\n{}",
            timeout.as_secs(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a clear video packet is a random access point: the start of a
/// PES packet with the random_access_indicator, or whose first picture is
/// an IDR.
fn is_rap(p: &[u8; PACKET_LEN]) -> bool {
    let v = Packet::from_array(p).unwrap();
    v.pusi()
        && (v.adaptation_field().is_some_and(|a| a.random_access())
            || first_picture(VideoCodec::H264, v.payload()) == Ok(Some(Picture::RandomAccess)))
}

/// The output cut where its video stopped for more than a second, each
/// stretch led by the last PAT and PMT before it and without its last
/// video PES packet (which the interruption may have cut short).
fn stretches(datagrams: &[(Instant, Vec<u8>)]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<Vec<[u8; PACKET_LEN]>> = vec![Vec::new()];
    let mut last_video: Option<Instant> = None;
    let mut psi: HashMap<u16, [u8; PACKET_LEN]> = HashMap::new();
    for (t, d) in datagrams {
        for p in Packets::new(d) {
            let pid = u16::from_be_bytes([p[1] & 0x1F, p[2]]);
            if pid == VIDEO {
                if last_video.is_some_and(|l| *t - l > Duration::from_secs(1)) {
                    cuts.push(
                        [PAT_PID, PMT_PID]
                            .iter()
                            .filter_map(|k| psi.get(k))
                            .copied()
                            .collect(),
                    );
                }
                last_video = Some(*t);
            }
            if pid == PAT_PID || pid == PMT_PID {
                psi.insert(pid, *p);
            }
            cuts.last_mut().unwrap().push(*p);
        }
    }
    cuts.into_iter()
        .map(|seg| {
            let is_video = |p: &[u8; PACKET_LEN]| u16::from_be_bytes([p[1] & 0x1F, p[2]]) == VIDEO;
            let last_start = seg
                .iter()
                .rposition(|p| is_video(p) && p[1] & 0x40 != 0)
                .unwrap_or(seg.len());
            seg.iter()
                .enumerate()
                .filter(|(i, p)| *i < last_start || !is_video(p))
                .flat_map(|(_, p)| p.iter().copied())
                .collect()
        })
        .collect()
}

#[test]
fn a_stream_that_changes_under_the_receiver_is_followed_live() {
    let test = "a_stream_that_changes_under_the_receiver_is_followed_live";
    if !prerequisites(test) {
        return;
    }
    let slot = vpcd::slot();
    let out = Tap::start(None);
    let rx_in = testkit::free_udp_addr();
    let relay = Relay::start(rx_in);
    let sys = System::set_up(&slot, relay.addr);
    let clip = Arc::new(clip(&sys.path("clear.ts"), 45));
    let log = sys.path("receiver.log");
    let rx = sys.receiver(rx_in, &format!("udp://{}", out.addr), &log);
    let logs = || sys.logs(&log);
    let mut once = Some(clip);
    let feeder = Feeder::start(sys.input, move || once.take());

    // Clear output once the card has its entitlement.
    let t0 = Instant::now();
    wait_output(&out, VIDEO, t0, Duration::from_secs(20), "start", &logs);
    wait_output(&out, AUDIO, t0, Duration::from_secs(5), "start", &logs);
    std::thread::sleep(Duration::from_secs(1));

    // Each step: the output goes on, or resumes, with the new layout.
    let step = Duration::from_millis(2500);
    let at = relay.set(NEW_ECM);
    wait_output(
        &out,
        VIDEO,
        at + Duration::from_millis(500),
        Duration::from_secs(8),
        "new ECM PID",
        &logs,
    );
    std::thread::sleep(step);
    let at = relay.set(NO_AUDIO);
    wait_output(
        &out,
        VIDEO,
        at + Duration::from_millis(500),
        Duration::from_secs(8),
        "audio removed",
        &logs,
    );
    std::thread::sleep(step);
    let no_audio_from = at + Duration::from_millis(300);
    let no_audio_to = relay.set(NEW_AUDIO_PID);
    wait_output(
        &out,
        NEW_AUDIO,
        no_audio_to,
        Duration::from_secs(8),
        "audio added",
        &logs,
    );
    std::thread::sleep(step);
    let at = relay.set(NEW_CAT);
    wait_output(
        &out,
        VIDEO,
        at + Duration::from_millis(500),
        Duration::from_secs(8),
        "new CAT",
        &logs,
    );
    std::thread::sleep(step);
    // Two seconds of silence.
    let silent = relay.set(SILENT);
    std::thread::sleep(Duration::from_secs(2));
    let at = relay.set(NEW_CAT);
    wait_output(
        &out,
        VIDEO,
        at,
        Duration::from_secs(8),
        "after the outage",
        &logs,
    );
    wait_output(
        &out,
        NEW_AUDIO,
        at,
        Duration::from_secs(8),
        "after the outage",
        &logs,
    );
    std::thread::sleep(step);
    // The service leaves the PAT and its packets stop, then it is back.
    let gone = relay.set(GONE);
    std::thread::sleep(Duration::from_millis(2500));
    let back = relay.set(BACK);
    wait_output(
        &out,
        VIDEO,
        back,
        Duration::from_secs(8),
        "service back",
        &logs,
    );
    std::thread::sleep(step);

    drop(feeder);
    let stats = sys.stop_receiver(rx, &log);
    drop(relay);
    let receiver_log = std::fs::read_to_string(&log).unwrap();

    // The statistics count each event, and the log says each once.
    let s = &stats["stats"];
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("no {k} in {stats}"));
    assert_eq!(stats["exit_code"], 0, "{stats}");
    assert_eq!(
        n("pmt_changes"),
        3,
        "new ECM PID, audio removed, audio added: {stats}"
    );
    assert_eq!(n("cat_changes"), 1, "{stats}");
    assert!(n("pat_changes") >= 3, "two sections, gone, back: {stats}");
    assert_eq!(n("input_outages"), 1, "{stats}");
    assert_eq!(
        (n("service_lost"), n("service_returned")),
        (1, 1),
        "{stats}"
    );
    assert!(n("rap_joins") >= 5, "{stats}");
    assert!(n("emm_sections") > 0, "{stats}");
    for line in [
        "ECM PID 0x01F0 -> 0x01F4",
        "component 0x0101 removed",
        "component 0x0105 added",
        "EMM PID 0x01F1 -> 0x01F5",
        "the input was silent for",
        "it left the PAT",
        "the service is back on the air",
    ] {
        assert_eq!(
            receiver_log.matches(line).count(),
            1,
            "{line:?} in the receiver's log:\n{receiver_log}"
        );
    }

    // No audio on its old PID while it was out of the PMT, nor after.
    let old_audio: Vec<Instant> = output_of(&out, AUDIO).into_iter().map(|(t, _)| t).collect();
    assert!(
        old_audio.iter().all(|t| *t < no_audio_from),
        "audio on PID 0x101 after it left the PMT"
    );
    assert!(output_of(&out, NEW_AUDIO)
        .iter()
        .all(|(t, _)| *t > no_audio_to));

    // The video starts at a random access point: at the start, after the
    // outage and when the service came back.
    let video = output_of(&out, VIDEO);
    assert!(
        is_rap(&video[0].1),
        "the first video packet is not a random access point"
    );
    for (what, from) in [("the outage", silent), ("the return", gone)] {
        // The first packet after the silence in the output.
        let first = video
            .windows(2)
            .find(|w| w[1].0 > from && w[1].0 - w[0].0 > Duration::from_secs(1))
            .unwrap_or_else(|| panic!("no gap in the video output after {what}"))[1];
        assert!(
            is_rap(&first.1),
            "the first video packet after {what} is not a random access point"
        );
    }
    // Nothing while the service was gone.
    assert!(
        !video
            .iter()
            .any(|(t, _)| *t > gone + Duration::from_millis(300) && *t < back),
        "video while the service was off the air"
    );

    // ffprobe decodes the output, each stretch between the interruptions
    // from its start. (The last picture before an interruption is cut
    // short by the input: it is left out.)
    let segments = stretches(&out.datagrams_from(0));
    assert_eq!(
        segments.len(),
        3,
        "start, after the outage, after the return"
    );
    let mut frames = 0;
    for (i, seg) in segments.iter().enumerate() {
        let path = sys.path(&format!("out-{i}.ts"));
        std::fs::write(&path, seg).unwrap();
        let (n, err) = ffmpeg::ffprobe_frames(&path).expect("ffprobe");
        assert!(n >= 25, "ffprobe decoded {n} frames of stretch {i}");
        assert_eq!(
            err.trim(),
            "",
            "ffprobe of stretch {i} of the output ({n} frames)"
        );
        frames += n;
    }
    assert!(
        frames >= 15 * 25,
        "ffprobe decoded {frames} frames of the output"
    );
}
