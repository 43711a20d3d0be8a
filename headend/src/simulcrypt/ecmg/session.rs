//! One SCS connection's protocol state (TS 103 197 §5): its channel, the
//! streams on it, and the answer to every message, or the error_status the
//! standard gives its fault.

use super::seal::{self, EcmSpec, Segment};
use super::{Inner, Peer};
use proto::secret::{ControlWord, CwPair};
use simulcrypt::ecmg::{self as sc, msg, status, ChannelStatus, CwProvision, EcmgMessage};
use simulcrypt::{ErrorEntry, Message};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use zeroize::Zeroizing;

/// The length of an Iodoform access_criteria: product (u32) and service
/// (u16), `docs/PROTOCOL.md` §12.
pub const AC_LEN: usize = 6;

/// A fault in a peer's message: the error_status, and one line for
/// error_information and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub status: u16,
    pub info: String,
}

impl Fault {
    pub fn new(status: u16, info: impl Into<String>) -> Fault {
        Fault {
            status,
            info: info.into(),
        }
    }
}

/// What a product and service the access criteria may name stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub product: u32,
    pub service: u16,
}

struct Last {
    cp: u16,
    epoch: u64,
    target: Target,
    generation: u32,
    cws: CwPair,
    datagram: Vec<u8>,
}

#[derive(Default)]
struct Stream {
    ecm_id: u16,
    ac: Option<Target>,
    segment: Option<Segment>,
    last: Option<Last>,
}

struct Channel {
    id: u16,
    streams: HashMap<u16, Stream>,
}

/// What one message leads to: answers to send, then maybe a fault to
/// report (after the answers), and whether to close.
#[derive(Debug, Default)]
pub struct Step {
    pub answers: Vec<Message>,
    pub fault: Option<Fault>,
    /// The SCS closed the channel: close the connection after the answers.
    pub done: bool,
}

impl Step {
    fn answer(m: EcmgMessage) -> Step {
        Step {
            answers: vec![m.to_message()],
            ..Step::default()
        }
    }
}

/// One connection's channel and streams.
pub(crate) struct Session {
    inner: Arc<Inner>,
    peer: Arc<Peer>,
    channel: Option<Channel>,
}

impl Session {
    pub fn new(inner: Arc<Inner>, peer: Arc<Peer>) -> Session {
        Session {
            inner,
            peer,
            channel: None,
        }
    }

    /// The channel and stream an error about `m` is addressed to.
    pub fn error_answer(&self, m: Option<&Message>, fault: &Fault) -> Message {
        let (channel, stream) = m.map(sc::ids).unwrap_or((None, None));
        let channel = channel.or(self.channel.as_ref().map(|c| c.id)).unwrap_or(0);
        let errors = vec![ErrorEntry {
            status: fault.status,
            information: Some(fault.info.clone().into_bytes()),
        }];
        // A stream's fault goes back as a stream_error, unless the channel
        // it names is the fault.
        let stream_message = m.is_some_and(|m| m.message_type >= msg::STREAM_SETUP)
            && fault.status != status::UNKNOWN_ECM_CHANNEL_ID;
        match stream {
            Some(stream) if stream_message => EcmgMessage::StreamError {
                channel,
                stream,
                errors,
            },
            _ => EcmgMessage::ChannelError { channel, errors },
        }
        .to_message()
    }

    /// Streams open on this connection.
    pub fn stream_count(&self) -> usize {
        self.channel.as_ref().map_or(0, |c| c.streams.len())
    }

    fn set_streams(&self) {
        self.peer
            .streams
            .store(self.stream_count() as u64, Ordering::Relaxed);
    }

    /// The answer to one well-framed message.
    pub async fn handle(&mut self, m: &Message) -> Step {
        let typed = match EcmgMessage::decode(m) {
            Ok(t) => t,
            Err(v) => {
                return Step {
                    fault: Some(Fault::new(v.ecmg_status(), v.detail)),
                    ..Step::default()
                }
            }
        };
        match self.dispatch(typed).await {
            Ok(step) => step,
            Err(fault) => Step {
                fault: Some(fault),
                ..Step::default()
            },
        }
    }

    async fn dispatch(&mut self, m: EcmgMessage) -> Result<Step, Fault> {
        match m {
            EcmgMessage::ChannelSetup {
                channel,
                super_cas_id,
            } => self.channel_setup(channel, super_cas_id),
            EcmgMessage::ChannelTest { channel } => {
                self.channel(channel)?;
                Ok(Step::answer(EcmgMessage::ChannelStatus(
                    self.channel_status(channel),
                )))
            }
            EcmgMessage::ChannelClose { channel } => {
                self.channel(channel)?;
                self.channel = None;
                self.peer.channel.store(u32::MAX, Ordering::Relaxed);
                self.set_streams();
                Ok(Step {
                    done: true,
                    ..Step::default()
                })
            }
            EcmgMessage::StreamSetup {
                channel,
                stream,
                ecm_id,
                nominal_cp_duration,
            } => self.stream_setup(channel, stream, ecm_id, nominal_cp_duration),
            EcmgMessage::StreamTest { channel, stream } => {
                let s = self.stream(channel, stream)?;
                Ok(Step::answer(EcmgMessage::StreamStatus {
                    channel,
                    stream,
                    ecm_id: s.ecm_id,
                    ac_transfer_mode: false,
                }))
            }
            EcmgMessage::StreamCloseRequest { channel, stream } => {
                self.stream(channel, stream)?;
                if let Some(c) = self.channel.as_mut() {
                    c.streams.remove(&stream);
                }
                self.set_streams();
                Ok(Step::answer(EcmgMessage::StreamCloseResponse {
                    channel,
                    stream,
                }))
            }
            EcmgMessage::CwProvision(p) => self.cw_provision(p).await,
            // Answers and reports from the SCS: nothing to answer.
            EcmgMessage::ChannelStatus(_) | EcmgMessage::StreamStatus { .. } => Ok(Step::default()),
            EcmgMessage::ChannelError { errors, .. } | EcmgMessage::StreamError { errors, .. } => {
                let codes: Vec<String> = errors
                    .iter()
                    .map(|e| format!("0x{:04x}", e.status))
                    .collect();
                tracing::debug!(peer = %self.peer.address, codes = %codes.join(","), "the SCS reports an error");
                Ok(Step::default())
            }
            EcmgMessage::StreamCloseResponse { .. } | EcmgMessage::EcmResponse { .. } => {
                Err(Fault::new(
                    status::INVALID_MESSAGE,
                    "stream_close_response and ECM_response go from the ECMG to the SCS, not back",
                ))
            }
        }
    }

    fn channel_status(&self, channel: u16) -> ChannelStatus {
        let c = &self.inner.cfg;
        ChannelStatus {
            channel,
            section_tspkt_flag: 0,
            ac_delay_start: None,
            ac_delay_stop: None,
            delay_start: c.delay_start_ms,
            delay_stop: c.delay_stop_ms,
            transition_delay_start: None,
            transition_delay_stop: None,
            ecm_rep_period: c.ecm_rep_period_ms,
            max_streams: c.max_streams,
            min_cp_duration: (c.min_cp_duration_ms / 100) as u16,
            lead_cw: 1,
            cw_per_msg: 2,
            max_comp_time: c.max_comp_time_ms,
        }
    }

    fn channel_setup(&mut self, channel: u16, super_cas_id: u32) -> Result<Step, Fault> {
        if let Some(c) = &self.channel {
            return Err(if c.id == channel {
                Fault::new(
                    status::ECM_CHANNEL_ID_IN_USE,
                    format!("ECM_channel_id {channel} is already set up on this connection"),
                )
            } else {
                Fault::new(
                    status::TOO_MANY_CHANNELS,
                    format!(
                        "this connection already carries channel {}: open one TCP connection per ECM channel",
                        c.id
                    ),
                )
            });
        }
        if super_cas_id != self.inner.super_cas_id {
            return Err(Fault::new(
                status::UNKNOWN_SUPER_CAS_ID,
                format!(
                    "Super_CAS_id 0x{super_cas_id:08x} is not this ECMG's: use 0x{:08x} (CA_system_id 0x{:04x}, CA_subsystem_id from simulcrypt.ecmg.ca_subsystem_id)",
                    self.inner.super_cas_id,
                    self.inner.super_cas_id >> 16
                ),
            ));
        }
        self.channel = Some(Channel {
            id: channel,
            streams: HashMap::new(),
        });
        self.peer
            .channel
            .store(u32::from(channel), Ordering::Relaxed);
        Ok(Step::answer(EcmgMessage::ChannelStatus(
            self.channel_status(channel),
        )))
    }

    fn channel(&mut self, channel: u16) -> Result<&mut Channel, Fault> {
        channel_in(&mut self.channel, channel)
    }

    fn stream(&mut self, channel: u16, stream: u16) -> Result<&mut Stream, Fault> {
        stream_in(&mut self.channel, channel, stream)
    }

    fn stream_setup(
        &mut self,
        channel: u16,
        stream: u16,
        ecm_id: u16,
        nominal_cp_duration: u16,
    ) -> Result<Step, Fault> {
        let max = self.inner.cfg.max_streams;
        let c = self.channel(channel)?;
        if c.streams.contains_key(&stream) {
            return Err(Fault::new(
                status::ECM_STREAM_ID_IN_USE,
                format!("ECM_stream_id {stream} is already set up on channel {channel}"),
            ));
        }
        if let Some((s, _)) = c.streams.iter().find(|(_, s)| s.ecm_id == ecm_id) {
            return Err(Fault::new(
                status::ECM_ID_IN_USE,
                format!("ECM_id {ecm_id} is already used by stream {s} of channel {channel}"),
            ));
        }
        if c.streams.len() >= usize::from(max) {
            return Err(Fault::new(
                status::TOO_MANY_STREAMS_ON_CHANNEL,
                format!(
                    "channel {channel} has {max} streams, its max_streams: close one, or open another channel"
                ),
            ));
        }
        if nominal_cp_duration == 0 {
            return Err(Fault::new(
                status::INVALID_VALUE,
                "nominal_CP_duration is 0: give the crypto period in units of 100 ms",
            ));
        }
        c.streams.insert(
            stream,
            Stream {
                ecm_id,
                ..Stream::default()
            },
        );
        self.set_streams();
        Ok(Step::answer(EcmgMessage::StreamStatus {
            channel,
            stream,
            ecm_id,
            ac_transfer_mode: false,
        }))
    }

    /// The product and service an access_criteria names, if this ECMG
    /// serves them.
    fn target(&self, ac: &[u8]) -> Result<Target, Fault> {
        let Ok(b) = <[u8; AC_LEN]>::try_from(ac) else {
            return Err(Fault::new(
                status::INVALID_VALUE,
                format!(
                    "access_criteria is {} bytes; Iodoform's are 6: product (u32) then service_id (u16)",
                    ac.len()
                ),
            ));
        };
        let t = Target {
            product: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            service: u16::from_be_bytes([b[4], b[5]]),
        };
        if !self.inner.services.contains_key(&t) {
            return Err(Fault::new(
                status::INVALID_VALUE,
                format!(
                    "access_criteria names product {} and service {}, which no `scrambler = \"simulcrypt\"` channel of headend.toml serves: add one, or send the product id and service_id of one",
                    t.product, t.service
                ),
            ));
        }
        Ok(t)
    }

    async fn cw_provision(&mut self, p: CwProvision) -> Result<Step, Fault> {
        let inner = self.inner.clone();
        inner.stats.ecm_requests.fetch_add(1, Ordering::Relaxed);
        let given = match &p.access_criteria {
            Some(ac) => Some(self.target(ac)?),
            None => None,
        };
        let s = stream_in(&mut self.channel, p.channel, p.stream)?;
        let target = given.or(s.ac).ok_or_else(|| {
            Fault::new(
                status::MISSING_PARAMETER,
                format!(
                    "stream {} has no access_criteria yet: send product (u32) and service_id (u16) in this CW_provision",
                    p.stream
                ),
            )
        })?;
        if p.cw_encryption.is_some() {
            return Err(Fault::new(
                status::INVALID_VALUE,
                "CW_encryption is not supported: send the control words in the clear over the headend's private network",
            ));
        }
        let cws = seal::pair(
            p.cp_number,
            control_word(&p, p.cp_number)?,
            control_word(&p, p.cp_number.wrapping_add(1))?,
        );
        let (generation, key) = inner.key(target.product)?;
        s.ac = Some(target);
        // A repeat of the last CW_provision: the same ECM.
        if let Some(l) = &s.last {
            if l.cp == p.cp_number
                && l.target == target
                && l.generation == generation
                && l.cws == cws
            {
                let datagram = l.datagram.clone();
                return Ok(self.ecm_response(&p, datagram));
            }
        }
        let continued = match (&s.segment, &s.last) {
            (Some(seg), Some(l)) => seg.next(l.cp, l.epoch, p.cp_number),
            _ => None,
        };
        let epoch = match continued {
            Some(e) => e,
            None => {
                let seg = inner.segment().await?;
                s.segment = Some(seg);
                seg.first(p.cp_number)
            }
        };
        let maturity = inner.services.get(&target).map_or(0, |c| c.maturity);
        let datagram = seal::seal_section(&EcmSpec {
            key: &key,
            product: target.product,
            generation,
            epoch,
            service: target.service,
            cws: &cws,
            time: (inner.now_ms)() / 1000,
            maturity,
        })
        .map_err(|e| Fault::new(status::UNKNOWN_ERROR, format!("ECM section: {e}")))?;
        s.last = Some(Last {
            cp: p.cp_number,
            epoch,
            target,
            generation,
            cws,
            datagram: datagram.clone(),
        });
        Ok(self.ecm_response(&p, datagram))
    }

    fn ecm_response(&self, p: &CwProvision, datagram: Vec<u8>) -> Step {
        self.inner
            .stats
            .ecm_responses
            .fetch_add(1, Ordering::Relaxed);
        self.peer.ecms.fetch_add(1, Ordering::Relaxed);
        Step::answer(EcmgMessage::EcmResponse {
            channel: p.channel,
            stream: p.stream,
            cp_number: p.cp_number,
            datagram,
        })
    }
}

fn channel_in(open: &mut Option<Channel>, channel: u16) -> Result<&mut Channel, Fault> {
    match open.as_mut() {
        Some(c) if c.id == channel => Ok(c),
        Some(c) => Err(Fault::new(
            status::UNKNOWN_ECM_CHANNEL_ID,
            format!(
                "ECM_channel_id {channel} is not set up on this connection (channel {} is)",
                c.id
            ),
        )),
        None => Err(Fault::new(
            status::UNKNOWN_ECM_CHANNEL_ID,
            format!("ECM_channel_id {channel} is not set up: send channel_setup first"),
        )),
    }
}

fn stream_in(open: &mut Option<Channel>, channel: u16, stream: u16) -> Result<&mut Stream, Fault> {
    channel_in(open, channel)?
            .streams
            .get_mut(&stream)
            .ok_or_else(|| {
                Fault::new(
                    status::UNKNOWN_ECM_STREAM_ID,
                    format!(
                        "ECM_stream_id {stream} is not set up on channel {channel}: send stream_setup first"
                    ),
                )
            })
}

/// The control word of crypto period `cp` in a CW_provision.
fn control_word(p: &CwProvision, cp: u16) -> Result<ControlWord, Fault> {
    let c = p.cp_cw.iter().find(|c| c.cp == cp).ok_or_else(|| {
        Fault::new(
            status::NOT_ENOUGH_CWS,
            format!(
                "CW_provision for crypto period {} lacks the control word of crypto period {cp}: send CW_per_msg = 2, for CP_number and CP_number + 1",
                p.cp_number
            ),
        )
    })?;
    let bytes: Zeroizing<[u8; 16]> = Zeroizing::new(c.cw.as_slice().try_into().map_err(|_| {
        Fault::new(
            status::INVALID_VALUE,
            format!(
                "the control word of crypto period {cp} is {} bytes; DVB-CISSA takes 16",
                c.cw.len()
            ),
        )
    })?);
    Ok(ControlWord::from_bytes(*bytes))
}
