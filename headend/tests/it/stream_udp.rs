//! The stream engine over UDP on loopback: output paced by the PCR as a
//! live source would be, input in datagrams with garbage in between.

use crate::stream_support::*;
use headend::stream::{spawn_channel, ChannelHandle, Shutdown};
use headend_engine::stream::{ChannelStreamConfig, Pacing};
use std::net::UdpSocket;
use std::time::{Duration, Instant};
use ts::packet::{Packets, PACKET_LEN};

const VIDEO: u16 = 0x100;
const AUDIO: u16 = 0x101;

/// Bytes with no sync byte, so that they cannot look like a packet.
fn garbage(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31) | 0x80)
        .map(|b| if b == 0x47 { 0x48 } else { b })
        .collect()
}

/// Receives datagrams until none comes for `idle`, with their arrival
/// times.
fn receive_all(sock: &UdpSocket, idle: Duration, limit: Duration) -> Vec<(Instant, Vec<u8>)> {
    sock.set_read_timeout(Some(idle)).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while started.elapsed() < limit {
        match sock.recv(&mut buf) {
            Ok(n) => got.push((Instant::now(), buf[..n].to_vec())),
            Err(_) if !got.is_empty() => break,
            Err(_) => {}
        }
    }
    got
}

/// A channel reading UDP on a free loopback port and sending to `rx`,
/// with `pacing`; its handle, the product key and where its input is.
fn udp_channel(
    name: &str,
    rx: &UdpSocket,
    pacing: Pacing,
) -> (
    ChannelHandle,
    proto::secret::ProductKey,
    std::net::SocketAddr,
) {
    let (feed, key) = feed(200, 10);
    let mut cfg = ChannelStreamConfig::new(
        name,
        "udp://127.0.0.1:0",
        format!("udp://{}", rx.local_addr().unwrap()),
        EMM_PID,
    )
    .service(SERVICE, ECM_PID);
    cfg.start_unix_ms = Some(START_MS);
    cfg.pacing = pacing;
    let h = spawn_channel(cfg, feed, Shutdown::new()).unwrap();
    let t = Instant::now();
    let addr = loop {
        if let Some(a) = h.input_addr() {
            break a;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "input never bound");
        std::thread::sleep(Duration::from_millis(2));
    };
    (h, key, addr)
}

fn check_descrambled(out: &[u8], clear: &[u8], key: &proto::secret::ProductKey) {
    let a = analyze(out, key, &[VIDEO, AUDIO]);
    assert!(a.psi_errors.is_empty(), "{:?}", a.psi_errors);
    assert!(a.cc_errors.is_empty(), "{:?}", a.cc_errors);
    assert_eq!(a.clear_es + a.wrong_parity + a.undecryptable, 0);
    let input = packets_by_pid(clear);
    for pid in [VIDEO, AUDIO] {
        assert!(
            a.es[&pid] == with_payload(&input[&pid]),
            "PID {pid:#x}: descrambled output differs from the input"
        );
    }
}

#[test]
fn file_to_udp_is_paced_by_the_pcr_and_resyncs_after_garbage() {
    let Some(clear) = ffmpeg_ts(2) else { return };
    // Garbage in the middle of the file, between two packets: the reader
    // skips it and every packet survives.
    let cut = (clear.len() / PACKET_LEN / 2) * PACKET_LEN;
    let junk = garbage(300);
    let mut input = clear[..cut].to_vec();
    input.extend_from_slice(&junk);
    input.extend_from_slice(&clear[cut..]);
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in.ts");
    std::fs::write(&inp, &input).unwrap();

    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest = format!("udp://{}", rx.local_addr().unwrap());
    let (feed, key) = feed(200, 10);
    let mut cfg = ChannelStreamConfig::new("udp", inp.to_str().unwrap(), dest, EMM_PID)
        .service(SERVICE, ECM_PID);
    cfg.start_unix_ms = Some(START_MS);
    let h = spawn_channel(cfg, feed, Shutdown::new()).unwrap();
    let got = receive_all(&rx, Duration::from_millis(600), Duration::from_secs(20));
    let stats = h.join().unwrap();
    assert_eq!(stats.skipped_bytes, junk.len() as u64, "{stats:?}");
    assert_eq!(stats.sync_losses, 1);

    // 7 packets per datagram (the last may be short), nothing lost.
    let n = got.len();
    for (_, d) in &got[..n - 1] {
        assert_eq!(d.len(), 7 * PACKET_LEN);
    }
    let out: Vec<u8> = got.iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(out.len() as u64, stats.packets_out * PACKET_LEN as u64);

    // Paced: the datagrams span about the stream's own duration.
    let span = analyze(&out, &key, &[VIDEO, AUDIO]).duration();
    let took = (got[n - 1].0 - got[0].0).as_secs_f64();
    assert!(
        took > 0.8 * span && took < 1.3 * span + 0.3,
        "sent {span:.2} s of stream in {took:.2} s"
    );
    check_descrambled(&out, &clear, &key);
}

#[test]
fn udp_input_in_odd_datagrams_with_garbage_datagrams() {
    let Some(clear) = ffmpeg_ts(2) else { return };
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (h, key, addr) = udp_channel("udp-in", &rx, Pacing::Never);
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Datagrams of 5 packets and a half, so that packets straddle them,
    // and a datagram of garbage every 20.
    let chunk = 5 * PACKET_LEN + PACKET_LEN / 2;
    let mut junk_total = 0;
    for (i, d) in clear.chunks(chunk).enumerate() {
        tx.send_to(d, addr).unwrap();
        if i % 20 == 9 {
            // After an even number of datagrams: between two packets.
            assert_eq!((i + 1) * chunk % PACKET_LEN, 0);
            let j = garbage(100);
            tx.send_to(&j, addr).unwrap();
            junk_total += j.len();
        }
        if i % 8 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let got = receive_all(&rx, Duration::from_millis(500), Duration::from_secs(20));
    h.stop();
    let stats = h.join().unwrap();
    assert_eq!(stats.skipped_bytes, junk_total as u64, "{stats:?}");
    let out: Vec<u8> = got.iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(Packets::new(&out).count() as u64, stats.packets_out);
    check_descrambled(&out, &clear, &key);
}

#[test]
fn a_paced_channel_stops_promptly() {
    let Some(clear) = ffmpeg_ts(4) else { return };
    let dir = tempfile::tempdir().unwrap();
    let inp = dir.path().join("in.ts");
    std::fs::write(&inp, &clear).unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (feed, _) = feed(200, 10);
    let mut cfg = ChannelStreamConfig::new(
        "stop",
        inp.to_str().unwrap(),
        format!("udp://{}", rx.local_addr().unwrap()),
        EMM_PID,
    )
    .service(SERVICE, ECM_PID);
    cfg.loop_input = true;
    let h = spawn_channel(cfg, feed, Shutdown::new()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    h.stop();
    let stats = h.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "took {:?}",
        t.elapsed()
    );
    // Paced, and the reader held to at most 300 ms ahead of the sending:
    // not much more than 600 ms of the 4 s file were made (about 190
    // packets a second, plus the PSI, ECMs and the first EMM burst).
    assert!(stats.packets_in < 250, "{stats:?}");
    assert_eq!(stats.loops, 0);
    assert!(stats.packets_out > 20, "{stats:?}");
}

/// A live UDP input after a stall: the headend's reading stopped for
/// 1.5 s (here the source sends nothing, then the 1.5 s it owed at once,
/// which is what a stalled reader finds in its socket buffer), then the
/// stream goes on live. The output catches up at once: its last packet
/// leaves soon after the input's last, and nothing is lost. A clock that
/// only re-based would keep the 1.5 s of lag for good, with that much of
/// the input waiting in the socket, where the next burst overflows it.
#[test]
fn a_live_input_leaves_no_lag_after_a_stall() {
    let Some(clear) = ffmpeg_ts(4) else { return };
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Paced, as a UDP output is by default.
    let (h, key, addr) = udp_channel("live", &rx, Pacing::Auto);
    // Each datagram of 7 packets is due at the air time of the last PCR
    // before it, as an encoder sends them.
    let mut due = Vec::new();
    let (mut first, mut last) = (None, 0.0);
    let datagrams: Vec<Vec<u8>> = clear.chunks(7 * PACKET_LEN).map(<[u8]>::to_vec).collect();
    for d in &datagrams {
        due.push(last);
        for p in Packets::new(d) {
            let pcr = ts::packet::Packet::from_array(p)
                .ok()
                .filter(|v| v.pid() == VIDEO)
                .and_then(|v| v.pcr());
            if let Some(pcr) = pcr {
                let ticks = pcr.ticks_27mhz();
                last = (ticks - *first.get_or_insert(ticks)) as f64 / 27e6;
            }
        }
    }
    let (stall_from, stall_to) = (1.0, 2.5);
    let sender = std::thread::spawn(move || {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        for (d, due) in datagrams.iter().zip(due) {
            let at = if (stall_from..stall_to).contains(&due) {
                stall_to
            } else {
                due
            };
            let at = start + Duration::from_secs_f64(at);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            tx.send_to(d, addr).unwrap();
        }
        Instant::now()
    });
    // The output pauses with the input (1.5 s).
    let got = receive_all(&rx, Duration::from_millis(2500), Duration::from_secs(20));
    let last_in = sender.join().unwrap();
    h.stop();
    let stats = h.join().unwrap();
    assert_eq!(stats.input_cc_errors, 0, "{stats:?}");
    let lag = got.last().unwrap().0.saturating_duration_since(last_in);
    assert!(
        lag < Duration::from_millis(400),
        "the last packet left {lag:?} after the input's last: {stats:?}"
    );
    let out: Vec<u8> = got.iter().flat_map(|(_, d)| d.clone()).collect();
    check_descrambled(&out, &clear, &key);
}
