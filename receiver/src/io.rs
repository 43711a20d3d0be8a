//! Where the stream comes from and where the clear stream goes, in the
//! address syntax of `tsio` (the headend's too): a file (`PATH`,
//! `file://PATH`, `PATH?loop` to play it again and again), stdin/stdout
//! (`-`) or UDP (`udp://HOST:PORT`, a multicast group joined;
//! `udp://@:PORT` listens on every address).
//!
//! The input is read on its own thread, so that a live UDP stream keeps
//! being drained by the socket while the pipeline waits for the card; when
//! the pipeline falls too far behind, whole datagrams are dropped and
//! counted. Files and pipes are read with back-pressure and lose nothing.
//! UDP output carries 7 packets (1316 bytes) per datagram, as IPTV does.

use crate::pipeline::PacketSink;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use ts::PACKET_LEN;
pub use tsio::{Address, AddressError, IoError};
use tsio::{Got, UdpSender, Writer};

/// TS packets per UDP datagram (7 × 188 = 1316 bytes fits a 1500-byte MTU).
pub const PACKETS_PER_DATAGRAM: usize = 7;
/// Bytes per read from a file or pipe: a whole number of packets.
const READ_CHUNK: usize = PACKET_LEN * 348;
/// Reads (or datagrams) that may wait for the pipeline.
const QUEUE_FILE: usize = 16;
const QUEUE_UDP: usize = 8192;

/// What the input thread hands over.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes, and for a UDP input the time the datagram came (a file's
    /// reads are paced by the pipeline and say nothing about the source).
    Data(Vec<u8>, Option<Instant>),
    End,
    Failed(IoError),
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
    /// Opens the address and starts reading. A looped file (`?loop`)
    /// starts again at its end, and ends only if it is empty.
    pub fn open(address: &Address) -> Result<Input, IoError> {
        let input = tsio::Input::open(address)?;
        let local_addr = input.local_addr();
        let dropped = Arc::new(AtomicU64::new(0));
        let udp = address.is_udp();
        let (tx, rx) = mpsc::sync_channel(if udp { QUEUE_UDP } else { QUEUE_FILE });
        let d = dropped.clone();
        let thread = std::thread::Builder::new()
            .name(if udp { "udp-input" } else { "input" }.into())
            .spawn(move || match udp {
                true => udp_loop(input, tx, d),
                false => read_loop(input, tx),
            })
            .map_err(|source| IoError {
                what: "start reading",
                address: address.to_string(),
                source,
            })?;
        Ok(Input {
            rx,
            dropped,
            _thread: thread,
            local_addr,
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

fn udp_loop(mut input: tsio::Input, tx: SyncSender<Chunk>, dropped: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match input.read(&mut buf) {
            Ok(Got::Data(n)) => {
                match tx.try_send(Chunk::Data(buf[..n].to_vec(), Some(Instant::now()))) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
            Ok(Got::Idle) | Ok(Got::Eof) => {}
            Err(e) => {
                let _ = tx.send(Chunk::Failed(e));
                return;
            }
        }
    }
}

fn read_loop(mut input: tsio::Input, tx: SyncSender<Chunk>) {
    loop {
        let mut buf = vec![0u8; READ_CHUNK];
        match input.read(&mut buf) {
            Ok(Got::Data(n)) => {
                buf.truncate(n);
                if tx.send(Chunk::Data(buf, None)).is_err() {
                    return;
                }
            }
            Ok(Got::Idle) => {}
            Ok(Got::Eof) => match input.restart() {
                Ok(true) => {}
                Ok(false) => {
                    let _ = tx.send(Chunk::End);
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Chunk::Failed(e));
                    return;
                }
            },
            Err(e) => {
                let _ = tx.send(Chunk::Failed(e));
                return;
            }
        }
    }
}

/// Opens an output as a packet sink.
pub fn open_output(address: &Address) -> Result<Box<dyn PacketSink>, IoError> {
    Ok(match tsio::Output::open(address)? {
        tsio::Output::Udp(sender) => Box::new(UdpSink::new(sender)),
        tsio::Output::Write(w) => Box::new(WriterSink(w)),
    })
}

/// A file or stdout.
#[derive(Debug)]
pub struct WriterSink(pub Writer);

impl PacketSink for WriterSink {
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
    sender: UdpSender,
    buf: Vec<u8>,
}

impl UdpSink {
    pub fn new(sender: UdpSender) -> UdpSink {
        UdpSink {
            sender,
            buf: Vec::with_capacity(PACKET_LEN * PACKETS_PER_DATAGRAM),
        }
    }

    /// A sink sending to `addr`.
    pub fn connect(addr: SocketAddr) -> io::Result<UdpSink> {
        Ok(UdpSink::new(UdpSender::open(addr)?))
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // Nobody listening yet is not a reason to stop a live output: the
        // sender drops and counts such datagrams.
        let r = self.sender.send(&self.buf);
        self.buf.clear();
        r
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
    use std::net::{Ipv4Addr, UdpSocket};

    #[test]
    fn a_looped_file_is_read_again_and_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ts");
        let p = ts::packet::null_packet();
        std::fs::write(&path, p).unwrap();
        let input = Input::open(&format!("{}?loop", path.display()).parse().unwrap()).unwrap();
        let mut got = 0;
        while got < 10 * PACKET_LEN {
            match input.next(Duration::from_secs(5)) {
                Some(Chunk::Data(d, _)) => {
                    assert_eq!(d, p);
                    got += d.len();
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn udp_at_port_listens_on_every_address() {
        let e: Address = "udp://@:0".parse().unwrap();
        let input = Input::open(&e).unwrap();
        let local = input.local_addr.unwrap();
        assert!(local.ip().is_unspecified(), "{local}");
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = ts::packet::null_packet();
        tx.send_to(&p, (Ipv4Addr::LOCALHOST, local.port())).unwrap();
        match input.next(Duration::from_secs(5)) {
            Some(Chunk::Data(d, _)) => assert_eq!(d, p),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_url_input_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.ts");
        let p = ts::packet::null_packet();
        std::fs::write(&path, p).unwrap();
        let e: Address = format!("file://{}", path.display()).parse().unwrap();
        assert_eq!(
            e,
            Address::File {
                path,
                looped: false
            }
        );
        let input = Input::open(&e).unwrap();
        match input.next(Duration::from_secs(5)) {
            Some(Chunk::Data(d, _)) => assert_eq!(d, p),
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
