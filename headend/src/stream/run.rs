//! The loop that runs a channel: the input read and pushed through the
//! [`Mux`](super::Mux), and the output written (paced by the PCR on a
//! live output) by a writer thread.

use super::channel::{unix_ms_now, Shared, Shutdown};
use super::clock;
use super::health::{ChannelHealth, Withheld, INPUT_SILENCE_MS};
use super::io::{Got, Input, Output};
use super::mux::{Mux, OutPacket};
use super::{CaFeed, ChannelStreamConfig, Pacing, StreamError, StreamStats};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use ts::packet::{PacketReader, PACKET_LEN};
use tsio::Address;

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
        Msg::Packets(p) => output.write(p, shutdown, &|| false),
        Msg::Idle => {
            output.flush(shutdown)?;
            output.idle();
            Ok(true)
        }
        Msg::Hold(_) => Ok(true),
    }
}

pub(super) fn run<F: CaFeed>(
    cfg: &ChannelStreamConfig,
    feed: F,
    shutdown: &Shutdown,
    shared: Option<&Shared>,
) -> Result<StreamStats, StreamError> {
    super::validate(cfg)?;
    let in_ep = super::io::parse_input(&cfg.input)?;
    let out_ep = super::io::parse_output(&cfg.output)?;
    let paced = match cfg.pacing {
        Pacing::Auto => matches!(out_ep, Address::Udp(_)),
        Pacing::Always => true,
        Pacing::Never => false,
    };
    // A UDP input is live: its source keeps the time (see
    // [`super::io::Pacer`]).
    let live = matches!(in_ep, Address::Udp(_));
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
    let read_size = if paced && !matches!(in_ep, Address::Udp(_)) {
        8 * 7 * PACKET_LEN
    } else {
        1 << 16
    };
    let input_buffer = input.socket_buffer();
    tracing::info!(
        channel = %cfg.name,
        input = %in_ep,
        output = %out_ep,
        paced,
        input_buffer,
        "stream started"
    );
    if input_buffer.is_some_and(|b| b < tsio::INPUT_SOCKET_BUFFER) {
        tracing::info!(
            channel = %cfg.name,
            "channel {:?}: the input's socket buffer is {} KiB, which a multiplex of some \
             Mbit/s fills in a fraction of a second if the daemon stalls; raise \
             net.core.rmem_max to {} (sysctl) for {} KiB",
            cfg.name,
            input_buffer.unwrap_or(0) >> 10,
            tsio::INPUT_SOCKET_BUFFER,
            tsio::INPUT_SOCKET_BUFFER >> 9
        );
    }
    let stats = if paced {
        // Pacing sleeps; a writer thread of its own keeps those sleeps
        // from delaying the reads of a live input, whose socket buffer
        // holds only a few hundred milliseconds at a real multiplex's
        // rate. The bounded queue (about 2 MB) and the reader's wait below
        // hold a file input back to the output's pace; a live input is
        // never held back, and the writer keeps up with it instead.
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
                        if live {
                            if let Some(first) = packets.first() {
                                output.anchor(first.ticks);
                            }
                        }
                        // The next batch of a live input waits.
                        let hurry = || live && counters.in_flight.load(Ordering::Relaxed) > 1;
                        // A datagram at a time, so that the reader knows
                        // how far the sending has come.
                        for d in packets.chunks(cfg.packets_per_datagram) {
                            let go_on = output.write(d, shutdown, &hurry)?;
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
                    if let Some(first) = first.filter(|_| !live) {
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

    fn data(&mut self, n: usize, cfg: &ChannelStreamConfig, in_ep: &Address) {
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
    fn tick(&mut self, cfg: &ChannelStreamConfig, in_ep: &Address) {
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
        h.input_cc_errors = stats.input_cc_errors;
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
    in_ep: &Address,
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
            if !(cfg.loop_input || input.looped()) || packets_this_pass == 0 || !input.rewind()? {
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
