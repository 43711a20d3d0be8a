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

    /// A card that refuses extended length with 6700, on a link that
    /// passes it: the client learns from the refusal and chains.
    struct ShortCard(InProcessCard<MemEeprom>);

    impl CardTransport for ShortCard {
        fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
            if proto::apdu::is_extended_encoding(apdu) {
                return Ok(vec![0x67, 0x00]);
            }
            self.0.transmit(apdu)
        }
    }

    #[test]
    fn a_6700_card_gets_short_apdus() {
        use crate::CardClient;
        use proto::apdu::{Command, Ins};
        let card = InProcessCard::new(Applet::power_on(MemEeprom::default()).unwrap());
        let mut c = CardClient::new(Recording::new(ShortCard(card)));
        c.select().unwrap();
        assert!(!c.short_apdus());
        c.command(Command::proprietary(Ins::NOP, 0, vec![0x5A; 1000]))
            .unwrap();
        assert!(c.short_apdus());
        c.command(Command::proprietary(Ins::NOP, 0, vec![0x5A; 600]))
            .unwrap();
        c.info().unwrap();
        let log = &c.transport().log;
        // SELECT, the refused extended NOP, its 4 parts, 3 parts, GET INFO.
        assert_eq!(log.len(), 1 + 1 + 4 + 3 + 1, "{log:?}");
        assert_eq!(log[1].1, [0x67, 0x00]);
        for (cmd, resp) in &log[2..] {
            assert!(cmd.len() <= proto::apdu::MAX_SHORT_COMMAND);
            assert_eq!(resp[resp.len() - 2..], [0x90, 0x00]);
        }
        // Chained parts carry CLA bit 0x10 but the last.
        assert_eq!(log[2].0[0], 0x90);
        assert_eq!(log[5].0[0], 0x80);

        // A length the card refuses chained as well is an error, and
        // does not switch the client to short APDUs.
        let card = InProcessCard::new(Applet::power_on(MemEeprom::default()).unwrap());
        let mut c = CardClient::new(card);
        c.select().unwrap();
        let err = c
            .command(Command::proprietary(Ins::NOP, 0, vec![0; 5000]))
            .unwrap_err();
        assert_eq!(err.status(), Some(proto::apdu::StatusWord::WRONG_LENGTH));
        assert!(!c.short_apdus());
    }
}
