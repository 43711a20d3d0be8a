//! What the daemon puts on the air, as a library API for the stream
//! engine: the current ECM section and control words of each service,
//! and the EMM sections in the order they were made.
//!
//! [`CaOutput`] is a cheap, cloneable handle. The daemon's scheduler
//! publishes into it; a multiplexer reads from it at its own pace:
//!
//! * [`CaOutput::current_ecm`] gives a service's ECM section for the
//!   current crypto period (repeat it every 100 ms; it changes table_id
//!   0x80/0x81 with the period's parity) and the CW pair it carries, which
//!   is exactly what the scrambler must use;
//! * [`CaOutput::emm_sections_since`] pages through the EMM sections (EMM-U
//!   and EMM-G) by a cursor, and [`CaOutput::subscribe_emms`] pushes them.
//!
//! Control words are secret: they leave this module only inside
//! [`CwPair`] (redacted `Debug`), never through the admin API.

use proto::secret::CwPair;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use ts::Parity;

/// A reader that has not asked for EMMs for this long is not sending any
/// (its input is silent, say) and does not count in
/// [`CaOutput::emm_unsent`].
pub const EMM_READER_IDLE_MS: u64 = 5_000;

/// EMM sections kept for [`CaOutput::emm_sections_since`].
pub const EMM_LOG_LEN: usize = 1 << 16;

/// A service's ECM for one crypto period.
#[derive(Debug, Clone)]
pub struct EcmOutput {
    pub service: u16,
    pub ecm_pid: u16,
    pub product: u32,
    pub generation: u32,
    pub epoch: u64,
    /// The first millisecond (Unix) of the epoch.
    pub epoch_start_ms: u64,
    pub period_ms: u64,
    /// The short-syntax private section: table_id 0x80 (even epoch) or
    /// 0x81 (odd), then the ECM.
    pub section: Arc<[u8]>,
    /// The CWs the ECM carries: `cws.for_epoch(epoch)` scrambles this
    /// period, the other slot the next one.
    pub cws: CwPair,
}

impl EcmOutput {
    pub fn parity(&self) -> Parity {
        Parity::of_epoch(self.epoch)
    }
}

/// One EMM section with its place in the output order.
#[derive(Debug, Clone)]
pub struct EmmOutput {
    /// Position in this run's EMM order (0, 1, 2, ...).
    pub index: u64,
    pub section: Arc<[u8]>,
}

#[derive(Debug, Default)]
struct EmmLog {
    /// Index of `sections[0]`.
    first: u64,
    sections: VecDeque<Arc<[u8]>>,
}

#[derive(Debug)]
struct Inner {
    ecms: RwLock<BTreeMap<u16, EcmOutput>>,
    emms: Mutex<EmmLog>,
    push: tokio::sync::broadcast::Sender<Arc<[u8]>>,
    readers: Mutex<Vec<Weak<MarkInner>>>,
    emm_bitrate: AtomicU64,
}

#[derive(Debug)]
struct MarkInner {
    next_unsent: AtomicU64,
    last_read_ms: AtomicU64,
}

/// A stream's place in the EMM log, for the backlog metric: the index of
/// the first section it has not sent yet, and when it last asked for EMMs.
/// It stops counting when dropped.
#[derive(Debug)]
pub struct EmmMark(Arc<MarkInner>);

impl EmmMark {
    /// Records that every section before `next_unsent` was sent, at
    /// `now_ms`.
    pub fn set(&self, next_unsent: u64, now_ms: u64) {
        self.0.next_unsent.store(next_unsent, Ordering::Relaxed);
        self.0.last_read_ms.store(now_ms, Ordering::Relaxed);
    }
}

/// EMM sections published but not yet sent (see [`CaOutput::emm_unsent`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmmUnsent {
    pub sections: u64,
    pub bytes: u64,
    /// The readers that counted (asked for EMMs lately).
    pub readers: u64,
}

/// The daemon's outputs (see the module docs).
#[derive(Debug, Clone)]
pub struct CaOutput(Arc<Inner>);

impl Default for CaOutput {
    fn default() -> Self {
        let (push, _) = tokio::sync::broadcast::channel(4096);
        CaOutput(Arc::new(Inner {
            ecms: RwLock::new(BTreeMap::new()),
            emms: Mutex::new(EmmLog::default()),
            push,
            readers: Mutex::new(Vec::new()),
            emm_bitrate: AtomicU64::new(headend_engine::stream::DEFAULT_EMM_BITRATE),
        }))
    }
}

impl CaOutput {
    pub fn new() -> Self {
        Self::default()
    }

    /// The EMM bandwidth every channel gives the EMM log, bit/s of TS
    /// (headend.toml's `emm_bitrate`): the carousel is paced to it.
    pub fn with_emm_bitrate(self, bps: u64) -> Self {
        self.0.emm_bitrate.store(bps, Ordering::Relaxed);
        self
    }

    pub fn emm_bitrate(&self) -> u64 {
        self.0.emm_bitrate.load(Ordering::Relaxed)
    }

    /// The current ECM of a service (DVB service_id), once the scheduler
    /// has made one.
    pub fn current_ecm(&self, service: u16) -> Option<EcmOutput> {
        self.0
            .ecms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&service)
            .cloned()
    }

    /// The current ECM section of a service.
    pub fn current_ecm_section(&self, service: u16) -> Option<Arc<[u8]>> {
        self.current_ecm(service).map(|e| e.section)
    }

    /// Every service's current ECM.
    pub fn current_ecms(&self) -> Vec<EcmOutput> {
        self.0
            .ecms
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// EMM sections from `cursor` on, at most `max`. Returns the sections,
    /// the cursor for the next call, and how many sections between
    /// `cursor` and the oldest kept were dropped (the log keeps the last
    /// [`EMM_LOG_LEN`]).
    pub fn emm_sections_since(&self, cursor: u64, max: usize) -> (Vec<EmmOutput>, u64, u64) {
        let log = self.0.emms.lock().unwrap_or_else(|e| e.into_inner());
        let start = cursor.max(log.first);
        let dropped = start - cursor;
        let skip = (start - log.first) as usize;
        let out: Vec<EmmOutput> = log
            .sections
            .iter()
            .skip(skip)
            .take(max)
            .enumerate()
            .map(|(i, s)| EmmOutput {
                index: start + i as u64,
                section: s.clone(),
            })
            .collect();
        let next = start + out.len() as u64;
        (out, next, dropped)
    }

    /// The index the next EMM section will get.
    pub fn emm_cursor(&self) -> u64 {
        let log = self.0.emms.lock().unwrap_or_else(|e| e.into_inner());
        log.first + log.sections.len() as u64
    }

    /// Registers a reader of the EMM log that starts at `next_unsent`; it
    /// reports its progress through the mark, and counts in
    /// [`CaOutput::emm_unsent`] from its first report on (a stream that
    /// never asks for EMMs sends none).
    pub fn emm_mark(&self, next_unsent: u64) -> EmmMark {
        let m = Arc::new(MarkInner {
            next_unsent: AtomicU64::new(next_unsent),
            last_read_ms: AtomicU64::new(0),
        });
        let mut readers = self.0.readers.lock().unwrap_or_else(|e| e.into_inner());
        readers.retain(|w| w.strong_count() > 0);
        readers.push(Arc::downgrade(&m));
        EmmMark(m)
    }

    /// The EMM sections still in the log that the slowest active reader
    /// has not sent: from its mark to the newest section. A reader counts
    /// if it asked for EMMs in the last [`EMM_READER_IDLE_MS`] before
    /// `now_ms`; with none, nothing is unsent.
    pub fn emm_unsent(&self, now_ms: u64) -> EmmUnsent {
        let (lowest, readers) = {
            let mut all = self.0.readers.lock().unwrap_or_else(|e| e.into_inner());
            all.retain(|w| w.strong_count() > 0);
            let active: Vec<u64> = all
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|m| {
                    // 0: it has never reported.
                    let last = m.last_read_ms.load(Ordering::Relaxed);
                    last != 0 && now_ms.saturating_sub(last) <= EMM_READER_IDLE_MS
                })
                .map(|m| m.next_unsent.load(Ordering::Relaxed))
                .collect();
            (active.iter().min().copied(), active.len() as u64)
        };
        let Some(lowest) = lowest else {
            return EmmUnsent::default();
        };
        let log = self.0.emms.lock().unwrap_or_else(|e| e.into_inner());
        let skip = lowest.saturating_sub(log.first) as usize;
        let (mut sections, mut bytes) = (0, 0);
        for s in log.sections.iter().skip(skip) {
            sections += 1;
            bytes += s.len() as u64;
        }
        EmmUnsent {
            sections,
            bytes,
            readers,
        }
    }

    /// Whether every channel sending EMMs has sent the log up to (not
    /// including) `index`: a reader counts as in [`CaOutput::emm_unsent`].
    /// With no channel sending, what is published counts as sent.
    pub fn sent_through(&self, index: u64, now_ms: u64) -> bool {
        let mut all = self.0.readers.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.iter()
            .filter_map(Weak::upgrade)
            .filter(|m| {
                let last = m.last_read_ms.load(Ordering::Relaxed);
                last != 0 && now_ms.saturating_sub(last) <= EMM_READER_IDLE_MS
            })
            .all(|m| m.next_unsent.load(Ordering::Relaxed) >= index)
    }

    /// A push feed of EMM sections, in order. A receiver that falls more
    /// than 4096 sections behind gets `Lagged` and should resync with
    /// [`CaOutput::emm_sections_since`].
    pub fn subscribe_emms(&self) -> tokio::sync::broadcast::Receiver<Arc<[u8]>> {
        self.0.push.subscribe()
    }

    // ---- the scheduler's side ------------------------------------------

    pub(crate) fn publish_ecm(&self, ecm: EcmOutput) {
        self.0
            .ecms
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ecm.service, ecm);
    }

    /// Takes a removed channel's ECM off the air.
    pub(crate) fn remove_ecm(&self, service: u16) {
        self.0
            .ecms
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&service);
    }

    /// Publishes several EMM sections under one lock.
    pub(crate) fn publish_emms(&self, sections: Vec<Arc<[u8]>>) {
        {
            let mut log = self.0.emms.lock().unwrap_or_else(|e| e.into_inner());
            for s in &sections {
                if log.sections.len() == EMM_LOG_LEN {
                    log.sections.pop_front();
                    log.first += 1;
                }
                log.sections.push_back(s.clone());
            }
        }
        if self.0.push.receiver_count() > 0 {
            for s in sections {
                let _ = self.0.push.send(s);
            }
        }
    }

    pub(crate) fn publish_emm(&self, section: Vec<u8>) {
        let section: Arc<[u8]> = section.into();
        {
            let mut log = self.0.emms.lock().unwrap_or_else(|e| e.into_inner());
            if log.sections.len() == EMM_LOG_LEN {
                log.sections.pop_front();
                log.first += 1;
            }
            log.sections.push_back(section.clone());
        }
        // No subscriber is not an error.
        let _ = self.0.push.send(section);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emm_log_pages_and_drops_the_oldest() {
        let out = CaOutput::new();
        let mut rx = out.subscribe_emms();
        for i in 0..10u8 {
            out.publish_emm(vec![i]);
        }
        let (s, next, dropped) = out.emm_sections_since(0, 4);
        assert_eq!((s.len(), next, dropped), (4, 4, 0));
        assert_eq!(&*s[3].section, &[3]);
        let (s, next, _) = out.emm_sections_since(next, 100);
        assert_eq!((s.len(), next), (6, 10));
        assert_eq!(s[0].index, 4);
        assert_eq!(out.emm_cursor(), 10);
        assert_eq!(&*rx.try_recv().unwrap(), &[0]);
        for i in 0..EMM_LOG_LEN {
            out.publish_emm(vec![i as u8]);
        }
        let (s, next, dropped) = out.emm_sections_since(0, 1);
        assert_eq!((s.len(), dropped, next), (1, 10, 11));
    }

    #[test]
    fn unsent_counts_from_the_slowest_active_reader() {
        let out = CaOutput::new();
        assert_eq!(out.emm_unsent(0), EmmUnsent::default());
        let fast = out.emm_mark(0);
        let slow = out.emm_mark(0);
        for i in 0..10u8 {
            out.publish_emm(vec![i; 3]);
        }
        // Not counted before they first report.
        assert_eq!(out.emm_unsent(1000), EmmUnsent::default());
        fast.set(10, 1000);
        slow.set(4, 1000);
        let u = out.emm_unsent(1000);
        assert_eq!((u.sections, u.bytes, u.readers), (6, 18, 2));
        // A reader that stopped asking no longer counts, nor a dropped one.
        let u = out.emm_unsent(1000 + EMM_READER_IDLE_MS + 1);
        assert_eq!(u, EmmUnsent::default());
        fast.set(9, 7000);
        let u = out.emm_unsent(7000);
        assert_eq!((u.sections, u.bytes, u.readers), (1, 3, 1));
        drop(fast);
        assert_eq!(out.emm_unsent(7000), EmmUnsent::default());
    }
}
