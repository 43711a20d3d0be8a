//! The two control-word slots, even and odd, and which crypto period each
//! key belongs to.
//!
//! The ECM of epoch `n` carries `CW_n` and `CW_{n+1}`, each in the slot of
//! its epoch's parity, so a key is loaded before the stream switches to it
//! and a change of crypto period loses no packet. CISSA has no integrity
//! check: a packet descrambled with the key of another period turns into
//! noise that nothing downstream notices. So the slots follow epochs, not
//! just parities:
//!
//! * **The packets' epoch.** Packets carry only a parity bit. The epoch of
//!   the packets on the air is inferred once from the newest ECM (its
//!   epoch if the parities agree, the one before if not: ECMs may come a
//!   little before their period) and then advanced by one at every switch
//!   of parity. A new ECM whose epoch does not fit the inferred one (a gap
//!   in the input, a restarted headend) makes the receiver infer it again.
//! * **A key only for its epoch.** A packet is descrambled only with the
//!   key of exactly its epoch; otherwise it is counted as undecryptable.
//!   Missing ECMs therefore stop the output instead of garbling it.
//! * **Never overwrite the key in use.** An ECM that arrives before its
//!   period would put `CW_{n+1}` into the slot that still holds the
//!   running `CW_{n-1}`. That key waits until the stream leaves the slot.
//!
//! [`KeySlots::revoke_from`] drops the keys of a period whose ECM the card
//! refused, so output stops at the start of the first period the card did
//! not release, even though the previous ECM already carried its key.

use proto::card::ControlWords;
use proto::secret::ControlWord;
use ts::{Descrambler, Outcome, Parity, PACKET_LEN};

#[derive(Debug, Default)]
struct Slot {
    /// The epoch of the key in the slot (or of the key revoked from it).
    epoch: Option<u64>,
    has_key: bool,
    /// The key itself, to tell a repetition from a changed key.
    cw: Option<ControlWord>,
    /// A newer key that waits until the stream leaves this slot.
    pending: Option<(u64, ControlWord)>,
}

impl Slot {
    fn holds(&self, epoch: u64) -> bool {
        self.has_key && self.epoch == Some(epoch)
    }
}

/// What [`KeySlots::descramble`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descrambled {
    /// Not scrambled: left as it was.
    Clear,
    /// Descrambled in place; scrambling bits cleared.
    Done(Parity),
    /// No key for this packet's epoch; the packet is untouched.
    NoKey(Parity),
    /// Reserved scrambling bits or a malformed header.
    Invalid,
}

/// Both CW slots with their epochs (see the module docs).
#[derive(Debug, Default)]
pub struct KeySlots {
    descrambler: Descrambler,
    even: Slot,
    odd: Slot,
    /// The epoch of the packets on the air, once inferred.
    current: Option<u64>,
    /// The epoch of the newest ECM.
    ecm_epoch: Option<u64>,
    /// The epoch of the newest ECM whose keys were installed (ECMs are
    /// noted on arrival, before the card answers them).
    installed: Option<u64>,
    /// ECMs are noted on arrival ([`KeySlots::ecm_arrived`]).
    arrivals: bool,
    /// The input had a gap and no ECM has arrived since
    /// ([`KeySlots::input_gap`]).
    after_gap: bool,
    /// Keys loaded that were new (not a repetition of one held).
    changes: u64,
}

/// The parity of an epoch's slot: even epochs use the even key.
pub fn parity_of(epoch: u64) -> Parity {
    Parity::of_epoch(epoch)
}

impl KeySlots {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&mut self, p: Parity) -> &mut Slot {
        match p {
            Parity::Even => &mut self.even,
            Parity::Odd => &mut self.odd,
        }
    }

    /// New keys loaded so far (a CW change each).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The epoch of the packets on the air, if known.
    pub fn current_epoch(&self) -> Option<u64> {
        self.current
    }

    /// Loads the control words of the ECM of `epoch`: `CW_epoch` and
    /// `CW_{epoch+1}`.
    pub fn install(&mut self, epoch: u64, cws: &ControlWords) {
        if self.arrivals && self.ecm_epoch.is_some_and(|e| epoch > e.saturating_add(1)) {
            // The answer to an ECM from before the headend started over:
            // none of its keys belongs to the stream now on the air.
            return;
        }
        let started_over = self.installed.is_some_and(|e| epoch.saturating_add(1) < e);
        if started_over {
            self.start_over(epoch);
        }
        if !self.arrivals || started_over {
            // Otherwise noted on arrival: an answer may come after a gap
            // in the input, and the ECM it answers then says nothing about
            // the packets after the gap.
            self.note_ecm(epoch);
        }
        self.installed = Some(self.installed.map_or(epoch, |e| e.max(epoch)));
        for e in [epoch, epoch.saturating_add(1)] {
            self.set(e, cws.cws.for_epoch(e));
        }
    }

    /// The epoch a scrambled packet belongs to, as [`KeySlots::descramble`]
    /// would infer it (without changing anything); `None` for a clear
    /// packet or before any ECM.
    pub fn epoch_of(&self, packet: &[u8; PACKET_LEN]) -> Option<u64> {
        let parity = match packet[3] >> 6 {
            0b10 => Parity::Even,
            0b11 => Parity::Odd,
            _ => return None,
        };
        let (base, step_back) = match (self.current, self.ecm_epoch) {
            (Some(c), _) => (c, false),
            (None, Some(n)) => (n, true),
            (None, None) => return None,
        };
        Some(match (parity_of(base) == parity, step_back) {
            (true, _) => base,
            (false, false) => base.saturating_add(1),
            (false, true) => base.saturating_sub(1),
        })
    }

    /// An ECM of `epoch` has arrived, before the card has answered it:
    /// the packets are of that epoch or the one before, and a key of an
    /// older period is never taken for the current one.
    pub fn ecm_arrived(&mut self, epoch: u64) {
        if self.ecm_epoch.is_some_and(|e| epoch.saturating_add(1) < e) {
            self.start_over(epoch);
        }
        self.arrivals = true;
        self.after_gap = false;
        self.note_ecm(epoch);
    }

    /// The input had a gap: packets were lost, the source fell silent, or
    /// it started again (a restarted headend seals fresh epochs two periods
    /// on). The epoch of the packets after it is not inferred from those
    /// before it: a parity switch across the gap may stand for one period
    /// or three, and a key held for the period the count would give is
    /// then another period's, whose packets would come out as noise. So
    /// nothing is descrambled until an ECM arrives after the gap; keys
    /// stay in their slots, each for its own epoch.
    pub fn input_gap(&mut self) {
        self.current = None;
        self.ecm_epoch = None;
        self.after_gap = true;
    }

    /// Whether packets wait for an ECM after a gap in the input.
    pub fn awaiting_ecm_after_gap(&self) -> bool {
        self.after_gap && self.ecm_epoch.is_none()
    }

    /// Epochs went back by more than a repetition across a change can
    /// explain: a headend started again from scratch. Start over with it
    /// rather than wait for its epochs to catch up, and keep no key of
    /// the old count.
    fn start_over(&mut self, epoch: u64) {
        tracing::warn!(epoch, "ECM epochs went back; control words reset");
        let (changes, arrivals) = (self.changes, self.arrivals);
        *self = KeySlots {
            changes,
            arrivals,
            ..KeySlots::default()
        };
    }

    /// An ECM of `epoch` is on the air: the packets are of that epoch or
    /// the one before. If the inferred epoch disagrees, infer it again.
    fn note_ecm(&mut self, epoch: u64) {
        if self.ecm_epoch.is_some_and(|e| epoch < e) {
            return;
        }
        self.ecm_epoch = Some(epoch);
        if let Some(c) = self.current {
            if c > epoch || c.saturating_add(1) < epoch {
                self.current = None;
            }
        }
    }

    fn set(&mut self, epoch: u64, cw: &ControlWord) {
        let current = self.current;
        let p = parity_of(epoch);
        let s = self.slot(p);
        match s.epoch {
            Some(old) if epoch < old => return,
            Some(old) if epoch == old && s.has_key => {
                if s.cw.as_ref() != Some(cw) {
                    // Another key for the same period (a headend that
                    // re-keyed it): the newer ECM is the one on the air.
                    self.load(p, epoch, cw.clone());
                }
                return;
            }
            _ => {}
        }
        if current.is_some_and(|c| s.holds(c)) {
            // The stream still runs on the older key in this slot.
            if s.pending.as_ref().is_none_or(|(e, _)| *e < epoch) {
                s.pending = Some((epoch, cw.clone()));
            }
            return;
        }
        self.load(p, epoch, cw.clone());
    }

    fn load(&mut self, p: Parity, epoch: u64, cw: ControlWord) {
        self.descrambler.set(p, &cw);
        let s = self.slot(p);
        s.epoch = Some(epoch);
        s.has_key = true;
        s.pending = None;
        s.cw = Some(cw);
        self.changes += 1;
    }

    /// Loads the keys that waited for their slot to be free.
    fn load_pending(&mut self) {
        for p in [Parity::Even, Parity::Odd] {
            let current = self.current;
            let s = self.slot(p);
            if current.is_some_and(|c| s.holds(c)) {
                continue;
            }
            if let Some((e, cw)) = s.pending.take() {
                self.load(p, e, cw);
            }
        }
    }

    /// Drops every key of `epoch` or later: the card refused the ECM of
    /// `epoch`, so nothing from that period on may be descrambled.
    pub fn revoke_from(&mut self, epoch: u64) {
        self.note_ecm(epoch);
        for p in [Parity::Even, Parity::Odd] {
            let s = self.slot(p);
            if s.pending.as_ref().is_some_and(|(e, _)| *e >= epoch) {
                s.pending = None;
            }
            if s.has_key && s.epoch.is_some_and(|e| e >= epoch) {
                s.has_key = false;
                s.cw = None;
                self.descrambler.clear(p);
            }
        }
    }

    /// Descrambles one packet in place (see the module docs for which key
    /// it may use).
    #[inline]
    pub fn descramble(&mut self, packet: &mut [u8; PACKET_LEN]) -> Descrambled {
        let parity = match packet[3] >> 6 {
            0b00 => return Descrambled::Clear,
            0b10 => Parity::Even,
            0b11 => Parity::Odd,
            _ => return Descrambled::Invalid,
        };
        let epoch = match self.current {
            Some(c) if parity_of(c) == parity => c,
            Some(c) => {
                // A switch of parity: the next period.
                self.current = Some(c.saturating_add(1));
                self.load_pending();
                c.saturating_add(1)
            }
            None => {
                let Some(n) = self.ecm_epoch else {
                    return Descrambled::NoKey(parity);
                };
                let e = if parity_of(n) == parity {
                    n
                } else {
                    n.saturating_sub(1)
                };
                self.current = Some(e);
                self.load_pending();
                e
            }
        };
        let holds = match parity {
            Parity::Even => self.even.holds(epoch),
            Parity::Odd => self.odd.holds(epoch),
        };
        if !holds {
            return Descrambled::NoKey(parity);
        }
        match self.descrambler.descramble(packet) {
            Ok(Outcome::Done(p)) => Descrambled::Done(p),
            Ok(Outcome::NoKey(p)) => Descrambled::NoKey(p),
            Ok(Outcome::Clear) => Descrambled::Clear,
            Err(_) => Descrambled::Invalid,
        }
    }
}

/// Control words by epoch, shared with the pipeline's scripted CA module.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use proto::secret::CwPair;
    use ts::Scrambler;

    pub fn cw(n: u64) -> ControlWord {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&n.to_be_bytes());
        b[8] = 0xA5;
        ControlWord::from_bytes(b)
    }

    /// The ECM of epoch n: CW_n and CW_{n+1} in their parity's slots.
    pub fn ecm(n: u64) -> ControlWords {
        ControlWords {
            cws: CwPair::of_ecm(n, cw(n), cw(n + 1)),
            time: 0,
        }
    }

    /// A packet of epoch n, scrambled with CW_n; its payload names n.
    pub fn packet(n: u64) -> [u8; PACKET_LEN] {
        let mut p = [0u8; PACKET_LEN];
        p[..4].copy_from_slice(&[0x47, 0x01, 0x00, 0x10]);
        p[4..12].copy_from_slice(&n.to_be_bytes());
        let mut s = Scrambler::new();
        s.set(parity_of(n), &cw(n));
        s.scramble(&mut p, parity_of(n)).unwrap();
        p
    }

    pub fn epoch_of(k: &mut KeySlots, n: u64) -> Option<u64> {
        let mut p = packet(n);
        match k.descramble(&mut p) {
            Descrambled::Done(_) => Some(u64::from_be_bytes(p[4..12].try_into().unwrap())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use proto::secret::CwPair;

    /// Asserts that each of `epochs` descrambles with its own key.
    fn descrambles(k: &mut KeySlots, epochs: impl IntoIterator<Item = u64>) {
        for n in epochs {
            assert_eq!(epoch_of(k, n), Some(n), "epoch {n}");
        }
    }

    /// Key slots that ECM `n` went into, descrambling epoch `n`.
    fn running_at(n: u64) -> KeySlots {
        let mut k = KeySlots::new();
        k.install(n, &ecm(n));
        assert_eq!(epoch_of(&mut k, n), Some(n));
        k
    }

    #[test]
    fn ecms_noted_on_arrival_before_the_card_answers() {
        let mut k = running_at(10);
        // ECM 11 on the air, not answered yet: a packet of 11 is known to
        // be of 11, and goes out with the key ECM 10 released.
        k.ecm_arrived(11);
        assert_eq!(k.epoch_of(&packet(11)), Some(11));
        descrambles(&mut k, [11]);
        // The headend started over at epoch 3: no key of the old count is
        // kept, even before the card answers the new ECM...
        k.ecm_arrived(3);
        assert_eq!(k.epoch_of(&packet(3)), Some(3));
        assert_eq!(epoch_of(&mut k, 3), None);
        // ...nor taken from a late answer to an ECM of the old count.
        k.install(12, &ecm(12));
        assert_eq!(epoch_of(&mut k, 3), None);
        k.install(3, &ecm(3));
        descrambles(&mut k, [3, 4]);
    }

    #[test]
    fn after_a_gap_in_the_input_no_packet_is_taken_for_the_period_before_it() {
        // Epochs 10 and 11 on the air, ECMs noted on arrival.
        let mut k = KeySlots::new();
        k.ecm_arrived(10);
        k.install(10, &ecm(10));
        descrambles(&mut k, [10, 11]);
        // The headend stops, and starts again two periods on, at 13 (a
        // fresh epoch): its first packets come before its first ECM.
        // Epoch 13 has the parity of 11, whose key the slot still holds:
        // without the gap, the parity switch would be taken for "12" and
        // the next one for "13"... or, as here, none at all, and 13 would
        // come out under CW_11 as noise.
        k.input_gap();
        assert_eq!(epoch_of(&mut k, 13), None);
        // A late answer to an ECM from before the gap changes nothing.
        k.install(11, &ecm(11));
        assert_eq!(epoch_of(&mut k, 13), None);
        // ECM 13 on the air, then answered: the output is back.
        k.ecm_arrived(13);
        assert_eq!(epoch_of(&mut k, 13), None);
        k.install(13, &ecm(13));
        descrambles(&mut k, [13, 14]);
    }

    #[test]
    fn a_gap_within_a_period_costs_nothing_once_its_ecm_repeats() {
        let mut k = KeySlots::new();
        k.ecm_arrived(10);
        k.install(10, &ecm(10));
        descrambles(&mut k, [10]);
        k.input_gap();
        // The repeated ECM 10 (the pipeline passes repetitions on as
        // arrivals after a gap) confirms the period; the key is still held.
        k.ecm_arrived(10);
        descrambles(&mut k, [10, 11]);
    }

    #[test]
    fn ecm_at_the_start_of_each_period() {
        let mut k = KeySlots::new();
        assert_eq!(epoch_of(&mut k, 10), None);
        for n in 10..20 {
            k.install(n, &ecm(n));
            assert_eq!(epoch_of(&mut k, n), Some(n));
        }
        assert_eq!(k.changes(), 11);
    }

    #[test]
    fn early_ecm_does_not_overwrite_the_running_key() {
        let mut k = running_at(10);
        k.install(11, &ecm(11));
        assert_eq!(epoch_of(&mut k, 11), Some(11));
        // ECM 12 arrives while epoch 11 (odd) is still running: CW_13 waits.
        k.install(12, &ecm(12));
        descrambles(&mut k, [11, 12, 13]);
    }

    #[test]
    fn missing_ecms_stop_the_output_instead_of_garbling_it() {
        let mut k = running_at(10);
        assert_eq!(epoch_of(&mut k, 11), Some(11));
        // No ECM 11: the even slot still holds CW_10, which must not be
        // used for epoch 12.
        assert_eq!(epoch_of(&mut k, 12), None);
        // ECM 12 brings it back.
        k.install(12, &ecm(12));
        assert_eq!(epoch_of(&mut k, 12), Some(12));
    }

    #[test]
    fn a_refused_ecm_stops_at_its_period() {
        let mut k = running_at(10);
        // ECM 11 refused, before the switch: epoch 10 runs to its end, and
        // epoch 11 (whose key ECM 10 carried) is not descrambled.
        k.revoke_from(11);
        assert_eq!(epoch_of(&mut k, 10), Some(10));
        assert_eq!(epoch_of(&mut k, 11), None);
        assert_eq!(epoch_of(&mut k, 12), None);
        // Accepted again later.
        k.install(12, &ecm(12));
        descrambles(&mut k, [12, 13]);
    }

    #[test]
    fn old_and_repeated_ecms_change_nothing() {
        let mut k = KeySlots::new();
        k.install(10, &ecm(10));
        k.install(10, &ecm(10));
        assert_eq!(k.changes(), 2);
        descrambles(&mut k, [10, 11]);
        k.install(12, &ecm(12));
        k.install(11, &ecm(11));
        descrambles(&mut k, [12, 13]);
    }

    #[test]
    fn ecms_that_come_before_their_period() {
        // As the headend sends them: ECM n goes out just before the first
        // packet of period n, while packets of n - 1 are still coming.
        let mut k = KeySlots::new();
        k.install(10, &ecm(10));
        // The receiver joined late in epoch 9: no key for it, and above
        // all not CW_11, which now sits in the odd slot.
        assert_eq!(epoch_of(&mut k, 9), None);
        assert_eq!(epoch_of(&mut k, 10), Some(10));
        for n in 11..30 {
            k.install(n, &ecm(n));
            assert_eq!(epoch_of(&mut k, n - 1), Some(n - 1));
            assert_eq!(epoch_of(&mut k, n), Some(n));
        }
    }

    #[test]
    fn refused_then_entitled_by_an_emm() {
        // ECMs 0..=2 refused (each just before its period), then an EMM
        // brings the entitlement and ECM 2 is sent again.
        let b = 1_796_040_000u64;
        let mut k = KeySlots::new();
        for n in b..b + 3 {
            k.revoke_from(n);
            assert_eq!(epoch_of(&mut k, n.saturating_sub(1)), None);
            assert_eq!(epoch_of(&mut k, n), None);
        }
        k.install(b + 2, &ecm(b + 2));
        assert_eq!(epoch_of(&mut k, b + 2), Some(b + 2));
        for n in b + 3..b + 10 {
            k.install(n, &ecm(n));
            assert_eq!(epoch_of(&mut k, n - 1), Some(n - 1), "epoch {}", n - b - 1);
            assert_eq!(epoch_of(&mut k, n), Some(n), "epoch {}", n - b);
        }
    }

    #[test]
    fn a_period_re_keyed_by_the_headend_takes_the_new_key() {
        let mut k = running_at(10);
        // ECM 10 again, with other CWs: packets now use those.
        let other = ControlWords {
            cws: CwPair {
                even: ControlWord::from_bytes([9; 16]),
                odd: cw(11),
            },
            time: 0,
        };
        k.install(10, &other);
        let mut p = packet(10);
        assert_eq!(k.descramble(&mut p), Descrambled::Done(Parity::Even));
        assert_ne!(u64::from_be_bytes(p[4..12].try_into().unwrap()), 10);
        assert_eq!(k.changes(), 3);
    }

    #[test]
    fn a_gap_in_the_input_resynchronizes_on_the_next_ecm() {
        let mut k = running_at(10);
        // Ten periods lost, then the stream is back with ECM 21 on time.
        k.install(21, &ecm(21));
        descrambles(&mut k, [21, 22]);
        // A headend started from scratch, whose epochs went back.
        k.install(5, &ecm(5));
        descrambles(&mut k, [5, 6]);
    }
}
