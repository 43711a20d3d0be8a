//! The stream engine's per-packet side: a clear MPEG-TS in, the scrambled
//! TS with its CA signalling, ECMs and EMMs out, all in memory.
//!
//! * [`mux`]: the per-packet work. PSI is learnt and rewritten, the chosen
//!   services' elementary streams scrambled with DVB-CISSA, ECMs and the
//!   EMM carousel inserted; [`process_buffer`] runs a whole TS held in
//!   memory through it.
//! * [`feed`]: [`CaFeed`], what the engine asks of the CA side, and
//!   [`EngineFeed`], an implementation on the key engine alone.
//! * [`clock`]: the air clock read from the PCR, the one time base of
//!   everything above.
//! * [`config`]: [`ChannelStreamConfig`], one channel's stream and its
//!   checks (all but its input and output URLs, which the code that opens
//!   them checks).
//! * [`health`]: [`ChannelHealth`], what a channel tells about its input
//!   and about each service: on the air, or [`Withheld`] and why.
//! * [`StreamStats`]: a channel's counters.
//! * [`bench`](mod@bench): the `scramble` figure of the `perf` report,
//!   through this engine's per-packet path.
//!
//! It must never send a configured service's elementary stream clear, and
//! never scramble a packet with a CW that the ECM on the air does not
//! carry: a service that cannot be scrambled is not sent at all, nor
//! announced, and programs that are not configured go out only when
//! [`ChannelStreamConfig::clear_services`] names them (see [`mux`]). No
//! input, however malformed, makes it panic.

pub mod bench;
pub mod clock;
pub mod config;
pub mod feed;
pub mod health;
pub mod mux;
mod stats;

pub use config::{
    ChannelStreamConfig, EmmInsertion, Pacing, ServiceStream, StreamError, DEFAULT_CAT_INTERVAL_MS,
    DEFAULT_ECM_INTERVAL_MS, DEFAULT_EMM_BITRATE, DEFAULT_PACKETS_PER_DATAGRAM, MAX_SERVICES,
};
pub use feed::{CaFeed, CryptoPeriod, EngineFeed, FeedError, MIN_CRYPTO_PERIOD_MS};
pub use health::{ChannelHealth, ServiceHealth, Withheld, INPUT_SILENCE_MS};
pub use mux::{process_buffer, Mux, OutPacket};
pub use stats::StreamStats;
