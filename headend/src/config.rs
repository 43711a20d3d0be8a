//! `headend.toml`: where the daemon listens, where its files are, and its
//! timing. Relative paths are relative to the config file's folder.
//!
//! Loading validates every field and names the bad one in its error, so
//! that `headend run` can exit 64 with a message an operator can act on.
//! The config holds no secret: keys and the token live in their own 0600
//! files, which it only names.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
fn default_crypto_period_ms() -> u64 {
    DEFAULT_CRYPTO_PERIOD_MS
}
fn default_key_renewal_secs() -> u64 {
    DEFAULT_KEY_RENEWAL_SECS
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
    /// The channels: each is one DVB service scrambled under one product.
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
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
    pub ecm_pid: u16,
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
            crypto_period_ms: DEFAULT_CRYPTO_PERIOD_MS,
            key_renewal_secs: DEFAULT_KEY_RENEWAL_SECS,
            emm_cycle_ms: DEFAULT_EMM_CYCLE_MS,
            channels: Vec::new(),
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

    /// Checks every field's range and the channels' uniqueness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.operator_id == 0 {
            return Err(Self::field("operator_id", "must be at least 1"));
        }
        if self.crypto_period_ms < MIN_CRYPTO_PERIOD_MS {
            return Err(Self::field(
                "crypto_period_ms",
                format!(
                    "must be at least {MIN_CRYPTO_PERIOD_MS} (got {})",
                    self.crypto_period_ms
                ),
            ));
        }
        if self.crypto_period_ms > 86_400_000 {
            return Err(Self::field(
                "crypto_period_ms",
                "must be at most 86400000 (one day)",
            ));
        }
        if self.emm_cycle_ms < MIN_EMM_CYCLE_MS {
            return Err(Self::field(
                "emm_cycle_ms",
                format!(
                    "must be at least {MIN_EMM_CYCLE_MS} (got {})",
                    self.emm_cycle_ms
                ),
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
            // The same checks as a channel from the API gets, but those
            // that need the files (see `check_channel`), which `headend
            // run` makes once it knows the config's folder.
            check_channel_fields(&c.spec()).map_err(|p| {
                Self::field(f(p.field), format!("channel {:?}: {}", c.name, p.message))
            })?;
        }
        Ok(())
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
        s
    }
}

fn toml_path(p: &Path) -> String {
    toml::Value::String(p.to_string_lossy().into_owned()).to_string()
}

/// A PID that may carry ECMs or EMMs: not PAT/CAT/TSDT/DVB tables, not null.
pub fn valid_pid(pid: u16) -> bool {
    (0x20..=0x1FFE).contains(&pid)
}

// ---- channel checks ------------------------------------------------------
//
// One set of checks for every channel, wherever it comes from: a channel
// in headend.toml that fails them stops `headend run` (exit 64), one sent
// to the API is refused (400, or 409 for a clash with another channel),
// and one stored in the database that no longer passes them (its input
// file deleted, say) is turned off and reported by the supervisor. So the
// API never stores what the daemon would refuse.

/// A channel's stream settings, as the checks see them.
#[derive(Debug, Clone, Copy)]
pub struct ChannelSpec<'a> {
    pub name: &'a str,
    pub service_id: u16,
    pub ecm_pid: u16,
    pub emm_pid: u16,
    pub input: Option<&'a str>,
    pub output: Option<&'a str>,
    pub clear_services: &'a [u16],
}

impl<'a> ChannelSpec<'a> {
    /// What the checks look at in a stored channel.
    pub fn of(c: &'a api::Channel) -> ChannelSpec<'a> {
        ChannelSpec {
            name: &c.name,
            service_id: c.service_id,
            ecm_pid: c.ecm_pid,
            emm_pid: c.emm_pid,
            input: c.input.as_deref(),
            output: c.output.as_deref(),
            clear_services: &c.clear_services,
        }
    }
}

/// Why a channel was refused: the field, and a message that says what is
/// wrong and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ChannelProblem {
    pub field: &'static str,
    pub message: String,
    /// It clashes with another channel (the API answers 409) rather than
    /// being wrong on its own (400).
    pub conflict: bool,
}

fn problem(field: &'static str, message: impl Into<String>) -> ChannelProblem {
    ChannelProblem {
        field,
        message: message.into(),
        conflict: false,
    }
}

fn clash(field: &'static str, message: impl Into<String>) -> ChannelProblem {
    ChannelProblem {
        field,
        message: message.into(),
        conflict: true,
    }
}

/// Longest input or output URL.
pub const MAX_URL: usize = 1024;
/// Most clear services a channel may carry.
pub const MAX_CLEAR_SERVICES: usize = 64;
/// How much of an input file is read to learn its PIDs.
const PID_SCAN_BYTES: u64 = 1 << 20;
/// Folders a channel never writes into: the system's own.
const SYSTEM_DIRS: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/proc",
    "/sys", "/dev",
];

/// A channel's input, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputUrl {
    Udp(std::net::SocketAddr),
    /// A file, and whether it is played again and again (`?loop`).
    File(PathBuf, bool),
}

/// A channel's output, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputUrl {
    Udp(std::net::SocketAddr),
    File(PathBuf),
}

fn url_text(field: &'static str, url: &str) -> Result<(), ChannelProblem> {
    if url.trim().is_empty() || url.len() > MAX_URL || url.chars().any(char::is_control) {
        return Err(problem(
            field,
            format!("must be 1 to {MAX_URL} printable characters: udp://HOST:PORT or a file"),
        ));
    }
    if url == "-" {
        return Err(problem(
            field,
            "`-` (stdin or stdout) is not for a daemon's channel: give udp://HOST:PORT or a file",
        ));
    }
    Ok(())
}

fn udp_problem(field: &'static str, url: &str, example: &str) -> ChannelProblem {
    let rest = url.trim_start_matches("udp://");
    let host = rest.split(['?', '/']).next().unwrap_or("");
    let why = if host.rsplit_once(':').is_none_or(|(_, p)| p.is_empty()) {
        "has no port".to_owned()
    } else {
        "is not udp://HOST:PORT with a known host and a port 1..=65535".to_owned()
    };
    problem(
        field,
        format!("{url:?} {why}: give udp://HOST:PORT, e.g. {example}"),
    )
}

/// Parses a channel's input as the stream engine will read it.
pub fn parse_input(url: &str) -> Result<InputUrl, ChannelProblem> {
    use crate::stream::Endpoint;
    url_text("input", url)?;
    let (path, looped) = match url.strip_suffix("?loop") {
        Some(p) if !url.starts_with("udp://") => (p, true),
        _ => (url, false),
    };
    match Endpoint::parse(path) {
        Ok(Endpoint::Udp(a)) if a.port() == 0 => Err(problem(
            "input",
            format!("{url:?}: UDP port 0 is no port an encoder can send to: give udp://HOST:PORT, e.g. udp://@:5000"),
        )),
        Ok(Endpoint::Udp(a)) => Ok(InputUrl::Udp(a)),
        Ok(Endpoint::File(p)) if p.as_os_str().is_empty() => {
            Err(problem("input", "file:// needs a path, e.g. file:///srv/clip.ts"))
        }
        Ok(Endpoint::File(p)) => Ok(InputUrl::File(p, looped)),
        Ok(Endpoint::Stdio) => Err(problem("input", "`-` is not for a daemon's channel")),
        Err(_) if url.starts_with("udp://") => Err(udp_problem("input", url, "udp://@:5000")),
        Err(_) => Err(problem(
            "input",
            format!("{url:?} is not an input the headend reads: give udp://HOST:PORT (udp://@:PORT for every address), file://PATH or a path"),
        )),
    }
}

/// Parses a channel's output as the stream engine will write it.
pub fn parse_output(url: &str) -> Result<OutputUrl, ChannelProblem> {
    use crate::stream::Endpoint;
    url_text("output", url)?;
    match Endpoint::parse(url) {
        Ok(Endpoint::Udp(a)) if a.port() == 0 || a.ip().is_unspecified() => Err(problem(
            "output",
            format!("{url:?}: cannot send to {a}: give the receivers' udp://HOST:PORT or a multicast group, e.g. udp://239.1.1.1:5000"),
        )),
        Ok(Endpoint::Udp(a)) => Ok(OutputUrl::Udp(a)),
        Ok(Endpoint::File(p)) if p.as_os_str().is_empty() => {
            Err(problem("output", "file:// needs a path, e.g. file:///srv/out.ts"))
        }
        Ok(Endpoint::File(p)) => Ok(OutputUrl::File(p)),
        Ok(Endpoint::Stdio) => Err(problem("output", "`-` is not for a daemon's channel")),
        Err(_) if url.starts_with("udp://") => {
            Err(udp_problem("output", url, "udp://127.0.0.1:5002"))
        }
        Err(_) => Err(problem(
            "output",
            format!("{url:?} is not an output the headend writes: give udp://HOST:PORT or a file path"),
        )),
    }
}

/// The first PID from 0x1F0 up that is in none of `used`: a suggestion
/// for the operator.
fn free_pid(used: &std::collections::BTreeSet<u16>) -> u16 {
    (0x1F0..=0x1FFE)
        .chain(0x20..0x1F0)
        .find(|p| !used.contains(p))
        .unwrap_or(0x1F0)
}

/// The checks that need neither the files nor the other channels: ranges,
/// PIDs and URL syntax.
pub fn check_channel_fields(c: &ChannelSpec<'_>) -> Result<(), ChannelProblem> {
    if c.service_id == 0 {
        return Err(problem(
            "service_id",
            "0 is the NIT's entry in the PAT, not a service: give the input's program number (1..=65535; ffmpeg's is 1)",
        ));
    }
    for (field, pid) in [("ecm_pid", c.ecm_pid), ("emm_pid", c.emm_pid)] {
        if !valid_pid(pid) {
            return Err(problem(
                field,
                format!("{pid:#06x} is not a PID for CA data: give one in 0x0020..=0x1FFE (0x0000 is the PAT, 0x0001 the CAT, 0x1FFF null packets), e.g. 0x1F0"),
            ));
        }
    }
    if c.ecm_pid == c.emm_pid {
        return Err(problem(
            "ecm_pid",
            format!(
                "{:#06x} is also the EMM PID: ECMs and EMMs need PIDs of their own, e.g. ecm_pid {:#06x}",
                c.ecm_pid,
                free_pid(&[c.emm_pid].into())
            ),
        ));
    }
    if c.clear_services.len() > MAX_CLEAR_SERVICES {
        return Err(problem(
            "clear_services",
            format!("more than {MAX_CLEAR_SERVICES}"),
        ));
    }
    for (i, &s) in c.clear_services.iter().enumerate() {
        if s == 0 {
            return Err(problem(
                "clear_services",
                "0 is the NIT's entry in the PAT, not a service",
            ));
        }
        if s == c.service_id {
            return Err(problem(
                "clear_services",
                format!("{s} is the channel's own service, which is always scrambled: remove it from clear_services"),
            ));
        }
        if c.clear_services[..i].contains(&s) {
            return Err(problem("clear_services", format!("{s} is listed twice")));
        }
    }
    if let Some(u) = c.input {
        parse_input(u)?;
    }
    if let Some(u) = c.output {
        parse_output(u)?;
    }
    Ok(())
}

fn resolve_in(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// A file output's path with its folder's symlinks resolved, or the path
/// as given if the folder does not exist.
fn canonical_output(base: &Path, p: &Path) -> PathBuf {
    let p = resolve_in(base, p);
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .map(|d| d.join(name))
            .unwrap_or(p.clone()),
        _ => p,
    }
}

/// Two UDP inputs that cannot both be bound: the same port on the same
/// address, or where either listens on every address (a multicast group
/// is joined on a socket bound to every address).
fn udp_inputs_clash(a: &std::net::SocketAddr, b: &std::net::SocketAddr) -> bool {
    let wide = |x: &std::net::SocketAddr| x.ip().is_unspecified() || x.ip().is_multicast();
    a.port() == b.port() && (a.ip() == b.ip() || wide(a) || wide(b))
}

/// The PIDs in the first megabyte of a TS file; `None` if it is not a
/// regular file (a FIFO is not read ahead).
fn file_pids(path: &Path) -> Result<Option<std::collections::BTreeSet<u16>>, std::io::Error> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Ok(None);
    }
    let mut buf = Vec::new();
    f.take(PID_SCAN_BYTES).read_to_end(&mut buf)?;
    Ok(Some(
        ts::packet::Packets::new(&buf)
            .map(|p| (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]))
            .filter(|&pid| pid != ts::packet::NULL_PID)
            .collect(),
    ))
}

fn pid_list(pids: &std::collections::BTreeSet<u16>) -> String {
    let v: Vec<String> = pids.iter().map(|p| format!("{p:#06x}")).collect();
    v.join(", ")
}

/// Whether a process of this daemon may create files in `dir`: tried, as
/// permissions alone do not tell (root, read-only mounts, ACLs).
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".iodoform-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Every check of a channel: [`check_channel_fields`], then its files
/// (relative paths are taken from `base`, the config's folder) and its
/// clashes with `others`, the channels it must coexist with.
///
/// * A file input must exist and hold TS packets; the ECM and EMM PIDs
///   must not be PIDs it carries.
/// * A file output's folder must exist and be writable, and not be a
///   system folder; `/dev/null` is allowed.
/// * No two channels write one output, or read one UDP port.
/// * A channel's ECM PID is its own: no other channel's ECM or EMM PID
///   (channels share their EMM PID freely).
pub fn check_channel(
    c: &ChannelSpec<'_>,
    others: &[ChannelSpec<'_>],
    base: &Path,
) -> Result<(), ChannelProblem> {
    check_channel_fields(c)?;
    let input = c.input.map(parse_input).transpose()?;
    let output = c.output.map(parse_output).transpose()?;
    let mut input_file = None;
    if let Some(InputUrl::File(p, _)) = &input {
        let path = resolve_in(base, p);
        let shown = path.display();
        let meta = std::fs::metadata(&path).map_err(|e| {
            problem(
                "input",
                if e.kind() == std::io::ErrorKind::NotFound {
                    format!("{shown} does not exist: give an existing TS file (relative paths are from the config's folder) or udp://HOST:PORT")
                } else {
                    format!("cannot read {shown}: {e}; give a TS file the daemon can read")
                },
            )
        })?;
        if meta.is_dir() {
            return Err(problem(
                "input",
                format!("{shown} is a folder: give a TS file in it"),
            ));
        }
        match file_pids(&path) {
            Err(e) => {
                return Err(problem(
                    "input",
                    format!("cannot read {shown}: {e}; give a TS file the daemon can read"),
                ))
            }
            Ok(Some(pids)) if pids.is_empty() && meta.len() > 0 => {
                return Err(problem(
                    "input",
                    format!(
                        "{shown} holds no MPEG-TS packet: give a TS file (ffmpeg ... -f mpegts)"
                    ),
                ))
            }
            Ok(Some(pids)) => {
                let mut used = pids.clone();
                used.extend([c.ecm_pid, c.emm_pid]);
                for (field, pid) in [("ecm_pid", c.ecm_pid), ("emm_pid", c.emm_pid)] {
                    if pids.contains(&pid) {
                        return Err(problem(
                            field,
                            format!(
                                "{pid:#06x} is a PID of the input {shown} (it carries {}): give a PID the input does not use, e.g. {:#06x}",
                                pid_list(&pids),
                                free_pid(&used)
                            ),
                        ));
                    }
                }
            }
            Ok(None) => {}
        }
        input_file = path.canonicalize().ok();
    }
    if let Some(OutputUrl::File(p)) = &output {
        let path = resolve_in(base, p);
        let shown = path.display();
        if path != Path::new("/dev/null") {
            let dir = path.parent().unwrap_or(Path::new("/"));
            let dir = dir.canonicalize().map_err(|e| {
                problem(
                    "output",
                    format!("the folder of {shown} cannot be used ({e}): create it, or give a file in an existing folder"),
                )
            })?;
            if !dir.is_dir() {
                return Err(problem(
                    "output",
                    format!(
                        "{} is not a folder: give a file in an existing folder",
                        dir.display()
                    ),
                ));
            }
            if let Some(sys) = SYSTEM_DIRS.iter().find(|s| dir.starts_with(s)) {
                return Err(problem(
                    "output",
                    format!("{shown} is in the system folder {sys}: give a file in a data folder, e.g. /var/lib/iodoform/out.ts"),
                ));
            }
            if path.is_dir() {
                return Err(problem(
                    "output",
                    format!("{shown} is a folder: give a file name in it"),
                ));
            }
            if input_file.is_some() && input_file == path.canonicalize().ok() {
                return Err(problem(
                    "output",
                    format!("{shown} is the channel's input: give another file"),
                ));
            }
            writable_dir(&dir).map_err(|e| {
                problem(
                    "output",
                    format!(
                        "cannot write in {} ({e}): give a file in a folder the daemon may write to",
                        dir.display()
                    ),
                )
            })?;
        }
    }
    for o in others {
        let who = format!("channel {:?} (service {})", o.name, o.service_id);
        if c.ecm_pid == o.ecm_pid || c.ecm_pid == o.emm_pid {
            let what = if c.ecm_pid == o.ecm_pid { "ECM" } else { "EMM" };
            let used: std::collections::BTreeSet<u16> = others
                .iter()
                .flat_map(|x| [x.ecm_pid, x.emm_pid])
                .chain([c.emm_pid])
                .collect();
            return Err(clash(
                "ecm_pid",
                format!(
                    "{:#06x} is the {what} PID of {who}: each channel needs an ECM PID of its own, e.g. {:#06x}",
                    c.ecm_pid,
                    free_pid(&used)
                ),
            ));
        }
        if c.emm_pid == o.ecm_pid {
            return Err(clash(
                "emm_pid",
                format!(
                    "{:#06x} is the ECM PID of {who}: give the EMM PID the other channels use ({:#06x}) or another free PID",
                    c.emm_pid, o.emm_pid
                ),
            ));
        }
        let o_output = o.output.and_then(|u| parse_output(u).ok());
        match (&output, &o_output) {
            (Some(OutputUrl::Udp(a)), Some(OutputUrl::Udp(b))) if a == b => {
                return Err(clash(
                    "output",
                    format!("udp://{a} is already the output of {who}: give each channel an output of its own"),
                ));
            }
            (Some(OutputUrl::File(a)), Some(OutputUrl::File(b)))
                if canonical_output(base, a) == canonical_output(base, b)
                    && resolve_in(base, a) != Path::new("/dev/null") =>
            {
                return Err(clash(
                    "output",
                    format!(
                        "{} is already the output of {who}: give each channel an output of its own",
                        resolve_in(base, a).display()
                    ),
                ));
            }
            _ => {}
        }
        if let (Some(InputUrl::Udp(a)), Some(InputUrl::Udp(b))) =
            (&input, &o.input.and_then(|u| parse_input(u).ok()))
        {
            if udp_inputs_clash(a, b) {
                return Err(clash(
                    "input",
                    format!("UDP port {} is already read by {who} (udp://{b}): give each channel's encoder a port of its own", a.port()),
                ));
            }
        }
    }
    Ok(())
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
            ecm_pid: 0x101,
            emm_pid: 0x102,
            maturity: 0,
            input: Some("udp://127.0.0.1:5000".into()),
            output: None,
            clear_services: vec![2],
        });
        let text = c.to_commented_toml();
        assert_eq!(Config::parse(&text).unwrap(), c);
        let empty = Config::parse("").unwrap();
        assert_eq!(empty, Config::default());
        assert_eq!(empty.listen.to_string(), "127.0.0.1:7480");
        assert!(Config::parse(&Config::default().to_commented_toml()).is_ok());
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

    fn spec<'a>(
        name: &'a str,
        service_id: u16,
        ecm: u16,
        input: &'a str,
        output: &'a str,
    ) -> ChannelSpec<'a> {
        ChannelSpec {
            name,
            service_id,
            ecm_pid: ecm,
            emm_pid: 0x1F1,
            input: Some(input),
            output: Some(output),
            clear_services: &[],
        }
    }

    fn field_of(r: Result<(), ChannelProblem>) -> (&'static str, bool) {
        let p = r.unwrap_err();
        assert!(!p.message.contains('\n'), "{p}");
        (p.field, p.conflict)
    }

    #[test]
    fn urls_are_read_as_the_stream_engine_reads_them() {
        for ok in [
            "udp://@:5000",
            "udp://127.0.0.1:5000",
            "udp://239.1.1.1:1234?pkt_size=1316",
            "file:///a.ts",
            "a.ts",
            "a.ts?loop",
        ] {
            parse_input(ok).unwrap();
        }
        assert_eq!(
            parse_input("a.ts?loop").unwrap(),
            InputUrl::File("a.ts".into(), true)
        );
        for bad in [
            "rtp://127.0.0.1:5000",
            "udp://127.0.0.1",
            "udp://@:0",
            "-",
            "",
            "http://x/y",
            "file://",
        ] {
            assert_eq!(parse_input(bad).unwrap_err().field, "input", "{bad}");
        }
        assert!(parse_input("udp://127.0.0.1")
            .unwrap_err()
            .message
            .contains("no port"));
        parse_output("/dev/null").unwrap();
        for bad in [
            "udp://0.0.0.0:5000",
            "udp://127.0.0.1:0",
            "udp://127.0.0.1",
            "-",
            "rtp://h:1",
        ] {
            assert_eq!(parse_output(bad).unwrap_err().field, "output", "{bad}");
        }
    }

    #[test]
    fn channel_checks_cover_files_pids_and_clashes() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        // Two TS packets: a PAT and PID 0x100.
        let mut ts = vec![0u8; 376];
        ts[0] = 0x47;
        ts[3] = 0x10;
        ts[188] = 0x47;
        ts[189] = 0x01;
        ts[191] = 0x10;
        std::fs::write(base.join("in.ts"), &ts).unwrap();
        std::fs::write(base.join("junk.ts"), [1u8; 500]).unwrap();
        let ok = spec("a", 1, 0x1F0, "in.ts?loop", "out.ts");
        check_channel(&ok, &[], base).unwrap();
        let cases = [
            (spec("a", 1, 0x1F0, "missing.ts", "out.ts"), "input"),
            (spec("a", 1, 0x1F0, "junk.ts", "out.ts"), "input"),
            (spec("a", 1, 0x100, "in.ts", "out.ts"), "ecm_pid"),
            (spec("a", 1, 0x1F1, "in.ts", "out.ts"), "ecm_pid"),
            (spec("a", 1, 0x1F0, "in.ts", "/etc/out.ts"), "output"),
            (spec("a", 1, 0x1F0, "in.ts", "/proc/self/out.ts"), "output"),
            (spec("a", 1, 0x1F0, "in.ts", "nowhere/out.ts"), "output"),
            (spec("a", 1, 0x1F0, "in.ts", "in.ts"), "output"),
            (spec("a", 0, 0x1F0, "in.ts", "out.ts"), "service_id"),
        ];
        for (c, field) in &cases {
            assert_eq!(
                field_of(check_channel(c, &[], base)),
                (*field, false),
                "{c:?}"
            );
        }
        let clear = [1u16];
        let own = ChannelSpec {
            clear_services: &clear,
            ..ok
        };
        assert_eq!(field_of(check_channel(&own, &[], base)).0, "clear_services");

        // Between channels: one output each, one UDP port each, ECM PIDs
        // of their own; EMM PIDs and /dev/null shared.
        let other = spec("b", 2, 0x1E0, "udp://@:5000", "udp://127.0.0.1:6000");
        let cases = [
            (spec("a", 1, 0x1E0, "in.ts", "out.ts"), "ecm_pid"),
            (
                ChannelSpec {
                    emm_pid: 0x1E0,
                    ..ok
                },
                "emm_pid",
            ),
            (
                spec("a", 1, 0x1F0, "in.ts", "udp://127.0.0.1:6000"),
                "output",
            ),
            (
                spec("a", 1, 0x1F0, "udp://127.0.0.1:5000", "out.ts"),
                "input",
            ),
            (
                spec("a", 1, 0x1F0, "udp://239.1.1.1:5000", "out.ts"),
                "input",
            ),
        ];
        for (c, field) in &cases {
            assert_eq!(
                field_of(check_channel(c, &[other], base)),
                (*field, true),
                "{c:?}"
            );
        }
        check_channel(
            &spec("a", 1, 0x1F0, "udp://127.0.0.1:5001", "out.ts"),
            &[other],
            base,
        )
        .unwrap();
        let null_a = spec("a", 1, 0x1F0, "in.ts", "/dev/null");
        let null_b = spec("b", 2, 0x1E0, "in.ts", "/dev/null");
        check_channel(&null_a, &[null_b], base).unwrap();
        let same_file = spec("b", 2, 0x1E0, "in.ts", "./out.ts");
        assert_eq!(
            field_of(check_channel(&ok, &[same_file], base)),
            ("output", true)
        );
    }
}
