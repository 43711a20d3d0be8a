//! How APDUs reach a card. Application logic knows only [`CardTransport`];
//! PC/SC (`crate::pcsc`) is one implementation and the in-process applet
//! (`crate::in_process`) another, and the card's behaviour tests run on
//! both. [`Recording`] wraps either and keeps what crossed the link.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("no smartcard reader found")]
    NoReader,
    #[error("reader {0:?} not found")]
    ReaderNotFound(String),
    #[error("no card in the reader")]
    NoCard,
    #[error("the card was removed")]
    CardRemoved,
    #[error("the card was reset")]
    CardReset,
    #[error("PC/SC service not available: {0}")]
    NoService(String),
    #[error("timed out waiting for a card")]
    Timeout,
    #[error("transport error: {0}")]
    Other(String),
}

/// Sends one command APDU and returns the raw response APDU
/// (data ‖ SW1 ‖ SW2).
pub trait CardTransport {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError>;

    /// Reconnects after a reset or reinsertion. The application must then be
    /// selected again.
    fn reconnect(&mut self) -> Result<(), TransportError> {
        Ok(())
    }

    /// Whether extended-length APDUs get through; if not, the client
    /// chains long commands.
    fn supports_extended(&self) -> bool {
        true
    }
}

/// A borrowed or boxed transport is the transport it points to.
macro_rules! forward_transport {
    ($($ptr:ty),+) => {$(
        impl<T: CardTransport + ?Sized> CardTransport for $ptr {
            fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
                (**self).transmit(apdu)
            }
            fn reconnect(&mut self) -> Result<(), TransportError> {
                (**self).reconnect()
            }
            fn supports_extended(&self) -> bool {
                (**self).supports_extended()
            }
        }
    )+};
}
forward_transport!(&mut T, Box<T>);

/// Any transport, with every command and response it carries kept in
/// order: what a probe on the reader's cable would see. Tests use it to
/// check what crosses the link (for one, that no control word does in
/// the clear).
#[derive(Debug)]
pub struct Recording<T> {
    pub inner: T,
    /// Each exchange as (command APDU, response APDU); a failed exchange
    /// is kept with an empty response.
    pub log: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<T: CardTransport> Recording<T> {
    pub fn new(inner: T) -> Self {
        Recording {
            inner,
            log: Vec::new(),
        }
    }

    /// Every command and every response that crossed the link, one slice
    /// each, in order.
    pub fn messages(&self) -> impl Iterator<Item = &[u8]> {
        self.log
            .iter()
            .flat_map(|(c, r)| [c.as_slice(), r.as_slice()])
    }
}

impl<T: CardTransport> CardTransport for Recording<T> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        let r = self.inner.transmit(apdu);
        let seen = r.clone().unwrap_or_default();
        self.log.push((apdu.to_vec(), seen));
        r
    }
    fn reconnect(&mut self) -> Result<(), TransportError> {
        self.inner.reconnect()
    }
    fn supports_extended(&self) -> bool {
        self.inner.supports_extended()
    }
}
