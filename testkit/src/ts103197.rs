//! The test peers' side of DVB SimulCrypt (ETSI TS 103 197): the
//! message_type and parameter_type values, the 5-byte header
//! (protocol_version, message_type, message_length) and the
//! type-length-value parameters, written from the standard's tables.
//!
//! Deliberately not the `simulcrypt` crate: the SCS and MUX peers that
//! test the headend's ECMG and EMMG frame their bytes with these few lines
//! of their own, so a misreading of the standard in the daemon's codec
//! does not cancel out in its tests.

use std::io::{self, Read};

/// The ECMG⇔SCS interface (§5): message and parameter types, error_status.
pub mod ecmg {
    pub const CHANNEL_SETUP: u16 = 0x0001;
    pub const CHANNEL_TEST: u16 = 0x0002;
    pub const CHANNEL_STATUS: u16 = 0x0003;
    pub const CHANNEL_CLOSE: u16 = 0x0004;
    pub const CHANNEL_ERROR: u16 = 0x0005;
    pub const STREAM_SETUP: u16 = 0x0101;
    pub const STREAM_TEST: u16 = 0x0102;
    pub const STREAM_STATUS: u16 = 0x0103;
    pub const STREAM_CLOSE_REQUEST: u16 = 0x0104;
    pub const STREAM_CLOSE_RESPONSE: u16 = 0x0105;
    pub const STREAM_ERROR: u16 = 0x0106;
    pub const CW_PROVISION: u16 = 0x0201;
    pub const ECM_RESPONSE: u16 = 0x0202;

    pub const P_SUPER_CAS_ID: u16 = 0x0001;
    pub const P_SECTION_TSPKT_FLAG: u16 = 0x0002;
    pub const P_DELAY_START: u16 = 0x0003;
    pub const P_DELAY_STOP: u16 = 0x0004;
    pub const P_ECM_REP_PERIOD: u16 = 0x0007;
    pub const P_MAX_STREAMS: u16 = 0x0008;
    pub const P_MIN_CP_DURATION: u16 = 0x0009;
    pub const P_LEAD_CW: u16 = 0x000A;
    pub const P_CW_PER_MSG: u16 = 0x000B;
    pub const P_MAX_COMP_TIME: u16 = 0x000C;
    pub const P_ACCESS_CRITERIA: u16 = 0x000D;
    pub const P_ECM_CHANNEL_ID: u16 = 0x000E;
    pub const P_ECM_STREAM_ID: u16 = 0x000F;
    pub const P_NOMINAL_CP_DURATION: u16 = 0x0010;
    pub const P_ACCESS_CRITERIA_TRANSFER_MODE: u16 = 0x0011;
    pub const P_CP_NUMBER: u16 = 0x0012;
    pub const P_CP_DURATION: u16 = 0x0013;
    pub const P_CP_CW_COMBINATION: u16 = 0x0014;
    pub const P_ECM_DATAGRAM: u16 = 0x0015;
    pub const P_CW_ENCRYPTION: u16 = 0x0018;
    pub const P_ECM_ID: u16 = 0x0019;
    pub const P_ERROR_STATUS: u16 = 0x7000;
    pub const P_ERROR_INFORMATION: u16 = 0x7001;

    pub const E_INVALID_MESSAGE: u16 = 0x0001;
    pub const E_UNSUPPORTED_VERSION: u16 = 0x0002;
    pub const E_UNKNOWN_MESSAGE_TYPE: u16 = 0x0003;
    pub const E_MESSAGE_TOO_LONG: u16 = 0x0004;
    pub const E_UNKNOWN_SUPER_CAS_ID: u16 = 0x0005;
    pub const E_UNKNOWN_CHANNEL: u16 = 0x0006;
    pub const E_UNKNOWN_STREAM: u16 = 0x0007;
    pub const E_TOO_MANY_CHANNELS: u16 = 0x0008;
    pub const E_NOT_ENOUGH_CWS: u16 = 0x000B;
    pub const E_UNKNOWN_PARAMETER: u16 = 0x000E;
    pub const E_INCONSISTENT_LENGTH: u16 = 0x000F;
    pub const E_MISSING_PARAMETER: u16 = 0x0010;
    pub const E_INVALID_VALUE: u16 = 0x0011;
    pub const E_CHANNEL_ID_IN_USE: u16 = 0x0013;
    pub const E_STREAM_ID_IN_USE: u16 = 0x0014;
    pub const E_ECM_ID_IN_USE: u16 = 0x0015;
    pub const E_UNKNOWN_ERROR: u16 = 0x7000;
}

/// The EMMG⇔MUX interface (§6): message and parameter types, error_status.
pub mod emmg {
    pub const CHANNEL_SETUP: u16 = 0x0011;
    pub const CHANNEL_TEST: u16 = 0x0012;
    pub const CHANNEL_STATUS: u16 = 0x0013;
    pub const CHANNEL_CLOSE: u16 = 0x0014;
    pub const CHANNEL_ERROR: u16 = 0x0015;
    pub const STREAM_SETUP: u16 = 0x0111;
    pub const STREAM_TEST: u16 = 0x0112;
    pub const STREAM_STATUS: u16 = 0x0113;
    pub const STREAM_CLOSE_REQUEST: u16 = 0x0114;
    pub const STREAM_CLOSE_RESPONSE: u16 = 0x0115;
    pub const STREAM_ERROR: u16 = 0x0116;
    pub const STREAM_BW_REQUEST: u16 = 0x0117;
    pub const STREAM_BW_ALLOCATION: u16 = 0x0118;
    pub const DATA_PROVISION: u16 = 0x0211;

    pub const CLIENT_ID: u16 = 0x0001;
    pub const SECTION_TSPKT_FLAG: u16 = 0x0002;
    pub const DATA_CHANNEL_ID: u16 = 0x0003;
    pub const DATA_STREAM_ID: u16 = 0x0004;
    pub const DATAGRAM: u16 = 0x0005;
    pub const BANDWIDTH: u16 = 0x0006;
    pub const DATA_TYPE: u16 = 0x0007;
    pub const DATA_ID: u16 = 0x0008;
    pub const ERROR_STATUS: u16 = 0x7000;

    /// error_status: unknown client_id.
    pub const UNKNOWN_CLIENT_ID: u16 = 0x000E;
    /// error_status: exceeded bandwidth.
    pub const EXCEEDED_BANDWIDTH: u16 = 0x000F;
}

/// One message: its header fields and its parameters in order.
#[derive(Debug, Clone)]
pub struct Msg {
    pub version: u8,
    pub ty: u16,
    pub params: Vec<(u16, Vec<u8>)>,
}

impl Msg {
    /// The first parameter of this type.
    pub fn get(&self, ty: u16) -> Option<&[u8]> {
        self.params
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, v)| v.as_slice())
    }

    pub fn u16(&self, ty: u16) -> Option<u16> {
        self.get(ty)
            .filter(|v| v.len() == 2)
            .map(|v| u16::from_be_bytes([v[0], v[1]]))
    }

    pub fn u32(&self, ty: u16) -> Option<u32> {
        self.get(ty)
            .filter(|v| v.len() == 4)
            .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
    }

    /// Every parameter of this type, in order.
    pub fn all(&self, ty: u16) -> Vec<&[u8]> {
        self.params
            .iter()
            .filter(|(t, _)| *t == ty)
            .map(|(_, v)| v.as_slice())
            .collect()
    }
}

/// A message's bytes: header and parameters, in this protocol_version.
pub fn encode(version: u8, ty: u16, params: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in params {
        body.extend_from_slice(&t.to_be_bytes());
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
    }
    let mut out = vec![version];
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A version 3 message's bytes.
pub fn message(ty: u16, params: &[(u16, &[u8])]) -> Vec<u8> {
    encode(3, ty, params)
}

/// One whole message at the front of `buf`: it and its length; `None`
/// while it is incomplete, `Err` when the parameters do not fill the
/// message_length exactly.
pub fn decode(buf: &[u8]) -> Option<Result<(Msg, usize), String>> {
    if buf.len() < 5 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if buf.len() < 5 + len {
        return None;
    }
    let body = &buf[5..5 + len];
    let mut params = Vec::new();
    let mut at = 0;
    while at < len {
        if at + 4 > len {
            return Some(Err(format!("parameter header cut at {at}")));
        }
        let t = u16::from_be_bytes([body[at], body[at + 1]]);
        let l = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        if at + 4 + l > len {
            return Some(Err(format!("parameter 0x{t:04x} overruns")));
        }
        params.push((t, body[at + 4..at + 4 + l].to_vec()));
        at += 4 + l;
    }
    Some(Ok((
        Msg {
            version: buf[0],
            ty: u16::from_be_bytes([buf[1], buf[2]]),
            params,
        },
        5 + len,
    )))
}

/// Reads one whole message from a stream (a TCP connection). A message
/// whose parameters do not fill its length is `InvalidData`.
pub fn read(r: &mut impl Read) -> io::Result<Msg> {
    let mut buf = vec![0u8; 5];
    r.read_exact(&mut buf)?;
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    buf.resize(5 + len, 0);
    r.read_exact(&mut buf[5..])?;
    match decode(&buf) {
        Some(Ok((m, _))) => Ok(m),
        Some(Err(e)) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}
