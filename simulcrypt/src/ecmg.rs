//! The ECMG⇔SCS interface (TS 103 197 §5): the scrambler's synchronizer
//! (SCS) opens channels and streams on the ECM generator (ECMG), sends
//! control words in `CW_provision` and gets an ECM back in `ECM_response`.

use std::fmt;

use zeroize::Zeroizing;

use crate::check::{self, many, one, opt, Table};
use crate::{ErrorEntry, Message, Violation, ViolationKind};

/// message_type values of this interface.
pub mod msg {
    /// SCS → ECMG: open a channel.
    pub const CHANNEL_SETUP: u16 = 0x0001;
    /// Either way: is the channel alive?
    pub const CHANNEL_TEST: u16 = 0x0002;
    /// ECMG → SCS (or back): the channel's parameters.
    pub const CHANNEL_STATUS: u16 = 0x0003;
    /// SCS → ECMG: close the channel.
    pub const CHANNEL_CLOSE: u16 = 0x0004;
    /// Either way: a fault on the channel.
    pub const CHANNEL_ERROR: u16 = 0x0005;
    /// SCS → ECMG: open a stream.
    pub const STREAM_SETUP: u16 = 0x0101;
    /// Either way: is the stream alive?
    pub const STREAM_TEST: u16 = 0x0102;
    /// Either way: the stream's parameters.
    pub const STREAM_STATUS: u16 = 0x0103;
    /// SCS → ECMG: close a stream.
    pub const STREAM_CLOSE_REQUEST: u16 = 0x0104;
    /// ECMG → SCS: the stream is closed.
    pub const STREAM_CLOSE_RESPONSE: u16 = 0x0105;
    /// Either way: a fault on a stream.
    pub const STREAM_ERROR: u16 = 0x0106;
    /// SCS → ECMG: control words for a crypto period.
    pub const CW_PROVISION: u16 = 0x0201;
    /// ECMG → SCS: the ECM for that crypto period.
    pub const ECM_RESPONSE: u16 = 0x0202;
}

/// parameter_type values of this interface (Table 5).
pub mod param {
    /// uimsbf 4: CA_system_id (16 bits) and CA_subsystem_id (16 bits).
    pub const SUPER_CAS_ID: u16 = 0x0001;
    /// 1: 0 = ECMs as sections, 1 = as TS packets.
    pub const SECTION_TSPKT_FLAG: u16 = 0x0002;
    /// tcimsbf 2, ms.
    pub const DELAY_START: u16 = 0x0003;
    /// tcimsbf 2, ms.
    pub const DELAY_STOP: u16 = 0x0004;
    /// tcimsbf 2, ms.
    pub const TRANSITION_DELAY_START: u16 = 0x0005;
    /// tcimsbf 2, ms.
    pub const TRANSITION_DELAY_STOP: u16 = 0x0006;
    /// uimsbf 2, ms.
    pub const ECM_REP_PERIOD: u16 = 0x0007;
    /// uimsbf 2.
    pub const MAX_STREAMS: u16 = 0x0008;
    /// uimsbf 2, units of 100 ms.
    pub const MIN_CP_DURATION: u16 = 0x0009;
    /// uimsbf 1.
    pub const LEAD_CW: u16 = 0x000A;
    /// uimsbf 1.
    pub const CW_PER_MSG: u16 = 0x000B;
    /// uimsbf 2, ms.
    pub const MAX_COMP_TIME: u16 = 0x000C;
    /// Variable, CA system defined.
    pub const ACCESS_CRITERIA: u16 = 0x000D;
    /// uimsbf 2.
    pub const ECM_CHANNEL_ID: u16 = 0x000E;
    /// uimsbf 2.
    pub const ECM_STREAM_ID: u16 = 0x000F;
    /// uimsbf 2, units of 100 ms.
    pub const NOMINAL_CP_DURATION: u16 = 0x0010;
    /// Boolean 1.
    pub const ACCESS_CRITERIA_TRANSFER_MODE: u16 = 0x0011;
    /// uimsbf 2.
    pub const CP_NUMBER: u16 = 0x0012;
    /// uimsbf 2, units of 100 ms.
    pub const CP_DURATION: u16 = 0x0013;
    /// CP (uimsbf 2) then the CW.
    pub const CP_CW_COMBINATION: u16 = 0x0014;
    /// Variable: the ECM, as sections or TS packets.
    pub const ECM_DATAGRAM: u16 = 0x0015;
    /// tcimsbf 2, ms.
    pub const AC_DELAY_START: u16 = 0x0016;
    /// tcimsbf 2, ms.
    pub const AC_DELAY_STOP: u16 = 0x0017;
    /// Variable, CA system defined.
    pub const CW_ENCRYPTION: u16 = 0x0018;
    /// uimsbf 2.
    pub const ECM_ID: u16 = 0x0019;
    /// uimsbf 2.
    pub const ERROR_STATUS: u16 = 0x7000;
    /// Variable.
    pub const ERROR_INFORMATION: u16 = 0x7001;
}

/// error_status values of this interface (Table 6) beyond the common ones.
pub mod status {
    pub use crate::common_status::*;
    /// The Super_CAS_id is not this ECMG's.
    pub const UNKNOWN_SUPER_CAS_ID: u16 = 0x0005;
    /// No open channel has this ECM_channel_id.
    pub const UNKNOWN_ECM_CHANNEL_ID: u16 = 0x0006;
    /// No open stream has this ECM_stream_id.
    pub const UNKNOWN_ECM_STREAM_ID: u16 = 0x0007;
    /// The ECMG's channel limit is reached.
    pub const TOO_MANY_CHANNELS: u16 = 0x0008;
    /// The channel's stream limit is reached.
    pub const TOO_MANY_STREAMS_ON_CHANNEL: u16 = 0x0009;
    /// The ECMG's stream limit is reached.
    pub const TOO_MANY_STREAMS: u16 = 0x000A;
    /// A CW_provision without the control words an ECM needs.
    pub const NOT_ENOUGH_CWS: u16 = 0x000B;
    /// Out of storage.
    pub const OUT_OF_STORAGE: u16 = 0x000C;
    /// Out of computational resources.
    pub const OUT_OF_COMPUTE: u16 = 0x000D;
    /// A DVB parameter the message does not define.
    pub const UNKNOWN_PARAMETER_TYPE: u16 = 0x000E;
    /// A DVB parameter of the wrong length.
    pub const INCONSISTENT_LENGTH: u16 = 0x000F;
    /// A mandatory DVB parameter is absent.
    pub const MISSING_PARAMETER: u16 = 0x0010;
    /// A DVB parameter's value is out of range.
    pub const INVALID_VALUE: u16 = 0x0011;
    /// The ECM_id is unknown.
    pub const UNKNOWN_ECM_ID: u16 = 0x0012;
    /// The ECM_channel_id is already open.
    pub const ECM_CHANNEL_ID_IN_USE: u16 = 0x0013;
    /// The ECM_stream_id is already open on this channel.
    pub const ECM_STREAM_ID_IN_USE: u16 = 0x0014;
    /// The ECM_id is already used on this channel.
    pub const ECM_ID_IN_USE: u16 = 0x0015;
}

use param as p;

const CHANNEL: check::Slot = one(p::ECM_CHANNEL_ID, "ECM_channel_id", Some(2));
const STREAM: check::Slot = one(p::ECM_STREAM_ID, "ECM_stream_id", Some(2));
const STATUS: check::Slot = many(p::ERROR_STATUS, "error_status", Some(2), 1);
const INFO: check::Slot = many(p::ERROR_INFORMATION, "error_information", None, 0);

static TABLES: [(u16, Table); 13] = [
    (
        msg::CHANNEL_SETUP,
        Table {
            name: "channel_setup",
            slots: &[CHANNEL, one(p::SUPER_CAS_ID, "Super_CAS_id", Some(4))],
        },
    ),
    (
        msg::CHANNEL_TEST,
        Table {
            name: "channel_test",
            slots: &[CHANNEL],
        },
    ),
    (
        msg::CHANNEL_STATUS,
        Table {
            name: "channel_status",
            slots: &[
                CHANNEL,
                one(p::SECTION_TSPKT_FLAG, "section_TSpkt_flag", Some(1)),
                opt(p::AC_DELAY_START, "AC_delay_start", Some(2)),
                opt(p::AC_DELAY_STOP, "AC_delay_stop", Some(2)),
                one(p::DELAY_START, "delay_start", Some(2)),
                one(p::DELAY_STOP, "delay_stop", Some(2)),
                opt(p::TRANSITION_DELAY_START, "transition_delay_start", Some(2)),
                opt(p::TRANSITION_DELAY_STOP, "transition_delay_stop", Some(2)),
                one(p::ECM_REP_PERIOD, "ECM_rep_period", Some(2)),
                one(p::MAX_STREAMS, "max_streams", Some(2)),
                one(p::MIN_CP_DURATION, "min_CP_duration", Some(2)),
                one(p::LEAD_CW, "lead_CW", Some(1)),
                one(p::CW_PER_MSG, "CW_per_msg", Some(1)),
                one(p::MAX_COMP_TIME, "max_comp_time", Some(2)),
            ],
        },
    ),
    (
        msg::CHANNEL_CLOSE,
        Table {
            name: "channel_close",
            slots: &[CHANNEL],
        },
    ),
    (
        msg::CHANNEL_ERROR,
        Table {
            name: "channel_error",
            slots: &[CHANNEL, STATUS, INFO],
        },
    ),
    (
        msg::STREAM_SETUP,
        Table {
            name: "stream_setup",
            slots: &[
                CHANNEL,
                STREAM,
                one(p::ECM_ID, "ECM_id", Some(2)),
                one(p::NOMINAL_CP_DURATION, "nominal_CP_duration", Some(2)),
            ],
        },
    ),
    (
        msg::STREAM_TEST,
        Table {
            name: "stream_test",
            slots: &[CHANNEL, STREAM],
        },
    ),
    (
        msg::STREAM_STATUS,
        Table {
            name: "stream_status",
            slots: &[
                CHANNEL,
                STREAM,
                one(p::ECM_ID, "ECM_id", Some(2)),
                one(
                    p::ACCESS_CRITERIA_TRANSFER_MODE,
                    "access_criteria_transfer_mode",
                    Some(1),
                ),
            ],
        },
    ),
    (
        msg::STREAM_CLOSE_REQUEST,
        Table {
            name: "stream_close_request",
            slots: &[CHANNEL, STREAM],
        },
    ),
    (
        msg::STREAM_CLOSE_RESPONSE,
        Table {
            name: "stream_close_response",
            slots: &[CHANNEL, STREAM],
        },
    ),
    (
        msg::STREAM_ERROR,
        Table {
            name: "stream_error",
            slots: &[CHANNEL, STREAM, STATUS, INFO],
        },
    ),
    (
        msg::CW_PROVISION,
        Table {
            name: "CW_provision",
            slots: &[
                CHANNEL,
                STREAM,
                one(p::CP_NUMBER, "CP_number", Some(2)),
                opt(p::CW_ENCRYPTION, "CW_encryption", None),
                many(p::CP_CW_COMBINATION, "CP_CW_combination", None, 1),
                opt(p::CP_DURATION, "CP_duration", Some(2)),
                opt(p::ACCESS_CRITERIA, "access_criteria", None),
            ],
        },
    ),
    (
        msg::ECM_RESPONSE,
        Table {
            name: "ECM_response",
            slots: &[
                CHANNEL,
                STREAM,
                one(p::CP_NUMBER, "CP_number", Some(2)),
                one(p::ECM_DATAGRAM, "ECM_datagram", None),
            ],
        },
    ),
];

/// The name the standard gives a message_type of this interface.
pub fn message_name(message_type: u16) -> Option<&'static str> {
    TABLES
        .iter()
        .find(|(t, _)| *t == message_type)
        .map(|(_, table)| table.name)
}

/// The operating parameters an ECMG announces in `channel_status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStatus {
    /// ECM_channel_id.
    pub channel: u16,
    /// 0: ECM_datagram holds sections; 1: TS packets.
    pub section_tspkt_flag: u8,
    /// AC_delay_start, ms.
    pub ac_delay_start: Option<i16>,
    /// AC_delay_stop, ms.
    pub ac_delay_stop: Option<i16>,
    /// delay_start, ms: when the ECM must be on air relative to the start
    /// of its crypto period.
    pub delay_start: i16,
    /// delay_stop, ms.
    pub delay_stop: i16,
    /// transition_delay_start, ms.
    pub transition_delay_start: Option<i16>,
    /// transition_delay_stop, ms.
    pub transition_delay_stop: Option<i16>,
    /// ECM_rep_period, ms.
    pub ecm_rep_period: u16,
    /// max_streams per channel (0: no limit given).
    pub max_streams: u16,
    /// min_CP_duration, units of 100 ms.
    pub min_cp_duration: u16,
    /// lead_CW: how many future CWs a CW_provision carries.
    pub lead_cw: u8,
    /// CW_per_msg: CP_CW_combinations per CW_provision.
    pub cw_per_msg: u8,
    /// max_comp_time, ms: the longest an ECM takes to compute.
    pub max_comp_time: u16,
}

/// One CP_CW_combination: a crypto period number and its control word.
/// The control word is wiped on drop and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct CpCw {
    /// Crypto period number.
    pub cp: u16,
    /// The control word, in the clear (§5.7).
    pub cw: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for CpCw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpCw {{ cp: {}, cw: REDACTED }}", self.cp)
    }
}

/// A `CW_provision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CwProvision {
    /// ECM_channel_id.
    pub channel: u16,
    /// ECM_stream_id.
    pub stream: u16,
    /// CP_number: the crypto period the ECM is for.
    pub cp_number: u16,
    /// CW_encryption, if the SCS sent one.
    pub cw_encryption: Option<Vec<u8>>,
    /// The CP_CW_combinations, in the order they came.
    pub cp_cw: Vec<CpCw>,
    /// CP_duration, units of 100 ms.
    pub cp_duration: Option<u16>,
    /// access_criteria, if sent with this crypto period.
    pub access_criteria: Option<Vec<u8>>,
}

/// A typed message of the ECMG⇔SCS interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EcmgMessage {
    /// channel_setup.
    ChannelSetup {
        /// ECM_channel_id.
        channel: u16,
        /// Super_CAS_id.
        super_cas_id: u32,
    },
    /// channel_test.
    ChannelTest {
        /// ECM_channel_id.
        channel: u16,
    },
    /// channel_status.
    ChannelStatus(ChannelStatus),
    /// channel_close.
    ChannelClose {
        /// ECM_channel_id.
        channel: u16,
    },
    /// channel_error.
    ChannelError {
        /// ECM_channel_id.
        channel: u16,
        /// The faults.
        errors: Vec<ErrorEntry>,
    },
    /// stream_setup.
    StreamSetup {
        /// ECM_channel_id.
        channel: u16,
        /// ECM_stream_id.
        stream: u16,
        /// ECM_id.
        ecm_id: u16,
        /// nominal_CP_duration, units of 100 ms.
        nominal_cp_duration: u16,
    },
    /// stream_test.
    StreamTest {
        /// ECM_channel_id.
        channel: u16,
        /// ECM_stream_id.
        stream: u16,
    },
    /// stream_status.
    StreamStatus {
        /// ECM_channel_id.
        channel: u16,
        /// ECM_stream_id.
        stream: u16,
        /// ECM_id.
        ecm_id: u16,
        /// access_criteria_transfer_mode: whether the SCS must send
        /// access_criteria with every CW_provision.
        ac_transfer_mode: bool,
    },
    /// stream_close_request.
    StreamCloseRequest {
        /// ECM_channel_id.
        channel: u16,
        /// ECM_stream_id.
        stream: u16,
    },
    /// stream_close_response.
    StreamCloseResponse {
        /// ECM_channel_id.
        channel: u16,
        /// ECM_stream_id.
        stream: u16,
    },
    /// stream_error.
    StreamError {
        /// ECM_channel_id.
        channel: u16,
        /// ECM_stream_id.
        stream: u16,
        /// The faults.
        errors: Vec<ErrorEntry>,
    },
    /// CW_provision.
    CwProvision(CwProvision),
    /// ECM_response.
    EcmResponse {
        /// ECM_channel_id.
        channel: u16,
        /// ECM_stream_id.
        stream: u16,
        /// CP_number, echoed from the CW_provision.
        cp_number: u16,
        /// The ECM.
        datagram: Vec<u8>,
    },
}

fn i16_of(m: &Message, ty: u16) -> i16 {
    check::u16_of(m, ty) as i16
}

fn opt_i16_of(m: &Message, ty: u16) -> Option<i16> {
    check::opt_u16_of(m, ty).map(|v| v as i16)
}

/// The ECM_channel_id and ECM_stream_id a message names, as far as they
/// can be read: what an error answer to a faulty message is addressed to.
pub fn ids(message: &Message) -> (Option<u16>, Option<u16>) {
    let read = |ty| {
        check::first(message, ty)
            .and_then(|p| <[u8; 2]>::try_from(p.value.as_slice()).ok())
            .map(u16::from_be_bytes)
    };
    (read(p::ECM_CHANNEL_ID), read(p::ECM_STREAM_ID))
}

impl EcmgMessage {
    /// The typed message, or the fault the standard names for it.
    pub fn decode(m: &Message) -> Result<EcmgMessage, Violation> {
        check::check_version(m)?;
        let table = check::table_for(&TABLES, m, "ECMG<=>SCS")?;
        check::check(m, table)?;
        let channel = check::u16_of(m, p::ECM_CHANNEL_ID);
        let stream = check::u16_of(m, p::ECM_STREAM_ID);
        Ok(match m.message_type {
            msg::CHANNEL_SETUP => EcmgMessage::ChannelSetup {
                channel,
                super_cas_id: check::u32_of(m, p::SUPER_CAS_ID),
            },
            msg::CHANNEL_TEST => EcmgMessage::ChannelTest { channel },
            msg::CHANNEL_STATUS => EcmgMessage::ChannelStatus(ChannelStatus {
                channel,
                section_tspkt_flag: check::u8_of(m, p::SECTION_TSPKT_FLAG),
                ac_delay_start: opt_i16_of(m, p::AC_DELAY_START),
                ac_delay_stop: opt_i16_of(m, p::AC_DELAY_STOP),
                delay_start: i16_of(m, p::DELAY_START),
                delay_stop: i16_of(m, p::DELAY_STOP),
                transition_delay_start: opt_i16_of(m, p::TRANSITION_DELAY_START),
                transition_delay_stop: opt_i16_of(m, p::TRANSITION_DELAY_STOP),
                ecm_rep_period: check::u16_of(m, p::ECM_REP_PERIOD),
                max_streams: check::u16_of(m, p::MAX_STREAMS),
                min_cp_duration: check::u16_of(m, p::MIN_CP_DURATION),
                lead_cw: check::u8_of(m, p::LEAD_CW),
                cw_per_msg: check::u8_of(m, p::CW_PER_MSG),
                max_comp_time: check::u16_of(m, p::MAX_COMP_TIME),
            }),
            msg::CHANNEL_CLOSE => EcmgMessage::ChannelClose { channel },
            msg::CHANNEL_ERROR => EcmgMessage::ChannelError {
                channel,
                errors: check::errors_of(m, p::ERROR_STATUS, p::ERROR_INFORMATION),
            },
            msg::STREAM_SETUP => EcmgMessage::StreamSetup {
                channel,
                stream,
                ecm_id: check::u16_of(m, p::ECM_ID),
                nominal_cp_duration: check::u16_of(m, p::NOMINAL_CP_DURATION),
            },
            msg::STREAM_TEST => EcmgMessage::StreamTest { channel, stream },
            msg::STREAM_STATUS => {
                let mode = check::u8_of(m, p::ACCESS_CRITERIA_TRANSFER_MODE);
                if mode > 1 {
                    return Err(Violation::new(
                        ViolationKind::InvalidValue,
                        Some(p::ACCESS_CRITERIA_TRANSFER_MODE),
                        format!("access_criteria_transfer_mode is {mode}; a Boolean is 0 or 1"),
                    ));
                }
                EcmgMessage::StreamStatus {
                    channel,
                    stream,
                    ecm_id: check::u16_of(m, p::ECM_ID),
                    ac_transfer_mode: mode == 1,
                }
            }
            msg::STREAM_CLOSE_REQUEST => EcmgMessage::StreamCloseRequest { channel, stream },
            msg::STREAM_CLOSE_RESPONSE => EcmgMessage::StreamCloseResponse { channel, stream },
            msg::STREAM_ERROR => EcmgMessage::StreamError {
                channel,
                stream,
                errors: check::errors_of(m, p::ERROR_STATUS, p::ERROR_INFORMATION),
            },
            msg::CW_PROVISION => {
                let mut cp_cw = Vec::new();
                for c in m.all(p::CP_CW_COMBINATION) {
                    let (cp, cw) = match c.value.split_first_chunk::<2>() {
                        Some((cp, cw)) if !cw.is_empty() => (u16::from_be_bytes(*cp), cw),
                        _ => {
                            return Err(Violation::new(
                                ViolationKind::InconsistentLength,
                                Some(p::CP_CW_COMBINATION),
                                format!(
                                    "CP_CW_combination is {} bytes: it needs a 2-byte CP and a control word",
                                    c.value.len()
                                ),
                            ))
                        }
                    };
                    cp_cw.push(CpCw {
                        cp,
                        cw: Zeroizing::new(cw.to_vec()),
                    });
                }
                EcmgMessage::CwProvision(CwProvision {
                    channel,
                    stream,
                    cp_number: check::u16_of(m, p::CP_NUMBER),
                    cw_encryption: check::bytes_of(m, p::CW_ENCRYPTION),
                    cp_cw,
                    cp_duration: check::opt_u16_of(m, p::CP_DURATION),
                    access_criteria: check::bytes_of(m, p::ACCESS_CRITERIA),
                })
            }
            msg::ECM_RESPONSE => EcmgMessage::EcmResponse {
                channel,
                stream,
                cp_number: check::u16_of(m, p::CP_NUMBER),
                datagram: check::bytes_of(m, p::ECM_DATAGRAM).unwrap_or_default(),
            },
            _ => {
                return Err(Violation::new(
                    ViolationKind::UnknownMessageType,
                    None,
                    format!("message_type 0x{:04x} is not handled", m.message_type),
                ))
            }
        })
    }

    /// The generic message, ready to encode.
    pub fn to_message(&self) -> Message {
        let ch =
            |t: u16, channel: &u16| Message::new(t).with(p::ECM_CHANNEL_ID, channel.to_be_bytes());
        let st = |t: u16, channel: &u16, stream: &u16| {
            ch(t, channel).with(p::ECM_STREAM_ID, stream.to_be_bytes())
        };
        match self {
            EcmgMessage::ChannelSetup {
                channel,
                super_cas_id,
            } => ch(msg::CHANNEL_SETUP, channel).with(p::SUPER_CAS_ID, super_cas_id.to_be_bytes()),
            EcmgMessage::ChannelTest { channel } => ch(msg::CHANNEL_TEST, channel),
            EcmgMessage::ChannelStatus(s) => {
                let mut m = ch(msg::CHANNEL_STATUS, &s.channel)
                    .with(p::SECTION_TSPKT_FLAG, [s.section_tspkt_flag]);
                for (ty, v) in [
                    (p::AC_DELAY_START, s.ac_delay_start),
                    (p::AC_DELAY_STOP, s.ac_delay_stop),
                    (p::DELAY_START, Some(s.delay_start)),
                    (p::DELAY_STOP, Some(s.delay_stop)),
                    (p::TRANSITION_DELAY_START, s.transition_delay_start),
                    (p::TRANSITION_DELAY_STOP, s.transition_delay_stop),
                ] {
                    if let Some(v) = v {
                        m = m.with(ty, v.to_be_bytes());
                    }
                }
                m.with(p::ECM_REP_PERIOD, s.ecm_rep_period.to_be_bytes())
                    .with(p::MAX_STREAMS, s.max_streams.to_be_bytes())
                    .with(p::MIN_CP_DURATION, s.min_cp_duration.to_be_bytes())
                    .with(p::LEAD_CW, [s.lead_cw])
                    .with(p::CW_PER_MSG, [s.cw_per_msg])
                    .with(p::MAX_COMP_TIME, s.max_comp_time.to_be_bytes())
            }
            EcmgMessage::ChannelClose { channel } => ch(msg::CHANNEL_CLOSE, channel),
            EcmgMessage::ChannelError { channel, errors } => check::push_errors(
                ch(msg::CHANNEL_ERROR, channel),
                errors,
                p::ERROR_STATUS,
                p::ERROR_INFORMATION,
            ),
            EcmgMessage::StreamSetup {
                channel,
                stream,
                ecm_id,
                nominal_cp_duration,
            } => st(msg::STREAM_SETUP, channel, stream)
                .with(p::ECM_ID, ecm_id.to_be_bytes())
                .with(p::NOMINAL_CP_DURATION, nominal_cp_duration.to_be_bytes()),
            EcmgMessage::StreamTest { channel, stream } => st(msg::STREAM_TEST, channel, stream),
            EcmgMessage::StreamStatus {
                channel,
                stream,
                ecm_id,
                ac_transfer_mode,
            } => st(msg::STREAM_STATUS, channel, stream)
                .with(p::ECM_ID, ecm_id.to_be_bytes())
                .with(
                    p::ACCESS_CRITERIA_TRANSFER_MODE,
                    [u8::from(*ac_transfer_mode)],
                ),
            EcmgMessage::StreamCloseRequest { channel, stream } => {
                st(msg::STREAM_CLOSE_REQUEST, channel, stream)
            }
            EcmgMessage::StreamCloseResponse { channel, stream } => {
                st(msg::STREAM_CLOSE_RESPONSE, channel, stream)
            }
            EcmgMessage::StreamError {
                channel,
                stream,
                errors,
            } => check::push_errors(
                st(msg::STREAM_ERROR, channel, stream),
                errors,
                p::ERROR_STATUS,
                p::ERROR_INFORMATION,
            ),
            EcmgMessage::CwProvision(c) => {
                let mut m = st(msg::CW_PROVISION, &c.channel, &c.stream)
                    .with(p::CP_NUMBER, c.cp_number.to_be_bytes());
                if let Some(e) = &c.cw_encryption {
                    m = m.with(p::CW_ENCRYPTION, e.clone());
                }
                for x in &c.cp_cw {
                    let mut v = x.cp.to_be_bytes().to_vec();
                    v.extend_from_slice(&x.cw);
                    m = m.with(p::CP_CW_COMBINATION, v);
                }
                if let Some(d) = c.cp_duration {
                    m = m.with(p::CP_DURATION, d.to_be_bytes());
                }
                if let Some(a) = &c.access_criteria {
                    m = m.with(p::ACCESS_CRITERIA, a.clone());
                }
                m
            }
            EcmgMessage::EcmResponse {
                channel,
                stream,
                cp_number,
                datagram,
            } => st(msg::ECM_RESPONSE, channel, stream)
                .with(p::CP_NUMBER, cp_number.to_be_bytes())
                .with(p::ECM_DATAGRAM, datagram.clone()),
        }
    }
}
