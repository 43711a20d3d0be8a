//! The PC/SC transport: a card in a reader of the system's pcscd, through
//! the `pcsc` crate, exactly as with a hardware reader. The virtual card
//! that `smartcard emulate` plugs into vpcd is just another card here.
//!
//! It picks a reader by name (exact, else substring) or else the first
//! reader with a card; it waits for a card with `SCardGetStatusChange`,
//! watching for new readers through the PnP pseudo-reader; it maps a reset
//! card, a removed card and a stopped pcscd to [`TransportError`]s, and
//! [`CardTransport::reconnect`] recovers from each one that can be
//! recovered from: it re-establishes the PC/SC context when pcscd has
//! restarted and finds the card again.
//!
//! It never interprets APDUs: status words, GET RESPONSE and chaining are
//! the client's business.

use crate::transport::{CardTransport, TransportError};
use ::pcsc::{
    Card, Context, Disposition, Error as PcscError, Protocols, ReaderState, Scope, ShareMode,
    State, MAX_BUFFER_SIZE_EXTENDED, PNP_NOTIFICATION,
};
use std::ffi::{CStr, CString};
use std::time::{Duration, Instant};

/// Which reader to use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ReaderChoice {
    /// The first reader that holds a card.
    #[default]
    FirstWithCard,
    /// The reader with this exact name or, if none, every reader whose
    /// name contains it.
    Named(String),
}

impl ReaderChoice {
    pub fn from_option(name: Option<&str>) -> Self {
        match name {
            Some(n) => ReaderChoice::Named(n.to_string()),
            None => ReaderChoice::FirstWithCard,
        }
    }

    /// The readers, among `all`, that this choice allows, in order.
    pub fn candidates<'a>(&self, all: &'a [CString]) -> Vec<&'a CStr> {
        match self {
            ReaderChoice::FirstWithCard => all.iter().map(CString::as_c_str).collect(),
            ReaderChoice::Named(want) => {
                let exact: Vec<&CStr> = all
                    .iter()
                    .filter(|r| r.to_bytes() == want.as_bytes())
                    .map(CString::as_c_str)
                    .collect();
                if !exact.is_empty() {
                    return exact;
                }
                all.iter()
                    .filter(|r| r.to_string_lossy().contains(want.as_str()))
                    .map(CString::as_c_str)
                    .collect()
            }
        }
    }

    fn not_found(&self) -> TransportError {
        match self {
            ReaderChoice::FirstWithCard => TransportError::NoReader,
            ReaderChoice::Named(n) => TransportError::ReaderNotFound(n.clone()),
        }
    }
}

/// A reader as `smartcard readers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderInfo {
    pub name: String,
    pub card_present: bool,
    /// The card's ATR, empty without a card.
    pub atr: Vec<u8>,
}

/// Maps a PC/SC error to the transport's own. `reader` names the reader
/// for the errors that concern it.
pub fn map_error(e: PcscError, reader: &str) -> TransportError {
    match e {
        PcscError::NoService | PcscError::ServiceStopped | PcscError::Shutdown => {
            TransportError::NoService(e.to_string())
        }
        PcscError::NoReadersAvailable => TransportError::NoReader,
        PcscError::UnknownReader | PcscError::ReaderUnavailable => {
            TransportError::ReaderNotFound(reader.to_string())
        }
        PcscError::ResetCard => TransportError::CardReset,
        PcscError::RemovedCard => TransportError::CardRemoved,
        PcscError::NoSmartcard | PcscError::UnpoweredCard | PcscError::UnresponsiveCard => {
            TransportError::NoCard
        }
        PcscError::Timeout => TransportError::Timeout,
        other => TransportError::Other(format!("PC/SC: {other} ({other:?})")),
    }
}

/// Whether an error means the context itself is gone (pcscd stopped or
/// restarted), so that a new one is needed.
fn context_lost(e: PcscError) -> bool {
    matches!(
        e,
        PcscError::NoService
            | PcscError::ServiceStopped
            | PcscError::Shutdown
            | PcscError::InvalidHandle
            | PcscError::CommError
    )
}

fn establish() -> Result<Context, TransportError> {
    Context::establish(Scope::User).map_err(|e| map_error(e, ""))
}

fn reader_names(ctx: &Context) -> Result<Vec<CString>, PcscError> {
    match ctx.list_readers_owned() {
        Ok(r) => Ok(r),
        Err(PcscError::NoReadersAvailable) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The current state of each reader, without waiting.
fn states(ctx: &Context, names: &[&CStr]) -> Result<Vec<ReaderState>, PcscError> {
    let mut rs: Vec<ReaderState> = names
        .iter()
        .map(|n| ReaderState::new(CString::from(*n), State::UNAWARE))
        .collect();
    if !rs.is_empty() {
        ctx.get_status_change(Duration::ZERO, &mut rs)?;
    }
    Ok(rs)
}

/// A usable card: present, and not muted by a bad ATR.
fn has_card(rs: &ReaderState) -> bool {
    let s = rs.event_state();
    s.contains(State::PRESENT) && !s.contains(State::MUTE)
}

/// Every reader of the system's pcscd and whether it holds a card.
pub fn list_readers() -> Result<Vec<ReaderInfo>, TransportError> {
    let ctx = establish()?;
    let names = reader_names(&ctx).map_err(|e| map_error(e, ""))?;
    let refs: Vec<&CStr> = names.iter().map(CString::as_c_str).collect();
    let rs = states(&ctx, &refs).map_err(|e| map_error(e, ""))?;
    Ok(rs
        .iter()
        .map(|r| ReaderInfo {
            name: r.name().to_string_lossy().into_owned(),
            card_present: has_card(r),
            atr: if has_card(r) {
                r.atr().to_vec()
            } else {
                Vec::new()
            },
        })
        .collect())
}

/// The shortest command the transport sends. Two and three bytes still
/// reach the card, which answers them with a status word.
pub const MIN_APDU: usize = 2;

/// The extended-length probe: a NOP carrying 1000 bytes. Any status word
/// back but `6700` means the stack and the card took it whole; `6700` is
/// a short-APDU-only card.
fn extended_probe() -> Vec<u8> {
    let mut apdu = vec![0x80, 0x70, 0x00, 0x00, 0x00, 0x03, 0xE8];
    apdu.resize(7 + 1000, 0x5A);
    apdu
}

/// A card behind pcscd. Dropping it disconnects with a card reset, so
/// that no session outlives its client; [`PcscTransport::disconnect`]
/// chooses otherwise.
pub struct PcscTransport {
    ctx: Context,
    card: Option<Card>,
    /// The reader the card is in.
    reader: CString,
    choice: ReaderChoice,
    extended: bool,
    buf: Vec<u8>,
}

impl std::fmt::Debug for PcscTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcscTransport")
            .field("reader", &self.reader)
            .field("connected", &self.card.is_some())
            .field("extended", &self.extended)
            .finish_non_exhaustive()
    }
}

impl PcscTransport {
    /// Connects to a card that is in a reader now.
    pub fn connect(choice: ReaderChoice) -> Result<Self, TransportError> {
        let ctx = establish()?;
        let (reader, card) = find_card(&ctx, &choice)?;
        Ok(Self::finish(ctx, reader, card, choice))
    }

    /// Waits up to `timeout` for a card to be inserted (or for the reader
    /// to appear), then connects to it. pcscd being away for a while is
    /// waited out too; if it never comes, the error says so.
    pub fn wait_for_card(choice: ReaderChoice, timeout: Duration) -> Result<Self, TransportError> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = establish().and_then(|ctx| {
                wait_in(&ctx, &choice, deadline).map(|(reader, card)| (ctx, reader, card))
            });
            let err = match found {
                Ok((ctx, reader, card)) => return Ok(Self::finish(ctx, reader, card, choice)),
                Err(e @ TransportError::NoService(_)) => e,
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                return Err(err);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn finish(ctx: Context, reader: CString, card: Card, choice: ReaderChoice) -> Self {
        let mut t = PcscTransport {
            ctx,
            card: Some(card),
            reader,
            choice,
            extended: false,
            buf: vec![0; MAX_BUFFER_SIZE_EXTENDED],
        };
        t.extended = t.probe_extended();
        tracing::debug!(reader = %t.reader(), extended = t.extended, "card connected");
        t
    }

    /// Sends a 1000-byte extended APDU and reports whether the reader
    /// stack passed it. The applet answers it with a status word whether
    /// or not it is selected, and keeps no state from it.
    fn probe_extended(&mut self) -> bool {
        let Some(card) = self.card.as_ref() else {
            return false;
        };
        match card.transmit(&extended_probe(), &mut self.buf) {
            // 6700: the card itself takes short APDUs only.
            Ok(r) if r.len() >= 2 => r[r.len() - 2..] != [0x67, 0x00],
            Ok(_) => false,
            Err(e) => {
                tracing::debug!(error = %e, "extended APDUs do not pass; chaining instead");
                // Whatever the failure left behind, start from a clean link.
                let _ = self.reconnect_card();
                false
            }
        }
    }

    /// Overrides the probe's finding.
    pub fn set_extended(&mut self, on: bool) {
        self.extended = on;
    }

    /// The name of the reader the card is in.
    pub fn reader(&self) -> String {
        self.reader.to_string_lossy().into_owned()
    }

    /// The card's ATR as pcscd reports it.
    pub fn atr(&self) -> Result<Vec<u8>, TransportError> {
        let card = self.card.as_ref().ok_or(TransportError::NoCard)?;
        card.status2_owned()
            .map(|s| s.atr().to_vec())
            .map_err(|e| map_error(e, &self.reader()))
    }

    /// Whether the card is still in its reader, asked without waiting.
    pub fn card_present(&self) -> Result<bool, TransportError> {
        let rs = states(&self.ctx, &[self.reader.as_c_str()])
            .map_err(|e| map_error(e, &self.reader()))?;
        Ok(rs.first().is_some_and(has_card))
    }

    /// Waits up to `timeout` for the card to leave its reader; returns
    /// whether it did.
    pub fn wait_for_removal(&self, timeout: Duration) -> Result<bool, TransportError> {
        let deadline = Instant::now() + timeout;
        let mut rs = states(&self.ctx, &[self.reader.as_c_str()])
            .map_err(|e| map_error(e, &self.reader()))?;
        loop {
            if !rs.first().is_some_and(has_card) {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            for r in &mut rs {
                r.sync_current_state();
            }
            match self.ctx.get_status_change(left, &mut rs) {
                Ok(()) => {}
                Err(PcscError::Timeout) => return Ok(false),
                Err(PcscError::UnknownReader) => return Ok(true),
                Err(e) => return Err(map_error(e, &self.reader())),
            }
        }
    }

    /// Disconnects, leaving, resetting or powering down the card.
    pub fn disconnect(mut self, how: Disposition) -> Result<(), TransportError> {
        match self.card.take() {
            Some(card) => card
                .disconnect(how)
                .map_err(|(_, e)| map_error(e, &self.reader())),
            None => Ok(()),
        }
    }

    /// Reconnects the existing handle after a reset, leaving the card as
    /// it is.
    fn reconnect_card(&mut self) -> Result<(), PcscError> {
        match self.card.as_mut() {
            Some(card) => card.reconnect(ShareMode::Shared, Protocols::ANY, Disposition::LeaveCard),
            None => Err(PcscError::InvalidHandle),
        }
    }
}

/// Connects to the first candidate reader that holds a card.
fn find_card(ctx: &Context, choice: &ReaderChoice) -> Result<(CString, Card), TransportError> {
    let names = reader_names(ctx).map_err(|e| map_error(e, ""))?;
    let cands = choice.candidates(&names);
    if cands.is_empty() {
        return Err(choice.not_found());
    }
    let rs = states(ctx, &cands).map_err(|e| map_error(e, ""))?;
    let mut last = TransportError::NoCard;
    for r in rs.iter().filter(|r| has_card(r)) {
        match ctx.connect(r.name(), ShareMode::Shared, Protocols::ANY) {
            Ok(card) => return Ok((r.name().to_owned(), card)),
            Err(e) => {
                let e = map_error(e, &r.name().to_string_lossy());
                if let TransportError::NoService(_) = e {
                    return Err(e);
                }
                last = e;
            }
        }
    }
    Err(last)
}

/// Waits, within one context, until a candidate reader holds a card.
fn wait_in(
    ctx: &Context,
    choice: &ReaderChoice,
    deadline: Instant,
) -> Result<(CString, Card), TransportError> {
    loop {
        match find_card(ctx, choice) {
            Ok(found) => return Ok(found),
            Err(TransportError::NoCard | TransportError::NoReader)
            | Err(TransportError::ReaderNotFound(_))
            | Err(TransportError::CardRemoved) => {}
            Err(e) => return Err(e),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TransportError::Timeout);
        }
        // Watch the candidates and, for readers that appear, PnP.
        let names = reader_names(ctx).map_err(|e| map_error(e, ""))?;
        let mut rs = vec![ReaderState::new(PNP_NOTIFICATION(), State::UNAWARE)];
        rs.extend(states(ctx, &choice.candidates(&names)).map_err(|e| map_error(e, ""))?);
        for r in &mut rs {
            r.sync_current_state();
        }
        // Slices of at most a second, so that a missed PnP event on a
        // driver without hot-plug costs no more than that.
        let slice = left.min(Duration::from_secs(1));
        match ctx.get_status_change(slice, &mut rs) {
            Ok(()) | Err(PcscError::Timeout) => {}
            Err(PcscError::UnknownReader) => {}
            Err(e) => return Err(map_error(e, "")),
        }
    }
}

impl CardTransport for PcscTransport {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        // vpcd frames a 1-byte message as a control code, not an APDU: the
        // virtual card would answer nothing and the reader would hang for
        // good. ISO 7816-4 commands have at least 4 bytes anyway.
        if apdu.len() < MIN_APDU {
            return Err(TransportError::Other(format!(
                "refused a {}-byte command APDU: vpcd would take it for a control code",
                apdu.len()
            )));
        }
        let card = self.card.as_ref().ok_or(TransportError::NoCard)?;
        match card.transmit(apdu, &mut self.buf) {
            Ok(r) => Ok(r.to_vec()),
            Err(e) => {
                let err = map_error(e, &self.reader.to_string_lossy());
                tracing::debug!(error = %err, "transmit failed");
                Err(err)
            }
        }
    }

    /// After a reset: reconnects the same handle, leaving the card as it
    /// is. After a removal, a reinsertion or a pcscd restart: a new
    /// context if needed, and the card found again by the same choice of
    /// reader. Does not wait: without a card it says so.
    fn reconnect(&mut self) -> Result<(), TransportError> {
        match self.reconnect_card() {
            Ok(()) => return Ok(()),
            Err(e) if context_lost(e) || self.ctx.is_valid().is_err() => {
                tracing::info!(error = %e, "PC/SC context lost; establishing a new one");
                self.card = None;
                self.ctx = establish()?;
            }
            Err(e) => {
                tracing::debug!(error = %e, "reconnect failed; looking for the card again");
                self.card = None;
            }
        }
        // Keep to the same reader when the choice named one.
        let choice = match &self.choice {
            ReaderChoice::Named(_) => ReaderChoice::Named(self.reader()),
            c => c.clone(),
        };
        let (reader, card) = match find_card(&self.ctx, &choice) {
            Err(TransportError::NoService(_)) => {
                self.ctx = establish()?;
                find_card(&self.ctx, &choice)?
            }
            other => other?,
        };
        self.reader = reader;
        self.card = Some(card);
        Ok(())
    }

    fn supports_extended(&self) -> bool {
        self.extended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_choice() {
        let all: Vec<CString> = ["Virtual PCD 00 00", "Virtual PCD 00 01", "ACS ACR38U 00 00"]
            .iter()
            .map(|s| CString::new(*s).unwrap())
            .collect();
        let names = |c: &ReaderChoice| -> Vec<String> {
            c.candidates(&all)
                .iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(names(&ReaderChoice::FirstWithCard).len(), 3);
        assert_eq!(
            names(&ReaderChoice::Named("Virtual PCD 00 01".into())),
            ["Virtual PCD 00 01"]
        );
        assert_eq!(
            names(&ReaderChoice::Named("Virtual".into())),
            ["Virtual PCD 00 00", "Virtual PCD 00 01"]
        );
        assert!(names(&ReaderChoice::Named("Gemalto".into())).is_empty());
        assert_eq!(
            ReaderChoice::Named("x".into()).not_found(),
            TransportError::ReaderNotFound("x".into())
        );
    }

    #[test]
    fn errors_map() {
        assert_eq!(
            map_error(PcscError::ResetCard, "r"),
            TransportError::CardReset
        );
        assert_eq!(
            map_error(PcscError::RemovedCard, "r"),
            TransportError::CardRemoved
        );
        assert!(matches!(
            map_error(PcscError::NoService, "r"),
            TransportError::NoService(_)
        ));
        assert_eq!(
            map_error(PcscError::UnknownReader, "r"),
            TransportError::ReaderNotFound("r".into())
        );
        assert!(context_lost(PcscError::NoService));
        assert!(!context_lost(PcscError::ResetCard));
    }

    #[test]
    fn probe_is_an_extended_nop() {
        let p = extended_probe();
        let cmd = proto::apdu::Command::parse(&p).unwrap();
        assert_eq!(cmd.ins, proto::apdu::Ins::NOP);
        assert_eq!(cmd.data.len(), 1000);
        assert!(cmd.is_extended());
    }
}
