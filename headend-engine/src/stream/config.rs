//! One channel's stream as the engine runs it: its input, output and
//! services, the CA PIDs and timing, and the checks it must pass before
//! it starts.

use thiserror::Error;
use ts::packet::NULL_PID;

/// The default ECM repetition interval.
pub const DEFAULT_ECM_INTERVAL_MS: u64 = 100;
/// The default EMM bandwidth, in bit/s of TS.
pub const DEFAULT_EMM_BITRATE: u64 = 100_000;
pub const DEFAULT_CAT_INTERVAL_MS: u64 = 500;
/// 7 × 188 = 1316 bytes: the usual TS-over-UDP datagram, under a 1500-byte
/// MTU.
pub const DEFAULT_PACKETS_PER_DATAGRAM: usize = 7;
pub const MAX_SERVICES: usize = 64;

/// Why a channel could not start or had to stop.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StreamError {
    #[error("channel {channel:?}: {field}: {reason}")]
    Config {
        channel: String,
        field: &'static str,
        reason: String,
    },
    #[error("bad URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot {what} {target}: {source}")]
    Io {
        what: &'static str,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("input {0} holds no TS packet")]
    NotTs(String),
    #[error("channel {0:?}: the stream thread panicked")]
    Panicked(String),
}

/// How EMM packets get their room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmmInsertion {
    /// Extra packets: the output's rate grows by the EMM bandwidth. For
    /// variable-rate input such as ffmpeg's, which has no null packets.
    #[default]
    AddRate,
    /// Only in place of null packets: a constant-rate multiplex keeps its
    /// rate, and EMMs get at most what the nulls leave.
    ReplaceNulls,
}

/// Whether UDP output is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pacing {
    /// Paced to UDP, as fast as possible to a file or stdout.
    #[default]
    Auto,
    Always,
    Never,
}

/// One service to scramble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceStream {
    /// The DVB service_id (program_number in the PAT).
    pub service_id: u16,
    pub ecm_pid: u16,
}

/// One channel's stream: its input, its output, and what to scramble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStreamConfig {
    /// For logs and errors.
    pub name: String,
    /// `udp://HOST:PORT`, `file://PATH`, a path, or `-`.
    pub input: String,
    pub output: String,
    /// Start a file input again when it ends.
    pub loop_input: bool,
    pub services: Vec<ServiceStream>,
    /// Programs of the input sent unscrambled, on purpose. Any other
    /// program that is not in `services` is dropped.
    pub clear_services: Vec<u16>,
    pub emm_pid: u16,
    pub ecm_interval_ms: u64,
    /// EMM bandwidth in bit/s of TS packets (0: no EMMs).
    pub emm_bitrate: u64,
    pub emm_insertion: EmmInsertion,
    pub cat_interval_ms: u64,
    pub packets_per_datagram: usize,
    pub pacing: Pacing,
    /// A paced sender that falls this far behind starts again from now
    /// instead of bursting to catch up.
    pub max_late_ms: u64,
    /// The rate the air clock assumes until the first PCR, and for a
    /// stream without any.
    pub fallback_bitrate: u64,
    /// The Unix time (ms) of the first packet, for the feed's clock;
    /// `None` for the wall clock at start.
    pub start_unix_ms: Option<u64>,
}

impl ChannelStreamConfig {
    /// A channel with the defaults and no service yet.
    pub fn new(
        name: impl Into<String>,
        input: impl Into<String>,
        output: impl Into<String>,
        emm_pid: u16,
    ) -> Self {
        ChannelStreamConfig {
            name: name.into(),
            input: input.into(),
            output: output.into(),
            loop_input: false,
            services: Vec::new(),
            clear_services: Vec::new(),
            emm_pid,
            ecm_interval_ms: DEFAULT_ECM_INTERVAL_MS,
            emm_bitrate: DEFAULT_EMM_BITRATE,
            emm_insertion: EmmInsertion::default(),
            cat_interval_ms: DEFAULT_CAT_INTERVAL_MS,
            packets_per_datagram: DEFAULT_PACKETS_PER_DATAGRAM,
            pacing: Pacing::default(),
            max_late_ms: 500,
            fallback_bitrate: 4_000_000,
            start_unix_ms: None,
        }
    }

    /// Adds a service to scramble.
    #[must_use]
    pub fn service(mut self, service_id: u16, ecm_pid: u16) -> Self {
        self.services.push(ServiceStream {
            service_id,
            ecm_pid,
        });
        self
    }

    /// A [`StreamError::Config`] for this channel's `field`.
    pub fn bad(&self, field: &'static str, reason: impl Into<String>) -> StreamError {
        StreamError::Config {
            channel: self.name.clone(),
            field,
            reason: reason.into(),
        }
    }

    /// Checks every field but `input` and `output`, whose URLs the code
    /// that opens them parses and checks; the error names the bad field.
    pub fn validate(&self) -> Result<(), StreamError> {
        let pid_ok = |pid: u16| (0x20..NULL_PID).contains(&pid);
        if !pid_ok(self.emm_pid) {
            return Err(self.bad(
                "emm_pid",
                format!("{:#06x} is not in 0x0020..=0x1FFE", self.emm_pid),
            ));
        }
        if self.services.len() > MAX_SERVICES {
            return Err(self.bad("services", format!("more than {MAX_SERVICES}")));
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.service_id == 0 {
                return Err(self.bad(
                    "service_id",
                    "0 is the NIT's entry in the PAT, not a service",
                ));
            }
            if !pid_ok(s.ecm_pid) || s.ecm_pid == self.emm_pid {
                return Err(self.bad(
                    "ecm_pid",
                    format!(
                        "{:#06x} must be in 0x0020..=0x1FFE and differ from the EMM PID",
                        s.ecm_pid
                    ),
                ));
            }
            for t in &self.services[..i] {
                if t.service_id == s.service_id {
                    return Err(self.bad("service_id", format!("{} twice", s.service_id)));
                }
                if t.ecm_pid == s.ecm_pid {
                    return Err(self.bad(
                        "ecm_pid",
                        format!("{:#06x} used by two services", s.ecm_pid),
                    ));
                }
            }
        }
        for (i, &c) in self.clear_services.iter().enumerate() {
            if c == 0 {
                return Err(self.bad(
                    "clear_services",
                    "0 is the NIT's entry in the PAT, not a service",
                ));
            }
            if self.services.iter().any(|s| s.service_id == c) {
                return Err(self.bad(
                    "clear_services",
                    format!("{c} is also a service to scramble; it cannot be both"),
                ));
            }
            if self.clear_services[..i].contains(&c) {
                return Err(self.bad("clear_services", format!("{c} twice")));
            }
        }
        if !(10..=10_000).contains(&self.ecm_interval_ms) {
            return Err(self.bad("ecm_interval_ms", "must be 10..=10000"));
        }
        if !(10..=10_000).contains(&self.cat_interval_ms) {
            return Err(self.bad("cat_interval_ms", "must be 10..=10000"));
        }
        if self.emm_bitrate > 100_000_000 {
            return Err(self.bad("emm_bitrate", "more than 100 Mbit/s"));
        }
        if !(1..=7).contains(&self.packets_per_datagram) {
            return Err(self.bad("packets_per_datagram", "must be 1..=7 (a 1500-byte MTU)"));
        }
        if !(10_000..=1_000_000_000).contains(&self.fallback_bitrate) {
            return Err(self.bad("fallback_bitrate", "must be 10 kbit/s..=1 Gbit/s"));
        }
        Ok(())
    }
}
