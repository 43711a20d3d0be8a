//! Where the clear output of each component starts: at the start of a
//! run, after a loss on its PID (a continuity-counter jump, a packet that
//! could not be descrambled), and for every component after an input
//! outage or the service's return, so that a player is never handed the
//! middle of a group of pictures.
//!
//! * **Video** starts at a random access point: a packet with
//!   payload_unit_start_indicator and the adaptation field's
//!   random_access_indicator, or, when the encoder sets none, a PES
//!   packet whose first picture is a key frame ([`ts::pes`]: an H.264
//!   IDR, an H.265 IRAP picture, an MPEG-2 sequence header). The packets
//!   of a PES packet whose first picture is not yet known are held (up to
//!   [`SCAN_HOLD`]) and written together once it is. A video component of
//!   a coding the scan does not know, or one that shows no random access
//!   point for [`RAP_WAIT`], starts at its next PES start, with a warning.
//! * **Audio and the rest** (subtitles, teletext, data) start at their
//!   first PES start, independently of the video: every audio frame can
//!   be decoded on its own, a viewer who zaps hears the sound at once and
//!   sees the picture at the next key frame, and players line both up by
//!   their time stamps.
//!
//! What is not written before that point is counted
//! ([`Stats::held_before_rap`]). With the join turned off
//! ([`super::PipelineOptions::rap_join`]) every packet that can be
//! descrambled is written, as it comes; continuity is still followed and
//! counted.
//!
//! What it must never do: change a packet, write a packet twice or out of
//! its order on its PID, or hold anything but the service's components.

use super::clock::{Moment, StreamClock};
use crate::stats::Stats;
use std::time::Duration;
use ts::packet::{Continuity, ContinuityCheck};
use ts::pes::{self, Picture, PictureScan, VideoCodec};
use ts::psi::PmtStream;
use ts::{Packet, PACKET_LEN};

/// Packets of one PES packet held while its first picture is looked for
/// (an encoder's SEI can push the first slice a few packets in).
pub(super) const SCAN_HOLD: usize = 64;

/// How long a video component waits for a random access point before it
/// starts at a PES start anyway: longer than any broadcast GOP, and than
/// ffmpeg's default of 250 frames at 25 frames/s.
pub(super) const RAP_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Video, with its coding if the scan knows it.
    Video(Option<VideoCodec>),
    Other,
}

impl Kind {
    fn of(stream_type: u8) -> Kind {
        if pes::is_video(stream_type) {
            Kind::Video(VideoCodec::of_stream_type(stream_type))
        } else {
            Kind::Other
        }
    }
}

#[derive(Debug)]
enum State {
    /// Written as it comes.
    Open,
    /// Looking for a start (since when, for [`RAP_WAIT`]).
    Waiting(Moment),
    /// The packets of a PES packet whose first picture is being looked for.
    Scanning {
        since: Moment,
        scan: PictureScan,
        held: Vec<[u8; PACKET_LEN]>,
    },
}

#[derive(Debug)]
struct Component {
    pid: u16,
    kind: Kind,
    state: State,
    cc: ContinuityCheck,
    /// The warning that no random access point came has been given.
    warned: bool,
}

/// What to do with a packet of the service ([`Join::admit`]).
#[derive(Debug)]
pub(super) enum Admit {
    /// Write it.
    Write,
    /// Nothing to write now.
    Hold,
    /// Write these, in order (the packet given is the last).
    Release(Vec<[u8; PACKET_LEN]>),
}

/// The start of every component's output (see the module docs).
#[derive(Debug)]
pub(super) struct Join {
    enabled: bool,
    components: Vec<Component>,
}

impl Join {
    pub(super) fn new(enabled: bool) -> Self {
        Join {
            enabled,
            components: Vec::new(),
        }
    }

    fn start_state(&self, clock: &StreamClock) -> State {
        if self.enabled {
            State::Waiting(clock.now())
        } else {
            State::Open
        }
    }

    /// The service's components from its PMT: a new one starts at its
    /// first start point, one that stays keeps its state, one that left is
    /// forgotten (with what it held).
    pub(super) fn set_components(&mut self, streams: &[PmtStream], clock: &StreamClock) {
        let mut old = std::mem::take(&mut self.components);
        for s in streams {
            let kind = Kind::of(s.stream_type);
            if self.components.iter().any(|c| c.pid == s.pid) {
                continue;
            }
            let c = match old.iter().position(|c| c.pid == s.pid && c.kind == kind) {
                Some(i) => old.swap_remove(i),
                None => Component {
                    pid: s.pid,
                    kind,
                    state: self.start_state(clock),
                    cc: ContinuityCheck::new(),
                    warned: false,
                },
            };
            self.components.push(c);
        }
    }

    /// Every component starts again at its next start point, and its
    /// continuity with the next packet (an input outage, the service back
    /// on the air).
    pub(super) fn restart_all(&mut self, clock: &StreamClock, stats: &mut Stats) {
        let enabled = self.enabled;
        for c in &mut self.components {
            c.cc.reset();
            if enabled {
                c.restart(clock, stats);
            }
        }
    }

    /// Follows the continuity of a packet of `pid` as it arrives: whether
    /// packets were lost before it. After a loss the component starts
    /// again at its next start point.
    pub(super) fn arrived(
        &mut self,
        view: &Packet<'_>,
        clock: &StreamClock,
        stats: &mut Stats,
    ) -> Continuity {
        let enabled = self.enabled;
        let Some(c) = self.component(view.pid()) else {
            return Continuity::Next;
        };
        let r = c.cc.check(view);
        if r == Continuity::Jump {
            stats.cc_errors += 1;
            if enabled {
                if matches!(c.state, State::Open) {
                    tracing::info!(
                        pid = c.pid,
                        "continuity jump (packets lost in the input): this component's output starts again at its next random access point"
                    );
                }
                c.restart(clock, stats);
            }
        }
        r
    }

    /// A packet of `pid` was not written (no key for it): the component's
    /// output has a hole, and starts again at its next start point.
    pub(super) fn lost(&mut self, pid: u16, clock: &StreamClock, stats: &mut Stats) {
        if !self.enabled {
            return;
        }
        if let Some(c) = self.component(pid) {
            c.restart(clock, stats);
        }
    }

    /// A clear packet of the service: written, held, or written with those
    /// held before it.
    #[inline]
    pub(super) fn admit(
        &mut self,
        p: &[u8; PACKET_LEN],
        clock: &StreamClock,
        stats: &mut Stats,
    ) -> Admit {
        if !self.enabled {
            return Admit::Write;
        }
        let Ok(view) = Packet::from_array(p) else {
            return Admit::Write;
        };
        let Some(c) = self.component(view.pid()) else {
            return Admit::Write;
        };
        if matches!(c.state, State::Open) {
            return Admit::Write;
        }
        c.admit(p, &view, clock, stats)
    }

    fn component(&mut self, pid: u16) -> Option<&mut Component> {
        self.components.iter_mut().find(|c| c.pid == pid)
    }
}

impl Component {
    /// Back to looking for a start; what was held is dropped.
    fn restart(&mut self, clock: &StreamClock, stats: &mut Stats) {
        match std::mem::replace(&mut self.state, State::Waiting(clock.now())) {
            State::Scanning { since, held, .. } => {
                stats.held_before_rap += held.len() as u64;
                self.state = State::Waiting(since);
            }
            State::Waiting(since) => self.state = State::Waiting(since),
            State::Open => {}
        }
    }

    fn open(&mut self, stats: &mut Stats) {
        self.state = State::Open;
        stats.rap_joins += 1;
    }

    /// A packet while the component waits for its start.
    fn admit(
        &mut self,
        p: &[u8; PACKET_LEN],
        view: &Packet<'_>,
        clock: &StreamClock,
        stats: &mut Stats,
    ) -> Admit {
        let since = match &self.state {
            State::Open => return Admit::Write,
            State::Waiting(since) | State::Scanning { since, .. } => *since,
        };
        if !view.pusi() {
            // The middle of a PES packet: only a scan in progress wants it.
            let State::Scanning { scan, held, .. } = &mut self.state else {
                stats.held_before_rap += 1;
                return Admit::Hold;
            };
            held.push(*p);
            return match scan.push(view.payload()) {
                Some(Picture::RandomAccess) => {
                    let held = std::mem::take(held);
                    self.open(stats);
                    Admit::Release(held)
                }
                Some(Picture::Dependent) => {
                    self.restart(clock, stats);
                    Admit::Hold
                }
                None if held.len() >= SCAN_HOLD => {
                    self.restart(clock, stats);
                    Admit::Hold
                }
                None => Admit::Hold,
            };
        }
        // A new PES packet: what was held of the one before did not start
        // with a key frame.
        if let State::Scanning { held, .. } = &mut self.state {
            stats.held_before_rap += held.len() as u64;
            self.state = State::Waiting(since);
        }
        let codec = match self.kind {
            Kind::Other => {
                self.open(stats);
                return Admit::Write;
            }
            Kind::Video(codec) => codec,
        };
        if view.adaptation_field().is_some_and(|a| a.random_access()) {
            self.open(stats);
            return Admit::Write;
        }
        if clock.since(since) >= RAP_WAIT {
            if !std::mem::replace(&mut self.warned, true) {
                tracing::warn!(
                    pid = self.pid,
                    "no random access point on this video component for {} s (no random_access_indicator, no key frame found): its output starts at a PES start",
                    RAP_WAIT.as_secs()
                );
            }
            self.open(stats);
            return Admit::Write;
        }
        let Some(codec) = codec else {
            stats.held_before_rap += 1;
            return Admit::Hold;
        };
        let payload = view.payload();
        let Ok(at) = pes::header_len(payload) else {
            stats.held_before_rap += 1;
            return Admit::Hold;
        };
        let mut scan = PictureScan::new(codec);
        match scan.push(payload.get(at..).unwrap_or_default()) {
            Some(Picture::RandomAccess) => {
                self.open(stats);
                Admit::Write
            }
            Some(Picture::Dependent) => {
                stats.held_before_rap += 1;
                Admit::Hold
            }
            None => {
                self.state = State::Scanning {
                    since,
                    scan,
                    held: vec![*p],
                };
                Admit::Hold
            }
        }
    }
}
