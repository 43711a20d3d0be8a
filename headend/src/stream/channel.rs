//! A channel's stream on a thread of its own ([`spawn_channel`]) or on the
//! caller's ([`run_channel`]), its [`ChannelHandle`], and
//! [`process_buffer`] for a TS held in memory.

use super::health::{ChannelHealth, ServiceHealth};
use super::mux::Mux;
use super::run::run;
use super::{CaFeed, ChannelStreamConfig, StreamError};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use ts::packet::PacketReader;

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
pub(super) struct Shared {
    pub(super) stats: Mutex<StreamStats>,
    pub(super) health: Mutex<ChannelHealth>,
    pub(super) input_addr: Mutex<Option<SocketAddr>>,
}

pub(super) fn unix_ms_now() -> u64 {
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
    /// withheld for [`Withheld::NoInput`](super::Withheld::NoInput) once the input has been silent
    /// for [`INPUT_SILENCE_MS`](super::INPUT_SILENCE_MS), whatever the thread is doing. Cheap.
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
