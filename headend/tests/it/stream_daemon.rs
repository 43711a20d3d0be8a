//! `headend run` streams every configured channel: a real daemon process
//! scrambles an ffmpeg clip with the CWs of its own scheduler and sends it
//! to UDP, paced, with its ECMs and EMMs; an in-process card, fed only
//! from what is on the air, gets the CWs that descramble it.

use crate::common::*;
use std::collections::{HashMap, HashSet};
use std::net::UdpSocket;
use std::time::{Duration, Instant};
use ts::cissa::{Descrambler, Outcome};
use ts::packet::{Packet, PacketReader};
use ts::psi::{emm_section_address, Cat, Pat, Pmt, SectionAssembler, CA_SYSTEM_ID};

const CARD: u32 = 42;

#[test]
fn headend_run_streams_configured_channels_that_a_card_descrambles() {
    let Some(clear) = crate::stream_support::ffmpeg_ts(4) else {
        return;
    };
    let mut h = Headend::init(BIN, 300, Some(500));
    std::fs::write(h.home().join("clip.ts"), &clear).unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut cfg = std::fs::read_to_string(h.config()).unwrap();
    cfg.push_str(&format!(
        "\n[[channels]]\nname = \"one\"\nservice_id = 1\nproduct = \"basic\"\n\
         ecm_pid = 0x1F0\nemm_pid = 0x1F1\ninput = \"clip.ts?loop\"\n\
         output = \"udp://{}\"\n",
        rx.local_addr().unwrap()
    ));
    std::fs::write(h.config(), cfg).unwrap();
    h.start();
    let (mut card, public) = new_card(&operator(&h), CARD);
    register(&h, CARD, &public);
    h.post(
        "/api/v1/subscriptions",
        plan_subscription(CARD, "basic", "2099-12-31"),
    );

    // What a receiver does, in stream order.
    let clear_payloads: HashSet<Vec<u8>> = crate::stream_support::packets_by_pid(&clear)
        .into_iter()
        .filter(|(pid, _)| matches!(pid, 0x100 | 0x101))
        .flat_map(|(_, v)| v)
        .map(|p| p[6..].to_vec())
        .collect();
    let mut reader = PacketReader::new();
    let mut asm: HashMap<u16, SectionAssembler> = HashMap::new();
    let (mut pmt_pid, mut ecm_pid, mut emm_pid) = (None, None, None);
    let mut d = Descrambler::new();
    let mut last_ecm: Option<Vec<u8>> = None;
    let (mut have_cw, mut good, mut bad, mut emms_taken, mut cw_changes) = (false, 0, 0, 0, 0);
    let mut buf = vec![0u8; 65536];
    let started = Instant::now();
    let mut first_datagram = None;
    let mut bytes = 0usize;
    while started.elapsed() < Duration::from_secs(20) && (good < 300 || cw_changes < 4) {
        let Ok(n) = rx.recv(&mut buf) else { continue };
        first_datagram.get_or_insert_with(Instant::now);
        bytes += n;
        reader.push(&buf[..n]);
        while let Some(p) = reader.next_packet() {
            let v = Packet::from_array(p).unwrap();
            let pid = v.pid();
            if matches!(pid, 0x100 | 0x101) {
                if !v.has_payload() {
                    continue;
                }
                assert_ne!(v.scrambling().0, 0, "clear ES packet on the air");
                if !have_cw {
                    continue;
                }
                let mut b = *p;
                match d.descramble(&mut b) {
                    Ok(Outcome::Done(_)) if clear_payloads.contains(&b[6..]) => good += 1,
                    _ => bad += 1,
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
            let sections = asm.entry(pid).or_default().push(&v);
            for s in sections.into_iter().flatten() {
                match s[0] {
                    0x00 => pmt_pid = Pat::from_section(&s).unwrap().pmt_pid(1),
                    0x01 => emm_pid = Cat::from_section(&s).unwrap().emm_pid(CA_SYSTEM_ID),
                    0x02 => {
                        let pmt = Pmt::from_section(&s).unwrap();
                        ecm_pid = pmt.ca_descriptors(CA_SYSTEM_ID).first().map(|c| c.ca_pid);
                    }
                    0x80 | 0x81 => {
                        // A new ECM (as the receiver does: by its bytes,
                        // not only its table_id, since a stalled scheduler
                        // may skip an epoch), or any until the card answers.
                        if last_ecm.as_ref() == Some(&s) && have_cw {
                            continue;
                        }
                        if let Ok(cws) = card.process_ecm(&s[3..]) {
                            d.set_even(&cws.cws.even);
                            d.set_odd(&cws.cws.odd);
                            if have_cw {
                                cw_changes += 1;
                            }
                            have_cw = true;
                            last_ecm = Some(s);
                        }
                    }
                    0x82..=0x8F => {
                        // Only this card's EMMs and global ones reach it;
                        // repeats of the carousel are refused as replays.
                        let addr = emm_section_address(&s);
                        if (addr == Some(CARD) || addr == Some(proto::emm::GLOBAL_ADDRESS))
                            && card.process_emm(&s[3..]).is_ok()
                        {
                            emms_taken += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let took = first_datagram.map(|t| t.elapsed()).unwrap_or_default();
    let status = h.terminate();
    assert!(status.success(), "{status}; log:\n{}", h.log());
    assert!(
        good >= 300 && cw_changes >= 4,
        "descrambled {good}, failed {bad}, {cw_changes} CW changes, {emms_taken} EMMs; log:\n{}",
        h.log()
    );
    assert_eq!(bad, 0, "packets the card's CWs did not descramble");
    assert!(emms_taken >= 1);
    // Live pace: the clip runs at about 35 kB/s with the CA data, far
    // slower than the loop could go.
    let rate = bytes as f64 / took.as_secs_f64();
    assert!(rate < 100_000.0, "{bytes} bytes in {took:?}");
}

#[test]
fn a_channel_with_a_bad_url_is_a_config_error() {
    let h = Headend::init(BIN, 1000, Some(2000));
    let mut cfg = std::fs::read_to_string(h.config()).unwrap();
    cfg.push_str(
        "\n[[channels]]\nname = \"broken\"\nservice_id = 3\nproduct = \"basic\"\n\
         ecm_pid = 0x1F0\nemm_pid = 0x1F1\ninput = \"rtp://127.0.0.1:5000\"\n\
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
    assert!(err.contains("broken") && err.contains("rtp://"), "{err}");
}

/// What reached the air of a channel whose service is withheld: A/V
/// packets (any, and those with a clear payload), PAT and PMT packets.
#[derive(Debug, Default)]
struct Leak {
    packets: usize,
    av: usize,
    clear_av: usize,
    pat: usize,
    pmt: usize,
}

fn leak(air: &[u8]) -> Leak {
    let mut l = Leak::default();
    let mut reader = PacketReader::new();
    reader.push(air);
    reader.finish();
    while let Some(p) = reader.next_packet() {
        let v = Packet::from_array(p).unwrap();
        l.packets += 1;
        match v.pid() {
            0x100 | 0x101 => {
                l.av += 1;
                if v.scrambling().0 == 0 && !v.payload().is_empty() {
                    l.clear_av += 1;
                }
            }
            0 => l.pat += 1,
            0x1000 => l.pmt += 1,
            _ => {}
        }
    }
    l
}

/// Video frames that ffprobe decodes from `air`.
fn decodable_frames(h: &Headend, air: &[u8]) -> u64 {
    let file = h.home().join("air.ts");
    std::fs::write(&file, air).unwrap();
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&file)
        .output()
        .expect("ffprobe (installed with ffmpeg)");
    String::from_utf8_lossy(&probe.stdout)
        .lines()
        .find_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .unwrap_or(0)
}

/// Datagrams for `secs` seconds.
fn record(rx: &UdpSocket, secs: u64) -> Vec<u8> {
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut air = Vec::new();
    let mut buf = vec![0u8; 65536];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        if let Ok(n) = rx.recv(&mut buf) {
            air.extend_from_slice(&buf[..n]);
        }
    }
    air
}

/// The channel's entry in `headend status` names the cause, the input's
/// programs and the fix; the metrics count no clear packet and the
/// withheld ones; the log has one ERROR for it.
fn check_reported(h: &Headend, name: &str, service: u16) {
    let status = h.get("/api/v1/status");
    let ch = status["channels"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no channel {name:?} in {status}"));
    assert_eq!(ch["cause"], "service_missing", "{ch}");
    let detail = format!("the input's PAT lists program 1, not {service}");
    assert_eq!(ch["detail"], detail.as_str(), "{ch}");
    assert!(
        ch["fix"].as_str().is_some_and(|f| f.contains("service_id")),
        "{ch}"
    );
    let (_, metrics) = h.request("GET", "/metrics", None).expect("daemon answers");
    let metrics = metrics.as_str().unwrap_or_default();
    let mine = |l: &&str| l.contains(&format!("channel=\"{name}\""));
    let clear = metrics
        .lines()
        .filter(mine)
        .find(|l| l.starts_with("iodoform_channel_clear_packets_total{"))
        .unwrap_or_else(|| panic!("no clear-packets metric:\n{metrics}"));
    assert!(clear.ends_with(" 0"), "{clear}");
    assert!(
        metrics.lines().filter(mine).any(|l| l
            .starts_with("iodoform_channel_withheld_packets_total{")
            && l.contains("cause=\"service_missing\"")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    let log = h.log();
    let line = format!(
        "channel \"{name}\": service {service} is off the air: {detail}; set the channel's service_id"
    );
    assert_eq!(
        log.matches(&line).count(),
        1,
        "one ERROR for the cause; log:\n{log}"
    );
}

/// A service-id mismatch: a config channel for service 3 fed
/// by `ffmpeg ... -f mpegts udp://...`, whose program is 1. Nothing of it
/// reaches the air (no A/V packet, clear or not, no PAT or PMT, no frame
/// that ffprobe can decode), and the status, the metrics and the log name
/// the cause and the input's programs.
#[test]
fn headend_run_puts_nothing_clear_on_the_air_for_a_service_not_in_its_udp_input() {
    let Some(clear) = crate::stream_support::ffmpeg_ts(3) else {
        return;
    };
    let mut h = Headend::init(BIN, 1000, Some(2000));
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let input = free_udp_addr();
    let mut cfg = std::fs::read_to_string(h.config()).unwrap();
    cfg.push_str(&format!(
        "\n[[channels]]\nname = \"news\"\nservice_id = 3\nproduct = \"basic\"\n\
         ecm_pid = 0x1F0\nemm_pid = 0x1F1\ninput = \"udp://{input}\"\n\
         output = \"udp://{}\"\n",
        rx.local_addr().unwrap()
    ));
    std::fs::write(h.config(), cfg).unwrap();
    h.start();
    let encoder = UdpEncoder::start(clear, 3.0, input);
    let air = record(&rx, 4);
    // While the input still runs.
    check_reported(&h, "news", 3);
    encoder.stop();
    let l = leak(&air);
    assert!(
        l.packets > 0,
        "the channel's CAT goes out; log:\n{}",
        h.log()
    );
    assert_eq!(l.clear_av, 0, "clear A/V packets on the air: {l:?}");
    assert_eq!(l.av + l.pat + l.pmt, 0, "the input reached the air: {l:?}");
    assert_eq!(
        decodable_frames(&h, &air),
        0,
        "ffprobe decoded video off the air"
    );
}

/// The second reproduction: a channel added through the API for service
/// 257 (the old docs' 0x101) on a file input.
#[test]
fn headend_run_puts_nothing_clear_on_the_air_for_an_api_channel_on_a_file() {
    let Some(clear) = crate::stream_support::ffmpeg_ts(3) else {
        return;
    };
    let mut h = Headend::init(BIN, 1000, Some(2000));
    std::fs::write(h.home().join("clip.ts"), &clear).unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    h.start();
    h.post("/api/v1/products", serde_json::json!({"name": "basic"}));
    let (st, v) = h
        .request(
            "POST",
            "/api/v1/channels",
            Some(&serde_json::json!({
                "name": "sport", "service_id": 257, "product": "basic",
                "ecm_pid": 0x1F0, "emm_pid": 0x1F1,
                "input": format!("{}?loop", h.home().join("clip.ts").display()),
                "output": format!("udp://{}", rx.local_addr().unwrap()),
            })),
        )
        .expect("daemon answers");
    assert_eq!(st, 201, "{v}");
    let air = record(&rx, 3);
    check_reported(&h, "sport", 257);
    let l = leak(&air);
    assert!(
        l.packets > 0,
        "the channel's CAT goes out; log:\n{}",
        h.log()
    );
    assert_eq!(l.clear_av, 0, "clear A/V packets on the air: {l:?}");
    assert_eq!(l.av + l.pat + l.pmt, 0, "the input reached the air: {l:?}");
    assert_eq!(
        decodable_frames(&h, &air),
        0,
        "ffprobe decoded video off the air"
    );
}
