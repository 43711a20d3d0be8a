//! The conversation with the CA module: new ECMs in, control words into
//! the CW slots; EMMs for this card in, each once; and what a refusal
//! means for the output.
//!
//! * **ECMs.** A repetition of the last ECM is not sent again; a new one
//!   is, and its control words go into the slots of its epoch
//!   ([`KeySlots::install`]). A refusal revokes the keys from its epoch
//!   on ([`KeySlots::revoke_from`]), so the output stops at the first
//!   period the card did not release.
//! * **EMMs.** Only those addressed to this card or to all cards reach
//!   the module, and a carousel's repetitions reach it once.
//! * **Refusals.** A card that is not entitled, or paired with another
//!   receiver, is given time: its EMMs keep flowing (one of them may bring
//!   the entitlement or the pairing, and then the last ECM is sent again),
//!   while the output stays stopped. The pipeline gives up after
//!   [`PipelineOptions::entitlement_wait`] or
//!   [`PipelineOptions::pairing_wait`].
//!
//! What it must never do: hand the module an EMM addressed to another
//! card, or leave in a slot a key of a period the module refused.

use super::ca::{CaModule, EcmOutcome, EmmOutcome};
use super::clock::{Moment, StreamClock};
use super::worker::{Answer, Done, Job, Port};
use super::PipelineOptions;
use crate::card::{status_text, LinkError};
use crate::error::Failure;
use crate::keys::{Descrambled, KeySlots};
use crate::stats::Stats;
use proto::apdu::StatusWord;
use proto::card::EntitlementRecord;
use proto::codec::{Codec, Reader};
use proto::ecm::EcmHeader;
use proto::emm::GLOBAL_ADDRESS;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};
use ts::psi::{emm_section_address, PrivateSection, PRIVATE_HEADER_LEN};
use ts::PACKET_LEN;

/// The card refuses the service's ECMs.
#[derive(Debug)]
struct Denial {
    since: Moment,
    message: String,
}

/// Remembers, by a keyed hash, the EMMs the card accepted or refused as
/// replayed, so that a carousel's repetitions reach it once. Bounded: the
/// oldest are forgotten first.
#[derive(Debug)]
struct EmmMemory {
    hasher: RandomState,
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    cap: usize,
}

impl EmmMemory {
    fn new(cap: usize) -> Self {
        EmmMemory {
            hasher: RandomState::new(),
            seen: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// The hash a section is remembered by. The key is random per run,
    /// so no one can make two EMMs collide on purpose.
    fn hash(&self, section: &[u8]) -> u64 {
        self.hasher.hash_one(section)
    }

    fn contains(&self, hash: u64) -> bool {
        self.seen.contains(&hash)
    }

    /// Remembers a hash; whether it was new.
    fn insert(&mut self, hash: u64) -> bool {
        if !self.seen.insert(hash) {
            return false;
        }
        self.order.push_back(hash);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// Card times kept for the medians.
const TIMING_SAMPLES: usize = 1024;

/// How long the card takes, and how long ECMs wait for it.
#[derive(Debug, Default)]
struct Timing {
    card_us: VecDeque<u64>,
    card_us_max: u64,
    ecm_wait_us: VecDeque<u64>,
    ecm_wait_us_max: u64,
}

impl Timing {
    fn push(ring: &mut VecDeque<u64>, v: u64) {
        if ring.len() == TIMING_SAMPLES {
            ring.pop_front();
        }
        ring.push_back(v);
    }

    fn median(ring: &VecDeque<u64>) -> u64 {
        let mut v: Vec<u64> = ring.iter().copied().collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    }

    fn card(&mut self, t: Duration) {
        let us = micros(t);
        self.card_us_max = self.card_us_max.max(us);
        Self::push(&mut self.card_us, us);
    }

    fn ecm_wait(&mut self, t: Duration) {
        let us = micros(t);
        self.ecm_wait_us_max = self.ecm_wait_us_max.max(us);
        Self::push(&mut self.ecm_wait_us, us);
    }
}

fn micros(t: Duration) -> u64 {
    u64::try_from(t.as_micros()).unwrap_or(u64::MAX)
}

/// What the card is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InHand {
    /// An ECM, by its epoch.
    Ecm(u64),
    /// An EMM, by its hash.
    Emm(u64),
}

/// An ECM waiting for the card.
#[derive(Debug)]
struct QueuedEcm {
    header: EcmHeader,
    body: Vec<u8>,
    since: Instant,
}

/// EMMs waiting for the card, at most (see [`Access::on_emm`]).
pub(super) const EMM_QUEUE: usize = 64;

/// On a live input, until the card has answered its first ECM, an EMM
/// waits this long from the first one seen before it goes to the card: the
/// ECM comes within an ECM interval (100 ms at the headend), and at a zap
/// the first picture should not wait for an EMM the card happens to be
/// working on (at 9600 baud, about 110 ms).
pub(super) const EMM_HOLD_AT_START: Duration = Duration::from_millis(250);

/// The CA module, the CW slots it fills, and where the two stand.
#[derive(Debug)]
pub(super) struct Access<C> {
    port: Port<C>,
    receiver_public: [u8; 32],
    keys: KeySlots,
    last_ecm: Option<Vec<u8>>,
    last_ecm_header: Option<EcmHeader>,
    /// Whether the card has answered an ECM (or refused one).
    ecm_answered: bool,
    denial: Option<Denial>,
    /// Since when the card has been paired with another receiver.
    paired_elsewhere: Option<Moment>,
    emms: EmmMemory,
    /// The queue towards the card: the newest ECM, and EMMs in order.
    next_ecm: Option<QueuedEcm>,
    emm_queue: VecDeque<(u64, Vec<u8>)>,
    in_hand: Option<InHand>,
    /// When the ECM in the card's hands was queued.
    ecm_queued_at: Option<Instant>,
    /// Live input: drop what the card cannot keep up with, rather than
    /// wait for it.
    live: bool,
    /// When the first EMM for the card was seen (see [`EMM_HOLD_AT_START`]).
    first_emm: Option<Instant>,
    timing: Timing,
    /// The warning that the card is too slow has been given.
    warned_slow: bool,
}

impl<C: CaModule + Send + 'static> Access<C> {
    pub(super) fn new(card: C, opts: &PipelineOptions, clock: &StreamClock) -> Self {
        let paired_elsewhere = card.paired_elsewhere();
        let receiver_public = card.receiver_public();
        let port = if opts.card_thread {
            Port::thread(card)
        } else {
            Port::inline(card)
        };
        let mut a = Access {
            port,
            receiver_public,
            keys: KeySlots::new(),
            last_ecm: None,
            last_ecm_header: None,
            ecm_answered: false,
            denial: None,
            paired_elsewhere: None,
            emms: EmmMemory::new(opts.emm_memory),
            next_ecm: None,
            emm_queue: VecDeque::new(),
            in_hand: None,
            ecm_queued_at: None,
            live: opts.live,
            first_emm: None,
            timing: Timing::default(),
            warned_slow: false,
        };
        if paired_elsewhere {
            a.wait_for_pairing(clock);
        }
        a
    }
}

impl<C: CaModule> Access<C> {
    pub(super) fn card_id(&self) -> u32 {
        self.port.card_id()
    }

    pub(super) fn reconnects(&self) -> u64 {
        self.port.reconnects()
    }

    pub(super) fn into_card(self) -> C {
        self.port.into_card()
    }

    /// The card's counters into `stats`.
    pub(super) fn fill_stats(&self, stats: &mut Stats) {
        stats.card_reconnects = self.reconnects();
        stats.cw_changes = self.keys.changes();
        stats.card_us_p50 = Timing::median(&self.timing.card_us);
        stats.card_us_max = self.timing.card_us_max;
        stats.ecm_wait_us_p50 = Timing::median(&self.timing.ecm_wait_us);
        stats.ecm_wait_us_max = self.timing.ecm_wait_us_max;
    }

    /// Descrambles a packet of the service in place with the slot its bits
    /// name, if that slot holds the key of its epoch.
    #[inline]
    pub(super) fn descramble(&mut self, p: &mut [u8; PACKET_LEN]) -> Descrambled {
        self.keys.descramble(p)
    }

    /// Whether the card has answered an ECM yet (a packet without a key
    /// before that is zapping, not a loss).
    pub(super) fn ecm_answered(&self) -> bool {
        self.ecm_answered
    }

    /// The input had a gap: see [`KeySlots::input_gap`].
    pub(super) fn input_gap(&mut self) {
        self.keys.input_gap();
    }

    /// Whether packets wait for an ECM after a gap in the input.
    pub(super) fn awaiting_ecm_after_gap(&self) -> bool {
        self.keys.awaiting_ecm_after_gap()
    }

    /// The ECM PID moved: the next ECM on it is new, whatever it holds.
    pub(super) fn ecm_pid_changed(&mut self) {
        self.last_ecm = None;
    }

    /// A packet of the service could not be descrambled: `Err` once the
    /// card has refused for longer than the options allow.
    pub(super) fn give_up(
        &self,
        clock: &StreamClock,
        opts: &PipelineOptions,
    ) -> Result<(), Failure> {
        if let Some(d) = &self.denial {
            if clock.since(d.since) >= opts.entitlement_wait {
                return Err(Failure::NotEntitled(d.message.clone()));
            }
        }
        if let (Some(since), Some(wait)) = (self.paired_elsewhere, opts.pairing_wait) {
            if clock.since(since) >= wait {
                return Err(self.paired_elsewhere_error());
            }
        }
        Ok(())
    }

    fn paired_elsewhere_error(&self) -> Failure {
        Failure::Card(LinkError::PairedElsewhere {
            card_id: self.card_id(),
            receiver: self.receiver_public,
        })
    }

    /// At the end of the input: the refusal still in force, if any.
    pub(super) fn unresolved(&self) -> Option<Failure> {
        if self.paired_elsewhere.is_some() {
            return Some(self.paired_elsewhere_error());
        }
        self.denial
            .as_ref()
            .map(|d| Failure::NotEntitled(d.message.clone()))
    }

    // ---- the queue to the card ---------------------------------------------

    /// Whether an ECM is queued for the card or in its hands.
    pub(super) fn ecm_pending(&self) -> bool {
        self.next_ecm.is_some() || matches!(self.in_hand, Some(InHand::Ecm(_)))
    }

    /// Whether the card has anything in hand, or an EMM waits to start
    /// (the per-packet check).
    #[inline]
    pub(super) fn busy(&self) -> bool {
        self.in_hand.is_some() || !self.emm_queue.is_empty()
    }

    /// Whether an EMM may go to the card now: on a live input, not before
    /// the card has answered its first ECM, unless [`EMM_HOLD_AT_START`]
    /// has passed since the first EMM.
    fn emm_may_start(&self) -> bool {
        !self.live
            || self.ecm_answered
            || self
                .first_emm
                .is_none_or(|t| t.elapsed() >= EMM_HOLD_AT_START)
    }

    /// Gives the card its next job if it has none: the ECM first, then
    /// the oldest EMM.
    fn dispatch(&mut self, stats: &mut Stats) {
        if self.in_hand.is_some() {
            return;
        }
        if let Some(q) = self.next_ecm.take() {
            stats.ecms_to_card += 1;
            self.in_hand = Some(InHand::Ecm(q.header.epoch));
            self.ecm_queued_at = Some(q.since);
            self.port.send(Job::Ecm {
                header: q.header,
                body: q.body,
            });
        } else if self.emm_may_start() {
            if let Some((hash, body)) = self.emm_queue.pop_front() {
                stats.emms_to_card += 1;
                self.in_hand = Some(InHand::Emm(hash));
                self.port.send(Job::Emm { hash, body });
            }
        }
    }

    /// Takes in the answers that are ready, and keeps the card busy.
    pub(super) fn poll(&mut self, clock: &StreamClock, stats: &mut Stats) -> Result<(), Failure> {
        loop {
            self.dispatch(stats);
            if self.in_hand.is_none() {
                return Ok(());
            }
            match self.port.try_next() {
                Some(done) => self.answered(done, clock, stats)?,
                None => return Ok(()),
            }
        }
    }

    /// Waits for the card's answer to the job in its hands.
    fn wait_one(&mut self, clock: &StreamClock, stats: &mut Stats) -> Result<(), Failure> {
        self.dispatch(stats);
        if self.in_hand.is_none() {
            return Ok(());
        }
        let done = self.port.wait_next();
        self.answered(done, clock, stats)?;
        self.poll(clock, stats)
    }

    /// Whether a packet must wait for the card before it is descrambled:
    /// on a file (which has time), one of the period of an ECM still
    /// queued or at the card, or later, so that a refusal stops the output
    /// exactly at its period. A live input does not wait: the packet goes
    /// out with the key the card released one ECM earlier.
    pub(super) fn must_wait(&self, p: &[u8; PACKET_LEN]) -> bool {
        if self.live {
            return false;
        }
        let pending = match (&self.next_ecm, self.in_hand) {
            (Some(q), _) => Some(q.header.epoch),
            (None, Some(InHand::Ecm(e))) => Some(e),
            _ => None,
        };
        match (pending, self.keys.epoch_of(p)) {
            (Some(e), Some(packet)) => packet >= e,
            _ => false,
        }
    }

    /// Whether a packet without its key should wait for the card: an ECM
    /// is queued or in its hands (it may bring the key), or, on a file, an
    /// EMM is while the card refuses (it may bring the entitlement, and
    /// then the ECM is asked again).
    pub(super) fn key_may_come(&self) -> bool {
        self.ecm_pending()
            || (!self.live
                && matches!(self.in_hand, Some(InHand::Emm(_)))
                && (self.denial.is_some() || self.paired_elsewhere.is_some()))
    }

    /// Waits while [`Access::key_may_come`].
    pub(super) fn wait_for_key(
        &mut self,
        clock: &StreamClock,
        stats: &mut Stats,
    ) -> Result<(), Failure> {
        while self.key_may_come() {
            self.wait_one(clock, stats)?;
        }
        Ok(())
    }

    /// Waits until the card has done everything queued for it (the end of
    /// the input).
    pub(super) fn settle(&mut self, clock: &StreamClock, stats: &mut Stats) -> Result<(), Failure> {
        self.poll(clock, stats)?;
        while self.in_hand.is_some() {
            self.wait_one(clock, stats)?;
        }
        Ok(())
    }

    /// The card is too slow for the stream: says so once.
    fn too_slow(&mut self, stats: &Stats) {
        if std::mem::replace(&mut self.warned_slow, true) {
            return;
        }
        tracing::warn!(
            "the card is too slow for this stream: it takes {} ms per command (median) and ECMs wait up to {} ms for it, \
             so {} ECMs were dropped as stale and {} EMMs dropped; use a faster card or reader, or a longer crypto period at the headend",
            Timing::median(&self.timing.card_us) / 1000,
            self.timing.ecm_wait_us_max / 1000,
            stats.ecms_stale,
            stats.emms_dropped,
        );
    }

    /// An answer from the card.
    fn answered(
        &mut self,
        done: Done,
        clock: &StreamClock,
        stats: &mut Stats,
    ) -> Result<(), Failure> {
        let in_hand = self.in_hand.take();
        self.timing.card(done.card_time);
        if matches!(in_hand, Some(InHand::Ecm(_))) {
            if let Some(q) = self.ecm_queued_at.take() {
                self.timing
                    .ecm_wait(done.started.saturating_duration_since(q));
            }
        }
        match done.answer? {
            Answer::Ecm {
                header,
                outcome,
                entitlement,
            } => self.ecm_answer(&header, outcome, entitlement, clock, stats),
            Answer::Emm { hash, outcome } => self.emm_answer(hash, outcome, stats),
        }
        Ok(())
    }

    // ---- ECM ---------------------------------------------------------------

    /// An ECM section of the service's ECM PID.
    pub(super) fn on_ecm(
        &mut self,
        section: &[u8],
        clock: &StreamClock,
        stats: &mut Stats,
    ) -> Result<(), Failure> {
        stats.ecm_sections += 1;
        if self.last_ecm.as_deref() == Some(section) {
            // A repetition: nothing for the card, but after a gap in the
            // input it gives the packets their period again.
            if self.keys.awaiting_ecm_after_gap() {
                if let Some(h) = self.last_ecm_header {
                    self.keys.ecm_arrived(h.epoch);
                }
            }
            return Ok(());
        }
        let Ok(ps) = PrivateSection::parse(section) else {
            stats.section_errors += 1;
            return Ok(());
        };
        if !ps.table_id.is_ecm() {
            stats.section_errors += 1;
            return Ok(());
        }
        let Ok(header) = EcmHeader::read(&mut Reader::new(ps.payload)) else {
            stats.section_errors += 1;
            return Ok(());
        };
        self.last_ecm = Some(section.to_vec());
        self.last_ecm_header = Some(header);
        self.keys.ecm_arrived(header.epoch);
        self.queue_ecm(header, section[PRIVATE_HEADER_LEN..].to_vec(), clock, stats)
    }

    /// Queues an ECM for the card. Only the newest waits: an older one
    /// not yet sent is stale (live input: dropped and counted) or waited
    /// for (a file: the card sets the pace, nothing is lost).
    fn queue_ecm(
        &mut self,
        header: EcmHeader,
        body: Vec<u8>,
        clock: &StreamClock,
        stats: &mut Stats,
    ) -> Result<(), Failure> {
        if self.next_ecm.is_some() {
            if self.live {
                stats.ecms_stale += 1;
                self.too_slow(stats);
            } else {
                while self.next_ecm.is_some() {
                    self.wait_one(clock, stats)?;
                }
            }
        }
        self.next_ecm = Some(QueuedEcm {
            header,
            body,
            since: Instant::now(),
        });
        self.poll(clock, stats)
    }

    fn ecm_answer(
        &mut self,
        header: &EcmHeader,
        outcome: EcmOutcome,
        entitlement: Option<(EntitlementRecord, u64)>,
        clock: &StreamClock,
        stats: &mut Stats,
    ) {
        self.ecm_answered = true;
        match outcome {
            EcmOutcome::ControlWords(cws) => {
                tracing::debug!(
                    epoch = header.epoch,
                    generation = header.generation,
                    "ECM answered"
                );
                self.keys.install(header.epoch, &cws);
                if self.paired_elsewhere.take().is_some() {
                    tracing::warn!(
                        "card {} now gives control words to this receiver",
                        self.card_id()
                    );
                }
                if self.denial.take().is_some() {
                    tracing::info!(
                        product = header.product,
                        "the card releases control words again"
                    );
                }
            }
            EcmOutcome::Refused(StatusWord::NOT_PAIRED_RECEIVER) => {
                // Not this receiver's card for now: nothing from this period
                // on, and the card keeps getting its EMMs.
                stats.ecms_refused += 1;
                self.keys.revoke_from(header.epoch);
                if self.paired_elsewhere.is_none() {
                    self.wait_for_pairing(clock);
                }
            }
            EcmOutcome::Refused(sw) => {
                stats.ecms_refused += 1;
                if matches!(
                    sw,
                    StatusWord::ECM_NOT_ENTITLED
                        | StatusWord::ECM_OUTSIDE_DATES
                        | StatusWord::ECM_UNKNOWN_GENERATION
                ) {
                    // Nothing from this period on, even though the previous
                    // ECM carried this period's key.
                    self.keys.revoke_from(header.epoch);
                }
                let message = self.explain(sw, header, entitlement);
                match &mut self.denial {
                    Some(d) => {
                        tracing::debug!(%message, epoch = header.epoch, "ECM refused again");
                        d.message = message;
                    }
                    None => {
                        tracing::warn!(%message, epoch = header.epoch, "ECM refused");
                        self.denial = Some(Denial {
                            since: clock.now(),
                            message,
                        })
                    }
                }
            }
        }
    }

    /// The card is paired with another receiver: says once what the
    /// operator can do, and waits (EMMs still go to the card, and each ECM
    /// tries the session again).
    fn wait_for_pairing(&mut self, clock: &StreamClock) {
        let card = self.card_id();
        tracing::warn!(
            "card {card} is paired with another receiver; waiting for the operator to run \
             \"headend pair {card} {}\" (this receiver's key) or \"headend unpair {card}\"",
            hex::encode(self.receiver_public)
        );
        self.paired_elsewhere = Some(clock.now());
    }

    /// A refusal in the user's terms.
    fn explain(
        &self,
        sw: StatusWord,
        h: &EcmHeader,
        entitlement: Option<(EntitlementRecord, u64)>,
    ) -> String {
        let card = self.card_id();
        let product = h.product;
        match sw {
            StatusWord::ECM_NOT_ENTITLED => {
                format!("card {card} has no entitlement for product {product}")
            }
            StatusWord::ECM_OUTSIDE_DATES => match entitlement {
                // The card's clock is the newest time it accepted; once it
                // has been inside the dates, the refusal means they ended.
                Some((e, clock)) if clock > e.end || clock >= e.start => format!(
                    "card {card} has no entitlement for product {product} (ended {})",
                    date(e.end)
                ),
                Some((e, _)) => format!(
                    "card {card} has no entitlement for product {product} yet (starts {})",
                    date(e.start)
                ),
                None => format!(
                    "card {card} has no entitlement for product {product} at this time"
                ),
            },
            StatusWord::ECM_UNKNOWN_GENERATION => format!(
                "card {card} lacks key generation {} of product {product}: the EMM that brings it has not arrived",
                h.generation
            ),
            StatusWord::ECM_AUTH_FAILED => format!(
                "card {card} cannot authenticate the ECMs of service {} (product {product}): they are damaged or from another operator",
                h.service
            ),
            other => format!(
                "card {card} refused the ECMs of service {} (product {product}): {}",
                h.service,
                status_text(other)
            ),
        }
    }

    // ---- EMM ---------------------------------------------------------------

    /// An EMM section of the EMM PID the CAT named. One for this card
    /// that it has not yet accepted (or refused as replayed) is queued for
    /// it, behind any ECM. The queue holds [`EMM_QUEUE`] EMMs: beyond
    /// that a live input drops the oldest (counted in
    /// [`Stats::emms_dropped`]; the carousel brings it again), a file
    /// waits for the card.
    pub(super) fn on_emm(
        &mut self,
        section: &[u8],
        clock: &StreamClock,
        stats: &mut Stats,
    ) -> Result<(), Failure> {
        stats.emm_sections += 1;
        // The filter: nothing addressed to another card reaches ours.
        let Some(address) = emm_section_address(section) else {
            stats.section_errors += 1;
            return Ok(());
        };
        if address != self.card_id() && address != GLOBAL_ADDRESS {
            return Ok(());
        }
        if PrivateSection::parse(section).is_err() {
            stats.section_errors += 1;
            return Ok(());
        }
        stats.emms_for_card += 1;
        self.first_emm.get_or_insert_with(Instant::now);
        let hash = self.emms.hash(section);
        if self.emms.contains(hash)
            || self.in_hand == Some(InHand::Emm(hash))
            || self.emm_queue.iter().any(|(h, _)| *h == hash)
        {
            stats.emm_duplicates += 1;
            return Ok(());
        }
        if self.emm_queue.len() >= EMM_QUEUE {
            if self.live {
                self.emm_queue.pop_front();
                stats.emms_dropped += 1;
                self.too_slow(stats);
            } else {
                while self.emm_queue.len() >= EMM_QUEUE {
                    self.wait_one(clock, stats)?;
                }
            }
        }
        self.emm_queue
            .push_back((hash, section[PRIVATE_HEADER_LEN..].to_vec()));
        self.poll(clock, stats)
    }

    fn emm_answer(&mut self, hash: u64, outcome: EmmOutcome, stats: &mut Stats) {
        match outcome {
            EmmOutcome::Accepted => {
                stats.emms_accepted += 1;
                self.emms.insert(hash);
                tracing::debug!("EMM accepted");
                // It may have brought the entitlement or the pairing: ask
                // again.
                if (self.denial.is_some() || self.paired_elsewhere.is_some())
                    && self.next_ecm.is_none()
                {
                    if let (Some(header), Some(s)) = (self.last_ecm_header, &self.last_ecm) {
                        self.next_ecm = Some(QueuedEcm {
                            header,
                            body: s[PRIVATE_HEADER_LEN..].to_vec(),
                            since: Instant::now(),
                        });
                    }
                }
            }
            EmmOutcome::Replayed => {
                stats.emms_replayed += 1;
                self.emms.insert(hash);
            }
            EmmOutcome::Rejected(sw) => {
                // Not remembered: it may be accepted once another EMM has
                // brought what it needs.
                stats.emms_rejected += 1;
                tracing::debug!(sw = %sw, "EMM rejected");
            }
        }
    }
}

fn date(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .map_or_else(|| format!("@{unix}"), |t| t.date().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emm_memory_forgets_the_oldest_beyond_its_capacity() {
        let mut m = EmmMemory::new(2);
        let [a, b, c] = [b"a", b"b", b"c"].map(|s| m.hash(s));
        assert_ne!(a, b);
        assert!(m.insert(a));
        assert!(!m.insert(a));
        assert!(m.insert(b));
        assert!(m.insert(c));
        // "a" was the oldest of three: forgotten, so new again.
        assert!(!m.contains(a));
        assert!(m.insert(a));
        assert!(!m.insert(c));
        assert_eq!(m.order.len(), 2);
        assert_eq!(m.seen.len(), 2);
    }

    #[test]
    fn dates_in_messages() {
        assert_eq!(date(1_795_996_800), "2026-11-30");
        assert_eq!(date(u64::MAX), format!("@{}", u64::MAX));
    }
}
