//! A channel's counters.

use serde::Serialize;

/// Counters of one channel, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StreamStats {
    pub packets_in: u64,
    pub packets_out: u64,
    /// Packets scrambled (with a payload).
    pub scrambled: u64,
    pub cw_changes: u64,
    /// New periods whose epoch has the parity of the last one: the feed
    /// skipped an epoch (see the log).
    pub epoch_skips: u64,
    pub ecm_sections: u64,
    pub emm_sections: u64,
    pub emm_packets: u64,
    /// EMM sections from the feed that were not EMM sections.
    pub emm_rejected: u64,
    pub nulls_replaced: u64,
    /// PAT sections sent (the input's, again with every ECM).
    pub pat_sections: u64,
    pub pmt_sections: u64,
    /// PMT versions sent (1 + the number of changes).
    pub pmt_versions: u64,
    pub cat_sections: u64,
    /// On PIDs that no PMT names (yet).
    pub dropped_unreferenced: u64,
    /// A configured service's packets while it has no crypto period.
    pub dropped_no_cw: u64,
    /// A configured service's packets while it is off the air, whatever
    /// the cause (see [`ServiceHealth::withheld_packets`](super::ServiceHealth::withheld_packets)).
    pub dropped_withheld: u64,
    /// Packets that the last-line check found clear on a PID that must
    /// not carry clear content, and dropped. Always 0 unless the engine
    /// has a bug.
    pub clear_packets: u64,
    pub dropped_already_scrambled: u64,
    pub dropped_malformed: u64,
    /// On our ECM or EMM PIDs.
    pub dropped_collision: u64,
    pub psi_errors: u64,
    pub feed_errors: u64,
    pub loops: u64,
    pub skipped_bytes: u64,
    pub sync_losses: u64,
    /// Continuity counters that jumped in the input (TR 101 290 1.4):
    /// packets lost before the headend read them, by the encoder, the
    /// network, or the input's socket buffer overflowing.
    pub input_cc_errors: u64,
    pub pcr_discontinuities: u64,
    pub pacing_rebases: u64,
    pub udp_send_errors: u64,
}
