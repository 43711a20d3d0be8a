//! The ECMs of the ECMG: which epoch each one gets, and its sealing under
//! the product's active key.
//!
//! **Epochs.** An ECM's nonce is `00 00 ‖ service ‖ epoch` under
//! `K_ecm(product, generation, epoch)`, so no two different ECMs may share
//! (product, generation, service, epoch). An SCS's CP_number cannot be
//! the epoch: it wraps at 65536, and an SCS that restarts, or a second SCS
//! on the same product and service, sends the same CP_number with other
//! control words. So epochs come from *segments*: ranges of 2^16
//! consecutive values cut from blocks of the daemon's sequence chain
//! (`Headend::reserve_block`), each block committed before use and above
//! every block of this and every earlier run. A segment belongs to one
//! stream; the stream's ECMs take strictly increasing epochs in it (the
//! next crypto period's ECM the next epoch), and any CW_provision that
//! does not continue the stream (other control words for a crypto period
//! it has sealed, a CP_number that goes back or jumps) starts a new
//! segment. A repeat of the last CW_provision (same crypto period, same
//! control words, same access criteria) gets the same ECM bytes back,
//! which reveals nothing. Every epoch is also `≥ 2^63`, apart from the
//! own multiplexer's (which count crypto periods since 1970).
//!
//! **Parity.** The receiver keeps the two control words by the epoch's
//! parity (`docs/PROTOCOL.md` §5): the ECM of crypto period `n` gets an
//! epoch of `n`'s parity, with the control word of an even CP_number in
//! the even slot and that of an odd one in the odd slot, as the SCS
//! scrambles with them; consecutive crypto periods get consecutive epochs,
//! as the receiver expects.

use proto::ecm::{Ecm, EcmHeader, EcmPayload};
use proto::secret::{ControlWord, CwPair, ProductKey};
use proto::Codec;
use ts::Parity;

/// The top bit of every ECMG epoch.
pub const EPOCH_BIT: u64 = 1 << 63;
/// log2 of a segment's length in epochs.
pub const SEGMENT_BITS: u32 = 16;
/// Segments in one block of the sequence chain (2^20 values).
pub const SEGMENTS_PER_BLOCK: u64 = 1 << (crate::state::BLOCK_SHIFT - SEGMENT_BITS);
/// The largest step in CP_number that still continues a stream's
/// segment (skipped crypto periods keep their epochs unused).
pub const MAX_CP_STEP: u16 = 16;

/// A stream's range of epochs: `[start, start + 2^16)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
}

impl Segment {
    /// The segment from a sequence-chain value `base` (a multiple of
    /// 2^16 below 2^63).
    pub fn new(base: u64) -> Segment {
        Segment {
            start: EPOCH_BIT | base,
        }
    }

    fn end(&self) -> u64 {
        self.start + (1 << SEGMENT_BITS)
    }

    /// The first epoch of the segment with `cp`'s parity.
    pub fn first(&self, cp: u16) -> u64 {
        self.start + ((self.start ^ u64::from(cp)) & 1)
    }

    /// The epoch of crypto period `cp` following `last_epoch` of
    /// `last_cp`, if `cp` continues the stream within the segment.
    pub fn next(&self, last_cp: u16, last_epoch: u64, cp: u16) -> Option<u64> {
        let step = cp.wrapping_sub(last_cp);
        if step == 0 || step > MAX_CP_STEP {
            return None;
        }
        let e = last_epoch.checked_add(u64::from(step))?;
        (e >= self.start && e < self.end()).then_some(e)
    }
}

/// The control words of crypto periods `cp` and `cp + 1`, each in the slot
/// of its CP_number's parity (even CP, even slot).
pub fn pair(cp: u16, this: ControlWord, next: ControlWord) -> CwPair {
    CwPair::of_ecm(u64::from(cp), this, next)
}

/// What one ECM says.
#[derive(Debug)]
pub struct EcmSpec<'a> {
    pub key: &'a ProductKey,
    pub product: u32,
    pub generation: u32,
    pub epoch: u64,
    pub service: u16,
    pub cws: &'a CwPair,
    /// The headend's clock, Unix seconds.
    pub time: u64,
    pub maturity: u8,
}

/// The ECM, sealed as `docs/PROTOCOL.md` §5 says, in its private section
/// (table_id 0x80 for an even epoch, 0x81 for an odd one): the
/// ECM_datagram of an ECM_response (section_TSpkt_flag 0).
pub fn seal_section(s: &EcmSpec<'_>) -> Result<Vec<u8>, ts::psi::PsiError> {
    let header = EcmHeader {
        product: s.product,
        generation: s.generation,
        epoch: s.epoch,
        service: s.service,
    };
    let payload = EcmPayload {
        cws: s.cws.clone(),
        time: s.time,
        maturity: s.maturity,
    };
    let key = s.key.epoch_key(s.product, s.generation, s.epoch).ecm_key();
    let ecm = Ecm::seal(&key, header, &payload);
    ts::psi::ecm_section(Parity::of_epoch(s.epoch), &ecm.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_continues_only_forward_and_inside() {
        let s = Segment::new(5 << 20);
        assert_eq!(s.first(10), s.start);
        assert_eq!(s.first(11), s.start + 1);
        assert_eq!(s.next(10, s.start, 11), Some(s.start + 1));
        assert_eq!(s.next(10, s.start, 13), Some(s.start + 3));
        // The same crypto period, one that goes back, a long jump.
        assert_eq!(s.next(10, s.start, 10), None);
        assert_eq!(s.next(10, s.start, 9), None);
        assert_eq!(s.next(10, s.start, 10 + MAX_CP_STEP + 1), None);
        // CP_number wraps; the epoch does not.
        assert_eq!(s.next(65535, s.start + 1, 0), Some(s.start + 2));
        // Never past the segment.
        let last = s.start + (1 << SEGMENT_BITS) - 1;
        assert_eq!(s.next(1, last, 2), None);
        // Parity follows the CP_number.
        for cp in [0u16, 1, 2, 65535] {
            assert_eq!(
                Parity::of_epoch(s.first(cp)),
                Parity::of_epoch(u64::from(cp))
            );
        }
    }

    #[test]
    fn even_cp_words_go_to_the_even_slot() {
        let a = ControlWord::from_bytes([1; 16]);
        let b = ControlWord::from_bytes([2; 16]);
        let p = pair(4, a.clone(), b.clone());
        assert_eq!((&p.even, &p.odd), (&a, &b));
        let p = pair(5, a.clone(), b.clone());
        assert_eq!((&p.even, &p.odd), (&b, &a));
    }
}
