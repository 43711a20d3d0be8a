//! The headend's stream engine: a clear MPEG-TS in, the scrambled TS with
//! its CA signalling, ECMs and EMMs out.
//!
//! * [`io`]: `udp://HOST:PORT`, files and stdio; UDP output paced by the
//!   PCR as a live source would be, files as fast as possible.
//! * [`mux`]: the per-packet work. PSI is learnt and rewritten, the chosen
//!   services' elementary streams scrambled with DVB-CISSA, ECMs and the
//!   EMM carousel inserted. It does no I/O.
//! * [`feed`]: [`CaFeed`], what the engine asks of the CA side, and
//!   [`EngineFeed`], an implementation on the key engine alone.
//! * `clock`: the air clock read from the PCR, the one time base of
//!   everything above.
//! * `config`: [`ChannelStreamConfig`], one channel's stream and its
//!   checks; `channel`: a channel's thread, its [`ChannelHandle`] and
//!   [`process_buffer`]; `run`: the read loop and the paced writer.
//! * [`health`]: [`ChannelHealth`], what [`ChannelHandle::health`] tells
//!   about the input and about each service: on the air, or
//!   [`Withheld`] and why.
//! * [`bench`](mod@bench): the `scramble` figure of the `perf` report,
//!   through this engine's per-packet path.
//! * [`daemon_feed`]: the engine inside `headend run`, fed by the daemon's
//!   [`CaOutput`](crate::output::CaOutput).
//!
//! [`run_channel`] runs one channel on the calling thread until its input
//! ends or a [`Shutdown`] is triggered; [`spawn_channel`] runs it on a
//! thread of its own.
//!
//! A looping file input is re-stamped as little as possible: each PID's
//! continuity counter is re-linked (an offset per PID, so that it goes on
//! from where the output left it), and the first PCR of each PID after
//! the loop carries the discontinuity_indicator, which tells a decoder
//! that a new time base starts (its PTS and DTS with it). Re-stamping the
//! PCR, PTS and DTS instead would rewrite bytes inside the PES headers,
//! which are part of the scrambled payload that the receiver must give
//! back byte for byte; and adding the flag to packets that have no
//! adaptation field would need room they do not have. The air clock
//! itself runs on across the loop, so crypto periods and pacing continue.
//!
//! It must never send a configured service's elementary stream clear, and
//! never scramble a packet with a CW that the ECM on the air does not
//! carry: a service that cannot be scrambled is not sent at all, nor
//! announced, and programs that are not configured go out only when
//! [`ChannelStreamConfig::clear_services`] names them (see [`mux`]). No
//! input, however malformed, makes it panic.
#![forbid(unsafe_code)]

pub mod bench;
mod channel;
mod clock;
mod config;
pub mod daemon_feed;
pub mod feed;
pub mod health;
pub mod io;
pub mod mux;
mod run;

pub use channel::{
    process_buffer, run_channel, spawn_channel, ChannelHandle, Shutdown, StreamStats,
};
pub use config::{
    ChannelStreamConfig, EmmInsertion, Pacing, ServiceStream, StreamError, DEFAULT_CAT_INTERVAL_MS,
    DEFAULT_ECM_INTERVAL_MS, DEFAULT_EMM_BITRATE, DEFAULT_PACKETS_PER_DATAGRAM, MAX_SERVICES,
};
pub use daemon_feed::{spawn_daemon_channel, CaOutputFeed};
pub use feed::{CaFeed, CryptoPeriod, EngineFeed, FeedError, MIN_CRYPTO_PERIOD_MS};
pub use health::{ChannelHealth, ServiceHealth, Withheld, INPUT_SILENCE_MS};
pub use io::Endpoint;
pub use mux::{Mux, OutPacket};
