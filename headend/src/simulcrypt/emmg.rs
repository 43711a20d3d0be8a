//! The EMMG client (TS 103 197 §6, EMMG⇔MUX): one thread per
//! `[[simulcrypt.mux]]` table connects to the MUX over TCP, opens its
//! channel and stream, asks for bandwidth, then sends the EMM carousel in
//! `data_provision` messages, paced to the bandwidth the MUX allocated.
//!
//! The order of operations on each connection:
//!
//! 1. `channel_setup` (client_id, data_channel_id, section_TSpkt_flag),
//!    answered by `channel_status`;
//! 2. `stream_setup` (data_stream_id, data_id, data_type 0x00 EMM),
//!    answered by `stream_status`;
//! 3. `stream_BW_request` with `bandwidth_kbps`, answered by
//!    `stream_BW_allocation`: the EMMs are paced to the smaller of the two
//!    (the request when the allocation names no bandwidth; none at all
//!    when it is 0), and a later allocation changes the pace;
//! 4. `data_provision` messages, on the connection or in UDP datagrams,
//!    each with one or more datagrams: an EMM section each, or the TS
//!    packets of one section on `ts_pid`.
//!
//! The MUX reads the daemon's EMM log ([`CaOutput`]) through a cursor of
//! its own, like a channel stream: it takes nothing from the channels,
//! which send every EMM whatever the MUX does. Its pace counts TS bytes on
//! the air (a section of `n` bytes takes `ceil((n + 1) / 184)` packets), a
//! bank of at most 200 ms of bandwidth, so it never sends more than the
//! allocation over any stretch longer than that and one section. What it
//! cannot send yet waits in the log, at most what its allocation sends in
//! one `emm_cycle_ms` (and a fetch, 256 sections): older sections are
//! skipped, since the carousel sends every card's state again within a
//! cycle, and counted (`iodoform_mux_emm_sections_dropped_total`). While
//! connected with some bandwidth it reports its place in the log like a
//! channel ([`EmmMark`]), so that a renewed key goes into ECMs only once
//! the MUX has sent its delivery too; the bound on its lag bounds that
//! wait.
//!
//! `channel_test` and `stream_test` are answered with `channel_status`
//! and `stream_status`; a `channel_error` or `stream_error` is logged in
//! one line naming the fix and counted by code, and ends the connection
//! when it comes during the set-up or says the channel or stream is gone
//! (unknown data_channel_id or data_stream_id, unrecoverable error). A
//! message of the MUX's that breaks the standard gets a `channel_error`
//! with its `error_status`; one that does not frame, or speaks another
//! protocol version, also ends the connection. Every lost connection is
//! retried after a backoff (0.5 s doubling to 10 s), with a log line and
//! `iodoform_mux_reconnects_total`. Nothing a MUX sends can panic the
//! daemon: the bytes go through the `simulcrypt` crate's typed decoding.

use crate::config::{Datagrams, MuxConfig, Transport};
use crate::metrics::Exposition;
use crate::output::{CaOutput, EmmMark};
use simulcrypt::emmg::{self, status as code, EmmgMessage, DATA_TYPE_EMM};
use simulcrypt::{ErrorEntry, Header, Message, Violation, ViolationKind, HEADER_LEN};
use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the MUX has to answer a set-up message.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait before a reconnection; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest wait between reconnections.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often the pacer runs (and the longest wait on the socket).
const POLL: Duration = Duration::from_millis(20);
/// Seconds of allocated bandwidth the pacer may bank while idle.
const BANK_S: f64 = 0.2;
/// The largest data_provision message body on TCP, and in a UDP datagram
/// (a single larger section still goes alone).
const TCP_MESSAGE_MAX: usize = 16 * 1024;
const UDP_MESSAGE_MAX: usize = 1400;
/// Sections fetched from the EMM log at a time.
const FETCH: usize = 256;
const NONE: u64 = u64::MAX;

/// TS bytes a section of `len` bytes takes on the air.
fn air_bytes(len: usize) -> u64 {
    (len as u64 + 1).div_ceil(184) * 188
}

/// One MUX: its settings and what it is doing, shared with `headend
/// status` and `/metrics`.
#[derive(Debug)]
pub struct MuxPeer {
    pub config: MuxConfig,
    pub name: String,
    pub client_id: u32,
    /// headend.toml's `emm_cycle_ms`: the MUX's backlog is kept within one
    /// cycle at its allocation.
    cycle_ms: u64,
    connected: AtomicBool,
    allocated_kbps: AtomicU64,
    bytes_sent: AtomicU64,
    sections_sent: AtomicU64,
    messages_sent: AtomicU64,
    dropped: AtomicU64,
    backlog: AtomicU64,
    reconnects: AtomicU64,
    /// error_status values the MUX sent, by code.
    errors: Mutex<BTreeMap<u16, u64>>,
    /// Faults found in the MUX's messages, by the error_status answered.
    faults: Mutex<BTreeMap<u16, u64>>,
    last_error: Mutex<Option<String>>,
}

impl MuxPeer {
    fn new(config: MuxConfig, index: usize, cycle_ms: u64) -> MuxPeer {
        MuxPeer {
            name: config.label(),
            client_id: config.client_id_at(index),
            cycle_ms,
            config,
            connected: AtomicBool::new(false),
            allocated_kbps: AtomicU64::new(NONE),
            bytes_sent: AtomicU64::new(0),
            sections_sent: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: Mutex::default(),
            faults: Mutex::default(),
            last_error: Mutex::default(),
        }
    }

    /// Whether the stream is set up and bandwidth allocated.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The bandwidth allocated on the current connection, kbit/s.
    pub fn allocated_kbps(&self) -> Option<u16> {
        match self.allocated_kbps.load(Ordering::Relaxed) {
            NONE => None,
            v => u16::try_from(v).ok(),
        }
    }

    /// Bytes of datagrams sent (sections, or TS packets).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    fn count(map: &Mutex<BTreeMap<u16, u64>>, code: u16) {
        *map.lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    fn set_error(&self, e: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_owned());
    }

    fn status(&self) -> api::MuxStatus {
        let c = &self.config;
        let codes = |m: &Mutex<BTreeMap<u16, u64>>| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (format!("0x{k:04x}"), *v))
                .collect()
        };
        api::MuxStatus {
            name: self.name.clone(),
            address: c.address.to_string(),
            client_id: self.client_id,
            data_channel_id: c.data_channel_id,
            data_stream_id: c.data_stream_id,
            data_id: c.data_id,
            datagrams: match c.datagrams {
                Datagrams::Sections => "sections".into(),
                Datagrams::Ts => "ts".into(),
            },
            data_provision: match c.data_provision {
                Transport::Tcp => "tcp".into(),
                Transport::Udp => "udp".into(),
            },
            connected: self.connected(),
            requested_kbps: c.bandwidth_kbps,
            allocated_kbps: self.allocated_kbps(),
            emm_bytes_sent: self.bytes_sent(),
            emm_sections_sent: self.sections_sent.load(Ordering::Relaxed),
            emm_sections_dropped: self.dropped.load(Ordering::Relaxed),
            backlog_sections: self.backlog.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            errors: codes(&self.errors),
            faults: codes(&self.faults),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// Every MUX of the config (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct MuxPeers(Arc<Vec<Arc<MuxPeer>>>);

impl MuxPeers {
    /// The MUXes of `configs`, with the carousel's `emm_cycle_ms`.
    pub fn new(configs: &[MuxConfig], cycle_ms: u64) -> MuxPeers {
        MuxPeers(Arc::new(
            configs
                .iter()
                .enumerate()
                .map(|(i, c)| Arc::new(MuxPeer::new(c.clone(), i, cycle_ms)))
                .collect(),
        ))
    }

    pub fn peers(&self) -> &[Arc<MuxPeer>] {
        &self.0
    }

    /// Each MUX as `headend status` shows it.
    pub fn statuses(&self) -> Vec<api::MuxStatus> {
        self.0.iter().map(|p| p.status()).collect()
    }

    /// Starts one client thread per MUX; they stop when `stop` is set.
    pub fn spawn(&self, output: &CaOutput, stop: &Arc<AtomicBool>) -> Vec<JoinHandle<()>> {
        self.0
            .iter()
            .filter_map(|p| {
                let name = p.name.clone();
                let (p, output, stop) = (p.clone(), output.clone(), stop.clone());
                std::thread::Builder::new()
                    .name("emmg".into())
                    .spawn(move || run(&p, &output, &stop))
                    .map_err(|e| tracing::error!(mux = %name, error = %e, "cannot start the EMMG client thread"))
                    .ok()
            })
            .collect()
    }

    /// The MUX families of `/metrics` (written with no sample when no MUX
    /// is configured).
    pub fn render_metrics(&self, e: &mut Exposition) {
        let each = |e: &mut Exposition,
                    name: &str,
                    help: &str,
                    counter: bool,
                    v: &dyn Fn(&MuxPeer) -> u64| {
            let mut f = if counter {
                e.counter(name, help)
            } else {
                e.gauge(name, help)
            };
            for p in self.0.iter() {
                f.sample(&[("mux", &p.name)], v(p));
            }
        };
        each(
            e,
            "iodoform_mux_connected",
            "1 while the EMMG channel and stream to the MUX are set up and bandwidth is allocated.",
            false,
            &|p| u64::from(p.connected()),
        );
        each(
            e,
            "iodoform_mux_allocated_bandwidth_bits_per_second",
            "Bandwidth the MUX allocated to the EMM stream on the current connection, bit/s of TS (0 when none).",
            false,
            &|p| u64::from(p.allocated_kbps().unwrap_or(0)) * 1000,
        );
        each(
            e,
            "iodoform_mux_requested_bandwidth_bits_per_second",
            "Bandwidth asked of the MUX (bandwidth_kbps), bit/s of TS.",
            false,
            &|p| u64::from(p.config.bandwidth_kbps) * 1000,
        );
        each(
            e,
            "iodoform_mux_emm_bytes_sent_total",
            "Bytes of EMM datagrams (sections or TS packets) sent to the MUX in data_provision.",
            true,
            &|p| p.bytes_sent(),
        );
        each(
            e,
            "iodoform_mux_emm_sections_sent_total",
            "EMM sections sent to the MUX.",
            true,
            &|p| p.sections_sent.load(Ordering::Relaxed),
        );
        each(
            e,
            "iodoform_mux_emm_sections_dropped_total",
            "EMM sections the MUX never got: older than what its allocation sends in one emm_cycle_ms (skipped; the carousel repeats them), or dropped by the EMM log first.",
            true,
            &|p| p.dropped.load(Ordering::Relaxed),
        );
        each(
            e,
            "iodoform_mux_emm_backlog_sections",
            "EMM sections made but not yet sent to the MUX.",
            false,
            &|p| p.backlog.load(Ordering::Relaxed),
        );
        each(
            e,
            "iodoform_mux_reconnects_total",
            "Connections to the MUX set up again after one was lost or refused.",
            true,
            &|p| p.reconnects.load(Ordering::Relaxed),
        );
        let by_code = |e: &mut Exposition,
                       name: &str,
                       help: &str,
                       map: &dyn Fn(&MuxPeer) -> &Mutex<BTreeMap<u16, u64>>| {
            let mut f = e.counter(name, help);
            for p in self.0.iter() {
                let m = map(p).lock().unwrap_or_else(|e| e.into_inner()).clone();
                for (k, v) in m {
                    f.sample(&[("mux", &p.name), ("code", &format!("0x{k:04x}"))], v);
                }
            }
        };
        by_code(
            e,
            "iodoform_mux_errors_total",
            "channel_error and stream_error error_status values received from the MUX, by code.",
            &|p| &p.errors,
        );
        by_code(
            e,
            "iodoform_mux_protocol_faults_total",
            "Messages of the MUX that broke the standard, by the error_status answered.",
            &|p| &p.faults,
        );
    }
}

/// What the operator can do about an error_status from a MUX.
pub fn fix(status: u16) -> &'static str {
    match status {
        code::UNSUPPORTED_PROTOCOL_VERSION => {
            "the MUX does not speak version 3 of TS 103 197; set its EMMG interface to version 3"
        }
        code::UNKNOWN_CLIENT_ID => {
            "set client_id of this [[simulcrypt.mux]] table to the one the MUX is configured for"
        }
        code::CLIENT_ID_IN_USE => {
            "another EMMG holds this client_id on the MUX; give each EMMG its own client_id"
        }
        code::DATA_CHANNEL_ID_IN_USE => "set another data_channel_id for this MUX",
        code::DATA_STREAM_ID_IN_USE => "set another data_stream_id for this MUX",
        code::DATA_ID_IN_USE | code::UNKNOWN_DATA_ID => {
            "set data_id to the one the MUX expects for Iodoform's EMMs"
        }
        code::EXCEEDED_BANDWIDTH => {
            "the MUX counts more than it allocated; lower bandwidth_kbps or raise the MUX's allocation"
        }
        code::TOO_MANY_CHANNELS | code::TOO_MANY_STREAMS_ON_CHANNEL | code::TOO_MANY_STREAMS => {
            "the MUX is at its limit; close another EMMG's channel or raise the MUX's limit"
        }
        code::UNKNOWN_DATA_CHANNEL_ID | code::UNKNOWN_DATA_STREAM_ID => {
            "the MUX lost the channel or stream; the headend sets it up again"
        }
        code::UNRECOVERABLE_ERROR => "the MUX closed the channel; the headend sets it up again",
        _ => "see the MUX's log for this error",
    }
}

/// Why a connection ended.
enum End {
    Stopped,
    /// Retry, after a backoff; the log line is written already.
    Lost,
}

/// The client thread of one MUX: sessions, and backoffs between them.
fn run(peer: &MuxPeer, output: &CaOutput, stop: &AtomicBool) {
    let mut backoff = BACKOFF_MIN;
    let mut ever = false;
    while !stop.load(Ordering::Relaxed) {
        let mut c = Client {
            peer,
            output,
            stop,
            established: false,
        };
        let end = c.session(ever);
        peer.connected.store(false, Ordering::Relaxed);
        peer.allocated_kbps.store(NONE, Ordering::Relaxed);
        if c.established {
            ever = true;
            backoff = BACKOFF_MIN;
        }
        if let End::Stopped = end {
            break;
        }
        tracing::debug!(mux = %peer.name, wait_ms = backoff.as_millis() as u64, "EMMG: reconnecting");
        let until = Instant::now() + backoff;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(POLL);
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// A decoded frame from the MUX.
enum Frame {
    Msg(EmmgMessage),
    /// A message that breaks the standard; `fatal`: the connection cannot
    /// go on (it does not frame, or another protocol version).
    Bad {
        violation: Violation,
        fatal: bool,
    },
}

/// One whole message taken off the front of `buf`, if it holds one: the
/// header's message_length says where it ends, so whatever the bytes, a
/// frame is at most 65 540 bytes and is always consumed.
fn frame(buf: &mut Vec<u8>) -> Option<Frame> {
    let head: &[u8; HEADER_LEN] = buf.first_chunk()?;
    let header = Header::parse(head);
    let total = HEADER_LEN + usize::from(header.length);
    if buf.len() < total {
        return None;
    }
    let decoded = Message::decode_body(header, &buf[HEADER_LEN..total]);
    buf.drain(..total);
    Some(match decoded {
        Err(e) => Frame::Bad {
            violation: Violation::new(ViolationKind::InvalidMessage, None, e.to_string()),
            fatal: true,
        },
        Ok(m) => match EmmgMessage::decode(&m) {
            Ok(x) => Frame::Msg(x),
            Err(v) => Frame::Bad {
                fatal: v.kind == ViolationKind::UnsupportedVersion,
                violation: v,
            },
        },
    })
}

/// The TCP connection and what has been read but not framed yet.
struct Conn {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// The next frame, waiting at most `wait`; `Ok(None)` if none came.
    fn next(&mut self, wait: Duration) -> Result<Option<Frame>, String> {
        if let Some(f) = self.take() {
            return Ok(Some(f));
        }
        self.tcp
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        let mut tmp = [0u8; 8192];
        match self.tcp.read(&mut tmp) {
            Ok(0) => Err("the MUX closed the connection".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(self.take())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(format!("reading from the MUX: {e}")),
        }
    }

    /// One whole message off the buffer, if there is one.
    fn take(&mut self) -> Option<Frame> {
        frame(&mut self.buf)
    }

    fn send(&mut self, m: &EmmgMessage) -> Result<usize, String> {
        let bytes = m
            .to_message()
            .encode()
            .ok_or_else(|| "internal error: a message too long to encode".to_string())?;
        self.tcp
            .write_all(&bytes)
            .map_err(|e| format!("writing to the MUX: {e}"))?;
        Ok(bytes.len())
    }
}

struct Client<'a> {
    peer: &'a MuxPeer,
    output: &'a CaOutput,
    stop: &'a AtomicBool,
    /// The stream was set up and bandwidth allocated on this connection.
    established: bool,
}

impl Client<'_> {
    fn cfg(&self) -> &MuxConfig {
        &self.peer.config
    }

    fn flag(&self) -> u8 {
        match self.cfg().datagrams {
            Datagrams::Sections => 0,
            Datagrams::Ts => 1,
        }
    }

    /// Logs why the connection is lost and records it.
    fn lost(&self, why: &str) -> End {
        let p = self.peer;
        tracing::warn!(
            mux = %p.name,
            address = %p.config.address,
            "EMMG: {why}; reconnecting (backoff {}-{} s)",
            BACKOFF_MIN.as_secs_f32(),
            BACKOFF_MAX.as_secs()
        );
        p.set_error(why);
        End::Lost
    }

    fn session(&mut self, reconnect: bool) -> End {
        let p = self.peer;
        let cfg = self.cfg().clone();
        let tcp = match TcpStream::connect_timeout(&cfg.address, CONNECT_TIMEOUT) {
            Ok(t) => t,
            Err(e) => {
                let why = format!(
                    "cannot connect to the MUX at {}: {e} (check that the MUX runs and listens there)",
                    cfg.address
                );
                // The same refusal again: debug only.
                let again = p
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_deref()
                    == Some(why.as_str());
                if again {
                    tracing::debug!(mux = %p.name, "EMMG: {why}");
                    return End::Lost;
                }
                return self.lost(&why);
            }
        };
        let _ = tcp.set_nodelay(true);
        if let Err(e) = tcp.set_write_timeout(Some(REPLY_TIMEOUT)) {
            return self.lost(&format!("cannot set up the socket: {e}"));
        }
        let mut conn = Conn {
            tcp,
            buf: Vec::new(),
        };
        let (client_id, channel, stream) = (p.client_id, cfg.data_channel_id, cfg.data_stream_id);
        // 1. The channel.
        let setup = EmmgMessage::ChannelSetup {
            client_id,
            channel,
            section_tspkt_flag: self.flag(),
        };
        if let Err(e) = conn.send(&setup) {
            return self.lost(&e);
        }
        match self.reply(&mut conn, "channel_status", |m| {
            matches!(m, EmmgMessage::ChannelStatus { .. })
        }) {
            Ok(EmmgMessage::ChannelStatus {
                section_tspkt_flag, ..
            }) if section_tspkt_flag != self.flag() => {
                return self.lost(&format!(
                    "the MUX wants section_TSpkt_flag {section_tspkt_flag}, the config says {}; set datagrams = \"{}\"",
                    self.flag(),
                    if section_tspkt_flag == 1 { "ts" } else { "sections" }
                ));
            }
            Ok(_) => {}
            Err(end) => return end,
        }
        // 2. The stream.
        let setup = EmmgMessage::StreamSetup {
            client_id,
            channel,
            stream,
            data_id: cfg.data_id,
            data_type: DATA_TYPE_EMM,
        };
        if let Err(e) = conn.send(&setup) {
            return self.lost(&e);
        }
        if let Err(end) = self.reply(&mut conn, "stream_status", |m| {
            matches!(m, EmmgMessage::StreamStatus { .. })
        }) {
            return end;
        }
        // 3. The bandwidth.
        let ask = EmmgMessage::StreamBwRequest {
            client_id,
            channel,
            stream,
            bandwidth: Some(cfg.bandwidth_kbps),
        };
        if let Err(e) = conn.send(&ask) {
            return self.lost(&e);
        }
        let granted = match self.reply(&mut conn, "stream_BW_allocation", |m| {
            matches!(m, EmmgMessage::StreamBwAllocation { .. })
        }) {
            Ok(EmmgMessage::StreamBwAllocation { bandwidth, .. }) => bandwidth,
            Ok(_) => None,
            Err(end) => return end,
        };
        self.established = true;
        p.connected.store(true, Ordering::Relaxed);
        if reconnect {
            p.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let kbps = self.allocate(granted);
        tracing::info!(
            mux = %p.name,
            address = %cfg.address,
            client_id = format_args!("0x{client_id:08X}"),
            channel,
            stream,
            requested_kbps = cfg.bandwidth_kbps,
            allocated_kbps = kbps,
            "EMMG: {} the MUX; sending the EMM carousel",
            if reconnect { "reconnected to" } else { "connected to" }
        );
        // 4. The EMMs.
        let udp = match cfg.data_provision {
            Transport::Tcp => None,
            Transport::Udp => {
                let local: SocketAddr = match cfg.udp_address {
                    Some(SocketAddr::V6(_)) => "[::]:0".parse().expect("an address"),
                    _ => "0.0.0.0:0".parse().expect("an address"),
                };
                match UdpSocket::bind(local) {
                    Ok(s) => Some(s),
                    Err(e) => return self.lost(&format!("cannot open a UDP socket: {e}")),
                }
            }
        };
        let cursor = self.output.emm_cursor();
        let mut pump = Pump {
            cursor,
            pending: VecDeque::new(),
            mark: self.output.emm_mark(cursor),
            budget: 0.0,
            last: Instant::now(),
            kbps,
            cc: 0,
            udp,
            warned_drop: false,
        };
        loop {
            if self.stop.load(Ordering::Relaxed) {
                // A clean close: the stream, then the channel.
                let _ = conn.send(&EmmgMessage::StreamCloseRequest {
                    client_id,
                    channel,
                    stream,
                });
                let _ = conn.send(&EmmgMessage::ChannelClose { client_id, channel });
                return End::Stopped;
            }
            match conn.next(POLL) {
                Ok(Some(f)) => {
                    if let Err(end) = self.handle(&mut conn, f, &mut pump) {
                        return end;
                    }
                }
                Ok(None) => {}
                Err(e) => return self.lost(&e),
            }
            if let Err(e) = self.pump(&mut conn, &mut pump) {
                return self.lost(&e);
            }
        }
    }

    /// The allocation to pace to, recorded and checked against the
    /// daemon's EMM bandwidth.
    fn allocate(&self, granted: Option<u16>) -> u16 {
        let cfg = self.cfg();
        let kbps = granted.map_or(cfg.bandwidth_kbps, |g| g.min(cfg.bandwidth_kbps));
        self.peer
            .allocated_kbps
            .store(u64::from(kbps), Ordering::Relaxed);
        if u64::from(kbps) * 1000 < self.output.emm_bitrate() {
            tracing::warn!(
                mux = %self.peer.name,
                allocated_kbps = kbps,
                emm_bitrate = self.output.emm_bitrate(),
                "EMMG: the MUX allocated less than emm_bitrate, so EMMs reach its cards later than the channels' (and a renewal waits for them); ask the MUX for more (bandwidth_kbps) or lower emm_bitrate"
            );
        }
        kbps
    }

    /// Waits for the answer `want` names, answering tests meanwhile; a
    /// channel_error or stream_error, a fatal fault, a closed connection or
    /// the time running out ends the connection.
    fn reply(
        &self,
        conn: &mut Conn,
        want: &str,
        is: impl Fn(&EmmgMessage) -> bool,
    ) -> Result<EmmgMessage, End> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Err(End::Stopped);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.lost(&format!(
                    "the MUX sent no {want} within {} s",
                    REPLY_TIMEOUT.as_secs()
                )));
            }
            match conn.next(left.min(Duration::from_millis(100))) {
                Ok(Some(Frame::Msg(m))) if is(&m) => return Ok(m),
                Ok(Some(Frame::Msg(
                    EmmgMessage::ChannelError { errors, .. }
                    | EmmgMessage::StreamError { errors, .. },
                ))) => {
                    return Err(self
                        .mux_error(&errors, &format!("refused the set-up (waiting for {want})")));
                }
                Ok(Some(f)) => self.answer(conn, f)?,
                Ok(None) => {}
                Err(e) => return Err(self.lost(&e)),
            }
        }
    }

    /// Records and logs a channel_error or stream_error of the MUX's, and
    /// ends the connection.
    fn mux_error(&self, errors: &[ErrorEntry], when: &str) -> End {
        let line = self.describe(errors);
        self.lost(&format!("the MUX {when}: {line}"))
    }

    /// Counts the codes, and one line: each code with its fix.
    fn describe(&self, errors: &[ErrorEntry]) -> String {
        errors
            .iter()
            .map(|e| {
                MuxPeer::count(&self.peer.errors, e.status);
                let info = e
                    .information
                    .as_deref()
                    .map(|i| {
                        let t: String = String::from_utf8_lossy(i)
                            .chars()
                            .filter(|c| !c.is_control())
                            .take(120)
                            .collect();
                        format!(" ({t})")
                    })
                    .unwrap_or_default();
                format!("error_status 0x{:04x}{info}: {}", e.status, fix(e.status))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A message in the data phase.
    fn handle(&self, conn: &mut Conn, f: Frame, pump: &mut Pump) -> Result<(), End> {
        match f {
            Frame::Msg(EmmgMessage::StreamBwAllocation { bandwidth, .. }) => {
                pump.kbps = self.allocate(bandwidth);
                tracing::info!(mux = %self.peer.name, allocated_kbps = pump.kbps, "EMMG: the MUX changed the allocation");
                Ok(())
            }
            Frame::Msg(
                EmmgMessage::ChannelError { errors, .. } | EmmgMessage::StreamError { errors, .. },
            ) => {
                let gone = errors.iter().any(|e| {
                    matches!(
                        e.status,
                        code::UNKNOWN_DATA_CHANNEL_ID
                            | code::UNKNOWN_DATA_STREAM_ID
                            | code::UNRECOVERABLE_ERROR
                            | code::UNKNOWN_CLIENT_ID
                    )
                });
                if gone {
                    return Err(self.mux_error(&errors, "ended the channel"));
                }
                let line = self.describe(&errors);
                tracing::warn!(mux = %self.peer.name, "EMMG: the MUX reports {line}");
                self.peer.set_error(&line);
                Ok(())
            }
            f => self.answer(conn, f),
        }
    }

    /// Tests answered, faults answered with channel_error, the rest let be.
    fn answer(&self, conn: &mut Conn, f: Frame) -> Result<(), End> {
        let cfg = self.cfg();
        let (client_id, channel, stream) =
            (self.peer.client_id, cfg.data_channel_id, cfg.data_stream_id);
        let reply = match f {
            Frame::Msg(EmmgMessage::ChannelTest { .. }) => EmmgMessage::ChannelStatus {
                client_id,
                channel,
                section_tspkt_flag: self.flag(),
            },
            Frame::Msg(EmmgMessage::StreamTest { .. }) => EmmgMessage::StreamStatus {
                client_id,
                channel,
                stream,
                data_id: cfg.data_id,
                data_type: DATA_TYPE_EMM,
            },
            Frame::Msg(m) => {
                tracing::debug!(mux = %self.peer.name, message = emmg::message_name(m.to_message().message_type).unwrap_or("?"), "EMMG: ignored a message of the MUX");
                return Ok(());
            }
            Frame::Bad { violation, fatal } => {
                let status = violation.emmg_status();
                MuxPeer::count(&self.peer.faults, status);
                let answer = EmmgMessage::ChannelError {
                    client_id,
                    channel,
                    errors: vec![ErrorEntry {
                        status,
                        information: Some(violation.detail.clone().into_bytes()),
                    }],
                };
                let _ = conn.send(&answer);
                let line = format!(
                    "the MUX sent a message that breaks TS 103 197 ({}; answered error_status 0x{status:04x})",
                    violation.detail
                );
                if fatal {
                    return Err(self.lost(&format!(
                        "{line}; check that the address is the MUX's EMMG port and that it speaks version 3"
                    )));
                }
                tracing::warn!(mux = %self.peer.name, "EMMG: {line}");
                self.peer.set_error(&line);
                return Ok(());
            }
        };
        conn.send(&reply).map(|_| ()).map_err(|e| self.lost(&e))
    }

    /// Sends what the allocated bandwidth allows since the last call.
    fn pump(&self, conn: &mut Conn, pump: &mut Pump) -> Result<(), String> {
        let now = Instant::now();
        let dt = now.duration_since(pump.last).as_secs_f64();
        pump.last = now;
        let rate = f64::from(pump.kbps) * 1000.0 / 8.0;
        pump.budget = (pump.budget + rate * dt).min(rate * BANK_S);
        self.skip_stale(pump, rate);
        let cfg = self.cfg();
        let max = match cfg.data_provision {
            Transport::Tcp => TCP_MESSAGE_MAX,
            Transport::Udp => UDP_MESSAGE_MAX,
        };
        let mut batch: Vec<Vec<u8>> = Vec::new();
        let mut size = 0;
        while pump.budget > 0.0 {
            if pump.pending.is_empty() {
                self.fetch(pump);
            }
            let Some(section) = pump.pending.pop_front() else {
                break;
            };
            let datagram = match cfg.datagrams {
                Datagrams::Sections => section.to_vec(),
                Datagrams::Ts => {
                    let mut pkts = Vec::new();
                    if let Err(e) =
                        ts::psi::packetize(&[&section], cfg.ts_pid, &mut pump.cc, &mut pkts)
                    {
                        tracing::error!(mux = %self.peer.name, error = %e, "EMMG: internal error: an EMM section that does not packetize; skipped");
                        continue;
                    }
                    pkts.concat()
                }
            };
            pump.budget -= air_bytes(section.len()) as f64;
            if !batch.is_empty() && size + 4 + datagram.len() > max {
                self.provide(conn, pump, std::mem::take(&mut batch))?;
                size = 0;
            }
            size += 4 + datagram.len();
            batch.push(datagram);
        }
        if !batch.is_empty() {
            self.provide(conn, pump, batch)?;
        }
        if pump.pending.len() < FETCH {
            self.fetch(pump);
        }
        let next_unsent = pump.cursor - pump.pending.len() as u64;
        // With no bandwidth it sends nothing, so it holds no renewal back
        // (a reader stops counting 5 s after its last report).
        if pump.kbps > 0 {
            pump.mark.set(next_unsent, crate::daemon::now_ms());
        }
        self.peer.backlog.store(
            self.output.emm_cursor().saturating_sub(next_unsent),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Skips what the allocation cannot send within one EMM cycle: the
    /// carousel sends every card's state again within a cycle, so the
    /// newest cycle's worth is all the MUX needs, and its lag (which holds
    /// renewals back while it counts as a reader) stays bounded.
    fn skip_stale(&self, pump: &mut Pump, rate: f64) {
        let cycle_s = self.peer.cycle_ms as f64 / 1000.0;
        let keep = ((rate * cycle_s / 188.0).ceil() as u64).max(FETCH as u64);
        let head = self.output.emm_cursor();
        let next_unsent = pump.cursor - pump.pending.len() as u64;
        if head.saturating_sub(next_unsent) <= keep {
            return;
        }
        let to = head - keep;
        pump.pending.clear();
        pump.cursor = to;
        self.count_dropped(pump, to - next_unsent);
    }

    fn count_dropped(&self, pump: &mut Pump, n: u64) {
        self.peer.dropped.fetch_add(n, Ordering::Relaxed);
        if !pump.warned_drop {
            pump.warned_drop = true;
            tracing::warn!(
                mux = %self.peer.name,
                dropped = n,
                allocated_kbps = pump.kbps,
                "EMMG: the MUX's bandwidth cannot carry the EMM carousel, so older EMM sections were skipped (the carousel repeats them); ask the MUX for more (bandwidth_kbps) or lower emm_bitrate"
            );
        }
    }

    fn fetch(&self, pump: &mut Pump) {
        let (got, next, dropped) = self.output.emm_sections_since(pump.cursor, FETCH);
        pump.cursor = next;
        if dropped > 0 {
            self.count_dropped(pump, dropped);
        }
        pump.pending.extend(got.into_iter().map(|e| e.section));
    }

    /// One data_provision with these datagrams.
    fn provide(&self, conn: &mut Conn, pump: &Pump, datagrams: Vec<Vec<u8>>) -> Result<(), String> {
        let cfg = self.cfg();
        let bytes: u64 = datagrams.iter().map(|d| d.len() as u64).sum();
        let n = datagrams.len() as u64;
        let m = EmmgMessage::DataProvision {
            client_id: self.peer.client_id,
            channel: Some(cfg.data_channel_id),
            stream: cfg.data_stream_id,
            data_id: cfg.data_id,
            datagrams,
        };
        match (&pump.udp, cfg.udp_address) {
            (Some(udp), Some(to)) => {
                let bytes = m.to_message().encode().ok_or_else(|| {
                    "internal error: a data_provision too long to encode".to_string()
                })?;
                udp.send_to(&bytes, to)
                    .map_err(|e| format!("sending data_provision to {to} over UDP: {e}"))?;
            }
            _ => {
                conn.send(&m)?;
            }
        }
        self.peer.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        self.peer.sections_sent.fetch_add(n, Ordering::Relaxed);
        self.peer.messages_sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The pacer's state on one connection.
struct Pump {
    /// The next section to fetch from the log.
    cursor: u64,
    /// Fetched, not sent yet.
    pending: VecDeque<Arc<[u8]>>,
    mark: EmmMark,
    /// TS bytes that may be sent now (negative: owed).
    budget: f64,
    last: Instant,
    kbps: u16,
    /// The continuity counter of `ts_pid`.
    cc: u8,
    udp: Option<UdpSocket>,
    warned_drop: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn air_bytes_count_whole_packets() {
        assert_eq!(air_bytes(100), 188);
        assert_eq!(air_bytes(183), 188);
        assert_eq!(air_bytes(184), 376);
        assert_eq!(air_bytes(4096), 23 * 188);
    }

    #[test]
    fn every_error_status_has_a_fix() {
        for s in [
            0x0002u16, 0x000E, 0x0014, 0x0011, 0x0012, 0x0013, 0x000F, 0x0007, 0x0005, 0x7001,
            0x7000,
        ] {
            assert!(!fix(s).is_empty());
        }
        assert!(fix(0x000E).contains("client_id"));
    }

    proptest::proptest! {
        /// Whatever a MUX sends, framing takes whole messages off the
        /// front, never panics, and answers a fault with an EMMG
        /// error_status.
        #[test]
        fn any_bytes_frame_without_panic(
            parts in proptest::collection::vec(
                (0u8..5, proptest::num::u16::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..80)),
                0..8,
            ),
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..8),
        ) {
            // Headers with true lengths around arbitrary bodies (type 0x0011
            // to 0x0013 half the time, so some bodies reach the typed layer).
            let mut buf = Vec::new();
            for (version, ty, body) in &parts {
                let ty = if ty % 2 == 0 { 0x0011 + ty % 3 } else { *ty };
                buf.push(*version);
                buf.extend_from_slice(&ty.to_be_bytes());
                buf.extend_from_slice(&(body.len() as u16).to_be_bytes());
                buf.extend_from_slice(body);
            }
            buf.extend_from_slice(&tail);
            let mut n = 0;
            while let Some(f) = frame(&mut buf) {
                n += 1;
                if let Frame::Bad { violation, .. } = f {
                    proptest::prop_assert!(violation.emmg_status() != 0);
                }
            }
            proptest::prop_assert!(n >= parts.len());
        }
    }

    #[test]
    fn frames_are_read_whole_and_typed() {
        let test = EmmgMessage::ChannelTest {
            client_id: 0xF10D_0001,
            channel: 1,
        };
        let mut buf = test.to_message().encode().unwrap();
        let mut bad = buf.clone();
        bad[0] = 2;
        buf.extend_from_slice(&bad);
        buf.extend_from_slice(&[3, 0]);
        assert!(matches!(frame(&mut buf), Some(Frame::Msg(m)) if m == test));
        match frame(&mut buf) {
            Some(Frame::Bad { violation, fatal }) => {
                assert!(fatal);
                assert_eq!(violation.emmg_status(), code::UNSUPPORTED_PROTOCOL_VERSION);
            }
            _ => panic!("a version-2 message"),
        }
        assert!(frame(&mut buf).is_none());
        assert_eq!(buf, [3, 0]);
    }

    /// A message off a blocking socket (the MUX's side of a unit test).
    fn read(s: &mut TcpStream) -> EmmgMessage {
        let mut head = [0u8; HEADER_LEN];
        s.read_exact(&mut head).unwrap();
        let h = Header::parse(&head);
        let mut body = vec![0u8; usize::from(h.length)];
        s.read_exact(&mut body).unwrap();
        EmmgMessage::decode(&Message::decode_body(h, &body).unwrap()).unwrap()
    }

    #[test]
    fn a_starved_mux_skips_what_one_cycle_cannot_carry() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let out = CaOutput::new();
        let peers = MuxPeers::new(&[MuxConfig::new(listener.local_addr().unwrap())], 1000);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = peers.spawn(&out, &stop);
        let (mut s, _) = listener.accept().unwrap();
        let (c, ch, st) = (0xF10D_0001, 1, 1);
        for answer in [
            EmmgMessage::ChannelStatus {
                client_id: c,
                channel: ch,
                section_tspkt_flag: 0,
            },
            EmmgMessage::StreamStatus {
                client_id: c,
                channel: ch,
                stream: st,
                data_id: 1,
                data_type: 0,
            },
            // 1 kbit/s: 125 bytes a second, under one EMM-U packet.
            EmmgMessage::StreamBwAllocation {
                client_id: c,
                channel: ch,
                stream: st,
                bandwidth: Some(1),
            },
        ] {
            read(&mut s);
            s.write_all(&answer.to_message().encode().unwrap()).unwrap();
        }
        let peer = peers.peers()[0].clone();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !peer.connected() {
            assert!(Instant::now() < deadline, "no allocation");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(peer.allocated_kbps(), Some(1));
        for i in 0..2000u32 {
            out.publish_emm(
                ts::psi::emm_section(ts::psi::TableId(0x82), &i.to_be_bytes().repeat(20)).unwrap(),
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        // One cycle at 1 kbit/s is under one packet: the newest 256 (a
        // fetch) are kept, the rest skipped and counted.
        let dropped = peer.dropped.load(Ordering::Relaxed);
        let backlog = peer.backlog.load(Ordering::Relaxed);
        assert!(
            (2000 - 256 - 2..=2000 - 256).contains(&dropped),
            "{dropped}"
        );
        assert!(backlog <= 256, "{backlog}");
        // Within 1 kbit/s (a 200 ms bank, then one section owed for
        // 1.5 s): one section so far.
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        match read(&mut s) {
            EmmgMessage::DataProvision { datagrams, .. } => {
                assert_eq!(datagrams.len(), 1);
                assert_eq!(datagrams[0][0], 0x82);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(peer.sections_sent.load(Ordering::Relaxed), 1);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        assert!(matches!(
            read(&mut s),
            EmmgMessage::StreamCloseRequest { .. }
        ));
    }

    #[test]
    fn metrics_have_no_sample_without_a_mux() {
        let mut e = Exposition::new();
        MuxPeers::default().render_metrics(&mut e);
        let text = e.finish();
        assert!(text.contains("# HELP iodoform_mux_connected "), "{text}");
        assert!(
            !text.lines().any(|l| l.starts_with("iodoform_mux")),
            "{text}"
        );
    }
}
