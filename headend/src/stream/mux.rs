//! The multiplexer: one clear TS in, the scrambled TS with its CA
//! signalling, ECMs and EMMs out. It does no I/O; [`super::run_channel`]
//! feeds it packets and writes what it returns.
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
//! | 0 (PAT) | learnt | ours: the input's transport_stream_id, its NIT entry, the services on the air and the clear services present, under our own version number; at once when it changes, then with every ECM repetition. None while it would list no service (a receiver that sees its service leave the PAT gives up, one that sees no PMT waits), nor in the first second after the input's first PAT while a service is still coming on the air |
//! | 1 (CAT) | its descriptors are kept | replaced by ours, with our CA_descriptor for the EMM PID |
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
//! Continuity counters: PIDs that pass through keep theirs. When the input
//! loops, each PID's counter is re-linked with an offset so that it
//! continues where the output left it; generated PIDs (PMT, CAT, ECM, EMM)
//! count on their own.

use super::clock::{AirClock, Span, TICKS_PER_MS};
use super::feed::{CaFeed, CryptoPeriod};
use super::health::{ServiceHealth, Withheld};
use super::{ChannelStreamConfig, EmmInsertion, StreamError, StreamStats};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use ts::cissa::{Outcome, Scrambler};
use ts::packet::{null_packet, Packet, MAX_PID, NULL_PID, PACKET_LEN};
use ts::psi::{
    packetize, Cat, Descriptor, Pat, Pmt, PrivateSection, SectionAssembler, CA_SYSTEM_ID,
    MAX_SECTION_LEN,
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
    /// An ECM or EMM PID of ours.
    Generated,
    Null,
}

#[derive(Debug, Clone, Copy, Default)]
struct Cc {
    last: Option<u8>,
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
    pmt_out: Option<(Pmt, Vec<u8>)>,
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
    roles: Vec<Role>,
    /// PIDs on which a clear packet with a payload may leave (the
    /// last-line check in `emit`).
    clear_ok: Vec<bool>,
    cc: Vec<Cc>,
    services: Vec<Service>,
    assemblers: HashMap<u16, SectionAssembler>,
    /// The input's PAT.
    pat: Option<Pat>,
    /// The PAT we send (the services on the air and the clear ones), and
    /// its section.
    pat_out: Option<(Pat, Vec<u8>)>,
    /// Air time of the first input PAT.
    pat_seen_at: Option<u64>,
    next_psi: u64,
    /// PMTs of the clear services, by program number.
    other_pmts: HashMap<u16, Pmt>,
    cat_in: Vec<Descriptor>,
    cat_out: (Cat, Vec<u8>),
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
            roles: vec![Role::Drop; PIDS],
            clear_ok: vec![false; PIDS],
            cc: vec![Cc::default(); PIDS],
            services,
            assemblers: HashMap::new(),
            pat: None,
            pat_out: None,
            pat_seen_at: None,
            next_psi: 0,
            other_pmts: HashMap::new(),
            cat_in: Vec::new(),
            cat_out: (
                Cat {
                    version: 0,
                    current_next: true,
                    descriptors: Vec::new(),
                },
                Vec::new(),
            ),
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
        for a in self.assemblers.values_mut() {
            a.reset();
        }
        self.clock.discontinuity();
        for c in &mut self.cc {
            c.relink = true;
            c.pcr_discontinuity = true;
        }
    }

    /// Takes one input packet. It waits for the next PCR to be timed
    /// (see `clock`); the output is collected for
    /// [`take_output`](Self::take_output).
    pub fn push(&mut self, pkt: &[u8; PACKET_LEN]) {
        self.stats.packets_in += 1;
        let (pid, pcr, discontinuity) = match Packet::from_array(pkt) {
            Ok(v) => (
                v.pid(),
                v.pcr(),
                v.adaptation_field().is_some_and(|a| a.discontinuity()),
            ),
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

    fn process(&mut self, pkt: &mut [u8; PACKET_LEN], now: u64) {
        // Validated in `push`.
        let pid = u16::from_be_bytes([pkt[1] & 0x1F, pkt[2]]);
        if now >= self.next_event {
            self.timers(now);
        }
        match self.roles[usize::from(pid)] {
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
                self.sections(pid, pkt, now);
                self.emit_input(pid, pkt, now);
            }
            Role::Pat | Role::CatIn | Role::PmtOurs => self.sections(pid, pkt, now),
            Role::Es(i) => self.scramble(usize::from(i), pid, pkt, now),
            Role::Side(i) => {
                if self.services[usize::from(i)].on_air {
                    self.emit_input(pid, pkt, now);
                } else {
                    self.withhold(usize::from(i));
                }
            }
            Role::PcrClear => {
                if pkt[3] & 0x10 != 0 {
                    self.stats.dropped_unreferenced += 1;
                } else {
                    self.emit_input(pid, pkt, now);
                }
            }
            Role::Pcr(i) => {
                if pkt[3] & 0x10 != 0 {
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

    // ------------------------------------------------------------ output

    /// Every packet leaves through here. The last line of defence: a
    /// packet marked clear that carries payload bytes, on a PID that may
    /// not carry clear content (a protected service's PES component, its
    /// PCR-only PID, anything not explicitly allowed), is dropped and
    /// counted in `clear_packets`, whatever the code before decided.
    #[inline]
    fn emit(&mut self, bytes: &[u8; PACKET_LEN], ticks: u64) {
        // transport_scrambling_control 00 and a payload: rare on the
        // per-packet path, where almost everything is scrambled.
        if bytes[3] & 0xD0 == 0x10 && !self.may_leave_clear(bytes) {
            return;
        }
        self.stats.packets_out += 1;
        self.out.push(OutPacket {
            bytes: *bytes,
            ticks,
        });
    }

    /// Whether a clear packet with the payload flag may leave; if not, it
    /// is counted and reported.
    #[cold]
    #[inline(never)]
    fn may_leave_clear(&mut self, bytes: &[u8; PACKET_LEN]) -> bool {
        let pid = usize::from(u16::from_be_bytes([bytes[1] & 0x1F, bytes[2]]));
        if self.clear_ok[pid] || clear_payload_len(bytes) == 0 {
            return true;
        }
        self.caught_clear(pid);
        false
    }

    fn caught_clear(&mut self, pid: usize) {
        self.stats.clear_packets += 1;
        let svc = match self.roles[pid] {
            Role::Es(i) | Role::Side(i) | Role::Pcr(i) => {
                let svc = &mut self.services[usize::from(i)];
                svc.clear_packets += 1;
                Some(svc.id)
            }
            _ => None,
        };
        if self.warned.insert("clear") {
            tracing::error!(
                channel = %self.name,
                "channel {:?}: a clear packet on PID {pid:#06x}{} reached the output and was \
                 dropped; nothing left clear, but this is a bug: report it with the input",
                self.name,
                svc.map(|s| format!(" (service {s})")).unwrap_or_default(),
            );
        }
    }

    /// Continuity re-linking and the post-loop PCR discontinuity flag, for
    /// packets that pass through (scrambled or not).
    fn relink(&mut self, pid: u16, pkt: &mut [u8; PACKET_LEN]) {
        let c = &mut self.cc[usize::from(pid)];
        let has_payload = pkt[3] & 0x10 != 0;
        let cc_in = pkt[3] & 0x0F;
        if c.relink {
            if let Some(last) = c.last {
                let want = if has_payload {
                    last.wrapping_add(1)
                } else {
                    last
                };
                c.offset = want.wrapping_sub(cc_in) & 0x0F;
            }
            if has_payload {
                c.relink = false;
            }
        }
        let out = (cc_in + c.offset) & 0x0F;
        pkt[3] = (pkt[3] & 0xF0) | out;
        c.last = Some(out);
        // The adaptation field was validated: a PCR flag means 7+ bytes.
        if c.pcr_discontinuity && pkt[3] & 0x20 != 0 && pkt[4] >= 7 && pkt[5] & 0x10 != 0 {
            pkt[5] |= 0x80;
            c.pcr_discontinuity = false;
        }
    }

    fn emit_input(&mut self, pid: u16, pkt: &mut [u8; PACKET_LEN], now: u64) {
        self.relink(pid, pkt);
        self.emit(pkt, now);
    }

    /// Cuts sections into packets on `pid` with its own counter.
    fn emit_sections(&mut self, pid: u16, sections: &[&[u8]], now: u64) -> usize {
        let c = &mut self.cc[usize::from(pid)];
        let mut cc = c.last.map_or(0, |l| l.wrapping_add(1) & 0x0F);
        self.scratch.clear();
        if packetize(sections, pid, &mut cc, &mut self.scratch).is_err() {
            return 0;
        }
        if !self.scratch.is_empty() {
            c.last = Some(cc.wrapping_sub(1) & 0x0F);
        }
        let n = self.scratch.len();
        for i in 0..n {
            let p = self.scratch[i];
            self.emit(&p, now);
        }
        n
    }

    // ------------------------------------------------------------- PSI

    fn sections(&mut self, pid: u16, pkt: &[u8; PACKET_LEN], now: u64) {
        let Ok(view) = Packet::from_array(pkt) else {
            return;
        };
        let results = self.assemblers.entry(pid).or_default().push(&view);
        for r in results {
            match r {
                Ok(section) => self.section(pid, &section, now),
                Err(e) => {
                    self.stats.psi_errors += 1;
                    self.pmt_trouble(pid, || format!("its PMT on PID {pid:#06x}: {e}"));
                }
            }
        }
    }

    /// Notes why the PMT on `pid` is unusable, for the services that
    /// have no good one and whose PMT the PAT puts there.
    fn pmt_trouble(&mut self, pid: u16, why: impl Fn() -> String) {
        let Some(pat) = &self.pat else { return };
        for svc in &mut self.services {
            if svc.pmt_in.is_none() && pat.pmt_pid(svc.id) == Some(pid) {
                svc.pmt_error = Some(why());
                self.detail_dirty = true;
            }
        }
    }

    fn section(&mut self, pid: u16, section: &[u8], now: u64) {
        let role = self.roles[usize::from(pid)];
        match (role, section.first().copied()) {
            (Role::Pat, Some(0x00)) => match Pat::from_section(section) {
                Ok(pat) if pat.current_next => {
                    if self.pat.as_ref() != Some(&pat) {
                        // A service whose PMT moved waits for the PMT on
                        // its new PID.
                        for svc in &mut self.services {
                            if pat.pmt_pid(svc.id) != Some(svc.pmt_pid) {
                                svc.pmt_in = None;
                                svc.pmt_error = None;
                            }
                        }
                        self.pat = Some(pat);
                        self.pat_seen_at.get_or_insert(now);
                        self.reclassify();
                        // Our PAT goes out at once if it changed; then
                        // with the bundle.
                        self.detail_dirty = true;
                        self.refresh(now);
                    }
                }
                Ok(_) => {}
                Err(_) => self.stats.psi_errors += 1,
            },
            (Role::CatIn, Some(0x01)) => match Cat::from_section(section) {
                Ok(cat) if cat.current_next => {
                    let mut d = cat.descriptors;
                    d.retain(|d| !is_ours(d));
                    if d != self.cat_in {
                        self.cat_in = d;
                        self.rebuild_cat(false);
                    }
                }
                Ok(_) => {}
                Err(_) => self.stats.psi_errors += 1,
            },
            (Role::PmtPass | Role::PmtOurs, Some(0x02)) => self.pmt_section(pid, section, now),
            // Anything else on a PMT PID that we regenerate is not sent.
            _ => {}
        }
    }

    fn pmt_section(&mut self, pid: u16, section: &[u8], now: u64) {
        let pmt = match Pmt::from_section(section) {
            Ok(p) => p,
            Err(e) => {
                self.stats.psi_errors += 1;
                self.pmt_trouble(pid, || {
                    format!("its PMT on PID {pid:#06x} does not parse: {e}")
                });
                return;
            }
        };
        let listed = self
            .pat
            .as_ref()
            .and_then(|p| p.pmt_pid(pmt.program_number));
        if listed != Some(pid) || !pmt.current_next {
            // Not the PMT the PAT points at: ignored, not sent.
            return;
        }
        let Some(i) = self
            .services
            .iter()
            .position(|s| s.id == pmt.program_number)
        else {
            if !self.clear_services.contains(&pmt.program_number) {
                // Not sent: neither ours nor clear on purpose.
                return;
            }
            if self.other_pmts.get(&pmt.program_number) != Some(&pmt) {
                self.other_pmts.insert(pmt.program_number, pmt);
                self.reclassify();
            }
            if self.roles[usize::from(pid)] == Role::PmtOurs {
                // A clear service's PMT on the PID of one of ours.
                self.emit_sections(pid, &[section], now);
            }
            return;
        };
        if self.services[i].pmt_in.as_ref() != Some(&pmt) {
            match rewrite_pmt(
                &pmt,
                self.services[i].ecm_pid,
                self.services[i].pmt_out.as_ref(),
            ) {
                Ok(out) => {
                    if self.services[i].pmt_out.as_ref().map(|o| o.0.version) != Some(out.0.version)
                    {
                        self.stats.pmt_versions += 1;
                    }
                    self.services[i].pmt_out = Some(out);
                }
                Err(e) => {
                    self.stats.psi_errors += 1;
                    if self.services[i].pmt_in.is_none() {
                        self.services[i].pmt_error =
                            Some(format!("its PMT cannot take our CA signalling: {e}"));
                        self.detail_dirty = true;
                    }
                    return;
                }
            }
            let svc = &mut self.services[i];
            svc.pmt_in = Some(pmt);
            svc.pmt_pid = pid;
            svc.pmt_error = None;
            self.reclassify();
            self.detail_dirty = true;
            self.refresh(now);
            // A new or changed PMT goes out at once (if the service is on
            // the air); then with the bundle.
            self.emit_pmt(i, now);
        }
    }

    /// Makes the PAT we send from the input's: its NIT entry, the
    /// services on the air and the clear services, under our own version
    /// number. True if it changed.
    fn rebuild_pat(&mut self) -> bool {
        let Some(pat) = &self.pat else {
            return false;
        };
        let programs = pat
            .programs
            .iter()
            .filter(|e| {
                let n = e.program_number;
                (n == 0 && (0x10..NULL_PID).contains(&e.pid))
                    || (usable(e.pid)
                        && (self.clear_services.contains(&n)
                            || self.services.iter().any(|s| s.id == n && s.on_air)))
            })
            .cloned()
            .collect();
        let mut out = Pat {
            transport_stream_id: pat.transport_stream_id,
            version: pat.version & 0x1F,
            current_next: true,
            programs,
        };
        if let Some((prev, _)) = &self.pat_out {
            out.version = prev.version;
            if &out == prev {
                return false;
            }
            out.version = (prev.version + 1) & 0x1F;
        }
        match out.to_section() {
            Ok(s) => {
                self.pat_out = Some((out, s));
                self.health_generation += 1;
                true
            }
            Err(e) => {
                // Fewer programs than the input's PAT: cannot be.
                self.stats.psi_errors += 1;
                self.warn_once("pat", format_args!("our PAT cannot be made: {e}"));
                false
            }
        }
    }

    /// Sends our PAT, unless it lists no service: with nothing on the
    /// air no PAT goes out at all, since a receiver that sees its service
    /// leave the PAT gives up, where one that sees no PMT waits. For the
    /// same reason, in the first second after the input's first PAT, while
    /// a service has yet to go on the air (its PMT and CW may come a
    /// moment after the others'), none goes out either.
    fn emit_pat(&mut self, now: u64) {
        let starting = self
            .pat_seen_at
            .is_some_and(|t| now < t.saturating_add(REPORT_AFTER_MS * TICKS_PER_MS))
            && self.services.iter().any(|s| !s.on_air);
        let Some((pat, s)) = self.pat_out.as_mut() else {
            return;
        };
        if starting || pat.programs.iter().all(|e| e.program_number == 0) {
            return;
        }
        let s = std::mem::take(s);
        self.emit_sections(0, &[&s], now);
        if let Some(o) = self.pat_out.as_mut() {
            o.1 = s;
        }
        self.stats.pat_sections += 1;
    }

    fn emit_pmt(&mut self, i: usize, now: u64) {
        let pid = self.services[i].pmt_pid;
        if !self.services[i].on_air {
            return;
        }
        let Some(o) = self.services[i].pmt_out.as_mut() else {
            return;
        };
        let s = std::mem::take(&mut o.1);
        if self.roles[usize::from(pid)] == Role::PmtOurs {
            self.emit_sections(pid, &[&s], now);
            self.stats.pmt_sections += 1;
        }
        if let Some(o) = self.services[i].pmt_out.as_mut() {
            o.1 = s;
        }
    }

    /// PAT, then each live service's PMT and ECM, back to back: a
    /// receiver that tunes in has all it needs to descramble within one
    /// interval, whatever the input's PSI rate.
    fn emit_psi_bundle(&mut self, now: u64) {
        self.emit_pat(now);
        for i in 0..self.services.len() {
            if self.services[i].on_air {
                self.emit_pmt(i, now);
                self.emit_ecm(i, now);
            }
        }
    }

    // ----------------------------------------------------------- health

    /// Why service `i` cannot go on the air now, if it cannot.
    fn cause(&self, i: usize, now: u64) -> Option<Withheld> {
        let svc = &self.services[i];
        if self.stats.packets_in == 0 {
            return Some(Withheld::NoInput);
        }
        let Some(pat) = &self.pat else {
            return Some(Withheld::NoPat);
        };
        let Some(pmt_pid) = pat.pmt_pid(svc.id) else {
            return Some(Withheld::ServiceMissing);
        };
        if svc.pmt_in.is_none() || self.roles[usize::from(pmt_pid)] != Role::PmtOurs {
            return Some(Withheld::PmtUnparsable);
        }
        let hold = SCRAMBLED_HOLD_MS * TICKS_PER_MS;
        if svc.unscramblable.is_some()
            || svc
                .scrambled_input
                .is_some_and(|(_, t)| now.saturating_sub(t) < hold)
        {
            return Some(Withheld::Unscramblable);
        }
        if svc.active.is_none() {
            return Some(Withheld::NoControlWord);
        }
        None
    }

    /// What the operator reads next to the cause.
    fn detail(&self, i: usize, cause: Withheld) -> String {
        let svc = &self.services[i];
        let pmt_pid = self.pat.as_ref().and_then(|p| p.pmt_pid(svc.id));
        match cause {
            Withheld::NoInput => "nothing read from the input yet".to_owned(),
            Withheld::NoPat => "the input carries no PAT".to_owned(),
            Withheld::ServiceMissing => {
                let programs: Vec<String> = self
                    .pat
                    .iter()
                    .flat_map(|p| &p.programs)
                    .filter(|e| e.program_number != 0)
                    .map(|e| e.program_number.to_string())
                    .collect();
                if programs.is_empty() {
                    format!("the input's PAT lists no program, so not {}", svc.id)
                } else {
                    format!(
                        "the input's PAT lists program{} {}, not {}",
                        if programs.len() == 1 { "" } else { "s" },
                        programs.join(", "),
                        svc.id
                    )
                }
            }
            Withheld::PmtUnparsable => match (&svc.pmt_error, pmt_pid) {
                (Some(e), _) => e.clone(),
                (None, Some(p)) if !usable(p) => {
                    format!("the input's PAT puts its PMT on reserved PID {p:#06x}")
                }
                (None, Some(p)) if self.roles[usize::from(p)] == Role::Generated => {
                    format!("its PMT is on PID {p:#06x}, the channel's ECM or EMM PID")
                }
                (None, Some(p)) => format!("no PMT on PID {p:#06x} yet"),
                (None, None) => "no PMT yet".to_owned(),
            },
            Withheld::Unscramblable => match (&svc.unscramblable, svc.scrambled_input) {
                (Some(why), _) => why.clone(),
                (None, Some((pid, _))) => {
                    format!("input packets on PID {pid:#06x} come already scrambled")
                }
                (None, None) => "a component cannot be scrambled".to_owned(),
            },
            Withheld::NoControlWord => match &svc.feed_error {
                Some(e) => format!("no control word from the CA side: {e}"),
                None => "no control word from the CA side yet".to_owned(),
            },
        }
    }

    /// Decides which services are on the air, logs the causes that
    /// last, and remakes our PAT (sent with the next bundle, at once) when
    /// that changes what it lists.
    fn refresh(&mut self, now: u64) {
        let dirty = std::mem::take(&mut self.detail_dirty);
        let mut changed = dirty;
        let hold = SCRAMBLED_HOLD_MS * TICKS_PER_MS;
        for i in 0..self.services.len() {
            let svc = &mut self.services[i];
            if svc
                .scrambled_input
                .is_some_and(|(_, t)| now.saturating_sub(t) >= hold)
            {
                svc.scrambled_input = None;
            }
            let cause = self.cause(i, now);
            let svc = &self.services[i];
            if cause != svc.withheld || (dirty && cause.is_some()) {
                let detail = cause.map(|c| self.detail(i, c));
                let svc = &mut self.services[i];
                if cause != svc.withheld || detail != svc.detail {
                    self.health_generation += 1;
                }
                if cause != svc.withheld {
                    svc.withheld_since = now;
                }
                svc.withheld = cause;
                svc.detail = detail;
            }
            let svc = &mut self.services[i];
            if svc.on_air != cause.is_none() {
                svc.on_air = cause.is_none();
                changed = true;
                self.health_generation += 1;
            }
            match cause {
                Some(c)
                    if svc.reported != Some(c)
                        && now.saturating_sub(svc.withheld_since)
                            >= REPORT_AFTER_MS * TICKS_PER_MS =>
                {
                    svc.reported = Some(c);
                    svc.reports += 1;
                    tracing::error!(
                        channel = %self.name,
                        service = svc.id,
                        cause = c.as_str(),
                        "channel {:?}: service {} is off the air: {}; {}",
                        self.name,
                        svc.id,
                        svc.detail.as_deref().unwrap_or(""),
                        c.fix()
                    );
                }
                None if svc.reported.take().is_some() => {
                    tracing::info!(
                        channel = %self.name,
                        service = svc.id,
                        "channel {:?}: service {} is on the air again",
                        self.name,
                        svc.id
                    );
                }
                _ => {}
            }
        }
        self.orphan_withheld = self.services.iter().any(|s| {
            matches!(
                s.withheld,
                Some(Withheld::NoPat | Withheld::ServiceMissing | Withheld::PmtUnparsable)
            )
        });
        if changed && self.rebuild_pat() {
            self.next_psi = now;
            self.next_event = now;
        }
    }

    /// Rebuilds every PID's role, and which may carry clear content,
    /// from the PAT and the PMTs.
    fn reclassify(&mut self) {
        let mut roles = vec![Role::Drop; PIDS];
        roles[0] = Role::Pat;
        roles[1] = Role::CatIn;
        for r in &mut roles[2..0x20] {
            *r = Role::Pass;
        }
        roles[usize::from(NULL_PID)] = Role::Null;
        // Nothing of the input goes out on our ECM and EMM PIDs.
        for s in &self.services {
            roles[usize::from(s.ecm_pid)] = Role::Generated;
        }
        roles[usize::from(self.emm.pid)] = Role::Generated;
        let mut programs = Vec::new();
        if let Some(pat) = &self.pat {
            for e in &pat.programs {
                if e.program_number == 0 {
                    if usable(e.pid) && roles[usize::from(e.pid)] == Role::Drop {
                        roles[usize::from(e.pid)] = Role::Pass; // NIT
                    }
                    continue;
                }
                programs.push(e.program_number);
                if !usable(e.pid) {
                    continue;
                }
                let r = &mut roles[usize::from(e.pid)];
                if self.services.iter().any(|s| s.id == e.program_number) {
                    if *r != Role::Generated {
                        *r = Role::PmtOurs;
                    }
                } else if self.clear_services.contains(&e.program_number) && *r == Role::Drop {
                    *r = Role::PmtPass;
                }
            }
        }
        // The clear services, as they came.
        for (program, pmt) in &self.other_pmts {
            if !programs.contains(program) || !self.clear_services.contains(program) {
                continue;
            }
            for pid in pmt.streams.iter().map(|s| s.pid) {
                if usable(pid) && roles[usize::from(pid)] == Role::Drop {
                    roles[usize::from(pid)] = Role::Pass;
                }
            }
            if usable(pmt.pcr_pid) && roles[usize::from(pmt.pcr_pid)] == Role::Drop {
                roles[usize::from(pmt.pcr_pid)] = Role::PcrClear;
            }
        }
        // Ours: every PES component scrambled, over anything else that
        // claims its PID; a component we cannot scramble withholds the
        // whole service.
        let mut clock_pid = None;
        let mut why_not = vec![None; self.services.len()];
        for (i, svc) in self.services.iter().enumerate() {
            let Some(pmt) = svc.pmt_in.as_ref().filter(|_| programs.contains(&svc.id)) else {
                continue;
            };
            let me = i as u8;
            for st in &pmt.streams {
                let pid = st.pid;
                let r = &mut roles[usize::from(pid)];
                if !carries_pes(st.stream_type) {
                    if usable(pid) && matches!(*r, Role::Drop | Role::Pass) {
                        *r = Role::Side(me);
                    }
                    continue;
                }
                let why = if !usable(pid) {
                    Some("a reserved PID")
                } else {
                    match *r {
                        Role::Generated => Some("the channel's ECM or EMM PID"),
                        Role::PmtOurs | Role::PmtPass => Some("a PMT PID"),
                        _ => None,
                    }
                };
                match why {
                    Some(what) => {
                        why_not[i].get_or_insert_with(|| {
                            format!(
                                "its component on PID {pid:#06x} (stream_type {:#04x}) is on {what}",
                                st.stream_type
                            )
                        });
                        if (2..0x20).contains(&pid) {
                            // Not as SI either: it is said to be content.
                            *r = Role::Drop;
                        }
                    }
                    None => *r = Role::Es(me),
                }
            }
            if usable(pmt.pcr_pid) {
                let r = &mut roles[usize::from(pmt.pcr_pid)];
                if *r == Role::Drop {
                    *r = Role::Pcr(me);
                }
                clock_pid.get_or_insert(pmt.pcr_pid);
            }
        }
        for (svc, why) in self.services.iter_mut().zip(why_not) {
            if svc.unscramblable != why {
                svc.unscramblable = why;
                self.detail_dirty = true;
            }
        }
        self.assemblers.retain(|pid, _| {
            matches!(
                roles[usize::from(*pid)],
                Role::Pat | Role::CatIn | Role::PmtOurs | Role::PmtPass
            )
        });
        for (ok, r) in self.clear_ok.iter_mut().zip(&roles) {
            *ok = !matches!(r, Role::Drop | Role::Es(_) | Role::Pcr(_) | Role::PcrClear);
        }
        self.roles = roles;
        if let Some(pid) = clock_pid {
            self.clock.set_pid(pid);
        }
        // Services may have gone on or off the air: run the timers at once.
        self.next_event = 0;
    }

    fn rebuild_cat(&mut self, first: bool) {
        let mut descriptors = self.cat_in.clone();
        descriptors.push(Descriptor::iodoform_ca(self.emm.pid));
        let version = if first {
            0
        } else {
            (self.cat_out.0.version + 1) & 0x1F
        };
        let cat = Cat {
            version,
            current_next: true,
            descriptors,
        };
        match cat.to_section() {
            Ok(s) => {
                self.cat_out = (cat, s);
                // Send the new table at once.
                self.next_cat = 0;
                self.next_event = 0;
            }
            Err(e) => {
                self.stats.psi_errors += 1;
                // Keep the CAT we have: it is valid.
                self.warn_once("cat", format_args!("input CAT cannot be merged: {e}"));
                if first {
                    // Our own descriptor alone always fits.
                    self.cat_in.clear();
                    self.rebuild_cat(true);
                }
            }
        }
    }

    // ----------------------------------------------------------- timers

    fn timers(&mut self, now: u64) {
        let mut next = u64::MAX;
        for i in 0..self.services.len() {
            if self.services[i].pmt_in.is_none() {
                continue;
            }
            if now >= self.services[i].next_poll {
                self.poll(i, now);
            }
            next = next.min(self.services[i].next_poll);
        }
        self.refresh(now);
        if self.services.iter().any(|s| !s.on_air) {
            // Causes that time out, and their reports.
            next = next.min(now.saturating_add(POLL_MS * TICKS_PER_MS));
        }
        if now >= self.next_psi {
            self.emit_psi_bundle(now);
            self.next_psi = now.saturating_add(self.ecm_interval);
        }
        next = next.min(self.next_psi);
        if now >= self.next_cat {
            let s = std::mem::take(&mut self.cat_out.1);
            self.emit_sections(1, &[&s], now);
            self.cat_out.1 = s;
            self.stats.cat_sections += 1;
            self.next_cat = now.saturating_add(self.cat_interval);
        }
        next = next.min(self.next_cat);
        if self.emm.rate > 0 {
            if now >= self.emm.next_tick {
                self.emm_tick(now);
            }
            next = next.min(self.emm.next_tick);
        }
        self.next_event = next;
    }

    fn poll(&mut self, i: usize, now: u64) {
        let now_ms = self.now_ms(now);
        let id = self.services[i].id;
        let result = self
            .feed
            .period(id, now_ms)
            .and_then(|p| p.check().map(|()| p));
        let next_ticks = |ms: u64| {
            ms.saturating_sub(self.start_unix_ms)
                .saturating_mul(TICKS_PER_MS)
        };
        let mut next_poll = now.saturating_add(POLL_MS * TICKS_PER_MS);
        if let Ok(CryptoPeriod {
            next_ms: Some(ms), ..
        }) = &result
        {
            let at = next_ticks(*ms);
            if at > now {
                next_poll = next_poll.min(at);
            }
        }
        let svc = &mut self.services[i];
        svc.next_poll = next_poll;
        match result {
            Ok(p) => {
                svc.failing_since = None;
                if svc.feed_error.take().is_some() {
                    self.detail_dirty = true;
                }
                let changed = match &svc.active {
                    Some(a) => a.epoch != p.epoch || a.section != p.ecm_section,
                    None => true,
                };
                if changed {
                    self.start_period(i, p, now);
                }
            }
            Err(e) => {
                let grace = self.ecm_interval.max(POLL_MS * TICKS_PER_MS) * 10;
                let since = *svc.failing_since.get_or_insert(now);
                if svc.active.is_some() && now.saturating_sub(since) > grace {
                    // The feed has lost the service: stop sending it rather
                    // than scramble on with a CW that nobody renews.
                    svc.active = None;
                    svc.scrambler = Scrambler::new();
                }
                self.stats.feed_errors += 1;
                let e = e.to_string();
                if svc.active.is_some() && svc.feed_error.is_none() {
                    tracing::warn!(
                        channel = %self.name,
                        service = id,
                        "channel {:?}: the CA feed fails for service {id}, which goes on with \
                         its current control word for now: {e}",
                        self.name
                    );
                }
                if svc.feed_error.as_ref() != Some(&e) {
                    svc.feed_error = Some(e);
                    self.detail_dirty = true;
                }
            }
        }
    }

    fn start_period(&mut self, i: usize, p: CryptoPeriod, now: u64) {
        let svc = &mut self.services[i];
        let parity = p.parity();
        let previous = svc.active.as_ref().map(|a| (a.epoch, a.parity));
        svc.scrambler.set_even(&p.cws.even);
        svc.scrambler.set_odd(&p.cws.odd);
        svc.active = Some(Active {
            epoch: p.epoch,
            parity,
            section: p.ecm_section,
        });
        if let Some((old_epoch, old_parity)) = previous {
            if old_epoch != p.epoch {
                self.stats.cw_changes += 1;
                if old_parity == parity {
                    // The feed skipped an epoch (its scheduler stalled for
                    // more than a period): this ECM keeps the table_id of
                    // the last one, and its CW was never announced.
                    // Receivers that pass the card every changed ECM
                    // recover at once; nothing better exists.
                    self.stats.epoch_skips += 1;
                    tracing::warn!(
                        service = svc.id,
                        epoch = p.epoch,
                        "the CA feed skipped an epoch"
                    );
                }
            }
        }
        // The new ECM goes out at once, before the first packet of the
        // period (a receiver passes an ECM to its card when it changes),
        // with the PAT and PMT; the repetitions follow from here.
        self.next_psi = now;
        self.next_event = now;
    }

    fn emit_ecm(&mut self, i: usize, now: u64) {
        let Some(a) = &self.services[i].active else {
            return;
        };
        let section = a.section.clone();
        let pid = self.services[i].ecm_pid;
        self.emit_sections(pid, &[&section], now);
        self.stats.ecm_sections += 1;
    }

    fn emm_tick(&mut self, now: u64) {
        let dt = now.saturating_sub(self.emm.last_refill);
        self.emm.last_refill = now;
        self.emm.bucket = (self.emm.bucket
            + self.emm.rate as f64 * dt as f64 / (1000 * TICKS_PER_MS) as f64)
            .min(self.emm.burst);
        self.emm.next_tick = now.saturating_add(EMM_TICK_MS * TICKS_PER_MS);
        if self.emm.mode == EmmInsertion::AddRate {
            let made = self.fetch_emms(now);
            for p in made {
                self.emit(&p, now);
            }
        }
    }

    /// Asks the feed for what the budget allows and makes the packets,
    /// charging the budget for every TS byte.
    fn fetch_emms(&mut self, now: u64) -> Vec<[u8; PACKET_LEN]> {
        if self.emm.bucket < PACKET_LEN as f64 {
            return Vec::new();
        }
        // A packet carries at most 183 bytes of sections after its
        // pointer_field.
        let max = (self.emm.bucket * 183.0 / PACKET_LEN as f64) as usize;
        let now_ms = self.now_ms(now);
        let mut sections = self
            .feed
            .emm_sections(now_ms, max.min(64 * MAX_SECTION_LEN));
        let before = sections.len();
        sections.retain(|s| PrivateSection::parse(s).is_ok_and(|p| p.table_id.is_emm()));
        self.stats.emm_rejected += (before - sections.len()) as u64;
        if sections.is_empty() {
            return Vec::new();
        }
        let refs: Vec<&[u8]> = sections.iter().map(|s| &**s).collect();
        let pid = self.emm.pid;
        let c = &mut self.cc[usize::from(pid)];
        let mut cc = c.last.map_or(0, |l| l.wrapping_add(1) & 0x0F);
        let mut made = Vec::new();
        if packetize(&refs, pid, &mut cc, &mut made).is_err() || made.is_empty() {
            return Vec::new();
        }
        c.last = Some(cc.wrapping_sub(1) & 0x0F);
        self.emm.bucket -= (made.len() * PACKET_LEN) as f64;
        self.stats.emm_sections += sections.len() as u64;
        self.stats.emm_packets += made.len() as u64;
        made
    }

    fn null_packet(&mut self, pkt: &mut [u8; PACKET_LEN], now: u64) {
        if self.emm.mode == EmmInsertion::ReplaceNulls && self.emm.rate > 0 {
            if self.emm.queue.is_empty() {
                let made = self.fetch_emms(now);
                self.emm.queue.extend(made);
            }
            if let Some(p) = self.emm.queue.pop_front() {
                self.stats.nulls_replaced += 1;
                self.emit(&p, now);
                return;
            }
        }
        // Our own null packet: an input's could carry anything in its
        // payload, and null counters carry no meaning.
        let _ = pkt;
        self.emit(&null_packet(), now);
    }

    // ------------------------------------------------------- scrambling

    fn scramble(&mut self, i: usize, pid: u16, pkt: &mut [u8; PACKET_LEN], now: u64) {
        if pkt[3] >> 6 != 0 {
            // Scrambled by someone else: we cannot scramble it again, and
            // it must not go out marked with our parity. The whole service
            // is withheld while this goes on.
            self.stats.dropped_already_scrambled += 1;
            let svc = &mut self.services[i];
            let first = svc.scrambled_input.is_none();
            svc.scrambled_input = Some((pid, now));
            svc.withheld_packets[Withheld::Unscramblable.index()] += 1;
            if first || svc.on_air {
                self.detail_dirty = true;
                self.refresh(now);
            }
            return;
        }
        let svc = &self.services[i];
        let parity = match &svc.active {
            Some(a) if svc.on_air => a.parity,
            _ => return self.withhold(i),
        };
        self.relink(pid, pkt);
        match self.services[i].scrambler.scramble(pkt, parity) {
            Ok(Outcome::Done(_)) => {
                self.stats.scrambled += 1;
                self.services[i].scrambled_packets += 1;
            }
            // No payload byte: nothing to scramble (the adaptation field,
            // PCR included, stays clear by design).
            Ok(Outcome::Clear) => {}
            Ok(Outcome::NoKey(_)) | Err(_) => {
                self.stats.dropped_no_cw += 1;
                self.services[i].withheld_packets[Withheld::NoControlWord.index()] += 1;
                return;
            }
        }
        self.emit(pkt, now);
    }
}

/// The payload bytes of a packet whose header was validated (0 for one
/// that is all adaptation field).
fn clear_payload_len(p: &[u8; PACKET_LEN]) -> usize {
    if p[3] & 0x10 == 0 {
        return 0;
    }
    let at = if p[3] & 0x20 != 0 {
        5 + usize::from(p[4])
    } else {
        4
    };
    PACKET_LEN.saturating_sub(at)
}

fn is_ours(d: &Descriptor) -> bool {
    match d {
        Descriptor::Ca(ca) => ca.ca_system_id == CA_SYSTEM_ID,
        Descriptor::Scrambling { .. } => true,
        _ => false,
    }
}

/// The PMT we send for `pmt`: our CA_descriptor and the CISSA
/// scrambling_descriptor in the program loop (any of ours that came in
/// removed, from every loop). Its version is the input's the first time,
/// and one more than the last one we sent whenever the content changes.
fn rewrite_pmt(
    pmt: &Pmt,
    ecm_pid: u16,
    last: Option<&(Pmt, Vec<u8>)>,
) -> Result<(Pmt, Vec<u8>), ts::psi::PsiError> {
    let mut out = pmt.clone();
    out.descriptors.retain(|d| !is_ours(d));
    out.descriptors.push(Descriptor::iodoform_ca(ecm_pid));
    out.descriptors.push(Descriptor::cissa());
    for s in &mut out.streams {
        s.descriptors.retain(|d| !is_ours(d));
    }
    out.current_next = true;
    out.version = match last {
        None => pmt.version & 0x1F,
        Some((prev, _)) => {
            let mut same = out.clone();
            same.version = prev.version;
            if &same == prev {
                prev.version
            } else {
                (prev.version + 1) & 0x1F
            }
        }
    };
    let s = out.to_section()?;
    Ok((out, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::feed::{EngineFeed, FeedError};
    use crate::{ControlWordSchedule, KeyEngine, OperatorKeys};
    use ts::packet::{PacketBuilder, Pcr, ScramblingControl};
    use ts::psi::{PatEntry, PmtStream};

    const ECM: u16 = 0x1F0;
    const EMM: u16 = 0x1F1;
    const V: u16 = 0x100;
    const A: u16 = 0x101;

    /// A feed that knows services 1, 3 and 257 and can be switched off.
    struct Switch {
        inner: EngineFeed,
        ready: bool,
    }

    impl CaFeed for Switch {
        fn period(&mut self, service: u16, now_ms: u64) -> Result<CryptoPeriod, FeedError> {
            if !self.ready {
                return Err(FeedError::NotReady(service));
            }
            self.inner.period(service, now_ms)
        }
        fn emm_sections(&mut self, now_ms: u64, max: usize) -> Vec<Arc<[u8]>> {
            self.inner.emm_sections(now_ms, max)
        }
    }

    fn mux(services: &[u16], clear: &[u16], ready: bool) -> Mux<Switch> {
        let mut engine = KeyEngine::new(OperatorKeys::generate(1));
        engine.add_product(7).unwrap();
        let mut inner =
            EngineFeed::new(engine, ControlWordSchedule::new(10).unwrap(), 1000).unwrap();
        let mut cfg = ChannelStreamConfig::new("news", "-", "-", EMM);
        for (i, &s) in services.iter().enumerate() {
            inner.add_service(s, 7, 0);
            cfg = cfg.service(s, ECM + 2 + i as u16);
        }
        if let Some(s) = cfg.services.first_mut() {
            s.ecm_pid = ECM;
        }
        cfg.clear_services = clear.to_vec();
        cfg.emm_bitrate = 0;
        Mux::new(&cfg, Switch { inner, ready }, 1_700_000_000_000).unwrap()
    }

    #[derive(Default)]
    struct Gen {
        cc: HashMap<u16, u8>,
        out: Vec<[u8; PACKET_LEN]>,
    }

    impl Gen {
        fn section(&mut self, pid: u16, section: &[u8]) {
            let cc = self.cc.entry(pid).or_insert(0);
            packetize(&[section], pid, cc, &mut self.out).unwrap();
        }
        fn pat(&mut self, programs: &[(u16, u16)]) {
            let pat = Pat {
                transport_stream_id: 9,
                version: 4,
                current_next: true,
                programs: programs
                    .iter()
                    .map(|&(program_number, pid)| PatEntry {
                        program_number,
                        pid,
                    })
                    .collect(),
            };
            self.section(0, &pat.to_section().unwrap());
        }
        fn pmt(&mut self, program: u16, pid: u16, streams: &[(u8, u16)]) {
            let pmt = Pmt {
                program_number: program,
                version: 0,
                current_next: true,
                pcr_pid: V,
                descriptors: vec![],
                streams: streams
                    .iter()
                    .map(|&(stream_type, pid)| PmtStream {
                        stream_type,
                        pid,
                        descriptors: vec![],
                    })
                    .collect(),
            };
            self.section(pid, &pmt.to_section().unwrap());
        }
        fn es(&mut self, pid: u16, ms: u64, pcr: bool, scrambled: bool) {
            let cc = self.cc.entry(pid).or_insert(0);
            let mut b = PacketBuilder::new(pid);
            b.continuity_counter = *cc;
            *cc = (*cc + 1) & 0x0F;
            b.pcr = pcr.then(|| Pcr::from_27mhz((ms + 1000) * 27_000));
            b.scrambling = scrambled.then_some(ScramblingControl(0b10));
            self.out.push(b.build(&[ms as u8; 184]).unwrap().0);
        }
    }

    /// `ms` of stream: what `psi` adds every 100 ms, then a video packet
    /// (PCR every 40 ms) and an audio packet every 10 ms.
    fn stream(
        from_ms: u64,
        ms: u64,
        g: &mut Gen,
        mut psi: impl FnMut(&mut Gen, u64),
        scrambled: bool,
    ) -> Vec<[u8; PACKET_LEN]> {
        for t in (from_ms..from_ms + ms).step_by(10) {
            if t % 100 == 0 {
                psi(g, t);
            }
            g.es(V, t, t % 40 == 0, scrambled);
            g.es(A, t, false, scrambled);
        }
        std::mem::take(&mut g.out)
    }

    fn program1(g: &mut Gen, _: u64) {
        g.pat(&[(1, 0x1000)]);
        g.pmt(1, 0x1000, &[(0x1B, V), (0x0F, A)]);
    }

    fn run<F: CaFeed>(m: &mut Mux<F>, input: &[[u8; PACKET_LEN]]) -> Vec<[u8; PACKET_LEN]> {
        for p in input {
            m.push(p);
        }
        m.flush();
        let mut out = Vec::new();
        m.take_output(&mut out);
        out.into_iter().map(|p| p.bytes).collect()
    }

    fn pid(p: &[u8; PACKET_LEN]) -> u16 {
        u16::from_be_bytes([p[1] & 0x1F, p[2]])
    }

    fn count(out: &[[u8; PACKET_LEN]], on: u16) -> usize {
        out.iter().filter(|p| pid(p) == on).count()
    }

    /// Packets with a payload byte and transport_scrambling_control 00.
    fn clear_on(out: &[[u8; PACKET_LEN]], pids: &[u16]) -> usize {
        out.iter()
            .filter(|p| pids.contains(&pid(p)) && p[3] >> 6 == 0 && clear_payload_len(p) > 0)
            .count()
    }

    fn pats(out: &[[u8; PACKET_LEN]]) -> Vec<Pat> {
        let mut asm = SectionAssembler::default();
        out.iter()
            .filter(|p| pid(p) == 0)
            .flat_map(|p| asm.push(&Packet::from_array(p).unwrap()))
            .map(|s| Pat::from_section(&s.unwrap()).unwrap())
            .collect()
    }

    fn health(m: &Mux<Switch>, i: usize) -> ServiceHealth {
        m.service_health().swap_remove(i)
    }

    #[test]
    fn a_service_on_the_air_is_scrambled_and_announced_alone() {
        let mut m = mux(&[1], &[], true);
        let out = run(
            &mut m,
            &stream(0, 2000, &mut Gen::default(), program1, false),
        );
        assert_eq!(clear_on(&out, &[V, A]), 0);
        assert!(count(&out, V) >= 199 && count(&out, A) == 200);
        let h = health(&m, 0);
        assert!(
            h.on_air && h.withheld.is_none() && h.detail.is_none(),
            "{h:?}"
        );
        assert_eq!(h.scrambled_packets, 400 - m.stats.dropped_unreferenced);
        assert_eq!(h.clear_packets, 0);
        // Our own PAT: the input's transport_stream_id, the service.
        let p = pats(&out);
        assert!(!p.is_empty());
        assert!(p
            .iter()
            .all(|p| p.transport_stream_id == 9 && p.pmt_pid(1) == Some(0x1000)));
        assert_eq!(m.stats.clear_packets, 0);
    }

    #[test]
    fn a_service_missing_from_the_input_sends_nothing() {
        let mut m = mux(&[3], &[], true);
        let out = run(
            &mut m,
            &stream(0, 2000, &mut Gen::default(), program1, false),
        );
        assert_eq!(count(&out, V) + count(&out, A) + count(&out, 0x1000), 0);
        // Nothing on the air: no PAT at all, no PMT, no ECM.
        assert_eq!(count(&out, 0) + count(&out, ECM), 0);
        let h = health(&m, 0);
        assert!(!h.on_air);
        assert_eq!(h.withheld, Some(Withheld::ServiceMissing));
        assert_eq!(
            h.detail.as_deref(),
            Some("the input's PAT lists program 1, not 3")
        );
        assert!(
            h.withheld_packets[&Withheld::ServiceMissing] >= 390,
            "{h:?}"
        );
        assert_eq!(h.scrambled_packets, 0);
        // Logged once, after a second.
        assert_eq!(m.services[0].reports, 1);
        assert_eq!(m.stats.clear_packets, 0);
    }

    #[test]
    fn only_explicitly_clear_services_pass_clear() {
        let both = |g: &mut Gen, _: u64| {
            g.pat(&[(1, 0x1000), (2, 0x1100)]);
            g.pmt(1, 0x1000, &[(0x1B, V), (0x0F, A)]);
            g.pmt(2, 0x1100, &[(0x02, 0x200)]);
        };
        let input = |g: &mut Gen| {
            let mut out = Vec::new();
            for t in (0..2000).step_by(100) {
                let mut s = stream(t, 100, g, both, false);
                for i in 0..10 {
                    g.es(0x200, t + i * 10, false, false);
                }
                s.append(&mut g.out);
                out.append(&mut s);
            }
            out
        };
        // Service 3 is missing, programs 1 and 2 are nothing of ours.
        let mut m = mux(&[3], &[], true);
        let out = run(&mut m, &input(&mut Gen::default()));
        assert!(
            out.iter().all(|p| pid(p) == 1 || pid(p) == NULL_PID),
            "only our CAT"
        );
        assert_eq!(
            health(&m, 0).detail.as_deref(),
            Some("the input's PAT lists programs 1, 2, not 3")
        );
        // Program 2 clear on purpose: it, and it alone, passes.
        let mut m = mux(&[3], &[2], true);
        let out = run(&mut m, &input(&mut Gen::default()));
        assert_eq!(count(&out, V) + count(&out, A) + count(&out, 0x1000), 0);
        assert_eq!(count(&out, 0x200), 200);
        assert!(count(&out, 0x1100) >= 20);
        let p = pats(&out);
        assert!(p.iter().all(|p| p.programs
            == vec![PatEntry {
                program_number: 2,
                pid: 0x1100
            }]));
        assert_eq!(m.stats.clear_packets, 0);
    }

    #[test]
    fn without_a_pat_nothing_goes_out() {
        let no_pat = |g: &mut Gen, _: u64| g.pmt(1, 0x1000, &[(0x1B, V), (0x0F, A)]);
        let mut m = mux(&[1], &[], true);
        let out = run(&mut m, &stream(0, 2000, &mut Gen::default(), no_pat, false));
        assert_eq!(
            count(&out, V) + count(&out, A) + count(&out, 0) + count(&out, 0x1000),
            0
        );
        let h = health(&m, 0);
        assert_eq!(h.withheld, Some(Withheld::NoPat));
        assert!(h.withheld_packets[&Withheld::NoPat] >= 390);
    }

    #[test]
    fn without_a_good_pmt_nothing_goes_out() {
        // No PMT at all.
        let no_pmt = |g: &mut Gen, _: u64| g.pat(&[(1, 0x1000)]);
        let mut m = mux(&[1], &[], true);
        let out = run(&mut m, &stream(0, 2000, &mut Gen::default(), no_pmt, false));
        assert_eq!(count(&out, V) + count(&out, A) + count(&out, 0), 0);
        let h = health(&m, 0);
        assert_eq!(h.withheld, Some(Withheld::PmtUnparsable));
        assert_eq!(h.detail.as_deref(), Some("no PMT on PID 0x1000 yet"));
        // A PMT whose CRC is wrong.
        let bad = |g: &mut Gen, _: u64| {
            g.pat(&[(1, 0x1000)]);
            let pmt = Pmt {
                program_number: 1,
                version: 0,
                current_next: true,
                pcr_pid: V,
                descriptors: vec![],
                streams: vec![PmtStream {
                    stream_type: 0x1B,
                    pid: V,
                    descriptors: vec![],
                }],
            };
            let mut s = pmt.to_section().unwrap();
            *s.last_mut().unwrap() ^= 0xFF;
            g.section(0x1000, &s);
        };
        let mut m = mux(&[1], &[], true);
        let out = run(&mut m, &stream(0, 2000, &mut Gen::default(), bad, false));
        assert_eq!(count(&out, V) + count(&out, A) + count(&out, 0), 0);
        let h = health(&m, 0);
        assert_eq!(h.withheld, Some(Withheld::PmtUnparsable));
        assert!(h.detail.as_deref().unwrap().contains("0x1000"), "{h:?}");
    }

    #[test]
    fn an_already_scrambled_input_withholds_the_service_until_it_clears() {
        let mut m = mux(&[1], &[], true);
        let mut g = Gen::default();
        let out = run(&mut m, &stream(0, 2000, &mut g, program1, true));
        assert_eq!(count(&out, V) + count(&out, A), 0);
        // Its PAT and PMT went out before its first ES packet showed it
        // scrambled; none since.
        assert!(count(&out, 0) + count(&out, 0x1000) <= 2, "{}", out.len());
        let h = health(&m, 0);
        assert_eq!(h.withheld, Some(Withheld::Unscramblable));
        assert!(
            h.detail.as_deref().unwrap().contains("already scrambled"),
            "{h:?}"
        );
        assert_eq!(m.services[0].reports, 1);
        // Clear again: on the air after the hold.
        let out = run(&mut m, &stream(2000, 2000, &mut g, program1, false));
        let h = health(&m, 0);
        assert!(h.on_air, "{h:?}");
        assert!(count(&out, V) > 50);
        assert_eq!(clear_on(&out, &[V, A]), 0);
        assert!(pats(&out).last().unwrap().pmt_pid(1).is_some());
        // Scrambled again: withheld at once, and logged again a second later.
        let out = run(&mut m, &stream(4000, 2000, &mut g, program1, true));
        assert_eq!(count(&out, V) + count(&out, A), 0);
        assert_eq!(m.services[0].reports, 2);
        assert_eq!(m.stats.clear_packets, 0);
    }

    #[test]
    fn a_component_on_a_pid_we_cannot_scramble_withholds_the_service() {
        // Audio on the EIT's PID, 0x12.
        let odd = |g: &mut Gen, _: u64| {
            g.pat(&[(1, 0x1000)]);
            g.pmt(1, 0x1000, &[(0x1B, V), (0x0F, 0x12)]);
        };
        let mut m = mux(&[1], &[], true);
        let mut g = Gen::default();
        let mut input = Vec::new();
        for t in (0..2000).step_by(100) {
            input.append(&mut stream(t, 100, &mut g, odd, false));
            g.es(0x12, t, false, false);
            input.append(&mut g.out);
        }
        let out = run(&mut m, &input);
        assert_eq!(count(&out, V) + count(&out, 0x12) + count(&out, 0), 0);
        let h = health(&m, 0);
        assert_eq!(h.withheld, Some(Withheld::Unscramblable));
        assert!(h.detail.as_deref().unwrap().contains("0x0012"), "{h:?}");
        // Video on our ECM PID.
        let clash = |g: &mut Gen, _: u64| {
            g.pat(&[(1, 0x1000)]);
            g.pmt(1, 0x1000, &[(0x1B, ECM), (0x0F, A)]);
        };
        let mut m = mux(&[1], &[], true);
        let out = run(&mut m, &stream(0, 1500, &mut Gen::default(), clash, false));
        assert_eq!(count(&out, A) + count(&out, ECM), 0);
        assert_eq!(health(&m, 0).withheld, Some(Withheld::Unscramblable));
    }

    #[test]
    fn without_a_control_word_nothing_goes_out_until_one_comes() {
        let mut m = mux(&[1], &[], false);
        let mut g = Gen::default();
        let out = run(&mut m, &stream(0, 1500, &mut g, program1, false));
        assert_eq!(
            count(&out, V) + count(&out, A) + count(&out, 0) + count(&out, 0x1000),
            0
        );
        let h = health(&m, 0);
        assert_eq!(h.withheld, Some(Withheld::NoControlWord));
        assert_eq!(
            h.detail.as_deref(),
            Some("no control word from the CA side: service 1 has no crypto period yet")
        );
        assert!(h.withheld_packets[&Withheld::NoControlWord] > 200);
        m.feed_mut().ready = true;
        let out = run(&mut m, &stream(1500, 1000, &mut g, program1, false));
        assert!(health(&m, 0).on_air);
        // The PAT, PMT and ECM come before the first scrambled packet.
        let first = |on: u16| out.iter().position(|p| pid(p) == on).unwrap();
        let first_es = out.iter().position(|p| p[3] >> 6 != 0).unwrap();
        assert!(first(0) < first_es && first(0x1000) < first_es && first(ECM) < first_es);
        assert_eq!(clear_on(&out, &[V, A]), 0);
        // The CA side stops: after the grace, off the air and out of the PAT.
        m.feed_mut().ready = false;
        let out = run(&mut m, &stream(2500, 2000, &mut g, program1, false));
        let h = health(&m, 0);
        assert_eq!(h.withheld, Some(Withheld::NoControlWord), "{h:?}");
        // On with the last CW for the grace (1 s), then nothing but the
        // CAT: no PAT, PMT, ECM or ES.
        let last_es = out.iter().rposition(|p| pid(p) == V).unwrap();
        assert!((150..=250).contains(&(count(&out, V) + count(&out, A))));
        assert!(out[last_es + 1..]
            .iter()
            .all(|p| pid(p) == 1 || pid(p) == A));
        assert!(out.len() - last_es < 10);
        assert_eq!(clear_on(&out, &[V, A]), 0);
    }

    #[test]
    fn the_last_line_drops_clear_content_on_pids_not_allowed() {
        let mut m = mux(&[1], &[], true);
        let mut g = Gen::default();
        run(&mut m, &stream(0, 500, &mut g, program1, false));
        assert!(health(&m, 0).on_air);
        let mut clear = PacketBuilder::new(V).build(&[7; 184]).unwrap().0;
        // A bug that would send a clear video packet: caught.
        m.emit(&clear, 0);
        // Short payloads too: they are content.
        let mut b = PacketBuilder::new(A);
        b.stuffing = 170;
        let (short, n) = b.build(&[7; 184]).unwrap();
        assert!(n < 16);
        m.emit(&short, 0);
        // And on a PID that nothing names.
        clear[1] = 0x05;
        m.emit(&clear, 0);
        assert_eq!(m.stats.clear_packets, 3);
        assert_eq!(health(&m, 0).clear_packets, 2);
        // An adaptation field alone (a PCR) carries no content: it passes.
        let mut b = PacketBuilder::new(V);
        b.pcr = Some(Pcr::from_27mhz(1));
        m.emit(&b.build(&[]).unwrap().0, 0);
        // SI as it came passes.
        m.emit(&PacketBuilder::new(0x11).build(&[1; 184]).unwrap().0, 0);
        let mut out = Vec::new();
        m.take_output(&mut out);
        assert_eq!(
            out.iter()
                .filter(|p| matches!(pid(&p.bytes), V | A | 0x500))
                .count(),
            1
        );
        assert_eq!(m.stats.clear_packets, 3);
    }

    #[test]
    fn at_the_start_the_pat_waits_a_moment_for_every_service() {
        let late = |g: &mut Gen, t: u64| {
            g.pat(&[(1, 0x1000), (2, 0x1100)]);
            g.pmt(1, 0x1000, &[(0x1B, V), (0x0F, A)]);
            if t >= 300 {
                g.pmt(2, 0x1100, &[(0x1B, 0x200)]);
            }
        };
        let mut m = mux(&[1, 2], &[], true);
        let out = run(&mut m, &stream(0, 1000, &mut Gen::default(), late, false));
        let p = pats(&out);
        assert!(!p.is_empty());
        assert!(p
            .iter()
            .all(|p| p.pmt_pid(1).is_some() && p.pmt_pid(2).is_some()));
        // One that never comes holds the PAT back for a second only.
        let never = |g: &mut Gen, _: u64| {
            g.pat(&[(1, 0x1000), (2, 0x1100)]);
            g.pmt(1, 0x1000, &[(0x1B, V), (0x0F, A)]);
        };
        let mut m = mux(&[1, 2], &[], true);
        let out = run(&mut m, &stream(0, 2000, &mut Gen::default(), never, false));
        let first_pat = out.iter().position(|p| pid(p) == 0).unwrap();
        let video_before = out[..first_pat].iter().filter(|p| pid(p) == V).count();
        assert!((80..=110).contains(&video_before), "{video_before}");
        assert!(pats(&out).iter().all(|p| p.programs.len() == 1));
        assert_eq!(health(&m, 1).withheld, Some(Withheld::PmtUnparsable));
    }

    #[test]
    fn null_packets_go_out_as_ours() {
        let mut m = mux(&[1], &[], true);
        let mut g = Gen::default();
        let mut input = stream(0, 200, &mut g, program1, false);
        let mut null = null_packet();
        null[100] = 0x42;
        input.push(null);
        let out = run(&mut m, &input);
        let nulls: Vec<_> = out.iter().filter(|p| pid(p) == NULL_PID).collect();
        assert_eq!(nulls, vec![&null_packet()]);
    }
}
