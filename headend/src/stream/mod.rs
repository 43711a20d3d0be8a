//! The headend's stream engine: a clear MPEG-TS in, the scrambled TS with
//! its CA signalling, ECMs and EMMs out.
//!
//! * [`io`]: `udp://HOST:PORT`, files and stdio; UDP output paced by the
//!   PCR as a live source would be, files as fast as possible.
//! * [`mux`]: the per-packet work. PSI is learnt and rewritten, the chosen
//!   services' elementary streams scrambled with DVB-CISSA, ECMs and the
//!   EMM carousel inserted. It does no I/O.
//! * [`feed`]: [`CaFeed`], what the engine asks of the CA side, and
//!   [`EngineFeed`], an implementation on the key engine alone.
//! * `clock`: the air clock read from the PCR, the one time base of
//!   everything above.
//! * [`health`]: [`ChannelHealth`], what [`ChannelHandle::health`] tells
//!   about the input and about each service: on the air, or
//!   [`Withheld`] and why.
//! * [`bench`](mod@bench): the `scramble` figure of the `perf` report,
//!   through this engine's per-packet path.
//! * [`daemon_feed`]: the engine inside `headend run`, fed by the daemon's
//!   [`CaOutput`](crate::output::CaOutput).
//!
//! [`run_channel`] runs one channel on the calling thread until its input
//! ends or a [`Shutdown`] is triggered; [`spawn_channel`] runs it on a
//! thread of its own.
//!
//! A looping file input is re-stamped as little as possible: each PID's
//! continuity counter is re-linked (an offset per PID, so that it goes on
//! from where the output left it), and the first PCR of each PID after
//! the loop carries the discontinuity_indicator, which tells a decoder
//! that a new time base starts (its PTS and DTS with it). Re-stamping the
//! PCR, PTS and DTS instead would rewrite bytes inside the PES headers,
//! which are part of the scrambled payload that the receiver must give
//! back byte for byte; and adding the flag to packets that have no
//! adaptation field would need room they do not have. The air clock
//! itself runs on across the loop, so crypto periods and pacing continue.
//!
//! It must never send a configured service's elementary stream clear, and
//! never scramble a packet with a CW that the ECM on the air does not
//! carry: a service that cannot be scrambled is not sent at all, nor
//! announced, and programs that are not configured go out only when
//! [`ChannelStreamConfig::clear_services`] names them (see [`mux`]). No
//! input, however malformed, makes it panic.
#![forbid(unsafe_code)]

pub mod bench;
mod clock;
pub mod daemon_feed;
pub mod feed;
pub mod health;
pub mod io;
pub mod mux;

pub use daemon_feed::{spawn_daemon_channel, CaOutputFeed};
pub use feed::{CaFeed, CryptoPeriod, EngineFeed, FeedError, MIN_CRYPTO_PERIOD_MS};
pub use health::{ChannelHealth, ServiceHealth, Withheld, INPUT_SILENCE_MS};
pub use io::Endpoint;
pub use mux::{Mux, OutPacket};

use io::{Got, Input, Output};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use thiserror::Error;
use ts::packet::{PacketReader, NULL_PID, PACKET_LEN};

/// The default ECM repetition interval.
pub const DEFAULT_ECM_INTERVAL_MS: u64 = 100;
/// The default EMM bandwidth, in bit/s of TS.
pub const DEFAULT_EMM_BITRATE: u64 = 100_000;
pub const DEFAULT_CAT_INTERVAL_MS: u64 = 500;
/// 7 × 188 = 1316 bytes: the usual TS-over-UDP datagram, under a 1500-byte
/// MTU.
pub const DEFAULT_PACKETS_PER_DATAGRAM: usize = 7;
pub const MAX_SERVICES: usize = 64;

/// Why a channel could not start or had to stop.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error("channel {channel:?}: {field}: {reason}")]
    Config {
        channel: String,
        field: &'static str,
        reason: String,
    },
    #[error("bad URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot {what} {target}: {source}")]
    Io {
        what: &'static str,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("input {0} holds no TS packet")]
    NotTs(String),
    #[error("channel {0:?}: the stream thread panicked")]
    Panicked(String),
}

/// How EMM packets get their room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmmInsertion {
    /// Extra packets: the output's rate grows by the EMM bandwidth. For
    /// variable-rate input such as ffmpeg's, which has no null packets.
    #[default]
    AddRate,
    /// Only in place of null packets: a constant-rate multiplex keeps its
    /// rate, and EMMs get at most what the nulls leave.
    ReplaceNulls,
}

/// Whether UDP output is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pacing {
    /// Paced to UDP, as fast as possible to a file or stdout.
    #[default]
    Auto,
    Always,
    Never,
}

/// One service to scramble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceStream {
    /// The DVB service_id (program_number in the PAT).
    pub service_id: u16,
    pub ecm_pid: u16,
}

/// One channel's stream: its input, its output, and what to scramble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStreamConfig {
    /// For logs and errors.
    pub name: String,
    /// `udp://HOST:PORT`, `file://PATH`, a path, or `-`.
    pub input: String,
    pub output: String,
    /// Start a file input again when it ends.
    pub loop_input: bool,
    pub services: Vec<ServiceStream>,
    /// Programs of the input sent unscrambled, on purpose. Any other
    /// program that is not in `services` is dropped.
    pub clear_services: Vec<u16>,
    pub emm_pid: u16,
    pub ecm_interval_ms: u64,
    /// EMM bandwidth in bit/s of TS packets (0: no EMMs).
    pub emm_bitrate: u64,
    pub emm_insertion: EmmInsertion,
    pub cat_interval_ms: u64,
    pub packets_per_datagram: usize,
    pub pacing: Pacing,
    /// A paced sender that falls this far behind starts again from now
    /// instead of bursting to catch up.
    pub max_late_ms: u64,
    /// The rate the air clock assumes until the first PCR, and for a
    /// stream without any.
    pub fallback_bitrate: u64,
    /// The Unix time (ms) of the first packet, for the feed's clock;
    /// `None` for the wall clock at start.
    pub start_unix_ms: Option<u64>,
}

impl ChannelStreamConfig {
    /// A channel with the defaults and no service yet.
    pub fn new(
        name: impl Into<String>,
        input: impl Into<String>,
        output: impl Into<String>,
        emm_pid: u16,
    ) -> Self {
        ChannelStreamConfig {
            name: name.into(),
            input: input.into(),
            output: output.into(),
            loop_input: false,
            services: Vec::new(),
            clear_services: Vec::new(),
            emm_pid,
            ecm_interval_ms: DEFAULT_ECM_INTERVAL_MS,
            emm_bitrate: DEFAULT_EMM_BITRATE,
            emm_insertion: EmmInsertion::default(),
            cat_interval_ms: DEFAULT_CAT_INTERVAL_MS,
            packets_per_datagram: DEFAULT_PACKETS_PER_DATAGRAM,
            pacing: Pacing::default(),
            max_late_ms: 500,
            fallback_bitrate: 4_000_000,
            start_unix_ms: None,
        }
    }

    /// Adds a service to scramble.
    #[must_use]
    pub fn service(mut self, service_id: u16, ecm_pid: u16) -> Self {
        self.services.push(ServiceStream {
            service_id,
            ecm_pid,
        });
        self
    }

    fn bad(&self, field: &'static str, reason: impl Into<String>) -> StreamError {
        StreamError::Config {
            channel: self.name.clone(),
            field,
            reason: reason.into(),
        }
    }

    /// Checks every field; the error names the bad one.
    pub fn validate(&self) -> Result<(), StreamError> {
        let pid_ok = |pid: u16| (0x20..NULL_PID).contains(&pid);
        if !pid_ok(self.emm_pid) {
            return Err(self.bad(
                "emm_pid",
                format!("{:#06x} is not in 0x0020..=0x1FFE", self.emm_pid),
            ));
        }
        if self.services.len() > MAX_SERVICES {
            return Err(self.bad("services", format!("more than {MAX_SERVICES}")));
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.service_id == 0 {
                return Err(self.bad(
                    "service_id",
                    "0 is the NIT's entry in the PAT, not a service",
                ));
            }
            if !pid_ok(s.ecm_pid) || s.ecm_pid == self.emm_pid {
                return Err(self.bad(
                    "ecm_pid",
                    format!(
                        "{:#06x} must be in 0x0020..=0x1FFE and differ from the EMM PID",
                        s.ecm_pid
                    ),
                ));
            }
            for t in &self.services[..i] {
                if t.service_id == s.service_id {
                    return Err(self.bad("service_id", format!("{} twice", s.service_id)));
                }
                if t.ecm_pid == s.ecm_pid {
                    return Err(self.bad(
                        "ecm_pid",
                        format!("{:#06x} used by two services", s.ecm_pid),
                    ));
                }
            }
        }
        for (i, &c) in self.clear_services.iter().enumerate() {
            if c == 0 {
                return Err(self.bad(
                    "clear_services",
                    "0 is the NIT's entry in the PAT, not a service",
                ));
            }
            if self.services.iter().any(|s| s.service_id == c) {
                return Err(self.bad(
                    "clear_services",
                    format!("{c} is also a service to scramble; it cannot be both"),
                ));
            }
            if self.clear_services[..i].contains(&c) {
                return Err(self.bad("clear_services", format!("{c} twice")));
            }
        }
        if !(10..=10_000).contains(&self.ecm_interval_ms) {
            return Err(self.bad("ecm_interval_ms", "must be 10..=10000"));
        }
        if !(10..=10_000).contains(&self.cat_interval_ms) {
            return Err(self.bad("cat_interval_ms", "must be 10..=10000"));
        }
        if self.emm_bitrate > 100_000_000 {
            return Err(self.bad("emm_bitrate", "more than 100 Mbit/s"));
        }
        if !(1..=7).contains(&self.packets_per_datagram) {
            return Err(self.bad("packets_per_datagram", "must be 1..=7 (a 1500-byte MTU)"));
        }
        if !(10_000..=1_000_000_000).contains(&self.fallback_bitrate) {
            return Err(self.bad("fallback_bitrate", "must be 10 kbit/s..=1 Gbit/s"));
        }
        Endpoint::parse(&self.input)?;
        if let Endpoint::Udp(a) = Endpoint::parse(&self.output)? {
            if a.port() == 0 || a.ip().is_unspecified() {
                return Err(self.bad("output", format!("cannot send to {a}")));
            }
        }
        Ok(())
    }
}

/// Counters of one channel, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StreamStats {
    pub packets_in: u64,
    pub packets_out: u64,
    /// Packets scrambled (with a payload).
    pub scrambled: u64,
    pub cw_changes: u64,
    /// New periods whose epoch has the parity of the last one: the feed
    /// skipped an epoch (see the log).
    pub epoch_skips: u64,
    pub ecm_sections: u64,
    pub emm_sections: u64,
    pub emm_packets: u64,
    /// EMM sections from the feed that were not EMM sections.
    pub emm_rejected: u64,
    pub nulls_replaced: u64,
    /// PAT sections sent (the input's, again with every ECM).
    pub pat_sections: u64,
    pub pmt_sections: u64,
    /// PMT versions sent (1 + the number of changes).
    pub pmt_versions: u64,
    pub cat_sections: u64,
    /// On PIDs that no PMT names (yet).
    pub dropped_unreferenced: u64,
    /// A configured service's packets while it has no crypto period.
    pub dropped_no_cw: u64,
    /// A configured service's packets while it is off the air, whatever
    /// the cause (see [`ServiceHealth::withheld_packets`]).
    pub dropped_withheld: u64,
    /// Packets that the last-line check found clear on a PID that must
    /// not carry clear content, and dropped. Always 0 unless the engine
    /// has a bug.
    pub clear_packets: u64,
    pub dropped_already_scrambled: u64,
    pub dropped_malformed: u64,
    /// On our ECM or EMM PIDs.
    pub dropped_collision: u64,
    pub psi_errors: u64,
    pub feed_errors: u64,
    pub loops: u64,
    pub skipped_bytes: u64,
    pub sync_losses: u64,
    pub pcr_discontinuities: u64,
    pub pacing_rebases: u64,
    pub udp_send_errors: u64,
}

/// Asks one or more channels to stop. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn trigger(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct Shared {
    stats: Mutex<StreamStats>,
    health: Mutex<ChannelHealth>,
    input_addr: Mutex<Option<SocketAddr>>,
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs one channel on the calling thread until its input ends (a file
/// that does not loop) or `shutdown` is triggered, and returns its
/// counters.
pub fn run_channel<F: CaFeed>(
    cfg: ChannelStreamConfig,
    feed: F,
    shutdown: Shutdown,
) -> Result<StreamStats, StreamError> {
    run(&cfg, feed, &shutdown, None)
}

/// What the read loop hands to the output side.
enum Msg {
    Packets(Vec<OutPacket>),
    /// The input paused: send the partial datagram, restart the pacing.
    Idle,
    /// Nothing to send, and the input has been read up to this air time:
    /// a paced reader waits here for the clock as it would with packets
    /// (not passed to the writer).
    Hold(u64),
}

/// The output's counters, shared with the writer thread.
#[derive(Debug, Default)]
struct OutCounters {
    rebases: AtomicU64,
    send_errors: AtomicU64,
    /// Air time of the last packet the paced writer sent.
    sent_ticks: AtomicU64,
    /// Packet messages queued for the writer and not all sent yet.
    in_flight: AtomicU64,
    /// The pacer's clock: a wall time and the air time due then.
    origin: Mutex<Option<(std::time::Instant, u64)>>,
    /// The writer thread has stopped.
    done: AtomicBool,
}

/// How far (in air time) a paced channel's reader may run ahead of what
/// is sent: enough to cover a PCR interval and a read, small enough that
/// the CWs the feed gives are the ones in force when the packets air.
const MAX_AHEAD_TICKS: u64 = 300 * clock::TICKS_PER_MS;

impl OutCounters {
    fn update(&self, o: &Output) {
        let (r, e) = o.counters();
        self.rebases.store(r, Ordering::Relaxed);
        self.send_errors.store(e, Ordering::Relaxed);
        *self.origin.lock().unwrap_or_else(|e| e.into_inner()) = o.pacing_origin();
    }

    /// Whether a reader about to hand over packets from air time `first`
    /// is too far ahead: of the pacer's clock once it runs, else of what
    /// the writer has sent while it has something queued. (Sparse output,
    /// a channel with nothing on the air, moves `sent_ticks` seldom; the
    /// clock runs on.)
    fn too_far_ahead(&self, first: u64) -> bool {
        let origin = *self.origin.lock().unwrap_or_else(|e| e.into_inner());
        match origin {
            Some((at, ticks)) => {
                let now = ticks + (at.elapsed().as_micros() as u64 * 27);
                first > now + MAX_AHEAD_TICKS
            }
            None => {
                first > self.sent_ticks.load(Ordering::Relaxed) + MAX_AHEAD_TICKS
                    && self.in_flight.load(Ordering::Relaxed) > 0
            }
        }
    }
}

/// Writes one message; false when a shutdown cut the pacing short.
fn deliver(output: &mut Output, msg: &Msg, shutdown: &Shutdown) -> Result<bool, StreamError> {
    match msg {
        Msg::Packets(p) => output.write(p, shutdown),
        Msg::Idle => {
            output.flush(shutdown)?;
            output.idle();
            Ok(true)
        }
        Msg::Hold(_) => Ok(true),
    }
}

fn run<F: CaFeed>(
    cfg: &ChannelStreamConfig,
    feed: F,
    shutdown: &Shutdown,
    shared: Option<&Shared>,
) -> Result<StreamStats, StreamError> {
    cfg.validate()?;
    let in_ep = Endpoint::parse(&cfg.input)?;
    let out_ep = Endpoint::parse(&cfg.output)?;
    let paced = match cfg.pacing {
        Pacing::Auto => matches!(out_ep, Endpoint::Udp(_)),
        Pacing::Always => true,
        Pacing::Never => false,
    };
    let input = Input::open(&in_ep)?;
    if let Some(sh) = shared {
        *sh.input_addr.lock().unwrap_or_else(|e| e.into_inner()) = input.local_addr();
    }
    let mut output = Output::open(&out_ep, cfg.packets_per_datagram, paced, cfg.max_late_ms)?;
    let start = cfg.start_unix_ms.unwrap_or_else(unix_ms_now);
    let mux = Mux::new(cfg, feed, start)?;
    let counters = OutCounters::default();
    // A paced file is read a few datagrams at a time, so that the reader
    // stays close to the writer; anything else in big reads (a UDP read is
    // one datagram whatever the buffer).
    let read_size = if paced && !matches!(in_ep, Endpoint::Udp(_)) {
        8 * 7 * PACKET_LEN
    } else {
        1 << 16
    };
    tracing::info!(channel = %cfg.name, input = %in_ep, output = %out_ep, paced, "stream started");
    let stats = if paced {
        // Pacing sleeps; a writer thread of its own keeps those sleeps
        // from delaying the reads of a live input, whose socket buffer
        // holds only a few hundred milliseconds. The bounded queue (about
        // 2 MB) holds a file input back to the output's pace.
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(32);
            let counters = &counters;
            let writer = s.spawn(move || -> Result<(), StreamError> {
                let r = (|| {
                    'queue: for msg in rx {
                        let Msg::Packets(packets) = &msg else {
                            deliver(&mut output, &msg, shutdown)?;
                            counters.update(&output);
                            continue;
                        };
                        // A datagram at a time, so that the reader knows
                        // how far the sending has come.
                        for d in packets.chunks(cfg.packets_per_datagram) {
                            let go_on = output.write(d, shutdown)?;
                            counters.update(&output);
                            if let Some(last) = d.last() {
                                counters.sent_ticks.store(last.ticks, Ordering::Relaxed);
                            }
                            if !go_on {
                                break 'queue;
                            }
                        }
                        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                    output.flush(shutdown)?;
                    counters.update(&output);
                    Ok(())
                })();
                counters.done.store(true, Ordering::Relaxed);
                r
            });
            let read = read_loop(
                cfg,
                &in_ep,
                input,
                mux,
                shutdown,
                shared,
                counters,
                read_size,
                |msg| {
                    // Hold the reader back to the writer's pace.
                    let first = match &msg {
                        Msg::Packets(p) => p.first().map(|p| p.ticks),
                        Msg::Hold(t) => Some(*t),
                        Msg::Idle => None,
                    };
                    if let Some(first) = first {
                        while counters.too_far_ahead(first)
                            && !counters.done.load(Ordering::Relaxed)
                            && !shutdown.is_triggered()
                        {
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                    }
                    match msg {
                        Msg::Hold(_) => Ok(!counters.done.load(Ordering::Relaxed)),
                        msg => {
                            if matches!(msg, Msg::Packets(_)) {
                                counters.in_flight.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(tx.send(msg).is_ok())
                        }
                    }
                },
            );
            drop(tx);
            let written = writer
                .join()
                .unwrap_or(Err(StreamError::Panicked(cfg.name.clone())));
            // The reader's error first: a closed queue is only its effect.
            let stats = read?;
            written?;
            Ok::<_, StreamError>(StreamStats {
                pacing_rebases: counters.rebases.load(Ordering::Relaxed),
                udp_send_errors: counters.send_errors.load(Ordering::Relaxed),
                ..stats
            })
        })?
    } else {
        let counters = &counters;
        let stats = read_loop(
            cfg,
            &in_ep,
            input,
            mux,
            shutdown,
            shared,
            counters,
            read_size,
            |msg| {
                let go_on = deliver(&mut output, &msg, shutdown)?;
                counters.update(&output);
                Ok(go_on)
            },
        )?;
        output.flush(shutdown)?;
        counters.update(&output);
        StreamStats {
            udp_send_errors: counters.send_errors.load(Ordering::Relaxed),
            ..stats
        }
    };
    if let Some(sh) = shared {
        *sh.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
    }
    tracing::info!(channel = %cfg.name, ?stats, "stream stopped");
    Ok(stats)
}

/// The input side of a channel's health: bytes, bitrate, when the last
/// packet came and whether its silence was logged; and which of the
/// multiplexer's reports was last published in full.
#[derive(Debug)]
struct InputMeter {
    started_unix_ms: u64,
    bytes: u64,
    last_input_unix_ms: Option<u64>,
    window_start: std::time::Instant,
    window_bytes: u64,
    bitrate: u64,
    silence_logged: bool,
    published: Option<u64>,
}

impl InputMeter {
    fn new() -> Self {
        InputMeter {
            started_unix_ms: unix_ms_now(),
            bytes: 0,
            last_input_unix_ms: None,
            window_start: std::time::Instant::now(),
            window_bytes: 0,
            bitrate: 0,
            silence_logged: false,
            published: None,
        }
    }

    fn data(&mut self, n: usize, cfg: &ChannelStreamConfig, in_ep: &Endpoint) {
        let now = unix_ms_now();
        if self.silence_logged {
            self.silence_logged = false;
            tracing::info!(channel = %cfg.name, "channel {:?}: input {in_ep} is back", cfg.name);
        }
        self.bytes += n as u64;
        self.window_bytes += n as u64;
        self.last_input_unix_ms = Some(now);
    }

    /// Rolls the bitrate window and logs a silence that lasts.
    fn tick(&mut self, cfg: &ChannelStreamConfig, in_ep: &Endpoint) {
        let elapsed = self.window_start.elapsed();
        if elapsed >= std::time::Duration::from_secs(1) {
            self.bitrate = (self.window_bytes as f64 * 8.0 / elapsed.as_secs_f64()) as u64;
            self.window_bytes = 0;
            self.window_start = std::time::Instant::now();
        }
        let now = unix_ms_now();
        let silent_ms = now.saturating_sub(self.last_input_unix_ms.unwrap_or(self.started_unix_ms));
        if !self.silence_logged && silent_ms >= INPUT_SILENCE_MS {
            self.silence_logged = true;
            let what = match self.last_input_unix_ms {
                Some(_) => format!("no input for {:.1} s", silent_ms as f64 / 1000.0),
                None => format!("nothing read in {:.1} s", silent_ms as f64 / 1000.0),
            };
            tracing::error!(
                channel = %cfg.name,
                cause = Withheld::NoInput.as_str(),
                "channel {:?}: {what} from {in_ep}, so nothing is on the air; {}",
                cfg.name,
                Withheld::NoInput.fix()
            );
        }
    }

    /// Brings `h` up to date: the counters in place, the services'
    /// causes and details (which allocate) only when they changed.
    fn publish<F: CaFeed>(&mut self, h: &mut ChannelHealth, mux: &Mux<F>, counters: &OutCounters) {
        let stats = mux.stats();
        h.started_unix_ms = self.started_unix_ms;
        h.input_packets = stats.packets_in;
        h.input_bytes = self.bytes;
        h.input_bitrate_bps = self.bitrate;
        h.last_input_unix_ms = self.last_input_unix_ms;
        h.output_packets = stats.packets_out;
        h.output_errors = counters.send_errors.load(Ordering::Relaxed);
        h.clear_packets = stats.clear_packets;
        let generation = mux.health_generation();
        if self.published == Some(generation) && h.services.len() == mux.service_count() {
            mux.update_service_counters(&mut h.services);
        } else {
            h.services = mux.service_health();
            self.published = Some(generation);
        }
    }
}

/// Reads the input, runs the packets through the multiplexer and hands
/// the output to `send` (false: stop) until the input ends or `shutdown`.
#[allow(clippy::too_many_arguments)]
fn read_loop<F: CaFeed>(
    cfg: &ChannelStreamConfig,
    in_ep: &Endpoint,
    mut input: Input,
    mut mux: Mux<F>,
    shutdown: &Shutdown,
    shared: Option<&Shared>,
    counters: &OutCounters,
    read_size: usize,
    mut send: impl FnMut(Msg) -> Result<bool, StreamError>,
) -> Result<StreamStats, StreamError> {
    let mut reader = PacketReader::new();
    // Sync counters of the readers of earlier loops.
    let (mut skipped, mut losses) = (0u64, 0u64);
    let mut buf = vec![0u8; read_size];
    let mut bytes_this_pass = 0u64;
    let mut packets_this_pass = 0u64;
    let mut meter = InputMeter::new();
    let snapshot = |mux: &Mux<F>, r: &PacketReader, skipped: u64, losses: u64| {
        let mut s = *mux.stats();
        s.skipped_bytes = skipped + r.stats().skipped_bytes;
        s.sync_losses = losses + r.stats().sync_losses;
        s.pcr_discontinuities = mux.pcr_discontinuities();
        s.pacing_rebases = counters.rebases.load(Ordering::Relaxed);
        s.udp_send_errors = counters.send_errors.load(Ordering::Relaxed);
        s
    };
    while !shutdown.is_triggered() {
        let mut eof = false;
        let mut idle = false;
        match input.read(&mut buf)? {
            Got::Data(n) => {
                bytes_this_pass += n as u64;
                meter.data(n, cfg, in_ep);
                reader.push(&buf[..n]);
            }
            Got::Idle => {
                // The reader holds the last packet back until a byte of
                // the next one confirms it; after 100 ms of silence, let it
                // go (the next datagram finds sync again at once).
                if reader.buffered() > 0 {
                    reader.finish();
                    while let Some(p) = reader.next_packet() {
                        packets_this_pass += 1;
                        mux.push(p);
                    }
                    skipped += reader.stats().skipped_bytes;
                    losses += reader.stats().sync_losses;
                    reader = PacketReader::new();
                }
                idle = true;
            }
            Got::Eof => {
                reader.finish();
                eof = true;
            }
        }
        while let Some(p) = reader.next_packet() {
            packets_this_pass += 1;
            mux.push(p);
        }
        if eof || idle {
            mux.flush();
        }
        let mut out = Vec::new();
        mux.take_output(&mut out);
        let mut go_on = if out.is_empty() {
            send(Msg::Hold(mux.air_ticks()))?
        } else {
            send(Msg::Packets(out))?
        };
        if idle && go_on {
            go_on = send(Msg::Idle)?;
        }
        meter.tick(cfg, in_ep);
        if let Some(sh) = shared {
            *sh.stats.lock().unwrap_or_else(|e| e.into_inner()) =
                snapshot(&mux, &reader, skipped, losses);
            meter.publish(
                &mut sh.health.lock().unwrap_or_else(|e| e.into_inner()),
                &mux,
                counters,
            );
        }
        if !go_on {
            break;
        }
        if eof {
            if packets_this_pass == 0 && bytes_this_pass > 0 {
                return Err(StreamError::NotTs(in_ep.to_string()));
            }
            if !cfg.loop_input || packets_this_pass == 0 || !input.rewind()? {
                break;
            }
            skipped += reader.stats().skipped_bytes;
            losses += reader.stats().sync_losses;
            reader = PacketReader::new();
            mux.input_restarted();
            (bytes_this_pass, packets_this_pass) = (0, 0);
        }
    }
    if let Some(sh) = shared {
        meter.publish(
            &mut sh.health.lock().unwrap_or_else(|e| e.into_inner()),
            &mux,
            counters,
        );
    }
    Ok(snapshot(&mux, &reader, skipped, losses))
}

/// A channel running on its own thread.
#[derive(Debug)]
pub struct ChannelHandle {
    name: String,
    shutdown: Shutdown,
    shared: Arc<Shared>,
    thread: JoinHandle<Result<StreamStats, StreamError>>,
}

impl ChannelHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The channel's counters, updated after every read.
    pub fn stats(&self) -> StreamStats {
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The channel's input and services, as of the last read (at most
    /// about 100 ms old while the thread runs); a service counts as
    /// withheld for [`Withheld::NoInput`] once the input has been silent
    /// for [`INPUT_SILENCE_MS`], whatever the thread is doing. Cheap.
    pub fn health(&self) -> ChannelHealth {
        let mut h = self
            .shared
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        h.apply_silence(unix_ms_now());
        h
    }

    /// Where a UDP input listens, once bound (for `udp://127.0.0.1:0`).
    pub fn input_addr(&self) -> Option<SocketAddr> {
        *self
            .shared
            .input_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Triggers the channel's [`Shutdown`] (shared with whoever else holds
    /// it). The thread stops within about 100 ms.
    pub fn stop(&self) {
        self.shutdown.trigger();
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread and returns how the channel ended.
    pub fn join(self) -> Result<StreamStats, StreamError> {
        self.thread
            .join()
            .unwrap_or(Err(StreamError::Panicked(self.name)))
    }
}

/// Runs one channel on a thread of its own until its input ends or
/// `shutdown` is triggered. The config is checked before the thread
/// starts.
///
/// A thread, not a tokio task: the per-packet work (CISSA over every
/// payload) is CPU-bound and would stall the daemon's async runtime, and
/// pacing a live output wants sleeps finer than tokio's millisecond timer
/// wheel. A channel is a few Mbit/s, so one thread each is cheap; the feed
/// it calls ([`CaFeed`]) must not block for long.
pub fn spawn_channel<F: CaFeed + 'static>(
    cfg: ChannelStreamConfig,
    feed: F,
    shutdown: Shutdown,
) -> Result<ChannelHandle, StreamError> {
    cfg.validate()?;
    let shared = Arc::new(Shared::default());
    *shared.health.lock().unwrap_or_else(|e| e.into_inner()) = ChannelHealth {
        started_unix_ms: unix_ms_now(),
        services: cfg
            .services
            .iter()
            .map(|s| ServiceHealth::new(s.service_id))
            .collect(),
        ..ChannelHealth::default()
    };
    let name = cfg.name.clone();
    let thread = {
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name(format!("stream {}", cfg.name))
            .spawn(move || {
                let r = run(&cfg, feed, &shutdown, Some(&shared));
                if let Err(e) = &r {
                    tracing::error!(channel = %cfg.name, "stream stopped: {e}");
                }
                r
            })
            .map_err(|source| StreamError::Io {
                what: "start a thread for",
                target: name.clone(),
                source,
            })?
    };
    Ok(ChannelHandle {
        name,
        shutdown,
        shared,
        thread,
    })
}

/// Runs a whole TS held in memory through a [`Mux`] and returns the
/// output, as a file output would hold it. For tests and tools (the
/// receiver's tests can make scrambled streams with it).
pub fn process_buffer<F: CaFeed>(
    cfg: &ChannelStreamConfig,
    feed: F,
    input: &[u8],
    start_unix_ms: u64,
) -> Result<(Vec<u8>, StreamStats, F), StreamError> {
    let mut mux = Mux::new(cfg, feed, start_unix_ms)?;
    let mut reader = PacketReader::new();
    reader.push(input);
    reader.finish();
    let mut out = Vec::new();
    let mut bytes = Vec::with_capacity(input.len() + input.len() / 4);
    while let Some(p) = reader.next_packet() {
        mux.push(p);
        mux.take_output(&mut out);
        for p in out.drain(..) {
            bytes.extend_from_slice(&p.bytes);
        }
    }
    mux.flush();
    mux.take_output(&mut out);
    for p in out.drain(..) {
        bytes.extend_from_slice(&p.bytes);
    }
    let mut stats = *mux.stats();
    stats.skipped_bytes = reader.stats().skipped_bytes;
    stats.sync_losses = reader.stats().sync_losses;
    stats.pcr_discontinuities = mux.pcr_discontinuities();
    Ok((bytes, stats, mux.into_feed()))
}
