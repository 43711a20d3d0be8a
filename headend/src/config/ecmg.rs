//! `[simulcrypt.ecmg]`: the ECM generator a third-party scrambler (the SCS
//! of DVB SimulCrypt, ETSI TS 103 197) connects to. Off unless the section
//! is present; on loopback by default.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The ECMG's default address (loopback: put it on another interface only
/// on the headend's private network).
pub const DEFAULT_ECMG_PORT: u16 = 7482;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], DEFAULT_ECMG_PORT))
}
fn default_ecm_rep_period_ms() -> u16 {
    100
}
fn default_min_cp_duration_ms() -> u32 {
    1000
}
fn default_max_comp_time_ms() -> u16 {
    100
}
fn default_max_streams() -> u16 {
    1000
}
fn default_max_connections() -> u32 {
    256
}
fn default_idle_timeout_secs() -> u64 {
    120
}
fn default_write_timeout_ms() -> u64 {
    5000
}

/// `[simulcrypt.ecmg]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcmgConfig {
    /// The TCP address the SCSs connect to.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The low 16 bits of the Super_CAS_id an SCS must name in
    /// channel_setup (the high 16 are Iodoform's CA_system_id, 0xF10D).
    #[serde(default)]
    pub ca_subsystem_id: u16,
    /// ECM_rep_period announced in channel_status: how often the SCS's MUX
    /// repeats an ECM, ms.
    #[serde(default = "default_ecm_rep_period_ms")]
    pub ecm_rep_period_ms: u16,
    /// delay_start announced in channel_status, ms (signed).
    #[serde(default)]
    pub delay_start_ms: i16,
    /// delay_stop announced in channel_status, ms (signed).
    #[serde(default)]
    pub delay_stop_ms: i16,
    /// min_CP_duration announced in channel_status, ms (a multiple of 100).
    #[serde(default = "default_min_cp_duration_ms")]
    pub min_cp_duration_ms: u32,
    /// max_comp_time announced in channel_status, ms.
    #[serde(default = "default_max_comp_time_ms")]
    pub max_comp_time_ms: u16,
    /// max_streams per channel, announced in channel_status and enforced.
    #[serde(default = "default_max_streams")]
    pub max_streams: u16,
    /// SCS connections served at once; one more is closed at once (logged).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// A connection that sends nothing for this long is closed (an SCS
    /// sends channel_test to keep an idle channel).
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// A connection whose SCS does not take an answer within this long is
    /// closed: a stalled SCS holds nothing but its own connection.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
}

impl Default for EcmgConfig {
    fn default() -> Self {
        EcmgConfig {
            listen: default_listen(),
            ca_subsystem_id: 0,
            ecm_rep_period_ms: default_ecm_rep_period_ms(),
            delay_start_ms: 0,
            delay_stop_ms: 0,
            min_cp_duration_ms: default_min_cp_duration_ms(),
            max_comp_time_ms: default_max_comp_time_ms(),
            max_streams: default_max_streams(),
            max_connections: default_max_connections(),
            idle_timeout_secs: default_idle_timeout_secs(),
            write_timeout_ms: default_write_timeout_ms(),
        }
    }
}

impl EcmgConfig {
    /// The range checks: the field at fault and what to give instead.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.ecm_rep_period_ms == 0 {
            return Err((
                "ecm_rep_period_ms",
                "must be at least 1 (100 is usual)".into(),
            ));
        }
        if self.min_cp_duration_ms < 100
            || self.min_cp_duration_ms % 100 != 0
            || self.min_cp_duration_ms > 6_553_500
        {
            return Err((
                "min_cp_duration_ms",
                format!(
                    "{} is not a multiple of 100 ms in 100..=6553500 (SimulCrypt counts it in 100 ms units), e.g. 1000",
                    self.min_cp_duration_ms
                ),
            ));
        }
        if self.max_comp_time_ms == 0 {
            return Err(("max_comp_time_ms", "must be at least 1, e.g. 100".into()));
        }
        if self.max_streams == 0 {
            return Err(("max_streams", "must be at least 1, e.g. 1000".into()));
        }
        if self.max_connections == 0 {
            return Err(("max_connections", "must be at least 1, e.g. 256".into()));
        }
        if self.idle_timeout_secs < 10 {
            return Err((
                "idle_timeout_secs",
                format!(
                    "{} s would drop SCSs between their channel_tests: give at least 10, e.g. 120",
                    self.idle_timeout_secs
                ),
            ));
        }
        if self.write_timeout_ms < 100 {
            return Err(("write_timeout_ms", "must be at least 100, e.g. 5000".into()));
        }
        Ok(())
    }
}

/// Who scrambles a channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scrambler {
    /// The headend's own multiplexer: input, scrambling, ECM and EMM
    /// insertion, output.
    #[default]
    Mux,
    /// A third-party scrambler: the headend only makes the ECMs, for the
    /// control words an SCS sends its ECMG (`[simulcrypt.ecmg]`).
    Simulcrypt,
}

impl Scrambler {
    pub fn is_mux(&self) -> bool {
        *self == Scrambler::Mux
    }
}
