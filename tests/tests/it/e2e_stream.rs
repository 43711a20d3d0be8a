//! The whole system, as an operator and a subscriber run it: the real
//! `headend` daemon, a virtual card (`smartcard emulate`) behind the
//! system's pcscd, provisioned and registered with `smartcard provision
//! --register`, a product and a subscription through the `headend` CLI,
//! and the real `receiver` descrambling the broadcast from UDP.
//!
//! ```text
//!  feeder ──udp──▶ headend run ──udp──▶ tee ──udp──▶ receiver ──▶ clear TS
//!  (paced clear TS)   (scrambles)      (captures the     │ PC/SC
//!                                       scrambled air)  pcscd ─ vpcd ─ smartcard emulate
//! ```
//!
//! The binaries are the workspace's own, found next to this test's
//! executable (`target/debug/`); `cargo test --workspace` builds them.
//!
//! Each test holds a vpcd slot with the smartcard tests' file lock
//! (`/tmp/iodoform-vpcd-<port>.lock`). Without pcscd (with the vpcd
//! readers) or ffmpeg the tests are skipped with a note, except under
//! `CI=true`, where they fail: `scripts/ensure-pcscd.sh` starts pcscd.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use testkit::emulator::CardModel;
use testkit::process::tail;
use testkit::vpcd::{self, Slot};
use testkit::{
    env, ffmpeg, free_tcp_port, free_udp_addr, free_udp_port, workspace_bin, Emulator, Headend,
    Process,
};
use ts::packet::{Packet, Packets, PACKET_LEN};

/// ffmpeg's elementary streams (program 1, PMT on 0x1000).
const VIDEO: u16 = 0x100;
const AUDIO: u16 = 0x101;
pub(crate) const ES: [u16; 2] = [VIDEO, AUDIO];
const PMT_PID: u16 = 0x1000;
/// Channel 1's ECM and EMM PIDs.
pub(crate) const ECM_PID: u16 = 0x1F0;
pub(crate) const EMM_PID: u16 = 0x1F1;
pub(crate) const CARD: &str = "1000";
/// Short crypto periods, so that "within one crypto period" is quick.
pub(crate) const PERIOD_MS: u64 = 1000;
const EMM_CYCLE_MS: u64 = 1000;

// ------------------------------------------------------------ environment

/// Whether pcscd with its vpcd readers, ffmpeg and ffprobe are here.
/// Under `CI=true` a missing one fails the test; otherwise it is skipped.
pub(crate) fn prerequisites(test: &str) -> bool {
    let mut missing: Vec<String> = vpcd::missing().into_iter().collect();
    missing.extend(ffmpeg::missing());
    env::available(test, &missing)
}

// --------------------------------------------------------------- streams

pub(crate) fn pid_of(p: &[u8; PACKET_LEN]) -> u16 {
    u16::from_be_bytes([p[1] & 0x1F, p[2]])
}

/// A packet as the clip had it, whatever the headend did to its header on
/// the way: the continuity counter (re-linked across a restart or a gap
/// the headend withheld) and the adaptation field's discontinuity
/// indicator (set on the first PCR after one) are cleared. The payload,
/// the PID and every other bit still have to match.
pub(crate) fn as_in_clip(p: &[u8; PACKET_LEN]) -> [u8; PACKET_LEN] {
    let mut q = *p;
    q[3] &= 0xF0;
    if q[3] & 0x20 != 0 && q[4] > 0 {
        q[5] &= 0x7F;
    }
    q
}

/// The packets of the ES PIDs, each PID in order.
fn es_packets(ts: &[u8]) -> BTreeMap<u16, Vec<[u8; PACKET_LEN]>> {
    let mut m: BTreeMap<u16, Vec<[u8; PACKET_LEN]>> = ES.iter().map(|&p| (p, vec![])).collect();
    for p in Packets::new(ts) {
        if let Some(v) = m.get_mut(&pid_of(p)) {
            v.push(*p);
        }
    }
    m
}

/// A feeder's segments: `warm` again and again until `go` is set, then
/// `clip` once, then the end.
pub(crate) fn warm_then(
    go: Arc<AtomicBool>,
    warm: Arc<Vec<u8>>,
    clip: Arc<Vec<u8>>,
) -> impl FnMut() -> Option<Arc<Vec<u8>>> + Send + 'static {
    let mut sent_clip = false;
    move || {
        if sent_clip {
            None
        } else if go.load(Ordering::Relaxed) {
            sent_clip = true;
            Some(clip.clone())
        } else {
            Some(warm.clone())
        }
    }
}

/// Waits until the receiver's output file holds a video packet; fails
/// after `within`, with `logs()`.
pub(crate) fn wait_for_video(out_path: &Path, within: Duration, logs: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    loop {
        let out = std::fs::read(out_path).unwrap_or_default();
        if Packets::new(&out).any(|p| pid_of(p) == VIDEO) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no clear video from the receiver within {} s:\n{}",
            within.as_secs(),
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The clip's part of a receiver's output: from the clip's first ES
/// packet (the last `clip_es[pid].len()` packets of each ES PID in `out`,
/// whose ES packets are `out_es`) to the end, led by the last PAT and PMT
/// before it, so that ffprobe can decode it on its own.
pub(crate) fn clip_part(
    out: &[u8],
    clip_es: &BTreeMap<u16, Vec<[u8; PACKET_LEN]>>,
    out_es: &BTreeMap<u16, Vec<[u8; PACKET_LEN]>>,
) -> Vec<u8> {
    let packets: Vec<&[u8; PACKET_LEN]> = Packets::new(out).collect();
    let mut seen = BTreeMap::<u16, usize>::new();
    let mut boundary = packets.len();
    for (i, p) in packets.iter().enumerate() {
        let pid = pid_of(p);
        if let Some(c) = clip_es.get(&pid) {
            let n = seen.entry(pid).or_default();
            if *n == out_es[&pid].len() - c.len() {
                boundary = boundary.min(i);
            }
            *n += 1;
        }
    }
    let mut clip_out = Vec::new();
    for psi in [0, PMT_PID] {
        let last = packets[..boundary]
            .iter()
            .rev()
            .find(|p| pid_of(p) == psi)
            .expect("PSI before the clip");
        clip_out.extend_from_slice(&last[..]);
    }
    for p in &packets[boundary..] {
        clip_out.extend_from_slice(&p[..]);
    }
    clip_out
}

// ---------------------------------------------------------------- system

/// The set-up every test starts with: a headend with product "basic" and
/// channel 1 (input `udp://input`, output `udp://output`), a card
/// provisioned, registered and subscribed, and the daemon streaming.
pub(crate) struct System {
    dir: tempfile::TempDir,
    pub(crate) headend: Headend,
    pub(crate) card: Emulator,
    reader: &'static str,
    /// Where the headend reads its clear input.
    pub(crate) input: SocketAddr,
}

impl System {
    pub(crate) fn set_up(slot: &Slot, output: SocketAddr) -> System {
        Self::set_up_with(slot, output, Some(EMM_CYCLE_MS), true)
    }

    /// [`System::set_up`] with the given EMM cycle (`None`: the default),
    /// and the card subscribed or not.
    fn set_up_with(
        slot: &Slot,
        output: SocketAddr,
        emm_cycle_ms: Option<u64>,
        subscribe: bool,
    ) -> System {
        Self::set_up_config(slot, output, emm_cycle_ms, subscribe, &[])
    }

    /// [`System::set_up_with`], with these `key = value` lines of
    /// `headend.toml` replaced before the daemon starts.
    pub(crate) fn set_up_config(
        slot: &Slot,
        output: SocketAddr,
        emm_cycle_ms: Option<u64>,
        subscribe: bool,
        config: &[(&str, &str)],
    ) -> System {
        let dir = tempfile::tempdir().unwrap();
        let (headend, input) = on_air(output, emm_cycle_ms, config);
        let card = provision(
            &headend,
            slot,
            CARD,
            &dir.path().join("card.img"),
            subscribe,
        );
        System::of(dir, headend, card, slot, input)
    }

    /// [`System::set_up_config`] with crypto periods of `period_ms` and a
    /// card of `model` (provisioned at full speed, then started again at
    /// the model's), subscribed.
    pub(crate) fn set_up_card(
        slot: &Slot,
        output: SocketAddr,
        period_ms: u64,
        emm_cycle_ms: Option<u64>,
        model: CardModel,
        config: &[(&str, &str)],
    ) -> System {
        let dir = tempfile::tempdir().unwrap();
        let (headend, input) = on_air_every(period_ms, output, emm_cycle_ms, config);
        let card = provision_card(
            &headend,
            slot,
            CARD,
            &dir.path().join("card.img"),
            model,
            Some("basic"),
        );
        System::of(dir, headend, card, slot, input)
    }

    fn of(
        dir: tempfile::TempDir,
        headend: Headend,
        card: Emulator,
        slot: &Slot,
        input: SocketAddr,
    ) -> System {
        System {
            dir,
            headend,
            card,
            reader: slot.reader,
            input,
        }
    }

    /// A system whose headend and card were set up by the caller: `dir`
    /// holds the card's image, `input` is the headend's clear input.
    pub(crate) fn from_parts(
        dir: tempfile::TempDir,
        headend: Headend,
        card: Emulator,
        reader: &'static str,
        input: SocketAddr,
    ) -> System {
        System {
            dir,
            headend,
            card,
            reader,
            input,
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The logs of every part, for a failure message.
    pub(crate) fn logs(&self, receiver: &Path) -> String {
        format!(
            "--- headend ---\n{}\n--- card ---\n{}\n--- receiver ---\n{}",
            self.headend.log_tail(25),
            self.card.log_tail(10),
            tail(receiver, 25)
        )
    }

    /// The receiver on `input`, writing to `output`; returns once its
    /// card session is up (its input socket is bound before that).
    pub(crate) fn receiver(&self, input: SocketAddr, output: &str, log: &Path) -> Process {
        self.receiver_with(input, output, log, &["--entitlement-wait", "30"])
    }

    /// [`System::receiver`] with other options (none: its defaults);
    /// returns once it has its card (with a session, or paired with
    /// another receiver).
    fn receiver_with(&self, input: SocketAddr, output: &str, log: &Path, args: &[&str]) -> Process {
        self.receiver_in(self.reader, "", input, output, log, args)
    }

    /// [`System::receiver_with`] on the card in `reader`, with its own
    /// files: `<files>stats.json` and the key `<files>receiver.key`.
    pub(crate) fn receiver_in(
        &self,
        reader: &str,
        files: &str,
        input: SocketAddr,
        output: &str,
        log: &Path,
        args: &[&str],
    ) -> Process {
        let mut p = Process::spawn(
            Command::new(workspace_bin("receiver"))
                .args(["-i", &format!("udp://{input}"), "-o", output])
                .args(["--reader", reader])
                .args(args)
                .arg("--stats-json")
                .arg(self.path(&format!("{files}stats.json")))
                .arg("--identity")
                .arg(self.path(&format!("{files}receiver.key")))
                .env("RUST_LOG", "receiver=info"),
            log,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while !std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("card session established") || l.contains("card connected"))
        {
            assert!(p.is_running(), "receiver exited:\n{}", self.logs(log));
            assert!(
                Instant::now() < deadline,
                "no card session:\n{}",
                self.logs(log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// Stops the receiver with SIGTERM; its `--stats-json` report.
    pub(crate) fn stop_receiver(&self, p: Process, log: &Path) -> serde_json::Value {
        self.stop_receiver_in(p, log, "")
    }

    /// [`System::stop_receiver`] for a receiver of [`System::receiver_in`].
    pub(crate) fn stop_receiver_in(
        &self,
        mut p: Process,
        log: &Path,
        files: &str,
    ) -> serde_json::Value {
        let st = p.terminate(Duration::from_secs(10));
        assert!(
            st.is_some_and(|s| s.success()),
            "receiver: {st:?}\n{}",
            self.logs(log)
        );
        self.receiver_stats(files)
    }

    /// The `--stats-json` report of a receiver that has exited.
    pub(crate) fn receiver_stats(&self, files: &str) -> serde_json::Value {
        let path = self.path(&format!("{files}stats.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }
}

/// A headend with product "basic" and channel 1 (scrambled under it, its
/// output to `output`), the daemon streaming, with the given EMM cycle
/// (`None`: the default) and these `key = value` lines of `headend.toml`
/// replaced before it starts; and where it reads its clear input.
pub(crate) fn on_air(
    output: SocketAddr,
    emm_cycle_ms: Option<u64>,
    config: &[(&str, &str)],
) -> (Headend, SocketAddr) {
    on_air_every(PERIOD_MS, output, emm_cycle_ms, config)
}

/// [`on_air`] with crypto periods of `period_ms`.
pub(crate) fn on_air_every(
    period_ms: u64,
    output: SocketAddr,
    emm_cycle_ms: Option<u64>,
    config: &[(&str, &str)],
) -> (Headend, SocketAddr) {
    let headend = Headend::init(workspace_bin("headend"), period_ms, emm_cycle_ms);
    let mut toml = std::fs::read_to_string(headend.config()).unwrap();
    for (key, value) in config {
        let line = toml
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("no {key} in headend.toml"))
            .to_string();
        toml = toml.replace(&line, &format!("{key} = {value}"));
    }
    std::fs::write(headend.config(), toml).unwrap();
    go_on_air(headend, output)
}

/// `headend` (initialized, its `headend.toml` as the caller wants it)
/// started, with product "basic" and channel 1 scrambled under it, its
/// output to `output`; and where it reads its clear input.
pub(crate) fn go_on_air(mut headend: Headend, output: SocketAddr) -> (Headend, SocketAddr) {
    headend.start();
    let input = free_udp_addr();
    headend.cli(&["product", "add", "basic"]);
    headend.cli(&[
        "channel",
        "add",
        "--name",
        "one",
        "--service-id",
        "1",
        "--product",
        "basic",
        "--ecm-pid",
        &ECM_PID.to_string(),
        "--emm-pid",
        &EMM_PID.to_string(),
        "--input",
        &format!("udp://{input}"),
        "--output",
        &format!("udp://{output}"),
    ]);
    // The channel is on the air already: the daemon's supervisor started
    // its stream when it was added.
    (headend, input)
}

/// A virtual card (`smartcard emulate` on `state`) in `slot`, provisioned
/// as `card_id` for `headend` and registered with `smartcard provision
/// --register`, and subscribed to "basic" if `subscribe`.
pub(crate) fn provision(
    headend: &Headend,
    slot: &Slot,
    card_id: &str,
    state: &Path,
    subscribe: bool,
) -> Emulator {
    let product = subscribe.then_some("basic");
    provision_card(headend, slot, card_id, state, CardModel::default(), product)
}

/// [`provision`] for a card that, once out of the factory, runs at the
/// speed of `model`, subscribed to `product` if one is given. The factory
/// works at full speed (personalization and the Subset Difference labels
/// are many APDUs); the card then starts again, on the same state, with
/// the model's timing and APDU lengths.
pub(crate) fn provision_card(
    headend: &Headend,
    slot: &Slot,
    card_id: &str,
    state: &Path,
    model: CardModel,
    product: Option<&str>,
) -> Emulator {
    let mut card = Emulator::start(workspace_bin("smartcard"), slot, state);
    let o = Command::new(workspace_bin("smartcard"))
        .args(["provision", "--operator"])
        .arg(headend.home().join("operator.json"))
        .args(["--card-id", card_id, "--reader", slot.reader])
        .args(["--register", &headend.api_url(), "--token-file"])
        .arg(headend.home().join("admin.token"))
        .env_remove("IODOFORM_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "smartcard provision: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        card.log_tail(20)
    );
    if let Some(product) = product {
        headend.cli(&["subscribe", card_id, product, "--until", "2099-12-31"]);
        let shown = headend.cli(&["card", "show", card_id, "--json"]);
        assert!(
            String::from_utf8_lossy(&shown.stdout).contains(product),
            "{shown:?}"
        );
    }
    if model != CardModel::default() {
        let st = card.terminate();
        assert!(
            st.success(),
            "smartcard emulate: {st}\n{}",
            card.log_tail(10)
        );
        card.model = model;
        card.restart();
    }
    card
}

// ------------------------------------------------------------- UDP plumbing

/// Sends clear TS to the headend's UDP input, 7 packets a datagram,
/// paced by the PCR of the video PID as an encoder would. `next` gives
/// each next segment to send (`None` ends); a segment's PCRs start again
/// (a loop), and its first packet follows the previous segment's last.
pub(crate) struct Feeder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<u8>>>,
}

impl Feeder {
    pub(crate) fn start(
        to: SocketAddr,
        mut next: impl FnMut() -> Option<Arc<Vec<u8>>> + Send + 'static,
    ) -> Feeder {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut fed = Vec::new();
            let mut seg_start = Instant::now();
            // Each PID's last continuity counter, and whether it has been
            // re-linked in this segment: one continuous stream, as an
            // encoder sends, not a jump at every segment.
            let mut cc: BTreeMap<u16, (u8, bool)> = BTreeMap::new();
            let mut offset: BTreeMap<u16, u8> = BTreeMap::new();
            while let Some(seg) = next() {
                let mut first_pcr = None;
                let mut last = Duration::ZERO;
                let mut dgram = Vec::with_capacity(7 * PACKET_LEN);
                for c in cc.values_mut() {
                    c.1 = false;
                }
                for p in Packets::new(&seg) {
                    if s.load(Ordering::Relaxed) {
                        return fed;
                    }
                    let mut p = *p;
                    let pid = pid_of(&p);
                    let has_payload = p[3] & 0x10 != 0;
                    let cc_in = p[3] & 0x0F;
                    if let Some((last_cc, linked)) = cc.get(&pid).copied() {
                        if !linked {
                            let want = if has_payload {
                                (last_cc + 1) & 0x0F
                            } else {
                                last_cc
                            };
                            offset.insert(pid, want.wrapping_sub(cc_in) & 0x0F);
                        }
                    }
                    let out = (cc_in + offset.get(&pid).copied().unwrap_or(0)) & 0x0F;
                    p[3] = (p[3] & 0xF0) | out;
                    cc.insert(pid, (out, true));
                    let p = &p;
                    let pcr = Packet::from_array(p)
                        .ok()
                        .filter(|v| v.pid() == VIDEO)
                        .and_then(|v| v.pcr())
                        .map(|p| p.ticks_27mhz());
                    if let Some(pcr) = pcr {
                        let first = *first_pcr.get_or_insert(pcr);
                        last = Duration::from_nanos(pcr.saturating_sub(first) * 1000 / 27);
                        if !dgram.is_empty() {
                            let _ = sock.send_to(&dgram, to);
                            dgram.clear();
                        }
                        let at = seg_start + last;
                        let now = Instant::now();
                        if at > now {
                            std::thread::sleep(at - now);
                        }
                    }
                    dgram.extend_from_slice(p);
                    fed.extend_from_slice(p);
                    if dgram.len() == 7 * PACKET_LEN {
                        // Errors (no daemon listening) are the network's.
                        let _ = sock.send_to(&dgram, to);
                        dgram.clear();
                    }
                }
                if !dgram.is_empty() {
                    let _ = sock.send_to(&dgram, to);
                }
                // The next segment starts one frame after this one's last
                // PCR.
                seg_start += last + Duration::from_millis(40);
            }
            fed
        });
        Feeder {
            stop,
            thread: Some(thread),
        }
    }

    /// Waits for the feeder to run out of segments (or stops it); what it
    /// sent.
    pub(crate) fn finish(mut self, stop: bool) -> Vec<u8> {
        if stop {
            self.stop.store(true, Ordering::Relaxed);
        }
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Datagrams with their arrival times.
pub(crate) type Datagrams = Vec<(Instant, Vec<u8>)>;

/// Datagrams received on a UDP socket, with their arrival times; with
/// `forward`, each is passed on (the tee between the headend and the
/// receiver, which keeps a capture of the scrambled air).
pub(crate) struct Tap {
    pub(crate) addr: SocketAddr,
    got: Arc<Mutex<Datagrams>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Tap {
    pub(crate) fn start(forward: Option<SocketAddr>) -> Tap {
        Tap::start_to(forward.into_iter().collect())
    }

    /// [`Tap::start`] passing each datagram on to every address of
    /// `forward` (a tee to several receivers).
    pub(crate) fn start_to(forward: Vec<SocketAddr>) -> Tap {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let got: Arc<Mutex<Datagrams>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let out = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                for to in &forward {
                    let _ = out.send_to(&buf[..n], to);
                }
                g.lock().unwrap().push((Instant::now(), buf[..n].to_vec()));
            }
        });
        Tap {
            addr,
            got,
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let g = self.got.lock().unwrap();
        g.iter().flat_map(|(_, d)| d.iter().copied()).collect()
    }

    /// The datagrams received so far from the `from`th on.
    pub(crate) fn datagrams_from(&self, from: usize) -> Datagrams {
        let g = self.got.lock().unwrap();
        g.get(from..).unwrap_or_default().to_vec()
    }

    /// Arrival times of the datagrams that carry an ES packet.
    pub(crate) fn es_times(&self) -> Vec<Instant> {
        let g = self.got.lock().unwrap();
        g.iter()
            .filter(|(_, d)| Packets::new(d).any(|p| ES.contains(&pid_of(p))))
            .map(|(t, _)| *t)
            .collect()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the receiver's clear output (to `tap`) carries ES packets.
pub(crate) fn wait_clear(tap: &Tap, sys: &System, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while tap.es_times().len() < 10 {
        assert!(
            Instant::now() < deadline,
            "no clear output from the receiver within 15 s:\n{}",
            sys.logs(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A single free UDP port for the receiver's input: the tee sends there.
pub(crate) fn receiver_input() -> SocketAddr {
    free_udp_addr()
}

// ------------------------------------------------------------------ tests

/// Encoder → headend → UDP → receiver with its card through pcscd: the
/// whole clip comes out with ES packets byte-identical to the input's,
/// ffprobe decodes it with the input's frame count, and the scrambled air
/// in between is not the clear stream.
///
/// The card gets its entitlement over the air, so the feeder first loops
/// a short warm-up clip (another picture and tone) until the receiver
/// writes clear video; only then does the clip under test go through,
/// whole, to a receiver that already holds the CWs.
#[test]
fn clip_through_headend_card_and_receiver_comes_out_clear_and_identical() {
    let test = "clip_through_headend_card_and_receiver_comes_out_clear_and_identical";
    if !prerequisites(test) {
        return;
    }
    let slot = vpcd::slot();
    let t0 = Instant::now();
    let rx_in = receiver_input();
    let mut tee = Tap::start(Some(rx_in));
    let mut sys = System::set_up(&slot, tee.addr);
    let clip = ffmpeg::clip(
        &sys.path("clear.ts"),
        4,
        "testsrc=size=320x240:rate=25",
        1000,
    );
    let warm = ffmpeg::clip(
        &sys.path("warm.ts"),
        1,
        "testsrc2=size=160x120:rate=25",
        440,
    );
    let set_up = t0.elapsed();

    let out_path = sys.path("out.ts");
    let log = sys.path("receiver.log");
    let rx = sys.receiver(rx_in, out_path.to_str().unwrap(), &log);

    // Warm-up loops until the receiver writes clear video, then the clip.
    let go = Arc::new(AtomicBool::new(false));
    let (warm, clip_seg) = (Arc::new(warm), Arc::new(clip.clone()));
    let feeder = Feeder::start(sys.input, warm_then(go.clone(), warm, clip_seg));
    wait_for_video(&out_path, Duration::from_secs(15), || sys.logs(&log));
    let first_clear = t0.elapsed();
    go.store(true, Ordering::Relaxed);
    let fed = feeder.finish(false);
    // Everything on the air reaches the receiver: the headend holds at
    // most a PCR interval and its writer 300 ms ahead.
    std::thread::sleep(Duration::from_millis(1000));
    let stats = sys.stop_receiver(rx, &log);
    tee.stop();
    let out = std::fs::read(&out_path).unwrap();
    let air = tee.bytes();

    // 1. The receiver's ES packets are the fed ones, byte for byte: a
    //    contiguous run from its first clear packet to the end, which
    //    covers the whole clip.
    let fed_es = es_packets(&fed);
    let clip_es = es_packets(&clip);
    let out_es = es_packets(&out);
    for pid in ES {
        let (f, o, c) = (&fed_es[&pid], &out_es[&pid], &clip_es[&pid]);
        assert!(!c.is_empty());
        assert!(
            o.len() >= c.len(),
            "PID {pid:#x}: the receiver wrote {} packets, the clip has {}; stats {stats}\n{}",
            o.len(),
            c.len(),
            sys.logs(&log)
        );
        assert!(o.len() <= f.len());
        let tail_of_fed = &f[f.len() - o.len()..];
        let first_diff = o.iter().zip(tail_of_fed).position(|(a, b)| a != b);
        assert_eq!(
            first_diff,
            None,
            "PID {pid:#x}: output packet differs from the input ({} packets out); stats {stats}",
            o.len()
        );
    }
    // (ECMs refused and packets dropped before the EMM reached the card
    // are the warm-up's; the run above proves nothing was lost after.)
    assert_eq!(stats["exit_code"], 0, "{stats}");

    // 2. ffprobe decodes the clip's part of the output without an error,
    //    with the input's frame count. That part starts at the clip's
    //    first ES packet; the last PAT and PMT before it lead it.
    let clip_out = clip_part(&out, &clip_es, &out_es);
    std::fs::write(sys.path("clip-out.ts"), &clip_out).unwrap();
    let (want_frames, _) = ffmpeg::ffprobe_frames(&sys.path("clear.ts")).expect("ffprobe");
    let (frames, err) = ffmpeg::ffprobe_frames(&sys.path("clip-out.ts")).expect("ffprobe");
    assert!(want_frames >= 90, "the clip has {want_frames} frames");
    assert_eq!(
        (frames, err.trim()),
        (want_frames, ""),
        "ffprobe of the receiver's clip"
    );

    // 3. The scrambled air in between is not the clear stream: every ES
    //    packet is marked scrambled and none with a whole block of payload
    //    equals a clear input packet; ffprobe decodes no clean video.
    let clear_payloads: HashSet<Vec<u8>> = es_packets(&fed)
        .values()
        .flatten()
        .filter_map(|p| {
            let v = Packet::from_array(p).ok()?;
            (v.payload().len() >= 16).then(|| v.payload().to_vec())
        })
        .collect();
    let (mut es_on_air, mut leaked) = (0, 0);
    for p in Packets::new(&air) {
        let v = Packet::from_array(p).unwrap();
        if !ES.contains(&v.pid()) || !v.has_payload() {
            continue;
        }
        es_on_air += 1;
        assert_ne!(v.scrambling().0, 0, "a clear ES packet on the air");
        if clear_payloads.contains(v.payload()) {
            leaked += 1;
        }
    }
    let clip_total: usize = clip_es.values().map(Vec::len).sum();
    assert!(
        es_on_air >= clip_total,
        "{es_on_air} ES packets captured, the clip has {clip_total}"
    );
    assert_eq!(leaked, 0, "ES packets on the air equal to clear ones");
    std::fs::write(sys.path("air.ts"), &air).unwrap();
    let (air_frames, air_err) = ffmpeg::ffprobe_frames(&sys.path("air.ts")).expect("ffprobe");
    assert!(
        air_frames == 0 || !air_err.trim().is_empty(),
        "ffprobe decoded {air_frames} frames of the scrambled air without an error"
    );
    // ffprobe skips packets marked scrambled; with the marks cleared, as a
    // pirate box would, it still gets nothing clean out of them.
    let mut unmarked = air.clone();
    for p in unmarked.chunks_exact_mut(PACKET_LEN) {
        if p[0] == 0x47 && ES.contains(&u16::from_be_bytes([p[1] & 0x1F, p[2]])) {
            p[3] &= 0x3F;
        }
    }
    std::fs::write(sys.path("air-unmarked.ts"), &unmarked).unwrap();
    let (unmarked_frames, unmarked_err) =
        ffmpeg::ffprobe_frames(&sys.path("air-unmarked.ts")).expect("ffprobe");
    assert!(
        unmarked_frames == 0 || !unmarked_err.trim().is_empty(),
        "ffprobe decoded {unmarked_frames} frames of the scrambled air, unmarked, without an error"
    );
    eprintln!(
        "set-up {:.1} s, first clear video at {:.1} s, total {:.1} s; clip {want_frames} frames; \
         scrambled air: {air_frames} frames, {} lines of errors; unmarked: {unmarked_frames} frames, \
         {} lines of errors",
        set_up.as_secs_f64(),
        first_clear.as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        air_err.lines().count(),
        unmarked_err.lines().count()
    );
    // SIGTERM stops the daemon cleanly, its channel's stream with it.
    sys.headend.stop();
}

/// `headend run` killed with SIGKILL and started again, three times, while
/// the receiver stays up with its card: the clear output resumes within
/// three crypto periods of the daemon being back (two, and the first
/// ECM's way to the card), with nothing done to the
/// card (no provisioning, no new EMM needed). A restart within the epoch
/// of the last ECM sends the stored ECM again at once; one in a later
/// epoch seals fresh only from two epochs on, because an earlier run may
/// have sealed epochs the database (say, a restored copy) does not have
/// (OPERATIONS.md, "what is safe"). Every ES packet out is the clip's: the
/// receiver takes each restart for a gap in its input, and after it
/// descrambles nothing until an ECM gives the packets their crypto period,
/// never a key it held from before the restart.
#[test]
fn receiver_resumes_within_a_crypto_period_after_the_daemon_is_killed() {
    let test = "receiver_resumes_within_a_crypto_period_after_the_daemon_is_killed";
    if !prerequisites(test) {
        return;
    }
    let slot = vpcd::slot();
    let t0 = Instant::now();
    let rx_in = receiver_input();
    let tee = Tap::start(Some(rx_in));
    let mut sys = System::set_up(&slot, tee.addr);
    let clip = Arc::new(ffmpeg::clip(
        &sys.path("clear.ts"),
        2,
        "testsrc=size=320x240:rate=25",
        1000,
    ));
    let clip_packets: HashSet<[u8; PACKET_LEN]> =
        es_packets(&clip).into_values().flatten().collect();
    // A live encoder: the clip again and again, through the restarts.
    let feeder = Feeder::start(sys.input, move || Some(clip.clone()));
    // A first receiver run until the card has its entitlement (the EMM
    // from the air), so that the run under test starts on an entitled card.
    let log = sys.path("receiver-warm-up.log");
    let warm = Tap::start(None);
    let rx = sys.receiver(rx_in, &format!("udp://{}", warm.addr), &log);
    wait_clear(&warm, &sys, &log);
    sys.stop_receiver(rx, &log);

    let clear = Tap::start(None);
    let log = sys.path("receiver.log");
    let rx = sys.receiver(rx_in, &format!("udp://{}", clear.addr), &log);
    wait_clear(&clear, &sys, &log);
    let card_pid = sys.card.pid();
    let mut report = Vec::new();
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(1500));
        let killed = Instant::now();
        sys.headend.kill9();
        std::thread::sleep(Duration::from_millis(500));
        sys.headend.start();
        let back = Instant::now();
        let deadline = back + Duration::from_secs(5);
        let resumed = loop {
            if let Some(t) = clear.es_times().into_iter().find(|t| *t > back) {
                break t;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no clear output within 5 s of the restart:\n{}",
                sys.logs(&log)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The longest pause in clear output around the restart.
        let times = clear.es_times();
        let from = killed - Duration::from_secs(1);
        let around: Vec<Instant> = times
            .into_iter()
            .filter(|t| *t >= from && *t <= resumed)
            .collect();
        let gap = around
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        let down = back - killed;
        let after_back = resumed.saturating_duration_since(back);
        report.push(format!(
            "round {round}: down {} ms, clear again {} ms after the daemon was ready, gap {} ms",
            down.as_millis(),
            after_back.as_millis(),
            gap.as_millis()
        ));
        assert!(
            after_back <= Duration::from_millis(3 * PERIOD_MS),
            "round {round}: clear output {} ms after the daemon was back (crypto period {PERIOD_MS} ms)\n{}",
            after_back.as_millis(),
            sys.logs(&log)
        );
        assert!(
            gap <= down + Duration::from_millis(3 * PERIOD_MS),
            "round {round}: clear output stopped for {} ms, the daemon was down {} ms",
            gap.as_millis(),
            down.as_millis()
        );
    }
    // Keep going a little: the stream is steady after the last restart.
    std::thread::sleep(Duration::from_millis(1000));
    feeder.finish(true);
    std::thread::sleep(Duration::from_millis(500));
    let stats = sys.stop_receiver(rx, &log);
    let s = &stats["stats"];
    eprintln!("{}", report.join("\n"));
    assert_eq!(sys.card.pid(), card_pid, "the card stayed in");
    assert_eq!(s["card_reconnects"], 0, "{stats}");
    assert_eq!(s["ecms_refused"], 0, "{stats}");
    assert_eq!(s["undecryptable"], 0, "{stats}");
    // Each restart is a gap the receiver saw (a silent input, or a
    // continuity counter that jumped).
    assert!(s["input_gaps"].as_u64().unwrap() >= 3, "{stats}");
    // What came out is the clip, byte for byte.
    let out = clear.bytes();
    let out_es: Vec<[u8; PACKET_LEN]> = es_packets(&out).into_values().flatten().collect();
    assert!(out_es.len() > 500, "{} ES packets out", out_es.len());
    let clip_normalized: HashSet<[u8; PACKET_LEN]> = clip_packets.iter().map(as_in_clip).collect();
    let foreign = out_es
        .iter()
        .filter(|p| !clip_normalized.contains(&as_in_clip(p)))
        .count();
    assert_eq!(foreign, 0, "ES packets out that are not the clip's");
    assert_eq!(stats["exit_code"], 0, "{stats}");
    eprintln!(
        "receiver: {} descrambled, {} undecryptable, {} CW changes; total {:.1} s",
        s["descrambled"],
        s["undecryptable"],
        s["cw_changes"],
        t0.elapsed().as_secs_f64()
    );
}

/// The quick start of `docs/OPERATIONS.md`, run as written (the
/// shell block itself, read from the file), ends with clear video. Only
/// what must differ on a shared test machine is changed: the folder, the
/// ports, which vpcd slot, and pcscd is already running.
#[test]
fn the_operations_quick_start_ends_with_clear_video() {
    let test = "the_operations_quick_start_ends_with_clear_video";
    if !prerequisites(test) {
        return;
    }
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/OPERATIONS.md"),
    )
    .unwrap();
    let start = doc.find("## Quick start").expect("a quick start");
    let block = &doc[start..];
    let block = &block[block.find("```sh\n").expect("its shell block") + 6..];
    let block = &block[..block.find("```").unwrap()];

    let slot = vpcd::slot();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("iodoform");
    let (api, input, output) = (free_tcp_port(), free_udp_port(), free_udp_port());
    let script = block
        .replace("/var/lib/iodoform", &home.to_string_lossy())
        .replace(
            "headend init --dir",
            &format!("headend init --listen 127.0.0.1:{api} --dir"),
        )
        .replace("127.0.0.1:7480", &format!("127.0.0.1:{api}"))
        .replace("127.0.0.1:5000", &format!("127.0.0.1:{input}"))
        .replace("127.0.0.1:5002", &format!("127.0.0.1:{output}"))
        .replace("scripts/ensure-pcscd.sh", "true")
        .replace(
            "smartcard emulate --state",
            &format!("smartcard emulate --vpcd 127.0.0.1:{} --state", slot.port),
        )
        .replace(
            "smartcard provision",
            &format!("smartcard provision --reader '{}'", slot.reader),
        )
        .replace(
            "receiver -i",
            &format!("receiver --identity rx.key --reader '{}' -i", slot.reader),
        );
    assert!(script.contains("ffprobe"), "{script}");
    // Every background job is stopped when the script ends, however.
    let wrapped =
        format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n{script}");
    let debug_dir = workspace_bin("headend").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        debug_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&wrapped)
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("IODOFORM_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the quick start failed ({}):\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let frames: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("nb_read_frames="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no frame count:\n{stdout}\n{stderr}"));
    // Ten seconds of 25 frames/s, less the receiver's start.
    assert!(frames >= 150, "{frames} frames:\n{stdout}\n{stderr}");
    drop(slot);
}

// ---------------------------------------------------- pairing and new cards

/// A receiver's public key, as `receiver identity` prints it (the key
/// file is made on first use).
fn receiver_key(file: &Path) -> String {
    let o = Command::new(workspace_bin("receiver"))
        .arg("identity")
        .arg("--identity")
        .arg(file)
        .output()
        .unwrap();
    assert!(o.status.success(), "receiver identity: {o:?}");
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// Waits until `log` holds `text` at least `times` times, the receiver
/// still running.
fn wait_log(rx: &mut Process, log: &Path, text: &str, times: usize, sys: &System) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(text)
        .count()
        < times
    {
        assert!(rx.is_running(), "receiver exited:\n{}", sys.logs(log));
        assert!(
            Instant::now() < deadline,
            "the receiver did not say {text:?} within 10 s:\n{}",
            sys.logs(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the clear output (to `tap`) carries ES packets that
/// arrived after `since`; how long after `since` the first came.
fn wait_clear_since(
    tap: &Tap,
    since: Instant,
    timeout: Duration,
    sys: &System,
    log: &Path,
) -> Duration {
    let deadline = since + timeout;
    loop {
        let after: Vec<Instant> = tap.es_times().into_iter().filter(|t| *t > since).collect();
        if after.len() >= 10 {
            return after[0] - since;
        }
        assert!(
            Instant::now() < deadline,
            "no clear output within {} s:\n{}",
            timeout.as_secs(),
            sys.logs(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks that no clear ES packet reached `tap` for `quiet` from now.
fn assert_no_clear_for(tap: &Tap, quiet: Duration, what: &str) {
    let from = Instant::now();
    std::thread::sleep(quiet);
    let n = tap.es_times().into_iter().filter(|t| *t > from).count();
    assert_eq!(n, 0, "{what}: {n} datagrams of clear ES");
}

/// A card paired by mistake with another receiver's key is undone without
/// revoking it, twice, with the real daemon, card and receiver: the
/// receiver does not exit but says what the operator can run, and keeps
/// handing the card its EMMs; `headend unpair` brings the picture back
/// within seconds; a receiver started while the wrong pairing lasts waits
/// too, and `headend pair` with its key brings the picture back. What
/// comes out is the clip, byte for byte.
#[test]
fn a_wrong_pairing_is_undone_by_unpair_or_by_pair_and_the_picture_comes_back() {
    let test = "a_wrong_pairing_is_undone_by_unpair_or_by_pair_and_the_picture_comes_back";
    if !prerequisites(test) {
        return;
    }
    let slot = vpcd::slot();
    let rx_in = receiver_input();
    let tee = Tap::start(Some(rx_in));
    let sys = System::set_up(&slot, tee.addr);
    let clip = Arc::new(ffmpeg::clip(
        &sys.path("clear.ts"),
        2,
        "testsrc=size=320x240:rate=25",
        1000,
    ));
    let clip_packets: HashSet<[u8; PACKET_LEN]> = es_packets(&clip)
        .into_values()
        .flatten()
        .map(|p| as_in_clip(&p))
        .collect();
    let feeder = Feeder::start(sys.input, move || Some(clip.clone()));
    let mine = receiver_key(&sys.path("receiver.key"));
    let theirs = receiver_key(&sys.path("other-receiver.key"));
    let waiting = format!(
        "card {CARD} is paired with another receiver; waiting for the operator to run \
         \"headend pair {CARD} {mine}\" (this receiver's key) or \"headend unpair {CARD}\""
    );

    // A working picture.
    let out = Tap::start(None);
    let log = sys.path("receiver.log");
    let mut rx = sys.receiver(rx_in, &format!("udp://{}", out.addr), &log);
    wait_clear(&out, &sys, &log);

    // Paired with the wrong receiver: the picture stops (after the CWs the
    // receiver holds), and the receiver says so once and waits.
    sys.headend.cli(&["pair", CARD, &theirs]);
    wait_log(&mut rx, &log, &waiting, 1, &sys);
    std::thread::sleep(Duration::from_millis(2 * PERIOD_MS));
    assert_no_clear_for(&out, Duration::from_millis(1500), "paired elsewhere");
    assert!(rx.is_running());

    // headend unpair: the picture is back.
    let unpaired = Instant::now();
    sys.headend.cli(&["unpair", CARD]);
    let back = wait_clear_since(&out, unpaired, Duration::from_secs(5), &sys, &log);

    // Wrong again; this receiver stops, and one started now (which used
    // to exit 5 at once) waits as well.
    sys.headend.cli(&["pair", CARD, &theirs]);
    wait_log(&mut rx, &log, &waiting, 2, &sys);
    let stats = sys.stop_receiver(rx, &log);
    assert_eq!(stats["exit_code"], 0, "{stats}");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .matches(&waiting)
            .count()
            == 2,
        "one message per wrong pairing:\n{}",
        sys.logs(&log)
    );
    let out2 = Tap::start(None);
    let log2 = sys.path("receiver-2.log");
    let mut rx2 = sys.receiver(rx_in, &format!("udp://{}", out2.addr), &log2);
    wait_log(&mut rx2, &log2, &waiting, 1, &sys);
    assert_no_clear_for(
        &out2,
        Duration::from_millis(2000),
        "a receiver started paired elsewhere",
    );
    assert!(
        rx2.is_running(),
        "the receiver exited:\n{}",
        sys.logs(&log2)
    );

    // headend pair with this receiver's key: the picture is back.
    let paired = Instant::now();
    sys.headend.cli(&["pair", CARD, &mine]);
    let back2 = wait_clear_since(&out2, paired, Duration::from_secs(5), &sys, &log2);
    std::thread::sleep(Duration::from_millis(1000));
    feeder.finish(true);
    std::thread::sleep(Duration::from_millis(300));
    let stats = sys.stop_receiver(rx2, &log2);
    assert_eq!(stats["exit_code"], 0, "{stats}");
    assert!(
        stats["stats"]["emms_accepted"].as_u64() >= Some(1),
        "{stats}"
    );

    // Not revoked, paired with this receiver.
    let shown = sys.headend.cli(&["card", "show", CARD, "--json"]);
    let card: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(card["state"], "active", "{card}");
    assert_eq!(card["paired_receiver"], mine.as_str(), "{card}");
    // Every ES packet that came out is the clip's, byte for byte.
    for (tap, what) in [(&out, "first receiver"), (&out2, "second receiver")] {
        let es: Vec<[u8; PACKET_LEN]> = es_packets(&tap.bytes()).into_values().flatten().collect();
        assert!(es.len() > 100, "{what}: {} ES packets", es.len());
        // (The feeder re-links continuity counters across its loops.)
        let foreign = es
            .iter()
            .filter(|p| !clip_packets.contains(&as_in_clip(p)))
            .count();
        assert_eq!(foreign, 0, "{what}: ES packets that are not the clip's");
    }
    eprintln!(
        "clear again {} ms after unpair, {} ms after pair",
        back.as_millis(),
        back2.as_millis()
    );
}

/// With the default EMM cycle (60 s), a receiver switched on two seconds
/// after `headend subscribe` (when the EMM sent at once has gone by) gets
/// its entitlement within a few seconds, with its default waits.
#[test]
fn a_receiver_started_after_subscribe_gets_its_entitlement_in_seconds_with_the_default_cycle() {
    let test =
        "a_receiver_started_after_subscribe_gets_its_entitlement_in_seconds_with_the_default_cycle";
    if !prerequisites(test) {
        return;
    }
    let slot = vpcd::slot();
    let rx_in = receiver_input();
    let tee = Tap::start(Some(rx_in));
    let sys = System::set_up_with(&slot, tee.addr, None, false);
    let status = sys.headend.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["emm_cycle_ms"], 60_000, "{status}");
    let clip = Arc::new(ffmpeg::clip(
        &sys.path("clear.ts"),
        2,
        "testsrc=size=320x240:rate=25",
        1000,
    ));
    let feeder = Feeder::start(sys.input, move || Some(clip.clone()));
    std::thread::sleep(Duration::from_millis(1000));

    sys.headend
        .cli(&["subscribe", CARD, "basic", "--until", "2099-12-31"]);
    let subscribed = Instant::now();
    std::thread::sleep(Duration::from_millis(2000));
    let out = Tap::start(None);
    let log = sys.path("receiver.log");
    let started = Instant::now();
    let rx = sys.receiver_with(rx_in, &format!("udp://{}", out.addr), &log, &[]);
    let after_start = wait_clear_since(&out, started, Duration::from_secs(6), &sys, &log);
    let after_subscribe = started + after_start - subscribed;
    feeder.finish(true);
    let stats = sys.stop_receiver(rx, &log);
    assert_eq!(stats["exit_code"], 0, "{stats}");
    eprintln!(
        "clear output {} ms after the receiver started, {} ms after subscribe",
        after_start.as_millis(),
        after_subscribe.as_millis()
    );
}
