//! Where the TS comes from and goes to: `udp://HOST:PORT`, a file, or `-`
//! for stdin/stdout; and the pacer that sends UDP output at the stream's
//! own rate.

use super::mux::OutPacket;
use super::{ChannelStreamConfig, Shutdown, StreamError};
use std::fs::File;
use std::io::{self, BufWriter, Read as _, Seek, Write};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use ts::packet::PACKET_LEN;

/// How long a UDP read waits before the loop looks at the shutdown flag.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest air time that a partial datagram waits for more packets:
/// any stream over about 100 kbit/s fills its datagrams sooner.
const MAX_HOLD_TICKS: u64 = 100 * super::clock::TICKS_PER_MS;

/// Checks a channel's stream: the engine's checks of every field
/// ([`ChannelStreamConfig::validate`]), then its input and output URLs.
pub fn validate(cfg: &ChannelStreamConfig) -> Result<(), StreamError> {
    cfg.validate()?;
    Endpoint::parse(&cfg.input)?;
    if let Endpoint::Udp(a) = Endpoint::parse(&cfg.output)? {
        if a.port() == 0 || a.ip().is_unspecified() {
            return Err(cfg.bad("output", format!("cannot send to {a}")));
        }
    }
    Ok(())
}

/// A parsed input or output URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `udp://HOST:PORT`. As an input, a multicast group is joined on all
    /// interfaces; `udp://@:PORT` (VLC's form) listens on every address.
    Udp(SocketAddr),
    /// A path, or `file://PATH`.
    File(PathBuf),
    /// `-`: stdin or stdout.
    Stdio,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, StreamError> {
        let bad = |reason: &str| StreamError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if url == "-" {
            return Ok(Endpoint::Stdio);
        }
        if let Some(rest) = url.strip_prefix("udp://") {
            let rest = rest.split(['?', '/']).next().unwrap_or("");
            let rest = rest.strip_prefix('@').unwrap_or(rest);
            let hostport = if rest.starts_with(':') {
                format!("0.0.0.0{rest}")
            } else {
                rest.to_owned()
            };
            let addr = hostport
                .to_socket_addrs()
                .map_err(|e| bad(&format!("expected udp://HOST:PORT ({e})")))?
                .next()
                .ok_or_else(|| bad("the host has no address"))?;
            // Port 0 is fine for an input (any free port: see
            // `ChannelHandle::input_addr`); an output refuses it.
            return Ok(Endpoint::Udp(addr));
        }
        if let Some(path) = url.strip_prefix("file://") {
            return Ok(Endpoint::File(path.into()));
        }
        if url.is_empty() {
            return Err(bad("empty"));
        }
        if url.contains("://") {
            return Err(bad("only udp://, file:// or a path"));
        }
        Ok(Endpoint::File(url.into()))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Udp(a) => write!(f, "udp://{a}"),
            Endpoint::File(p) => write!(f, "{}", p.display()),
            Endpoint::Stdio => f.write_str("-"),
        }
    }
}

fn io_err(what: &'static str, target: &Endpoint, source: io::Error) -> StreamError {
    StreamError::Io {
        what,
        target: target.to_string(),
        source,
    }
}

/// What a read gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Got {
    Data(usize),
    /// Nothing within [`READ_TIMEOUT`] (UDP only).
    Idle,
    Eof,
}

#[derive(Debug)]
pub(crate) enum Input {
    Udp(UdpSocket, Endpoint),
    File(File, Endpoint),
    Stdin(io::Stdin),
}

impl Input {
    pub(crate) fn open(ep: &Endpoint) -> Result<Input, StreamError> {
        match ep {
            Endpoint::Udp(addr) => {
                let sock = match addr {
                    SocketAddr::V4(v4) if v4.ip().is_multicast() => {
                        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, v4.port()))
                            .map_err(|e| io_err("bind", ep, e))?;
                        s.join_multicast_v4(v4.ip(), &Ipv4Addr::UNSPECIFIED)
                            .map_err(|e| io_err("join", ep, e))?;
                        s
                    }
                    _ => UdpSocket::bind(addr).map_err(|e| io_err("bind", ep, e))?,
                };
                sock.set_read_timeout(Some(READ_TIMEOUT))
                    .map_err(|e| io_err("configure", ep, e))?;
                Ok(Input::Udp(sock, ep.clone()))
            }
            Endpoint::File(p) => Ok(Input::File(
                File::open(p).map_err(|e| io_err("open", ep, e))?,
                ep.clone(),
            )),
            Endpoint::Stdio => Ok(Input::Stdin(io::stdin())),
        }
    }

    /// The local address of a UDP input (useful when bound to port 0).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Input::Udp(s, _) => s.local_addr().ok(),
            _ => None,
        }
    }

    pub(crate) fn read(&mut self, buf: &mut [u8]) -> Result<Got, StreamError> {
        loop {
            let r = match self {
                Input::Udp(s, _) => s.recv(buf),
                Input::File(f, _) => f.read(buf),
                Input::Stdin(s) => s.lock().read(buf),
            };
            return match r {
                Ok(0) if !matches!(self, Input::Udp(..)) => Ok(Got::Eof),
                Ok(n) => Ok(Got::Data(n)),
                Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    Ok(Got::Idle)
                }
                // An ICMP error from an earlier datagram: not ours to mind.
                Err(e)
                    if matches!(self, Input::Udp(..))
                        && e.kind() == io::ErrorKind::ConnectionRefused =>
                {
                    continue
                }
                Err(e) => Err(match self {
                    Input::Udp(_, ep) | Input::File(_, ep) => io_err("read", ep, e),
                    Input::Stdin(_) => io_err("read", &Endpoint::Stdio, e),
                }),
            };
        }
    }

    /// Starts a file again from its beginning; false if this input cannot.
    pub(crate) fn rewind(&mut self) -> Result<bool, StreamError> {
        match self {
            Input::File(f, ep) => {
                f.rewind().map_err(|e| io_err("rewind", ep, e))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Sends packets at their air time: each datagram when the air time of its
/// last packet comes, on the wall clock. If the sender falls more than
/// `max_late` behind (a stalled input, a slow machine), it starts again
/// from now rather than burst to catch up.
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

    /// Waits until `ticks` is due. Returns early (false) on shutdown.
    pub(crate) fn wait(&mut self, ticks: u64, shutdown: &Shutdown) -> bool {
        let (i0, t0) = *self.origin.get_or_insert((Instant::now(), ticks));
        let offset = Duration::from_nanos(ticks.saturating_sub(t0).saturating_mul(1000) / 27);
        let due = i0 + offset;
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
            std::thread::sleep((due - now).min(READ_TIMEOUT));
        }
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
    socket: UdpSocket,
    dest: SocketAddr,
    per_datagram: usize,
    buf: Vec<u8>,
    /// Air time of the first and the last packet in `buf`.
    first_ticks: u64,
    last_ticks: u64,
    pacer: Option<Pacer>,
    ep: Endpoint,
    pub(crate) send_errors: u64,
}

impl UdpOut {
    fn push(&mut self, p: &OutPacket, shutdown: &Shutdown) -> Result<bool, StreamError> {
        // Sparse output (a channel with nothing on the air sends little
        // more than its CAT) goes out in partial datagrams rather than
        // wait seconds for a full one.
        if !self.buf.is_empty()
            && p.ticks > self.first_ticks.saturating_add(MAX_HOLD_TICKS)
            && !self.send(shutdown)?
        {
            return Ok(false);
        }
        if self.buf.is_empty() {
            self.first_ticks = p.ticks;
        }
        self.buf.extend_from_slice(&p.bytes);
        self.last_ticks = p.ticks;
        if self.buf.len() >= self.per_datagram * PACKET_LEN {
            return self.send(shutdown);
        }
        Ok(true)
    }

    /// Sends what is buffered, when its time comes.
    fn send(&mut self, shutdown: &Shutdown) -> Result<bool, StreamError> {
        if self.buf.is_empty() {
            return Ok(true);
        }
        if let Some(p) = &mut self.pacer {
            if !p.wait(self.last_ticks, shutdown) {
                return Ok(false);
            }
        }
        match self.socket.send_to(&self.buf, self.dest) {
            Ok(_) => {}
            // Nobody listening yet (ICMP port unreachable), or a full
            // socket buffer: a live sender drops the datagram and goes on.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                ) || e.raw_os_error() == Some(105) /* ENOBUFS */ =>
            {
                self.send_errors += 1;
            }
            Err(e) => return Err(io_err("send", &self.ep, e)),
        }
        self.buf.clear();
        Ok(true)
    }
}

#[derive(Debug)]
pub(crate) enum Output {
    Udp(UdpOut),
    File(BufWriter<File>, Endpoint),
    Stdout(BufWriter<io::Stdout>),
}

impl Output {
    pub(crate) fn open(
        ep: &Endpoint,
        per_datagram: usize,
        paced: bool,
        max_late_ms: u64,
    ) -> Result<Output, StreamError> {
        match ep {
            Endpoint::Udp(dest) => {
                let bind: SocketAddr = if dest.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(bind).map_err(|e| io_err("bind", ep, e))?;
                Ok(Output::Udp(UdpOut {
                    socket,
                    dest: *dest,
                    per_datagram,
                    buf: Vec::with_capacity(per_datagram * PACKET_LEN),
                    first_ticks: 0,
                    last_ticks: 0,
                    pacer: paced.then(|| Pacer::new(Duration::from_millis(max_late_ms))),
                    ep: ep.clone(),
                    send_errors: 0,
                }))
            }
            Endpoint::File(p) => Ok(Output::File(
                BufWriter::with_capacity(
                    1 << 16,
                    File::create(p).map_err(|e| io_err("create", ep, e))?,
                ),
                ep.clone(),
            )),
            Endpoint::Stdio => Ok(Output::Stdout(BufWriter::with_capacity(
                1 << 16,
                io::stdout(),
            ))),
        }
    }

    /// Writes packets (UDP: in datagrams, paced). Returns false when a
    /// shutdown interrupted the pacing.
    pub(crate) fn write(
        &mut self,
        packets: &[OutPacket],
        shutdown: &Shutdown,
    ) -> Result<bool, StreamError> {
        match self {
            Output::Udp(u) => {
                for p in packets {
                    if !u.push(p, shutdown)? {
                        return Ok(false);
                    }
                }
            }
            Output::File(w, ep) => {
                for p in packets {
                    w.write_all(&p.bytes).map_err(|e| io_err("write", ep, e))?;
                }
            }
            Output::Stdout(w) => {
                for p in packets {
                    w.write_all(&p.bytes)
                        .map_err(|e| io_err("write", &Endpoint::Stdio, e))?;
                }
            }
        }
        Ok(true)
    }

    /// Sends a partial datagram, flushes a file.
    pub(crate) fn flush(&mut self, shutdown: &Shutdown) -> Result<(), StreamError> {
        match self {
            Output::Udp(u) => {
                u.send(shutdown)?;
            }
            Output::File(w, ep) => w.flush().map_err(|e| io_err("write", ep, e))?,
            Output::Stdout(w) => w
                .flush()
                .map_err(|e| io_err("write", &Endpoint::Stdio, e))?,
        }
        Ok(())
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
            Output::Udp(u) => (u.pacer.as_ref().map_or(0, |p| p.rebases), u.send_errors),
            _ => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::clock::TICKS_PER_MS;

    #[test]
    fn urls() {
        assert_eq!(
            Endpoint::parse("udp://127.0.0.1:5000").unwrap(),
            Endpoint::Udp("127.0.0.1:5000".parse().unwrap())
        );
        assert_eq!(
            Endpoint::parse("udp://@:5000").unwrap(),
            Endpoint::Udp("0.0.0.0:5000".parse().unwrap())
        );
        assert_eq!(
            Endpoint::parse("udp://239.1.1.1:1234?pkt_size=1316").unwrap(),
            Endpoint::Udp("239.1.1.1:1234".parse().unwrap())
        );
        assert_eq!(
            Endpoint::parse("file:///tmp/a.ts").unwrap(),
            Endpoint::File("/tmp/a.ts".into())
        );
        assert_eq!(
            Endpoint::parse("a.ts").unwrap(),
            Endpoint::File("a.ts".into())
        );
        assert_eq!(Endpoint::parse("-").unwrap(), Endpoint::Stdio);
        for bad in ["", "udp://", "udp://127.0.0.1", "http://x/y", "udp://:x"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pacer_waits_for_air_time_and_rebases_when_late() {
        let stop = Shutdown::new();
        let mut p = Pacer::new(Duration::from_millis(50));
        let t = Instant::now();
        assert!(p.wait(1000, &stop));
        assert!(p.wait(1000 + 30 * TICKS_PER_MS, &stop));
        assert!(t.elapsed() >= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(120));
        assert!(p.wait(1000 + 40 * TICKS_PER_MS, &stop));
        assert_eq!(p.rebases, 1);
        stop.trigger();
        assert!(!p.wait(1000 + 10_000 * TICKS_PER_MS, &stop));
    }

    #[test]
    fn sparse_output_goes_out_in_partial_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let ep = Endpoint::Udp(rx.local_addr().unwrap());
        let mut out = Output::open(&ep, 7, false, 500).unwrap();
        let stop = Shutdown::new();
        let at = |ms: u64| OutPacket {
            bytes: ts::packet::null_packet(),
            ticks: ms * TICKS_PER_MS,
        };
        // Three packets within 100 ms wait for more; the fourth, 500 ms
        // later, sends them first.
        out.write(&[at(0), at(10), at(50)], &stop).unwrap();
        out.write(&[at(550)], &stop).unwrap();
        let mut buf = [0u8; 2048];
        assert_eq!(rx.recv(&mut buf).unwrap(), 3 * PACKET_LEN);
        out.flush(&stop).unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), PACKET_LEN);
        // A dense stream fills its datagrams.
        out.write(&(0..14).map(|i| at(600 + i)).collect::<Vec<_>>(), &stop)
            .unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), 7 * PACKET_LEN);
        assert_eq!(rx.recv(&mut buf).unwrap(), 7 * PACKET_LEN);
    }
}
