//! The stream's air clock: the time at which each input packet goes on
//! the air, in 27 MHz ticks since the engine started, read from the PCR of
//! one PID.
//!
//! It is the one time base of the engine. Crypto periods, ECM repetition,
//! the CAT and the EMM budget all run on it, and the UDP output is paced
//! by it. So a file processed as fast as possible gets exactly the ECMs
//! and crypto periods that it would get live, and a test is deterministic.
//!
//! * Between two PCRs a packet's time is extrapolated from the last PCR at
//!   the rate measured over the previous PCR interval.
//! * The clock never goes back. When a PCR says the extrapolation ran
//!   ahead, the clock waits for the PCRs to catch up.
//! * PCR wrap (33 bits of 90 kHz, every 26.5 hours) is followed by
//!   computing every step modulo the wrap.
//! * A discontinuity (the adaptation field's discontinuity_indicator, a
//!   step back, a step forward of more than a second, a loop of the input
//!   file, or a change of PCR PID) re-bases: the new PCR is mapped to the
//!   extrapolated time, so the clock runs on without a jump.

use ts::packet::Pcr;

/// 27 MHz ticks in one millisecond.
pub const TICKS_PER_MS: u64 = 27_000;
/// The PCR wraps after 2^33 ticks of 90 kHz.
const PCR_MODULUS: u64 = (1 << 33) * 300;
/// The largest step between two PCRs taken as continuous (the standard
/// asks for one PCR every 100 ms at least).
const MAX_PCR_STEP: u64 = 1000 * TICKS_PER_MS;
/// Bounds of the per-packet estimate: 15 Gbit/s .. 7.5 kbit/s.
const MIN_TICKS_PER_PACKET: u64 = 3;
const MAX_TICKS_PER_PACKET: u64 = 200 * TICKS_PER_MS;

#[derive(Debug, Clone, Copy)]
struct Anchor {
    /// The last PCR, in ticks modulo the wrap.
    pcr: u64,
    /// The clock time it was mapped to.
    at: u64,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct AirClock {
    now: u64,
    pid: Option<u16>,
    anchor: Option<Anchor>,
    /// Packets since the anchor.
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
            now: 0,
            pid: None,
            anchor: None,
            since: 0,
            ticks_per_packet: tpp.clamp(MIN_TICKS_PER_PACKET, MAX_TICKS_PER_PACKET),
            rebase: false,
            discontinuities: 0,
        }
    }

    pub(crate) fn now(&self) -> u64 {
        self.now
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

    /// Advances the clock by one input packet and returns its time.
    pub(crate) fn on_packet(&mut self, pid: u16, pcr: Option<Pcr>, discontinuity: bool) -> u64 {
        self.since = self.since.saturating_add(1);
        let extrapolated = match self.anchor {
            Some(a) => a
                .at
                .saturating_add(self.since.saturating_mul(self.ticks_per_packet)),
            None => self.now.saturating_add(self.ticks_per_packet),
        };
        let mut next = extrapolated;
        if let Some(pcr) = pcr.filter(|_| self.pid == Some(pid)) {
            let p = pcr.ticks_27mhz() % PCR_MODULUS;
            let continuous = match self.anchor {
                Some(a) if !discontinuity && !self.rebase => {
                    let step = (p + PCR_MODULUS - a.pcr) % PCR_MODULUS;
                    (step <= MAX_PCR_STEP).then(|| {
                        if step > 0 {
                            self.ticks_per_packet = (step / self.since.max(1))
                                .clamp(MIN_TICKS_PER_PACKET, MAX_TICKS_PER_PACKET);
                        }
                        a.at.saturating_add(step)
                    })
                }
                _ => None,
            };
            let at = continuous.unwrap_or_else(|| {
                if self.anchor.is_some() {
                    self.discontinuities += 1;
                }
                extrapolated.max(self.now)
            });
            self.anchor = Some(Anchor { pcr: p, at });
            self.since = 0;
            self.rebase = false;
            next = at;
        }
        self.now = self.now.max(next);
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcr(ms: u64) -> Option<Pcr> {
        Some(Pcr::from_27mhz(ms * TICKS_PER_MS))
    }

    #[test]
    fn follows_pcr_and_extrapolates_between() {
        let mut c = AirClock::new(1_000_000);
        c.set_pid(0x100);
        let t0 = c.on_packet(0x100, pcr(5000), false);
        // Ten packets over 40 ms.
        for _ in 0..9 {
            c.on_packet(0x101, None, false);
        }
        let t1 = c.on_packet(0x100, pcr(5040), false);
        assert_eq!(t1 - t0, 40 * TICKS_PER_MS);
        // Now 4 ms per packet.
        let t2 = c.on_packet(0x101, None, false);
        assert_eq!(t2 - t1, 4 * TICKS_PER_MS);
        // Other PIDs' PCRs are ignored.
        assert_eq!(c.on_packet(0x200, pcr(1), false), t2 + 4 * TICKS_PER_MS);
    }

    #[test]
    fn never_goes_back_and_rebases_on_jumps() {
        let mut c = AirClock::new(1_000_000);
        c.set_pid(1);
        c.on_packet(1, pcr(1000), false);
        let a = c.on_packet(1, pcr(1100), false);
        // A step back: re-based to the extrapolated time, not earlier.
        let b = c.on_packet(1, pcr(10), false);
        assert!(b > a);
        assert_eq!(c.discontinuities(), 1);
        let d = c.on_packet(1, pcr(110), false);
        assert_eq!(d - b, 100 * TICKS_PER_MS);
        // A jump of an hour forward is a discontinuity too.
        let e = c.on_packet(1, pcr(3_600_000), false);
        assert!(e - d < 1000 * TICKS_PER_MS);
        assert_eq!(c.discontinuities(), 2);
        // The discontinuity flag re-bases even for a small step.
        let f = c.on_packet(1, pcr(3_600_050), true);
        assert_eq!(c.discontinuities(), 3);
        assert!(f >= e);
    }

    #[test]
    fn follows_the_pcr_across_its_wrap() {
        let mut c = AirClock::new(1_000_000);
        c.set_pid(1);
        let top = PCR_MODULUS - 20 * TICKS_PER_MS;
        let a = c.on_packet(1, Some(Pcr::from_27mhz(top)), false);
        let b = c.on_packet(1, Some(Pcr::from_27mhz(30 * TICKS_PER_MS)), false);
        assert_eq!(b - a, 50 * TICKS_PER_MS);
        assert_eq!(c.discontinuities(), 0);
    }
}
