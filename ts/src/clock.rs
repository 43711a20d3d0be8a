//! The PCR time base that both ends of the stream read: the headend's air
//! clock, which times and paces the multiplex, and the receiver's stream
//! clock, which measures how long it has waited for the card.
//!
//! [`PcrTimeBase`] follows the PCRs of one PID and says of each one
//! whether it continues the last by a number of 27 MHz ticks or starts a
//! new time base ([`PcrStep`]). The step is computed modulo the PCR's wrap
//! (33 bits of 90 kHz, every 26.5 hours), so the wrap is no discontinuity.
//! What each end does with a discontinuity is its own: the headend
//! re-bases its air clock on the time it extrapolated, the receiver simply
//! does not count the jump as elapsed time.
//!
//! # The maximum step
//!
//! A PCR that lies more than [`MAX_PCR_STEP`] (5 seconds) after the last,
//! or any amount before it, is a discontinuity. The standard asks for a
//! PCR at least every 100 ms, so 5 s is fifty PCR intervals: a burst loss,
//! a stalled source or a PCR PID that carries its PCRs only every few
//! seconds (a service that takes its clock from another's scrambled video
//! and keeps only the packets with a PCR) keeps its time on both ends.
//! A larger step would hurt the headend, which paces its output by the
//! air clock: a splice forward counted as time becomes that much silence
//! on air and a crypto period cut short, so 5 s bounds that gap. A smaller
//! step buys the receiver little, since its waits take wall time as a
//! floor, so a real pause is measured either way; the step only decides
//! whether a splice under it counts as programme.
//!
//! What it must never do: keep time itself (it classifies steps and keeps
//! the last PCR, no more), or treat a backward step as elapsed time.

use crate::packet::Pcr;

/// 27 MHz ticks in one millisecond.
pub const TICKS_PER_MS: u64 = 27_000;
/// 27 MHz ticks in one second.
pub const TICKS_PER_SECOND: u64 = 1000 * TICKS_PER_MS;
/// The PCR wraps after 2^33 ticks of 90 kHz, in 27 MHz ticks.
pub const PCR_MODULUS: u64 = (1 << 33) * 300;
/// The largest step between two PCRs taken as continuous (see the module
/// docs for why 5 s).
pub const MAX_PCR_STEP: u64 = 5 * TICKS_PER_SECOND;

/// The forward distance from PCR `from` to PCR `to`, in 27 MHz ticks,
/// modulo the wrap (a step back is almost a whole wrap forward).
pub fn pcr_distance(from: u64, to: u64) -> u64 {
    (to % PCR_MODULUS + PCR_MODULUS - from % PCR_MODULUS) % PCR_MODULUS
}

/// How a PCR follows the one before it on the same PID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcrStep {
    /// The first PCR: there is nothing to step from.
    First,
    /// The PCR continues the last one, this many 27 MHz ticks later.
    Continuous(u64),
    /// A new time base: the discontinuity indicator, a re-base asked by
    /// the caller, a step back or a step over [`MAX_PCR_STEP`].
    Discontinuity,
}

/// The last PCR of one PID; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct PcrTimeBase {
    last: Option<u64>,
}

impl PcrTimeBase {
    /// A time base that has seen no PCR yet.
    pub fn new() -> Self {
        PcrTimeBase::default()
    }

    /// Classifies `pcr` against the last PCR and keeps it as the last.
    /// `discontinuity` makes it a [`PcrStep::Discontinuity`] whatever the
    /// step (the adaptation field's discontinuity_indicator, or the
    /// caller's own reason: a looped input, a new PCR PID).
    pub fn step(&mut self, pcr: Pcr, discontinuity: bool) -> PcrStep {
        let p = pcr.ticks_27mhz() % PCR_MODULUS;
        let step = match self.last {
            None => PcrStep::First,
            Some(_) if discontinuity => PcrStep::Discontinuity,
            Some(last) => match pcr_distance(last, p) {
                d if d <= MAX_PCR_STEP => PcrStep::Continuous(d),
                _ => PcrStep::Discontinuity,
            },
        };
        self.last = Some(p);
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcr(ticks: u64) -> Pcr {
        Pcr::from_27mhz(ticks)
    }

    #[test]
    fn classifies_steps_across_the_wrap_and_jumps() {
        let mut b = PcrTimeBase::new();
        assert_eq!(
            b.step(pcr(PCR_MODULUS - TICKS_PER_SECOND), false),
            PcrStep::First
        );
        assert_eq!(
            b.step(pcr(TICKS_PER_SECOND), false),
            PcrStep::Continuous(2 * TICKS_PER_SECOND)
        );
        // Just over the maximum step, and a step back.
        assert_eq!(
            b.step(pcr(TICKS_PER_SECOND + MAX_PCR_STEP + 1), false),
            PcrStep::Discontinuity
        );
        assert_eq!(b.step(pcr(TICKS_PER_SECOND), false), PcrStep::Discontinuity);
        // The flag wins over a small step; the next step is measured from it.
        assert_eq!(
            b.step(pcr(TICKS_PER_SECOND + 5), true),
            PcrStep::Discontinuity
        );
        assert_eq!(
            b.step(pcr(TICKS_PER_SECOND + 10), false),
            PcrStep::Continuous(5)
        );
    }
}
