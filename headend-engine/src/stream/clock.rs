//! The stream's air clock: the time at which each input packet goes on
//! the air, in 27 MHz ticks since the engine started, read from the PCR of
//! one PID.
//!
//! It is the one time base of the engine. Crypto periods, ECM repetition,
//! the CAT and the EMM budget all run on it, and the UDP output is paced
//! by it. So a file processed as fast as possible gets exactly the ECMs
//! and crypto periods that it would get live, and a test is deterministic.
//!
//! * Packets wait in the multiplexer until the next PCR of the clock PID
//!   (at most one PCR interval, 100 ms by the standard), and are then
//!   spread evenly between the two PCRs. Interpolating, not extrapolating,
//!   keeps the times right through the bursts of a variable-rate stream
//!   (an I-frame is many packets in one PCR interval).
//! * Packets that wait too long for a PCR (a stream without any, an input
//!   that pauses or ends) are timed at the last measured rate. The clock
//!   never goes back: when a PCR then says that ran ahead, it waits.
//! * The PCR steps, their wrap and what counts as a discontinuity are
//!   [`ts::clock::PcrTimeBase`]'s, shared with the receiver.
//! * A discontinuity (the adaptation field's discontinuity_indicator, a
//!   step back, a step forward of more than [`ts::clock::MAX_PCR_STEP`], a
//!   loop of the input file, or a change of PCR PID) re-bases: the new PCR
//!   is mapped to the extrapolated time, so the clock runs on without a
//!   jump.

use ts::clock::{PcrStep, PcrTimeBase};
use ts::packet::Pcr;

pub use ts::clock::TICKS_PER_MS;
/// Bounds of the per-packet estimate: 15 Gbit/s .. 7.5 kbit/s.
const MIN_TICKS_PER_PACKET: u64 = 3;
const MAX_TICKS_PER_PACKET: u64 = 200 * TICKS_PER_MS;

/// The times of a run of `n` packets: the `i`th (from 1) is at
/// `from + (to - from) * i / n` (the multiplexer steps through them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) from: u64,
    pub(crate) to: u64,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct AirClock {
    /// The time of the last packet timed.
    last: u64,
    pid: Option<u16>,
    /// The last PCR of the clock PID.
    base: PcrTimeBase,
    /// The clock time the last PCR maps to.
    anchor: u64,
    /// Packets timed since the anchor.
    since: u64,
    ticks_per_packet: u64,
    rebase: bool,
    discontinuities: u64,
}

impl AirClock {
    /// A clock that, until the first PCR, advances at `fallback_bitrate`.
    pub(crate) fn new(fallback_bitrate: u64) -> Self {
        let tpp = (188 * 8 * 27_000_000u64) / fallback_bitrate.max(1);
        AirClock {
            last: 0,
            pid: None,
            base: PcrTimeBase::new(),
            anchor: 0,
            since: 0,
            ticks_per_packet: tpp.clamp(MIN_TICKS_PER_PACKET, MAX_TICKS_PER_PACKET),
            rebase: false,
            discontinuities: 0,
        }
    }

    pub(crate) fn pid(&self) -> Option<u16> {
        self.pid
    }

    pub(crate) fn discontinuities(&self) -> u64 {
        self.discontinuities
    }

    /// Follows the PCR of `pid` from now on.
    pub(crate) fn set_pid(&mut self, pid: u16) {
        if self.pid != Some(pid) {
            self.pid = Some(pid);
            self.rebase = true;
        }
    }

    /// The next PCR starts a new time base (the input looped).
    pub(crate) fn discontinuity(&mut self) {
        self.rebase = true;
    }

    /// How many packets may wait for a PCR before they are timed by
    /// extrapolation: 300 ms at the current rate, and at least 2,000.
    pub(crate) fn pending_limit(&self) -> usize {
        ((300 * TICKS_PER_MS / self.ticks_per_packet) as usize).max(2_000)
    }

    /// Times the `n` packets that end with one carrying `pcr` (on the
    /// clock PID): spread evenly up to the PCR's time, the last one at it.
    pub(crate) fn on_pcr(&mut self, n: usize, pcr: Pcr, discontinuity: bool) -> Span {
        let from = self.last;
        let extrapolated = |tpp: u64| from.saturating_add(tpp.saturating_mul(n as u64));
        let at = match self.base.step(pcr, discontinuity || self.rebase) {
            PcrStep::Continuous(step) => {
                let packets = self.since + n as u64;
                if step > 0 && packets > 0 {
                    self.ticks_per_packet =
                        (step / packets).clamp(MIN_TICKS_PER_PACKET, MAX_TICKS_PER_PACKET);
                }
                self.anchor.saturating_add(step)
            }
            PcrStep::Discontinuity => {
                self.discontinuities += 1;
                extrapolated(self.ticks_per_packet)
            }
            PcrStep::First => extrapolated(self.ticks_per_packet),
        };
        self.anchor = at;
        self.since = 0;
        self.rebase = false;
        // Never back: after an extrapolation that ran ahead, wait.
        self.last = at.max(from);
        Span {
            from,
            to: self.last,
        }
    }

    /// Times `n` packets at the last measured rate (no PCR came in time,
    /// or the input paused or ended).
    pub(crate) fn extrapolate(&mut self, n: usize) -> Span {
        let from = self.last;
        self.last = from.saturating_add(self.ticks_per_packet.saturating_mul(n as u64));
        self.since = self.since.saturating_add(n as u64);
        Span {
            from,
            to: self.last,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ts::clock::PCR_MODULUS;

    fn pcr(ms: u64) -> Pcr {
        Pcr::from_27mhz(ms * TICKS_PER_MS)
    }

    #[test]
    fn spreads_packets_between_pcrs() {
        let mut c = AirClock::new(1_000_000);
        c.set_pid(0x100);
        let first = c.on_pcr(3, pcr(5000), false);
        assert_eq!(first.from, 0);
        // Ten packets over 40 ms, the last with the PCR.
        let s = c.on_pcr(10, pcr(5040), false);
        assert_eq!(s.to - s.from, 40 * TICKS_PER_MS);
        // Then extrapolated at 4 ms per packet.
        let e = c.extrapolate(2);
        assert_eq!((e.from, e.to - e.from), (s.to, 8 * TICKS_PER_MS));
        // The next PCR is 20 ms after the last: 12 ms for three packets.
        let t = c.on_pcr(3, pcr(5060), false);
        assert_eq!((t.from, t.to), (e.to, s.to + 20 * TICKS_PER_MS));
    }

    #[test]
    fn never_goes_back_and_rebases_on_jumps() {
        let mut c = AirClock::new(1_000_000);
        c.set_pid(1);
        c.on_pcr(1, pcr(1000), false);
        let a = c.on_pcr(10, pcr(1100), false);
        // A step back: re-based after the last time, at the last rate.
        let b = c.on_pcr(10, pcr(10), false);
        assert_eq!(b.to - a.to, 100 * TICKS_PER_MS);
        assert_eq!(c.discontinuities(), 1);
        let d = c.on_pcr(10, pcr(110), false);
        assert_eq!(d.to - b.to, 100 * TICKS_PER_MS);
        // A jump of an hour forward is a discontinuity too.
        let e = c.on_pcr(10, pcr(3_600_000), false);
        assert_eq!(e.to - d.to, 100 * TICKS_PER_MS);
        assert_eq!(c.discontinuities(), 2);
        // The discontinuity flag re-bases even for a small step.
        c.on_pcr(1, pcr(3_600_050), true);
        assert_eq!(c.discontinuities(), 3);
        // An extrapolation that ran ahead makes the clock wait.
        let x = c.extrapolate(1000);
        let y = c.on_pcr(1, pcr(3_600_060), false);
        assert_eq!((y.from, y.to), (x.to, x.to));
    }

    #[test]
    fn follows_the_pcr_across_its_wrap() {
        let mut c = AirClock::new(1_000_000);
        c.set_pid(1);
        let top = PCR_MODULUS - 20 * TICKS_PER_MS;
        let a = c.on_pcr(1, Pcr::from_27mhz(top), false);
        let b = c.on_pcr(5, Pcr::from_27mhz(30 * TICKS_PER_MS), false);
        assert_eq!(b.to - a.to, 50 * TICKS_PER_MS);
        assert_eq!(c.discontinuities(), 0);
    }
}
