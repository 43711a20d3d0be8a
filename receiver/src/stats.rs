//! The receiver's counters, the live status line and the final summary.

use serde::Serialize;
use std::io::Write;
use std::time::{Duration, Instant};

/// Everything the receiver counts. All counts are since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Whole TS packets read.
    pub packets_in: u64,
    /// Packets written.
    pub packets_out: u64,
    /// Bytes skipped while looking for packet sync.
    pub bytes_skipped: u64,
    /// Times packet sync was lost after it had been found.
    pub sync_losses: u64,
    /// Packets with a malformed header (dropped).
    pub bad_packets: u64,
    /// UDP datagrams lost because the receiver fell behind.
    pub datagrams_dropped: u64,
    /// PSI, ECM or EMM sections dropped (bad CRC, continuity, length...).
    pub section_errors: u64,

    /// Packets of the service descrambled.
    pub descrambled: u64,
    /// Scrambled packets of the service dropped for want of a key, once the
    /// card had answered an ECM (or refused one).
    pub undecryptable: u64,
    /// Scrambled packets dropped before the card had answered the first
    /// ECM (zapping).
    pub before_first_key: u64,
    /// Gaps in the input: a continuity-counter jump on a component of the
    /// service, or a live input silent for longer than
    /// [`INPUT_GAP`](crate::pipeline::INPUT_GAP).
    pub input_gaps: u64,
    /// Scrambled packets dropped after a gap until an ECM gave their
    /// crypto period (at most an ECM interval's worth per gap).
    pub after_gap: u64,
    /// Scrambled packets on PIDs outside the service (dropped).
    pub scrambled_elsewhere: u64,

    /// ECM sections received (repetitions included).
    pub ecm_sections: u64,
    /// ECMs sent to the card (new ones only).
    pub ecms_to_card: u64,
    /// ECMs the card refused.
    pub ecms_refused: u64,
    /// New control words loaded into the descrambler.
    pub cw_changes: u64,

    /// EMM sections received (all addresses).
    pub emm_sections: u64,
    /// EMM sections addressed to this card or to all cards.
    pub emms_for_card: u64,
    /// Of those, copies of a section already handed to the card.
    pub emm_duplicates: u64,
    /// EMMs sent to the card.
    pub emms_to_card: u64,
    pub emms_accepted: u64,
    /// Refused as replayed: normal on a carousel.
    pub emms_replayed: u64,
    /// Refused for another reason.
    pub emms_rejected: u64,

    /// Times the card link was re-established.
    pub card_reconnects: u64,

    /// The card's time per command (ECM or EMM, every APDU of it), in
    /// microseconds: median of the last 1024, and the longest.
    pub card_us_p50: u64,
    pub card_us_max: u64,
    /// How long an ECM waited for the card (behind the command in its
    /// hands), in microseconds: median of the last 1024, and the longest.
    pub ecm_wait_us_p50: u64,
    pub ecm_wait_us_max: u64,
    /// ECMs not sent because a newer one came before the card was free
    /// (live input only): the card is slower than the crypto period.
    pub ecms_stale: u64,
    /// EMMs dropped from a full queue to the card (live input only).
    pub emms_dropped: u64,

    /// Continuity-counter jumps on the service's components (packets lost
    /// in the input).
    pub cc_errors: u64,
    /// Clear packets of the service not written because their component
    /// had not reached a random access point yet (at the start, after a
    /// loss or an outage); see `--no-rap-join`.
    pub held_before_rap: u64,
    /// Times a component's output started (or started again) at a random
    /// access point or, for audio and data, at a PES start.
    pub rap_joins: u64,
    /// Times the input fell silent (live input) and came back.
    pub input_outages: u64,
    /// PAT, PMT (of the service) and CAT changes after the first one: a
    /// new version or new content.
    pub pat_changes: u64,
    pub pmt_changes: u64,
    pub cat_changes: u64,
    /// Times the service went off the air (it left the PAT, or its PMT
    /// stopped), and times it came back.
    pub service_lost: u64,
    pub service_returned: u64,
}

impl Stats {
    /// The final one-line summary.
    pub fn summary(&self) -> String {
        format!(
            "receiver: {} packets in, {} out ({} descrambled); {} ECMs to the card ({} refused), {} CW changes; \
             {} EMMs for this card ({} accepted, {} replayed, {} rejected); {} undecryptable, {} before the first key, {} after {} input gaps; \
             card {:.1} ms per command (max {:.1}), ECMs waited up to {:.1} ms, {} stale, {} EMMs dropped; \
             {} held before a random access point, {} continuity errors, {} input outages, \
             {} PMT / {} CAT / {} PAT changes, service lost {} and back {} times",
            self.packets_in,
            self.packets_out,
            self.descrambled,
            self.ecms_to_card,
            self.ecms_refused,
            self.cw_changes,
            self.emms_to_card,
            self.emms_accepted,
            self.emms_replayed,
            self.emms_rejected,
            self.undecryptable,
            self.before_first_key,
            self.after_gap,
            self.input_gaps,
            ms(self.card_us_p50),
            ms(self.card_us_max),
            ms(self.ecm_wait_us_max),
            self.ecms_stale,
            self.emms_dropped,
            self.held_before_rap,
            self.cc_errors,
            self.input_outages,
            self.pmt_changes,
            self.cat_changes,
            self.pat_changes,
            self.service_lost,
            self.service_returned,
        )
    }

    /// The live status line (without line control).
    pub fn status(&self, elapsed: Duration) -> String {
        format!(
            "{:>6.1}s  packets {} in / {} out  ECMs {}  CW changes {}  EMMs {} ({} ok)  undecryptable {}",
            elapsed.as_secs_f64(),
            self.packets_in,
            self.packets_out,
            self.ecms_to_card,
            self.cw_changes,
            self.emms_to_card,
            self.emms_accepted,
            self.undecryptable,
        )
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Redraws a one-line status on stderr about once a second, and only when
/// stderr is a terminal (a log file gets the summary alone).
#[derive(Debug)]
pub struct StatusLine {
    enabled: bool,
    started: Instant,
    last: Option<Instant>,
    drawn: bool,
}

impl StatusLine {
    pub fn new(enabled: bool) -> Self {
        StatusLine {
            enabled,
            started: Instant::now(),
            last: None,
            drawn: false,
        }
    }

    /// For stderr: enabled when it is a terminal.
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        Self::new(std::io::stderr().is_terminal())
    }

    pub fn update(&mut self, stats: &Stats) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last = Some(now);
        let mut err = std::io::stderr().lock();
        // \r and "erase to end of line": the line is redrawn in place.
        let _ = write!(
            err,
            "\r\x1b[K{}",
            stats.status(now.duration_since(self.started))
        );
        let _ = err.flush();
        self.drawn = true;
    }

    /// Erases the status line so that a message can take its place.
    pub fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}
