//! The ECMG (ETSI TS 103 197 §5): a third-party scrambler's SCS connects
//! over TCP, sets up a channel and streams, and sends the control words
//! of each crypto period in `CW_provision`; the answer, `ECM_response`,
//! carries a standard Iodoform ECM (`docs/PROTOCOL.md` §5 and §12) sealed
//! under the active key of the product the access criteria name, so a
//! card cannot tell it from one of the headend's own multiplexer, and
//! key renewals reach both alike.
//!
//! * One task per connection, one message at a time: the messages that
//!   came in one read are answered in one write, at most 16 KB of answers
//!   wait, a write that the SCS does not take within `write_timeout_ms`
//!   closes the connection, and so a slow or stalled SCS holds up nothing
//!   but itself.
//! * Faults get the standard's error_status in a `channel_error` or
//!   `stream_error` with a one-line error_information, and the connection
//!   goes on; bytes that do not frame (a wrong protocol_version, a length
//!   beyond what an ECMG message needs, a parameter that runs past its
//!   message) are answered the same way and then the connection is
//!   closed: the next message's start is lost.
//! * Each connection writes one log line when it ends, naming the peer,
//!   what it did, and its first fault if it had any.
//! * Control words are wiped when dropped and never logged.
//! * Key renewals: the scheduler hands the active key of each served
//!   product over at every step ([`Ecmg::refresh`]); while the clock check
//!   refuses the time, the ECMG seals nothing (error 0x7000).
//! * Epochs: see [`seal`].

use crate::config::EcmgConfig;
use crate::metrics::Exposition;
use crate::state::Headend;
use inbox::Inbox;
use proto::secret::ProductKey;
use session::{Fault, Session, Target};
use simulcrypt::ecmg::status;
use simulcrypt::{DecodeError, Header, Message, HEADER_LEN};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

mod inbox;
pub mod seal;
mod session;

/// The longest message body accepted. The longest ECMG message an SCS
/// sends is a CW_provision: a few hundred bytes with the largest
/// control words and access criteria in use.
pub const MAX_BODY: usize = 4096;

/// A `scrambler = "simulcrypt"` channel: what access criteria may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub product: u32,
    pub product_name: String,
    pub service: u16,
    pub maturity: u8,
}

/// The active key of each served product, as the scheduler last saw it.
#[derive(Default)]
struct Keys {
    clock_refused: bool,
    products: HashMap<u32, (u32, ProductKey)>,
}

/// The block of the sequence chain that segments are cut from.
#[derive(Default)]
struct Pool {
    floor: Option<u64>,
    used: u64,
}

/// Counters since the start.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) ecm_requests: AtomicU64,
    pub(crate) ecm_responses: AtomicU64,
    errors: Mutex<BTreeMap<u16, u64>>,
}

/// One open connection, for the status and the gauges.
pub(crate) struct Peer {
    pub(crate) address: SocketAddr,
    since: Instant,
    /// Its ECM_channel_id, `u32::MAX` for none.
    pub(crate) channel: AtomicU32,
    pub(crate) streams: AtomicU64,
    pub(crate) ecms: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// What the connections share.
pub(crate) struct Inner {
    pub(crate) cfg: EcmgConfig,
    pub(crate) super_cas_id: u32,
    pub(crate) services: HashMap<Target, Service>,
    keys: RwLock<Keys>,
    pool: tokio::sync::Mutex<Pool>,
    headend: Arc<Mutex<Headend>>,
    pub(crate) now_ms: fn() -> u64,
    pub(crate) stats: Stats,
    slots: Arc<Semaphore>,
    next_peer: AtomicU64,
    peers: Mutex<BTreeMap<u64, Arc<Peer>>>,
}

impl Inner {
    /// The active generation and key of `product`.
    pub(crate) fn key(&self, product: u32) -> Result<(u32, ProductKey), Fault> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        if keys.clock_refused {
            return Err(Fault::new(
                status::UNKNOWN_ERROR,
                "the headend's clock check holds every ECM (the clock is far ahead of the last time put on the air): an operator must check the clock and run `headend clock accept`",
            ));
        }
        keys.products.get(&product).cloned().ok_or_else(|| {
            Fault::new(
                status::UNKNOWN_ERROR,
                format!("product {product} has no key in the headend yet: try again in a second"),
            )
        })
    }

    /// A fresh segment of epochs (see [`seal`]): cut from the current
    /// block of the sequence chain, or from a new block committed first.
    pub(crate) async fn segment(&self) -> Result<seal::Segment, Fault> {
        let mut pool = self.pool.lock().await;
        let floor = match pool.floor {
            Some(f) if pool.used < seal::SEGMENTS_PER_BLOCK => f,
            _ => {
                let floor = self.reserve_block().await?;
                pool.floor = Some(floor);
                pool.used = 0;
                floor
            }
        };
        let base = floor + (pool.used << seal::SEGMENT_BITS);
        pool.used += 1;
        Ok(seal::Segment::new(base))
    }

    async fn reserve_block(&self) -> Result<u64, Fault> {
        let fail = |e: String| {
            tracing::error!(error = %e, "ECMG: cannot commit a block of epochs");
            Fault::new(
                status::OUT_OF_STORAGE,
                "the headend cannot commit a block of epochs to its database (see its log)",
            )
        };
        for _ in 0..1000 {
            let headend = self.headend.clone();
            let now = (self.now_ms)();
            let got = tokio::task::spawn_blocking(move || {
                headend
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .reserve_block(now)
            })
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
            match got {
                Some(floor) => return Ok(floor),
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        Err(fail("the sequence chain stays ahead of the clock".into()))
    }

    fn count_error(&self, peer: &Peer, code: u16) {
        peer.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }
}

/// The ECMG: its settings, served products and connections.
#[derive(Clone)]
pub struct Ecmg {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ecmg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ecmg")
            .field("listen", &self.inner.cfg.listen)
            .field("services", &self.inner.services.len())
            .finish_non_exhaustive()
    }
}

impl Ecmg {
    /// An ECMG for these `scrambler = "simulcrypt"` channels.
    pub fn new(
        cfg: EcmgConfig,
        services: Vec<Service>,
        headend: Arc<Mutex<Headend>>,
        now_ms: fn() -> u64,
    ) -> Ecmg {
        let super_cas_id =
            (u32::from(ts::psi::CA_SYSTEM_ID) << 16) | u32::from(cfg.ca_subsystem_id);
        let slots = Arc::new(Semaphore::new(cfg.max_connections as usize));
        let services = services
            .into_iter()
            .map(|s| {
                (
                    Target {
                        product: s.product,
                        service: s.service,
                    },
                    s,
                )
            })
            .collect();
        Ecmg {
            inner: Arc::new(Inner {
                cfg,
                super_cas_id,
                services,
                keys: RwLock::default(),
                pool: tokio::sync::Mutex::default(),
                headend,
                now_ms,
                stats: Stats::default(),
                slots,
                next_peer: AtomicU64::new(0),
                peers: Mutex::default(),
            }),
        }
    }

    /// The Super_CAS_id SCSs must give.
    pub fn super_cas_id(&self) -> u32 {
        self.inner.super_cas_id
    }

    /// Takes the active key of every served product, and the clock check,
    /// from the state (the scheduler calls it at every step, with the
    /// state locked). A key is copied only when its generation changed.
    pub fn refresh(&self, h: &Headend) {
        let refused = h.clock_refused();
        let stale: Vec<u32> = {
            let keys = self.inner.keys.read().unwrap_or_else(|e| e.into_inner());
            let mut products: Vec<u32> = self.inner.services.keys().map(|t| t.product).collect();
            products.sort_unstable();
            products.dedup();
            products
                .into_iter()
                .filter(|p| {
                    let now = h.engine().product_generation(*p).ok();
                    keys.products.get(p).map(|(g, _)| *g) != now
                })
                .collect()
        };
        let mut keys = self.inner.keys.write().unwrap_or_else(|e| e.into_inner());
        keys.clock_refused = refused;
        for p in stale {
            match h.active_product_key(p) {
                Some((generation, key)) => {
                    if keys.products.contains_key(&p) {
                        tracing::info!(
                            product = p,
                            generation,
                            "ECMG: ECMs follow the product's new key"
                        );
                    }
                    keys.products.insert(p, (generation, key));
                }
                None => {
                    keys.products.remove(&p);
                }
            }
        }
    }

    /// Binds the ECMG's address.
    pub async fn bind(&self) -> std::io::Result<TcpListener> {
        TcpListener::bind(self.inner.cfg.listen).await
    }

    /// Accepts SCS connections until the task is dropped, each in a task
    /// of its own.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (socket, address) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait, never spin.
                    tracing::warn!(error = %e, "ECMG: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            self.inner.stats.connections.fetch_add(1, Ordering::Relaxed);
            let Ok(slot) = self.inner.slots.clone().try_acquire_owned() else {
                self.inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    peer = %address,
                    "ECMG: connection refused: {} SCS connections are open, simulcrypt.ecmg.max_connections; raise it if they are all wanted",
                    self.inner.cfg.max_connections
                );
                drop(socket);
                continue;
            };
            let inner = self.inner.clone();
            tokio::spawn(async move {
                connection(inner, socket, address).await;
                drop(slot);
            });
        }
    }

    /// `headend status`'s part.
    pub fn status(&self) -> api::EcmgStatus {
        let i = &self.inner;
        let peers: Vec<Arc<Peer>> = i
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let views: Vec<api::EcmgPeer> = peers
            .iter()
            .map(|p| {
                let ch = p.channel.load(Ordering::Relaxed);
                api::EcmgPeer {
                    address: p.address.to_string(),
                    channel: u16::try_from(ch).ok(),
                    streams: p.streams.load(Ordering::Relaxed),
                    ecms: p.ecms.load(Ordering::Relaxed),
                    errors: p.errors.load(Ordering::Relaxed),
                    connected_secs: p.since.elapsed().as_secs(),
                }
            })
            .collect();
        api::EcmgStatus {
            listen: i.cfg.listen.to_string(),
            super_cas_id: format!("0x{:08x}", i.super_cas_id),
            connections: views.len() as u64,
            channels: views.iter().filter(|p| p.channel.is_some()).count() as u64,
            streams: views.iter().map(|p| p.streams).sum(),
            ecm_requests: i.stats.ecm_requests.load(Ordering::Relaxed),
            ecm_responses: i.stats.ecm_responses.load(Ordering::Relaxed),
            errors: i
                .stats
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(c, n)| (format!("0x{c:04x}"), *n))
                .collect(),
            peers: views,
        }
    }

    /// The ECMG's families of `/metrics`.
    pub fn render_metrics(&self, e: &mut Exposition) {
        let s = self.status();
        let i = &self.inner;
        e.gauge(
            "iodoform_ecmg_connections",
            "SimulCrypt SCS connections open on the ECMG.",
        )
        .sample(&[], s.connections);
        e.gauge(
            "iodoform_ecmg_channels",
            "ECM channels set up by SCSs on the ECMG.",
        )
        .sample(&[], s.channels);
        e.gauge(
            "iodoform_ecmg_streams",
            "ECM streams set up by SCSs on the ECMG.",
        )
        .sample(&[], s.streams);
        e.counter(
            "iodoform_ecmg_connection_attempts_total",
            "SCS connections accepted by the ECMG, and those closed at once because max_connections were open.",
        )
        .sample(&[("result", "accepted")], i.stats.connections.load(Ordering::Relaxed))
        .sample(&[("result", "refused")], i.stats.refused.load(Ordering::Relaxed));
        e.counter(
            "iodoform_ecmg_ecm_requests_total",
            "CW_provision messages received by the ECMG.",
        )
        .sample(&[], s.ecm_requests);
        e.counter(
            "iodoform_ecmg_ecm_responses_total",
            "ECM_response messages sent by the ECMG (one ECM each).",
        )
        .sample(&[], s.ecm_responses);
        let mut f = e.counter(
            "iodoform_ecmg_errors_total",
            "channel_error and stream_error messages sent by the ECMG, by error_status (TS 103 197 table 6).",
        );
        for (code, n) in &s.errors {
            f.sample(&[("code", code)], *n);
        }
    }
}

/// How a connection ended.
enum End {
    /// The peer closed it (or sent channel_close).
    Closed,
    Idle,
    /// Bytes that do not frame, a write the peer did not take, a socket
    /// error.
    Broken(String),
}

/// Serves one SCS connection until it ends; writes its one log line.
async fn connection(inner: Arc<Inner>, socket: TcpStream, address: SocketAddr) {
    let _ = socket.set_nodelay(true);
    let id = inner.next_peer.fetch_add(1, Ordering::Relaxed);
    let peer = Arc::new(Peer {
        address,
        since: Instant::now(),
        channel: AtomicU32::new(u32::MAX),
        streams: AtomicU64::new(0),
        ecms: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    inner
        .peers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, peer.clone());
    let mut first_fault: Option<Fault> = None;
    let mut messages = 0u64;
    let end = serve_peer(&inner, &peer, socket, &mut first_fault, &mut messages).await;
    inner
        .peers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    let ecms = peer.ecms.load(Ordering::Relaxed);
    let errors = peer.errors.load(Ordering::Relaxed);
    let secs = peer.since.elapsed().as_secs();
    let first = first_fault
        .as_ref()
        .map(|f| format!("; first error 0x{:04x}: {}", f.status, f.info))
        .unwrap_or_default();
    match end {
        End::Broken(why) => tracing::warn!(
            peer = %address,
            "ECMG: SCS connection closed after {messages} messages, {ecms} ECMs, {errors} errors in {secs} s: {why}{first}"
        ),
        End::Idle => tracing::warn!(
            peer = %address,
            "ECMG: SCS connection closed after {messages} messages, {ecms} ECMs, {errors} errors: nothing received for {} s (simulcrypt.ecmg.idle_timeout_secs; an SCS sends channel_test to keep a channel){first}",
            inner.cfg.idle_timeout_secs
        ),
        End::Closed if errors > 0 => tracing::warn!(
            peer = %address,
            "ECMG: SCS connection ended after {messages} messages, {ecms} ECMs, {errors} errors in {secs} s{first}"
        ),
        End::Closed if messages == 0 => tracing::info!(
            peer = %address,
            "ECMG: SCS connection closed by the peer before any message"
        ),
        End::Closed => tracing::info!(
            peer = %address,
            "ECMG: SCS connection ended after {messages} messages, {ecms} ECMs in {secs} s"
        ),
    }
}

/// A connection's answers, written in one go when the messages read so
/// far are all handled; bounded (a full buffer is written out at once,
/// under the write timeout).
type Outbox = BufWriter<OwnedWriteHalf>;

async fn serve_peer(
    inner: &Arc<Inner>,
    peer: &Arc<Peer>,
    socket: TcpStream,
    first_fault: &mut Option<Fault>,
    messages: &mut u64,
) -> End {
    let (mut rd, wr) = socket.into_split();
    let mut wr: Outbox = BufWriter::with_capacity(16 * 1024, wr);
    let mut inbox = Inbox::new();
    let mut session = Session::new(inner.clone(), peer.clone());
    let idle = Duration::from_secs(inner.cfg.idle_timeout_secs);
    let write_timeout = Duration::from_millis(inner.cfg.write_timeout_ms);
    loop {
        if inbox.buffered() == 0 {
            if let Err(why) = flush(&mut wr, write_timeout).await {
                return End::Broken(why);
            }
        }
        match tokio::time::timeout(idle, inbox.fill_to(&mut rd, HEADER_LEN)).await {
            Err(_) => return End::Idle,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return End::Closed,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return End::Closed,
            Ok(Err(e)) => return End::Broken(format!("read: {e}")),
            Ok(Ok(())) => {}
        }
        *messages += 1;
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(inbox.peek(HEADER_LEN));
        let header = Header::parse(&head);
        // A header this ECMG cannot frame: answer, then close.
        if let Err(fault) = inbox::check_header(&header) {
            let answer = session.error_answer(None, &fault);
            return report_and_close(
                inner,
                peer,
                &mut wr,
                answer,
                fault,
                first_fault,
                write_timeout,
            )
            .await;
        }
        let total = HEADER_LEN + usize::from(header.length);
        match tokio::time::timeout(idle, inbox.fill_to(&mut rd, total)).await {
            Err(_) => return End::Idle,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return End::Broken(format!(
                    "the connection ended inside a message (message_length {}, fewer bytes came)",
                    header.length
                ))
            }
            Ok(Err(e)) => return End::Broken(format!("read: {e}")),
            Ok(Ok(())) => {}
        }
        let decoded = Message::decode_body(header, &inbox.peek(total)[HEADER_LEN..]);
        inbox.consume(total);
        let message = match decoded {
            Ok(m) => m,
            Err(e) => {
                let code = match e {
                    DecodeError::ParameterOverrun { .. } => status::MESSAGE_TOO_LONG,
                    _ => status::INVALID_MESSAGE,
                };
                let fault = Fault::new(
                    code,
                    format!("{e}: the message is longer than its message_length"),
                );
                let answer = session.error_answer(None, &fault);
                return report_and_close(
                    inner,
                    peer,
                    &mut wr,
                    answer,
                    fault,
                    first_fault,
                    write_timeout,
                )
                .await;
            }
        };
        let step = session.handle(&message).await;
        for a in &step.answers {
            if let Err(why) = send(&mut wr, a, write_timeout).await {
                return End::Broken(why);
            }
        }
        if let Some(fault) = step.fault {
            inner.count_error(peer, fault.status);
            let answer = session.error_answer(Some(&message), &fault);
            if first_fault.is_none() {
                *first_fault = Some(fault);
            }
            if let Err(why) = send(&mut wr, &answer, write_timeout).await {
                return End::Broken(why);
            }
        }
        if step.done {
            let _ = flush(&mut wr, write_timeout).await;
            let _ = wr.shutdown().await;
            return End::Closed;
        }
    }
}

/// Writes out the answers buffered, or says why it could not.
async fn flush(wr: &mut Outbox, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, wr.flush()).await {
        Err(_) => Err(format!(
            "the SCS took no answer for {} ms (simulcrypt.ecmg.write_timeout_ms)",
            timeout.as_millis()
        )),
        Ok(Err(e)) => Err(format!("write: {e}")),
        Ok(Ok(())) => Ok(()),
    }
}

/// Sends the error of a message that could not be framed, and closes.
async fn report_and_close(
    inner: &Arc<Inner>,
    peer: &Arc<Peer>,
    wr: &mut Outbox,
    answer: Message,
    fault: Fault,
    first_fault: &mut Option<Fault>,
    write_timeout: Duration,
) -> End {
    inner.count_error(peer, fault.status);
    let why = fault.info.clone();
    if first_fault.is_none() {
        *first_fault = Some(fault);
    }
    let _ = send(wr, &answer, write_timeout).await;
    let _ = flush(wr, write_timeout).await;
    let _ = tokio::time::timeout(write_timeout, wr.shutdown()).await;
    End::Broken(why)
}

/// Writes one message into the outbox (out at once if it is full), or
/// says why it could not.
async fn send(wr: &mut Outbox, m: &Message, timeout: Duration) -> Result<(), String> {
    let Some(mut bytes) = m.encode() else {
        return Err("an answer too long to encode (a bug)".into());
    };
    let r = tokio::time::timeout(timeout, wr.write_all(&bytes)).await;
    bytes.iter_mut().for_each(|b| *b = 0);
    match r {
        Err(_) => Err(format!(
            "the SCS took no answer for {} ms (simulcrypt.ecmg.write_timeout_ms)",
            timeout.as_millis()
        )),
        Ok(Err(e)) => Err(format!("write: {e}")),
        Ok(Ok(())) => Ok(()),
    }
}
