//! The card side of the vpcd protocol: the applet as a virtual card behind
//! the system's real pcscd.
//!
//! The `vsmartcard-vpcd` reader driver, loaded by pcscd, listens on a TCP
//! port per slot (35963 for "Virtual PCD 00 00", 35964 for "Virtual PCD 00
//! 01" in Debian's stock configuration). The virtual card connects to it;
//! a connected card is a card in the reader, and a closed connection is a
//! card pulled out. Every message in either direction is a 2-byte
//! big-endian length and that many bytes:
//!
//! - a 1-byte message from the reader is a control code: 0 power off,
//!   1 power on, 2 reset, 4 "send your ATR" (the only one answered);
//! - anything longer is a command APDU, answered by the response APDU.
//!
//! The reader's driver writes the length and the body with two `send`s,
//! and with Nagle's algorithm on its side the body waits for our ACK of the
//! length. Our delayed ACK would hold that for ~40 ms on every APDU, so the
//! socket has TCP_NODELAY and TCP_QUICKACK is re-armed before every read
//! (Linux clears it by itself).
//!
//! A [`Timing`] makes the virtual card as slow as a real one, and
//! [`VirtualCard::with_short_apdus`] makes it refuse extended-length
//! commands as a T=0 card does: long commands then come by chaining and
//! long responses by GET RESPONSE, which the applet handles in any mode.
//!
//! This module must never panic on what the reader sends: every malformed
//! message is answered or ignored, and a broken connection is a removal,
//! followed by a reconnection with backoff.

use card::{Applet, Eeprom, ATR};
use proto::apdu::{is_extended_encoding, Response, StatusWord};
use socket2::SockRef;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where Debian's stock vpcd configuration waits for the first card.
pub const DEFAULT_ADDR: &str = "127.0.0.1:35963";

/// Control codes: a message of exactly one byte.
pub const CTRL_OFF: u8 = 0;
pub const CTRL_ON: u8 = 1;
pub const CTRL_RESET: u8 = 2;
pub const CTRL_ATR: u8 = 4;

/// How long the card takes over an APDU, counted from the command's
/// arrival to the response's departure; the parts add up. The default
/// answers at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// A fixed time per APDU.
    pub per_apdu: Duration,
    /// A T=0 character-time model: every byte of the command and of the
    /// response is 10 bits (start, 8 data, parity; the guard time is in
    /// the stop bit) at this many bits per second.
    pub baud: Option<u32>,
    /// The card's own work per APDU, on top of the character time.
    pub processing: Duration,
}

/// What a command the short-APDU-only card refuses costs on the line:
/// the 5-byte header it reads before it knows, and the status word.
const REFUSED_BYTES: usize = 5 + 2;

impl Timing {
    /// The card's time for one APDU of `bytes_in` bytes answered with
    /// `bytes_out` bytes.
    pub fn apdu_time(&self, bytes_in: usize, bytes_out: usize) -> Duration {
        let chars = match self.baud {
            Some(baud) if baud > 0 => {
                let bits = (bytes_in + bytes_out) as u64 * 10;
                Duration::from_nanos(bits.saturating_mul(1_000_000_000) / u64::from(baud))
            }
            _ => Duration::ZERO,
        };
        self.per_apdu + chars + self.processing
    }

    /// Whether the card answers at once.
    pub fn is_instant(&self) -> bool {
        self.baud.is_none() && self.apdu_time(0, 0).is_zero()
    }
}

/// The applet as vpcd sees it: power, reset and APDUs.
#[derive(Debug)]
pub struct VirtualCard<E> {
    applet: Applet<E>,
    powered: bool,
    timing: Timing,
    short_apdus: bool,
}

impl<E: Eeprom> VirtualCard<E> {
    pub fn new(applet: Applet<E>) -> Self {
        VirtualCard {
            applet,
            powered: false,
            timing: Timing::default(),
            short_apdus: false,
        }
    }

    /// Answers each APDU only after the time `timing` gives it.
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Refuses extended-length commands with `6700`, as most real cards
    /// and readers do.
    pub fn with_short_apdus(mut self) -> Self {
        self.short_apdus = true;
        self
    }

    /// How long the card takes to answer `msg` with `reply` (zero for
    /// control codes, which the reader's driver answers itself).
    pub fn answer_time(&self, msg: &[u8], reply: &[u8]) -> Duration {
        if msg.len() < 2 {
            return Duration::ZERO;
        }
        if self.short_apdus && is_extended_encoding(msg) {
            // Refused after the header: no data moved, no work done.
            return Timing {
                processing: Duration::ZERO,
                ..self.timing
            }
            .apdu_time(REFUSED_BYTES, 0);
        }
        self.timing.apdu_time(msg.len(), reply.len())
    }

    pub fn applet(&self) -> &Applet<E> {
        &self.applet
    }

    pub fn into_applet(self) -> Applet<E> {
        self.applet
    }

    pub fn is_powered(&self) -> bool {
        self.powered
    }

    /// The card left the reader: its RAM is lost, its EEPROM kept.
    pub fn remove(&mut self) {
        self.applet.reset();
        self.powered = false;
    }

    /// Answers one message from the reader, or returns `None` for a
    /// message that gets no answer (power and reset control codes).
    pub fn handle(&mut self, msg: &[u8]) -> Option<Vec<u8>> {
        match *msg {
            [] => {
                tracing::debug!("empty vpcd message ignored");
                None
            }
            [CTRL_OFF] => {
                tracing::debug!("power off");
                self.remove();
                None
            }
            [CTRL_ON] => {
                tracing::debug!("power on");
                self.applet.reset();
                self.powered = true;
                None
            }
            [CTRL_RESET] => {
                tracing::debug!("reset");
                self.applet.reset();
                self.powered = true;
                None
            }
            [CTRL_ATR] => Some(ATR.to_vec()),
            [code] => {
                tracing::warn!(code, "unknown vpcd control code ignored");
                None
            }
            _ if self.short_apdus && is_extended_encoding(msg) => {
                tracing::debug!(len = msg.len(), "extended APDU refused: short APDUs only");
                Some(Response::status(StatusWord::WRONG_LENGTH).to_bytes())
            }
            _ => {
                // pcscd powers the card before any APDU; an APDU to an
                // unpowered card still gets an answer rather than a hang.
                Some(self.applet.process(msg))
            }
        }
    }
}

/// Stops a running [`run`] from another thread (a signal handler): it
/// sets a flag, shuts the current connection down to wake the blocked
/// read, and cuts any backoff sleep short.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<StopInner>);

#[derive(Debug, Default)]
struct StopInner {
    stopped: AtomicBool,
    conn: Mutex<Option<TcpStream>>,
    wake: Condvar,
}

impl StopHandle {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        let conn = self.0.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = conn.as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.0.wake.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    fn set_conn(&self, s: Option<TcpStream>) {
        let mut conn = self.0.conn.lock().unwrap_or_else(|p| p.into_inner());
        *conn = s;
        // A stop that came between the flag check and here must still
        // wake the read.
        if self.is_stopped() {
            if let Some(s) = conn.as_ref() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Sleeps for `d`, or less if stopped meanwhile.
    fn sleep(&self, d: Duration) {
        self.sleep_until(Instant::now() + d);
    }

    /// Sleeps until `deadline`, or less if stopped meanwhile.
    fn sleep_until(&self, deadline: Instant) {
        let mut guard = self.0.conn.lock().unwrap_or_else(|p| p.into_inner());
        while !self.is_stopped() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            guard = match self.0.wake.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// How the emulator reaches vpcd.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of the vpcd slot.
    pub addr: String,
    /// First wait after a failed or lost connection; it doubles up to
    /// `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long the card stays out after a lost connection. pcscd polls
    /// vpcd for presence every 400 ms; a card back sooner would look as if
    /// it had never left, and pcscd would not power it up again.
    pub removal_pause: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: DEFAULT_ADDR.to_string(),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            removal_pause: Duration::from_secs(1),
        }
    }
}

/// Largest message the 2-byte length can frame.
const MAX_MESSAGE: usize = u16::MAX as usize;

fn quickack(stream: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = SockRef::from(stream).set_quickack(true) {
        tracing::debug!(error = %e, "TCP_QUICKACK not set");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = SockRef::from(stream);
}

/// Reads one framed message, or `None` at a clean end of stream.
fn read_message(stream: &mut &TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<()>> {
    let mut len = [0u8; 2];
    quickack(stream);
    // A clean close between messages is the card being taken out.
    match stream.read(&mut len)? {
        0 => return Ok(None),
        1 => {
            quickack(stream);
            stream.read_exact(&mut len[1..])?;
        }
        _ => {}
    }
    let len = u16::from_be_bytes(len) as usize;
    buf.clear();
    buf.resize(len, 0);
    if len > 0 {
        quickack(stream);
        stream.read_exact(buf)?;
    }
    Ok(Some(()))
}

fn write_message(stream: &mut &TcpStream, body: &[u8]) -> io::Result<()> {
    // A response the length cannot frame should never happen; answer it
    // with a status word rather than a truncated APDU.
    let fallback;
    let body = if body.len() > MAX_MESSAGE {
        tracing::error!(len = body.len(), "response too long for vpcd framing");
        fallback = Response::status(StatusWord::UNKNOWN_ERROR).to_bytes();
        &fallback[..]
    } else {
        body
    };
    // One write for length and body: no small segment for Nagle to hold.
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    stream.write_all(&out)
}

/// Serves one connection until the reader closes it, it breaks, or a stop.
pub fn serve_connection<E: Eeprom>(
    card: &mut VirtualCard<E>,
    stream: &TcpStream,
    stop: &StopHandle,
) -> io::Result<()> {
    let mut s = stream;
    let mut buf = Vec::with_capacity(512);
    while !stop.is_stopped() {
        if read_message(&mut s, &mut buf)?.is_none() {
            return Ok(());
        }
        let arrived = Instant::now();
        if let Some(reply) = card.handle(&buf) {
            let d = card.answer_time(&buf, &reply);
            if !d.is_zero() {
                stop.sleep_until(arrived + d);
            }
            write_message(&mut s, &reply)?;
        }
    }
    Ok(())
}

fn connect(addr: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    quickack(&stream);
    Ok(stream)
}

/// Runs the virtual card until `stop`: connects to vpcd, serves the
/// connection, and reconnects with backoff when it fails or is lost (as
/// when pcscd restarts). A lost connection is a card removal: RAM state
/// goes, the EEPROM stays.
pub fn run<E: Eeprom>(card: &mut VirtualCard<E>, config: &Config, stop: &StopHandle) {
    let mut backoff = config.min_backoff;
    let mut failures = 0u64;
    while !stop.is_stopped() {
        match connect(&config.addr) {
            Ok(stream) => {
                failures = 0;
                backoff = config.min_backoff;
                tracing::info!(addr = %config.addr, "inserted in the vpcd reader");
                stop.set_conn(stream.try_clone().ok());
                let result = serve_connection(card, &stream, stop);
                stop.set_conn(None);
                card.remove();
                match result {
                    _ if stop.is_stopped() => break,
                    Ok(()) => tracing::info!("vpcd closed the connection; reconnecting"),
                    Err(e) => tracing::warn!(error = %e, "vpcd connection lost; reconnecting"),
                }
            }
            Err(e) => {
                // Say it once loudly, then quietly while pcscd stays away.
                if failures == 0 {
                    tracing::warn!(addr = %config.addr, error = %e,
                        "cannot reach vpcd (is pcscd running with vsmartcard-vpcd?); retrying");
                } else {
                    tracing::debug!(addr = %config.addr, error = %e, failures, "vpcd still unreachable");
                }
                failures += 1;
                stop.sleep(backoff);
                backoff = (backoff * 2).min(config.max_backoff);
                continue;
            }
        }
        stop.sleep(config.removal_pause);
    }
    tracing::info!("emulator stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use card::MemEeprom;
    use std::net::TcpListener;

    fn card() -> VirtualCard<MemEeprom> {
        VirtualCard::new(Applet::power_on(MemEeprom::default()).unwrap())
    }

    #[test]
    fn control_codes_and_apdus() {
        let mut c = card();
        assert_eq!(c.handle(&[CTRL_ATR]).unwrap(), ATR);
        assert_eq!(c.handle(&[CTRL_ON]), None);
        assert!(c.is_powered());
        assert_eq!(c.handle(&[CTRL_RESET]), None);
        assert_eq!(c.handle(&[CTRL_OFF]), None);
        assert!(!c.is_powered());
        assert_eq!(c.handle(&[3]), None);
        assert_eq!(c.handle(&[]), None);
        // Two bytes and up are APDUs, however malformed.
        assert_eq!(c.handle(&[0x80, 0x70]).unwrap(), [0x67, 0x00]);
        assert_eq!(c.handle(&[0x80, 0x70, 0, 0]).unwrap(), [0x6A, 0x82]);
    }

    /// Plays vpcd's side over a real socket.
    #[test]
    fn framing_over_tcp_and_reconnection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let config = Config {
            addr: listener.local_addr().unwrap().to_string(),
            min_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            removal_pause: Duration::from_millis(5),
        };
        let stop = StopHandle::new();
        let stop2 = stop.clone();
        let t = std::thread::spawn(move || {
            let mut c = card();
            run(&mut c, &config, &stop2);
        });
        let send = |s: &mut TcpStream, m: &[u8]| {
            let mut v = (m.len() as u16).to_be_bytes().to_vec();
            v.extend_from_slice(m);
            s.write_all(&v).unwrap();
        };
        let recv = |s: &mut TcpStream| {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            let mut b = vec![0u8; u16::from_be_bytes(l) as usize];
            s.read_exact(&mut b).unwrap();
            b
        };
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            send(&mut s, &[CTRL_ON]);
            send(&mut s, &[CTRL_ATR]);
            assert_eq!(recv(&mut s), ATR);
            let select = proto::apdu::Command::select().to_bytes();
            send(&mut s, &select);
            assert_eq!(recv(&mut s), [0x90, 0x00]);
            // An extended APDU with a 1000-byte body goes through whole.
            let mut nop = vec![0x80, 0x70, 0, 0, 0, 0x03, 0xE8];
            nop.extend_from_slice(&[0xAA; 1000]);
            send(&mut s, &nop);
            assert_eq!(recv(&mut s), [0x90, 0x00]);
            // A message cut short, then the connection dropped: the
            // emulator comes back.
            s.write_all(&[0x00, 0x10, 0x80]).unwrap();
            drop(s);
        }
        stop.stop();
        t.join().unwrap();
    }

    #[test]
    fn timing_model() {
        let t = Timing {
            per_apdu: Duration::from_millis(3),
            baud: Some(9600),
            processing: Duration::from_millis(10),
        };
        // 96 bytes are 960 bits: 100 ms at 9600 baud.
        assert_eq!(t.apdu_time(90, 6), Duration::from_millis(113));
        assert!(Timing::default().is_instant());
        assert!(Timing::default().apdu_time(1000, 1000).is_zero());
        assert!(!t.is_instant());

        let mut c = card().with_timing(t).with_short_apdus();
        assert!(c.answer_time(&[CTRL_ON], &[]).is_zero());
        let mut nop = vec![0x80, 0x70, 0, 0, 0, 0x03, 0xE8];
        nop.extend_from_slice(&[0xAA; 1000]);
        // Refused after the header, with no processing.
        assert_eq!(c.handle(&nop).unwrap(), [0x67, 0x00]);
        let refused = c.answer_time(&nop, &[0x67, 0x00]);
        assert_eq!(
            refused,
            Duration::from_millis(3) + Duration::from_nanos(70 * 1_000_000_000 / 9600)
        );
        // Short commands go through.
        let select = proto::apdu::Command::select().to_bytes();
        assert_eq!(c.handle(&select).unwrap(), [0x90, 0x00]);
        assert_eq!(
            c.handle(&[0x80, 0x70, 0, 0, 3, 1, 2, 3]).unwrap(),
            [0x90, 0x00]
        );
        // Without the short mode the same extended APDU passes.
        let mut c = card();
        c.handle(&select).unwrap();
        assert_eq!(c.handle(&nop).unwrap(), [0x90, 0x00]);
    }

    #[test]
    fn stop_while_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let stop = StopHandle::new();
        let stop2 = stop.clone();
        let t = std::thread::spawn(move || {
            let config = Config {
                addr,
                ..Config::default()
            };
            run(&mut card(), &config, &stop2);
        });
        std::thread::sleep(Duration::from_millis(100));
        stop.stop();
        t.join().unwrap();
    }
}
