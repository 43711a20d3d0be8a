//! Crypto periods and control words.
//!
//! Time is cut into epochs of `period` seconds: `epoch = floor(t / period)`.
//! Each service scrambles epoch `n` with its own `CW_n`, fresh from the
//! CSPRNG, and never derived from another CW. The ECM of epoch `n` carries
//! `CW_n` and `CW_{n+1}` so that the receiver holds the next key before the
//! change. The slots follow the parity of the epoch: the even slot holds the
//! CW of whichever of `n`, `n + 1` is even, the odd slot the other, exactly
//! as transport_scrambling_control `10`/`11` selects them.
//!
//! The schedule only moves forward: once epoch `n` has been asked for, the
//! CWs before `n - 1` are forgotten (zeroized) and cannot be asked for
//! again, because a fresh CW for an old epoch would contradict the one
//! already on the air.

use crate::error::ScheduleError;
use proto::secret::ControlWord;
use std::collections::{BTreeMap, HashMap};

/// The design's default crypto period.
pub const DEFAULT_PERIOD_SECS: u64 = 10;

/// Which of the two CW slots an epoch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    Even,
    Odd,
}

impl Parity {
    pub fn of(epoch: u64) -> Parity {
        if epoch % 2 == 0 {
            Parity::Even
        } else {
            Parity::Odd
        }
    }

    /// The TS header's transport_scrambling_control for this key.
    pub fn scrambling_control(self) -> u8 {
        match self {
            Parity::Even => 0b10,
            Parity::Odd => 0b11,
        }
    }
}

/// The two control words an ECM carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CwPair {
    pub even: ControlWord,
    pub odd: ControlWord,
}

impl CwPair {
    pub fn get(&self, parity: Parity) -> &ControlWord {
        match parity {
            Parity::Even => &self.even,
            Parity::Odd => &self.odd,
        }
    }

    /// The CW that scrambles `epoch`.
    pub fn for_epoch(&self, epoch: u64) -> &ControlWord {
        self.get(Parity::of(epoch))
    }
}

#[derive(Debug, Default)]
struct ServiceCws {
    /// The oldest epoch that may still be asked for.
    floor: u64,
    cws: BTreeMap<u64, ControlWord>,
}

/// Per-service store of random control words, one per epoch.
#[derive(Debug)]
pub struct ControlWordSchedule {
    period: u64,
    services: HashMap<u16, ServiceCws>,
}

impl ControlWordSchedule {
    pub fn new(period_secs: u64) -> Result<Self, ScheduleError> {
        if period_secs == 0 {
            return Err(ScheduleError::ZeroPeriod);
        }
        Ok(ControlWordSchedule {
            period: period_secs,
            services: HashMap::new(),
        })
    }

    /// The crypto period in seconds.
    pub fn period(&self) -> u64 {
        self.period
    }

    /// `floor(unix / period)`.
    pub fn epoch_at(&self, unix: u64) -> u64 {
        unix / self.period
    }

    /// The first second of `epoch`, if it is representable.
    pub fn epoch_start(&self, epoch: u64) -> Option<u64> {
        epoch.checked_mul(self.period)
    }

    /// The (even, odd) pair for the ECM of `epoch`: `CW_epoch` and
    /// `CW_{epoch+1}`, each in the slot of its own parity. Asking again for
    /// the same epoch gives the same pair; asking for an epoch more than
    /// one before the newest asked for is an error.
    pub fn pair(&mut self, service: u16, epoch: u64) -> Result<CwPair, ScheduleError> {
        let next = epoch
            .checked_add(1)
            .ok_or(ScheduleError::EpochOverflow(epoch))?;
        let s = self.services.entry(service).or_default();
        if epoch < s.floor {
            return Err(ScheduleError::EpochPassed { service, epoch });
        }
        let floor = epoch.saturating_sub(1);
        if floor > s.floor {
            s.floor = floor;
            // Dropping the old entries zeroizes them.
            s.cws = s.cws.split_off(&floor);
        }
        let this = s
            .cws
            .entry(epoch)
            .or_insert_with(ControlWord::random)
            .clone();
        let following = s
            .cws
            .entry(next)
            .or_insert_with(ControlWord::random)
            .clone();
        Ok(match Parity::of(epoch) {
            Parity::Even => CwPair {
                even: this,
                odd: following,
            },
            Parity::Odd => CwPair {
                even: following,
                odd: this,
            },
        })
    }

    /// The CW that scrambles `epoch` of `service` (the same one its ECM
    /// carries).
    pub fn control_word(&mut self, service: u16, epoch: u64) -> Result<ControlWord, ScheduleError> {
        let pair = self.pair(service, epoch)?;
        Ok(pair.for_epoch(epoch).clone())
    }

    /// Forgets a service's control words.
    pub fn remove_service(&mut self, service: u16) {
        self.services.remove(&service);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(Parity::of(12).scrambling_control(), 0b10);
        assert_eq!(Parity::of(13).scrambling_control(), 0b11);
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
