//! The files and sockets that addresses name.

use crate::Address;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// How long a UDP read waits before it reports [`Got::Idle`], so that the
/// reading loop can look at its shutdown flag.
pub const READ_TIMEOUT: Duration = Duration::from_millis(100);

/// The buffer of a file or stdout output: a whole number of reads for
/// the reader at the other end of a pipe.
const WRITE_BUFFER: usize = 1 << 16;

/// An operation on an address that failed: `cannot {what} {address}:
/// {source}`.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {address}: {source}")]
pub struct IoError {
    /// `bind`, `join`, `open`, `read`, `rewind`, `create`, `write`, `send`.
    pub what: &'static str,
    /// The address as the operator wrote it.
    pub address: String,
    #[source]
    pub source: io::Error,
}

impl IoError {
    fn new(what: &'static str, address: &Address, source: io::Error) -> IoError {
        IoError {
            what,
            address: address.to_string(),
            source,
        }
    }
}

/// The receive buffer a UDP input asks for. The system's default (about
/// 200 KB on Linux) holds a fifth of a second of a 10 Mbit/s multiplex;
/// a reader that stalls longer than its buffer lasts loses datagrams.
/// Linux grants at most `net.core.rmem_max` (doubled for its overhead).
pub const INPUT_SOCKET_BUFFER: usize = 4 << 20;

/// Binds a UDP input: a multicast group is joined on every interface, any
/// other address is bound as it is (`0.0.0.0:PORT` for every local
/// address). It asks for a receive buffer of [`INPUT_SOCKET_BUFFER`]
/// (what it got: [`Input::socket_buffer`]).
pub fn bind_udp_input(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = bind_udp(addr)?;
    // Best effort: the system caps it, and a smaller buffer still works.
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(INPUT_SOCKET_BUFFER);
    Ok(s)
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
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

/// What a read gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// This many bytes (a whole datagram from UDP).
    Data(usize),
    /// Nothing within [`READ_TIMEOUT`] (UDP only).
    Idle,
    /// The end of a file or of stdin.
    Eof,
}

/// An open input: a UDP socket, a file or stdin.
#[derive(Debug)]
pub enum Input {
    Udp(UdpSocket, Address),
    File {
        file: File,
        address: Address,
        looped: bool,
        /// Bytes read since the file was opened or last rewound.
        read: u64,
    },
    Stdin(io::Stdin),
}

impl Input {
    /// Opens an input. A UDP read returns [`Got::Idle`] after
    /// [`READ_TIMEOUT`] without a datagram.
    pub fn open(address: &Address) -> Result<Input, IoError> {
        let err = |what| move |e| IoError::new(what, address, e);
        match address {
            Address::Udp(addr) => {
                let what = if addr.ip().is_multicast() {
                    "join"
                } else {
                    "bind"
                };
                let sock = bind_udp_input(*addr).map_err(err(what))?;
                sock.set_read_timeout(Some(READ_TIMEOUT))
                    .map_err(err("configure"))?;
                Ok(Input::Udp(sock, address.clone()))
            }
            Address::File { path, looped } => Ok(Input::File {
                file: File::open(path).map_err(err("open"))?,
                address: address.clone(),
                looped: *looped,
                read: 0,
            }),
            Address::Stdio => Ok(Input::Stdin(io::stdin())),
        }
    }

    /// The local address of a UDP input (useful when bound to port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Input::Udp(s, _) => s.local_addr().ok(),
            _ => None,
        }
    }

    /// The receive buffer of a UDP input, in bytes, as the system reports
    /// it (Linux counts its overhead in it).
    pub fn socket_buffer(&self) -> Option<usize> {
        match self {
            Input::Udp(s, _) => socket2::SockRef::from(s).recv_buffer_size().ok(),
            _ => None,
        }
    }

    /// Whether this is a file input to play again and again (`?loop`).
    pub fn looped(&self) -> bool {
        matches!(self, Input::File { looped: true, .. })
    }

    /// Reads what comes next: a datagram, or up to `buf.len()` bytes of a
    /// file or stdin. ICMP errors from earlier datagrams are not the
    /// input's and are passed over.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Got, IoError> {
        loop {
            let r = match self {
                Input::Udp(s, _) => s.recv(buf),
                Input::File { file, .. } => file.read(buf),
                Input::Stdin(s) => s.lock().read(buf),
            };
            return match r {
                Ok(0) if !matches!(self, Input::Udp(..)) => Ok(Got::Eof),
                Ok(n) => {
                    if let Input::File { read, .. } = self {
                        *read += n as u64;
                    }
                    Ok(Got::Data(n))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    Ok(Got::Idle)
                }
                Err(e)
                    if matches!(self, Input::Udp(..))
                        && e.kind() == io::ErrorKind::ConnectionRefused =>
                {
                    continue
                }
                Err(e) => Err(match self {
                    Input::Udp(_, a) | Input::File { address: a, .. } => IoError::new("read", a, e),
                    Input::Stdin(_) => IoError::new("read", &Address::Stdio, e),
                }),
            };
        }
    }

    /// Starts a file again from its beginning; false if this input cannot.
    pub fn rewind(&mut self) -> Result<bool, IoError> {
        match self {
            Input::File {
                file,
                address,
                read,
                ..
            } => {
                file.rewind()
                    .map_err(|e| IoError::new("rewind", address, e))?;
                *read = 0;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// At the end of a file: starts it again if it is looped (`?loop`)
    /// and gave bytes since it last started (an empty file ends rather
    /// than spin). True if there is more to read.
    pub fn restart(&mut self) -> Result<bool, IoError> {
        match self {
            Input::File {
                looped: true,
                read: 1..,
                ..
            } => self.rewind(),
            _ => Ok(false),
        }
    }
}

/// A UDP output socket: datagrams to one address, from an ephemeral port
/// of the same family.
#[derive(Debug)]
pub struct UdpSender {
    socket: UdpSocket,
    dest: SocketAddr,
    dropped: u64,
}

impl UdpSender {
    pub fn open(dest: SocketAddr) -> io::Result<UdpSender> {
        let local: SocketAddr = match dest {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        Ok(UdpSender {
            socket: UdpSocket::bind(local)?,
            dest,
            dropped: 0,
        })
    }

    /// Sends one datagram. Nobody listening yet (ICMP port unreachable)
    /// or a full socket buffer is no reason to stop a live output: the
    /// datagram is dropped and counted ([`dropped`](Self::dropped)).
    pub fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        match self.socket.send_to(datagram, self.dest) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                ) || e.raw_os_error() == Some(105) /* ENOBUFS */ =>
            {
                self.dropped += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Where the datagrams go.
    pub fn dest(&self) -> SocketAddr {
        self.dest
    }

    /// Datagrams the system would not take.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// A buffered file or stdout output.
#[derive(Debug)]
pub enum Writer {
    File(BufWriter<File>),
    Stdout(BufWriter<io::Stdout>),
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Writer::File(w) => w.write(buf),
            Writer::Stdout(w) => w.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Writer::File(w) => w.write_all(buf),
            Writer::Stdout(w) => w.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Writer::File(w) => w.flush(),
            Writer::Stdout(w) => w.flush(),
        }
    }
}

/// An open output: UDP datagrams, or a file or stdout. How packets are
/// gathered into datagrams is the caller's.
#[derive(Debug)]
pub enum Output {
    Udp(UdpSender),
    Write(Writer),
}

impl Output {
    /// Opens an output; a file is created (or truncated). An address that
    /// no output takes ([`Address::into_output`]) is refused.
    pub fn open(address: &Address) -> Result<Output, IoError> {
        let err = |what| move |e| IoError::new(what, address, e);
        let checked = address
            .clone()
            .into_output(&address.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
            .map_err(err("write to"))?;
        Ok(match checked {
            Address::Udp(dest) => Output::Udp(UdpSender::open(dest).map_err(err("bind"))?),
            Address::File { path, .. } => Output::Write(Writer::File(BufWriter::with_capacity(
                WRITE_BUFFER,
                File::create(path).map_err(err("create"))?,
            ))),
            Address::Stdio => Output::Write(Writer::Stdout(BufWriter::with_capacity(
                WRITE_BUFFER,
                io::stdout(),
            ))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP input gets the receive buffer it asks for, as far as the
    /// system allows (Linux doubles the value for its overhead, and caps
    /// it at `net.core.rmem_max`).
    #[test]
    fn a_udp_input_asks_for_a_big_receive_buffer() {
        let input = Input::open(&"udp://127.0.0.1:0".parse().unwrap()).unwrap();
        let got = input.socket_buffer().unwrap();
        match std::fs::read_to_string("/proc/sys/net/core/rmem_max") {
            Ok(max) => {
                let max: usize = max.trim().parse().unwrap();
                assert_eq!(got, 2 * INPUT_SOCKET_BUFFER.min(max), "rmem_max {max}");
            }
            Err(_) => assert!(got > 0),
        }
    }

    #[test]
    fn udp_at_port_listens_on_every_address() {
        let mut input = Input::open(&"udp://@:0".parse().unwrap()).unwrap();
        let local = input.local_addr().unwrap();
        assert!(local.ip().is_unspecified(), "{local}");
        let mut buf = [0u8; 2048];
        assert_eq!(input.read(&mut buf).unwrap(), Got::Idle);
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(b"datagram", (Ipv4Addr::LOCALHOST, local.port()))
            .unwrap();
        let mut got = Got::Idle;
        for _ in 0..50 {
            got = input.read(&mut buf).unwrap();
            if got != Got::Idle {
                break;
            }
        }
        assert_eq!(got, Got::Data(8));
        assert_eq!(&buf[..8], b"datagram");
    }

    #[test]
    fn a_looped_file_starts_again_and_an_empty_one_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ts");
        std::fs::write(&path, b"abc").unwrap();
        let mut input = Input::open(&format!("{}?loop", path.display()).parse().unwrap()).unwrap();
        assert!(input.looped());
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            assert_eq!(input.read(&mut buf).unwrap(), Got::Data(3));
            assert_eq!(input.read(&mut buf).unwrap(), Got::Eof);
            assert!(input.restart().unwrap());
        }
        // Once through: no more.
        let mut once = Input::open(&path.display().to_string().parse().unwrap()).unwrap();
        assert_eq!(once.read(&mut buf).unwrap(), Got::Data(3));
        assert_eq!(once.read(&mut buf).unwrap(), Got::Eof);
        assert!(!once.restart().unwrap());

        let empty = dir.path().join("empty.ts");
        std::fs::write(&empty, b"").unwrap();
        let mut input = Input::open(&format!("{}?loop", empty.display()).parse().unwrap()).unwrap();
        assert_eq!(input.read(&mut buf).unwrap(), Got::Eof);
        assert!(!input.restart().unwrap());
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = Input::open(&"/nonexistent/in.ts".parse().unwrap()).unwrap_err();
        assert_eq!(e.what, "open");
        assert!(
            e.to_string()
                .starts_with("cannot open /nonexistent/in.ts: "),
            "{e}"
        );
    }

    #[test]
    fn udp_output_sends_datagrams_and_counts_the_refused() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let Output::Udp(mut tx) = Output::open(&Address::Udp(rx.local_addr().unwrap())).unwrap()
        else {
            panic!("not UDP")
        };
        tx.send(b"one").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(rx.recv(&mut buf).unwrap(), 3);
        assert_eq!(tx.dropped(), 0);
        assert!(Output::open(&"a.ts?loop".parse().unwrap()).is_err());
        assert!(Output::open(&"udp://@:5000".parse().unwrap()).is_err());
    }

    #[test]
    fn a_file_output_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ts");
        let Output::Write(mut w) =
            Output::open(&path.display().to_string().parse().unwrap()).unwrap()
        else {
            panic!("not a file")
        };
        w.write_all(b"bytes").unwrap();
        w.flush().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"bytes");
    }
}
