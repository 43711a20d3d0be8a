//! Where the stream comes from and where the clear stream goes: a file
//! (`PATH` or `file://PATH`), stdin/stdout (`-`) or UDP (`udp://HOST:PORT`,
//! a multicast group joined; `udp://@:PORT` listens on every address), as
//! the headend writes them.
//!
//! The input is read on its own thread, so that a live UDP stream keeps
//! being drained by the socket while the pipeline waits for the card; when
//! the pipeline falls too far behind, whole datagrams are dropped and
//! counted. Files and pipes are read with back-pressure and lose nothing.
//! UDP output carries 7 packets (1316 bytes) per datagram, as IPTV does.

use crate::pipeline::PacketSink;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use ts::PACKET_LEN;

/// TS packets per UDP datagram (7 × 188 = 1316 bytes fits a 1500-byte MTU).
pub const PACKETS_PER_DATAGRAM: usize = 7;
/// Bytes per read from a file or pipe: a whole number of packets.
const READ_CHUNK: usize = PACKET_LEN * 348;
/// Reads (or datagrams) that may wait for the pipeline.
const QUEUE_FILE: usize = 16;
const QUEUE_UDP: usize = 8192;

/// A stream endpoint as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `udp://HOST:PORT`, `udp://@HOST:PORT`, or `udp://@:PORT` for every
    /// local address.
    Udp(SocketAddr),
    /// `-`
    Std,
    /// `PATH` or `file://PATH`.
    File(PathBuf),
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "-" {
            return Ok(Endpoint::Std);
        }
        if let Some(rest) = s.strip_prefix("udp://") {
            let rest = rest.trim_start_matches('@');
            // `udp://@:PORT`, as VLC and ffmpeg write it: no host is every
            // local address.
            let hostport = match rest.strip_prefix(':') {
                Some(port) => format!("{}:{port}", Ipv4Addr::UNSPECIFIED),
                None => rest.to_owned(),
            };
            let addr = hostport
                .as_str()
                .to_socket_addrs()
                .map_err(|e| format!("{s}: {e} (expected udp://HOST:PORT)"))?
                .next()
                .ok_or_else(|| format!("{s}: no address"))?;
            return Ok(Endpoint::Udp(addr));
        }
        let path = s.strip_prefix("file://").unwrap_or(s);
        if path.contains("://") {
            return Err(format!(
                "{s}: only udp://HOST:PORT, udp://@:PORT, file://PATH, a path or - are supported"
            ));
        }
        if path.is_empty() {
            return Err(format!(
                "{s:?}: empty path (expected a file, file://PATH or -)"
            ));
        }
        Ok(Endpoint::File(PathBuf::from(path)))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Udp(a) => write!(f, "udp://{a}"),
            Endpoint::Std => f.write_str("-"),
            Endpoint::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What the input thread hands over.
#[derive(Debug)]
pub enum Chunk {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// The input, read on its own thread.
#[derive(Debug)]
pub struct Input {
    rx: Receiver<Chunk>,
    dropped: Arc<AtomicU64>,
    _thread: JoinHandle<()>,
    /// The local address of a UDP input (useful with port 0).
    pub local_addr: Option<SocketAddr>,
}

impl Input {
    /// Opens the endpoint and starts reading.
    pub fn open(e: &Endpoint) -> io::Result<Input> {
        let dropped = Arc::new(AtomicU64::new(0));
        match e {
            Endpoint::Udp(addr) => {
                let sock = bind_udp_input(*addr)?;
                let local_addr = sock.local_addr().ok();
                let (tx, rx) = mpsc::sync_channel(QUEUE_UDP);
                let d = dropped.clone();
                let t = std::thread::Builder::new()
                    .name("udp-input".into())
                    .spawn(move || udp_loop(sock, tx, d))?;
                Ok(Input {
                    rx,
                    dropped,
                    _thread: t,
                    local_addr,
                })
            }
            Endpoint::Std => Self::reader(Box::new(io::stdin()), dropped),
            Endpoint::File(p) => Self::reader(Box::new(File::open(p)?), dropped),
        }
    }

    fn reader(r: Box<dyn Read + Send>, dropped: Arc<AtomicU64>) -> io::Result<Input> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_FILE);
        let t = std::thread::Builder::new()
            .name("input".into())
            .spawn(move || read_loop(r, tx))?;
        Ok(Input {
            rx,
            dropped,
            _thread: t,
            local_addr: None,
        })
    }

    /// The next chunk, or `None` after `timeout` without one.
    pub fn next(&self, timeout: Duration) -> Option<Chunk> {
        match self.rx.recv_timeout(timeout) {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(Chunk::End),
        }
    }

    /// UDP datagrams dropped because the pipeline fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn bind_udp_input(addr: SocketAddr) -> io::Result<UdpSocket> {
    match addr {
        SocketAddr::V4(a) if a.ip().is_multicast() => {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, a.port()))?;
            s.join_multicast_v4(a.ip(), &Ipv4Addr::UNSPECIFIED)?;
            Ok(s)
        }
        SocketAddr::V6(a) if a.ip().is_multicast() => {
            let s = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, a.port()))?;
            s.join_multicast_v6(a.ip(), 0)?;
            Ok(s)
        }
        _ => UdpSocket::bind(addr),
    }
}

fn udp_loop(sock: UdpSocket, tx: SyncSender<Chunk>, dropped: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => match tx.try_send(Chunk::Data(buf[..n].to_vec())) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return,
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Chunk::Failed(e));
                return;
            }
        }
    }
}

fn read_loop(mut r: Box<dyn Read + Send>, tx: SyncSender<Chunk>) {
    loop {
        let mut buf = vec![0u8; READ_CHUNK];
        match r.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(Chunk::End);
                return;
            }
            Ok(n) => {
                buf.truncate(n);
                if tx.send(Chunk::Data(buf)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Chunk::Failed(e));
                return;
            }
        }
    }
}

/// Opens an output endpoint as a packet sink.
pub fn open_output(e: &Endpoint) -> io::Result<Box<dyn PacketSink>> {
    Ok(match e {
        Endpoint::Udp(addr) => Box::new(UdpSink::connect(*addr)?),
        Endpoint::Std => Box::new(WriterSink(BufWriter::with_capacity(
            READ_CHUNK,
            io::stdout(),
        ))),
        Endpoint::File(p) => Box::new(WriterSink(BufWriter::with_capacity(
            READ_CHUNK,
            File::create(p)?,
        ))),
    })
}

/// A file or stdout.
#[derive(Debug)]
pub struct WriterSink<W: Write>(pub BufWriter<W>);

impl<W: Write> PacketSink for WriterSink<W> {
    fn packet(&mut self, packet: &[u8; PACKET_LEN]) -> io::Result<()> {
        self.0.write_all(packet)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// UDP output: 7 packets per datagram; a partial datagram goes out at
/// every flush, so a live stream is not held back.
#[derive(Debug)]
pub struct UdpSink {
    sock: UdpSocket,
    buf: Vec<u8>,
}

impl UdpSink {
    pub fn connect(addr: SocketAddr) -> io::Result<UdpSink> {
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(local)?;
        sock.connect(addr)?;
        Ok(UdpSink {
            sock,
            buf: Vec::with_capacity(PACKET_LEN * PACKETS_PER_DATAGRAM),
        })
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = self.sock.send(&self.buf);
        self.buf.clear();
        match r {
            Ok(_) => Ok(()),
            // Nobody listening yet is not a reason to stop a live output.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl PacketSink for UdpSink {
    fn packet(&mut self, packet: &[u8; PACKET_LEN]) -> io::Result<()> {
        self.buf.extend_from_slice(packet);
        if self.buf.len() >= PACKET_LEN * PACKETS_PER_DATAGRAM {
            self.send()?;
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let udp = |a: &str| Endpoint::Udp(a.parse().unwrap());
        for (text, want) in [
            ("-", Endpoint::Std),
            ("udp://127.0.0.1:1234", udp("127.0.0.1:1234")),
            ("udp://@239.1.1.1:5000", udp("239.1.1.1:5000")),
            ("out.ts", Endpoint::File("out.ts".into())),
            // Every local address, as VLC, ffmpeg and the headend write it.
            ("udp://@:5000", udp("0.0.0.0:5000")),
            ("udp://:5000", udp("0.0.0.0:5000")),
            ("udp://@127.0.0.1:5000", udp("127.0.0.1:5000")),
            ("file:///srv/in.ts", Endpoint::File("/srv/in.ts".into())),
            ("file://in.ts", Endpoint::File("in.ts".into())),
        ] {
            assert_eq!(text.parse::<Endpoint>(), Ok(want), "{text}");
        }
        assert!("udp://nohost".parse::<Endpoint>().is_err());
        assert!("http://x/y".parse::<Endpoint>().is_err());
        for bad in [
            "",
            "file://",
            "udp://@:",
            "udp://@:notaport",
            "file://http://x",
        ] {
            let e = bad.parse::<Endpoint>().unwrap_err();
            assert!(!e.contains('\n'), "{e}");
            assert!(
                e.contains("expected") || e.contains("supported"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn udp_at_port_listens_on_every_address() {
        let e: Endpoint = "udp://@:0".parse().unwrap();
        let input = Input::open(&e).unwrap();
        let local = input.local_addr.unwrap();
        assert!(local.ip().is_unspecified(), "{local}");
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = ts::packet::null_packet();
        tx.send_to(&p, (Ipv4Addr::LOCALHOST, local.port())).unwrap();
        match input.next(Duration::from_secs(5)) {
            Some(Chunk::Data(d)) => assert_eq!(d, p),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_url_input_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ts");
        let p = ts::packet::null_packet();
        std::fs::write(&path, p).unwrap();
        let e: Endpoint = format!("file://{}", path.display()).parse().unwrap();
        assert_eq!(e, Endpoint::File(path));
        let input = Input::open(&e).unwrap();
        match input.next(Duration::from_secs(5)) {
            Some(Chunk::Data(d)) => assert_eq!(d, p),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            input.next(Duration::from_secs(5)),
            Some(Chunk::End)
        ));
    }

    #[test]
    fn udp_sink_sends_seven_packets_per_datagram() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut sink = UdpSink::connect(rx.local_addr().unwrap()).unwrap();
        let p = ts::packet::null_packet();
        for _ in 0..9 {
            sink.packet(&p).unwrap();
        }
        sink.flush().unwrap();
        let mut buf = [0u8; 2048];
        assert_eq!(rx.recv(&mut buf).unwrap(), 7 * PACKET_LEN);
        assert_eq!(rx.recv(&mut buf).unwrap(), 2 * PACKET_LEN);
    }
}
