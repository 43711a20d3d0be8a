//! The EMMG⇔MUX interface (TS 103 197 §6): the EMM generator (EMMG, a
//! client) opens a channel and a stream on the multiplexer, asks for
//! bandwidth, and sends its EMMs in `data_provision` messages.

use crate::check::{self, many, one, opt, Table};
use crate::{ErrorEntry, Message, Violation, ViolationKind};

/// message_type values of this interface.
pub mod msg {
    /// EMMG → MUX: open a channel.
    pub const CHANNEL_SETUP: u16 = 0x0011;
    /// Either way: is the channel alive?
    pub const CHANNEL_TEST: u16 = 0x0012;
    /// Either way: the channel's parameters.
    pub const CHANNEL_STATUS: u16 = 0x0013;
    /// EMMG → MUX: close the channel.
    pub const CHANNEL_CLOSE: u16 = 0x0014;
    /// Either way: a fault on the channel.
    pub const CHANNEL_ERROR: u16 = 0x0015;
    /// EMMG → MUX: open a stream.
    pub const STREAM_SETUP: u16 = 0x0111;
    /// Either way: is the stream alive?
    pub const STREAM_TEST: u16 = 0x0112;
    /// Either way: the stream's parameters.
    pub const STREAM_STATUS: u16 = 0x0113;
    /// EMMG → MUX: close a stream.
    pub const STREAM_CLOSE_REQUEST: u16 = 0x0114;
    /// MUX → EMMG: the stream is closed.
    pub const STREAM_CLOSE_RESPONSE: u16 = 0x0115;
    /// Either way: a fault on a stream.
    pub const STREAM_ERROR: u16 = 0x0116;
    /// EMMG → MUX: ask for (or about) bandwidth.
    pub const STREAM_BW_REQUEST: u16 = 0x0117;
    /// MUX → EMMG: the bandwidth granted.
    pub const STREAM_BW_ALLOCATION: u16 = 0x0118;
    /// EMMG → MUX: EMMs to put on the air.
    pub const DATA_PROVISION: u16 = 0x0211;
}

/// parameter_type values of this interface.
pub mod param {
    /// uimsbf 4: CA_system_id (16 bits) and a client number (16 bits).
    pub const CLIENT_ID: u16 = 0x0001;
    /// 1: 0 = datagrams are sections, 1 = TS packets.
    pub const SECTION_TSPKT_FLAG: u16 = 0x0002;
    /// uimsbf 2.
    pub const DATA_CHANNEL_ID: u16 = 0x0003;
    /// uimsbf 2.
    pub const DATA_STREAM_ID: u16 = 0x0004;
    /// Variable: EMM sections or TS packets.
    pub const DATAGRAM: u16 = 0x0005;
    /// uimsbf 2, kbit/s.
    pub const BANDWIDTH: u16 = 0x0006;
    /// uimsbf 1: 0x00 EMM, 0x01 private data.
    pub const DATA_TYPE: u16 = 0x0007;
    /// uimsbf 2.
    pub const DATA_ID: u16 = 0x0008;
    /// uimsbf 2.
    pub const ERROR_STATUS: u16 = 0x7000;
    /// Variable.
    pub const ERROR_INFORMATION: u16 = 0x7001;
}

/// error_status values of this interface beyond the common ones.
pub mod status {
    pub use crate::common_status::*;
    /// No open stream has this data_stream_id.
    pub const UNKNOWN_DATA_STREAM_ID: u16 = 0x0005;
    /// No open channel has this data_channel_id.
    pub const UNKNOWN_DATA_CHANNEL_ID: u16 = 0x0006;
    /// The MUX's channel limit is reached.
    pub const TOO_MANY_CHANNELS: u16 = 0x0007;
    /// The channel's stream limit is reached.
    pub const TOO_MANY_STREAMS_ON_CHANNEL: u16 = 0x0008;
    /// The MUX's stream limit is reached.
    pub const TOO_MANY_STREAMS: u16 = 0x0009;
    /// A DVB parameter the message does not define.
    pub const UNKNOWN_PARAMETER_TYPE: u16 = 0x000A;
    /// A DVB parameter of the wrong length.
    pub const INCONSISTENT_LENGTH: u16 = 0x000B;
    /// A mandatory DVB parameter is absent.
    pub const MISSING_PARAMETER: u16 = 0x000C;
    /// A DVB parameter's value is out of range.
    pub const INVALID_VALUE: u16 = 0x000D;
    /// The client_id is not one the MUX knows.
    pub const UNKNOWN_CLIENT_ID: u16 = 0x000E;
    /// More data than the bandwidth allocated.
    pub const EXCEEDED_BANDWIDTH: u16 = 0x000F;
    /// The data_id is unknown.
    pub const UNKNOWN_DATA_ID: u16 = 0x0010;
    /// The data_channel_id is already open.
    pub const DATA_CHANNEL_ID_IN_USE: u16 = 0x0011;
    /// The data_stream_id is already open.
    pub const DATA_STREAM_ID_IN_USE: u16 = 0x0012;
    /// The data_id is already in use.
    pub const DATA_ID_IN_USE: u16 = 0x0013;
    /// The client_id is already connected.
    pub const CLIENT_ID_IN_USE: u16 = 0x0014;
}

/// data_type of an EMM stream.
pub const DATA_TYPE_EMM: u8 = 0x00;

use param as p;

const CLIENT: check::Slot = one(p::CLIENT_ID, "client_id", Some(4));
const CHANNEL: check::Slot = one(p::DATA_CHANNEL_ID, "data_channel_id", Some(2));
const STREAM: check::Slot = one(p::DATA_STREAM_ID, "data_stream_id", Some(2));
const FLAG: check::Slot = one(p::SECTION_TSPKT_FLAG, "section_TSpkt_flag", Some(1));
const DATA_ID: check::Slot = one(p::DATA_ID, "data_id", Some(2));
const DATA_TYPE: check::Slot = one(p::DATA_TYPE, "data_type", Some(1));
const BW: check::Slot = opt(p::BANDWIDTH, "bandwidth", Some(2));
const STATUS: check::Slot = many(p::ERROR_STATUS, "error_status", Some(2), 1);
const INFO: check::Slot = many(p::ERROR_INFORMATION, "error_information", None, 0);

static TABLES: [(u16, Table); 14] = [
    (
        msg::CHANNEL_SETUP,
        Table {
            name: "channel_setup",
            slots: &[CLIENT, CHANNEL, FLAG],
        },
    ),
    (
        msg::CHANNEL_TEST,
        Table {
            name: "channel_test",
            slots: &[CLIENT, CHANNEL],
        },
    ),
    (
        msg::CHANNEL_STATUS,
        Table {
            name: "channel_status",
            slots: &[CLIENT, CHANNEL, FLAG],
        },
    ),
    (
        msg::CHANNEL_CLOSE,
        Table {
            name: "channel_close",
            slots: &[CLIENT, CHANNEL],
        },
    ),
    (
        msg::CHANNEL_ERROR,
        Table {
            name: "channel_error",
            slots: &[CLIENT, CHANNEL, STATUS, INFO],
        },
    ),
    (
        msg::STREAM_SETUP,
        Table {
            name: "stream_setup",
            slots: &[CLIENT, CHANNEL, STREAM, DATA_ID, DATA_TYPE],
        },
    ),
    (
        msg::STREAM_TEST,
        Table {
            name: "stream_test",
            slots: &[CLIENT, CHANNEL, STREAM],
        },
    ),
    (
        msg::STREAM_STATUS,
        Table {
            name: "stream_status",
            slots: &[CLIENT, CHANNEL, STREAM, DATA_ID, DATA_TYPE],
        },
    ),
    (
        msg::STREAM_CLOSE_REQUEST,
        Table {
            name: "stream_close_request",
            slots: &[CLIENT, CHANNEL, STREAM],
        },
    ),
    (
        msg::STREAM_CLOSE_RESPONSE,
        Table {
            name: "stream_close_response",
            slots: &[CLIENT, CHANNEL, STREAM],
        },
    ),
    (
        msg::STREAM_ERROR,
        Table {
            name: "stream_error",
            slots: &[CLIENT, CHANNEL, STREAM, STATUS, INFO],
        },
    ),
    (
        msg::STREAM_BW_REQUEST,
        Table {
            name: "stream_BW_request",
            slots: &[CLIENT, CHANNEL, STREAM, BW],
        },
    ),
    (
        msg::STREAM_BW_ALLOCATION,
        Table {
            name: "stream_BW_allocation",
            slots: &[CLIENT, CHANNEL, STREAM, BW],
        },
    ),
    (
        msg::DATA_PROVISION,
        Table {
            name: "data_provision",
            slots: &[
                CLIENT,
                // Over UDP the channel is not implied by a connection, so
                // data_channel_id is carried there; over TCP it may be too.
                opt(p::DATA_CHANNEL_ID, "data_channel_id", Some(2)),
                STREAM,
                DATA_ID,
                many(p::DATAGRAM, "datagram", None, 1),
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

/// A typed message of the EMMG⇔MUX interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmmgMessage {
    /// channel_setup.
    ChannelSetup {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
        /// 0: sections; 1: TS packets.
        section_tspkt_flag: u8,
    },
    /// channel_test.
    ChannelTest {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
    },
    /// channel_status.
    ChannelStatus {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
        /// 0: sections; 1: TS packets.
        section_tspkt_flag: u8,
    },
    /// channel_close.
    ChannelClose {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
    },
    /// channel_error.
    ChannelError {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
        /// The faults.
        errors: Vec<ErrorEntry>,
    },
    /// stream_setup.
    StreamSetup {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
        /// data_stream_id.
        stream: u16,
        /// data_id.
        data_id: u16,
        /// data_type.
        data_type: u8,
    },
    /// stream_test.
    StreamTest {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
        /// data_stream_id.
        stream: u16,
    },
    /// stream_status.
    StreamStatus {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
        /// data_stream_id.
        stream: u16,
        /// data_id.
        data_id: u16,
        /// data_type.
        data_type: u8,
    },
    /// stream_close_request.
    StreamCloseRequest {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
        /// data_stream_id.
        stream: u16,
    },
    /// stream_close_response.
    StreamCloseResponse {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
        /// data_stream_id.
        stream: u16,
    },
    /// stream_error.
    StreamError {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
        /// data_stream_id.
        stream: u16,
        /// The faults.
        errors: Vec<ErrorEntry>,
    },
    /// stream_BW_request.
    StreamBwRequest {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
        /// data_stream_id.
        stream: u16,
        /// kbit/s asked for; `None` asks what is allocated.
        bandwidth: Option<u16>,
    },
    /// stream_BW_allocation.
    StreamBwAllocation {
        /// client_id.
        client_id: u32,
        /// data_channel_id.
        channel: u16,
        /// data_stream_id.
        stream: u16,
        /// kbit/s granted; `None` when the MUX does not say.
        bandwidth: Option<u16>,
    },
    /// data_provision.
    DataProvision {
        /// client_id.
        client_id: u32,
        /// data_channel_id, if carried.
        channel: Option<u16>,
        /// data_stream_id.
        stream: u16,
        /// data_id.
        data_id: u16,
        /// The datagrams: EMM sections or TS packets.
        datagrams: Vec<Vec<u8>>,
    },
}

/// The client_id, data_channel_id and data_stream_id a message names, as
/// far as they can be read: what an error answer is addressed to.
pub fn ids(message: &Message) -> (Option<u32>, Option<u16>, Option<u16>) {
    let two = |ty| {
        check::first(message, ty)
            .and_then(|p| <[u8; 2]>::try_from(p.value.as_slice()).ok())
            .map(u16::from_be_bytes)
    };
    let client = check::first(message, p::CLIENT_ID)
        .and_then(|p| <[u8; 4]>::try_from(p.value.as_slice()).ok())
        .map(u32::from_be_bytes);
    (client, two(p::DATA_CHANNEL_ID), two(p::DATA_STREAM_ID))
}

impl EmmgMessage {
    /// The typed message, or the fault the standard names for it.
    pub fn decode(m: &Message) -> Result<EmmgMessage, Violation> {
        check::check_version(m)?;
        let table = check::table_for(&TABLES, m, "EMMG<=>MUX")?;
        check::check(m, table)?;
        let client_id = check::u32_of(m, p::CLIENT_ID);
        let channel = check::u16_of(m, p::DATA_CHANNEL_ID);
        let stream = check::u16_of(m, p::DATA_STREAM_ID);
        let flag = || {
            let f = check::u8_of(m, p::SECTION_TSPKT_FLAG);
            if f > 1 {
                Err(Violation::new(
                    ViolationKind::InvalidValue,
                    Some(p::SECTION_TSPKT_FLAG),
                    format!("section_TSpkt_flag is {f}; it is 0 (sections) or 1 (TS packets)"),
                ))
            } else {
                Ok(f)
            }
        };
        Ok(match m.message_type {
            msg::CHANNEL_SETUP => EmmgMessage::ChannelSetup {
                client_id,
                channel,
                section_tspkt_flag: flag()?,
            },
            msg::CHANNEL_TEST => EmmgMessage::ChannelTest { client_id, channel },
            msg::CHANNEL_STATUS => EmmgMessage::ChannelStatus {
                client_id,
                channel,
                section_tspkt_flag: flag()?,
            },
            msg::CHANNEL_CLOSE => EmmgMessage::ChannelClose { client_id, channel },
            msg::CHANNEL_ERROR => EmmgMessage::ChannelError {
                client_id,
                channel,
                errors: check::errors_of(m, p::ERROR_STATUS, p::ERROR_INFORMATION),
            },
            msg::STREAM_SETUP => EmmgMessage::StreamSetup {
                client_id,
                channel,
                stream,
                data_id: check::u16_of(m, p::DATA_ID),
                data_type: check::u8_of(m, p::DATA_TYPE),
            },
            msg::STREAM_TEST => EmmgMessage::StreamTest {
                client_id,
                channel,
                stream,
            },
            msg::STREAM_STATUS => EmmgMessage::StreamStatus {
                client_id,
                channel,
                stream,
                data_id: check::u16_of(m, p::DATA_ID),
                data_type: check::u8_of(m, p::DATA_TYPE),
            },
            msg::STREAM_CLOSE_REQUEST => EmmgMessage::StreamCloseRequest {
                client_id,
                channel,
                stream,
            },
            msg::STREAM_CLOSE_RESPONSE => EmmgMessage::StreamCloseResponse {
                client_id,
                channel,
                stream,
            },
            msg::STREAM_ERROR => EmmgMessage::StreamError {
                client_id,
                channel,
                stream,
                errors: check::errors_of(m, p::ERROR_STATUS, p::ERROR_INFORMATION),
            },
            msg::STREAM_BW_REQUEST => EmmgMessage::StreamBwRequest {
                client_id,
                channel,
                stream,
                bandwidth: check::opt_u16_of(m, p::BANDWIDTH),
            },
            msg::STREAM_BW_ALLOCATION => EmmgMessage::StreamBwAllocation {
                client_id,
                channel,
                stream,
                bandwidth: check::opt_u16_of(m, p::BANDWIDTH),
            },
            msg::DATA_PROVISION => EmmgMessage::DataProvision {
                client_id,
                channel: check::opt_u16_of(m, p::DATA_CHANNEL_ID),
                stream,
                data_id: check::u16_of(m, p::DATA_ID),
                datagrams: m.all(p::DATAGRAM).map(|d| d.value.clone()).collect(),
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
        let ch = |t: u16, client_id: &u32, channel: &u16| {
            Message::new(t)
                .with(p::CLIENT_ID, client_id.to_be_bytes())
                .with(p::DATA_CHANNEL_ID, channel.to_be_bytes())
        };
        let st = |t: u16, client_id: &u32, channel: &u16, stream: &u16| {
            ch(t, client_id, channel).with(p::DATA_STREAM_ID, stream.to_be_bytes())
        };
        let bw = |m: Message, bandwidth: &Option<u16>| match bandwidth {
            Some(b) => m.with(p::BANDWIDTH, b.to_be_bytes()),
            None => m,
        };
        match self {
            EmmgMessage::ChannelSetup {
                client_id,
                channel,
                section_tspkt_flag,
            } => ch(msg::CHANNEL_SETUP, client_id, channel)
                .with(p::SECTION_TSPKT_FLAG, [*section_tspkt_flag]),
            EmmgMessage::ChannelTest { client_id, channel } => {
                ch(msg::CHANNEL_TEST, client_id, channel)
            }
            EmmgMessage::ChannelStatus {
                client_id,
                channel,
                section_tspkt_flag,
            } => ch(msg::CHANNEL_STATUS, client_id, channel)
                .with(p::SECTION_TSPKT_FLAG, [*section_tspkt_flag]),
            EmmgMessage::ChannelClose { client_id, channel } => {
                ch(msg::CHANNEL_CLOSE, client_id, channel)
            }
            EmmgMessage::ChannelError {
                client_id,
                channel,
                errors,
            } => check::push_errors(
                ch(msg::CHANNEL_ERROR, client_id, channel),
                errors,
                p::ERROR_STATUS,
                p::ERROR_INFORMATION,
            ),
            EmmgMessage::StreamSetup {
                client_id,
                channel,
                stream,
                data_id,
                data_type,
            } => st(msg::STREAM_SETUP, client_id, channel, stream)
                .with(p::DATA_ID, data_id.to_be_bytes())
                .with(p::DATA_TYPE, [*data_type]),
            EmmgMessage::StreamTest {
                client_id,
                channel,
                stream,
            } => st(msg::STREAM_TEST, client_id, channel, stream),
            EmmgMessage::StreamStatus {
                client_id,
                channel,
                stream,
                data_id,
                data_type,
            } => st(msg::STREAM_STATUS, client_id, channel, stream)
                .with(p::DATA_ID, data_id.to_be_bytes())
                .with(p::DATA_TYPE, [*data_type]),
            EmmgMessage::StreamCloseRequest {
                client_id,
                channel,
                stream,
            } => st(msg::STREAM_CLOSE_REQUEST, client_id, channel, stream),
            EmmgMessage::StreamCloseResponse {
                client_id,
                channel,
                stream,
            } => st(msg::STREAM_CLOSE_RESPONSE, client_id, channel, stream),
            EmmgMessage::StreamError {
                client_id,
                channel,
                stream,
                errors,
            } => check::push_errors(
                st(msg::STREAM_ERROR, client_id, channel, stream),
                errors,
                p::ERROR_STATUS,
                p::ERROR_INFORMATION,
            ),
            EmmgMessage::StreamBwRequest {
                client_id,
                channel,
                stream,
                bandwidth,
            } => bw(
                st(msg::STREAM_BW_REQUEST, client_id, channel, stream),
                bandwidth,
            ),
            EmmgMessage::StreamBwAllocation {
                client_id,
                channel,
                stream,
                bandwidth,
            } => bw(
                st(msg::STREAM_BW_ALLOCATION, client_id, channel, stream),
                bandwidth,
            ),
            EmmgMessage::DataProvision {
                client_id,
                channel,
                stream,
                data_id,
                datagrams,
            } => {
                let mut m =
                    Message::new(msg::DATA_PROVISION).with(p::CLIENT_ID, client_id.to_be_bytes());
                if let Some(c) = channel {
                    m = m.with(p::DATA_CHANNEL_ID, c.to_be_bytes());
                }
                m = m
                    .with(p::DATA_STREAM_ID, stream.to_be_bytes())
                    .with(p::DATA_ID, data_id.to_be_bytes());
                for d in datagrams {
                    m = m.with(p::DATAGRAM, d.clone());
                }
                m
            }
        }
    }
}
