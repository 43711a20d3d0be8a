//! The `zap` figure: how long a receiver takes from its start to its first
//! clear packet, on a live-paced stream. The goal is the ECM repetition
//! interval (100 ms by default) plus 10 ms: a receiver that starts at a
//! random moment waits at most one ECM interval for an ECM, and the PAT and
//! PMT come at least as often.
//!
//! [`zap_ms`] plays a scrambled TS over loopback UDP, paced by its PCR as a
//! live source would be ([`pace_udp`]), starts a receiver part-way into it
//! ([`zap_once`]) and times it: binding the input, opening the card link
//! (SELECT, GET INFO, ESTABLISH SESSION), finding the service, and the
//! first ECM. The caller brings the stream and the card, so the figure can
//! be taken through the real pcscd ([`crate::PcscCard`]) or in process:
//!
//! ```text
//! // perf.rs (sketch): a 6 s scrambled stream from the headend's engine
//! let (scrambled, ..) = headend_engine::stream::process_buffer(&cfg, feed, &clear, start_ms)?;
//! let figure = receiver::bench::zap_ms(&scrambled, &mut || Box::new(PcscCard::default()),
//!                                      &identity, 10, 100)?;
//! ```
//!
//! The stream should be a few seconds long with ECMs every 100 ms; each
//! trial joins it at a different offset, and a trial's sender stops as
//! soon as the receiver has its first clear packet.

use crate::card::{CardConnector, CardLink, LinkOptions};
use crate::error::Failure;
use crate::pipeline::{Discard, Pipeline, PipelineOptions};
use proto::crypto::X25519Secret;
use serde_json::{json, Value};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use ts::packet::Packets;
use ts::{Packet, PACKET_LEN};

use crate::io::PACKETS_PER_DATAGRAM;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ZapError {
    #[error("the stream is too short for a zap trial ({0:.1} s of PCR)")]
    TooShort(f64),
    #[error("no clear packet within {0:?}")]
    Timeout(Duration),
    #[error("the receiver stopped: {0}")]
    Receiver(#[from] Failure),
    #[error("UDP: {0}")]
    Io(#[from] io::Error),
}

/// When each packet of `stream` goes on the air, in seconds from the first
/// one: linear between the PCRs of the first PID that carries them.
pub fn air_times(stream: &[u8]) -> Vec<f64> {
    let packets: Vec<&[u8; PACKET_LEN]> = Packets::new(stream).collect();
    let mut pcr_pid = None;
    let mut marks: Vec<(usize, f64)> = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        let Ok(v) = Packet::from_array(p) else {
            continue;
        };
        if let Some(pcr) = v.pcr() {
            if *pcr_pid.get_or_insert(v.pid()) == v.pid() {
                let t = pcr.ticks_27mhz() as f64 / 27e6;
                // A PCR that goes back (a loop, a wrap) restarts the marks'
                // time from the last one.
                match marks.last() {
                    Some(&(_, last)) if t < last => marks.clear(),
                    _ => {}
                }
                marks.push((i, t));
            }
        }
    }
    let n = packets.len();
    if marks.len() < 2 {
        // No usable PCR: 4 Mbit/s.
        return (0..n)
            .map(|i| i as f64 * PACKET_LEN as f64 * 8.0 / 4e6)
            .collect();
    }
    let t0 = marks[0].1;
    let mut out = Vec::with_capacity(n);
    let mut k = 0;
    for i in 0..n {
        while k + 2 < marks.len() && marks[k + 1].0 <= i {
            k += 1;
        }
        let (i0, a) = marks[k];
        let (i1, b) = marks[k + 1];
        let t = a + (b - a) * (i as f64 - i0 as f64) / (i1 - i0).max(1) as f64;
        out.push((t - t0).max(0.0));
    }
    out
}

/// Sends `stream` to `to` as a live source would: 7 packets per datagram,
/// each at its PCR time. Returns when the stream ends or `stop` is set.
pub fn pace_udp(stream: &[u8], to: SocketAddr, stop: &AtomicBool) -> io::Result<()> {
    let times = air_times(stream);
    let packets: Vec<&[u8; PACKET_LEN]> = Packets::new(stream).collect();
    let sock = UdpSocket::bind(match to {
        SocketAddr::V4(_) => "0.0.0.0:0",
        SocketAddr::V6(_) => "[::]:0",
    })?;
    let start = Instant::now();
    let mut buf = Vec::with_capacity(PACKET_LEN * PACKETS_PER_DATAGRAM);
    for (chunk, t) in packets
        .chunks(PACKETS_PER_DATAGRAM)
        .zip(times.chunks(PACKETS_PER_DATAGRAM))
    {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let due = start + Duration::from_secs_f64(t[0]);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        buf.clear();
        for p in chunk {
            buf.extend_from_slice(&p[..]);
        }
        // Nobody listening yet is normal for a live source.
        let _ = sock.send_to(&buf, to);
    }
    Ok(())
}

/// A free loopback UDP port (bound and released; another program could
/// take it in between, which a benchmark can live with).
fn free_port() -> io::Result<SocketAddr> {
    UdpSocket::bind("127.0.0.1:0")?.local_addr()
}

/// One zap: the stream is played live from its start, and `join_after`
/// into it a receiver starts. Returns the time from the receiver's start
/// (before it binds its socket and opens the card) to its first
/// descrambled packet.
pub fn zap_once(
    stream: &[u8],
    connector: Box<dyn CardConnector>,
    identity: X25519Secret,
    join_after: Duration,
    timeout: Duration,
) -> Result<Duration, ZapError> {
    let addr = free_port()?;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stream = stream.to_vec();
        let stop = stop.clone();
        std::thread::spawn(move || pace_udp(&stream, addr, &stop))
    };
    std::thread::sleep(join_after);
    let result = receive_until_clear(addr, connector, identity, timeout);
    stop.store(true, Ordering::Relaxed);
    let _ = sender.join();
    result
}

fn receive_until_clear(
    addr: SocketAddr,
    connector: Box<dyn CardConnector>,
    identity: X25519Secret,
    timeout: Duration,
) -> Result<Duration, ZapError> {
    let start = Instant::now();
    let sock = UdpSocket::bind(addr)?;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let link =
        CardLink::open(connector, identity, LinkOptions::default()).map_err(Failure::from)?;
    let mut pipeline = Pipeline::new(link, PipelineOptions::default());
    let mut buf = vec![0u8; 65_536];
    while start.elapsed() < timeout {
        match sock.recv(&mut buf) {
            Ok(n) => pipeline.push(&buf[..n], &mut Discard)?,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(t) = pipeline.first_clear_at() {
            return Ok(t.duration_since(start));
        }
    }
    Err(ZapError::Timeout(timeout))
}

/// The `zap` figure over `trials` zaps at offsets spread over the stream:
/// `ours` is the median in ms, `limit` the ECM repetition interval.
pub fn zap_ms(
    stream: &[u8],
    connector: &mut dyn FnMut() -> Box<dyn CardConnector>,
    identity: &X25519Secret,
    trials: usize,
    ecm_interval_ms: u64,
) -> Result<Value, ZapError> {
    let duration = air_times(stream).last().copied().unwrap_or(0.0);
    // Each trial needs a second or so of stream after it joins.
    let span = duration - 1.5;
    if span < 0.2 {
        return Err(ZapError::TooShort(duration));
    }
    let trials = trials.max(1);
    let mut samples = Vec::with_capacity(trials);
    for i in 0..trials {
        // Each trial joins at a whole number of ECM intervals into the
        // span (spread by the golden ratio), plus its own fixed position
        // inside the interval: the positions cover the interval evenly
        // whatever the stream's length, so the median is not an accident
        // of where the span's length falls against the interval.
        let interval = ecm_interval_ms.max(1) as f64 / 1000.0;
        let slots = (((span - 0.3).max(0.0) / interval).floor()).max(1.0);
        let slot = ((i as f64 * 0.618_034).fract() * slots).floor();
        let within = (i as f64 + 0.5) / trials as f64 * interval;
        let join = Duration::from_secs_f64(0.3 + slot * interval + within);
        let z = zap_once(
            stream,
            connector(),
            identity.clone(),
            join,
            Duration::from_secs(5),
        )?;
        samples.push(z.as_secs_f64() * 1000.0);
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let round = |v: f64| (v * 100.0).round() / 100.0;
    Ok(json!({
        "figure": "zap",
        "ours": round(pct(0.5)),
        "limit": ecm_interval_ms,
        "goal_ms": ecm_interval_ms + 10,
        "p90_ms": round(pct(0.9)),
        "max_ms": round(sorted[sorted.len() - 1]),
        "unit": "ms",
        "trials": trials,
        "samples_ms": samples.iter().map(|&s| round(s)).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ts::packet::{PacketBuilder, Pcr};

    #[test]
    fn air_times_interpolate_between_pcrs() {
        let mut s = Vec::new();
        for i in 0..10u64 {
            let mut b = PacketBuilder::new(0x100);
            if i % 5 == 0 {
                // 100 ms per 5 packets.
                b.pcr = Some(Pcr::from_27mhz(1_000_000 + i / 5 * 2_700_000));
            }
            s.extend_from_slice(&b.build(&[0; 100]).unwrap().0);
        }
        let t = air_times(&s);
        assert_eq!(t.len(), 10);
        assert!((t[0] - 0.0).abs() < 1e-9);
        assert!((t[5] - 0.1).abs() < 1e-9);
        assert!((t[2] - 0.04).abs() < 1e-9);
        assert!((t[9] - 0.18).abs() < 1e-9, "{}", t[9]);
    }
}
