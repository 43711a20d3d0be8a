//! Crypto periods and control words.
//!
//! Time is cut into epochs of `period` seconds: `epoch = floor(t / period)`.
//! Each service scrambles epoch `n` with its own `CW_n`, fresh from the
//! CSPRNG, and never derived from another CW. The ECM of epoch `n` carries
//! `CW_n` and `CW_{n+1}` so that the receiver holds the next key before the
//! change. The slots follow the parity of the epoch ([`CwPair::of_ecm`]):
//! the even slot holds the CW of whichever of `n`, `n + 1` is even, the odd
//! slot the other, exactly as transport_scrambling_control `10`/`11`
//! ([`ts::Parity`]) selects them.
//!
//! The schedule only moves forward: once epoch `n` has been asked for, the
//! CWs before `n - 1` cannot be asked for again (the in-memory store
//! forgets, zeroizes, them), because a fresh CW for an old epoch would
//! contradict the one already on the air.
//!
//! [`ControlWordSchedule`] holds these rules once, over a [`CwStore`]
//! that keeps the words: [`MemoryCws`] here, or the daemon's database.

use crate::error::ScheduleError;
use proto::secret::{ControlWord, CwPair};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;

/// The design's default crypto period.
pub const DEFAULT_PERIOD_SECS: u64 = 10;

/// Where a [`ControlWordSchedule`] keeps its control words and each
/// service's newest epoch: in memory ([`MemoryCws`]), or in the daemon's
/// database (`headend::store::control_words::SealedCws`), where they
/// survive a restart. The schedule holds the rules; a store only keeps.
pub trait CwStore {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The control word of `epoch` of `service`, if one was made.
    fn control_word(
        &mut self,
        service: u16,
        epoch: u64,
    ) -> Result<Option<ControlWord>, Self::Error>;

    /// Keeps a fresh control word; called once per service and epoch.
    fn insert_control_word(
        &mut self,
        service: u16,
        epoch: u64,
        cw: &ControlWord,
    ) -> Result<(), Self::Error>;

    /// The newest epoch of `service` whose pair was given out, if any.
    fn newest_epoch(&mut self, service: u16) -> Result<Option<u64>, Self::Error>;

    /// Records that the pair of `epoch` was given out: the newest epoch
    /// only moves up. The store may now forget the control words of the
    /// epochs before `epoch - 1`.
    fn raise_epoch(&mut self, service: u16, epoch: u64) -> Result<(), Self::Error>;
}

#[derive(Debug, Default)]
struct ServiceCws {
    newest: Option<u64>,
    cws: BTreeMap<u64, ControlWord>,
}

/// A [`CwStore`] in memory: what tests, tools and benchmarks use. It
/// forgets (zeroizes) a service's control words as soon as they can no
/// longer be asked for.
#[derive(Debug, Default)]
pub struct MemoryCws {
    services: HashMap<u16, ServiceCws>,
}

impl MemoryCws {
    /// Forgets a service's control words and epochs.
    pub fn remove_service(&mut self, service: u16) {
        self.services.remove(&service);
    }
}

impl CwStore for MemoryCws {
    type Error = Infallible;

    fn control_word(
        &mut self,
        service: u16,
        epoch: u64,
    ) -> Result<Option<ControlWord>, Infallible> {
        Ok(self
            .services
            .get(&service)
            .and_then(|s| s.cws.get(&epoch))
            .cloned())
    }

    fn insert_control_word(
        &mut self,
        service: u16,
        epoch: u64,
        cw: &ControlWord,
    ) -> Result<(), Infallible> {
        self.services
            .entry(service)
            .or_default()
            .cws
            .insert(epoch, cw.clone());
        Ok(())
    }

    fn newest_epoch(&mut self, service: u16) -> Result<Option<u64>, Infallible> {
        Ok(self.services.get(&service).and_then(|s| s.newest))
    }

    fn raise_epoch(&mut self, service: u16, epoch: u64) -> Result<(), Infallible> {
        let s = self.services.entry(service).or_default();
        if s.newest.is_some_and(|n| n >= epoch) {
            return Ok(());
        }
        s.newest = Some(epoch);
        // Dropping the old entries zeroizes them.
        s.cws = s.cws.split_off(&epoch.saturating_sub(1));
        Ok(())
    }
}

/// The control words of every service, one per epoch, fresh from the
/// CSPRNG, kept in a [`CwStore`]. The one implementation of the slot rule
/// and of "epochs never go back": the daemon (over its database), the
/// stream engine's [`EngineFeed`](crate::stream::EngineFeed), the tests
/// and the benchmarks all use it.
#[derive(Debug)]
pub struct ControlWordSchedule<S = MemoryCws> {
    period_ms: u64,
    store: S,
}

impl ControlWordSchedule<MemoryCws> {
    /// A schedule in memory with crypto periods of `period_secs`.
    pub fn new(period_secs: u64) -> Result<Self, ScheduleError> {
        ControlWordSchedule::with_store(period_secs.saturating_mul(1000), MemoryCws::default())
    }

    /// Forgets a service's control words.
    pub fn remove_service(&mut self, service: u16) {
        self.store.remove_service(service);
    }
}

impl<S: CwStore> ControlWordSchedule<S> {
    /// A schedule with crypto periods of `period_ms` over `store`.
    pub fn with_store(period_ms: u64, store: S) -> Result<Self, ScheduleError> {
        if period_ms == 0 {
            return Err(ScheduleError::ZeroPeriod);
        }
        Ok(ControlWordSchedule { period_ms, store })
    }

    /// The crypto period in whole seconds.
    pub fn period(&self) -> u64 {
        self.period_ms / 1000
    }

    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }

    /// The epoch at `unix` seconds: `floor(unix / period)`.
    pub fn epoch_at(&self, unix: u64) -> u64 {
        self.epoch_at_ms(unix.saturating_mul(1000))
    }

    /// The epoch at `now_ms` (Unix milliseconds).
    pub fn epoch_at_ms(&self, now_ms: u64) -> u64 {
        now_ms / self.period_ms
    }

    /// The first second of `epoch`, if it is representable.
    pub fn epoch_start(&self, epoch: u64) -> Option<u64> {
        self.epoch_start_ms(epoch).map(|ms| ms / 1000)
    }

    /// The first millisecond of `epoch`, if it is representable.
    pub fn epoch_start_ms(&self, epoch: u64) -> Option<u64> {
        epoch.checked_mul(self.period_ms)
    }

    /// The epoch to put on the air for `service` at `now_ms`: the clock's,
    /// or the newest one already on the air if the clock is behind it
    /// (epochs never go back, even when the clock does).
    pub fn epoch_on_air(
        &mut self,
        service: u16,
        now_ms: u64,
    ) -> Result<u64, ScheduleError<S::Error>> {
        let now = self.epoch_at_ms(now_ms);
        let newest = self
            .store
            .newest_epoch(service)
            .map_err(ScheduleError::Store)?;
        Ok(newest.map_or(now, |n| n.max(now)))
    }

    /// The (even, odd) pair for the ECM of `epoch`: `CW_epoch` and
    /// `CW_{epoch+1}`, each in the slot of its own parity. Asking again for
    /// the same epoch gives the same pair; asking for an epoch more than
    /// one before the newest asked for is an error.
    pub fn pair(&mut self, service: u16, epoch: u64) -> Result<CwPair, ScheduleError<S::Error>> {
        let next = epoch
            .checked_add(1)
            .ok_or(ScheduleError::EpochOverflow(epoch))?;
        let newest = self
            .store
            .newest_epoch(service)
            .map_err(ScheduleError::Store)?;
        if newest.is_some_and(|n| next < n) {
            return Err(ScheduleError::EpochPassed { service, epoch });
        }
        let this = self.get_or_make(service, epoch)?;
        let following = self.get_or_make(service, next)?;
        if newest.is_none_or(|n| epoch >= n) {
            self.store
                .raise_epoch(service, epoch)
                .map_err(ScheduleError::Store)?;
        }
        Ok(CwPair::of_ecm(epoch, this, following))
    }

    /// The CW that scrambles `epoch` of `service` (the same one its ECM
    /// carries).
    pub fn control_word(
        &mut self,
        service: u16,
        epoch: u64,
    ) -> Result<ControlWord, ScheduleError<S::Error>> {
        let pair = self.pair(service, epoch)?;
        Ok(pair.for_epoch(epoch).clone())
    }

    fn get_or_make(
        &mut self,
        service: u16,
        epoch: u64,
    ) -> Result<ControlWord, ScheduleError<S::Error>> {
        if let Some(cw) = self
            .store
            .control_word(service, epoch)
            .map_err(ScheduleError::Store)?
        {
            return Ok(cw);
        }
        let cw = ControlWord::random();
        self.store
            .insert_control_word(service, epoch, &cw)
            .map_err(ScheduleError::Store)?;
        Ok(cw)
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn into_store(self) -> S {
        self.store
    }
}

/// The schedule's rules, checked over any store: in memory below, and over
/// the daemon's database in `store::control_words`.
#[cfg(any(test, feature = "testing"))]
pub fn check_rules<S: CwStore>(s: &mut ControlWordSchedule<S>) {
    // Fresh CWs in the slots of their parity, carried over from one
    // epoch's pair to the next.
    let p10 = s.pair(1, 10).unwrap();
    let p11 = s.pair(1, 11).unwrap();
    assert_eq!(p10.odd, p11.odd);
    assert_eq!(p10.for_epoch(10), &p10.even);
    assert_ne!(p10.even, p10.odd);
    assert_eq!(s.pair(1, 11).unwrap(), p11);
    assert_eq!(&s.control_word(1, 11).unwrap(), p11.for_epoch(11));
    // One epoch back is served (an ECM repeated across the change); two
    // are not.
    s.pair(1, 12).unwrap();
    assert_eq!(s.pair(1, 11).unwrap(), p11);
    assert!(matches!(
        s.pair(1, 10),
        Err(ScheduleError::EpochPassed {
            service: 1,
            epoch: 10
        })
    ));
    // A clock gone back finds the newest epoch still on the air; another
    // service has its own.
    let period = s.period_ms();
    assert_eq!(s.epoch_on_air(1, 5 * period).unwrap(), 12);
    assert_eq!(s.epoch_on_air(1, 13 * period).unwrap(), 13);
    assert_eq!(s.epoch_on_air(2, 5 * period).unwrap(), 5);
    assert_ne!(s.pair(2, 12).unwrap().even, s.pair(1, 12).unwrap().even);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_hold_in_memory() {
        check_rules(&mut ControlWordSchedule::new(10).unwrap());
    }

    #[test]
    fn epoch_is_floor_of_time_over_period() {
        let s = ControlWordSchedule::new(10).unwrap();
        assert_eq!(s.epoch_at(0), 0);
        assert_eq!(s.epoch_at(9), 0);
        assert_eq!(s.epoch_at(10), 1);
        assert_eq!(s.epoch_at(1_700_000_009), 170_000_000);
        assert_eq!(s.epoch_start(170_000_000), Some(1_700_000_000));
        assert_eq!(s.epoch_start(u64::MAX), None);
        assert_eq!(s.period(), 10);
        assert_eq!(
            ControlWordSchedule::new(0).unwrap_err(),
            ScheduleError::ZeroPeriod
        );
    }

    #[test]
    fn slots_follow_parity_and_cws_carry_over() {
        let mut s = ControlWordSchedule::new(10).unwrap();
        let p10 = s.pair(1, 10).unwrap();
        let p11 = s.pair(1, 11).unwrap();
        let p12 = s.pair(1, 12).unwrap();
        // Epoch 10 is even: even = CW_10, odd = CW_11.
        // Epoch 11 is odd: odd = CW_11, even = CW_12.
        assert_eq!(p10.odd, p11.odd);
        assert_eq!(p11.even, p12.even);
        assert_eq!(p10.for_epoch(10), &p10.even);
        assert_eq!(p11.for_epoch(11), &p11.odd);
        // Every epoch's CW is fresh.
        assert_ne!(p10.even, p12.even);
        assert_ne!(p10.even, p10.odd);
        assert_ne!(p12.odd, p11.odd);
        // Asking again gives the same pair.
        assert_eq!(s.pair(1, 12).unwrap(), p12);
        assert_eq!(&s.control_word(1, 12).unwrap(), p12.for_epoch(12));
        assert_eq!(
            ts::Parity::of_epoch(12).scrambling_control(),
            ts::ScramblingControl::EVEN
        );
        assert_eq!(
            ts::Parity::of_epoch(13).scrambling_control(),
            ts::ScramblingControl::ODD
        );
    }

    #[test]
    fn services_are_independent() {
        let mut s = ControlWordSchedule::new(10).unwrap();
        let a = s.pair(1, 4).unwrap();
        let b = s.pair(2, 4).unwrap();
        assert_ne!(a.even, b.even);
        assert_ne!(a.odd, b.odd);
        s.remove_service(1);
        assert_ne!(s.pair(1, 4).unwrap(), a);
    }

    #[test]
    fn the_schedule_never_goes_back() {
        let mut s = ControlWordSchedule::new(10).unwrap();
        s.pair(1, 5).unwrap();
        s.pair(1, 7).unwrap();
        // One epoch back is still served (ECM repetition across the change).
        s.pair(1, 6).unwrap();
        assert_eq!(
            s.pair(1, 5).unwrap_err(),
            ScheduleError::EpochPassed {
                service: 1,
                epoch: 5
            }
        );
        assert_eq!(
            s.pair(1, u64::MAX).unwrap_err(),
            ScheduleError::EpochOverflow(u64::MAX)
        );
        // Jumping ahead gives fresh CWs for both slots.
        let far = s.pair(1, 1000).unwrap();
        let near = s.pair(1, 8);
        assert!(near.is_err());
        assert_ne!(far.even, far.odd);
    }
}
