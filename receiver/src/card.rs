//! The receiver's link to its card: [`CardLink`] wraps a
//! [`CardClient`] over any [`CardTransport`] and keeps a protected session
//! open through card removal, resets and PC/SC restarts.
//!
//! On connect it selects the applet, reads GET INFO and establishes a
//! session (X25519 with the receiver's long-term key, see
//! `docs/PROTOCOL.md` §2.2); from then on the card returns control words
//! sealed under the session key, and [`CardClient::process_ecm`] opens them
//! here. When the transport fails, the link reconnects (waiting for the
//! card), selects and establishes a new session, and retries the command.
//!
//! A card paired with another receiver refuses the session. The link
//! stays up without one ([`CardLink::paired_elsewhere`]): the card still
//! takes EMMs, which is how the operator's `headend pair` or `headend
//! unpair` reaches it, and each ECM tries the session again.
//!
//! What it must never do: log, print or return a control word except as
//! [`ControlWords`](proto::card::ControlWords) (whose `Debug` is
//! redacted), or get control words from a card paired with another
//! receiver.
//!
//! Transports come from a [`CardConnector`]: PC/SC by reader name
//! ([`PcscCard`]). The receiver links no software card: tests bring
//! their own connector (an in-process applet through `cardlink`'s
//! `in-process` feature), or put an emulated card behind pcscd.

use crate::error::Failure;
pub use crate::pipeline::ca::{CaModule, EcmOutcome, EmmOutcome};
use cardlink::pcsc::{PcscTransport, ReaderChoice};
use cardlink::{describe, CardClient, CardTransport, ClientError, TransportError};
use proto::apdu::StatusWord;
use proto::card::{CardInfo, EntitlementRecord, LifeCycle};
use proto::crypto::X25519Secret;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Opens transports to a card.
pub trait CardConnector: Send {
    /// Connects to a card, waiting at most `wait` for one to be present.
    fn connect(&mut self, wait: Duration) -> Result<Box<dyn CardTransport + Send>, TransportError>;

    /// Where the card is, for messages: "reader 'X'".
    fn describe(&self) -> String;
}

/// A card in a PC/SC reader: by name (exact, else a substring), or the
/// first reader that holds a card.
#[derive(Debug, Clone, Default)]
pub struct PcscCard {
    pub reader: Option<String>,
}

impl CardConnector for PcscCard {
    fn connect(&mut self, wait: Duration) -> Result<Box<dyn CardTransport + Send>, TransportError> {
        let choice = ReaderChoice::from_option(self.reader.as_deref());
        Ok(Box::new(PcscTransport::wait_for_card(choice, wait)?))
    }

    fn describe(&self) -> String {
        match &self.reader {
            Some(r) => format!("reader '{r}'"),
            None => "any PC/SC reader".into(),
        }
    }
}

/// Timeouts of the link.
#[derive(Debug, Clone, Copy)]
pub struct LinkOptions {
    /// How long to wait for a card at start.
    pub connect_timeout: Duration,
    /// How long to wait for the card to come back after the link broke;
    /// `None` waits for ever, as a set-top box does.
    pub reconnect_timeout: Option<Duration>,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            connect_timeout: Duration::from_secs(10),
            reconnect_timeout: None,
        }
    }
}

/// Why the link cannot go on. Each is a reason for the receiver to stop.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("{}", no_card_text(.what, .why, *.waited))]
    NoCard {
        what: String,
        why: TransportError,
        waited: Option<Duration>,
    },
    #[error(
        "card {card_id} is paired with another receiver: the operator must run \
         \"headend pair {card_id} {}\" (this receiver's key) or \"headend unpair {card_id}\"",
        hex::encode(.receiver)
    )]
    PairedElsewhere {
        card_id: u32,
        /// This receiver's public key.
        receiver: [u8; 32],
    },
    #[error("the card in {what} is not ready for use (life cycle {state:?}; it must be personalized and locked)")]
    NotReady { what: String, state: LifeCycle },
    #[error("card {card_id}: {source}")]
    Card {
        card_id: u32,
        #[source]
        source: ClientError,
    },
}

fn no_card_text(what: &str, why: &TransportError, waited: Option<Duration>) -> String {
    let waited = waited.map_or(String::new(), |w| {
        format!(" within {:.0} s", w.as_secs_f64())
    });
    match why {
        TransportError::NoReader => {
            format!(
                "no smartcard reader found{waited} (is the reader plugged in and pcscd running?)"
            )
        }
        TransportError::ReaderNotFound(r) => format!("smartcard reader '{r}' not found{waited}"),
        TransportError::NoService(e) => {
            format!("PC/SC is not available{waited} (is pcscd running?): {e}")
        }
        TransportError::NoCard | TransportError::Timeout | TransportError::CardRemoved => {
            format!("no card in {what}{waited}")
        }
        TransportError::CardReset => format!("the card in {what} keeps being reset"),
        TransportError::Other(e) => format!("cannot use the card in {what}: {e}"),
        other => format!("cannot use the card in {what}: {other}"),
    }
}

/// Counters of the link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Times the link was re-established after a failure.
    pub reconnects: u64,
    /// Sessions established (the first one included).
    pub sessions: u64,
}

/// A card with an open protected session.
pub struct CardLink {
    connector: Box<dyn CardConnector>,
    client: Option<CardClient<Box<dyn CardTransport + Send>>>,
    identity: X25519Secret,
    info: CardInfo,
    options: LinkOptions,
    stats: LinkStats,
    /// The card refused the session: it is paired with another receiver.
    paired_elsewhere: bool,
}

impl std::fmt::Debug for CardLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardLink")
            .field("card", &self.connector.describe())
            .field("card_id", &self.info.card_id)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Polling step while waiting for a card.
const POLL: Duration = Duration::from_millis(100);
/// Attempts at a command whose session was lost without a transport error.
const SESSION_RETRIES: usize = 3;

impl CardLink {
    /// Connects to the card (waiting up to `connect_timeout`), selects the
    /// applet and establishes a session.
    pub fn open(
        mut connector: Box<dyn CardConnector>,
        identity: X25519Secret,
        options: LinkOptions,
    ) -> Result<CardLink, LinkError> {
        let deadline = Instant::now() + options.connect_timeout;
        let mut client = wait_for_card(connector.as_mut(), deadline, options.connect_timeout)?;
        let (info, session) = open_session(&mut client, &identity, &connector.describe())?;
        if session {
            tracing::info!(card_id = info.card_id, card = %connector.describe(), "card session established");
        } else {
            tracing::info!(card_id = info.card_id, card = %connector.describe(), "card connected; it is paired with another receiver");
        }
        Ok(CardLink {
            connector,
            client: Some(client),
            identity,
            info,
            options,
            stats: LinkStats {
                reconnects: 0,
                sessions: u64::from(session),
            },
            paired_elsewhere: !session,
        })
    }

    /// Whether the card refused this receiver's session, being paired with
    /// another receiver. It still takes EMMs; [`CardLink::process_ecm`]
    /// tries the session again.
    pub fn paired_elsewhere(&self) -> bool {
        self.paired_elsewhere
    }

    /// This receiver's public key (what `headend pair CARD KEY` needs).
    pub fn receiver_public(&self) -> [u8; 32] {
        self.identity.public()
    }

    /// The error of a card that stayed paired with another receiver.
    pub fn paired_elsewhere_error(&self) -> LinkError {
        LinkError::PairedElsewhere {
            card_id: self.info.card_id,
            receiver: self.receiver_public(),
        }
    }

    pub fn card_id(&self) -> u32 {
        self.info.card_id
    }

    /// The card's GET INFO from the last session set-up.
    pub fn info(&self) -> &CardInfo {
        &self.info
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// The card, for tests that look at the transport.
    pub fn client_mut(&mut self) -> Option<&mut CardClient<Box<dyn CardTransport + Send>>> {
        self.client.as_mut()
    }

    /// Hands the card an EMM (the EMM bytes, without the section header).
    pub fn process_emm(&mut self, emm: &[u8]) -> Result<EmmOutcome, LinkError> {
        let r = self.with_session(|c| c.process_emm(emm))?;
        Ok(match r {
            Ok(()) => EmmOutcome::Accepted,
            Err(StatusWord::EMM_REPLAYED) => EmmOutcome::Replayed,
            Err(sw) => EmmOutcome::Rejected(sw),
        })
    }

    /// Hands the card an ECM and opens the control words it returns. A
    /// card paired with another receiver is first asked for a session
    /// again (an EMM may have paired it with this one, or unpaired it);
    /// if it still refuses, the answer is
    /// `Refused(StatusWord::NOT_PAIRED_RECEIVER)`.
    pub fn process_ecm(&mut self, ecm: &[u8]) -> Result<EcmOutcome, LinkError> {
        if self.paired_elsewhere {
            self.reopen()?;
            if self.paired_elsewhere {
                return Ok(EcmOutcome::Refused(StatusWord::NOT_PAIRED_RECEIVER));
            }
        }
        let r = self.with_session(|c| c.process_ecm(ecm))?;
        Ok(match r {
            Ok(cws) => EcmOutcome::ControlWords(cws),
            Err(sw) => EcmOutcome::Refused(sw),
        })
    }

    /// The card's entitlement record for a product, if it holds one, and
    /// the card's clock. Best effort: used to explain a refusal.
    pub fn entitlement(&mut self, product: u32) -> Option<(EntitlementRecord, u64)> {
        let list = self.with_session(|c| c.list_entitlements()).ok()?.ok()?;
        let clock = self
            .with_session(|c| c.info())
            .ok()
            .and_then(Result::ok)
            .map_or(self.info.clock, |i| i.clock);
        list.into_iter()
            .find(|e| e.product == product)
            .map(|e| (e, clock))
    }

    /// Runs `op` on the card. Transport failures reconnect and retry; a
    /// lost session (the card was reset behind our back) is re-established
    /// and the command retried. The card's refusals come back as the inner
    /// `Err(StatusWord)`.
    fn with_session<T>(
        &mut self,
        mut op: impl FnMut(&mut CardClient<Box<dyn CardTransport + Send>>) -> Result<T, ClientError>,
    ) -> Result<Result<T, StatusWord>, LinkError> {
        let mut session_losses = 0;
        loop {
            let client = match self.client.as_mut() {
                Some(c) => c,
                None => {
                    self.recover(None)?;
                    continue;
                }
            };
            match op(client) {
                Ok(v) => return Ok(Ok(v)),
                Err(ClientError::Transport(e)) => self.recover(Some(e))?,
                Err(ClientError::Status { sw, .. })
                    if sw == StatusWord::NO_SESSION || sw == StatusWord::FILE_NOT_FOUND =>
                {
                    // Reset without a transport error (a warm reset, another
                    // program's SELECT): set the session up again.
                    session_losses += 1;
                    if session_losses > SESSION_RETRIES {
                        return Err(self.card_error(ClientError::Status {
                            ins: proto::apdu::Ins::PROCESS_ECM,
                            sw,
                        }));
                    }
                    tracing::info!(sw = %sw, "card session lost; establishing a new one");
                    self.reopen()?;
                    if self.paired_elsewhere {
                        return Ok(Err(StatusWord::NOT_PAIRED_RECEIVER));
                    }
                }
                Err(ClientError::Status { sw, .. }) => return Ok(Err(sw)),
                Err(e @ ClientError::BadResponse { .. }) => {
                    // A reply that does not open under the session key:
                    // damaged on the way, or the session is not what we
                    // think. A new session settles it.
                    session_losses += 1;
                    if session_losses > SESSION_RETRIES {
                        return Err(self.card_error(e));
                    }
                    tracing::warn!(error = %e, "bad reply from the card; establishing a new session");
                    self.reopen()?;
                    if self.paired_elsewhere {
                        return Ok(Err(StatusWord::NOT_PAIRED_RECEIVER));
                    }
                }
                Err(e) => return Err(self.card_error(e)),
            }
        }
    }

    fn card_error(&self, source: ClientError) -> LinkError {
        LinkError::Card {
            card_id: self.info.card_id,
            source,
        }
    }

    /// Selects and establishes a session on the current transport, or
    /// reconnects if that fails at the transport level.
    fn reopen(&mut self) -> Result<(), LinkError> {
        let what = self.connector.describe();
        let Some(client) = self.client.as_mut() else {
            return self.recover(None);
        };
        match open_session(client, &self.identity, &what) {
            Ok((info, session)) => {
                self.adopt(info, session);
                Ok(())
            }
            Err(LinkError::Card {
                source: ClientError::Transport(e),
                ..
            }) => self.recover(Some(e)),
            Err(e) => Err(e),
        }
    }

    fn adopt(&mut self, info: CardInfo, session: bool) {
        if info.card_id != self.info.card_id {
            tracing::warn!(
                old = self.info.card_id,
                new = info.card_id,
                "a different card was inserted"
            );
        }
        self.info = info;
        self.paired_elsewhere = !session;
        if session {
            self.stats.sessions += 1;
        }
    }

    /// Waits for the card to come back and sets a session up again.
    fn recover(&mut self, cause: Option<TransportError>) -> Result<(), LinkError> {
        let what = self.connector.describe();
        match &cause {
            Some(e) => {
                tracing::warn!(error = %e, card = %what, "card link lost; waiting for the card")
            }
            None => tracing::warn!(card = %what, "no card link; waiting for the card"),
        }
        self.stats.reconnects += 1;
        let deadline = self.options.reconnect_timeout.map(|t| Instant::now() + t);
        loop {
            // First the cheap way: the same reader, reconnected.
            if let Some(client) = self.client.as_mut() {
                if client.transport().reconnect().is_ok() {
                    let opened = open_session(client, &self.identity, &what);
                    if let Some((info, session)) = unless_dropped(opened)? {
                        self.adopt(info, session);
                        tracing::info!(card_id = self.info.card_id, "card link restored");
                        return Ok(());
                    }
                }
            }
            // Then a fresh connection, which waits for a card.
            self.client = None;
            let step = deadline.map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1))
            });
            if let Ok(transport) = self.connector.connect(step) {
                let mut client = CardClient::new(transport);
                let opened = open_session(&mut client, &self.identity, &what);
                if let Some((info, session)) = unless_dropped(opened)? {
                    self.client = Some(client);
                    self.adopt(info, session);
                    tracing::info!(card_id = self.info.card_id, "card link restored");
                    return Ok(());
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(LinkError::NoCard {
                    what,
                    why: cause.unwrap_or(TransportError::Timeout),
                    waited: self.options.reconnect_timeout,
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

/// Connects through `connector`, retrying until `deadline`.
fn wait_for_card(
    connector: &mut dyn CardConnector,
    deadline: Instant,
    timeout: Duration,
) -> Result<CardClient<Box<dyn CardTransport + Send>>, LinkError> {
    loop {
        match connector.connect(deadline.saturating_duration_since(Instant::now())) {
            Ok(t) => return Ok(CardClient::new(t)),
            // Nothing to wait for: say so at once.
            Err(e @ (TransportError::Other(_) | TransportError::ReaderNotFound(_))) => {
                return Err(LinkError::NoCard {
                    what: connector.describe(),
                    why: e,
                    waited: None,
                })
            }
            Err(e) => {
                if Instant::now() + POLL >= deadline {
                    return Err(LinkError::NoCard {
                        what: connector.describe(),
                        why: e,
                        waited: Some(timeout),
                    });
                }
                std::thread::sleep(POLL);
            }
        }
    }
}

/// SELECT, GET INFO, ESTABLISH SESSION. The card's info, and whether it
/// gave a session (`false`: it is paired with another receiver).
fn open_session(
    client: &mut CardClient<Box<dyn CardTransport + Send>>,
    identity: &X25519Secret,
    what: &str,
) -> Result<(CardInfo, bool), LinkError> {
    let card = |card_id: u32| move |source: ClientError| LinkError::Card { card_id, source };
    client.select().map_err(card(0))?;
    let info = client.info().map_err(card(0))?;
    if info.state != LifeCycle::LOCKED {
        return Err(LinkError::NotReady {
            what: what.to_owned(),
            state: info.state,
        });
    }
    match client.establish_session(identity, &info) {
        Ok(()) => Ok((info, true)),
        Err(e) if e.status() == Some(StatusWord::NOT_PAIRED_RECEIVER) => Ok((info, false)),
        Err(e) => Err(card(info.card_id)(e)),
    }
}

/// A session `open_session` opened, `None` where the card dropped away
/// again on the way (a transport failure: the reconnect tries again), or
/// the error that ends the reconnect.
fn unless_dropped(
    opened: Result<(CardInfo, bool), LinkError>,
) -> Result<Option<(CardInfo, bool)>, LinkError> {
    match opened {
        Ok(v) => Ok(Some(v)),
        Err(LinkError::Card {
            source: ClientError::Transport(_),
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The card behind its link is the pipeline's CA module.
impl CaModule for CardLink {
    fn card_id(&self) -> u32 {
        CardLink::card_id(self)
    }
    fn process_ecm(&mut self, ecm: &[u8]) -> Result<EcmOutcome, Failure> {
        Ok(CardLink::process_ecm(self, ecm)?)
    }
    fn process_emm(&mut self, emm: &[u8]) -> Result<EmmOutcome, Failure> {
        Ok(CardLink::process_emm(self, emm)?)
    }
    fn paired_elsewhere(&self) -> bool {
        CardLink::paired_elsewhere(self)
    }
    fn paired_elsewhere_error(&self) -> Failure {
        CardLink::paired_elsewhere_error(self).into()
    }
    fn receiver_public(&self) -> [u8; 32] {
        CardLink::receiver_public(self)
    }
    fn entitlement(&mut self, product: u32) -> Option<(EntitlementRecord, u64)> {
        CardLink::entitlement(self, product)
    }
    fn reconnects(&self) -> u64 {
        self.stats().reconnects
    }
}

/// A status word with its description, for messages.
pub fn status_text(sw: StatusWord) -> String {
    format!("{} ({sw})", describe(sw))
}
