//! Why an operation on the headend's state failed.
//!
//! Three kinds are the caller's to fix, and each is typed: a request field
//! that is wrong on its own ([`StateError::Invalid`]), a name or id that
//! matches nothing ([`Unknown`]), and a request that contradicts what is
//! stored ([`Clash`]). Every other variant is the headend's own fault.
//! Each message is one line that names the problem and the fix. Nothing
//! here knows about HTTP: the admin API ([`crate::server`]) alone turns
//! these kinds into status codes.

use crate::config::ChannelProblem;
use crate::store::StoreError;
use api::{ChannelRef, ProductRef};
use headend_engine::engine::MAX_ENTITLEMENTS_PER_CARD;
use headend_engine::error::{EngineError, ScheduleError};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A field of the request is malformed or out of range.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The request names something that does not exist.
    #[error(transparent)]
    Unknown(#[from] Unknown),
    /// The request contradicts the stored state.
    #[error(transparent)]
    Clash(#[from] Clash),
    /// A config value that the database contradicts (exit 64).
    #[error("field `{field}`: {message}")]
    Config { field: String, message: String },
    #[error(transparent)]
    Store(StoreError),
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Sealed(#[from] crate::atrest::OpenError),
    #[error("key engine: {0}")]
    Engine(#[from] EngineError),
    /// The clock is further ahead of the last time put on the air than
    /// `max_clock_jump_secs`: nothing is sealed with it.
    #[error(
        "the clock reads {now}, {ahead_secs} s after the last time put on the air ({persisted}), \
         more than max_clock_jump_secs ({max_secs}): nothing is sealed with it; check the system \
         clock (NTP), and if it is right run `headend clock accept`"
    )]
    ClockJump {
        now: String,
        persisted: String,
        ahead_secs: u64,
        max_secs: u64,
    },
    #[error("{0}")]
    Internal(String),
}

impl StateError {
    /// A bad request field.
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> StateError {
        StateError::Invalid {
            field,
            message: message.into(),
        }
    }

    /// A refusal of the shared channel checks: a clash with another
    /// channel, or a field wrong on its own.
    pub(crate) fn channel(p: ChannelProblem) -> StateError {
        if p.conflict {
            StateError::Clash(Clash::Channel(p))
        } else {
            StateError::Invalid {
                field: p.field,
                message: p.message,
            }
        }
    }
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Sql(e) => StateError::Sql(e),
            StoreError::Sealed(e) => StateError::Sealed(e),
            other => StateError::Store(other),
        }
    }
}

impl From<ScheduleError<StoreError>> for StateError {
    fn from(e: ScheduleError<StoreError>) -> Self {
        match e {
            ScheduleError::Store(e) => e.into(),
            other => StateError::Internal(format!("control words: {other}")),
        }
    }
}

/// What a request named that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unknown {
    #[error("unknown product {0}")]
    Product(ProductRef),
    #[error("no channel {0}: `headend channel list` shows them")]
    Channel(ChannelRef),
    #[error("unknown card {0}")]
    Card(u32),
    #[error("card {card} has no subscription to product {product}")]
    Subscription { card: u32, product: u32 },
}

/// How a request contradicts the stored state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Clash {
    #[error("product {0:?} already exists")]
    ProductName(String),
    #[error("product {0} already exists")]
    ProductId(u32),
    #[error("product {0} has no generations left")]
    NoGenerationsLeft(u32),
    #[error(
        "service_id: service {0} already has a channel: give another service id, \
         or change that channel with `headend channel update {0}`"
    )]
    ServiceTaken(u16),
    #[error("name: channel {0:?} already exists: give another name")]
    ChannelName(String),
    /// The shared channel checks found a clash with another channel.
    #[error(transparent)]
    Channel(ChannelProblem),
    /// A channel of headend.toml is changed there, not through the API.
    #[error(
        "channel {name:?} is defined in headend.toml: {action} its [[channels]] table there \
         and restart the daemon"
    )]
    ConfigChannel { name: String, action: &'static str },
    #[error("card {card} is already registered ({state})")]
    CardRegistered { card: u32, state: String },
    #[error("card {card} is {state}")]
    CardNotActive { card: u32, state: String },
    #[error("card {0} already holds {MAX_ENTITLEMENTS_PER_CARD} products, the most a card stores")]
    CardFull(u32),
    #[error("the clock is within max_clock_jump_secs of the last time put on the air: there is no jump to accept")]
    NoClockJump,
}
