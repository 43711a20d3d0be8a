//! The multiplexer: one clear TS in, the scrambled TS with its CA
//! signalling, ECMs and EMMs out. It does no I/O; [`super::run_channel`]
//! feeds it packets and writes what it returns.
//!
//! What it does with each input PID:
//!
//! | PID | what | out |
//! |---|---|---|
//! | 0 (PAT) | learnt | its section, with our own counter: at once when it changes, then with every ECM repetition |
//! | 1 (CAT) | its descriptors are kept | replaced by ours, with our CA_descriptor for the EMM PID |
//! | 2..=0x1F (SI) | | as it came |
//! | PMT of a configured service | learnt | rewritten (CA_descriptor for the ECM PID and scrambling_descriptor in the program loop, our own version number): at once when it changes, then with every ECM repetition |
//! | its elementary streams | | scrambled with the period's CW (section streams excepted, see [`carries_pes`]) |
//! | its PCR PID when not an ES | | as it came |
//! | PMT and streams of other programs | learnt | as they came |
//! | null (0x1FFF) | | as it came, or replaced by EMM packets |
//! | ECM and EMM PIDs | collision: dropped | ours |
//! | anything else | not in any PMT | dropped |
//!
//! Every ECM interval (100 ms by default) the PAT, then each service's PMT
//! and ECM go out back to back, so that a receiver tuning in has all it
//! needs within one interval whatever the input's PSI rate; a new crypto
//! period's ECM goes out at once, before the first packet it scrambles.
//!
//! It never lets a configured service's elementary stream out clear: until
//! that service's PMT and crypto period are known its packets are
//! dropped, and so are PIDs that no PMT names yet.
//!
//! Continuity counters: PIDs that pass through keep theirs. When the input
//! loops, each PID's counter is re-linked with an offset so that it
//! continues where the output left it; generated PIDs (PMT, CAT, ECM, EMM)
//! count on their own.

use super::clock::{AirClock, Span, TICKS_PER_MS};
use super::feed::{ts_parity, CaFeed, CryptoPeriod, FeedError};
use super::{ChannelStreamConfig, EmmInsertion, StreamError, StreamStats};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use ts::cissa::{Outcome, Scrambler};
use ts::packet::{Packet, MAX_PID, NULL_PID, PACKET_LEN};
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
    /// Not (yet) named by any table: dropped.
    Drop,
    Pass,
    Pat,
    CatIn,
    /// The PMT PID of programs that we pass as they are.
    PmtPass,
    /// The PMT PID of a configured service: regenerated.
    PmtOurs,
    /// An elementary stream of configured service `i`.
    Es(u8),
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
    start_unix_ms: u64,
    ecm_interval: u64,
    cat_interval: u64,
    roles: Vec<Role>,
    cc: Vec<Cc>,
    services: Vec<Service>,
    assemblers: HashMap<u16, SectionAssembler>,
    pat: Option<Pat>,
    /// The PAT section as it came, which we send.
    pat_section: Vec<u8>,
    next_psi: u64,
    /// PMTs of programs that are not ours, by program number.
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
    out: Vec<OutPacket>,
    scratch: Vec<[u8; PACKET_LEN]>,
    stats: StreamStats,
    warned: std::collections::HashSet<&'static str>,
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
            })
            .collect();
        let rate = cfg.emm_bitrate / 8;
        let burst = (rate as f64 / 4.0).max(MIN_EMM_BURST as f64);
        let mut m = Mux {
            feed,
            start_unix_ms,
            ecm_interval: cfg.ecm_interval_ms * TICKS_PER_MS,
            cat_interval: cfg.cat_interval_ms * TICKS_PER_MS,
            roles: vec![Role::Drop; PIDS],
            cc: vec![Cc::default(); PIDS],
            services,
            assemblers: HashMap::new(),
            pat: None,
            pat_section: Vec::new(),
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
            out: Vec::with_capacity(64),
            scratch: Vec::with_capacity(8),
            stats: StreamStats::default(),
            warned: Default::default(),
        };
        m.rebuild_cat(true);
        m.reclassify();
        Ok(m)
    }

    pub fn stats(&self) -> &StreamStats {
        &self.stats
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
            Role::Drop => self.stats.dropped_unreferenced += 1,
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
        }
    }

    // ------------------------------------------------------------ output

    fn emit(&mut self, bytes: [u8; PACKET_LEN], ticks: u64) {
        self.stats.packets_out += 1;
        self.out.push(OutPacket { bytes, ticks });
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
        self.emit(*pkt, now);
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
            self.emit(p, now);
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
                Err(_) => self.stats.psi_errors += 1,
            }
        }
    }

    fn section(&mut self, pid: u16, section: &[u8], now: u64) {
        let role = self.roles[usize::from(pid)];
        match (role, section.first().copied()) {
            (Role::Pat, Some(0x00)) => match Pat::from_section(section) {
                Ok(pat) if pat.current_next => {
                    if self.pat.as_ref() != Some(&pat) {
                        self.pat = Some(pat);
                        self.pat_section = section.to_vec();
                        self.reclassify();
                        // A new PAT goes out at once; then with the bundle.
                        self.emit_pat(now);
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
            (Role::PmtOurs, _) => {
                // Another table on a PMT PID that we regenerate: as it came.
                self.emit_sections(pid, &[section], now);
            }
            _ => {}
        }
    }

    fn pmt_section(&mut self, pid: u16, section: &[u8], now: u64) {
        let pmt = match Pmt::from_section(section) {
            Ok(p) => p,
            Err(_) => {
                self.stats.psi_errors += 1;
                return;
            }
        };
        let listed = self
            .pat
            .as_ref()
            .and_then(|p| p.pmt_pid(pmt.program_number));
        if listed != Some(pid) || !pmt.current_next {
            // Not the PMT the PAT points at: ignored, and on a PID we
            // regenerate, not sent.
            if self.roles[usize::from(pid)] == Role::PmtOurs && listed.is_none() {
                self.emit_sections(pid, &[section], now);
            }
            return;
        }
        let Some(i) = self
            .services
            .iter()
            .position(|s| s.id == pmt.program_number)
        else {
            if self.other_pmts.get(&pmt.program_number) != Some(&pmt) {
                self.other_pmts.insert(pmt.program_number, pmt);
                self.reclassify();
            }
            if self.roles[usize::from(pid)] == Role::PmtOurs {
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
                    self.warn_once(
                        "pmt",
                        format_args!(
                            "service {}: PMT cannot be rewritten: {e}",
                            pmt.program_number
                        ),
                    );
                    return;
                }
            }
            self.services[i].pmt_in = Some(pmt);
            self.services[i].pmt_pid = pid;
            self.reclassify();
            // A new or changed PMT goes out at once; then with the bundle.
            self.emit_pmt(i, now);
        }
    }

    fn emit_pat(&mut self, now: u64) {
        if self.pat_section.is_empty() {
            return;
        }
        let s = std::mem::take(&mut self.pat_section);
        self.emit_sections(0, &[&s], now);
        self.pat_section = s;
        self.stats.pat_sections += 1;
    }

    fn emit_pmt(&mut self, i: usize, now: u64) {
        let pid = self.services[i].pmt_pid;
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
            if self.services[i].pmt_in.is_some() {
                self.emit_pmt(i, now);
                self.emit_ecm(i, now);
            }
        }
    }

    /// Rebuilds every PID's role from the PAT and the PMTs.
    fn reclassify(&mut self) {
        let mut roles = vec![Role::Drop; PIDS];
        roles[0] = Role::Pat;
        roles[1] = Role::CatIn;
        for r in &mut roles[2..0x20] {
            *r = Role::Pass;
        }
        roles[usize::from(NULL_PID)] = Role::Null;
        let usable = |pid: u16| (0x20..NULL_PID).contains(&pid);
        let mut programs = Vec::new();
        if let Some(pat) = &self.pat {
            for e in &pat.programs {
                if !usable(e.pid) && e.pid >= 0x20 {
                    continue;
                }
                if e.program_number == 0 {
                    if usable(e.pid) {
                        roles[usize::from(e.pid)] = Role::Pass; // NIT
                    }
                    continue;
                }
                programs.push(e.program_number);
                let ours = self.services.iter().any(|s| s.id == e.program_number);
                let r = &mut roles[usize::from(e.pid)];
                if e.pid >= 0x20 && (ours || *r == Role::Drop) {
                    *r = if ours { Role::PmtOurs } else { Role::PmtPass };
                }
            }
        }
        for (program, pmt) in &self.other_pmts {
            if !programs.contains(program) {
                continue;
            }
            for pid in pmt.streams.iter().map(|s| s.pid).chain([pmt.pcr_pid]) {
                if usable(pid) && roles[usize::from(pid)] == Role::Drop {
                    roles[usize::from(pid)] = Role::Pass;
                }
            }
        }
        let mut clock_pid = None;
        for (i, svc) in self.services.iter().enumerate() {
            let Some(pmt) = svc.pmt_in.as_ref().filter(|_| programs.contains(&svc.id)) else {
                continue;
            };
            for st in &pmt.streams {
                let r = &mut roles[usize::from(st.pid)];
                if !usable(st.pid) || matches!(*r, Role::PmtOurs | Role::PmtPass) {
                    continue;
                }
                if carries_pes(st.stream_type) {
                    *r = Role::Es(i as u8);
                } else if *r == Role::Drop {
                    *r = Role::Pass;
                }
            }
            if usable(pmt.pcr_pid) {
                if roles[usize::from(pmt.pcr_pid)] == Role::Drop {
                    roles[usize::from(pmt.pcr_pid)] = Role::Pass;
                }
                clock_pid.get_or_insert(pmt.pcr_pid);
            }
        }
        for s in &self.services {
            roles[usize::from(s.ecm_pid)] = Role::Generated;
        }
        roles[usize::from(self.emm.pid)] = Role::Generated;
        self.assemblers.retain(|pid, _| {
            matches!(
                roles[usize::from(*pid)],
                Role::Pat | Role::CatIn | Role::PmtOurs | Role::PmtPass
            )
        });
        self.roles = roles;
        if let Some(pid) = clock_pid {
            self.clock.set_pid(pid);
        }
        // Services may have become live: run the timers at once.
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
                if !matches!(e, FeedError::NotReady(_)) || self.stats.feed_errors == 1 {
                    self.warn_once("feed", format_args!("CA feed, service {id}: {e}"));
                }
            }
        }
    }

    fn start_period(&mut self, i: usize, p: CryptoPeriod, now: u64) {
        let svc = &mut self.services[i];
        let parity = ts_parity(p.parity());
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
                self.emit(p, now);
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
                self.emit(p, now);
                return;
            }
        }
        // Null packets' counters carry no meaning: as they came.
        self.emit(*pkt, now);
    }

    // ------------------------------------------------------- scrambling

    fn scramble(&mut self, i: usize, pid: u16, pkt: &mut [u8; PACKET_LEN], now: u64) {
        let Some(parity) = self.services[i].active.as_ref().map(|a| a.parity) else {
            self.stats.dropped_no_cw += 1;
            return;
        };
        if pkt[3] >> 6 != 0 {
            // Scrambled by someone else: we cannot scramble it again, and
            // it must not go out marked with our parity.
            self.stats.dropped_already_scrambled += 1;
            self.warn_once(
                "scrambled",
                format_args!("input packets on PID {pid:#06x} are already scrambled; dropped"),
            );
            return;
        }
        self.relink(pid, pkt);
        match self.services[i].scrambler.scramble(pkt, parity) {
            Ok(Outcome::Done(_)) => self.stats.scrambled += 1,
            Ok(Outcome::Clear) => {}
            Ok(Outcome::NoKey(_)) | Err(_) => {
                self.stats.dropped_no_cw += 1;
                return;
            }
        }
        self.emit(*pkt, now);
    }
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
