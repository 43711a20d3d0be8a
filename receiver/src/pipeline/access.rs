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
use super::PipelineOptions;
use crate::card::status_text;
use crate::error::Failure;
use crate::keys::{Descrambled, KeySlots};
use crate::stats::Stats;
use proto::apdu::StatusWord;
use proto::codec::{Codec, Reader};
use proto::ecm::EcmHeader;
use proto::emm::GLOBAL_ADDRESS;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use ts::psi::{emm_section_address, PrivateSection, PRIVATE_HEADER_LEN};
use ts::PACKET_LEN;

/// The card refuses the service's ECMs.
#[derive(Debug)]
struct Denial {
    since: Moment,
    message: String,
}

/// Remembers the EMM sections handed to the card, so that a carousel's
/// repetitions reach it once.
#[derive(Debug)]
struct EmmMemory {
    seen: HashSet<Arc<[u8]>>,
    order: VecDeque<Arc<[u8]>>,
    cap: usize,
}

impl EmmMemory {
    fn new(cap: usize) -> Self {
        EmmMemory {
            seen: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Whether the section is new (and now remembered).
    fn insert(&mut self, section: &[u8]) -> bool {
        if self.seen.contains(section) {
            return false;
        }
        let s: Arc<[u8]> = section.into();
        self.seen.insert(s.clone());
        self.order.push_back(s);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// The CA module, the CW slots it fills, and where the two stand.
#[derive(Debug)]
pub(super) struct Access<C> {
    card: C,
    keys: KeySlots,
    last_ecm: Option<Vec<u8>>,
    last_ecm_header: Option<EcmHeader>,
    /// Whether an ECM has been put to the card (answered or refused).
    ecm_answered: bool,
    denial: Option<Denial>,
    /// Since when the card has been paired with another receiver.
    paired_elsewhere: Option<Moment>,
    emms: EmmMemory,
}

impl<C: CaModule> Access<C> {
    pub(super) fn new(card: C, emm_memory: usize, clock: &StreamClock) -> Self {
        let mut a = Access {
            card,
            keys: KeySlots::new(),
            last_ecm: None,
            last_ecm_header: None,
            ecm_answered: false,
            denial: None,
            paired_elsewhere: None,
            emms: EmmMemory::new(emm_memory),
        };
        if a.card.paired_elsewhere() {
            a.wait_for_pairing(clock);
        }
        a
    }

    pub(super) fn card(&self) -> &C {
        &self.card
    }

    pub(super) fn card_mut(&mut self) -> &mut C {
        &mut self.card
    }

    pub(super) fn into_card(self) -> C {
        self.card
    }

    pub(super) fn keys(&self) -> &KeySlots {
        &self.keys
    }

    /// Descrambles a packet of the service in place with the slot its bits
    /// name, if that slot holds the key of its epoch.
    #[inline]
    pub(super) fn descramble(&mut self, p: &mut [u8; PACKET_LEN]) -> Descrambled {
        self.keys.descramble(p)
    }

    /// Whether an ECM has been put to the card yet (a packet without a key
    /// before that is zapping, not a loss).
    pub(super) fn ecm_answered(&self) -> bool {
        self.ecm_answered
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
                return Err(self.card.paired_elsewhere_error());
            }
        }
        Ok(())
    }

    /// At the end of the input: the refusal still in force, if any.
    pub(super) fn unresolved(&self) -> Option<Failure> {
        if self.paired_elsewhere.is_some() {
            return Some(self.card.paired_elsewhere_error());
        }
        self.denial
            .as_ref()
            .map(|d| Failure::NotEntitled(d.message.clone()))
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
            return Ok(()); // a repetition
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
        self.send_ecm(&header, &section[PRIVATE_HEADER_LEN..], clock, stats)
    }

    fn send_ecm(
        &mut self,
        header: &EcmHeader,
        ecm: &[u8],
        clock: &StreamClock,
        stats: &mut Stats,
    ) -> Result<(), Failure> {
        stats.ecms_to_card += 1;
        self.ecm_answered = true;
        match self.card.process_ecm(ecm)? {
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
                        self.card.card_id()
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
                let message = self.explain(sw, header);
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
        Ok(())
    }

    /// The card is paired with another receiver: says once what the
    /// operator can do, and waits (EMMs still go to the card, and each ECM
    /// tries the session again).
    fn wait_for_pairing(&mut self, clock: &StreamClock) {
        let card = self.card.card_id();
        tracing::warn!(
            "card {card} is paired with another receiver; waiting for the operator to run \
             \"headend pair {card} {}\" (this receiver's key) or \"headend unpair {card}\"",
            hex::encode(self.card.receiver_public())
        );
        self.paired_elsewhere = Some(clock.now());
    }

    /// A refusal in the user's terms.
    fn explain(&mut self, sw: StatusWord, h: &EcmHeader) -> String {
        let card = self.card.card_id();
        let product = h.product;
        match sw {
            StatusWord::ECM_NOT_ENTITLED => {
                format!("card {card} has no entitlement for product {product}")
            }
            StatusWord::ECM_OUTSIDE_DATES => match self.card.entitlement(product) {
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

    /// An EMM section of the EMM PID the CAT named.
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
        if address != self.card.card_id() && address != GLOBAL_ADDRESS {
            return Ok(());
        }
        if PrivateSection::parse(section).is_err() {
            stats.section_errors += 1;
            return Ok(());
        }
        stats.emms_for_card += 1;
        if !self.emms.insert(section) {
            stats.emm_duplicates += 1;
            return Ok(());
        }
        stats.emms_to_card += 1;
        match self.card.process_emm(&section[PRIVATE_HEADER_LEN..])? {
            EmmOutcome::Accepted => {
                stats.emms_accepted += 1;
                tracing::debug!(address, "EMM accepted");
                // It may have brought the entitlement or the pairing: ask
                // again.
                if self.denial.is_some() || self.paired_elsewhere.is_some() {
                    if let (Some(h), Some(s)) = (self.last_ecm_header, self.last_ecm.clone()) {
                        self.send_ecm(&h, &s[PRIVATE_HEADER_LEN..], clock, stats)?;
                    }
                }
            }
            EmmOutcome::Replayed => stats.emms_replayed += 1,
            EmmOutcome::Rejected(sw) => {
                stats.emms_rejected += 1;
                tracing::debug!(address, sw = %sw, "EMM rejected");
            }
        }
        Ok(())
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
        assert!(m.insert(b"a"));
        assert!(!m.insert(b"a"));
        assert!(m.insert(b"b"));
        assert!(m.insert(b"c"));
        // "a" was the oldest of three: forgotten, so new again.
        assert!(m.insert(b"a"));
        assert!(!m.insert(b"c"));
        assert_eq!(m.order.len(), 2);
        assert_eq!(m.seen.len(), 2);
    }

    #[test]
    fn dates_in_messages() {
        assert_eq!(date(1_795_996_800), "2026-11-30");
        assert_eq!(date(u64::MAX), format!("@{}", u64::MAX));
    }
}
