//! The CA interface between the stream engine and whatever makes the
//! control words, ECMs and EMMs: the [`CaFeed`] trait, and [`EngineFeed`],
//! an implementation straight on a [`KeyEngine`] and a
//! [`ControlWordSchedule`] so that the engine runs (and is tested) without
//! the daemon.
//!
//! The contract, which the engine relies on for "no packet is ever
//! undecryptable":
//!
//! * [`CaFeed::period`] returns the crypto period in force for a service.
//!   Its `cws` are exactly the pair that its `ecm_section` carries: the CW
//!   of `epoch` in the slot of `epoch`'s parity, `CW_{epoch+1}` in the
//!   other. The engine scrambles with `cws.for_epoch(epoch)` and puts
//!   `ecm_section` on the air, so the CW in use is always in the ECM on
//!   the air, and the next one is there a whole period ahead.
//! * Epochs only move forward, by one at a time in normal running.
//! * Nothing here may block for long: the engine calls `period` every few
//!   tens of milliseconds of stream time per service, and `emm_sections`
//!   every 10 ms, from its own thread.

use crate::engine::KeyEngine;
use crate::error::{EngineError, ScheduleError};
use crate::schedule::ControlWordSchedule;
use proto::secret::ControlWord;
use proto::secret::CwPair;
use proto::Codec;
use std::collections::HashMap;
use std::sync::Arc;
use thiserror::Error;
use ts::psi::{PrivateSection, PsiError, TableId};
use ts::Parity;

/// The shortest crypto period the stream engine supports.
pub const MIN_CRYPTO_PERIOD_MS: u64 = 100;

/// Why a feed has no crypto period (or EMM) to give. None of these carry
/// key material, so any may be logged.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The feed has not made this service's ECM yet (the daemon is
    /// starting, or the service was just added). The engine holds the
    /// service's packets back rather than send them clear.
    #[error("service {0} has no crypto period yet")]
    NotReady(u16),
    #[error("service {0} is not known to the CA feed")]
    UnknownService(u16),
    #[error("crypto period of {0} ms is shorter than the {MIN_CRYPTO_PERIOD_MS} ms minimum")]
    PeriodTooShort(u64),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("ECM or EMM section: {0}")]
    Section(#[from] PsiError),
    /// The section's table_id does not match the epoch's parity: the
    /// receiver would hand the card the wrong ECMs.
    #[error("ECM section for epoch {epoch} has table_id {found:#04x}, expected {expected:#04x}")]
    EcmTableId { epoch: u64, found: u8, expected: u8 },
    /// Anything else an implementation needs to say.
    #[error("{0}")]
    Other(String),
}

/// One crypto period of one service, as the engine puts it on the air.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoPeriod {
    pub epoch: u64,
    /// The CWs that `ecm_section` carries: `cws.for_epoch(epoch)`
    /// scrambles this period; the other slot holds `CW_{epoch+1}`.
    pub cws: CwPair,
    /// The whole ECM section (short syntax, table_id 0x80 for an even
    /// epoch, 0x81 for an odd one), repeated as it is.
    pub ecm_section: Arc<[u8]>,
    /// When the feed expects the next period to start (Unix ms), if it
    /// knows: the engine asks again then, rather than up to 20 ms later.
    pub next_ms: Option<u64>,
}

impl CryptoPeriod {
    /// The parity of this period's packets.
    pub fn parity(&self) -> Parity {
        Parity::of_epoch(self.epoch)
    }

    /// The CW that scrambles this period.
    pub fn current(&self) -> &ControlWord {
        self.cws.for_epoch(self.epoch)
    }

    /// Checks that the section is a well-formed ECM section whose table_id
    /// goes with the epoch's parity.
    pub fn check(&self) -> Result<(), FeedError> {
        let s = PrivateSection::parse(&self.ecm_section)?;
        let expected = TableId::ecm(self.parity());
        if s.table_id != expected {
            return Err(FeedError::EcmTableId {
                epoch: self.epoch,
                found: s.table_id.0,
                expected: expected.0,
            });
        }
        Ok(())
    }
}

/// What the stream engine needs from the CA side. See the module docs for
/// the contract.
pub trait CaFeed: Send {
    /// The crypto period in force for `service` at `now_ms` (Unix
    /// milliseconds: the moment the packets being scrambled go on the
    /// air). An implementation driven by its own clock (the daemon) may
    /// ignore `now_ms`.
    fn period(&mut self, service: u16, now_ms: u64) -> Result<CryptoPeriod, FeedError>;

    /// The next EMM sections of the carousel, whole sections of at most
    /// `max_bytes` in total (so an empty list when the next one is bigger;
    /// the engine's budget grows until it fits: it is at least 4,400
    /// bytes). Each must be a short-syntax section with a table_id in
    /// 0x82..=0x8F; anything else is dropped and counted.
    fn emm_sections(&mut self, now_ms: u64, max_bytes: usize) -> Vec<Arc<[u8]>>;
}

impl<F: CaFeed + ?Sized> CaFeed for &mut F {
    fn period(&mut self, service: u16, now_ms: u64) -> Result<CryptoPeriod, FeedError> {
        (**self).period(service, now_ms)
    }
    fn emm_sections(&mut self, now_ms: u64, max_bytes: usize) -> Vec<Arc<[u8]>> {
        (**self).emm_sections(now_ms, max_bytes)
    }
}

impl<F: CaFeed + ?Sized> CaFeed for Box<F> {
    fn period(&mut self, service: u16, now_ms: u64) -> Result<CryptoPeriod, FeedError> {
        (**self).period(service, now_ms)
    }
    fn emm_sections(&mut self, now_ms: u64, max_bytes: usize) -> Vec<Arc<[u8]>> {
        (**self).emm_sections(now_ms, max_bytes)
    }
}

/// Which product's key seals a service's ECMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServiceCa {
    product: u32,
    maturity: u8,
}

/// A [`CaFeed`] on a [`KeyEngine`] and a [`ControlWordSchedule`], with
/// its own clock rule (`epoch = now_ms / period_ms`, the daemon's rule)
/// and a fixed EMM carousel. For tests, tools and a headend without the
/// daemon.
#[derive(Debug)]
pub struct EngineFeed {
    engine: KeyEngine,
    schedule: ControlWordSchedule,
    period_ms: u64,
    services: HashMap<u16, ServiceCa>,
    current: HashMap<u16, CryptoPeriod>,
    emms: Vec<Arc<[u8]>>,
    next_emm: usize,
}

impl EngineFeed {
    /// A feed with crypto periods of `period_ms` (at least
    /// [`MIN_CRYPTO_PERIOD_MS`]). The schedule's control words are used,
    /// with this period: epochs here count `period_ms` periods.
    pub fn new(
        engine: KeyEngine,
        schedule: ControlWordSchedule,
        period_ms: u64,
    ) -> Result<Self, FeedError> {
        if period_ms < MIN_CRYPTO_PERIOD_MS {
            return Err(FeedError::PeriodTooShort(period_ms));
        }
        let schedule = ControlWordSchedule::with_store(period_ms, schedule.into_store())?;
        Ok(EngineFeed {
            engine,
            schedule,
            period_ms,
            services: HashMap::new(),
            current: HashMap::new(),
            emms: Vec::new(),
            next_emm: 0,
        })
    }

    /// Scrambles `service` under `product`, whose key must be in the
    /// engine by the time the first ECM is made.
    pub fn add_service(&mut self, service: u16, product: u32, maturity: u8) {
        self.services
            .insert(service, ServiceCa { product, maturity });
    }

    /// Adds an EMM to the carousel, in a section with `table_id`
    /// (0x82..=0x8F).
    pub fn push_emm(&mut self, table_id: TableId, emm: &[u8]) -> Result<(), FeedError> {
        let s = ts::psi::emm_section(table_id, emm)?;
        self.emms.push(s.into());
        Ok(())
    }

    /// The EMM sections of the carousel.
    pub fn emm_carousel(&self) -> &[Arc<[u8]>] {
        &self.emms
    }

    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }

    pub fn engine(&self) -> &KeyEngine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut KeyEngine {
        &mut self.engine
    }
}

impl CaFeed for EngineFeed {
    fn period(&mut self, service: u16, now_ms: u64) -> Result<CryptoPeriod, FeedError> {
        // Never go back: a late caller gets the newest period.
        let epoch = self.schedule.epoch_on_air(service, now_ms)?;
        if let Some(c) = self.current.get(&service) {
            if c.epoch == epoch {
                return Ok(c.clone());
            }
        }
        let ca = *self
            .services
            .get(&service)
            .ok_or(FeedError::UnknownService(service))?;
        let cws = self.schedule.pair(service, epoch)?;
        // The ECM's time is the start of its epoch, in seconds, as the
        // daemon does: the card's clock never runs ahead of the stream.
        let time = epoch.saturating_mul(self.period_ms) / 1000;
        let ecm = self
            .engine
            .ecm(ca.product, epoch, service, &cws, time, ca.maturity)?;
        let section = ts::psi::ecm_section(Parity::of_epoch(epoch), &ecm.to_bytes())?;
        let p = CryptoPeriod {
            epoch,
            cws,
            ecm_section: section.into(),
            next_ms: epoch
                .checked_add(1)
                .and_then(|n| n.checked_mul(self.period_ms)),
        };
        self.current.insert(service, p.clone());
        Ok(p)
    }

    fn emm_sections(&mut self, _now_ms: u64, max_bytes: usize) -> Vec<Arc<[u8]>> {
        let mut out = Vec::new();
        let mut used = 0;
        // At most one turn of the carousel per call.
        for _ in 0..self.emms.len() {
            let i = self.next_emm % self.emms.len();
            let s = &self.emms[i];
            if used + s.len() > max_bytes {
                break;
            }
            used += s.len();
            out.push(s.clone());
            self.next_emm = (i + 1) % self.emms.len();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::OperatorKeys;

    fn feed(period_ms: u64) -> EngineFeed {
        let mut engine = KeyEngine::new(OperatorKeys::generate(1));
        engine.add_product(7).unwrap();
        let mut f =
            EngineFeed::new(engine, ControlWordSchedule::new(10).unwrap(), period_ms).unwrap();
        f.add_service(100, 7, 0);
        f
    }

    #[test]
    fn periods_follow_the_clock_and_carry_the_next_cw() {
        let mut f = feed(200);
        let a = f.period(100, 1_000).unwrap();
        assert_eq!(a.epoch, 5);
        a.check().unwrap();
        assert_eq!(a.ecm_section[0], 0x81);
        assert_eq!(f.period(100, 1_199).unwrap(), a);
        let b = f.period(100, 1_200).unwrap();
        assert_eq!(b.epoch, 6);
        assert_eq!(b.ecm_section[0], 0x80);
        // CW_6 was in ECM 5 already.
        assert_eq!(b.current(), a.cws.for_epoch(6));
        // A late call never goes back.
        assert_eq!(f.period(100, 1_000).unwrap().epoch, 6);
        assert!(matches!(
            f.period(5, 1_000),
            Err(FeedError::UnknownService(5))
        ));
        assert!(matches!(
            EngineFeed::new(
                KeyEngine::new(OperatorKeys::generate(1)),
                ControlWordSchedule::new(1).unwrap(),
                99
            ),
            Err(FeedError::PeriodTooShort(99))
        ));
    }

    #[test]
    fn emm_carousel_respects_the_budget_and_wraps() {
        let mut f = feed(1000);
        for i in 0..3u8 {
            f.push_emm(TableId(0x82), &[i; 97]).unwrap(); // 100-byte sections
        }
        assert!(f.push_emm(TableId(0x80), &[0; 10]).is_err());
        assert_eq!(f.emm_sections(0, 99).len(), 0);
        let a = f.emm_sections(0, 250);
        assert_eq!(a.len(), 2);
        let b = f.emm_sections(0, 10_000);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0][3], 2); // wrapped around
        assert_eq!(b[1][3], 0);
    }
}
