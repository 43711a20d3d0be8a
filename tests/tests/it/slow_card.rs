//! Cards as slow as real ones, through the real binaries: `smartcard
//! emulate` with its timing model and short APDUs only, behind the
//! system's pcscd, the real `headend run` on the air over UDP, and the
//! real `receiver`. Both ends of the receiver are tapped with arrival
//! times, so that each clear packet is matched with the scrambled packet
//! it came from:
//!
//! ```text
//!  feeder ──udp──▶ headend run ──udp──▶ tee ──udp──▶ receiver ──udp──▶ tap
//!                                   (input times)      │ PC/SC     (output times)
//!                                          pcscd ─ vpcd ─ smartcard emulate --short-apdus
//!                                                          --baud 9600 | --apdu-delay-ms 300
//! ```
//!
//! A card is entitled over the air by a first receiver run; the run
//! under test starts on a card that has its entitlement, so that every
//! packet after its first clear one must come out.

use crate::e2e_stream::{
    as_in_clip, pid_of, prerequisites, provision_card, receiver_input, wait_clear, Datagrams,
    Feeder, System, Tap, CARD, ES,
};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::emulator::CardModel;
use testkit::vpcd::{self, Slot};
use testkit::{ffmpeg, Process};
use ts::packet::{Packets, PACKET_LEN};

/// How much longer than the input's own gap a gap in the clear output may
/// be: a viewer sees no freeze.
const MAX_ADDED_GAP_MS: f64 = 20.0;

/// The ES packets of a capture, in order: arrival time and the bytes that
/// descrambling leaves alone (the header with its scrambling bits
/// cleared, and the adaptation field), by which an output packet is
/// matched with its input packet.
fn es_keys(datagrams: &Datagrams) -> Vec<(Instant, Vec<u8>)> {
    let mut v = Vec::new();
    for (t, d) in datagrams {
        for p in Packets::new(d) {
            if !ES.contains(&pid_of(p)) {
                continue;
            }
            let mut key = p[..4].to_vec();
            key[3] &= 0x3F;
            if p[3] & 0x20 != 0 {
                let len = usize::from(p[4]).min(PACKET_LEN - 5);
                key.extend_from_slice(&p[4..5 + len]);
            }
            v.push((*t, key));
        }
    }
    v
}

/// What the receiver's clear output did against its scrambled input,
/// packet by packet, from the moment every component has joined.
#[derive(Debug)]
pub(crate) struct Playout {
    /// ES packets out.
    pub(crate) out: usize,
    /// Input ES packets from the first one that came out to the end, that
    /// did not come out.
    pub(crate) missing: usize,
    /// The largest gap between consecutive output packets minus the
    /// input's own gap there, in ms, and the output packet where it was.
    pub(crate) max_added_gap_ms: f64,
    pub(crate) at: usize,
    /// The five largest, where and when (for a failure message).
    pub(crate) worst: Vec<String>,
    /// How far the last output packet was behind its input packet, in ms.
    pub(crate) lag_end_ms: f64,
}

/// Matches each clear ES packet of `output` with the input packet it came
/// from: the first output packet is the latest input packet with the same
/// header and adaptation field (and the next 64 matching) that arrived
/// before it; each next one is the next input packet with its header,
/// those in between being missing, as are those after the last one out
/// that came in before `until` (when the receiver was asked to stop).
pub(crate) fn playout(input: &Datagrams, output: &Datagrams, until: Instant) -> Playout {
    let ins = es_keys(input);
    let outs = es_keys(output);
    // The receiver joins each component at its own random access point:
    // the output is the input's run of ES packets once every component
    // has started.
    let pid = |key: &[u8]| u16::from_be_bytes([key[1] & 0x1F, key[2]]);
    let joined = ES
        .iter()
        .filter_map(|&p| outs.iter().position(|(_, k)| pid(k) == p))
        .max()
        .unwrap_or(0);
    let outs = &outs[joined..];
    assert!(outs.len() > 64, "{} clear ES packets out", outs.len());
    let window = 64;
    let start = (0..ins.len().saturating_sub(window))
        .rev()
        .filter(|&s| ins[s].0 <= outs[0].0)
        .find(|&s| (0..window).all(|k| ins[s + k].1 == outs[k].1))
        .expect("the first clear packets out are not among the input's");
    let t0 = ins[start].0;
    let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1e3;
    let (mut i, mut missing) = (start, 0);
    let mut lags = Vec::with_capacity(outs.len());
    for (k, (t, key)) in outs.iter().enumerate() {
        while i < ins.len() && ins[i].1 != *key {
            i += 1;
            missing += 1;
        }
        assert!(
            i < ins.len(),
            "output ES packet {k} of {} is not in the input after packet {start}",
            outs.len()
        );
        lags.push(ms(*t) - ms(ins[i].0));
        i += 1;
    }
    missing += ins[i..].iter().filter(|(t, _)| *t < until).count();
    let mut added: Vec<(f64, usize)> = lags
        .windows(2)
        .enumerate()
        .map(|(k, w)| (w[1] - w[0], k + 1))
        .collect();
    added.sort_by(|a, b| b.0.total_cmp(&a.0));
    added.truncate(5);
    let (max_added, at) = added.first().copied().unwrap_or((0.0, 0));
    Playout {
        out: outs.len(),
        missing,
        max_added_gap_ms: (max_added * 1000.0).round() / 1000.0,
        at,
        worst: added
            .iter()
            .map(|&(a, k)| format!("{a:.1} ms at packet {k}, {:.3} s in", ms(outs[k].0) / 1e3))
            .collect(),
        lag_end_ms: lags.last().copied().unwrap_or(f64::NAN),
    }
}

/// A card of `model` in `slot`: for the system's own card, `id` is
/// [`CARD`]; another is provisioned and subscribed to "basic".
pub(crate) struct Viewer {
    name: &'static str,
    reader: &'static str,
    files: String,
    input: SocketAddr,
    _card: Option<testkit::Emulator>,
}

impl Viewer {
    fn log(&self, sys: &System, what: &str) -> std::path::PathBuf {
        sys.path(&format!("{}{what}.log", self.files))
    }

    /// A receiver run until its card has its entitlement from the air
    /// and the picture is clear; then stopped.
    pub(crate) fn entitle(&self, sys: &System) {
        let log = self.log(sys, "warm-up");
        let out = Tap::start(None);
        let rx = self.receiver(sys, &out, &log);
        wait_clear(&out, sys, &log);
        sys.stop_receiver_in(rx, &log, &self.files);
    }

    fn receiver(&self, sys: &System, out: &Tap, log: &Path) -> Process {
        sys.receiver_in(
            self.reader,
            &self.files,
            self.input,
            &format!("udp://{}", out.addr),
            log,
            &["--entitlement-wait", "30"],
        )
    }
}

/// One receiver's measured run.
pub(crate) struct Run {
    /// The scrambled input from the receivers' start.
    input: Datagrams,
    /// The clear output.
    output: Datagrams,
    /// The receiver's `--stats-json` report.
    stats: serde_json::Value,
    /// When the receivers were asked to stop.
    until: Instant,
}

/// The measured run of each viewer's receiver on one broadcast: all
/// start, run until the picture is clear and `cw_changes` more crypto
/// periods have gone by; then the feeder stops, and once the last packets
/// are through, the receivers.
pub(crate) fn watch(
    sys: &System,
    viewers: &[Viewer],
    tee: &Tap,
    feeder: Feeder,
    cw_changes: u64,
    period_ms: u64,
) -> Vec<Run> {
    let from = tee.datagrams_from(0).len();
    let runs: Vec<(Tap, Process, std::path::PathBuf)> = viewers
        .iter()
        .map(|v| {
            let out = Tap::start(None);
            let log = v.log(sys, "receiver");
            let rx = v.receiver(sys, &out, &log);
            (out, rx, log)
        })
        .collect();
    for (out, _, log) in &runs {
        wait_clear(out, sys, log);
    }
    // One more period than the changes counted, and a little.
    std::thread::sleep(Duration::from_millis((cw_changes + 1) * period_ms + 500));
    feeder.finish(true);
    // The headend sends what it holds (at most a PCR interval, and its
    // writer 300 ms ahead), the receivers write it out.
    std::thread::sleep(Duration::from_millis(1000));
    let until = Instant::now();
    let done: Vec<(Datagrams, serde_json::Value)> = runs
        .into_iter()
        .zip(viewers)
        .map(|((out, rx, log), v)| {
            let stats = sys.stop_receiver_in(rx, &log, &v.files);
            (out.datagrams_from(0), stats)
        })
        .collect();
    // Whatever a receiver got, the tee had (it keeps each datagram just
    // after passing it on).
    let input = tee.datagrams_from(from);
    done.into_iter()
        .map(|(output, stats)| Run {
            input: input.clone(),
            output,
            stats,
            until,
        })
        .collect()
}

/// Checks one receiver's run: its report and its playout. Returns a line
/// for the test's output.
pub(crate) fn check(
    viewer: &Viewer,
    run: &Run,
    clip: &HashSet<[u8; PACKET_LEN]>,
    cw_changes: u64,
) -> (String, Playout) {
    let (output, stats) = (&run.output, &run.stats);
    let s = &stats["stats"];
    let name = viewer.name;
    assert_eq!(stats["exit_code"], 0, "{name}: {stats}");
    for counter in [
        "undecryptable",
        "datagrams_dropped",
        "bad_packets",
        "ecms_refused",
        "ecms_stale",
        "card_reconnects",
    ] {
        assert_eq!(s[counter], 0, "{name}: {counter} in {stats}");
    }
    let changes = s["cw_changes"].as_u64().unwrap_or(0);
    assert!(
        changes >= cw_changes,
        "{name}: {changes} CW changes: {stats}"
    );
    let p = playout(&run.input, output, run.until);
    assert_eq!(p.missing, 0, "{name}: ES packets lost: {p:?} {stats}");
    // Every ES packet out is the clip's, descrambled.
    let foreign = Packets::new(
        &output
            .iter()
            .flat_map(|(_, d)| d.clone())
            .collect::<Vec<_>>(),
    )
    .filter(|p| ES.contains(&pid_of(p)))
    .filter(|p| !clip.contains(&as_in_clip(p)))
    .count();
    assert_eq!(foreign, 0, "{name}: ES packets out that are not the clip's");
    let line = format!(
        "{name}: {} ES packets out, 0 lost, {changes} CW changes, {} ECMs and {} EMMs to the card \
         ({:.1} ms a command, max {:.1}; ECMs waited up to {:.1} ms), largest added gap {:.2} ms \
         ({}), {:.2} ms behind live at the end",
        p.out,
        s["ecms_to_card"],
        s["emms_to_card"],
        s["card_us_p50"].as_f64().unwrap_or(0.0) / 1e3,
        s["card_us_max"].as_f64().unwrap_or(0.0) / 1e3,
        s["ecm_wait_us_max"].as_f64().unwrap_or(0.0) / 1e3,
        p.max_added_gap_ms,
        p.worst.join("; "),
        p.lag_end_ms
    );
    (line, p)
}

/// The clear clip the feeder loops, and its ES packets as a set.
pub(crate) fn clip(sys: &System, size: &str) -> (Arc<Vec<u8>>, HashSet<[u8; PACKET_LEN]>) {
    let clip = ffmpeg::clip(
        &sys.path("clear.ts"),
        2,
        &format!("testsrc={size}:rate=25"),
        1000,
    );
    let set = Packets::new(&clip)
        .filter(|p| ES.contains(&pid_of(p)))
        .map(as_in_clip)
        .collect();
    (Arc::new(clip), set)
}

/// The system with its card of `model` in `slots[0]`, and viewers: that
/// card and one more card per further `(slot, model)`.
pub(crate) fn viewers(
    sys: &System,
    first: (&'static str, &Slot, SocketAddr),
    more: Vec<(&'static str, &Slot, CardModel, SocketAddr)>,
) -> Vec<Viewer> {
    let mut v = vec![Viewer {
        name: first.0,
        reader: first.1.reader,
        files: format!("{}-", first.0),
        input: first.2,
        _card: None,
    }];
    for (k, (name, slot, model, input)) in more.into_iter().enumerate() {
        let id = (CARD.parse::<u32>().unwrap() + 1 + k as u32).to_string();
        let card = provision_card(
            &sys.headend,
            slot,
            &id,
            &sys.path(&format!("{name}.img")),
            model,
            Some("basic"),
        );
        v.push(Viewer {
            name,
            reader: slot.reader,
            files: format!("{name}-"),
            input,
            _card: Some(card),
        });
    }
    v
}

/// Two real-speed cards at once, each on its own receiver of the same
/// live broadcast with 2 s crypto periods: a T=0 card at 9600 baud and one
/// that takes 300 ms over every APDU, both short-APDU only. Over at least
/// 30 control-word changes (and an EMM carousel that hands each card an
/// EMM every second) no packet is undecryptable or lost, and the clear
/// output never stalls more than 20 ms beyond the input's own gaps.
#[test]
fn cards_at_9600_baud_and_300_ms_per_apdu_keep_a_live_stream_smooth() {
    let test = "cards_at_9600_baud_and_300_ms_per_apdu_keep_a_live_stream_smooth";
    if !prerequisites(test) {
        return;
    }
    let t0 = Instant::now();
    let (period_ms, changes) = (2000, 30);
    let slots = vpcd::slots(2);
    let (in_a, in_b) = (receiver_input(), receiver_input());
    let tee = Tap::start_to(vec![in_a, in_b]);
    let sys = System::set_up_card(
        &slots[0],
        tee.addr,
        period_ms,
        Some(1000),
        CardModel::t0(9600),
        &[],
    );
    let viewers = viewers(
        &sys,
        ("9600baud", &slots[0], in_a),
        vec![("300ms", &slots[1], CardModel::fixed(300), in_b)],
    );
    let (clip, clip_set) = clip(&sys, "size=320x240");
    let feeder = Feeder::start(sys.input, move || Some(clip.clone()));
    std::thread::scope(|s| {
        for v in &viewers {
            let sys = &sys;
            s.spawn(move || v.entitle(sys));
        }
    });
    let set_up = t0.elapsed();
    let runs = watch(&sys, &viewers, &tee, feeder, changes, period_ms);
    let checked: Vec<(String, Playout)> = viewers
        .iter()
        .zip(&runs)
        .map(|(v, run)| check(v, run, &clip_set, changes))
        .collect();
    for (line, _) in &checked {
        eprintln!("{line}");
    }
    eprintln!(
        "set-up {:.1} s, total {:.1} s",
        set_up.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    for (v, (_, p)) in viewers.iter().zip(&checked) {
        assert!(
            p.max_added_gap_ms <= MAX_ADDED_GAP_MS,
            "{}: the output stalled {} ms longer than the input at packet {} of {} \
             (the largest: {:?})",
            v.name,
            p.max_added_gap_ms,
            p.at,
            p.out,
            p.worst
        );
    }
}
