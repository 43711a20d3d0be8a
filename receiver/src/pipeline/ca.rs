//! What the pipeline asks of a CA module: control words for an ECM, and
//! an EMM handed over. [`CaModule`] is the whole interface between the
//! stream path and the card.
//!
//! In production the module is the card itself, behind its protected
//! link ([`crate::card::CardLink`]); the pipeline's unit tests use a
//! scripted module that needs no card. Everything the pipeline decides
//! (which ECMs are new, which EMMs are for this card, when to ask again,
//! when to give up) is on the pipeline's side of the trait, so both
//! implementations get exactly the same treatment.
//!
//! The CW slots are not part of the module: the pipeline keeps them
//! ([`crate::keys`]), so that which key a packet may use is decided in
//! one place whatever the module is.
//!
//! What an implementation must never do: hand back control words for an
//! ECM it refused, or keep an EMM from the card it was given to.

use crate::error::Failure;
use proto::apdu::StatusWord;
use proto::card::{ControlWords, EntitlementRecord};

/// What the CA module said to an EMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmmOutcome {
    Accepted,
    /// Already seen (or older than one seen): normal on a carousel.
    Replayed,
    /// Refused for another reason (forged, damaged, not understood).
    Rejected(StatusWord),
}

/// What the CA module said to an ECM.
#[derive(Debug)]
pub enum EcmOutcome {
    ControlWords(ControlWords),
    /// Refused: not entitled, outside the dates, unknown key generation,
    /// failed authentication, or [`StatusWord::NOT_PAIRED_RECEIVER`] for
    /// a card paired with another receiver.
    Refused(StatusWord),
}

/// A conditional-access module: the card, as the pipeline sees it.
///
/// Calls are blocking, one at a time, in the order the pipeline chooses
/// (ECMs first; see the pipeline's module docs), from the pipeline's card
/// thread: an implementation must be [`Send`]. An `Err` ends the run: it is for a module that cannot go on (no
/// card any more), not for a refusal, which is an `Ok` outcome.
pub trait CaModule {
    /// The card's address: the EMM filter passes EMMs addressed to it
    /// (and global ones), and messages name it.
    fn card_id(&self) -> u32;

    /// Hands over an ECM (the ECM bytes, without the section header).
    fn process_ecm(&mut self, ecm: &[u8]) -> Result<EcmOutcome, Failure>;

    /// Hands over an EMM (the EMM bytes, without the section header).
    fn process_emm(&mut self, emm: &[u8]) -> Result<EmmOutcome, Failure>;

    /// Whether the card is paired with another receiver at the start (it
    /// takes EMMs but will refuse ECMs until the operator pairs it with
    /// this receiver or unpairs it).
    fn paired_elsewhere(&self) -> bool;

    /// The failure that ends a run whose card stayed paired with another
    /// receiver: it names the operator's fix.
    fn paired_elsewhere_error(&self) -> Failure;

    /// This receiver's public key (for the operator's `headend pair`).
    fn receiver_public(&self) -> [u8; 32];

    /// The card's entitlement record for a product and the card's clock,
    /// if it can tell. Best effort: only used to explain a refusal.
    fn entitlement(&mut self, product: u32) -> Option<(EntitlementRecord, u64)>;

    /// Times the link to the card was re-established (for the stats).
    fn reconnects(&self) -> u64 {
        0
    }
}
