//! The two control-word slots, even and odd, and which crypto period each
//! key belongs to.
//!
//! The ECM of epoch `n` carries `CW_n` and `CW_{n+1}`, each in the slot of
//! its epoch's parity, so a key is always loaded before the stream switches
//! to it and a change of crypto period loses no packet. Two rules keep a
//! stale key from ever descrambling a packet into garbage (CISSA has no
//! integrity check, so a wrong key would go unnoticed):
//!
//! * **Retire on switch.** When the packets switch from parity `p` to the
//!   other, the key in slot `p` belongs to a period that is over. Unless a
//!   newer ECM refreshes it, the next switch back to `p` finds no key: the
//!   packets are counted as undecryptable instead of being turned into
//!   noise. This is what stops the output when ECMs stop being answered.
//! * **Never overwrite the key in use.** An ECM that arrives before its
//!   period starts would put `CW_{n+1}` into the slot that still holds the
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
    /// The stream has left this slot since the key was loaded.
    retired: bool,
    /// A newer key that waits until the stream leaves this slot.
    pending: Option<(u64, ControlWord)>,
}

/// What [`KeySlots::descramble`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Descrambled {
    /// Not scrambled: left as it was.
    Clear,
    /// Descrambled in place; scrambling bits cleared.
    Done(Parity),
    /// No usable key for this parity; the packet is untouched.
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
    /// The parity of the last scrambled packet.
    current: Option<Parity>,
    /// Keys loaded that were new (not a repetition of one held).
    changes: u64,
}

/// The parity of an epoch's slot: even epochs use the even key.
pub fn parity_of(epoch: u64) -> Parity {
    if epoch % 2 == 0 {
        Parity::Even
    } else {
        Parity::Odd
    }
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

    /// Whether any key was ever loaded.
    pub fn ever_loaded(&self) -> bool {
        self.changes > 0
    }

    /// Loads the control words of the ECM of `epoch`: `CW_epoch` and
    /// `CW_{epoch+1}`.
    pub fn install(&mut self, epoch: u64, cws: &ControlWords) {
        for e in [epoch, epoch.saturating_add(1)] {
            let p = parity_of(e);
            let cw = match p {
                Parity::Even => &cws.even,
                Parity::Odd => &cws.odd,
            };
            self.set(p, e, cw);
        }
    }

    fn set(&mut self, p: Parity, epoch: u64, cw: &ControlWord) {
        let in_use = self.current == Some(p);
        let s = self.slot(p);
        match s.epoch {
            Some(old) if epoch < old => return,
            Some(old) if epoch == old && s.has_key => return,
            _ => {}
        }
        if in_use && s.has_key && !s.retired && s.epoch.is_some_and(|old| old < epoch) {
            // The stream still runs on the older key in this slot.
            if s.pending.as_ref().is_none_or(|(e, _)| *e < epoch) {
                s.pending = Some((epoch, cw.clone()));
            }
            return;
        }
        s.epoch = Some(epoch);
        s.has_key = true;
        s.retired = false;
        s.pending = None;
        self.descrambler.set(p, cw);
        self.changes += 1;
    }

    /// Drops every key of `epoch` or later: the card refused the ECM of
    /// `epoch`, so nothing from that period on may be descrambled.
    pub fn revoke_from(&mut self, epoch: u64) {
        for p in [Parity::Even, Parity::Odd] {
            let s = self.slot(p);
            if s.pending.as_ref().is_some_and(|(e, _)| *e >= epoch) {
                s.pending = None;
            }
            if s.has_key && s.epoch.is_some_and(|e| e >= epoch) {
                s.has_key = false;
                self.descrambler.clear(p);
            }
        }
    }

    /// Whether a packet of this parity would find a usable key.
    pub fn has_key(&self, p: Parity) -> bool {
        let s = match p {
            Parity::Even => &self.even,
            Parity::Odd => &self.odd,
        };
        s.has_key && !s.retired
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
        if self.current != Some(parity) {
            if let Some(prev) = self.current {
                self.leave(prev);
            }
            self.current = Some(parity);
        }
        if !self.has_key(parity) {
            return Descrambled::NoKey(parity);
        }
        match self.descrambler.descramble(packet) {
            Ok(Outcome::Done(p)) => Descrambled::Done(p),
            Ok(Outcome::NoKey(p)) => Descrambled::NoKey(p),
            Ok(Outcome::Clear) => Descrambled::Clear,
            Err(_) => Descrambled::Invalid,
        }
    }

    /// The stream left slot `p`: load a key waiting for it, or retire it.
    fn leave(&mut self, p: Parity) {
        let s = self.slot(p);
        match s.pending.take() {
            Some((epoch, cw)) => {
                s.epoch = Some(epoch);
                s.has_key = true;
                s.retired = false;
                self.descrambler.set(p, &cw);
                self.changes += 1;
            }
            None => s.retired = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ts::Scrambler;

    fn cw(n: u64) -> ControlWord {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&n.to_be_bytes());
        b[8] = 0xA5;
        ControlWord::from_bytes(b)
    }

    /// The ECM of epoch n: CW_n and CW_{n+1} in their parity's slots.
    fn ecm(n: u64) -> ControlWords {
        let (even, odd) = if n % 2 == 0 {
            (cw(n), cw(n + 1))
        } else {
            (cw(n + 1), cw(n))
        };
        ControlWords { even, odd, time: 0 }
    }

    /// A packet of epoch n, scrambled with CW_n; its payload names n.
    fn packet(n: u64) -> [u8; PACKET_LEN] {
        let mut p = [0u8; PACKET_LEN];
        p[..4].copy_from_slice(&[0x47, 0x01, 0x00, 0x10]);
        p[4..12].copy_from_slice(&n.to_be_bytes());
        let mut s = Scrambler::new();
        s.set(parity_of(n), &cw(n));
        s.scramble(&mut p, parity_of(n)).unwrap();
        p
    }

    fn epoch_of(k: &mut KeySlots, n: u64) -> Option<u64> {
        let mut p = packet(n);
        match k.descramble(&mut p) {
            Descrambled::Done(_) => Some(u64::from_be_bytes(p[4..12].try_into().unwrap())),
            _ => None,
        }
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
        let mut k = KeySlots::new();
        k.install(10, &ecm(10));
        assert_eq!(epoch_of(&mut k, 10), Some(10));
        k.install(11, &ecm(11));
        assert_eq!(epoch_of(&mut k, 11), Some(11));
        // ECM 12 arrives while epoch 11 (odd) is still running: CW_13 waits.
        k.install(12, &ecm(12));
        assert_eq!(epoch_of(&mut k, 11), Some(11));
        assert_eq!(epoch_of(&mut k, 12), Some(12));
        assert_eq!(epoch_of(&mut k, 13), Some(13));
    }

    #[test]
    fn missing_ecms_stop_the_output_instead_of_garbling_it() {
        let mut k = KeySlots::new();
        k.install(10, &ecm(10));
        assert_eq!(epoch_of(&mut k, 10), Some(10));
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
        let mut k = KeySlots::new();
        k.install(10, &ecm(10));
        assert_eq!(epoch_of(&mut k, 10), Some(10));
        // ECM 11 refused, before the switch: epoch 10 runs to its end, and
        // epoch 11 (whose key ECM 10 carried) is not descrambled.
        k.revoke_from(11);
        assert_eq!(epoch_of(&mut k, 10), Some(10));
        assert_eq!(epoch_of(&mut k, 11), None);
        assert_eq!(epoch_of(&mut k, 12), None);
        // Accepted again later.
        k.install(12, &ecm(12));
        assert_eq!(epoch_of(&mut k, 12), Some(12));
        assert_eq!(epoch_of(&mut k, 13), Some(13));
    }

    #[test]
    fn old_and_repeated_ecms_change_nothing() {
        let mut k = KeySlots::new();
        k.install(10, &ecm(10));
        k.install(10, &ecm(10));
        assert_eq!(k.changes(), 2);
        assert_eq!(epoch_of(&mut k, 10), Some(10));
        assert_eq!(epoch_of(&mut k, 11), Some(11));
        k.install(12, &ecm(12));
        k.install(9, &ecm(9));
        assert_eq!(epoch_of(&mut k, 12), Some(12));
        assert_eq!(epoch_of(&mut k, 13), Some(13));
    }
}
