//! The EMM-U carousel: every card's whole state (its entitlements with
//! the active key and the one being delivered, and its pairing), sealed
//! again and sent once per cycle, so that a card that was off, or missed
//! an EMM, catches up. Cards the operator just changed jump the queue, and
//! go through a fast lane for a while; renewals are delivered in passes
//! over their holders (see [`super::products`]).
//!
//! Everything it sends is paced to the EMM bandwidth: each step has a
//! budget of TS bytes (the bit rate times the time since the last step,
//! at most one second's worth banked), spent in this order: the fast
//! lane, changed cards, renewal deliveries, the regular round. The round
//! never sends more than one cycle's worth per cycle; with more cards than
//! the bandwidth carries in a cycle, the cycle simply takes longer, and
//! nothing is made that the channels cannot send.

use super::fields::secs;
use super::{Headend, Result, EMM_U_TABLE};
use crate::metrics::Metrics;
use proto::emm::{EmmCommand, Entitle, EMM_HEADER_LEN};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use ts::psi::TableId;

/// How often the fast lane repeats a card's EMM-U.
pub const FAST_REPEAT_MS: u64 = 1000;
/// How long a card stays in the fast lane after an operator changed it.
pub const FAST_WINDOW_MS: u64 = 30_000;
/// The fast lane's share of the EMM bandwidth, in EMM-Us per second: about
/// 30 kbit/s of TS, under a third of a channel's default 100 kbit/s.
const FAST_RATE_PER_S: f64 = 20.0;
/// TS bytes of one EMM-U on the air (one packet), for plans made before
/// the EMMs exist.
pub const EMM_U_AIR_BYTES: u64 = 188;
/// The share of the EMM bandwidth that renewal deliveries may take; the
/// rest keeps the regular round going.
const DELIVERY_SHARE: f64 = 0.8;

/// TS bytes a section of `len` bytes takes on the air: a pointer field,
/// then 184 payload bytes a packet.
pub(super) fn air_bytes(len: usize) -> u64 {
    (len as u64 + 1).div_ceil(184) * 188
}

/// Cards in the fast lane at most; beyond, the oldest leaves early (it had
/// its first EMM-U at once, and has the regular carousel).
const FAST_MAX_CARDS: usize = 4096;

/// A card in the fast lane.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fast {
    /// When its next repetition is due.
    due_ms: u64,
    /// When it leaves the lane.
    until_ms: u64,
    /// Its EMM-U carries UNPAIR (it was unpaired, and not paired since).
    unpair: bool,
}

/// The EMM-U carousel: every member card gets one EMM-U per cycle, in
/// card id order, and cards whose entitlements changed jump the queue.
///
/// A card the operator just changed (subscribe, pair, unpair) is also put
/// in the *fast lane*: its EMM-U goes out again every [`FAST_REPEAT_MS`]
/// for [`FAST_WINDOW_MS`], whatever the cycle. The queue jump alone sends
/// one EMM-U, at once, which only a receiver already on the air with the
/// card gets; with a 60 s cycle, a receiver switched on a second later
/// would wait up to a minute for the next. The lane's total rate is
/// bounded ([`FAST_RATE_PER_S`]), so many changes at once slow each card's
/// repetitions down rather than outgrow the EMM bandwidth.
#[derive(Debug, Default)]
pub(super) struct Carousel {
    pub(super) members: BTreeSet<u32>,
    /// The last member sent in the regular round.
    pub(super) cursor: u32,
    pub(super) priority: VecDeque<u32>,
    queued: HashSet<u32>,
    /// Fractional EMMs owed to the regular round.
    credit: f64,
    fast: BTreeMap<u32, Fast>,
    /// Fractional EMMs owed to the fast lane.
    fast_credit: f64,
    /// TS bytes the EMM bandwidth allows now.
    pub(super) budget: f64,
    /// Each product's last SD delivery, sent again once a cycle.
    pub(super) standing: BTreeMap<u32, Vec<Arc<[u8]>>>,
    /// When the standing deliveries are next due.
    standing_due_ms: u64,
}

impl Carousel {
    /// A revoked card: out of the round and the fast lane.
    pub(super) fn forget(&mut self, card: u32) {
        self.members.remove(&card);
        self.fast.remove(&card);
    }

    pub(super) fn prioritize(&mut self, card: u32) {
        if self.members.contains(&card) && self.queued.insert(card) {
            self.priority.push_back(card);
        }
    }

    /// Puts `card` in the fast lane from `now_ms` (its first repetition is
    /// one [`FAST_REPEAT_MS`] later: the change itself is sent at once by
    /// the caller). `unpair`: its EMM-Us carry UNPAIR.
    pub(super) fn fast_lane(&mut self, card: u32, unpair: bool, now_ms: u64) {
        if !self.fast.contains_key(&card) && self.fast.len() >= FAST_MAX_CARDS {
            if let Some((&oldest, _)) = self.fast.iter().min_by_key(|(_, f)| f.until_ms) {
                self.fast.remove(&oldest);
            }
        }
        self.fast.insert(
            card,
            Fast {
                due_ms: now_ms + FAST_REPEAT_MS,
                until_ms: now_ms + FAST_WINDOW_MS,
                unpair,
            },
        );
    }

    /// The fast-lane cards due at `now_ms`, oldest due first, within the
    /// lane's rate; each is rescheduled or leaves the lane. `dt_ms`: time
    /// since the last call.
    fn take_fast(&mut self, now_ms: u64, dt_ms: u64, out: &mut Vec<(u32, bool)>) {
        if self.fast.is_empty() {
            self.fast_credit = 0.0;
            return;
        }
        self.fast_credit =
            (self.fast_credit + FAST_RATE_PER_S * dt_ms as f64 / 1000.0).min(FAST_RATE_PER_S);
        let mut due: Vec<(u64, u32)> = self
            .fast
            .iter()
            .filter(|(_, f)| f.due_ms <= now_ms)
            .map(|(&c, f)| (f.due_ms, c))
            .collect();
        due.sort_unstable();
        for (_, card) in due {
            if self.fast_credit < 1.0 {
                break;
            }
            self.fast_credit -= 1.0;
            let Some(f) = self.fast.get_mut(&card) else {
                continue;
            };
            out.push((card, f.unpair));
            f.due_ms = now_ms + FAST_REPEAT_MS;
            if f.due_ms > f.until_ms {
                self.fast.remove(&card);
            }
        }
    }

    /// The next `n` members in the round (at most every member once);
    /// returns whether the round wrapped (a cycle completed).
    fn take_round(&mut self, n: usize, out: &mut Vec<u32>) -> bool {
        let n = n.min(self.members.len());
        let mut wrapped = false;
        let mut taken = 0;
        while taken < n {
            let before = out.len();
            out.extend(
                self.members
                    .range(self.cursor.saturating_add(1)..)
                    .take(n - taken)
                    .copied(),
            );
            taken += out.len() - before;
            if let (true, Some(&last)) = (out.len() > before, out.last()) {
                self.cursor = last;
            }
            if taken < n {
                // End of the round: start again from the lowest id.
                self.cursor = 0;
                wrapped = true;
            }
        }
        wrapped
    }
}

/// A short-syntax private section around `payload`, in one allocation:
/// exactly what `ts::psi::PrivateSection::build` writes (a test checks),
/// for the carousel's hot path. `payload` is one EMM, at most 4016 bytes.
fn short_section(table: TableId, payload: &[u8]) -> Arc<[u8]> {
    debug_assert!(payload.len() <= ts::psi::MAX_PRIVATE_PAYLOAD);
    let len = payload.len() as u16;
    let head = [table.0, 0x70 | (len >> 8) as u8, len as u8];
    head.iter().chain(payload).copied().collect()
}

impl Headend {
    /// Sends a card's whole state (see [`Headend::card_emm`]) at once, and
    /// puts it in the fast lane.
    pub(super) fn send_now(&mut self, card: u32, unpair: bool, now_ms: u64) -> Result<()> {
        self.ensure_seq_room(3, now_ms)?;
        let pairing = self.pairings.get(&card).copied();
        match self.card_emm(card, pairing, unpair, secs(now_ms)) {
            Ok(Some(emm)) => self.emit(EMM_U_TABLE, &emm, false),
            Ok(None) => {}
            Err(e) => self.internal_error(&format!("EMM-U for card {card}: {e}")),
        }
        // Then, the first time in this run, its Subset Difference labels
        // (kilobytes): after the change, which must not wait for them.
        self.send_labels_once(card, secs(now_ms));
        self.carousel.fast_lane(card, unpair, now_ms);
        Ok(())
    }

    pub(super) fn carousel_step(&mut self, now_ms: u64) -> Result<()> {
        let dt = now_ms.saturating_sub(self.last_tick_ms);
        self.last_tick_ms = now_ms;
        let per_s = self.timing.emm_bitrate as f64 / 8.0;
        let c = &mut self.carousel;
        c.budget = (c.budget + per_s * dt as f64 / 1000.0).min(per_s);
        // The fast lane: cards the operator just changed, again.
        let mut fast = Vec::new();
        self.carousel.take_fast(now_ms, dt, &mut fast);
        for (id, unpair) in fast {
            // Revoked meanwhile: nothing more for it.
            if !self.engine.has_card(id) {
                continue;
            }
            let pairing = self.pairings.get(&id).copied();
            match self.card_emm(id, pairing, unpair, secs(now_ms)) {
                Ok(Some(emm)) => self.emit(EMM_U_TABLE, &emm, false),
                Ok(None) => {}
                Err(e) => self.internal_error(&format!("EMM-U for card {id}: {e}")),
            }
        }
        // Changed cards.
        let mut ids = Vec::new();
        while self.carousel.budget > 0.0 {
            let Some(c) = self.carousel.priority.pop_front() else {
                break;
            };
            self.carousel.queued.remove(&c);
            if self.carousel.members.contains(&c) {
                ids.push(c);
                self.carousel.budget -= EMM_U_AIR_BYTES as f64;
            }
        }
        self.send_emm_us(&ids, now_ms);
        self.deliver_renewals(now_ms, per_s);
        if self.carousel.budget > 0.0 {
            self.send_standing(now_ms);
        }
        // The regular round: one cycle's worth per cycle at most, and what
        // the bandwidth leaves.
        let n = self.carousel.members.len();
        self.carousel.credit += n as f64 * dt as f64 / self.timing.cycle_ms as f64;
        self.carousel.credit = self.carousel.credit.min(n as f64);
        let affordable = (self.carousel.budget / EMM_U_AIR_BYTES as f64).max(0.0);
        let regular = self.carousel.credit.min(affordable).floor() as usize;
        self.carousel.credit -= regular as f64;
        let mut round = Vec::with_capacity(regular);
        if self.carousel.take_round(regular, &mut round) {
            Metrics::inc(&self.metrics.carousel_cycles);
        }
        self.send_emm_us(&round, now_ms);
        Ok(())
    }

    /// Sends the next messages of each renewal being delivered, within
    /// the deliveries' share of the budget; a finished pass starts the
    /// next, and the last one records where it ends in the EMM log.
    fn deliver_renewals(&mut self, now_ms: u64, per_s: f64) {
        use super::products::DELIVERY_PASSES;
        use super::sd::Delivery;
        use crate::store::products::KeyState;
        let reserve = per_s * (1.0 - DELIVERY_SHARE) / 10.0;
        let products: Vec<u32> = self.renewals.keys().copied().collect();
        for id in products {
            let mut cards = Vec::new();
            let mut sections = Vec::new();
            {
                let Some(r) = self.renewals.get_mut(&id) else {
                    continue;
                };
                if r.state != KeyState::Delivering || r.sent_through.is_some() {
                    continue;
                }
                let items = r.items();
                while r.passes < DELIVERY_PASSES && self.carousel.budget > reserve {
                    if r.next >= items {
                        r.passes += 1;
                        r.next = 0;
                        continue;
                    }
                    match &r.delivery {
                        Delivery::Flat => {
                            cards.push(r.holders[r.next]);
                            self.carousel.budget -= EMM_U_AIR_BYTES as f64;
                        }
                        Delivery::Sd { sections: all, .. } => {
                            let s = all[r.next].clone();
                            self.carousel.budget -= air_bytes(s.len()) as f64;
                            sections.push(s);
                        }
                    }
                    r.next += 1;
                }
            }
            cards.retain(|&c| self.engine.has_card(c));
            self.send_emm_us(&cards, now_ms);
            if !sections.is_empty() {
                Metrics::add(&self.metrics.emm_g_sent, sections.len() as u64);
                self.output.publish_emms(sections);
            }
            if let Some(r) = self.renewals.get_mut(&id) {
                if r.passes >= DELIVERY_PASSES && r.sent_through.is_none() {
                    r.sent_through = Some(self.output.emm_cursor());
                }
            }
        }
    }

    /// The standing SD deliveries, once a cycle, from what the budget
    /// leaves.
    fn send_standing(&mut self, now_ms: u64) {
        if self.carousel.standing.is_empty() || now_ms < self.carousel.standing_due_ms {
            return;
        }
        let mut out = Vec::new();
        for sections in self.carousel.standing.values() {
            for s in sections {
                self.carousel.budget -= air_bytes(s.len()) as f64;
                out.push(s.clone());
            }
        }
        self.carousel.standing_due_ms = now_ms + self.timing.cycle_ms;
        Metrics::add(&self.metrics.emm_g_sent, out.len() as u64);
        self.output.publish_emms(out);
    }

    /// Seals and publishes the carousel EMM-U of each card.
    fn send_emm_us(&mut self, ids: &[u32], now_ms: u64) {
        let now = secs(now_ms);
        let mut plain = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(&rx) = self.pairings.get(&id) {
                match self.card_emm(id, Some(rx), false, now) {
                    Ok(Some(emm)) => self.emit(EMM_U_TABLE, &emm, false),
                    Ok(None) => {}
                    Err(e) => self.internal_error(&format!("EMM-U for card {id}: {e}")),
                }
            } else if self.engine.has_card(id) {
                plain.push(id);
            }
        }
        for chunk in plain.chunks(1024) {
            let mut buf = std::mem::take(&mut self.emm_buf);
            buf.clear();
            if let Err(e) = self.engine.emm_u_batch(chunk, now, &mut buf) {
                self.internal_error(&format!("EMM-U batch: {e}"));
            }
            // Cut the batch into EMMs and wrap each in its section, one
            // allocation each, and publish them under one lock.
            let mut sections = Vec::with_capacity(chunk.len());
            let mut at = 0;
            while at + EMM_HEADER_LEN <= buf.len() {
                let body = u16::from_be_bytes([buf[at + 14], buf[at + 15]]) as usize;
                let end = at + EMM_HEADER_LEN + body;
                if end > buf.len() {
                    break;
                }
                sections.push(short_section(EMM_U_TABLE, &buf[at..end]));
                at = end;
            }
            Metrics::add(&self.metrics.emm_u_sent, sections.len() as u64);
            self.emm_u_sections += sections.len() as u64;
            self.emm_u_bytes += sections.iter().map(|s| s.len() as u64).sum::<u64>();
            self.output.publish_emms(sections);
            self.emm_buf = buf;
        }
    }

    /// A card's whole state in one EMM-U: its live entitlements with their
    /// current keys, then PAIR with `pairing` if it is paired, else UNPAIR
    /// if `unpair`. `None` if that is nothing at all.
    pub(super) fn card_emm(
        &mut self,
        id: u32,
        pairing: Option<[u8; 32]>,
        unpair: bool,
        now: u64,
    ) -> Result<Option<Vec<u8>>> {
        let mut commands = Vec::new();
        for e in self
            .engine
            .entitlements(id)?
            .iter()
            .filter(|e| e.end >= now)
        {
            // The pending key first, then the active one (as the
            // engine's own EMM-Us).
            let pending = self.engine.pending_key(e.product)?;
            let active = Some(self.engine.product_key(e.product)?);
            for (generation, key) in pending.into_iter().chain(active) {
                commands.push(EmmCommand::Entitle(Entitle {
                    product: e.product,
                    generation,
                    start: e.start,
                    end: e.end,
                    key: key.clone(),
                }));
            }
        }
        match pairing {
            Some(receiver) => commands.push(EmmCommand::Pair { receiver }),
            None if unpair => commands.push(EmmCommand::Unpair),
            None => {}
        }
        if commands.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.engine.emm_u(id, now, commands)?))
    }

    /// One whole carousel cycle at once, as the scheduler spreads it over
    /// `emm_cycle_ms`: optionally a new sequence block (a commit, and every
    /// active card's id read back from the database, as every 10 minutes),
    /// then one EMM-U per member into the output. Returns the EMM-Us sent.
    /// For benchmarks.
    pub fn carousel_cycle_now(&mut self, now_ms: u64, new_block: bool) -> Result<usize> {
        if new_block {
            self.roll_seq_block(now_ms)?;
        }
        let ids: Vec<u32> = self.carousel.members.iter().copied().collect();
        self.send_emm_us(&ids, now_ms);
        Metrics::inc(&self.metrics.carousel_cycles);
        Ok(ids.len())
    }

    /// The engine's bare EMM-U batch for `ids`, with no database and no
    /// output: the in-memory rate the carousel is compared with. Counters
    /// only move up, so this is safe, but the EMMs go nowhere.
    pub fn emm_u_batch_in_memory(
        &mut self,
        ids: &[u32],
        now: u64,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        Ok(self.engine.emm_u_batch(ids, now, out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_sections_match_ts() {
        for len in [40, 98, 255, 256, 4016] {
            let emm: Vec<u8> = (0..len).map(|i| i as u8).collect();
            assert_eq!(
                &*short_section(EMM_U_TABLE, &emm),
                &ts::psi::emm_section(EMM_U_TABLE, &emm).unwrap()[..]
            );
        }
    }

    #[test]
    fn carousel_round_visits_every_member_once_per_cycle() {
        let mut c = Carousel::default();
        c.members.extend([3, 5, 9, 12]);
        let mut out = Vec::new();
        assert!(!c.take_round(3, &mut out));
        assert_eq!(out, [3, 5, 9]);
        out.clear();
        assert!(c.take_round(3, &mut out));
        assert_eq!(out, [12, 3, 5]);
        out.clear();
        // Never more than every member in one call.
        c.take_round(10, &mut out);
        assert_eq!(out.len(), 4);
        c.prioritize(9);
        c.prioritize(9);
        c.prioritize(77);
        assert_eq!(c.priority, [9]);
    }
}
