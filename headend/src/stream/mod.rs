//! The headend's stream I/O around the engine crate's multiplexer
//! ([`headend_engine::stream`]): a channel's input read and its output
//! written, on a thread of its own.
//!
//! * [`io`]: `udp://HOST:PORT`, files and stdio; UDP output paced by the
//!   PCR as a live source would be, files as fast as possible; and
//!   [`validate`], the engine's checks of a channel plus its URLs.
//! * `channel`: a channel's thread and its [`ChannelHandle`]; `run`: the
//!   read loop and the paced writer.
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
//! `ChannelStreamConfig::clear_services` names them: the multiplexer
//! sees to that (see [`headend_engine::stream::mux`]).
#![forbid(unsafe_code)]

mod channel;
pub mod daemon_feed;
pub mod io;
mod run;

use headend_engine::stream::{
    clock, health, mux, CaFeed, ChannelStreamConfig, Pacing, StreamError, StreamStats,
};

pub use channel::{run_channel, spawn_channel, ChannelHandle, Shutdown};
pub use daemon_feed::{spawn_daemon_channel, CaOutputFeed};
pub use io::validate;
