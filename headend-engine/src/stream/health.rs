//! A channel's health as an operator needs it: whether its input is
//! alive, and for each protected service whether it is on the air and, if
//! not, why ([`Withheld`]). The headend's `ChannelHandle::health` reads
//! it from any thread at any time.

use serde::Serialize;
use std::collections::BTreeMap;

/// After this long without an input packet, the input counts as silent
/// and every service as withheld for [`Withheld::NoInput`].
pub const INPUT_SILENCE_MS: u64 = 1_500;

/// Why a protected service is not on the air. Its packets are dropped, it
/// is not in the PAT and its PMT is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Withheld {
    /// Nothing read from the input yet, or the input is silent.
    NoInput,
    /// No PAT seen yet.
    NoPat,
    /// The PAT does not list the configured service_id.
    ServiceMissing,
    /// Its PMT does not parse, or has not come yet.
    PmtUnparsable,
    /// A component cannot be scrambled (already scrambled input, a
    /// component on a reserved PID).
    Unscramblable,
    /// No crypto period (control word and ECM) from the CA side.
    NoControlWord,
}

impl Withheld {
    /// Every cause, in order.
    pub const ALL: [Withheld; 6] = [
        Withheld::NoInput,
        Withheld::NoPat,
        Withheld::ServiceMissing,
        Withheld::PmtUnparsable,
        Withheld::Unscramblable,
        Withheld::NoControlWord,
    ];

    /// The snake_case name, as in JSON and as a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Withheld::NoInput => "no_input",
            Withheld::NoPat => "no_pat",
            Withheld::ServiceMissing => "service_missing",
            Withheld::PmtUnparsable => "pmt_unparsable",
            Withheld::Unscramblable => "unscramblable",
            Withheld::NoControlWord => "no_control_word",
        }
    }

    /// A one-line hint for the operator.
    pub fn fix(&self) -> &'static str {
        match self {
            Withheld::NoInput => "check that the encoder sends to the channel's input",
            Withheld::NoPat => {
                "the input carries no PAT: feed an MPEG-TS with its PSI (ffmpeg -f mpegts does)"
            }
            Withheld::ServiceMissing => {
                "set the channel's service_id to one of the input's programs"
            }
            Withheld::PmtUnparsable => {
                "the service's PMT is missing or malformed: check the encoder's PSI"
            }
            Withheld::Unscramblable => {
                "feed a clear input with every component on a PID in 0x0020..=0x1FFE"
            }
            Withheld::NoControlWord => {
                "check that the channel's product exists and the daemon publishes its ECMs"
            }
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One protected service of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceHealth {
    pub service_id: u16,
    /// Being scrambled and sent right now.
    pub on_air: bool,
    /// Why not, when not on the air.
    pub withheld: Option<Withheld>,
    /// What the cause is about, e.g. "the input has programs 1, 2".
    pub detail: Option<String>,
    /// Its packets sent scrambled.
    pub scrambled_packets: u64,
    /// Its packets that the last-line check found clear on the way out
    /// and dropped. Always 0 unless the engine has a bug: alert on it.
    pub clear_packets: u64,
    /// Its packets dropped, by cause.
    pub withheld_packets: BTreeMap<Withheld, u64>,
}

impl ServiceHealth {
    /// A service that nothing has been read for yet.
    pub fn new(service_id: u16) -> Self {
        ServiceHealth {
            service_id,
            on_air: false,
            withheld: Some(Withheld::NoInput),
            detail: Some("nothing read from the input yet".to_owned()),
            scrambled_packets: 0,
            clear_packets: 0,
            withheld_packets: BTreeMap::new(),
        }
    }
}

/// A channel's input and services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct ChannelHealth {
    /// Unix time (ms) when the channel started.
    pub started_unix_ms: u64,
    pub input_packets: u64,
    pub input_bytes: u64,
    /// Over the last second or two.
    pub input_bitrate_bps: u64,
    /// Wall clock of the last input packet.
    pub last_input_unix_ms: Option<u64>,
    /// Continuity counter jumps in the input: packets lost upstream.
    pub input_cc_errors: u64,
    pub output_packets: u64,
    pub output_errors: u64,
    /// Packets of the whole channel that the last-line check dropped
    /// because they were clear on a PID that must not carry clear
    /// content (the services' `clear_packets`, and any other PID's).
    /// Always 0 unless the engine has a bug.
    pub clear_packets: u64,
    /// The services the channel scrambles.
    pub services: Vec<ServiceHealth>,
}

impl ChannelHealth {
    /// Whether every protected service is on the air.
    pub fn all_on_air(&self) -> bool {
        self.services.iter().all(|s| s.on_air)
    }

    /// Milliseconds since the last input packet (since the start if none)
    /// at `now_unix_ms`.
    pub fn input_silence_ms(&self, now_unix_ms: u64) -> u64 {
        now_unix_ms.saturating_sub(self.last_input_unix_ms.unwrap_or(self.started_unix_ms))
    }

    /// Marks every service withheld for [`Withheld::NoInput`] when the
    /// input has been silent for [`INPUT_SILENCE_MS`] at `now_unix_ms`.
    pub fn apply_silence(&mut self, now_unix_ms: u64) {
        if self.input_silence_ms(now_unix_ms) < INPUT_SILENCE_MS {
            return;
        }
        for s in &mut self.services {
            // Whatever held it before, silence is the first thing to fix.
            s.on_air = false;
            s.withheld = Some(Withheld::NoInput);
            s.detail = Some(match self.last_input_unix_ms {
                Some(t) => format!(
                    "no input for {:.1} s",
                    now_unix_ms.saturating_sub(t) as f64 / 1000.0
                ),
                None => "nothing read from the input yet".to_owned(),
            });
        }
    }
}
