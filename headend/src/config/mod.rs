//! `headend.toml`: where the daemon listens, where its files are, and its
//! timing. Relative paths are relative to the config file's folder.
//!
//! Loading validates every field and names the bad one in its error, so
//! that `headend run` can exit 64 with a message an operator can act on.
//! The config holds no secret: keys and the token live in their own 0600
//! files, which it only names.
//!
//! The channel checks, shared by headend.toml, the API and the supervisor,
//! are in `channels`.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod channels;
mod ecmg;
mod mux;
pub use channels::{
    check_channel, check_channel_fields, parse_input, parse_output, valid_pid, ChannelProblem,
    ChannelSpec, InputUrl, OutputUrl, MAX_CLEAR_SERVICES, MAX_URL,
};
pub use ecmg::{EcmgConfig, Scrambler, DEFAULT_ECMG_PORT};
pub use mux::{Datagrams, MuxConfig, MuxProblem, SimulcryptConfig, Transport};

/// The default admin API port.
pub const DEFAULT_PORT: u16 = 7480;
pub const DEFAULT_CRYPTO_PERIOD_MS: u64 = 10_000;
pub const MIN_CRYPTO_PERIOD_MS: u64 = 100;
/// 30 days.
pub const DEFAULT_KEY_RENEWAL_SECS: u64 = 30 * 86_400;
pub const DEFAULT_EMM_CYCLE_MS: u64 = 60_000;
pub const MIN_EMM_CYCLE_MS: u64 = 100;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))
}
fn default_operator_id() -> u32 {
    1
}
fn default_database() -> PathBuf {
    "headend.db".into()
}
fn default_master_key() -> PathBuf {
    "master.key".into()
}
fn default_token() -> PathBuf {
    "admin.token".into()
}
fn default_scrape_token() -> PathBuf {
    "scrape.token".into()
}
fn default_operator_public() -> PathBuf {
    "operator.json".into()
}
fn default_max_clock_jump_secs() -> u64 {
    crate::state::DEFAULT_MAX_CLOCK_JUMP_MS / 1000
}
fn default_crypto_period_ms() -> u64 {
    DEFAULT_CRYPTO_PERIOD_MS
}
fn default_key_renewal_secs() -> u64 {
    DEFAULT_KEY_RENEWAL_SECS
}
fn default_emm_bitrate() -> u64 {
    headend_engine::stream::DEFAULT_EMM_BITRATE
}

fn default_emm_cycle_ms() -> u64 {
    DEFAULT_EMM_CYCLE_MS
}

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The operator id written into every card.
    #[serde(default = "default_operator_id")]
    pub operator_id: u32,
    /// The admin API's address. Loopback unless you put a proxy with TLS
    /// in front of it.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The SQLite database.
    #[serde(default = "default_database")]
    pub database: PathBuf,
    /// The 32-byte master key that seals every secret at rest (0600).
    #[serde(default = "default_master_key")]
    pub master_key: PathBuf,
    /// The admin API's bearer token (0600).
    #[serde(default = "default_token")]
    pub token: PathBuf,
    /// The read-only token for `/metrics` (0600), for Prometheus: it opens
    /// nothing else. `headend run` makes it if it is missing.
    #[serde(default = "default_scrape_token")]
    pub scrape_token: PathBuf,
    /// The operator's public keys, for the provisioning tool.
    #[serde(default = "default_operator_public")]
    pub operator_public: PathBuf,
    /// The clock check: the daemon refuses to put on the air a time more
    /// than this many seconds ahead of the last time it persisted, until
    /// an operator accepts it (`headend clock accept`). At least 60.
    #[serde(default = "default_max_clock_jump_secs")]
    pub max_clock_jump_secs: u64,
    /// Length of a crypto period (one CW), in milliseconds. At least 100.
    #[serde(default = "default_crypto_period_ms")]
    pub crypto_period_ms: u64,
    /// Each product's period key K_P is renewed this often, in seconds
    /// (and at once when a card loses the product).
    #[serde(default = "default_key_renewal_secs")]
    pub key_renewal_secs: u64,
    /// The EMM-U carousel reaches every entitled card within this many
    /// milliseconds. A renewed K_P goes into ECMs one cycle after it was
    /// made, so that every entitled card has it first.
    #[serde(default = "default_emm_cycle_ms")]
    pub emm_cycle_ms: u64,
    /// The EMM bandwidth of every channel, in bit/s of TS packets. The
    /// carousel and renewal deliveries are paced to it, and a renewal
    /// activates when its delivery has been sent at this rate.
    #[serde(default = "default_emm_bitrate")]
    pub emm_bitrate: u64,
    /// The channels: each is one DVB service scrambled under one product.
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
    /// DVB SimulCrypt peers: the MUXes fed with the EMM carousel
    /// (`[[simulcrypt.mux]]`) and the ECMG for third-party scramblers
    /// (`[simulcrypt.ecmg]`).
    #[serde(default, skip_serializing_if = "SimulcryptConfig::is_empty")]
    pub simulcrypt: SimulcryptConfig,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

/// One channel (DVB service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: String,
    /// The DVB service_id (program_number).
    pub service_id: u16,
    /// The product (by name) whose key seals this channel's ECMs; created
    /// if it does not exist.
    pub product: String,
    /// Who scrambles it: `mux` (the headend's own multiplexer, the
    /// default) or `simulcrypt` (a third-party scrambler that gets its
    /// ECMs from `[simulcrypt.ecmg]`; no input, output or PIDs here).
    #[serde(default, skip_serializing_if = "Scrambler::is_mux")]
    pub scrambler: Scrambler,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ecm_pid: u16,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub emm_pid: u16,
    /// Minimum viewer age, 0 for none.
    #[serde(default)]
    pub maturity: u8,
    /// Where the clear TS comes from (`udp://HOST:PORT` or a file), for the
    /// stream engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Where the scrambled TS goes (`udp://HOST:PORT` or a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Other programs of the input sent on unscrambled, on purpose (their
    /// service_ids). Every other program is dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clear_services: Vec<u16>,
}

impl ChannelConfig {
    /// What the channel checks look at.
    pub fn spec(&self) -> ChannelSpec<'_> {
        ChannelSpec {
            name: &self.name,
            service_id: self.service_id,
            ecm_pid: self.ecm_pid,
            emm_pid: self.emm_pid,
            input: self.input.as_deref(),
            output: self.output.as_deref(),
            clear_services: &self.clear_services,
        }
    }
}

/// A config that could not be used, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl Default for Config {
    fn default() -> Self {
        Config {
            operator_id: default_operator_id(),
            listen: default_listen(),
            database: default_database(),
            master_key: default_master_key(),
            token: default_token(),
            scrape_token: default_scrape_token(),
            operator_public: default_operator_public(),
            max_clock_jump_secs: default_max_clock_jump_secs(),
            crypto_period_ms: DEFAULT_CRYPTO_PERIOD_MS,
            key_renewal_secs: DEFAULT_KEY_RENEWAL_SECS,
            emm_cycle_ms: DEFAULT_EMM_CYCLE_MS,
            emm_bitrate: default_emm_bitrate(),
            channels: Vec::new(),
            simulcrypt: SimulcryptConfig::default(),
        }
    }
}

/// A loaded config with its paths made absolute.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub config: Config,
}

impl Loaded {
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
    pub fn database(&self) -> PathBuf {
        self.resolve(&self.config.database)
    }
    pub fn master_key(&self) -> PathBuf {
        self.resolve(&self.config.master_key)
    }
    pub fn token(&self) -> PathBuf {
        self.resolve(&self.config.token)
    }
    pub fn scrape_token(&self) -> PathBuf {
        self.resolve(&self.config.scrape_token)
    }
    pub fn operator_public(&self) -> PathBuf {
        self.resolve(&self.config.operator_public)
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|e| e.at(path))?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Loaded {
            path: abs,
            dir,
            config,
        })
    }

    /// Parses and validates TOML text. Errors carry an empty path.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn field(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            path: PathBuf::new(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Refuses `got` for `field` below `min`.
    fn at_least(field: &str, got: u64, min: u64) -> Result<(), ConfigError> {
        if got < min {
            return Err(Self::field(
                field,
                format!("must be at least {min} (got {got})"),
            ));
        }
        Ok(())
    }

    /// Checks every field's range and the channels' uniqueness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.operator_id == 0 {
            return Err(Self::field("operator_id", "must be at least 1"));
        }
        Self::at_least(
            "crypto_period_ms",
            self.crypto_period_ms,
            MIN_CRYPTO_PERIOD_MS,
        )?;
        if self.crypto_period_ms > 86_400_000 {
            return Err(Self::field(
                "crypto_period_ms",
                "must be at most 86400000 (one day)",
            ));
        }
        Self::at_least("emm_cycle_ms", self.emm_cycle_ms, MIN_EMM_CYCLE_MS)?;
        Self::at_least("emm_bitrate", self.emm_bitrate, 10_000)?;
        if self.emm_bitrate > 100_000_000 {
            return Err(Self::field(
                "emm_bitrate",
                "must be at most 100000000 (100 Mbit/s)",
            ));
        }
        if self.key_renewal_secs.saturating_mul(1000) <= self.emm_cycle_ms {
            return Err(Self::field(
                "key_renewal_secs",
                "must be longer than emm_cycle_ms, or a new key would replace one that not every card has yet",
            ));
        }
        for (name, p) in [
            ("database", &self.database),
            ("master_key", &self.master_key),
            ("token", &self.token),
            ("scrape_token", &self.scrape_token),
            ("operator_public", &self.operator_public),
        ] {
            if p.as_os_str().is_empty() {
                return Err(Self::field(name, "must not be empty"));
            }
        }
        if self.scrape_token == self.token {
            return Err(Self::field(
                "scrape_token",
                "must name another file than `token`: the scrape token opens only /metrics",
            ));
        }
        // The clock is persisted once a minute: a smaller bound would
        // refuse a daemon that merely runs.
        Self::at_least(
            "max_clock_jump_secs",
            self.max_clock_jump_secs,
            2 * crate::state::CLOCK_PERSIST_MS / 1000,
        )?;
        let mut names = HashSet::new();
        let mut services = HashSet::new();
        for (i, c) in self.channels.iter().enumerate() {
            let f = |what: &str| format!("channels[{i}].{what}");
            if c.name.trim().is_empty() {
                return Err(Self::field(f("name"), "must not be empty"));
            }
            if !names.insert(c.name.as_str()) {
                return Err(Self::field(
                    f("name"),
                    format!("{:?} is used twice", c.name),
                ));
            }
            if c.service_id == 0 {
                return Err(Self::field(f("service_id"), "must be 1..=65535"));
            }
            if !services.insert(c.service_id) {
                return Err(Self::field(
                    f("service_id"),
                    format!("{} is used twice", c.service_id),
                ));
            }
            if c.product.trim().is_empty() {
                return Err(Self::field(f("product"), "must not be empty"));
            }
            if c.scrambler == Scrambler::Simulcrypt {
                self.check_simulcrypt_channel(c, &f)?;
                continue;
            }
            // The same checks as a channel from the API gets, but those
            // that need the files (see `check_channel`), which `headend
            // run` makes once it knows the config's folder.
            check_channel_fields(&c.spec()).map_err(|p| {
                Self::field(f(p.field), format!("channel {:?}: {}", c.name, p.message))
            })?;
        }
        self.simulcrypt
            .validate()
            .map_err(|p| Self::field(p.field, p.message))?;
        if let Some(e) = &self.simulcrypt.ecmg {
            e.check()
                .map_err(|(field, m)| Self::field(format!("simulcrypt.ecmg.{field}"), m))?;
        }
        Ok(())
    }

    /// A channel served to an external scrambler: a service and a product,
    /// and nothing of the stream (the SCS and its MUX own it).
    fn check_simulcrypt_channel(
        &self,
        c: &ChannelConfig,
        f: &dyn Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        let why = "the SCS's scrambler and MUX own the stream of a `scrambler = \"simulcrypt\"` channel: remove it, or use `scrambler = \"mux\"`";
        if c.input.is_some() {
            return Err(Self::field(f("input"), why));
        }
        if c.output.is_some() {
            return Err(Self::field(f("output"), why));
        }
        if !c.clear_services.is_empty() {
            return Err(Self::field(f("clear_services"), why));
        }
        if c.ecm_pid != 0 {
            return Err(Self::field(f("ecm_pid"), why));
        }
        if c.emm_pid != 0 {
            return Err(Self::field(f("emm_pid"), why));
        }
        if self.simulcrypt.ecmg.is_none() {
            return Err(Self::field(
                f("scrambler"),
                format!(
                    "channel {:?} is served to a SimulCrypt scrambler, but no ECMG is configured: add a `[simulcrypt.ecmg]` table (e.g. listen = \"127.0.0.1:{DEFAULT_ECMG_PORT}\")",
                    c.name
                ),
            ));
        }
        Ok(())
    }

    /// The channels the headend's own multiplexer scrambles.
    pub fn mux_channels(&self) -> Vec<ChannelConfig> {
        self.channels
            .iter()
            .filter(|c| c.scrambler.is_mux())
            .cloned()
            .collect()
    }

    /// The config as TOML, with a comment per field, as `headend init`
    /// writes it.
    pub fn to_commented_toml(&self) -> String {
        let mut s = String::new();
        s.push_str("# Iodoform headend configuration. See docs/OPERATIONS.md.\n");
        s.push_str("# Relative paths are relative to this file's folder.\n\n");
        s.push_str("# The operator id written into every card at personalization.\n");
        s.push_str(&format!("operator_id = {}\n", self.operator_id));
        s.push_str("# Admin API address (HTTP, bearer token). Keep it on loopback.\n");
        s.push_str(&format!("listen = \"{}\"\n", self.listen));
        s.push_str("# SQLite database (WAL mode).\n");
        s.push_str(&format!("database = {}\n", toml_path(&self.database)));
        s.push_str("# Master key sealing every secret at rest (32 bytes, mode 0600).\n");
        s.push_str(&format!("master_key = {}\n", toml_path(&self.master_key)));
        s.push_str("# Admin API bearer token (mode 0600).\n");
        s.push_str(&format!("token = {}\n", toml_path(&self.token)));
        s.push_str("# Read-only bearer token for GET /metrics only, for Prometheus (mode 0600).\n");
        s.push_str(&format!(
            "scrape_token = {}\n",
            toml_path(&self.scrape_token)
        ));
        s.push_str("# The operator's public keys, for `smartcard provision`.\n");
        s.push_str(&format!(
            "operator_public = {}\n",
            toml_path(&self.operator_public)
        ));
        s.push_str("# Crypto period (control word lifetime) in milliseconds; at least 100.\n");
        s.push_str(&format!("crypto_period_ms = {}\n", self.crypto_period_ms));
        s.push_str("# Scheduled renewal of each product's period key, in seconds (30 days).\n");
        s.push_str(&format!("key_renewal_secs = {}\n", self.key_renewal_secs));
        s.push_str("# The EMM-U carousel reaches every entitled card within this time (ms).\n");
        s.push_str(&format!("emm_cycle_ms = {}\n", self.emm_cycle_ms));
        s.push_str("# EMM bandwidth of every channel, bit/s of TS; the carousel is paced to it.\n");
        s.push_str(&format!("emm_bitrate = {}\n", self.emm_bitrate));
        if self.channels.is_empty() {
            s.push_str("\n# Channels, one table each:\n");
            s.push_str("# [[channels]]\n# name = \"news\"\n# service_id = 257\n");
            s.push_str("# product = \"basic\"\n# ecm_pid = 0x0101\n# emm_pid = 0x0102\n");
            s.push_str("# maturity = 0\n# input = \"udp://127.0.0.1:5000\"\n");
            s.push_str("# output = \"udp://127.0.0.1:5002\"\n");
        }
        for c in &self.channels {
            s.push_str("\n[[channels]]\n");
            s.push_str(&toml::to_string(c).expect("a channel serializes"));
        }
        if self.simulcrypt.mux.is_empty() {
            s.push_str(
                "\n# Third-party SimulCrypt MUXes that get the EMM carousel, one table each:\n",
            );
            s.push_str(
                "# [[simulcrypt.mux]]\n# name = \"mux-a\"\n# address = \"127.0.0.1:7600\"\n",
            );
            s.push_str("# bandwidth_kbps = 100\n");
        }
        for m in &self.simulcrypt.mux {
            s.push_str("\n[[simulcrypt.mux]]\n");
            s.push_str(&toml::to_string(m).expect("a MUX serializes"));
        }
        match &self.simulcrypt.ecmg {
            Some(e) => {
                s.push_str(
                    "\n# The SimulCrypt ECMG (ETSI TS 103 197) for third-party scramblers.\n",
                );
                s.push_str("[simulcrypt.ecmg]\n");
                s.push_str(&toml::to_string(e).expect("the ECMG table serializes"));
            }
            None => {
                s.push_str(
                    "\n# A SimulCrypt ECMG for third-party scramblers (see docs/OPERATIONS.md):\n",
                );
                s.push_str(&format!(
                    "# [simulcrypt.ecmg]\n# listen = \"127.0.0.1:{DEFAULT_ECMG_PORT}\"\n"
                ));
            }
        }
        s
    }
}

fn toml_path(p: &Path) -> String {
    toml::Value::String(p.to_string_lossy().into_owned()).to_string()
}

impl ConfigError {
    fn at(self, path: &Path) -> ConfigError {
        match self {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ConfigError::Field { field, message, .. } => ConfigError::Field {
                path: path.to_path_buf(),
                field,
                message,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_the_commented_file() {
        let mut c = Config::default();
        c.channels.push(ChannelConfig {
            name: "news".into(),
            service_id: 257,
            product: "basic".into(),
            scrambler: Scrambler::Mux,
            ecm_pid: 0x101,
            emm_pid: 0x102,
            maturity: 0,
            input: Some("udp://127.0.0.1:5000".into()),
            output: None,
            clear_services: vec![2],
        });
        let mut mux = MuxConfig::new("127.0.0.1:7600".parse().unwrap());
        mux.name = Some("mux-a".into());
        mux.data_provision = Transport::Udp;
        mux.udp_address = Some("127.0.0.1:7601".parse().unwrap());
        c.simulcrypt.mux.push(mux);
        let text = c.to_commented_toml();
        assert_eq!(Config::parse(&text).unwrap(), c);
        let empty = Config::parse("").unwrap();
        assert_eq!(empty, Config::default());
        assert_eq!(empty.listen.to_string(), "127.0.0.1:7480");
        assert!(Config::parse(&Config::default().to_commented_toml()).is_ok());
    }

    #[test]
    fn a_simulcrypt_channel_has_no_stream_and_needs_the_ecmg() {
        let ch = "[[channels]]\nname='p'\nservice_id=9\nproduct='basic'\nscrambler='simulcrypt'\n";
        let ecmg = "[simulcrypt.ecmg]\nlisten='127.0.0.1:2000'\n";
        let c = Config::parse(&format!("{ch}{ecmg}")).unwrap();
        assert_eq!(c.channels[0].scrambler, Scrambler::Simulcrypt);
        assert!(c.mux_channels().is_empty());
        let e = c.simulcrypt.ecmg.as_ref().unwrap();
        assert_eq!((e.listen.port(), e.max_streams), (2000, 1000));
        // It round-trips through the commented file, beside MUXes too.
        assert_eq!(Config::parse(&c.to_commented_toml()).unwrap(), c);
        let both = format!("{ch}{ecmg}\n[[simulcrypt.mux]]\naddress = '127.0.0.1:7600'\n");
        let c = Config::parse(&both).unwrap();
        assert_eq!(c.simulcrypt.mux.len(), 1);
        assert!(c.simulcrypt.ecmg.is_some());
        assert_eq!(Config::parse(&c.to_commented_toml()).unwrap(), c);
        let e = Config::parse(ch).unwrap_err().to_string();
        assert!(
            e.contains("channels[0].scrambler") && e.contains("[simulcrypt.ecmg]"),
            "{e}"
        );
        let with = |extra: &str| {
            Config::parse(&format!("{ch}{extra}\n{ecmg}"))
                .unwrap_err()
                .to_string()
        };
        assert!(with("input='x.ts'").contains("channels[0].input"));
        assert!(with("ecm_pid=0x100").contains("channels[0].ecm_pid"));
        let e = Config::parse(&format!("{ecmg}min_cp_duration_ms=150\n")).unwrap_err();
        assert!(
            e.to_string().contains("simulcrypt.ecmg.min_cp_duration_ms"),
            "{e}"
        );
        let e = Config::parse("[simulcrypt.ecmg]\nbogus=1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        // A mux channel still needs its PIDs.
        let e = Config::parse("[[channels]]\nname='a'\nservice_id=1\nproduct='p'\n").unwrap_err();
        assert!(e.to_string().contains("channels[0].ecm_pid"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::parse("crypto_period_ms = 50").unwrap_err();
        assert!(e.to_string().contains("crypto_period_ms"), "{e}");
        let e = Config::parse("emm_cycle_ms = 1").unwrap_err();
        assert!(e.to_string().contains("emm_cycle_ms"), "{e}");
        let e = Config::parse("crypto_period_ms = \"fast\"").unwrap_err();
        assert!(e.to_string().contains("crypto_period_ms"), "{e}");
        let e = Config::parse("bogus = 1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Config::parse("listen = \"nowhere\"").unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
        let ch = "[[channels]]\nname='a'\nservice_id=1\nproduct='p'\necm_pid=0x10\nemm_pid=0x200\n";
        let e = Config::parse(ch).unwrap_err();
        assert!(e.to_string().contains("channels[0].ecm_pid"), "{e}");
        let two = format!("{ch}{ch}").replace("0x10", "0x100");
        let e = Config::parse(&two).unwrap_err();
        assert!(e.to_string().contains("channels[1].name"), "{e}");
    }
}
