//! Stream time, from the service's PCR, with wall time as a floor: how
//! long the card has been refusing, measured so that a file read faster
//! than real time and a live stream both give up after the same span of
//! programme.
//!
//! What it must never do: pace or delay the output (it only measures),
//! or count a PCR jump (a splice, a restarted source) as elapsed time.
//! What a jump is, and the PCR's wrap, are [`ts::clock::PcrTimeBase`]'s,
//! shared with the headend's air clock.

use std::time::{Duration, Instant};
use ts::clock::{PcrStep, PcrTimeBase};
use ts::packet::Pcr;

/// Stream time from the service's PCR, with wall time as a floor.
#[derive(Debug)]
pub(super) struct StreamClock {
    base: PcrTimeBase,
    elapsed_27mhz: u64,
}

/// A point in time on both clocks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Moment {
    stream_27mhz: u64,
    wall: Instant,
}

impl StreamClock {
    pub(super) fn new() -> Self {
        StreamClock {
            base: PcrTimeBase::new(),
            elapsed_27mhz: 0,
        }
    }

    /// A PCR of the service's PCR PID.
    pub(super) fn pcr(&mut self, pcr: Pcr) {
        if let PcrStep::Continuous(d) = self.base.step(pcr, false) {
            self.elapsed_27mhz += d;
        }
    }

    pub(super) fn now(&self) -> Moment {
        Moment {
            stream_27mhz: self.elapsed_27mhz,
            wall: Instant::now(),
        }
    }

    /// The time since `m`: stream time, or wall time if more has passed.
    pub(super) fn since(&self, m: Moment) -> Duration {
        let stream = Duration::from_nanos(
            (self.elapsed_27mhz.saturating_sub(m.stream_27mhz)).saturating_mul(1000) / 27,
        );
        stream.max(m.wall.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ts::clock::PCR_MODULUS as PCR_WRAP;

    const SECOND: u64 = 27_000_000;

    #[test]
    fn counts_pcr_steps_across_the_wrap_and_ignores_jumps() {
        let mut c = StreamClock::new();
        let start = c.now();
        c.pcr(Pcr::from_27mhz(PCR_WRAP - SECOND));
        // Across the 33-bit wrap: two seconds.
        c.pcr(Pcr::from_27mhz(SECOND));
        assert_eq!(c.since(start).as_secs(), 2);
        // A jump of an hour is a splice, not an hour.
        c.pcr(Pcr::from_27mhz(3600 * SECOND));
        c.pcr(Pcr::from_27mhz(3601 * SECOND));
        assert_eq!(c.since(start).as_secs(), 3);
        // Backwards by a little is a jump too (almost a whole wrap ahead).
        c.pcr(Pcr::from_27mhz(3600 * SECOND));
        assert_eq!(c.since(start).as_secs(), 3);
    }

    #[test]
    fn wall_time_is_the_floor() {
        let c = StreamClock::new();
        let m = c.now();
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.since(m) >= Duration::from_millis(20));
    }
}
