//! A channel's stream on a thread of its own ([`spawn_channel`]) or on the
//! caller's ([`run_channel`]), and its [`ChannelHandle`].

use super::health::{ChannelHealth, ServiceHealth};
use super::run::run;
use super::{CaFeed, ChannelStreamConfig, StreamError, StreamStats};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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
    /// withheld for [`Withheld::NoInput`](headend_engine::stream::Withheld::NoInput) once the input has been silent
    /// for [`INPUT_SILENCE_MS`](headend_engine::stream::INPUT_SILENCE_MS), whatever the thread is doing. Cheap.
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
    super::validate(&cfg)?;
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
