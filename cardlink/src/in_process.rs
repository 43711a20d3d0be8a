//! The card applet of the `card` crate in this process, as a transport:
//! the fast one for tests, and the one the behaviour suite compares with
//! PC/SC. Behind the `in-process` feature, so that a program that talks
//! only to real cards does not link a software card.

use crate::transport::{CardTransport, TransportError};
use card::{Applet, Eeprom};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Recording;
    use card::MemEeprom;

    #[test]
    fn recording_keeps_every_exchange() {
        let card = InProcessCard::new(Applet::power_on(MemEeprom::default()).unwrap());
        let mut r = Recording::new(card);
        let select = proto::apdu::Command::select().to_bytes();
        assert_eq!(r.transmit(&select).unwrap(), [0x90, 0x00]);
        assert_eq!(r.transmit(&[0x80, 0x99, 0, 0]).unwrap(), [0x6D, 0x00]);
        assert_eq!(r.log.len(), 2);
        assert_eq!(r.log[0], (select.clone(), vec![0x90, 0x00]));
        let all: Vec<&[u8]> = r.messages().collect();
        assert_eq!(all.len(), 4);
        assert_eq!(all[2], [0x80, 0x99, 0, 0]);
        assert!(r.supports_extended());
    }
}
