//! Fail closed, on a real ffmpeg stream: a channel whose service_id is
//! not a program of its input (ffmpeg numbers its program 1; older docs
//! used 257) sends none of that input, announces nothing, and its health
//! says why and what the input has; a UDP input that stops shows as
//! `no_input` within two seconds.

use crate::common::UdpEncoder;
use crate::stream_support::*;
use headend::stream::{spawn_channel, Shutdown};
use headend_engine::stream::{ChannelStreamConfig, Withheld};
use std::net::UdpSocket;
use std::time::{Duration, Instant};
use ts::packet::{Packet, PacketReader, PACKET_LEN};
use ts::psi::{Pat, SectionAssembler};

const VIDEO: u16 = 0x100;
const AUDIO: u16 = 0x101;
const PMT: u16 = 0x1000;

/// What a channel put on the air, as far as these tests care.
#[derive(Debug, Default)]
struct Air {
    packets: usize,
    /// Packets on the A/V PIDs, and those with a payload sent clear.
    av: usize,
    clear_av: usize,
    pmt_packets: usize,
    pats: Vec<Pat>,
}

fn air(ts: &[u8]) -> Air {
    let mut a = Air::default();
    let mut reader = PacketReader::new();
    reader.push(ts);
    reader.finish();
    let mut pat = SectionAssembler::default();
    while let Some(p) = reader.next_packet() {
        let v = Packet::from_array(p).unwrap();
        a.packets += 1;
        match v.pid() {
            VIDEO | AUDIO => {
                a.av += 1;
                if v.has_payload() && v.scrambling().0 == 0 && !v.payload().is_empty() {
                    a.clear_av += 1;
                }
            }
            PMT => a.pmt_packets += 1,
            0 => {
                for s in pat.push(&v).into_iter().flatten() {
                    a.pats.push(Pat::from_section(&s).unwrap());
                }
            }
            _ => {}
        }
    }
    a
}

/// The feed of `stream_support` knowing services 3 and 257 as well: the
/// only thing wrong with these channels is their service_id.
fn feed_for_all() -> headend_engine::stream::EngineFeed {
    let (mut f, _) = feed(1000, 2);
    f.add_service(3, PRODUCT, 0);
    f.add_service(257, PRODUCT, 0);
    f
}

fn config(service: u16, input: &str, output: &str) -> ChannelStreamConfig {
    ChannelStreamConfig::new("news", input, output, EMM_PID).service(service, ECM_PID)
}

#[test]
fn service_257_on_an_ffmpeg_file_sends_nothing_and_says_why() {
    let Some(clear) = ffmpeg_ts(3) else { return };
    let input = clear.len() / PACKET_LEN;
    let dir = tempfile::tempdir().unwrap();
    let (inp, outp) = (dir.path().join("in.ts"), dir.path().join("out.ts"));
    std::fs::write(&inp, &clear).unwrap();
    let h = spawn_channel(
        config(257, inp.to_str().unwrap(), outp.to_str().unwrap()),
        feed_for_all(),
        Shutdown::new(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h.is_finished() {
        assert!(Instant::now() < deadline, "the file channel did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    let health = h.health();
    let stats = h.join().unwrap();
    let out = std::fs::read(&outp).unwrap();
    let a = air(&out);
    // None of the input: no A/V packet at all, no PMT, no PAT.
    assert_eq!(a.clear_av, 0, "{a:?}");
    assert_eq!(a.av + a.pmt_packets, 0, "{a:?}");
    assert!(a.pats.is_empty(), "{:?}", a.pats);
    assert!(a.packets > 0, "the CAT still goes out");
    assert_eq!(stats.clear_packets, 0);
    assert_eq!(stats.scrambled, 0);
    assert_eq!(stats.packets_in as usize, input);

    assert_eq!(health.input_packets as usize, input);
    assert_eq!(health.input_bytes as usize, clear.len());
    assert_eq!(health.clear_packets, 0);
    let s = &health.services[0];
    assert_eq!(s.service_id, 257);
    assert!(!s.on_air);
    assert_eq!(s.withheld, Some(Withheld::ServiceMissing));
    assert_eq!(
        s.detail.as_deref(),
        Some("the input's PAT lists program 1, not 257"),
        "{s:?}"
    );
    assert!(s.withheld_packets[&Withheld::ServiceMissing] > 100, "{s:?}");
    assert_eq!(s.clear_packets + s.scrambled_packets, 0);

    // Program 1 clear on purpose: it goes out, clear, and is announced.
    let mut cfg = config(257, inp.to_str().unwrap(), outp.to_str().unwrap());
    cfg.clear_services = vec![1];
    let h = spawn_channel(cfg, feed_for_all(), Shutdown::new()).unwrap();
    let stats = h.join().unwrap();
    let a = air(&std::fs::read(&outp).unwrap());
    assert!(a.clear_av > 100, "{a:?}");
    assert!(a
        .pats
        .iter()
        .all(|p| p.pmt_pid(1) == Some(PMT) && p.pmt_pid(257).is_none()));
    assert_eq!(stats.clear_packets, 0);
}

#[test]
fn service_3_on_an_ffmpeg_udp_feed_sends_nothing_and_then_shows_the_silence() {
    let Some(clear) = ffmpeg_ts(3) else { return };
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let out = format!("udp://{}", rx.local_addr().unwrap());
    let h = spawn_channel(
        config(3, "udp://127.0.0.1:0", &out),
        feed_for_all(),
        Shutdown::new(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let to = loop {
        if let Some(a) = h.input_addr() {
            break a;
        }
        assert!(Instant::now() < deadline, "the UDP input did not bind");
        std::thread::sleep(Duration::from_millis(10));
    };
    // Before any input: nothing read yet.
    let s = &h.health().services[0];
    assert_eq!(s.withheld, Some(Withheld::NoInput), "{s:?}");

    let encoder = UdpEncoder::start(clear, 3.0, to);
    let mut aired = Vec::new();
    let mut buf = vec![0u8; 65536];
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        if let Ok(n) = rx.recv(&mut buf) {
            aired.extend_from_slice(&buf[..n]);
        }
    }
    let health = h.health();
    let a = air(&aired);
    assert_eq!(a.clear_av, 0, "{a:?}");
    assert_eq!(a.av + a.pmt_packets, 0, "{a:?}");
    assert!(a.pats.is_empty(), "{:?}", a.pats);
    assert!(health.input_packets > 200, "{health:?}");
    assert!(health.input_bitrate_bps > 50_000, "{health:?}");
    let s = &health.services[0];
    assert_eq!(s.withheld, Some(Withheld::ServiceMissing), "{s:?}");
    assert_eq!(
        s.detail.as_deref(),
        Some("the input's PAT lists program 1, not 3")
    );
    assert_eq!(health.clear_packets + s.clear_packets, 0);

    // The encoder stops: within two seconds the input shows silent, its
    // last packet time stops moving and its bitrate falls to 0.
    encoder.stop();
    let stopped = Instant::now();
    let silent = loop {
        let health = h.health();
        if health.services[0].withheld == Some(Withheld::NoInput) {
            break health;
        }
        assert!(
            stopped.elapsed() < Duration::from_millis(2500),
            "{health:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(silent.services[0]
        .detail
        .as_deref()
        .unwrap()
        .starts_with("no input for"));
    let last = silent.last_input_unix_ms.expect("input was read");
    std::thread::sleep(Duration::from_millis(1500));
    let later = h.health();
    assert_eq!(later.last_input_unix_ms, Some(last));
    assert_eq!(later.input_bitrate_bps, 0, "{later:?}");
    assert_eq!(later.input_packets, silent.input_packets);
    h.stop();
    let stats = h.join().unwrap();
    assert_eq!(stats.clear_packets + stats.scrambled, 0);
}

/// A paced channel with nothing on the air sends little more than its
/// CAT; its reader must still keep to the clock, not stall waiting for
/// output that does not come (the input would then look silent).
#[test]
fn a_paced_looping_file_with_nothing_on_the_air_keeps_reading() {
    let Some(clear) = ffmpeg_ts(2) else { return };
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in.ts");
    std::fs::write(&inp, &clear).unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(
        257,
        inp.to_str().unwrap(),
        &format!("udp://{}", rx.local_addr().unwrap()),
    );
    cfg.loop_input = true;
    let h = spawn_channel(cfg, feed_for_all(), Shutdown::new()).unwrap();
    let mut last = 0;
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(800));
        let health = h.health();
        let s = &health.services[0];
        assert_eq!(s.withheld, Some(Withheld::ServiceMissing), "{health:?}");
        assert!(health.input_packets > last, "{health:?}");
        last = health.input_packets;
    }
    // About the clip's own pace (2 s a pass), not faster.
    let per_pass = (clear.len() / PACKET_LEN) as u64;
    assert!(last < 3 * per_pass, "{last} packets in 3.2 s");
    h.stop();
    assert_eq!(h.join().unwrap().clear_packets, 0);
}
