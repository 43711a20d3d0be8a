//! The bodies of the Iodoform headend's admin API, as serde types: what
//! each request carries and what each answer holds.
//!
//! Three programs speak this API: the headend's server (which reads the
//! requests and writes the answers), the `headend` CLI and `smartcard
//! provision --register` (which write the requests). They share these
//! types instead of each building JSON by hand, so a field renamed here
//! is renamed for all three. The types live in a crate of their own
//! because the card tools must not link the headend (SQLite, axum, tokio):
//! this crate depends on serde alone.
//!
//! Its responsibility ends at the shape of the JSON: every request type
//! refuses unknown fields, but the values are checked by the headend
//! (a card key's hex, a date, a name's length), which answers with a
//! message naming the field. It does no I/O, holds no HTTP client and
//! knows no status codes.
#![forbid(unsafe_code)]

use serde::{Deserialize, Deserializer, Serialize};

/// The collections of version 1 of the API.
pub mod path {
    pub const PRODUCTS: &str = "/api/v1/products";
    pub const CHANNELS: &str = "/api/v1/channels";
    pub const CARDS: &str = "/api/v1/cards";
    pub const SUBSCRIPTIONS: &str = "/api/v1/subscriptions";
    pub const PAIRINGS: &str = "/api/v1/pairings";
    pub const ROTATE: &str = "/api/v1/rotate";
    pub const STATUS: &str = "/api/v1/status";
    pub const OPERATOR: &str = "/api/v1/operator";
    pub const BACKUP: &str = "/api/v1/backup";
    pub const CLOCK_ACCEPT: &str = "/api/v1/clock/accept";
}

// ---- products ------------------------------------------------------------

/// A product named by id or by name. In JSON a number is an id and a
/// string a name; a string of digits names a product by id too (names are
/// never numbers).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ProductRef {
    Id(u32),
    Name(String),
}

impl ProductRef {
    /// A product as a person types it: a number is an id, anything else a
    /// name.
    pub fn parse(s: &str) -> ProductRef {
        match s.parse::<u32>() {
            Ok(n) => ProductRef::Id(n),
            Err(_) => ProductRef::Name(s.to_owned()),
        }
    }
}

impl std::fmt::Display for ProductRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProductRef::Id(i) => write!(f, "{i}"),
            ProductRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// `POST /api/v1/products`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    pub name: String,
    /// Default: one more than the highest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
}

/// A product as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Product {
    pub id: u32,
    pub name: String,
    /// The newest K_P generation: what EMM-Us carry.
    pub generation: u32,
    /// The generation ECMs are sealed under: the newest once every card has
    /// had one carousel cycle to receive it, the one before until then.
    pub active_generation: u32,
    pub activate_at_ms: u64,
    pub next_renewal_ms: u64,
    pub created_ms: u64,
    /// When the newest generation (`generation`) was made.
    pub key_created_ms: u64,
}

/// `POST /api/v1/rotate`; an empty body rotates every product.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<ProductRef>,
}

/// One product's renewal.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Rotated {
    pub product: u32,
    pub name: String,
    pub generation: u32,
    pub active_generation: u32,
    /// RFC 3339: when ECMs take the new generation.
    pub activate_at: String,
}

/// The answer to `POST /api/v1/rotate`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Rotation {
    pub rotated: Vec<Rotated>,
}

// ---- channels ------------------------------------------------------------

/// Where a channel was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelOrigin {
    /// A `[[channels]]` table of headend.toml: made again at every start,
    /// changed only there.
    Config,
    /// Added through the API (or the CLI), kept in the database.
    Api,
}

impl ChannelOrigin {
    /// Where an operator goes to change it, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ChannelOrigin::Config => "from headend.toml",
            ChannelOrigin::Api => "added through the API",
        }
    }
}

/// A channel (one DVB service) as the API shows it. The answers of the
/// channel routes add the supervisor's report to these fields (`state`,
/// `error`, `cause`, `fix`, `detail`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Channel {
    pub service_id: u16,
    pub name: String,
    pub product: u32,
    pub ecm_pid: u16,
    pub emm_pid: u16,
    pub maturity: u8,
    pub input: Option<String>,
    pub output: Option<String>,
    /// Other programs of the input carried unscrambled, on purpose.
    pub clear_services: Vec<u16>,
    /// Where it was defined: headend.toml or the API.
    pub origin: ChannelOrigin,
}

/// A channel named by service id or by name (names are never numbers),
/// as a path or a command line may do: `257`, `0x101` or `news`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelRef {
    Service(u16),
    Name(String),
}

impl ChannelRef {
    pub fn parse(s: &str) -> ChannelRef {
        let t = s.trim();
        let n = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            Some(h) => u16::from_str_radix(h, 16).ok(),
            None => t.parse::<u16>().ok(),
        };
        match n {
            Some(n) => ChannelRef::Service(n),
            None => ChannelRef::Name(s.to_owned()),
        }
    }
}

impl std::fmt::Display for ChannelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelRef::Service(s) => write!(f, "service {s}"),
            ChannelRef::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// `POST /api/v1/channels`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    pub name: String,
    pub service_id: u16,
    pub product: ProductRef,
    pub ecm_pid: u16,
    pub emm_pid: u16,
    #[serde(default)]
    pub maturity: u8,
    #[serde(default)]
    pub input: Option<String>,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub clear_services: Vec<u16>,
}

/// `PATCH /api/v1/channels/{channel}`: every field is optional; `input`
/// and `output` may be `null` to take them away (the channel goes off the
/// air). An absent field is left as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelUpdate {
    /// Only to name the channel: a service id cannot change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<ProductRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecm_pid: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emm_pid: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maturity: Option<u8>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub input: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub output: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_services: Option<Vec<u16>>,
}

impl ChannelUpdate {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == ChannelUpdate::default()
    }
}

/// A field that is present, even as `null` (absent stays `None`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Where a channel stands, as the supervisor reports it: added to a
/// [`Channel`]'s fields in the answers of the channel routes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ChannelReport {
    /// `on_air`, `waiting`, `failed`, `ended` or `off`.
    pub state: String,
    /// Why it failed (state `failed`): what went wrong and what to do.
    pub error: Option<String>,
    /// Why its service is withheld (state `waiting`).
    pub cause: Option<String>,
    /// What to do about it.
    pub fix: Option<String>,
    /// What the cause is about.
    pub detail: Option<String>,
}

/// A channel as the channel routes answer it: its fields, then where it
/// stands (absent while the supervisor has not seen it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ChannelView {
    #[serde(flatten)]
    pub channel: Channel,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ChannelReport>,
}

/// The answer to `DELETE /api/v1/channels/{channel}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ChannelRemoved {
    pub service_id: u16,
    pub name: String,
    pub removed: bool,
}

// ---- cards, subscriptions, pairings --------------------------------------

/// `POST /api/v1/cards`, and the card record that `smartcard provision`
/// writes for each card it makes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewCard {
    pub card_id: u32,
    /// The card's X25519 public key: 64 hex digits.
    pub public_key: String,
    pub operator_id: u32,
}

impl NewCard {
    pub fn new(card_id: u32, public_key: &[u8; 32], operator_id: u32) -> NewCard {
        NewCard {
            card_id,
            public_key: hex(public_key),
            operator_id,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

/// A card as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CardView {
    pub card_id: u32,
    pub operator_id: u32,
    pub public_key: String,
    /// `active` or `revoked`.
    pub state: String,
    pub created: String,
    pub revoked: Option<String>,
    pub subscriptions: Vec<SubscriptionView>,
    pub paired_receiver: Option<String>,
    /// In the answer to a registration only: the EMM-Us (hex) that give
    /// the card its Subset Difference labels, sealed to it, for the
    /// provisioning tool to hand the card at personalization.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sd_labels: Vec<String>,
}

/// `POST /api/v1/subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    pub card_id: u32,
    pub product: ProductRef,
    /// `YYYY-MM-DD` (through the end of that day, UTC) or RFC 3339.
    pub until: String,
    /// `YYYY-MM-DD` (from the start of that day, UTC) or RFC 3339;
    /// default: the start of today (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
}

/// A subscription as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct SubscriptionView {
    pub card_id: u32,
    pub product: u32,
    pub product_name: String,
    pub start: String,
    pub until: String,
    pub start_unix: u64,
    pub end_unix: u64,
    /// It ended and the product's key was renewed for it.
    pub lapsed: bool,
}

/// The answer to `DELETE /api/v1/subscriptions/{card}/{product}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Unsubscribed {
    pub card_id: u32,
    pub unsubscribed: bool,
}

/// `POST /api/v1/pairings`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewPairing {
    pub card_id: u32,
    /// The receiver's X25519 public key, 64 hex digits, as `receiver
    /// identity` prints it.
    pub receiver_key: String,
}

// ---- status --------------------------------------------------------------

/// The answer to `GET /api/v1/status`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Status {
    /// This run of the daemon (one more at every start).
    pub run: u64,
    /// RFC 3339.
    pub now: String,
    pub operator_id: u32,
    pub crypto_period_ms: u64,
    pub emm_cycle_ms: u64,
    pub key_renewal_secs: u64,
    /// The crypto period now.
    pub epoch: u64,
    pub cards: CardCounts,
    /// Cards in the EMM carousel.
    pub carousel_cards: u64,
    /// Cards waiting for a changed entitlement.
    pub carousel_pending: u64,
    pub products: Vec<ProductStatus>,
    pub channels: Vec<ChannelStatus>,
    /// The ECMs being sent now.
    pub ecms: Vec<EcmStatus>,
    /// EMM sections published by this run.
    pub emm_sections: u64,
    pub emm_backlog: EmmBacklog,
    /// The clock check (`max_clock_jump_secs`).
    #[serde(default)]
    pub clock: ClockStatus,
    /// Set when this run started on a database restored from a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<RestoreStatus>,
    /// Set while no ECM is sealed fresh: epochs below this one may have
    /// been sealed by an earlier run that this database does not record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecms_fresh_from_epoch: Option<u64>,
    /// The SimulCrypt MUXes fed with the EMM carousel (`[[simulcrypt.mux]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub muxes: Vec<MuxStatus>,
    /// The SimulCrypt ECMG and its SCS peers, when `[simulcrypt.ecmg]` is
    /// configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecmg: Option<EcmgStatus>,
}

/// A MUX of [`Status`]: the EMMG client's connection to it and what it sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct MuxStatus {
    pub name: String,
    /// host:port of its EMMG interface.
    pub address: String,
    pub client_id: u32,
    pub data_channel_id: u16,
    pub data_stream_id: u16,
    pub data_id: u16,
    /// `sections` or `ts`.
    pub datagrams: String,
    /// `tcp` or `udp`.
    pub data_provision: String,
    /// The channel and stream are set up and bandwidth allocated.
    pub connected: bool,
    pub requested_kbps: u16,
    /// On the current connection.
    pub allocated_kbps: Option<u16>,
    pub emm_bytes_sent: u64,
    pub emm_sections_sent: u64,
    /// Sections the EMM log dropped before the MUX's bandwidth carried them.
    pub emm_sections_dropped: u64,
    /// Sections made and not yet sent to it.
    pub backlog_sections: u64,
    pub reconnects: u64,
    /// error_status values (`0x000e`) the MUX sent, with their counts.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Faults found in its messages, by the error_status answered.
    pub faults: std::collections::BTreeMap<String, u64>,
    /// The last error, with its fix.
    pub last_error: Option<String>,
}

/// The SimulCrypt ECMG (ETSI TS 103 197), in [`Status`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct EcmgStatus {
    /// The TCP address SCSs connect to.
    pub listen: String,
    /// The Super_CAS_id an SCS must give, `0x` and 8 hex digits.
    pub super_cas_id: String,
    /// SCS connections open now, and the channels and streams on them.
    pub connections: u64,
    pub channels: u64,
    pub streams: u64,
    /// Since the start: CW_provisions received, ECM_responses sent.
    pub ecm_requests: u64,
    pub ecm_responses: u64,
    /// Errors sent to SCSs since the start, by error_status (`0x0007`).
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Each open connection.
    pub peers: Vec<EcmgPeer>,
}

/// One SCS connection, in [`EcmgStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct EcmgPeer {
    /// The SCS's address.
    pub address: String,
    /// Its ECM_channel_id, once set up.
    pub channel: Option<u16>,
    pub streams: u64,
    /// ECMs sent to it.
    pub ecms: u64,
    /// Errors sent to it.
    pub errors: u64,
    pub connected_secs: u64,
}

/// The headend's clock check, in [`Status`]: the daemon refuses to put on
/// the air a time more than `max_jump_secs` ahead of the last time it
/// persisted, until an operator accepts it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct ClockStatus {
    /// RFC 3339: the newest time put on the air and persisted.
    pub persisted: Option<String>,
    pub persisted_unix_ms: Option<u64>,
    pub max_jump_secs: u64,
    /// The clock is ahead by more than `max_jump_secs`: no ECM or EMM is
    /// made with it until it is accepted.
    pub refused: bool,
    /// How far the clock is ahead of `persisted`, while refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ahead_secs: Option<u64>,
    /// What to do, while refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// A run on a restored backup, in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RestoreStatus {
    /// RFC 3339: when the backup was taken.
    pub backup_taken: String,
    pub backup_taken_unix_ms: u64,
    /// RFC 3339: when `headend restore` put it in place, if it did.
    pub restored: Option<String>,
    /// Every product key renewed at the start, so that entitlements the
    /// backup does not record end. Empty until the clock is accepted.
    pub renewed: Vec<Rotated>,
}

/// The cards of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CardCounts {
    pub active: u64,
    pub revoked: u64,
}

/// A product of [`Status`]: its fields and its key timing, in whole
/// seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ProductStatus {
    #[serde(flatten)]
    pub product: Product,
    pub key_age_secs: i64,
    pub next_renewal_secs: i64,
    pub key_switch_pending: bool,
    pub key_switch_secs: i64,
    /// The renewal under way, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RenewalStatus>,
}

/// A product key renewal under way: its pending generation's delivery.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RenewalStatus {
    pub generation: u32,
    /// `prepared` (not on the air yet) or `delivering`.
    pub state: String,
    /// `flat` (an EMM-U to every holder) or `sd` (Subset Difference
    /// EMM-Gs for the cover of everyone else); empty while prepared.
    pub method: String,
    /// Subsets of the SD cover (0 for flat).
    pub subsets: u64,
    /// Why it was made (`revocation`, `scheduled`, ...).
    pub reason: String,
    /// Cards it is delivered to.
    pub holders: u64,
    /// Delivery passes over the holders finished, of `passes_needed`.
    pub passes_done: u32,
    pub passes_needed: u32,
    /// EMM-Us still to send before it is delivered.
    pub emms_left: u64,
    /// Whether every channel has sent the whole delivery.
    pub delivered: bool,
    /// When ECMs switch to it (RFC 3339; planned until delivered).
    pub activate_at: String,
}

/// A channel of [`Status`]: its fields, then where it stands (absent
/// while the supervisor has not seen it).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ChannelStatus {
    #[serde(flatten)]
    pub channel: Channel,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub run: Option<ChannelRun>,
}

/// Where a channel of [`Status`] stands: the supervisor's report.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ChannelRun {
    /// `on_air`, `waiting`, `failed`, `ended` or `off`.
    pub state: String,
    pub error: Option<String>,
    pub cause: Option<String>,
    pub fix: Option<String>,
    pub detail: Option<String>,
    pub input_packets: u64,
    pub input_bitrate_bps: u64,
    /// Seconds since the last input packet; `None` without a stream.
    pub input_silence_seconds: Option<f64>,
    /// When a failed channel is tried again.
    pub retry_in_seconds: Option<f64>,
    /// The stream's own report, while it runs (or as it stopped).
    pub health: Option<ChannelHealth>,
}

/// A channel stream's report on its input and services.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ChannelHealth {
    pub started_unix_ms: u64,
    pub input_packets: u64,
    pub input_bytes: u64,
    pub input_bitrate_bps: u64,
    pub last_input_unix_ms: Option<u64>,
    /// Continuity counter jumps in the input: packets lost before the
    /// headend read them.
    #[serde(default)]
    pub input_cc_errors: u64,
    pub output_packets: u64,
    pub output_errors: u64,
    /// Clear packets the last-line check dropped: always 0 unless the
    /// engine has a bug.
    pub clear_packets: u64,
    pub services: Vec<ServiceHealth>,
}

/// One protected service of a [`ChannelHealth`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ServiceHealth {
    pub service_id: u16,
    pub on_air: bool,
    /// Why not, when not on the air (`no_input`, `no_pat`, ...).
    pub withheld: Option<String>,
    pub detail: Option<String>,
    pub scrambled_packets: u64,
    pub clear_packets: u64,
    /// Its packets dropped, by cause.
    pub withheld_packets: std::collections::BTreeMap<String, u64>,
}

/// An ECM being sent, in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct EcmStatus {
    pub service_id: u16,
    pub product: u32,
    pub generation: u32,
    pub epoch: u64,
}

/// The EMM backlog of [`Status`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct EmmBacklog {
    pub bytes: u64,
    /// The time to send `bytes` at `bitrate`.
    pub seconds: f64,
    pub carousel_sections: u64,
    pub carousel_bytes: u64,
    pub unsent_sections: u64,
    pub unsent_bytes: u64,
    /// bit/s of TS.
    pub bitrate: u64,
}

// ---- backup and clock ----------------------------------------------------

/// `POST /api/v1/backup`: the daemon writes a consistent copy of its
/// database to `path`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// An absolute path, in a folder the daemon can write.
    pub path: String,
    /// Replace an existing file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// The answer to `POST /api/v1/backup`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct BackupTaken {
    pub path: String,
    pub bytes: u64,
    /// RFC 3339.
    pub taken: String,
    pub taken_unix_ms: u64,
}

/// The answer to `POST /api/v1/clock/accept`: the jump accepted.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ClockAccepted {
    /// RFC 3339: the last time persisted before the jump.
    pub from: String,
    /// RFC 3339: the time accepted.
    pub to: String,
    pub jump_secs: u64,
}

// ---- operator and debug --------------------------------------------------

/// The answer to `GET /api/v1/operator`: the operator's public keys, as
/// 64 hex digits each.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Operator {
    pub operator_id: u32,
    /// For `KEK_card`.
    pub x25519: String,
    /// For signed EMMs.
    pub ed25519: String,
}

/// The answer to `GET /api/v1/debug/sections`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct DebugSections {
    pub run: u64,
    /// The ECM each channel sends now.
    pub ecms: Vec<EcmSection>,
    pub emms: EmmSections,
}

/// A current ECM section, in [`DebugSections`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct EcmSection {
    pub service_id: u16,
    pub ecm_pid: u16,
    pub product: u32,
    pub generation: u32,
    pub epoch: u64,
    pub table_id: u8,
    /// The whole section, hex.
    pub section: String,
}

/// The EMM sections published since a cursor, in [`DebugSections`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct EmmSections {
    /// The cursor asked for.
    pub since: u64,
    /// The cursor to ask for next.
    pub next: u64,
    /// Sections after `since` no longer held.
    pub dropped: u64,
    /// Each section, hex.
    pub sections: Vec<String>,
}

// ---- liveness and readiness ----------------------------------------------

/// The answer to `GET /live`: `{"status": "live"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Live {
    pub status: String,
}

/// A channel that is not on the air, in the answer to `GET /ready`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct NotOnAir {
    pub name: String,
    pub service_id: u16,
    pub state: String,
    pub cause: Option<String>,
    pub error: Option<String>,
}

/// The answer to `GET /ready`: `{"status": "ready"}`, or (with 503)
/// `{"status": "not ready", "not_on_air": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Ready {
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_on_air: Option<Vec<NotOnAir>>,
}

// ---- errors --------------------------------------------------------------

/// Every refusal: one line that names the problem and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests;
