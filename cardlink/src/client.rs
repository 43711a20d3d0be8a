//! The host side of the card interface: typed calls over any
//! [`CardTransport`]. GET RESPONSE (61xx), Le correction (6Cxx) and command
//! chaining are handled here, in one place.

use crate::transport::{CardTransport, TransportError};
use proto::apdu::{Cla, Command, Ins, Response, StatusWord};
use proto::card::{
    open_control_words, CardInfo, ControlWords, EntitlementPage, EntitlementRecord, Personalization,
};
use proto::codec::Codec;
use proto::crypto::{PendingSession, X25519Secret};
use proto::ecm::EcmHeader;
use proto::secret::SessionKey;
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("card refused {ins:?}: {sw} ({})", describe(*sw))]
    Status { ins: Ins, sw: StatusWord },
    #[error("card answered {ins:?} with a malformed response")]
    BadResponse { ins: Ins },
    /// The card (or the reader) kept answering 61xx, "more data", beyond
    /// any response the protocol has: it is cut off rather than read for
    /// ever.
    #[error(
        "card answered {ins:?} with more than {limit} bytes (61xx without end): \
         the card or the reader is faulty; try another reader, or replace the card"
    )]
    ResponseTooLong { ins: Ins, limit: usize },
}

impl ClientError {
    /// The status word, when the card refused the command.
    pub fn status(&self) -> Option<StatusWord> {
        match self {
            ClientError::Status { sw, .. } => Some(*sw),
            _ => None,
        }
    }
}

/// A human description of a status word.
pub fn describe(sw: StatusWord) -> &'static str {
    match sw {
        StatusWord::OK => "success",
        StatusWord::WRONG_LENGTH => "wrong length",
        StatusWord::SECURITY_NOT_SATISFIED => "security status not satisfied",
        StatusWord::CONDITIONS_NOT_SATISFIED => "not allowed in the card's life-cycle state",
        StatusWord::WRONG_DATA => "malformed data",
        StatusWord::FILE_NOT_FOUND => "Iodoform application not found or not selected",
        StatusWord::INCORRECT_P1P2 => "incorrect P1/P2",
        StatusWord::INS_NOT_SUPPORTED => "instruction not supported",
        StatusWord::CLA_NOT_SUPPORTED => "class not supported",
        StatusWord::MEMORY_FAILURE => "card memory failure",
        StatusWord::NOT_ENOUGH_MEMORY => "card memory full",
        StatusWord::LAST_COMMAND_EXPECTED => "command chaining broken",
        StatusWord::EMM_WRONG_ADDRESS => "EMM addressed to another card",
        StatusWord::EMM_AUTH_FAILED => "EMM failed authentication",
        StatusWord::EMM_BAD_SIGNATURE => "EMM signature invalid",
        StatusWord::EMM_REPLAYED => "EMM replayed or out of date",
        StatusWord::EMM_BAD_COMMAND => "EMM command refused",
        StatusWord::ECM_AUTH_FAILED => "ECM failed authentication",
        StatusWord::ECM_NOT_ENTITLED => "no entitlement for the product",
        StatusWord::ECM_OUTSIDE_DATES => "outside the entitlement's dates",
        StatusWord::ECM_UNKNOWN_GENERATION => "product key generation not held",
        StatusWord::NOT_PAIRED_RECEIVER => "card is paired with another receiver",
        StatusWord::NO_SESSION => "no session with the card",
        _ => "unknown status",
    }
}

/// An established protected link: CWs come back sealed under this key.
#[derive(Debug)]
pub struct Session {
    key: SessionKey,
    next_counter: u64,
}

/// Typed access to an Iodoform card.
#[derive(Debug)]
pub struct CardClient<T> {
    transport: T,
    session: Option<Session>,
    /// Short APDUs only, whatever the transport says: set by
    /// [`CardClient::set_short_apdus`], or learnt from a card that
    /// refused an extended command with `6700` and took it chained.
    short_apdus: bool,
}

/// Largest data field in one short APDU when chaining.
const CHAIN_CHUNK: usize = 255;

/// Largest response gathered through GET RESPONSE: far above any answer
/// of the applet (a few hundred bytes), far below a worry for memory.
pub const MAX_RESPONSE: usize = 64 * 1024;

impl<T: CardTransport> CardClient<T> {
    pub fn new(transport: T) -> Self {
        CardClient {
            transport,
            session: None,
            short_apdus: false,
        }
    }

    /// Sends short APDUs only (long commands chained, long responses by
    /// GET RESPONSE), as a T=0 card or reader needs. Without this the
    /// client still falls back to it when a card refuses extended length.
    pub fn set_short_apdus(&mut self, on: bool) {
        self.short_apdus = on;
    }

    /// Whether the client sends short APDUs only.
    pub fn short_apdus(&self) -> bool {
        self.short_apdus || !self.transport.supports_extended()
    }

    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    pub fn into_transport(self) -> T {
        self.transport
    }

    fn exchange(&mut self, cmd: &Command) -> Result<Response, ClientError> {
        let raw = self.transport.transmit(&cmd.to_bytes())?;
        Response::parse(&raw).map_err(|_| ClientError::BadResponse { ins: cmd.ins })
    }

    /// Sends `cmd` in short APDUs: long data chained (CLA bit 0x10) in
    /// parts of at most 255 bytes, Le at most 256.
    fn send_chained(&mut self, cmd: &Command) -> Result<Response, ClientError> {
        let ins = cmd.ins;
        let le = cmd.le.map(|l| l.min(256));
        if cmd.data.len() <= CHAIN_CHUNK {
            return self.exchange(&Command { le, ..cmd.clone() });
        }
        let chunks: Vec<&[u8]> = cmd.data.chunks(CHAIN_CHUNK).collect();
        let mut last = None;
        for (i, chunk) in chunks.iter().enumerate() {
            let more = i + 1 < chunks.len();
            let part = Command {
                cla: Cla(cmd.cla.0 | if more { 0x10 } else { 0 }),
                data: chunk.to_vec(),
                le: if more { None } else { le },
                ..cmd.clone()
            };
            let r = self.exchange(&part)?;
            if more && r.sw != StatusWord::OK {
                return Err(ClientError::Status { ins, sw: r.sw });
            }
            last = Some(r);
        }
        last.ok_or(ClientError::BadResponse { ins })
    }

    /// Sends a command and returns its data, following 61xx and 6Cxx and
    /// chaining long data when the transport or the card lacks extended
    /// APDUs. A card that refuses an extended command with `6700` gets it
    /// again chained, and short APDUs from then on.
    pub fn command(&mut self, cmd: Command) -> Result<Vec<u8>, ClientError> {
        let ins = cmd.ins;
        let mut resp = if self.short_apdus() {
            self.send_chained(&cmd)?
        } else {
            let r = self.exchange(&cmd)?;
            if r.sw == StatusWord::WRONG_LENGTH && cmd.is_extended() {
                let again = self.send_chained(&cmd);
                // A card that takes the same command chained takes short
                // APDUs only; one that refuses both meant the length.
                let took_it = match &again {
                    Ok(r) => r.sw != StatusWord::WRONG_LENGTH,
                    Err(e) => e.status().is_some_and(|sw| sw != StatusWord::WRONG_LENGTH),
                };
                if took_it {
                    tracing::debug!(
                        ?ins,
                        "extended APDU refused with 6700; chaining from now on"
                    );
                    self.short_apdus = true;
                }
                again?
            } else {
                r
            }
        };
        if resp.sw.sw1() == 0x6C {
            let le = if resp.sw.sw2() == 0 {
                256
            } else {
                resp.sw.sw2() as usize
            };
            let again = Command {
                le: Some(le),
                ..cmd.clone()
            };
            resp = if self.short_apdus() {
                self.send_chained(&again)?
            } else {
                self.exchange(&again)?
            };
        }
        let mut data = std::mem::take(&mut resp.data);
        while resp.sw.sw1() == 0x61 {
            let le = if resp.sw.sw2() == 0 {
                256
            } else {
                resp.sw.sw2() as usize
            };
            resp = self.exchange(&Command::new(
                Cla::ISO,
                Ins::GET_RESPONSE,
                0,
                0,
                Vec::new(),
                Some(le),
            ))?;
            if data.len() + resp.data.len() > MAX_RESPONSE {
                return Err(ClientError::ResponseTooLong {
                    ins,
                    limit: MAX_RESPONSE,
                });
            }
            data.extend_from_slice(&resp.data);
        }
        if resp.sw != StatusWord::OK {
            return Err(ClientError::Status { ins, sw: resp.sw });
        }
        Ok(data)
    }

    pub fn select(&mut self) -> Result<(), ClientError> {
        self.session = None;
        self.command(Command::select()).map(drop)
    }

    pub fn nop(&mut self) -> Result<(), ClientError> {
        self.command(Command::proprietary(Ins::NOP, 0, Vec::new()))
            .map(drop)
    }

    pub fn info(&mut self) -> Result<CardInfo, ClientError> {
        let d = self.command(Command::proprietary(Ins::GET_INFO, 0, Vec::new()))?;
        CardInfo::from_bytes(&d).map_err(|_| ClientError::BadResponse { ins: Ins::GET_INFO })
    }

    /// Personalizes a blank card; returns the public key it generated.
    pub fn personalize(&mut self, p: &Personalization) -> Result<[u8; 32], ClientError> {
        let d = self.command(Command::proprietary(Ins::PERSONALIZE, 0, p.to_bytes()))?;
        d.try_into().map_err(|_| ClientError::BadResponse {
            ins: Ins::PERSONALIZE,
        })
    }

    pub fn lock(&mut self) -> Result<(), ClientError> {
        self.command(Command::new(
            Cla::PROPRIETARY,
            Ins::LOCK,
            0,
            0,
            Vec::new(),
            None,
        ))
        .map(drop)
    }

    pub fn process_emm(&mut self, emm: &[u8]) -> Result<(), ClientError> {
        self.command(Command::new(
            Cla::PROPRIETARY,
            Ins::PROCESS_EMM,
            0,
            0,
            emm.to_vec(),
            None,
        ))
        .map(drop)
    }

    pub fn list_entitlements(&mut self) -> Result<Vec<EntitlementRecord>, ClientError> {
        let mut out = Vec::new();
        loop {
            let d = self.command(Command::proprietary(
                Ins::LIST_ENTITLEMENTS,
                out.len() as u8,
                Vec::new(),
            ))?;
            let page = EntitlementPage::from_bytes(&d).map_err(|_| ClientError::BadResponse {
                ins: Ins::LIST_ENTITLEMENTS,
            })?;
            let done = page.records.is_empty();
            out.extend(page.records);
            if done || out.len() >= page.total as usize {
                return Ok(out);
            }
        }
    }

    /// Agrees a session key with the card. `identity` is the receiver's
    /// long-term key; `card` is the card's info from [`Self::info`].
    pub fn establish_session(
        &mut self,
        identity: &X25519Secret,
        card: &CardInfo,
    ) -> Result<(), ClientError> {
        let (init, pending) = PendingSession::start(identity);
        let d = self.command(Command::proprietary(
            Ins::ESTABLISH_SESSION,
            0,
            init.to_bytes(),
        ))?;
        let eph: [u8; 32] = d.try_into().map_err(|_| ClientError::BadResponse {
            ins: Ins::ESTABLISH_SESSION,
        })?;
        let key = pending
            .finish(identity, card.card_id, &card.public_key, &eph)
            .map_err(|_| ClientError::BadResponse {
                ins: Ins::ESTABLISH_SESSION,
            })?;
        self.session = Some(Session {
            key,
            next_counter: 0,
        });
        Ok(())
    }

    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }

    /// Sends an ECM and opens the sealed control words the card returns.
    pub fn process_ecm(&mut self, ecm: &[u8]) -> Result<ControlWords, ClientError> {
        let header =
            EcmHeader::read(&mut proto::Reader::new(ecm)).map_err(|_| ClientError::Status {
                ins: Ins::PROCESS_ECM,
                sw: StatusWord::WRONG_DATA,
            })?;
        let reply = self.command(Command::proprietary(Ins::PROCESS_ECM, 0, ecm.to_vec()))?;
        let bad = ClientError::BadResponse {
            ins: Ins::PROCESS_ECM,
        };
        let session = self.session.as_mut().ok_or(ClientError::Status {
            ins: Ins::PROCESS_ECM,
            sw: StatusWord::NO_SESSION,
        })?;
        let (counter, cws) = open_control_words(&session.key, &header, &reply).map_err(|_| bad)?;
        // The counter must move forward: a replayed reply is refused.
        if counter < session.next_counter {
            return Err(ClientError::BadResponse {
                ins: Ins::PROCESS_ECM,
            });
        }
        session.next_counter = counter + 1;
        Ok(cws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that answers every command with 255 bytes and 61FF, "more
    /// to come", for ever.
    #[derive(Debug, Default)]
    struct Endless {
        commands: usize,
    }

    impl CardTransport for Endless {
        fn transmit(&mut self, _apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
            self.commands += 1;
            let mut r = vec![0xA5; 255];
            r.extend_from_slice(&[0x61, 0xFF]);
            Ok(r)
        }
        fn reconnect(&mut self) -> Result<(), TransportError> {
            Ok(())
        }
    }

    #[test]
    fn a_card_that_answers_61xx_for_ever_is_cut_off() {
        let mut c = CardClient::new(Endless::default());
        let e = c.info().unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::ResponseTooLong {
                    ins: Ins::GET_INFO,
                    limit: MAX_RESPONSE
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("try another reader"), "{e}");
        // Cut off at the limit: one command, then GET RESPONSEs up to it.
        let commands = c.into_transport().commands;
        assert_eq!(commands, MAX_RESPONSE / 255 + 1);
    }
}
