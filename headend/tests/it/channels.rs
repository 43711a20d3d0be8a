//! Channels changed live on a running `headend run`: added, updated and
//! removed through the API, on the air (UDP on 127.0.0.1, fed with an
//! ffmpeg-made TS) within a second, without a restart; every bad channel
//! definition refused with a 4xx naming the field; a stored channel that
//! fails turned off and reported while the others run.

use crate::common::*;
use serde_json::{json, Value};
use std::net::UdpSocket;
use std::time::{Duration, Instant};
use testkit::ffmpeg::ffmpeg_ts;
use ts::packet::{Packet, PacketReader};

/// Added to every PCR of the second input, so that the air tells which
/// input it carries: one hour, in 27 MHz ticks.
const SHIFT_TICKS: u64 = 3600 * 27_000_000;

/// The clip with every PCR moved `SHIFT_TICKS` later.
fn shifted(clip: &[u8]) -> Vec<u8> {
    let mut out = clip.to_vec();
    for p in out.chunks_exact_mut(188) {
        let has_pcr = p[0] == 0x47 && p[3] & 0x20 != 0 && p[4] >= 7 && p[5] & 0x10 != 0;
        if !has_pcr {
            continue;
        }
        let base = (u64::from(p[6]) << 25)
            | (u64::from(p[7]) << 17)
            | (u64::from(p[8]) << 9)
            | (u64::from(p[9]) << 1)
            | u64::from(p[10] >> 7);
        let ext = (u64::from(p[10] & 1) << 8) | u64::from(p[11]);
        let t = base * 300 + ext + SHIFT_TICKS;
        let (base, ext) = ((t / 300) & ((1 << 33) - 1), t % 300);
        p[6] = (base >> 25) as u8;
        p[7] = (base >> 17) as u8;
        p[8] = (base >> 9) as u8;
        p[9] = (base >> 1) as u8;
        p[10] = (((base & 1) as u8) << 7) | 0x7E | ((ext >> 8) as u8);
        p[11] = ext as u8;
    }
    out
}

/// The clip with its program (ffmpeg's 1) numbered `program` instead, in
/// the PAT and the PMT (each a section in one packet).
fn renumbered(clip: &[u8], program: u16) -> Vec<u8> {
    let mut out = clip.to_vec();
    for p in out.chunks_exact_mut(188) {
        let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
        let pusi = p[1] & 0x40 != 0;
        if !pusi || !(pid == 0 || pid == 0x1000) || p[3] & 0x30 != 0x10 {
            continue;
        }
        let at = 5 + usize::from(p[4]);
        let len = 3 + (usize::from(p[at + 1] & 0x0F) << 8 | usize::from(p[at + 2]));
        let section = &p[at..at + len];
        let new = if pid == 0 {
            let mut pat = ts::psi::Pat::from_section(section).unwrap();
            for e in &mut pat.programs {
                if e.program_number == 1 {
                    e.program_number = program;
                }
            }
            pat.to_section().unwrap()
        } else {
            let mut pmt = ts::psi::Pmt::from_section(section).unwrap();
            pmt.program_number = program;
            pmt.to_section().unwrap()
        };
        assert_eq!(new.len(), len);
        p[at..at + len].copy_from_slice(&new);
    }
    out
}

/// What a box on the air sees at one UDP port.
struct Air {
    sock: UdpSocket,
    reader: PacketReader,
}

/// What some time on the air held.
#[derive(Debug, Default)]
struct Seen {
    datagrams: usize,
    /// Audio and video packets with a payload, and how many were clear.
    es: usize,
    clear_es: usize,
    /// The PCRs of the video PID, in 27 MHz ticks.
    pcrs: Vec<u64>,
}

impl Air {
    fn new() -> Air {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        Air {
            sock,
            reader: PacketReader::new(),
        }
    }

    fn url(&self) -> String {
        format!("udp://{}", self.sock.local_addr().unwrap())
    }

    /// Reads for `d`, or until `until` holds.
    fn watch(&mut self, d: Duration, mut until: impl FnMut(&Seen) -> bool) -> Seen {
        let end = Instant::now() + d;
        let mut seen = Seen::default();
        let mut buf = vec![0u8; 65536];
        while Instant::now() < end && !until(&seen) {
            let Ok(n) = self.sock.recv(&mut buf) else {
                continue;
            };
            seen.datagrams += 1;
            self.reader.push(&buf[..n]);
            while let Some(p) = self.reader.next_packet() {
                let p = Packet::from_array(p).unwrap();
                if matches!(p.pid(), 0x100 | 0x101) && p.has_payload() {
                    seen.es += 1;
                    if p.scrambling().parity().is_none() {
                        seen.clear_es += 1;
                    }
                }
                if p.pid() == 0x100 {
                    if let Some(pcr) = p.pcr() {
                        seen.pcrs.push(pcr.ticks_27mhz());
                    }
                }
            }
        }
        seen
    }

    /// Empties the socket's queue.
    fn drain(&mut self) {
        let mut buf = vec![0u8; 65536];
        self.sock.set_nonblocking(true).unwrap();
        while self.sock.recv(&mut buf).is_ok() {}
        self.sock.set_nonblocking(false).unwrap();
        self.reader = PacketReader::new();
    }
}

fn call(h: &Headend, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    h.request(method, path, body.as_ref())
        .unwrap_or_else(|| panic!("{method} {path}: the daemon did not answer\n{}", h.log()))
}

/// The status of one channel, from `/api/v1/status`.
fn channel_status(h: &Headend, name: &str) -> Value {
    let v = h.get("/api/v1/status");
    v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no channel {name} in the status: {v:#}"))
}

fn wait_state(h: &Headend, name: &str, state: &str, within: Duration) -> Value {
    let end = Instant::now() + within;
    loop {
        let c = channel_status(h, name);
        if c["state"] == state {
            return c;
        }
        assert!(
            Instant::now() < end,
            "channel {name} not {state} within {within:?}: {c:#}\n{}",
            h.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn product(h: &Headend) {
    h.post("/api/v1/products", json!({"name": "basic"}));
}

#[test]
fn a_channel_goes_on_the_air_follows_its_new_input_and_goes_off_live() {
    let Some(clip) = ffmpeg_ts(4) else {
        return;
    };
    let mut h = Headend::init(BIN, 1000, Some(2000));
    h.start();
    product(&h);
    let (in_a, in_b) = (free_udp_addr(), free_udp_addr());
    let _a = UdpEncoder::start(clip.clone(), 4.0, in_a);
    let _b = UdpEncoder::start(shifted(&clip), 4.0, in_b);
    let mut air = Air::new();

    // Added: on the air within a second, scrambled.
    let t0 = Instant::now();
    let (st, v) = call(
        &h,
        "POST",
        "/api/v1/channels",
        Some(json!({
            "name": "live", "service_id": 1, "product": "basic",
            "ecm_pid": 0x1F0, "emm_pid": 0x1F1,
            "input": format!("udp://{in_a}"), "output": air.url(),
        })),
    );
    assert_eq!(st, 201, "{v}");
    let first = air.watch(Duration::from_secs(3), |s| s.es > 0);
    let took = t0.elapsed();
    assert!(first.es > 0, "nothing on the air\n{}", h.log());
    assert!(took < Duration::from_secs(1), "on the air after {took:?}");
    let seen = air.watch(Duration::from_millis(1500), |_| false);
    assert!(seen.es > 50, "{seen:?}");
    assert_eq!(seen.clear_es + first.clear_es, 0, "clear ES on the air");
    assert!(
        seen.pcrs.iter().all(|&p| p < SHIFT_TICKS),
        "input A's PCRs are below the shift"
    );
    let c = wait_state(&h, "live", "on_air", Duration::from_secs(3));
    assert!(c["input_packets"].as_u64().unwrap() > 0, "{c}");
    assert!(c["input_bitrate_bps"].as_u64().unwrap() > 0, "{c}");
    assert_eq!(call(&h, "GET", "/ready", None).0, 200);

    // Updated to input B: the air follows within a second.
    let t1 = Instant::now();
    let (st, v) = call(
        &h,
        "PATCH",
        "/api/v1/channels/live",
        Some(json!({"input": format!("udp://{in_b}")})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["input"], format!("udp://{in_b}"));
    let switched = air.watch(Duration::from_secs(3), |s| {
        s.pcrs.iter().any(|&p| p >= SHIFT_TICKS)
    });
    let took = t1.elapsed();
    assert!(
        switched.pcrs.iter().any(|&p| p >= SHIFT_TICKS),
        "the air never carried input B: {switched:?}\n{}",
        h.log()
    );
    assert!(
        took < Duration::from_secs(1),
        "input B on the air after {took:?}"
    );
    let after = air.watch(Duration::from_secs(1), |_| false);
    assert!(after.es > 20, "{after:?}");
    assert_eq!(switched.clear_es + after.clear_es, 0, "clear ES on the air");
    assert!(
        after.pcrs.iter().all(|&p| p >= SHIFT_TICKS),
        "input A still on the air after the update: {:?}",
        after.pcrs
    );

    // Removed: the air goes quiet at once, and its ECMs stop.
    let (st, v) = call(&h, "DELETE", "/api/v1/channels/1", None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["removed"], true);
    std::thread::sleep(Duration::from_millis(100));
    air.drain();
    let quiet = air.watch(Duration::from_secs(1), |s| s.datagrams > 0);
    assert_eq!(quiet.datagrams, 0, "still on the air after the remove");
    let sections = h.get("/api/v1/debug/sections");
    assert_eq!(sections["ecms"], json!([]), "the removed channel's ECM");
    assert_eq!(h.get("/api/v1/channels"), json!([]));
    assert_eq!(call(&h, "GET", "/ready", None).0, 200);
    assert_eq!(h.terminate().code(), Some(0), "{}", h.log());
}

/// Every bad channel definition an operator met on a first day, and a few more.
#[test]
fn bad_channels_are_refused_naming_the_field_and_the_daemon_still_starts() {
    let Some(clip) = ffmpeg_ts(2) else {
        return;
    };
    let mut h = Headend::init(BIN, 1000, Some(2000));
    std::fs::write(h.home().join("clip.ts"), &clip).unwrap();
    h.start();
    product(&h);
    let mut air = Air::new();
    let good = json!({
        "name": "good", "service_id": 1, "product": "basic",
        "ecm_pid": 0x1F0, "emm_pid": 0x1F1,
        "input": "clip.ts?loop", "output": air.url(),
    });
    let (st, v) = call(&h, "POST", "/api/v1/channels", Some(good.clone()));
    assert_eq!(st, 201, "{v}");
    let other = free_udp_addr();
    let base = json!({
        "name": "bad", "service_id": 2, "product": "basic",
        "ecm_pid": 0x1E0, "emm_pid": 0x1F1,
        "input": "clip.ts?loop", "output": format!("udp://{other}"),
    });
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (with("input", json!("rtp://127.0.0.1:5000")), 400, "input"),
        (with("input", json!("udp://127.0.0.1")), 400, "input"),
        (with("input", json!("udp://@:0")), 400, "input"),
        (with("input", json!("/nowhere/clip.ts")), 400, "input"),
        (with("input", json!("-")), 400, "input"),
        (with("ecm_pid", json!(0x1F1)), 400, "ecm_pid"),
        // The clip's video PID.
        (with("ecm_pid", json!(0x100)), 400, "ecm_pid"),
        (with("emm_pid", json!(0x101)), 400, "emm_pid"),
        (with("ecm_pid", json!(0)), 400, "ecm_pid"),
        (with("emm_pid", json!(0x1FFF)), 400, "emm_pid"),
        // Shared with the good channel.
        (with("ecm_pid", json!(0x1F0)), 409, "ecm_pid"),
        (with("emm_pid", json!(0x1F0)), 409, "emm_pid"),
        // The good channel's output from another input; with the same
        // input too it is a multiplex, which needs the same EMM PID.
        (
            {
                let mut b = with("output", json!(air.url()));
                b["input"] = json!("clip.ts");
                b
            },
            409,
            "output",
        ),
        (
            {
                let mut b = with("output", json!(air.url()));
                b["emm_pid"] = json!(0x1F2);
                b
            },
            409,
            "emm_pid",
        ),
        (
            with("output", json!("/etc/iodoform-test.ts")),
            400,
            "output",
        ),
        (with("output", json!("/nowhere/out.ts")), 400, "output"),
        (with("output", json!("udp://0.0.0.0:5000")), 400, "output"),
        (with("output", json!("clip.ts")), 400, "output"),
        (with("service_id", json!(0)), 400, "service_id"),
        (with("service_id", json!(1)), 409, "service_id"),
        (with("name", json!("good")), 409, "name"),
        (with("clear_services", json!([2])), 400, "clear_services"),
    ];
    for (body, want, field) in &cases {
        let (st, v) = call(&h, "POST", "/api/v1/channels", Some(body.clone()));
        let msg = v["error"].as_str().unwrap_or_default();
        assert_eq!(st, *want, "{body}: {v}");
        assert!(msg.starts_with(&format!("{field}:")), "{body}: {msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }
    // The same through an update of the good channel, which stays as it
    // was.
    for (body, want, field) in [
        (json!({"input": "rtp://127.0.0.1:5000"}), 400, "input"),
        (json!({"ecm_pid": 0x1F1}), 400, "ecm_pid"),
        (json!({"ecm_pid": 0x101}), 400, "ecm_pid"),
        (json!({"output": "/etc/x.ts"}), 400, "output"),
        (json!({"service_id": 5}), 400, "service_id"),
    ] {
        let (st, v) = call(&h, "PATCH", "/api/v1/channels/good", Some(body.clone()));
        assert_eq!(st, want, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().starts_with(field), "{v}");
    }
    let (_, g) = call(&h, "GET", "/api/v1/channels/1", None);
    assert_eq!(g["input"], "clip.ts?loop");
    assert_eq!(g["ecm_pid"], 0x1F0);
    for path in ["/api/v1/channels/99", "/api/v1/channels/nothing"] {
        assert_eq!(call(&h, "DELETE", path, None).0, 404, "{path}");
        assert_eq!(
            call(&h, "PATCH", path, Some(json!({"maturity": 1}))).0,
            404,
            "{path}"
        );
    }
    // The CLI says the same, in one line, and fails.
    let out = std::process::Command::new(BIN)
        .args(["--config"])
        .arg(h.config())
        .args(["channel", "add", "--name", "cli", "--service-id", "3"])
        .args([
            "--product",
            "basic",
            "--ecm-pid",
            "0x1E1",
            "--emm-pid",
            "0x1F1",
        ])
        .args(["--input", "rtp://127.0.0.1:5000", "--output", "/dev/null"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.status.code() != Some(101),
        "{out:?}"
    );
    assert!(
        err.contains("input:") && err.trim().lines().count() == 1,
        "{err}"
    );

    // Nothing bad was stored: the daemon starts again, the good channel
    // goes on the air.
    assert_eq!(h.terminate().code(), Some(0), "{}", h.log());
    h.start();
    let names: Vec<Value> = h
        .get("/api/v1/channels")
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, [json!("good")]);
    wait_state(&h, "good", "on_air", Duration::from_secs(5));
    air.drain();
    let seen = air.watch(Duration::from_secs(2), |s| s.es > 20);
    assert!(seen.es > 20, "{seen:?}");
    assert_eq!(seen.clear_es, 0);
    assert_eq!(call(&h, "GET", "/ready", None).0, 200);
}

#[test]
fn a_stored_channel_that_fails_is_reported_while_the_others_run() {
    let Some(clip) = ffmpeg_ts(2) else {
        return;
    };
    let mut h = Headend::init(BIN, 1000, Some(2000));
    std::fs::write(h.home().join("clip.ts"), &clip).unwrap();
    // Program 2: each channel is one service of the network.
    let clip2 = renumbered(&clip, 2);
    std::fs::write(h.home().join("gone.ts"), &clip2).unwrap();
    h.start();
    product(&h);
    let mut air = Air::new();
    let other = free_udp_addr();
    for (name, service, ecm, input, output) in [
        ("keep", 1, 0x1F0, "clip.ts?loop", air.url()),
        ("gone", 2, 0x1E0, "gone.ts?loop", format!("udp://{other}")),
    ] {
        let (st, v) = call(
            &h,
            "POST",
            "/api/v1/channels",
            Some(json!({
                "name": name, "service_id": service, "product": "basic",
                "ecm_pid": ecm, "emm_pid": 0x1F1, "input": input, "output": output,
            })),
        );
        assert_eq!(st, 201, "{v}");
    }
    assert_eq!(h.terminate().code(), Some(0));
    std::fs::remove_file(h.home().join("gone.ts")).unwrap();

    // The daemon starts all the same; "gone" is turned off and says why,
    // "keep" is on the air.
    h.start();
    let c = wait_state(&h, "gone", "failed", Duration::from_secs(3));
    let e = c["error"].as_str().unwrap();
    assert!(
        e.contains("added through the API") && e.contains("input") && e.contains("gone.ts"),
        "{e}"
    );
    wait_state(&h, "keep", "on_air", Duration::from_secs(5));
    let seen = air.watch(Duration::from_secs(2), |s| s.es > 20);
    assert!(seen.es > 20 && seen.clear_es == 0, "{seen:?}");
    let (st, r) = call(&h, "GET", "/ready", None);
    assert_eq!(st, 503, "{r}");
    assert_eq!(r["not_on_air"][0]["name"], "gone", "{r}");
    let (_, m) = call(&h, "GET", "/metrics", None);
    let m = m.as_str().unwrap().to_owned();
    assert!(
        m.contains("iodoform_channel_failed{channel=\"gone\",service=\"2\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("iodoform_channel_on_air{channel=\"keep\",service=\"1\"} 1"),
        "{m}"
    );
    let errors = h
        .log()
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("gone.ts"))
        .count();
    assert_eq!(errors, 1, "logged once:\n{}", h.log());

    // The file back and the channel touched: on the air at once.
    std::fs::write(h.home().join("gone.ts"), &clip2).unwrap();
    let (st, v) = call(
        &h,
        "PATCH",
        "/api/v1/channels/gone",
        Some(json!({"maturity": 0})),
    );
    assert_eq!(st, 200, "{v}");
    wait_state(&h, "gone", "on_air", Duration::from_secs(3));
    assert_eq!(call(&h, "GET", "/ready", None).0, 200);
}

#[test]
fn a_bad_channel_in_headend_toml_stops_the_start_naming_the_file() {
    let h = Headend::init(BIN, 1000, Some(2000));
    let mut cfg = std::fs::read_to_string(h.config()).unwrap();
    cfg.push_str(
        "\n[[channels]]\nname = \"news\"\nservice_id = 1\nproduct = \"basic\"\n\
         ecm_pid = 0x1F0\nemm_pid = 0x1F1\ninput = \"missing.ts\"\n\
         output = \"udp://127.0.0.1:5002\"\n",
    );
    std::fs::write(h.config(), cfg).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(h.config())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("headend.toml")
            && err.contains("channels[0].input")
            && err.contains("missing.ts"),
        "{err}"
    );
}
