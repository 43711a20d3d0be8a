//! How APDUs reach a card. Application logic knows only [`CardTransport`];
//! PC/SC is one implementation and the in-process applet another, and the
//! card's behaviour tests run on both.

use crate::applet::Applet;
use crate::eeprom::Eeprom;
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

impl<T: CardTransport + ?Sized> CardTransport for &mut T {
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

impl<T: CardTransport + ?Sized> CardTransport for Box<T> {
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

/// The applet in this process: the fast transport for tests.
#[derive(Debug)]
pub struct InProcessCard<E> {
    pub applet: Applet<E>,
    extended: bool,
    /// Every command and response, when recording is on.
    pub log: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl<E: Eeprom> InProcessCard<E> {
    pub fn new(applet: Applet<E>) -> Self {
        InProcessCard {
            applet,
            extended: true,
            log: None,
        }
    }

    /// Behaves like a reader without extended-length support.
    pub fn short_only(mut self) -> Self {
        self.extended = false;
        self
    }

    pub fn recording(mut self) -> Self {
        self.log = Some(Vec::new());
        self
    }
}

impl<E: Eeprom> CardTransport for InProcessCard<E> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        if !self.extended && apdu.len() > 261 {
            return Err(TransportError::Other(
                "reader does not support extended APDUs".into(),
            ));
        }
        let r = self.applet.process(apdu);
        if let Some(log) = &mut self.log {
            log.push((apdu.to_vec(), r.clone()));
        }
        Ok(r)
    }
    fn reconnect(&mut self) -> Result<(), TransportError> {
        self.applet.reset();
        Ok(())
    }
    fn supports_extended(&self) -> bool {
        self.extended
    }
}
