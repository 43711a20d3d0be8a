//! The multiplexer: one clear TS in, the scrambled TS with its CA
//! signalling, ECMs and EMMs out. It does no I/O; the headend's channel
//! thread feeds it packets and writes what it returns.
//!
//! It fails closed. A configured service is *on the air* only while all
//! of this holds; otherwise it is *withheld* ([`Withheld`], the first
//! that applies): none of its packets go out, our PAT does not list it
//! and its PMT and ECM are not sent.
//!
//! | cause | when |
//! |---|---|
//! | `no_input` | nothing read yet (the read loop adds: the input silent for 1.5 s) |
//! | `no_pat` | no PAT in the input |
//! | `service_missing` | the PAT does not list the service_id |
//! | `pmt_unparsable` | no PMT on the PID the PAT names, or it does not parse, or cannot take our descriptors |
//! | `unscramblable` | a PES component on a reserved PID (below 0x20, 0x1FFF), on a PMT PID or on our ECM or EMM PID; or input packets of it that come already scrambled (for 1 s after the last one) |
//! | `no_control_word` | no crypto period from the feed (or it has failed for 10 ECM intervals) |
//!
//! A cause that lasts a second (stream time) is logged at ERROR, once,
//! with what to fix; again if it clears and comes back. Programs that are
//! neither configured nor in `clear_services` are never sent.
//!
//! What it does with each input PID:
//!
//! | PID | what | out |
//! |---|---|---|
//! | 0 (PAT) | learnt (all its sections) | ours: the input's transport_stream_id, its NIT entry, the services on the air and the clear services present, under our own version number; at once when it changes, then with every ECM repetition. None while it would list no service (a receiver that sees its service leave the PAT gives up, one that sees no PMT waits), nor in the first second after the input's first PAT while a service is still coming on the air |
//! | 1 (CAT) | its descriptors are kept (of all its sections) | replaced by ours, with our CA_descriptor for the EMM PID |
//! | 0x11 (SDT, BAT) | sections assembled | the SDT of this TS (table 0x42) rewritten: the entries of the programs we never send removed, each configured service's marked `free_CA_mode = 1` with a CA_identifier_descriptor for our CA system, under the input's version number (the rewrite depends on the input section alone); one that does not parse or cannot be rewritten is dropped, never sent as it came. Other sections (another TS's SDT, the BAT) as they came. Re-cut into packets on the PID's own counter |
//! | 2..=0x1F (SI) | | as it came, unless a configured service's PMT names it as a PES component: dropped |
//! | PMT of a configured service | learnt | rewritten (CA_descriptor for the ECM PID and scrambling_descriptor in the program loop, our own version number), while on the air: at once when it changes, then with every ECM repetition |
//! | its PES components | | scrambled with the period's CW while on the air, else dropped |
//! | its section components (see [`carries_pes`]) | | as they came while on the air, else dropped |
//! | its PCR PID when not a component | | the packets without a payload, while on the air |
//! | PMT and components of a clear service (`clear_services`) | learnt | as they came; its PCR PID when not a component: the packets without a payload |
//! | PMT and components of any other program | | dropped |
//! | null (0x1FFF) | | our own null packet (never the input's payload), or replaced by EMM packets |
//! | ECM and EMM PIDs | collision: dropped | ours |
//! | anything else | not in any PMT we send | dropped |
//!
//! Every ECM interval (100 ms by default) the PAT, then each service's PMT
//! and ECM go out back to back, so that a receiver tuning in has all it
//! needs within one interval whatever the input's PSI rate; a new crypto
//! period's ECM goes out at once, before the first packet it scrambles.
//!
//! The last line: every packet leaves through one function, which drops a
//! packet with transport_scrambling_control `00` and at least one payload
//! byte on any PID that may not carry clear content (a configured
//! service's PES component or PCR-only PID, and any PID not explicitly
//! allowed: SI, the NIT, the clear services, our own PSI, ECM, EMM and null
//! packets) and counts it in `clear_packets`, which is 0 unless the code
//! before it has a bug. What counts as clear: a payload byte left in a
//! packet marked `00`. A packet that is all adaptation field (a PCR) holds
//! no content and passes. A scrambled packet whose payload is shorter than
//! 16 bytes passes although its bytes are clear: DVB-CISSA scrambles whole
//! 16-byte blocks only and leaves the residue clear (8 bytes of every full
//! 184-byte payload, all of a payload under 16 bytes, as `ts::cissa`
//! explains); such a packet is the stuffed end of a PES, a tail fragment
//! that decodes to nothing alone, and dropping it would break the picture
//! for subscribers while hiding nothing that the residue of every other
//! packet does not already show.
//!
//! PIDs: a [`Demux`] holds each input PID's role and assembles the
//! sections of the PAT, CAT and PMT PIDs.
//!
//! Continuity counters: PIDs that pass through keep theirs. When the input
//! loops, each PID's counter is re-linked with an offset so that it
//! continues where the output left it. The tables we send go out through
//! [`Repeater`]s: our PAT, CAT, ECMs and EMMs, each on a PID of its own,
//! count in their repeater; a PMT we send continues its PID's counter,
//! which it shares with whatever else goes out on that PID (another
//! program's PMT, the input's PMT before a PAT change). The input's
//! counters are followed too: a jump is a loss upstream, counted in
//! [`StreamStats::input_cc_errors`].

mod ca;
mod output;
mod psi;
#[cfg(test)]
mod tests;
mod withhold;

use super::clock::{AirClock, Span, TICKS_PER_MS};
use super::feed::{CaFeed, CryptoPeriod};
use super::health::{ServiceHealth, Withheld};
use super::{ChannelStreamConfig, EmmInsertion, StreamError, StreamStats};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use ts::cissa::{Outcome, Scrambler};
use ts::demux::{Demux, Demuxed, PidRole};
use ts::packet::{
    null_packet, Continuity, ContinuityCheck, Packet, PacketMut, PacketReader, MAX_PID, NULL_PID,
    PACKET_LEN,
};
use ts::psi::{
    packetize_continuing, Cat, Descriptor, Pat, Pmt, PrivateSection, Repeater, Sdt, TableSections,
    CA_SYSTEM_ID, MAX_SECTION_LEN, SDT_PID,
};

/// How often, in stream time, a feed is asked again for a service's
/// period while nothing says it should change, and how often EMM
/// bandwidth is handed out.
const POLL_MS: u64 = 20;
const EMM_TICK_MS: u64 = 10;
/// The EMM budget holds at least one largest section (in TS bytes).
const MIN_EMM_BURST: usize = 4_400;
const PIDS: usize = MAX_PID as usize + 1;
/// A cause must hold this long (stream time) before it is logged, so that
/// the normal start (PAT, then PMT, then the first CW, within a few
/// hundred milliseconds) logs nothing.
const REPORT_AFTER_MS: u64 = 1_000;
/// A service stays withheld this long after its last input packet that
/// came already scrambled.
const SCRAMBLED_HOLD_MS: u64 = 1_000;

/// PIDs that may carry PSI and content (not reserved, not null).
fn usable(pid: u16) -> bool {
    (0x20..NULL_PID).contains(&pid)
}

/// One packet out, with the air time (27 MHz ticks since the start) that
/// the pacer sends it at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutPacket {
    pub bytes: [u8; PACKET_LEN],
    pub ticks: u64,
}

/// Stream types whose PID is scrambled: all but those that carry sections
/// (private sections, DSM-CC, SCTE-35 cues), which a receiver's or a
/// splicer's section filter reads and which hold no content.
pub fn carries_pes(stream_type: u8) -> bool {
    !matches!(stream_type, 0x05 | 0x0B | 0x0C | 0x0D | 0x86)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Not (yet) named by any table we send: dropped.
    Drop,
    /// SI, the NIT and the explicitly clear services: as they came.
    Pass,
    Pat,
    CatIn,
    /// The PMT PID of an explicitly clear service: as it came.
    PmtPass,
    /// The PMT PID of a configured service: regenerated.
    PmtOurs,
    /// A PES component of configured service `i`: scrambled.
    Es(u8),
    /// A section component of configured service `i`: as it came while
    /// the service is on the air.
    Side(u8),
    /// The PCR PID of configured service `i` that is no component: its
    /// packets without a payload while the service is on the air.
    Pcr(u8),
    /// The PCR PID of a clear service that is no component of it: its
    /// packets without a payload.
    PcrClear,
    /// PID 0x11: its sections assembled, the SDT rewritten.
    Sdt,
    /// An ECM or EMM PID of ours.
    Generated,
    Null,
}

impl PidRole for Role {
    fn carries_sections(&self) -> bool {
        matches!(
            self,
            Role::Pat | Role::CatIn | Role::PmtOurs | Role::PmtPass | Role::Sdt
        )
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Cc {
    last: ts::psi::Continuity,
    offset: u8,
    relink: bool,
    pcr_discontinuity: bool,
}

#[derive(Debug)]
struct Active {
    epoch: u64,
    parity: ts::Parity,
    section: Arc<[u8]>,
}

#[derive(Debug)]
struct Service {
    id: u16,
    ecm_pid: u16,
    /// The PMT as it came, and as we send it.
    pmt_in: Option<Pmt>,
    pmt_out: Option<Pmt>,
    /// Our PMT's packets, on `pmt_pid`.
    pmt_repeater: Repeater,
    /// The period's ECM, on `ecm_pid`.
    ecm_repeater: Repeater,
    /// Where the PAT says the PMT is.
    pmt_pid: u16,
    scrambler: Scrambler,
    active: Option<Active>,
    next_poll: u64,
    /// When the feed started failing, while a period is still in use.
    failing_since: Option<u64>,
    /// In the PAT, its PMT and ECM sent, its packets scrambled.
    on_air: bool,
    withheld: Option<Withheld>,
    detail: Option<String>,
    /// Air time since when `withheld` holds.
    withheld_since: u64,
    /// The cause last logged at ERROR (cleared when on the air), and how
    /// many were logged.
    reported: Option<Withheld>,
    reports: u64,
    /// Why its PMT makes it unscramblable (a component on a reserved PID...).
    unscramblable: Option<String>,
    /// The last input packet of it that came scrambled: PID, air time.
    scrambled_input: Option<(u16, u64)>,
    /// Why its PMT did not parse (when no good one is known).
    pmt_error: Option<String>,
    /// The feed's last error.
    feed_error: Option<String>,
    scrambled_packets: u64,
    clear_packets: u64,
    withheld_packets: [u64; Withheld::ALL.len()],
}

#[derive(Debug)]
struct Emm {
    pid: u16,
    /// TS bytes per second; 0 turns EMMs off.
    rate: u64,
    burst: f64,
    bucket: f64,
    last_refill: u64,
    next_tick: u64,
    mode: EmmInsertion,
    /// Packets made and waiting for null packets to replace.
    queue: VecDeque<[u8; PACKET_LEN]>,
    /// Each batch of sections cut into packets, on the EMM PID's counter.
    repeater: Repeater,
}

/// The multiplexer (see the module docs).
pub struct Mux<F: CaFeed> {
    feed: F,
    /// The channel's name, for logs.
    name: String,
    /// Programs sent as they came, on purpose.
    clear_services: Vec<u16>,
    start_unix_ms: u64,
    ecm_interval: u64,
    cat_interval: u64,
    /// The role of each input PID ([`Role::Drop`] where it has none), and
    /// the sections of the PSI PIDs.
    demux: Demux<Role>,
    /// PIDs on which a clear packet with a payload may leave (the
    /// last-line check in `emit`).
    clear_ok: Vec<bool>,
    cc: Vec<Cc>,
    /// The input's continuity counters, each PID's, for
    /// [`StreamStats::input_cc_errors`].
    input_cc: Vec<ContinuityCheck>,
    services: Vec<Service>,
    /// The input's PAT, and its sections gathered (a PAT may span
    /// several).
    pat: Option<Pat>,
    pat_sections: TableSections,
    /// The PAT we send (the services on the air and the clear ones), and
    /// its packets.
    pat_out: Option<Pat>,
    pat_repeater: Repeater,
    /// Air time of the first input PAT.
    pat_seen_at: Option<u64>,
    next_psi: u64,
    /// PMTs of the clear services, by program number.
    other_pmts: HashMap<u16, Pmt>,
    cat_in: Vec<Descriptor>,
    cat_sections: TableSections,
    cat_out: Cat,
    cat_repeater: Repeater,
    next_cat: u64,
    emm: Emm,
    clock: AirClock,
    /// Input packets waiting for the next PCR to be timed.
    pending: Vec<[u8; PACKET_LEN]>,
    pending_limit: usize,
    next_event: u64,
    /// The air time of the last packet processed.
    air_ticks: u64,
    out: Vec<OutPacket>,
    scratch: Vec<[u8; PACKET_LEN]>,
    stats: StreamStats,
    warned: std::collections::HashSet<&'static str>,
    /// A service's detail may have changed: rebuild them all.
    detail_dirty: bool,
    /// Some service is withheld for a cause that leaves its PIDs unknown:
    /// dropped unreferenced packets count against it.
    orphan_withheld: bool,
    /// Bumped whenever what [`service_health`](Mux::service_health) shows
    /// changes other than by counting.
    health_generation: u64,
}

impl<F: CaFeed> std::fmt::Debug for Mux<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("services", &self.services.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<F: CaFeed> Mux<F> {
    /// A multiplexer for `cfg`'s services and PIDs. `start_unix_ms` is the
    /// Unix time of the first packet; the feed sees that plus stream time.
    pub fn new(
        cfg: &ChannelStreamConfig,
        feed: F,
        start_unix_ms: u64,
    ) -> Result<Self, StreamError> {
        cfg.validate()?;
        let services = cfg
            .services
            .iter()
            .map(|s| Service {
                id: s.service_id,
                ecm_pid: s.ecm_pid,
                pmt_in: None,
                pmt_out: None,
                pmt_repeater: Repeater::default(),
                // Checked by `validate`.
                ecm_repeater: Repeater::new(s.ecm_pid).unwrap_or_default(),
                pmt_pid: NULL_PID,
                scrambler: Scrambler::new(),
                active: None,
                next_poll: 0,
                failing_since: None,
                on_air: false,
                withheld: Some(Withheld::NoInput),
                detail: Some("nothing read from the input yet".to_owned()),
                withheld_since: 0,
                reported: None,
                reports: 0,
                unscramblable: None,
                scrambled_input: None,
                pmt_error: None,
                feed_error: None,
                scrambled_packets: 0,
                clear_packets: 0,
                withheld_packets: [0; Withheld::ALL.len()],
            })
            .collect();
        let rate = cfg.emm_bitrate / 8;
        let burst = (rate as f64 / 4.0).max(MIN_EMM_BURST as f64);
        let mut m = Mux {
            feed,
            name: cfg.name.clone(),
            clear_services: cfg.clear_services.clone(),
            start_unix_ms,
            ecm_interval: cfg.ecm_interval_ms * TICKS_PER_MS,
            cat_interval: cfg.cat_interval_ms * TICKS_PER_MS,
            demux: Demux::new(),
            clear_ok: vec![false; PIDS],
            cc: vec![Cc::default(); PIDS],
            input_cc: vec![ContinuityCheck::new(); PIDS],
            services,
            pat: None,
            pat_sections: TableSections::new(),
            pat_out: None,
            pat_repeater: Repeater::default(),
            pat_seen_at: None,
            next_psi: 0,
            other_pmts: HashMap::new(),
            cat_in: Vec::new(),
            cat_sections: TableSections::new(),
            cat_out: Cat {
                version: 0,
                current_next: true,
                descriptors: Vec::new(),
            },
            // PID 1: always in range.
            cat_repeater: Repeater::new(ts::packet::CAT_PID).unwrap_or_default(),
            next_cat: 0,
            emm: Emm {
                pid: cfg.emm_pid,
                rate,
                burst,
                // Start with a full budget: EMMs go out from the start.
                bucket: burst,
                last_refill: 0,
                next_tick: 0,
                mode: cfg.emm_insertion,
                queue: VecDeque::new(),
                repeater: Repeater::new(cfg.emm_pid).unwrap_or_default(),
            },
            clock: AirClock::new(cfg.fallback_bitrate),
            pending: Vec::with_capacity(512),
            pending_limit: 2_000,
            next_event: 0,
            air_ticks: 0,
            out: Vec::with_capacity(64),
            scratch: Vec::with_capacity(8),
            stats: StreamStats::default(),
            warned: Default::default(),
            detail_dirty: false,
            orphan_withheld: false,
            health_generation: 0,
        };
        m.rebuild_cat(true);
        m.reclassify();
        Ok(m)
    }

    pub fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// Each configured service: on the air or why not, and its counters.
    pub fn service_health(&self) -> Vec<ServiceHealth> {
        self.services
            .iter()
            .map(|s| ServiceHealth {
                service_id: s.id,
                on_air: s.on_air,
                withheld: s.withheld,
                detail: s.detail.clone(),
                scrambled_packets: s.scrambled_packets,
                clear_packets: s.clear_packets,
                withheld_packets: Withheld::ALL
                    .iter()
                    .filter(|c| s.withheld_packets[c.index()] > 0)
                    .map(|c| (*c, s.withheld_packets[c.index()]))
                    .collect(),
            })
            .collect()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Updates the counters of what [`service_health`](Self::service_health)
    /// gave, without allocating (once each cause has its entry).
    pub fn update_service_counters(&self, into: &mut [ServiceHealth]) {
        for (h, s) in into.iter_mut().zip(&self.services) {
            h.scrambled_packets = s.scrambled_packets;
            h.clear_packets = s.clear_packets;
            for c in Withheld::ALL {
                let n = s.withheld_packets[c.index()];
                if n > 0 {
                    *h.withheld_packets.entry(c).or_default() = n;
                }
            }
        }
    }

    /// Changes whenever a service goes on or off the air or its cause or
    /// detail changes (not with the counters).
    pub fn health_generation(&self) -> u64 {
        self.health_generation
    }

    pub fn feed(&self) -> &F {
        &self.feed
    }

    pub fn feed_mut(&mut self) -> &mut F {
        &mut self.feed
    }

    pub fn into_feed(self) -> F {
        self.feed
    }

    /// The air time (27 MHz ticks since the start) that the input has
    /// been processed up to.
    pub fn air_ticks(&self) -> u64 {
        self.air_ticks
    }

    /// PCR discontinuities the air clock has re-based over.
    pub fn pcr_discontinuities(&self) -> u64 {
        self.clock.discontinuities()
    }

    /// Moves the packets made so far to the end of `into`. Input packets
    /// still waiting for a PCR are not there yet: see [`flush`](Self::flush).
    pub fn take_output(&mut self, into: &mut Vec<OutPacket>) {
        if into.is_empty() {
            // The usual case: hand the buffer over, no copy.
            std::mem::swap(into, &mut self.out);
        } else {
            into.append(&mut self.out);
        }
    }

    /// The Unix time (ms) at the current air time.
    fn now_ms(&self, ticks: u64) -> u64 {
        self.start_unix_ms.saturating_add(ticks / TICKS_PER_MS)
    }

    fn warn_once(&mut self, key: &'static str, msg: std::fmt::Arguments<'_>) {
        if self.warned.insert(key) {
            tracing::warn!("{msg}");
        }
    }

    /// The input starts again from its beginning (a file loop): partial
    /// sections are dropped, the PCR starts a new time base, continuity
    /// counters are re-linked and the next PCR on each PID carries the
    /// discontinuity_indicator.
    pub fn input_restarted(&mut self) {
        self.flush();
        self.stats.loops += 1;
        self.demux.discontinuity();
        self.pat_sections.clear();
        self.cat_sections.clear();
        self.clock.discontinuity();
        for c in &mut self.cc {
            c.relink = true;
            c.pcr_discontinuity = true;
        }
        for c in &mut self.input_cc {
            c.reset();
        }
    }

    /// Takes one input packet. It waits for the next PCR to be timed
    /// (see `clock`); the output is collected for
    /// [`take_output`](Self::take_output).
    pub fn push(&mut self, pkt: &[u8; PACKET_LEN]) {
        self.stats.packets_in += 1;
        let (pid, pcr, discontinuity) = match Packet::from_array(pkt) {
            Ok(v) => {
                let pid = v.pid();
                if pid != NULL_PID && self.input_cc[usize::from(pid)].check(&v) == Continuity::Jump
                {
                    self.stats.input_cc_errors += 1;
                }
                (
                    pid,
                    v.pcr(),
                    v.adaptation_field().is_some_and(|a| a.discontinuity()),
                )
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        if pcr.is_some() && self.clock.pid().is_none() {
            // Until a configured service's PMT names its PCR PID, the
            // first PID with a PCR keeps time.
            self.clock.set_pid(pid);
        }
        self.pending.extend_from_slice(std::slice::from_ref(pkt));
        let n = self.pending.len();
        match pcr {
            Some(pcr) if self.clock.pid() == Some(pid) => {
                let span = self.clock.on_pcr(n, pcr, discontinuity);
                self.pending_limit = self.clock.pending_limit();
                self.process_pending(span);
            }
            _ if n >= self.pending_limit => {
                self.flush();
                self.pending_limit = self.clock.pending_limit();
            }
            _ => {}
        }
    }

    /// Processes the packets still waiting for a PCR, timed at the last
    /// measured rate: at the end of the input, or when it pauses.
    pub fn flush(&mut self) {
        if !self.pending.is_empty() {
            let span = self.clock.extrapolate(self.pending.len());
            self.process_pending(span);
        }
    }

    fn process_pending(&mut self, span: Span) {
        let mut pending = std::mem::take(&mut self.pending);
        // The i-th of n (from 1) at from + floor(d * i / n), stepped
        // without a division per packet.
        let n = pending.len().max(1) as u64;
        let d = span.to - span.from;
        let (step, rem) = (d / n, d % n);
        let (mut t, mut acc) = (span.from, 0u64);
        for p in pending.iter_mut() {
            t += step;
            acc += rem;
            if acc >= n {
                t += 1;
                acc -= n;
            }
            self.process(p, t);
        }
        self.air_ticks = self.air_ticks.max(t);
        pending.clear();
        self.pending = pending;
    }

    /// The role of `pid`.
    #[inline]
    fn role(&self, pid: u16) -> Role {
        self.demux.role(pid).unwrap_or(Role::Drop)
    }

    fn process(&mut self, pkt: &mut [u8; PACKET_LEN], now: u64) {
        if now >= self.next_event {
            self.timers(now);
        }
        // Validated in `push`. The role is looked up first: only the few
        // packets of a section PID go through the demultiplexer's
        // assembly (and its view of the packet), not every ES packet.
        let pid = u16::from_be_bytes([pkt[1] & 0x1F, pkt[2]]);
        let has_payload = pkt[3] & 0x10 != 0;
        let role = self.role(pid);
        let sections = if role.carries_sections() {
            let Ok(view) = Packet::from_array(pkt) else {
                return;
            };
            self.demux
                .push(&view)
                .map(|Demuxed { sections, .. }| sections)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        match role {
            Role::Drop => {
                self.stats.dropped_unreferenced += 1;
                if self.orphan_withheld {
                    self.count_orphan();
                }
            }
            Role::Generated => {
                self.stats.dropped_collision += 1;
                self.warn_once(
                    "collision",
                    format_args!("input packets on our ECM or EMM PID {pid:#06x} are dropped"),
                );
            }
            Role::Null => self.null_packet(pkt, now),
            Role::Pass => self.emit_input(pid, pkt, now),
            Role::PmtPass => {
                self.sections(pid, sections, now);
                self.emit_input(pid, pkt, now);
            }
            Role::Pat | Role::CatIn | Role::PmtOurs | Role::Sdt => {
                self.sections(pid, sections, now)
            }
            Role::Es(i) => self.scramble(usize::from(i), pid, pkt, now),
            Role::Side(i) => {
                if self.services[usize::from(i)].on_air {
                    self.emit_input(pid, pkt, now);
                } else {
                    self.withhold(usize::from(i));
                }
            }
            Role::PcrClear => {
                if has_payload {
                    self.stats.dropped_unreferenced += 1;
                } else {
                    self.emit_input(pid, pkt, now);
                }
            }
            Role::Pcr(i) => {
                if has_payload {
                    // A payload on a PID that the PMT names for its PCR
                    // only: nothing says what it is.
                    self.stats.dropped_unreferenced += 1;
                } else if self.services[usize::from(i)].on_air {
                    self.emit_input(pid, pkt, now);
                } else {
                    self.withhold(usize::from(i));
                }
            }
        }
    }

    /// Counts a dropped packet of service `i` against its current cause.
    fn withhold(&mut self, i: usize) {
        let svc = &mut self.services[i];
        let cause = svc.withheld.unwrap_or(Withheld::NoControlWord);
        svc.withheld_packets[cause.index()] += 1;
        self.stats.dropped_withheld += 1;
        if cause == Withheld::NoControlWord {
            self.stats.dropped_no_cw += 1;
        }
    }

    /// An unreferenced packet, while some service's PIDs are unknown
    /// (no PAT, not in it, no PMT): it may be that service's.
    #[cold]
    fn count_orphan(&mut self) {
        for svc in &mut self.services {
            if let Some(
                c @ (Withheld::NoPat | Withheld::ServiceMissing | Withheld::PmtUnparsable),
            ) = svc.withheld
            {
                svc.withheld_packets[c.index()] += 1;
            }
        }
    }
}

/// Runs a whole TS held in memory through a [`Mux`] and returns the
/// output, as a file output would hold it,. For tests and tools (the
/// receiver's tests can make scrambled streams with it).
pub fn process_buffer<F: CaFeed>(
    cfg: &ChannelStreamConfig,
    feed: F,
    input: &[u8],
    start_unix_ms: u64,
) -> Result<(Vec<u8>, StreamStats, F), StreamError> {
    let mut mux = Mux::new(cfg, feed, start_unix_ms)?;
    let mut reader = PacketReader::new();
    reader.push(input);
    reader.finish();
    let mut out = Vec::new();
    let mut bytes = Vec::with_capacity(input.len() + input.len() / 4);
    while let Some(p) = reader.next_packet() {
        mux.push(p);
        mux.take_output(&mut out);
        for p in out.drain(..) {
            bytes.extend_from_slice(&p.bytes);
        }
    }
    mux.flush();
    mux.take_output(&mut out);
    for p in out.drain(..) {
        bytes.extend_from_slice(&p.bytes);
    }
    let mut stats = *mux.stats();
    stats.skipped_bytes = reader.stats().skipped_bytes;
    stats.sync_losses = reader.stats().sync_losses;
    stats.pcr_discontinuities = mux.pcr_discontinuities();
    Ok((bytes, stats, mux.into_feed()))
}
