//! The card applet: a state machine from command APDU to response APDU.
//!
//! This is the only code that holds card secrets (the card's X25519 key,
//! `KEK_card`, the product keys and the session key). Nothing here logs a
//! secret or returns one over the interface: only the public key, sealed
//! control words and status words leave.
//!
//! Every command either succeeds and commits its new state atomically
//! (see [`crate::eeprom`]), or fails with its own status word and leaves the
//! stored state exactly as it was.

use crate::eeprom::{Eeprom, Store};
use crate::state::{CardState, SdState, StoredEntitlement, MAX_ENTITLEMENTS};
use proto::apdu::{Cla, Command, Ins, Response, StatusWord, AID};
use proto::card::{
    seal_control_words, CardInfo, ControlWords, EntitlementPage, LifeCycle, Personalization,
    APPLET_VERSION, ENTITLEMENTS_PER_PAGE,
};
use proto::codec::Codec;
use proto::crypto::{respond_session, SessionInit, X25519Secret};
use proto::ecm::Ecm;
use proto::emm::{Emm, EmmCommand, EmmError, EmmKind, EmmPayload, SdKey, GLOBAL_ADDRESS};
use proto::secret::{Kek, SessionKey};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// The card's answer to reset (ISO 7816-3): direct convention, T=1,
/// historical bytes "IODOFORM", and TCK (the XOR of T0 through the last
/// historical byte), which is required when T=1 is offered.
pub const ATR: &[u8] = &[
    0x3B, 0x88, 0x80, 0x01, b'I', b'O', b'D', b'O', b'F', b'O', b'R', b'M', 0x12,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eeprom::MemEeprom;
    use proto::crypto::SigningKey;

    #[test]
    fn atr_check_byte() {
        assert_eq!(super::ATR[1..].iter().fold(0u8, |a, b| a ^ b), 0);
    }

    /// Only the public key and the card id ever come out: the key seed
    /// made at personalization is in no response of a card's life, and it
    /// is the seed of the public key the card reports.
    #[test]
    fn the_card_key_never_leaves() {
        let mut a = Applet::power_on(MemEeprom::default()).unwrap();
        let p = Personalization {
            card_id: 42,
            operator_id: 1,
            operator_kex: X25519Secret::random().public(),
            operator_sig: SigningKey::random().public(),
        };
        let mut responses = Vec::new();
        let mut send = |a: &mut Applet<MemEeprom>, c: Command| {
            let r = a.process(&c.to_bytes());
            assert_eq!(r[r.len() - 2..], [0x90, 0x00], "{:?}", c.ins);
            responses.push(r);
        };
        send(&mut a, Command::select());
        send(
            &mut a,
            Command::proprietary(Ins::PERSONALIZE, 0, p.to_bytes()),
        );
        send(
            &mut a,
            Command::new(Cla::PROPRIETARY, Ins::LOCK, 0, 0, vec![], None),
        );
        send(&mut a, Command::proprietary(Ins::GET_INFO, 0, vec![]));
        send(
            &mut a,
            Command::proprietary(Ins::LIST_ENTITLEMENTS, 0, vec![]),
        );
        let seed = a.state().secret.clone().expect("personalized");
        let public = X25519Secret::from_seed(&seed).public();
        assert_eq!(responses[1][..32], public);
        let info = CardInfo::from_bytes(&responses[3][..responses[3].len() - 2]).unwrap();
        assert_eq!(info.card_id, 42);
        assert_eq!(info.state, LifeCycle::LOCKED);
        assert_eq!(info.public_key, public);
        for r in &responses {
            assert!(!r.windows(32).any(|w| w == seed.expose()));
        }
    }
}

/// How far the RAM clock may run ahead of the stored clock before an
/// accepted ECM writes it to EEPROM. Persisting every ECM's time would wear
/// the EEPROM and put an fsync into one ECM per crypto period. An accepted
/// ECM whose time passes the end of any entitlement is always persisted,
/// as is every accepted EMM, so after a power loss the clock falls back by
/// at most this much and never to before an end date it had passed.
pub const CLOCK_PERSIST_STEP: u64 = 3600;

/// Why the card refused a command. Each maps to one status word, here and
/// nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CardError {
    #[error("wrong length")]
    WrongLength,
    #[error("class not supported")]
    Cla,
    #[error("instruction not supported")]
    Ins,
    #[error("incorrect P1/P2")]
    P1P2,
    #[error("application not selected, or not found")]
    NotSelected,
    #[error("command not allowed in this life-cycle state")]
    WrongState,
    #[error("malformed data")]
    Malformed,
    #[error("EMM addressed to another card")]
    WrongAddress,
    #[error("EMM authentication failed")]
    EmmAuth,
    #[error("EMM signature invalid")]
    BadSignature,
    #[error("EMM replayed or older than the last one accepted")]
    Replayed,
    #[error("EMM command refused")]
    BadCommand,
    #[error("ECM authentication failed")]
    EcmAuth,
    #[error("no entitlement for this product")]
    NotEntitled,
    #[error("outside the entitlement's dates")]
    OutsideDates,
    #[error("unknown product key generation")]
    UnknownGeneration,
    #[error("card is paired with another receiver")]
    NotPaired,
    #[error("no session established")]
    NoSession,
    #[error("no room for another entitlement")]
    Full,
    #[error("chained command sequence broken")]
    Chaining,
    #[error("memory failure")]
    Storage,
}

impl From<CardError> for StatusWord {
    fn from(e: CardError) -> StatusWord {
        match e {
            CardError::WrongLength => StatusWord::WRONG_LENGTH,
            CardError::Cla => StatusWord::CLA_NOT_SUPPORTED,
            CardError::Ins => StatusWord::INS_NOT_SUPPORTED,
            CardError::P1P2 => StatusWord::INCORRECT_P1P2,
            CardError::NotSelected => StatusWord::FILE_NOT_FOUND,
            CardError::WrongState => StatusWord::CONDITIONS_NOT_SATISFIED,
            CardError::Malformed => StatusWord::WRONG_DATA,
            CardError::WrongAddress => StatusWord::EMM_WRONG_ADDRESS,
            CardError::EmmAuth => StatusWord::EMM_AUTH_FAILED,
            CardError::BadSignature => StatusWord::EMM_BAD_SIGNATURE,
            CardError::Replayed => StatusWord::EMM_REPLAYED,
            CardError::BadCommand => StatusWord::EMM_BAD_COMMAND,
            CardError::EcmAuth => StatusWord::ECM_AUTH_FAILED,
            CardError::NotEntitled => StatusWord::ECM_NOT_ENTITLED,
            CardError::OutsideDates => StatusWord::ECM_OUTSIDE_DATES,
            CardError::UnknownGeneration => StatusWord::ECM_UNKNOWN_GENERATION,
            CardError::NotPaired => StatusWord::NOT_PAIRED_RECEIVER,
            CardError::NoSession => StatusWord::NO_SESSION,
            CardError::Full => StatusWord::NOT_ENOUGH_MEMORY,
            CardError::Chaining => StatusWord::LAST_COMMAND_EXPECTED,
            CardError::Storage => StatusWord::MEMORY_FAILURE,
        }
    }
}

/// Largest command data the applet accepts, whole or chained.
pub const MAX_COMMAND_DATA: usize = 4096;
/// CLA bit for "more chained commands follow" (ISO 7816-4 5.4.1).
const CLA_CHAINING: u8 = 0x10;

struct Session {
    key: SessionKey,
    counter: u64,
    receiver: [u8; 32],
}

/// Volatile state: lost at every reset or power cut.
#[derive(Default)]
struct Ram {
    selected: bool,
    session: Option<Session>,
    /// Never below the stored clock.
    clock: u64,
    /// Response bytes still to be fetched with GET RESPONSE.
    pending: Vec<u8>,
    /// Data of a chained command in progress, with its INS.
    chain: Option<(Ins, u8, u8, Vec<u8>)>,
    /// Derived from the stored key at power-up; never stored.
    secret: Option<X25519Secret>,
    kek: Option<Kek>,
}

/// The applet over its EEPROM.
pub struct Applet<E> {
    store: Store<E>,
    state: CardState,
    ram: Ram,
    /// Set when a write failed: the card behaves as unpowered until reset.
    dead: bool,
}

impl<E> std::fmt::Debug for Applet<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applet")
            .field("state", &self.state.lifecycle)
            .field("card_id", &self.state.card_id)
            .finish_non_exhaustive()
    }
}

impl<E: Eeprom> Applet<E> {
    /// Powers the card up from its EEPROM. An EEPROM with no valid record
    /// is a blank card.
    pub fn power_on(eeprom: E) -> std::io::Result<Self> {
        let (store, record) = Store::load(eeprom)?;
        let state = match record {
            Some(bytes) => CardState::decode(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            None => CardState::blank(),
        };
        let mut a = Applet {
            store,
            state,
            ram: Ram::default(),
            dead: false,
        };
        a.reset();
        Ok(a)
    }

    /// A warm reset: volatile state is lost, stored state is kept.
    pub fn reset(&mut self) {
        let secret = self.state.secret.as_ref().map(X25519Secret::from_seed);
        let kek = secret
            .as_ref()
            .and_then(|s| Kek::derive_card(s, self.state.card_id, &self.state.operator_kex).ok());
        self.ram = Ram {
            clock: self.state.clock,
            secret,
            kek,
            ..Ram::default()
        };
        self.dead = false;
    }

    /// The stored state, as it is in EEPROM.
    pub fn state(&self) -> &CardState {
        &self.state
    }

    pub fn store(&self) -> &Store<E> {
        &self.store
    }

    /// EEPROM records written in the card's whole life (each commit writes
    /// one record; see [`Store::writes`]).
    pub fn eeprom_writes(&self) -> u64 {
        self.store.writes()
    }

    pub fn into_eeprom(self) -> E {
        self.store.into_eeprom()
    }

    /// Handles one command APDU and returns the response APDU. Never panics.
    pub fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        self.handle(apdu).to_bytes()
    }

    fn handle(&mut self, apdu: &[u8]) -> Response {
        if self.dead {
            return Response::status(StatusWord::MEMORY_FAILURE);
        }
        let cmd = match Command::parse(apdu) {
            Ok(c) => c,
            Err(_) => return Response::status(StatusWord::WRONG_LENGTH),
        };
        if cmd.ins != Ins::GET_RESPONSE {
            self.ram.pending.clear();
        }
        let le = cmd.le;
        let get_response = cmd.ins == Ins::GET_RESPONSE && cmd.cla == Cla::ISO;
        let data = match self.dispatch(cmd) {
            Ok(d) => d,
            Err(e) => return Response::status(e.into()),
        };
        if get_response {
            // GET RESPONSE already split by Le; say how much still waits.
            let n = self.ram.pending.len();
            return match n {
                0 => Response::ok(data),
                _ => Response {
                    data,
                    sw: StatusWord::from_bytes(0x61, if n >= 256 { 0 } else { n as u8 }),
                },
            };
        }
        self.respond(data, le)
    }

    /// Applies ISO 7816-4 response rules: without Le, data waits for GET
    /// RESPONSE (61xx); with a too-small short Le, 6Cxx gives the right one.
    fn respond(&mut self, data: Vec<u8>, le: Option<usize>) -> Response {
        match le {
            _ if data.is_empty() => Response::ok(data),
            None => {
                let n = data.len();
                self.ram.pending = data;
                Response::status(StatusWord::from_bytes(
                    0x61,
                    if n >= 256 { 0 } else { n as u8 },
                ))
            }
            Some(le) if le < data.len() && data.len() <= 256 => {
                let n = data.len();
                Response::status(StatusWord::from_bytes(
                    0x6C,
                    if n == 256 { 0 } else { n as u8 },
                ))
            }
            Some(le) if le < data.len() => {
                let mut data = data;
                let rest = data.split_off(le);
                let n = rest.len();
                self.ram.pending = rest;
                Response {
                    data,
                    sw: StatusWord::from_bytes(0x61, if n >= 256 { 0 } else { n as u8 }),
                }
            }
            Some(_) => Response::ok(data),
        }
    }

    fn dispatch(&mut self, cmd: Command) -> Result<Vec<u8>, CardError> {
        let chained = cmd.cla.0 & CLA_CHAINING != 0;
        let cla = Cla(cmd.cla.0 & !CLA_CHAINING);
        match cla {
            Cla::ISO => {
                self.ram.chain = None;
                if chained {
                    return Err(CardError::Cla);
                }
                match cmd.ins {
                    Ins::SELECT => self.select(&cmd),
                    Ins::GET_RESPONSE => self.get_response(&cmd),
                    _ => Err(CardError::Ins),
                }
            }
            Cla::PROPRIETARY => {
                if !self.ram.selected {
                    self.ram.chain = None;
                    return Err(CardError::NotSelected);
                }
                let cmd = match self.unchain(cmd, chained)? {
                    Some(c) => c,
                    None => return Ok(Vec::new()),
                };
                if cmd.data.len() > MAX_COMMAND_DATA {
                    return Err(CardError::WrongLength);
                }
                self.proprietary(cmd)
            }
            _ => {
                self.ram.chain = None;
                Err(CardError::Cla)
            }
        }
    }

    /// Collects chained data; returns the whole command once the last part
    /// arrives.
    fn unchain(&mut self, cmd: Command, more: bool) -> Result<Option<Command>, CardError> {
        let prior = self.ram.chain.take();
        let mut data = match prior {
            Some((ins, p1, p2, data)) => {
                if (ins, p1, p2) != (cmd.ins, cmd.p1, cmd.p2) {
                    return Err(CardError::Chaining);
                }
                data
            }
            None if !more => return Ok(Some(cmd)),
            None => Vec::new(),
        };
        if data.len() + cmd.data.len() > MAX_COMMAND_DATA {
            return Err(CardError::WrongLength);
        }
        data.extend_from_slice(&cmd.data);
        if more {
            self.ram.chain = Some((cmd.ins, cmd.p1, cmd.p2, data));
            return Ok(None);
        }
        Ok(Some(Command { data, ..cmd }))
    }

    fn select(&mut self, cmd: &Command) -> Result<Vec<u8>, CardError> {
        if (cmd.p1, cmd.p2) != (0x04, 0x00) {
            return Err(CardError::P1P2);
        }
        if cmd.data != AID {
            self.ram.selected = false;
            return Err(CardError::NotSelected);
        }
        self.ram.selected = true;
        self.ram.session = None;
        Ok(Vec::new())
    }

    fn get_response(&mut self, cmd: &Command) -> Result<Vec<u8>, CardError> {
        if (cmd.p1, cmd.p2) != (0, 0) {
            return Err(CardError::P1P2);
        }
        if self.ram.pending.is_empty() {
            return Err(CardError::WrongState);
        }
        let pending = std::mem::take(&mut self.ram.pending);
        // `respond` splits by Le and keeps the remainder pending.
        match cmd.le {
            Some(le) if le < pending.len() => {
                let mut head = pending;
                self.ram.pending = head.split_off(le);
                Ok(head)
            }
            _ => Ok(pending),
        }
    }

    fn proprietary(&mut self, cmd: Command) -> Result<Vec<u8>, CardError> {
        let no_p = |c: &Command| {
            if (c.p1, c.p2) == (0, 0) {
                Ok(())
            } else {
                Err(CardError::P1P2)
            }
        };
        match cmd.ins {
            Ins::NOP => Ok(Vec::new()),
            Ins::GET_INFO => {
                no_p(&cmd)?;
                Ok(self.info().to_bytes())
            }
            Ins::PERSONALIZE => {
                no_p(&cmd)?;
                self.personalize(&cmd.data)
            }
            Ins::LOCK => {
                no_p(&cmd)?;
                if !cmd.data.is_empty() {
                    return Err(CardError::WrongLength);
                }
                self.lock()
            }
            Ins::PROCESS_EMM => {
                no_p(&cmd)?;
                self.process_emm(&cmd.data).map(|()| Vec::new())
            }
            Ins::ESTABLISH_SESSION => {
                no_p(&cmd)?;
                self.establish_session(&cmd.data)
            }
            Ins::PROCESS_ECM => {
                no_p(&cmd)?;
                self.process_ecm(&cmd.data)
            }
            Ins::LIST_ENTITLEMENTS => {
                if cmd.p2 != 0 {
                    return Err(CardError::P1P2);
                }
                self.list_entitlements(cmd.p1 as usize)
            }
            _ => Err(CardError::Ins),
        }
    }

    fn info(&self) -> CardInfo {
        let s = &self.state;
        CardInfo {
            applet_version: APPLET_VERSION,
            state: s.lifecycle,
            card_id: s.card_id,
            operator_id: s.operator_id,
            public_key: self
                .ram
                .secret
                .as_ref()
                .map(X25519Secret::public)
                .unwrap_or_default(),
            operator_kex: s.operator_kex,
            operator_sig: s.operator_sig,
            clock: self.ram.clock,
            emm_u_seq: s.emm_u_seq,
            emm_g_seq: s.emm_g_seq,
            paired_receiver: s.paired,
            entitlements: s.entitlements.len() as u8,
        }
    }

    /// Writes `next` to EEPROM and, only if that succeeded, makes it the
    /// card's state.
    fn commit(&mut self, next: CardState) -> Result<(), CardError> {
        let bytes = next.encode();
        if let Err(e) = self.store.commit(&bytes) {
            tracing::warn!(error = %e, "EEPROM commit failed; card needs a reset");
            self.dead = true;
            return Err(CardError::Storage);
        }
        self.state = next;
        Ok(())
    }

    fn require(&self, state: LifeCycle) -> Result<(), CardError> {
        if self.state.lifecycle == state {
            Ok(())
        } else {
            Err(CardError::WrongState)
        }
    }

    fn personalize(&mut self, data: &[u8]) -> Result<Vec<u8>, CardError> {
        self.require(LifeCycle::BLANK)?;
        let p = Personalization::from_bytes(data).map_err(|_| CardError::Malformed)?;
        // The key pair is made here, inside the card; only the public half
        // ever leaves.
        let secret = X25519Secret::random();
        let kek = Kek::derive_card(&secret, p.card_id, &p.operator_kex)
            .map_err(|_| CardError::Malformed)?;
        let mut next = self.state.clone();
        next.lifecycle = LifeCycle::PERSONALIZED;
        next.card_id = p.card_id;
        next.operator_id = p.operator_id;
        next.operator_kex = p.operator_kex;
        next.operator_sig = p.operator_sig;
        next.secret = Some(secret.to_seed());
        self.commit(next)?;
        let public = secret.public();
        self.ram.secret = Some(secret);
        self.ram.kek = Some(kek);
        Ok(public.to_vec())
    }

    fn lock(&mut self) -> Result<Vec<u8>, CardError> {
        self.require(LifeCycle::PERSONALIZED)?;
        let mut next = self.state.clone();
        next.lifecycle = LifeCycle::LOCKED;
        self.commit(next)?;
        Ok(Vec::new())
    }

    fn process_emm(&mut self, data: &[u8]) -> Result<(), CardError> {
        self.require(LifeCycle::LOCKED)?;
        let emm = Emm::from_bytes(data).map_err(|_| CardError::Malformed)?;
        let map = |e: EmmError, auth: CardError| match e {
            EmmError::Crypto(_) => auth,
            // Authentic, but the payload does not parse: the headend wrote
            // something this card does not understand.
            _ => CardError::BadCommand,
        };
        let (payload, last_seq) = match emm.kind {
            EmmKind::UNIQUE => {
                if emm.address != self.state.card_id {
                    return Err(CardError::WrongAddress);
                }
                let kek = self.ram.kek.as_ref().ok_or(CardError::WrongState)?;
                let p = emm
                    .open_unique(kek)
                    .map_err(|e| map(e, CardError::EmmAuth))?;
                (p, self.state.emm_u_seq)
            }
            _ => {
                if emm.address != GLOBAL_ADDRESS {
                    return Err(CardError::Malformed);
                }
                let p = emm
                    .verify_global(&self.state.operator_sig)
                    .map_err(|e| map(e, CardError::BadSignature))?;
                (p, self.state.emm_g_seq)
            }
        };
        // An EMM-G that only delivers keys by Subset Difference is
        // idempotent: it is judged by the generations it carries, not by
        // its seq, so the carousel may repeat its parts in any order. If
        // it changes nothing, nothing is written.
        let idempotent = emm.kind == EmmKind::GLOBAL
            && !payload.commands.is_empty()
            && payload
                .commands
                .iter()
                .all(|c| matches!(c, EmmCommand::SdKey(_)));
        if !idempotent && emm.seq <= last_seq {
            return Err(CardError::Replayed);
        }
        let mut next = self.state.clone();
        apply_emm(&mut next, emm.kind, &payload)?;
        // A carousel repeat (the same entitlements, keys and pairing under
        // a newer seq) costs no EEPROM write: nothing is stored, not even
        // the seq, unless the clock has moved a checkpoint step. Not
        // storing the seq is safe: the stored seq stays that of the last
        // EMM that changed something, so no older change can be replayed.
        if next == self.state {
            let clock = self.ram.clock.max(payload.time);
            if idempotent || clock < self.state.clock.saturating_add(CLOCK_PERSIST_STEP) {
                self.ram.clock = clock;
                return Ok(());
            }
        }
        match emm.kind {
            _ if idempotent => {}
            EmmKind::UNIQUE => next.emm_u_seq = emm.seq,
            _ => next.emm_g_seq = emm.seq,
        }
        next.clock = self.ram.clock.max(payload.time);
        self.commit(next)?;
        self.ram.clock = self.state.clock;
        // Pairing may have changed: a session with another receiver ends,
        // and so does any session of a card that was just blocked.
        if let (Some(p), Some(s)) = (&self.state.paired, &self.ram.session) {
            if !bool::from(p.ct_eq(&s.receiver)) {
                self.ram.session = None;
            }
        }
        if emm.kind == EmmKind::GLOBAL && self.state.entitlements.is_empty() {
            self.ram.session = None;
        }
        Ok(())
    }

    fn establish_session(&mut self, data: &[u8]) -> Result<Vec<u8>, CardError> {
        self.require(LifeCycle::LOCKED)?;
        let init = SessionInit::from_bytes(data).map_err(|_| CardError::Malformed)?;
        if let Some(p) = &self.state.paired {
            if !bool::from(p.ct_eq(&init.receiver_static)) {
                self.ram.session = None;
                return Err(CardError::NotPaired);
            }
        }
        let secret = self.ram.secret.as_ref().ok_or(CardError::WrongState)?;
        let (eph, key) =
            respond_session(secret, self.state.card_id, &init).map_err(|_| CardError::Malformed)?;
        self.ram.session = Some(Session {
            key,
            counter: 0,
            receiver: init.receiver_static,
        });
        Ok(eph.to_vec())
    }

    fn process_ecm(&mut self, data: &[u8]) -> Result<Vec<u8>, CardError> {
        self.require(LifeCycle::LOCKED)?;
        if self.ram.session.is_none() {
            return Err(CardError::NoSession);
        }
        let ecm = Ecm::from_bytes(data).map_err(|_| CardError::Malformed)?;
        let h = ecm.header;
        let index = self
            .state
            .entitlements
            .iter()
            .position(|e| e.product == h.product)
            .ok_or(CardError::NotEntitled)?;
        let ent = &self.state.entitlements[index];
        let key = ent.key(h.generation).ok_or(CardError::UnknownGeneration)?;
        let payload = ecm
            .open(&key.epoch_key(h.product, h.generation, h.epoch).ecm_key())
            .map_err(|_| CardError::EcmAuth)?;
        // The clock never goes backwards: an old ECM replayed after the
        // entitlement ended is judged at the card's time, not its own. Any
        // authentic ECM moves the RAM clock, even one refused for its
        // dates, so that the headend's current ECMs close the door on
        // replayed old ones (stored state is not touched by a refusal).
        let now = self.ram.clock.max(payload.time);
        self.ram.clock = now;
        if payload.time < ent.start || now > ent.end {
            return Err(CardError::OutsideDates);
        }
        let stored = self.state.clock;
        let passes_an_end = self
            .state
            .entitlements
            .iter()
            .any(|e| (stored..now).contains(&e.end));
        // The generation in use is kept, once per change, so that newer
        // keys delivered ahead never evict it.
        let new_active = ent.active != Some(h.generation);
        if new_active || passes_an_end || now >= stored.saturating_add(CLOCK_PERSIST_STEP) {
            let mut next = self.state.clone();
            next.clock = now;
            next.entitlements[index].active = Some(h.generation);
            self.commit(next)?;
        }
        let session = self.ram.session.as_mut().ok_or(CardError::NoSession)?;
        let cws = ControlWords {
            cws: payload.cws.clone(),
            time: payload.time,
        };
        let reply = seal_control_words(&session.key, session.counter, &h, &cws);
        session.counter += 1;
        Ok(reply)
    }

    fn list_entitlements(&self, start: usize) -> Result<Vec<u8>, CardError> {
        if self.state.lifecycle == LifeCycle::BLANK {
            return Err(CardError::WrongState);
        }
        let all = &self.state.entitlements;
        let records = all
            .iter()
            .skip(start)
            .take(ENTITLEMENTS_PER_PAGE)
            .map(StoredEntitlement::record)
            .collect();
        Ok(EntitlementPage {
            total: all.len() as u8,
            records,
        }
        .to_bytes())
    }
}

/// A product key delivered by Subset Difference: taken only by a card that
/// holds the product, for a generation newer than every one it holds, and
/// whose labels put it in one of the subsets listed. Anything else leaves
/// the state as it is. A wrap that unwraps to a key failing its check
/// value refuses the EMM.
fn apply_sd_key(next: &mut CardState, k: &SdKey) -> Result<(), CardError> {
    let Some(ent) = next
        .entitlements
        .iter_mut()
        .find(|e| e.product == k.product)
    else {
        return Ok(());
    };
    if ent.newest().is_some_and(|g| g >= k.generation) {
        return Ok(());
    }
    let Some(sd) = &next.sd else { return Ok(()) };
    let Some(forest) = sd.forest() else {
        return Ok(());
    };
    match k.open_with(forest, sd.address, |n| sd.entry(n)) {
        None => Ok(()),
        Some(Ok(key)) => {
            ent.add_key(k.generation, key);
            Ok(())
        }
        Some(Err(_)) => Err(CardError::BadCommand),
    }
}

/// Applies an authentic EMM's commands to a copy of the state. Fails,
/// leaving the caller to discard the copy, if any command is refused.
fn apply_emm(next: &mut CardState, kind: EmmKind, p: &EmmPayload) -> Result<(), CardError> {
    for c in &p.commands {
        match (kind, c) {
            (EmmKind::UNIQUE, EmmCommand::Entitle(e)) => {
                match next
                    .entitlements
                    .iter_mut()
                    .find(|x| x.product == e.product)
                {
                    Some(x) => {
                        x.start = e.start;
                        x.end = e.end;
                        x.add_key(e.generation, e.key.clone());
                    }
                    None => {
                        if next.entitlements.len() >= MAX_ENTITLEMENTS {
                            return Err(CardError::Full);
                        }
                        let mut x = StoredEntitlement::new(e.product, e.start, e.end);
                        x.add_key(e.generation, e.key.clone());
                        next.entitlements.push(x);
                    }
                }
            }
            (EmmKind::UNIQUE, EmmCommand::Pair { receiver }) => next.paired = Some(*receiver),
            (EmmKind::UNIQUE, EmmCommand::Unpair) => next.paired = None,
            (EmmKind::UNIQUE, EmmCommand::RemoveProduct { product }) => {
                next.entitlements.retain(|x| x.product != *product)
            }
            (EmmKind::GLOBAL, EmmCommand::BlockCards(ids)) => {
                if ids.contains(&next.card_id) {
                    next.entitlements.clear();
                    next.paired = None;
                }
            }
            (EmmKind::UNIQUE, EmmCommand::SdLabels(l)) => {
                let same = next
                    .sd
                    .as_ref()
                    .is_some_and(|sd| sd.depth == l.depth && sd.address == l.address);
                if !same {
                    // A new address: the labels of the old one are useless.
                    next.sd = Some(SdState::new(l.depth, l.address).ok_or(CardError::BadCommand)?);
                }
                let sd = next.sd.as_mut().ok_or(CardError::BadCommand)?;
                for (n, label) in l.labels.iter().enumerate() {
                    let slot = sd
                        .entries
                        .get_mut(usize::from(l.first) + n)
                        .ok_or(CardError::BadCommand)?;
                    *slot = Some(label.clone());
                }
            }
            (EmmKind::GLOBAL, EmmCommand::SdKey(k)) => apply_sd_key(next, k)?,
            _ => return Err(CardError::BadCommand),
        }
    }
    Ok(())
}
