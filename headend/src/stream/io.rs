//! Where a channel's TS comes from and goes to, opened by `tsio` (one
//! address syntax for both programs), with the errors in the stream
//! engine's terms; and the pacer that sends UDP output at the stream's own
//! rate.

use super::mux::OutPacket;
use super::{ChannelStreamConfig, Shutdown, StreamError};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use ts::packet::PACKET_LEN;
pub(crate) use tsio::Got;
use tsio::{Address, AddressError, UdpSender};
/// The longest air time that a partial datagram waits for more packets:
/// any stream over about 100 kbit/s fills its datagrams sooner.
const MAX_HOLD_TICKS: u64 = 100 * super::clock::TICKS_PER_MS;

/// Checks a channel's stream: the engine's checks of every field
/// ([`ChannelStreamConfig::validate`]), then its input and output
/// addresses.
pub fn validate(cfg: &ChannelStreamConfig) -> Result<(), StreamError> {
    cfg.validate()?;
    parse_input(&cfg.input)?;
    parse_output(&cfg.output)?;
    Ok(())
}

fn url_err(url: &str, e: AddressError) -> StreamError {
    StreamError::Url {
        url: url.to_owned(),
        reason: e.to_string(),
    }
}

/// A channel's input address. Port 0 is fine for UDP (any free port: see
/// `ChannelHandle::input_addr`).
pub(crate) fn parse_input(url: &str) -> Result<Address, StreamError> {
    Address::parse_input(url).map_err(|e| url_err(url, e))
}

/// A channel's output address: one that datagrams can be sent to.
pub(crate) fn parse_output(url: &str) -> Result<Address, StreamError> {
    Address::parse_output(url).map_err(|e| url_err(url, e))
}

fn io_err(what: &'static str, target: &Address, source: io::Error) -> StreamError {
    StreamError::Io {
        what,
        target: target.to_string(),
        source,
    }
}

fn tsio_err(e: tsio::IoError) -> StreamError {
    StreamError::Io {
        what: e.what,
        target: e.address,
        source: e.source,
    }
}

/// A channel's input, its errors in the stream engine's terms.
#[derive(Debug)]
pub(crate) struct Input(tsio::Input);

impl Input {
    pub(crate) fn open(ep: &Address) -> Result<Input, StreamError> {
        tsio::Input::open(ep).map(Input).map_err(tsio_err)
    }

    /// The local address of a UDP input (useful when bound to port 0).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.0.local_addr()
    }

    /// The receive buffer of a UDP input, in bytes.
    pub(crate) fn socket_buffer(&self) -> Option<usize> {
        self.0.socket_buffer()
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> Result<Got, StreamError> {
        self.0.read(buf).map_err(tsio_err)
    }

    /// Whether the address asked for the file to loop (`?loop`).
    pub(crate) fn looped(&self) -> bool {
        self.0.looped()
    }

    /// Starts a file again from its beginning; false if this input cannot.
    pub(crate) fn rewind(&mut self) -> Result<bool, StreamError> {
        self.0.rewind().map_err(tsio_err)
    }
}

/// How often a pacer waiting for air time looks whether it should hurry.
const HURRY_POLL: Duration = Duration::from_millis(5);

/// Sends packets at their air time: each datagram when the air time of its
/// last packet comes, on the wall clock. If the sender falls more than
/// `max_late` behind (a stalled input, a slow machine), it starts again
/// from now rather than burst to catch up.
///
/// A live input brings its own clock: there the writer [anchors](Pacer::anchor)
/// each batch the reader hands over at the moment it takes it, spreads
/// the batch over its air time, and hurries through the rest as soon as
/// the next batch waits. So the output never lags the input by more than
/// a batch (one PCR interval), whatever stalls the machine had or however
/// the source's clock drifts from ours; a clock that only rebased would
/// keep a stall's lag for good, with that much of the input waiting in
/// the socket buffer, where the next burst overflows it.
#[derive(Debug)]
pub(crate) struct Pacer {
    origin: Option<(Instant, u64)>,
    max_late: Duration,
    pub(crate) rebases: u64,
}

impl Pacer {
    pub(crate) fn new(max_late: Duration) -> Self {
        Pacer {
            origin: None,
            max_late,
            rebases: 0,
        }
    }

    /// When air time `ticks` is due on the clock as it stands.
    fn due(&self, ticks: u64) -> Option<Instant> {
        let (i0, t0) = self.origin?;
        Some(i0 + Duration::from_nanos(ticks.saturating_sub(t0).saturating_mul(1000) / 27))
    }

    /// Waits until `ticks` is due, or until `hurry` says the next batch
    /// of a live input waits. Returns early (false) on shutdown.
    pub(crate) fn wait(
        &mut self,
        ticks: u64,
        shutdown: &Shutdown,
        hurry: &dyn Fn() -> bool,
    ) -> bool {
        let due = match self.due(ticks) {
            Some(due) => due,
            None => {
                self.origin = Some((Instant::now(), ticks));
                return true;
            }
        };
        loop {
            let now = Instant::now();
            if now >= due {
                if now - due > self.max_late {
                    self.origin = Some((now, ticks));
                    self.rebases += 1;
                }
                return true;
            }
            if shutdown.is_triggered() {
                return false;
            }
            if hurry() {
                return true;
            }
            std::thread::sleep((due - now).min(HURRY_POLL));
        }
    }

    /// A live input's batch, whose first packet has air time `ticks`,
    /// starts now. Counts a rebase when the clock as it stood was more
    /// than `max_late` behind.
    pub(crate) fn anchor(&mut self, ticks: u64) {
        let now = Instant::now();
        if self
            .due(ticks)
            .is_some_and(|due| now.saturating_duration_since(due) > self.max_late)
        {
            self.rebases += 1;
        }
        self.origin = Some((now, ticks));
    }

    /// Forgets the origin (after an idle input, so that a late restart of
    /// the source does not count as lateness).
    pub(crate) fn reset(&mut self) {
        self.origin = None;
    }
}

/// UDP output: datagrams of `per_datagram` packets, paced or not.
#[derive(Debug)]
pub(crate) struct UdpOut {
    sender: UdpSender,
    per_datagram: usize,
    buf: Vec<u8>,
    /// Air time of the first and the last packet in `buf`.
    first_ticks: u64,
    last_ticks: u64,
    pacer: Option<Pacer>,
    ep: Address,
}

impl UdpOut {
    fn push(
        &mut self,
        p: &OutPacket,
        shutdown: &Shutdown,
        hurry: &dyn Fn() -> bool,
    ) -> Result<bool, StreamError> {
        // Sparse output (a channel with nothing on the air sends little
        // more than its CAT) goes out in partial datagrams rather than
        // wait seconds for a full one.
        if !self.buf.is_empty()
            && p.ticks > self.first_ticks.saturating_add(MAX_HOLD_TICKS)
            && !self.send(shutdown, hurry)?
        {
            return Ok(false);
        }
        if self.buf.is_empty() {
            self.first_ticks = p.ticks;
        }
        self.buf.extend_from_slice(&p.bytes);
        self.last_ticks = p.ticks;
        if self.buf.len() >= self.per_datagram * PACKET_LEN {
            return self.send(shutdown, hurry);
        }
        Ok(true)
    }

    /// Sends what is buffered, when its time comes.
    fn send(&mut self, shutdown: &Shutdown, hurry: &dyn Fn() -> bool) -> Result<bool, StreamError> {
        if self.buf.is_empty() {
            return Ok(true);
        }
        if let Some(p) = &mut self.pacer {
            if !p.wait(self.last_ticks, shutdown, hurry) {
                return Ok(false);
            }
        }
        // Nobody listening yet, or a full socket buffer: the sender drops
        // the datagram, counts it and goes on.
        self.sender
            .send(&self.buf)
            .map_err(|e| io_err("send", &self.ep, e))?;
        self.buf.clear();
        Ok(true)
    }
}

#[derive(Debug)]
pub(crate) enum Output {
    Udp(UdpOut),
    Write(tsio::Writer, Address),
}

impl Output {
    pub(crate) fn open(
        ep: &Address,
        per_datagram: usize,
        paced: bool,
        max_late_ms: u64,
    ) -> Result<Output, StreamError> {
        Ok(match tsio::Output::open(ep).map_err(tsio_err)? {
            tsio::Output::Udp(sender) => Output::Udp(UdpOut {
                sender,
                per_datagram,
                buf: Vec::with_capacity(per_datagram * PACKET_LEN),
                first_ticks: 0,
                last_ticks: 0,
                pacer: paced.then(|| Pacer::new(Duration::from_millis(max_late_ms))),
                ep: ep.clone(),
            }),
            tsio::Output::Write(w) => Output::Write(w, ep.clone()),
        })
    }

    /// Writes packets (UDP: in datagrams, paced, the waits cut short
    /// when `hurry` says so). Returns false when a shutdown interrupted the
    /// pacing.
    pub(crate) fn write(
        &mut self,
        packets: &[OutPacket],
        shutdown: &Shutdown,
        hurry: &dyn Fn() -> bool,
    ) -> Result<bool, StreamError> {
        match self {
            Output::Udp(u) => {
                for p in packets {
                    if !u.push(p, shutdown, hurry)? {
                        return Ok(false);
                    }
                }
            }
            Output::Write(w, ep) => {
                for p in packets {
                    w.write_all(&p.bytes).map_err(|e| io_err("write", ep, e))?;
                }
            }
        }
        Ok(true)
    }

    /// Sends a partial datagram, flushes a file.
    pub(crate) fn flush(&mut self, shutdown: &Shutdown) -> Result<(), StreamError> {
        match self {
            Output::Udp(u) => {
                u.send(shutdown, &|| false)?;
            }
            Output::Write(w, ep) => w.flush().map_err(|e| io_err("write", ep, e))?,
        }
        Ok(())
    }

    /// A live input's batch, whose first packet has air time `ticks`,
    /// starts now (see [`Pacer`]).
    pub(crate) fn anchor(&mut self, ticks: u64) {
        if let Output::Udp(UdpOut { pacer: Some(p), .. }) = self {
            p.anchor(ticks);
        }
    }

    /// The input went idle: restart the pacing clock when it comes back.
    pub(crate) fn idle(&mut self) {
        if let Output::Udp(UdpOut { pacer: Some(p), .. }) = self {
            p.reset();
        }
    }

    /// Where the pacer's clock stands: the wall time and the air time it
    /// matched last (none before the first paced datagram, or after an
    /// idle input).
    pub(crate) fn pacing_origin(&self) -> Option<(Instant, u64)> {
        match self {
            Output::Udp(UdpOut { pacer: Some(p), .. }) => p.origin,
            _ => None,
        }
    }

    /// (pacing re-bases, datagrams dropped by the OS)
    pub(crate) fn counters(&self) -> (u64, u64) {
        match self {
            Output::Udp(u) => (
                u.pacer.as_ref().map_or(0, |p| p.rebases),
                u.sender.dropped(),
            ),
            _ => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::clock::TICKS_PER_MS;
    use std::net::UdpSocket;

    #[test]
    fn addresses_refused_in_the_stream_engines_terms() {
        // The syntax itself is tsio's, and tested there.
        assert!(parse_input("udp://@:0").is_ok());
        for (url, output) in [
            ("udp://127.0.0.1:5000?loop", false),
            ("http://x/y", false),
            ("a.ts?loop", true),
            ("udp://@:5000", true),
        ] {
            let e = if output {
                parse_output(url)
            } else {
                parse_input(url)
            }
            .unwrap_err();
            assert!(
                matches!(&e, StreamError::Url { url: u, .. } if u == url),
                "{url}: {e}"
            );
        }
    }

    #[test]
    fn pacer_waits_for_air_time_and_rebases_when_late() {
        let stop = Shutdown::new();
        let mut p = Pacer::new(Duration::from_millis(50));
        let t = Instant::now();
        let no = || false;
        assert!(p.wait(1000, &stop, &no));
        assert!(p.wait(1000 + 30 * TICKS_PER_MS, &stop, &no));
        assert!(t.elapsed() >= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(120));
        assert!(p.wait(1000 + 40 * TICKS_PER_MS, &stop, &no));
        assert_eq!(p.rebases, 1);
        stop.trigger();
        assert!(!p.wait(1000 + 10_000 * TICKS_PER_MS, &stop, &no));
    }

    /// A live input: after a stall the writer does not keep the lag (the
    /// next batch starts when it is taken), and a batch still being spread
    /// when the next one waits goes out at once.
    #[test]
    fn a_live_pacer_keeps_no_lag_and_hurries_when_the_next_batch_waits() {
        let stop = Shutdown::new();
        let no = || false;
        let mut p = Pacer::new(Duration::from_millis(50));
        p.anchor(0);
        assert!(p.wait(0, &stop, &no));
        // A stall of 300 ms: the next batch (air time 40 ms on) starts
        // when it is taken, counted as a rebase; its packets are spread
        // from there.
        std::thread::sleep(Duration::from_millis(300));
        p.anchor(40 * TICKS_PER_MS);
        assert_eq!(p.rebases, 1);
        let t = Instant::now();
        assert!(p.wait(40 * TICKS_PER_MS, &stop, &no));
        assert!(t.elapsed() < Duration::from_millis(20), "{:?}", t.elapsed());
        assert!(p.wait(60 * TICKS_PER_MS, &stop, &no));
        assert!(t.elapsed() >= Duration::from_millis(20));
        // A packet due a second on goes at once when the next batch waits.
        let t = Instant::now();
        assert!(p.wait(1060 * TICKS_PER_MS, &stop, &|| true));
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn sparse_output_goes_out_in_partial_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let ep = Address::Udp(rx.local_addr().unwrap());
        let mut out = Output::open(&ep, 7, false, 500).unwrap();
        let stop = Shutdown::new();
        let at = |ms: u64| OutPacket {
            bytes: ts::packet::null_packet(),
            ticks: ms * TICKS_PER_MS,
        };
        // Three packets within 100 ms wait for more; the fourth, 500 ms
        // later, sends them first.
        let no = || false;
        out.write(&[at(0), at(10), at(50)], &stop, &no).unwrap();
        out.write(&[at(550)], &stop, &no).unwrap();
        let mut buf = [0u8; 2048];
        assert_eq!(rx.recv(&mut buf).unwrap(), 3 * PACKET_LEN);
        out.flush(&stop).unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), PACKET_LEN);
        // A dense stream fills its datagrams.
        out.write(
            &(0..14).map(|i| at(600 + i)).collect::<Vec<_>>(),
            &stop,
            &no,
        )
        .unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), 7 * PACKET_LEN);
        assert_eq!(rx.recv(&mut buf).unwrap(), 7 * PACKET_LEN);
    }
}
