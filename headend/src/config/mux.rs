//! `[[simulcrypt.mux]]`: the third-party multiplexers the EMMG client
//! feeds with the EMM carousel (ETSI TS 103 197, EMMG⇔MUX), one table
//! each. See `docs/OPERATIONS.md`, "SimulCrypt: EMMs to a third-party
//! MUX".

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;

/// The `[simulcrypt]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulcryptConfig {
    /// The MUXes that get the EMM carousel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mux: Vec<MuxConfig>,
    /// The ECMG for third-party scramblers' SCSs; absent: no ECMG
    /// (`super::ecmg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecmg: Option<super::EcmgConfig>,
}

/// What a datagram of `data_provision` holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Datagrams {
    /// Whole EMM sections (section_TSpkt_flag 0): the MUX packetizes them.
    #[default]
    Sections,
    /// TS packets (section_TSpkt_flag 1) on `ts_pid`, which the MUX may
    /// rewrite.
    Ts,
}

/// How `data_provision` travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// On the channel's TCP connection.
    #[default]
    Tcp,
    /// In UDP datagrams to `udp_address`.
    Udp,
}

fn default_id() -> u16 {
    1
}
fn default_bandwidth() -> u16 {
    100
}
fn default_ts_pid() -> u16 {
    0x1F1
}

/// One MUX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MuxConfig {
    /// Its name in `headend status`, the logs and the metrics' `mux`
    /// label; the address if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The MUX's EMMG port (TCP).
    pub address: SocketAddr,
    /// client_id: CA_system_id (0xF10D) in the high 16 bits and a number
    /// the MUX knows this EMMG by; by default the table's position from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<u32>,
    #[serde(default = "default_id")]
    pub data_channel_id: u16,
    #[serde(default = "default_id")]
    pub data_stream_id: u16,
    #[serde(default = "default_id")]
    pub data_id: u16,
    #[serde(default)]
    pub datagrams: Datagrams,
    /// The PID of the TS packets when `datagrams = "ts"`.
    #[serde(default = "default_ts_pid")]
    pub ts_pid: u16,
    #[serde(default)]
    pub data_provision: Transport,
    /// The MUX's UDP data port, with `data_provision = "udp"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_address: Option<SocketAddr>,
    /// The bandwidth to ask for, kbit/s of TS; the EMMs are paced to what
    /// the MUX allocates, never more than this.
    #[serde(default = "default_bandwidth")]
    pub bandwidth_kbps: u16,
}

impl MuxConfig {
    /// The MUX at `address` with every default.
    pub fn new(address: SocketAddr) -> MuxConfig {
        MuxConfig {
            name: None,
            address,
            client_id: None,
            data_channel_id: 1,
            data_stream_id: 1,
            data_id: 1,
            datagrams: Datagrams::Sections,
            ts_pid: default_ts_pid(),
            data_provision: Transport::Tcp,
            udp_address: None,
            bandwidth_kbps: default_bandwidth(),
        }
    }

    /// Its name: `name`, or the address.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.address.to_string())
    }

    /// Its client_id, the default for the `index`th table (from 0).
    pub fn client_id_at(&self, index: usize) -> u32 {
        self.client_id
            .unwrap_or((u32::from(ts::psi::CA_SYSTEM_ID) << 16) | ((index as u32 + 1) & 0xFFFF))
    }
}

/// A refused `[[simulcrypt.mux]]` table: the field and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MuxProblem {
    pub field: String,
    pub message: String,
}

impl SimulcryptConfig {
    /// No SimulCrypt peer at all.
    pub fn is_empty(&self) -> bool {
        self.mux.is_empty() && self.ecmg.is_none()
    }

    /// Checks every MUX table: ranges, names, and what goes together.
    pub fn validate(&self) -> Result<(), MuxProblem> {
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        for (i, m) in self.mux.iter().enumerate() {
            let bad = |field: &str, message: String| MuxProblem {
                field: format!("simulcrypt.mux[{i}].{field}"),
                message,
            };
            let label = m.label();
            if label.is_empty() || label.len() > 64 || label.chars().any(char::is_control) {
                return Err(bad("name", "must be 1 to 64 printable characters".into()));
            }
            if !names.insert(label.clone()) {
                return Err(bad(
                    "name",
                    format!("{label:?} names two MUXes; give each its own name"),
                ));
            }
            if m.address.port() == 0 {
                return Err(bad("address", "needs the MUX's port".into()));
            }
            if m.bandwidth_kbps == 0 {
                return Err(bad(
                    "bandwidth_kbps",
                    "must be at least 1 (kbit/s of TS)".into(),
                ));
            }
            if m.datagrams == Datagrams::Ts && !super::valid_pid(m.ts_pid) {
                return Err(bad(
                    "ts_pid",
                    format!(
                        "0x{:04X} cannot carry EMMs; pick a PID from 0x0020 to 0x1FFE",
                        m.ts_pid
                    ),
                ));
            }
            match (m.data_provision, m.udp_address) {
                (Transport::Udp, None) => {
                    return Err(bad(
                        "udp_address",
                        "is needed with data_provision = \"udp\": the MUX's UDP data port".into(),
                    ))
                }
                (Transport::Udp, Some(a)) if a.port() == 0 => {
                    return Err(bad("udp_address", "needs the MUX's UDP port".into()))
                }
                (Transport::Tcp, Some(_)) => return Err(bad(
                    "udp_address",
                    "is only used with data_provision = \"udp\"; remove it or set data_provision"
                        .into(),
                )),
                _ => {}
            }
            let id = m.client_id_at(i);
            if !ids.insert((m.address, id, m.data_channel_id)) {
                return Err(bad(
                    "data_channel_id",
                    format!(
                        "client_id 0x{id:08X} already opens data_channel_id {} on {}; give this table another",
                        m.data_channel_id, m.address
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SimulcryptConfig, String> {
        let c: SimulcryptConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()
            .map_err(|p| format!("{}: {}", p.field, p.message))?;
        Ok(c)
    }

    #[test]
    fn defaults_and_client_ids() {
        let c = parse("[[mux]]\naddress = \"127.0.0.1:7600\"\n[[mux]]\naddress = \"127.0.0.1:7601\"\nclient_id = 0xF10D0009\n").unwrap();
        assert_eq!(c.mux[0], MuxConfig::new("127.0.0.1:7600".parse().unwrap()));
        assert_eq!(c.mux[0].client_id_at(0), 0xF10D_0001);
        assert_eq!(c.mux[1].client_id_at(1), 0xF10D_0009);
        assert_eq!(c.mux[0].label(), "127.0.0.1:7600");
    }

    #[test]
    fn refusals_name_the_field_and_the_fix() {
        for (text, field) in [
            ("[[mux]]\naddress = \"127.0.0.1:7600\"\ndata_provision = \"udp\"\n", "mux[0].udp_address"),
            ("[[mux]]\naddress = \"127.0.0.1:7600\"\nudp_address = \"127.0.0.1:7601\"\n", "mux[0].udp_address"),
            ("[[mux]]\naddress = \"127.0.0.1:7600\"\nbandwidth_kbps = 0\n", "mux[0].bandwidth_kbps"),
            ("[[mux]]\naddress = \"127.0.0.1:7600\"\ndatagrams = \"ts\"\nts_pid = 1\n", "mux[0].ts_pid"),
            ("[[mux]]\naddress = \"127.0.0.1:0\"\n", "mux[0].address"),
            ("[[mux]]\naddress = \"127.0.0.1:7600\"\nname = \"a\"\n[[mux]]\naddress = \"127.0.0.1:7601\"\nname = \"a\"\n", "mux[1].name"),
            ("[[mux]]\naddress = \"127.0.0.1:7600\"\nclient_id = 5\n[[mux]]\naddress = \"127.0.0.1:7600\"\nclient_id = 5\nname = \"b\"\n", "mux[1].data_channel_id"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(field), "{text}: {e}");
        }
        let e = parse("[[mux]]\naddress = \"127.0.0.1:7600\"\ndatagrams = \"pes\"\n").unwrap_err();
        assert!(e.contains("datagrams"), "{e}");
    }
}
