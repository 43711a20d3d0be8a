//! The receiver's stream path: scrambled TS in, clear TS out.
//!
//! ```text
//! bytes ─► PacketReader (sync, resync) ─► per-PID role ─┬─ PAT ─► rewritten: this service only
//!                                                       ├─ PMT ─► rewritten: no CA or scrambling descriptors
//!                                                       ├─ CAT ─► learns the EMM PID; dropped
//!                                                       ├─ ECM ─► new ECMs to the card ─► CW slots
//!                                                       ├─ EMM ─► address filter, dedup ─► card
//!                                                       ├─ ES  ─► descrambled with the slot its bits name
//!                                                       └─ other PIDs: SI (0x10..0x1F) and null pass, the rest is dropped
//! ```
//!
//! Until the PAT and the service's PMT have been seen, packets are held
//! (up to [`PipelineOptions::hold_limit`]) and then replayed in order, so
//! an ECM or an EMM that came before the PMT is not lost.
//!
//! The card is called synchronously, in stream order: an ECM is answered
//! before the packet after it is looked at. That keeps the pipeline
//! deterministic (a test gets the same output every time) and costs
//! nothing on PC/SC, where an ECM takes well under a millisecond and a
//! new one comes once per crypto period.
//!
//! What it must never do: write a packet it could not descramble (the
//! output is clear or absent), descramble with a key of another crypto
//! period (see [`crate::keys`]), or hand the card an EMM addressed to
//! another card.

use crate::card::{status_text, CardLink, EcmOutcome, EmmOutcome};
use crate::error::Failure;
use crate::keys::{Descrambled, KeySlots};
use crate::stats::Stats;
use proto::apdu::StatusWord;
use proto::codec::{Codec, Reader};
use proto::ecm::EcmHeader;
use proto::emm::GLOBAL_ADDRESS;
use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use ts::packet::{Pcr, MAX_PID, NULL_PID, PAT_PID};
use ts::psi::{
    descriptor_tag, emm_section_address, packetize, Cat, Descriptor, Pat, Pmt, PrivateSection,
    SectionAssembler, CA_SYSTEM_ID, PRIVATE_HEADER_LEN,
};
use ts::{Packet, PacketReader, PACKET_LEN};

/// Where clear packets go.
pub trait PacketSink {
    fn packet(&mut self, packet: &[u8; PACKET_LEN]) -> io::Result<()>;
    /// Pushes out what is buffered (called after every input read).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl PacketSink for Vec<u8> {
    fn packet(&mut self, packet: &[u8; PACKET_LEN]) -> io::Result<()> {
        self.extend_from_slice(packet);
        Ok(())
    }
}

/// A sink that throws packets away (benchmarks).
#[derive(Debug, Default)]
pub struct Discard;

impl PacketSink for Discard {
    fn packet(&mut self, _: &[u8; PACKET_LEN]) -> io::Result<()> {
        Ok(())
    }
}

/// How the pipeline behaves.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// The service (program_number) to descramble; the first in the PAT if
    /// `None`.
    pub service: Option<u16>,
    /// How long the card may go on refusing the service's ECMs, with the
    /// output stopped, before the receiver gives up. EMMs that arrive in
    /// the meantime may still bring the entitlement. Measured in stream
    /// time (PCR) or wall time, whichever runs faster. The default,
    /// [`DEFAULT_ENTITLEMENT_WAIT`], outlasts the headend's default EMM
    /// cycle, so that the carousel reaches a card that was off.
    pub entitlement_wait: Duration,
    /// How long the card may stay paired with another receiver, with the
    /// output stopped and its EMMs still handed to it, before the receiver
    /// gives up; `None` (the default) waits for ever, since only the
    /// operator can end it (`headend pair` or `headend unpair`), and that
    /// reaches the card over the air whenever it comes. Measured like
    /// `entitlement_wait`.
    pub pairing_wait: Option<Duration>,
    /// Packets held while the PAT and the PMT are looked for.
    pub hold_limit: usize,
    /// Bytes without packet sync, from the start, after which the input
    /// is declared not to be TS.
    pub sync_limit: u64,
    /// Distinct EMM sections remembered for deduplication.
    pub emm_memory: usize,
}

/// The default [`PipelineOptions::entitlement_wait`]: the headend's
/// default EMM cycle (60 s), in which the carousel reaches every entitled
/// card, plus its default crypto period (10 s). A change made by the
/// operator (a new subscription, a pairing) is sent at once and repeated
/// every second for 30 s, so it comes much sooner.
pub const DEFAULT_ENTITLEMENT_WAIT: Duration = Duration::from_secs(70);

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            service: None,
            entitlement_wait: DEFAULT_ENTITLEMENT_WAIT,
            pairing_wait: None,
            hold_limit: 50_000,
            sync_limit: 64 * 1024,
            emm_memory: 4096,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Not part of the output.
    Drop,
    /// Written as it is (SI, null packets).
    Pass,
    Pat,
    Pmt,
    Cat,
    Ecm,
    Emm,
    /// A component of the service: descrambled.
    Es,
    /// The service's PCR PID when it is not one of its components (another
    /// service's stream, say): its payload is not ours to descramble, so a
    /// scrambled packet goes out as its adaptation field alone.
    PcrOnly,
}

/// The role of a PID that no table has claimed.
fn default_role(pid: u16) -> Role {
    match pid {
        PAT_PID => Role::Pat,
        ts::packet::CAT_PID => Role::Cat,
        // DVB SI (NIT, SDT, EIT, TDT...) and stuffing stay in the output.
        0x10..=0x1F | NULL_PID => Role::Pass,
        _ => Role::Drop,
    }
}

/// Stream time from the service's PCR, with wall time as a floor.
#[derive(Debug)]
struct StreamClock {
    last_pcr: Option<u64>,
    elapsed_27mhz: u64,
}

#[derive(Debug, Clone, Copy)]
struct Moment {
    stream_27mhz: u64,
    wall: Instant,
}

/// A PCR jump larger than this is a discontinuity, not elapsed time.
const MAX_PCR_STEP: u64 = 10 * 27_000_000;
const PCR_WRAP: u64 = (1 << 33) * 300;

impl StreamClock {
    fn new() -> Self {
        StreamClock {
            last_pcr: None,
            elapsed_27mhz: 0,
        }
    }

    fn pcr(&mut self, pcr: Pcr) {
        let t = pcr.ticks_27mhz();
        if let Some(last) = self.last_pcr {
            let d = (t + PCR_WRAP - last) % PCR_WRAP;
            if d <= MAX_PCR_STEP {
                self.elapsed_27mhz += d;
            }
        }
        self.last_pcr = Some(t);
    }

    fn now(&self) -> Moment {
        Moment {
            stream_27mhz: self.elapsed_27mhz,
            wall: Instant::now(),
        }
    }

    fn since(&self, m: Moment) -> Duration {
        let stream = Duration::from_nanos(
            (self.elapsed_27mhz.saturating_sub(m.stream_27mhz)).saturating_mul(1000) / 27,
        );
        stream.max(m.wall.elapsed())
    }
}

/// The card refuses the service's ECMs.
#[derive(Debug)]
struct Denial {
    since: Moment,
    message: String,
}

/// Remembers the EMM sections handed to the card, so that a carousel's
/// repetitions reach it once.
#[derive(Debug)]
struct EmmMemory {
    seen: HashSet<Arc<[u8]>>,
    order: VecDeque<Arc<[u8]>>,
    cap: usize,
}

impl EmmMemory {
    fn new(cap: usize) -> Self {
        EmmMemory {
            seen: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Whether the section is new (and now remembered).
    fn insert(&mut self, section: &[u8]) -> bool {
        if self.seen.contains(section) {
            return false;
        }
        let s: Arc<[u8]> = section.into();
        self.seen.insert(s.clone());
        self.order.push_back(s);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// The PAT, CAT and PMT found while looking for the service.
#[derive(Debug, Default)]
struct Discovery {
    hold: VecDeque<[u8; PACKET_LEN]>,
    pat_asm: SectionAssembler,
    cat_asm: SectionAssembler,
    pmt_asm: SectionAssembler,
    pat: Option<Pat>,
    cat: Option<Cat>,
    /// (program_number, PMT PID)
    target: Option<(u16, u16)>,
}

/// A rewritten table, cached by the input section it came from.
#[derive(Debug, Default)]
struct Rewritten {
    input: Vec<u8>,
    output: Vec<[u8; PACKET_LEN]>,
    cc: u8,
}

impl Rewritten {
    /// Emits the rewrite of `input`, making it with `make` when the input
    /// changed.
    fn emit(
        &mut self,
        input: &[u8],
        pid: u16,
        make: impl FnOnce() -> Option<Vec<u8>>,
        sink: &mut dyn PacketSink,
        stats: &mut Stats,
    ) -> io::Result<()> {
        if self.input != input {
            let Some(section) = make() else {
                return Ok(());
            };
            self.input = input.to_vec();
            self.output.clear();
            let mut cc = 0;
            if packetize(&[&section], pid, &mut cc, &mut self.output).is_err() {
                self.output.clear();
            }
        }
        for p in &mut self.output {
            p[3] = (p[3] & 0xF0) | (self.cc & 0x0F);
            self.cc = (self.cc + 1) & 0x0F;
            sink.packet(p)?;
            stats.packets_out += 1;
        }
        Ok(())
    }
}

/// The receiver pipeline over one card link (see the module docs).
pub struct Pipeline {
    reader: PacketReader,
    core: Core,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("service", &self.core.service())
            .field("stats", &self.core.stats)
            .finish_non_exhaustive()
    }
}

struct Core {
    opts: PipelineOptions,
    card: CardLink,
    stats: Stats,
    discovery: Option<Discovery>,
    roles: Vec<Role>,
    program: Option<u16>,
    pmt_pid: Option<u16>,
    es_pids: Vec<u16>,
    pcr_pid: Option<u16>,
    ecm_pid: Option<u16>,
    emm_pid: Option<u16>,
    dropped_ca_pids: Vec<u16>,
    pat_asm: SectionAssembler,
    pmt_asm: SectionAssembler,
    cat_asm: SectionAssembler,
    ecm_asm: SectionAssembler,
    emm_asm: SectionAssembler,
    pat_out: Rewritten,
    pmt_out: Rewritten,
    keys: KeySlots,
    last_ecm: Option<Vec<u8>>,
    last_ecm_header: Option<EcmHeader>,
    ecm_answered: bool,
    denial: Option<Denial>,
    /// Since when the card has been paired with another receiver.
    paired_elsewhere: Option<Moment>,
    emms: EmmMemory,
    clock: StreamClock,
    first_clear: Option<Instant>,
}

impl Pipeline {
    /// A pipeline whose card link is already open.
    pub fn new(card: CardLink, opts: PipelineOptions) -> Self {
        let roles = (0..=MAX_PID).map(default_role).collect();
        let emm_memory = opts.emm_memory;
        let mut p = Pipeline {
            reader: PacketReader::new(),
            core: Core {
                opts,
                card,
                stats: Stats::default(),
                discovery: Some(Discovery::default()),
                roles,
                program: None,
                pmt_pid: None,
                es_pids: Vec::new(),
                pcr_pid: None,
                ecm_pid: None,
                emm_pid: None,
                dropped_ca_pids: Vec::new(),
                pat_asm: SectionAssembler::new(),
                pmt_asm: SectionAssembler::new(),
                cat_asm: SectionAssembler::new(),
                ecm_asm: SectionAssembler::new(),
                emm_asm: SectionAssembler::new(),
                pat_out: Rewritten::default(),
                pmt_out: Rewritten::default(),
                keys: KeySlots::new(),
                last_ecm: None,
                last_ecm_header: None,
                ecm_answered: false,
                denial: None,
                paired_elsewhere: None,
                emms: EmmMemory::new(emm_memory),
                clock: StreamClock::new(),
                first_clear: None,
            },
        };
        if p.core.card.paired_elsewhere() {
            p.core.wait_for_pairing();
        }
        p
    }

    /// Feeds bytes of the input; clear packets go to `sink`.
    pub fn push(&mut self, bytes: &[u8], sink: &mut dyn PacketSink) -> Result<(), Failure> {
        self.reader.push(bytes);
        self.drain(sink)?;
        let s = self.reader.stats();
        if s.packets == 0 && s.skipped_bytes >= self.core.opts.sync_limit {
            return Err(Failure::NotTs(format!(
                "no packet sync in the first {} bytes",
                s.skipped_bytes
            )));
        }
        Ok(())
    }

    /// Ends the input: flushes the last packets and says whether the run
    /// ended well.
    pub fn finish(&mut self, sink: &mut dyn PacketSink) -> Result<(), Failure> {
        self.reader.finish();
        self.drain(sink)?;
        if self.core.stats.packets_in == 0 {
            return Err(Failure::NotTs(if self.reader.stats().skipped_bytes == 0 {
                "the input is empty".into()
            } else {
                format!(
                    "no packet sync in its {} bytes",
                    self.reader.stats().skipped_bytes
                )
            }));
        }
        if let Some(d) = &self.core.discovery {
            return Err(d.missing(self.core.stats.packets_in));
        }
        if self.core.paired_elsewhere.is_some() {
            return Err(self.core.card.paired_elsewhere_error().into());
        }
        if let Some(d) = &self.core.denial {
            return Err(Failure::NotEntitled(d.message.clone()));
        }
        sink.flush().map_err(output_error)
    }

    /// Ends a run that was asked to stop: writes the packets still held
    /// back (the reader keeps the last one until it sees the next sync
    /// byte), without judging how the stream ended.
    pub fn stop(&mut self, sink: &mut dyn PacketSink) -> Result<(), Failure> {
        self.reader.finish();
        self.drain(sink)?;
        sink.flush().map_err(output_error)
    }

    fn drain(&mut self, sink: &mut dyn PacketSink) -> Result<(), Failure> {
        while let Some(p) = self.reader.next_packet() {
            self.core.packet(p, sink)?;
        }
        let s = self.reader.stats();
        self.core.stats.bytes_skipped = s.skipped_bytes;
        self.core.stats.sync_losses = s.sync_losses;
        Ok(())
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let mut s = self.core.stats.clone();
        s.card_reconnects = self.core.card.stats().reconnects;
        s.cw_changes = self.core.keys.changes();
        s
    }

    /// The service being descrambled, once the PAT has been seen.
    pub fn service(&self) -> Option<u16> {
        self.core.service()
    }

    pub fn card_id(&self) -> u32 {
        self.core.card.card_id()
    }

    /// When the first descrambled packet was written (for the zap time).
    pub fn first_clear_at(&self) -> Option<Instant> {
        self.core.first_clear
    }

    /// The card link (tests look at its transport).
    pub fn card_mut(&mut self) -> &mut CardLink {
        &mut self.core.card
    }

    /// Hands the card link back.
    pub fn into_card(self) -> CardLink {
        self.core.card
    }
}

fn output_error(source: io::Error) -> Failure {
    Failure::Output {
        what: String::new(),
        source,
    }
}

impl Discovery {
    fn missing(&self, packets: u64) -> Failure {
        match (&self.pat, self.target) {
            (None, _) => Failure::NotTs(format!(
                "no PAT (program association table) in {packets} packets"
            )),
            (Some(_), Some((program, pid))) => Failure::NotTs(format!(
                "no PMT for service {program} on PID 0x{pid:04X} in {packets} packets"
            )),
            (Some(_), None) => Failure::NotTs("the PAT lists no services".into()),
        }
    }
}

/// Picks the service in a PAT: the one asked for, or the first.
fn choose(pat: &Pat, wanted: Option<u16>) -> Result<(u16, u16), Failure> {
    let services: Vec<u16> = pat
        .programs
        .iter()
        .filter(|e| e.program_number != 0)
        .map(|e| e.program_number)
        .collect();
    let program = match wanted {
        Some(s) => s,
        None => *services
            .first()
            .ok_or_else(|| Failure::NotTs("the PAT lists no services".into()))?,
    };
    match pat.programs.iter().find(|e| e.program_number == program) {
        Some(e) if program != 0 => Ok((program, e.pid)),
        _ => Err(Failure::UnknownService {
            service: program,
            available: services,
        }),
    }
}

/// The PMT without CA or scrambling descriptors: the output is clear.
fn clear_pmt(pmt: &Pmt) -> Pmt {
    let keep =
        |d: &Descriptor| d.tag() != descriptor_tag::CA && d.tag() != descriptor_tag::SCRAMBLING;
    let mut out = pmt.clone();
    out.descriptors.retain(keep);
    for s in &mut out.streams {
        s.descriptors.retain(keep);
    }
    out
}

/// The CA_system_ids of every CA_descriptor in a PMT, and their PIDs.
fn all_ca(pmt: &Pmt) -> Vec<(u16, u16)> {
    pmt.descriptors
        .iter()
        .chain(pmt.streams.iter().flat_map(|s| s.descriptors.iter()))
        .filter_map(|d| match d {
            Descriptor::Ca(ca) => Some((ca.ca_system_id, ca.ca_pid)),
            _ => None,
        })
        .collect()
}

fn date(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .map_or_else(|| format!("@{unix}"), |t| t.date().to_string())
}

impl Core {
    fn service(&self) -> Option<u16> {
        self.program
    }

    fn packet(
        &mut self,
        p: &mut [u8; PACKET_LEN],
        sink: &mut dyn PacketSink,
    ) -> Result<(), Failure> {
        self.stats.packets_in += 1;
        if self.discovery.is_some() {
            return self.discover(p, sink);
        }
        self.process(p, sink)
    }

    /// Looks for the PAT, CAT and PMT while holding the packets.
    fn discover(
        &mut self,
        p: &mut [u8; PACKET_LEN],
        sink: &mut dyn PacketSink,
    ) -> Result<(), Failure> {
        let Some(d) = self.discovery.as_mut() else {
            return Ok(());
        };
        let Ok(view) = Packet::from_array(p) else {
            self.stats.bad_packets += 1;
            return Ok(());
        };
        d.hold.push_back(*p);
        if d.hold.len() > self.opts.hold_limit {
            return Err(d.missing(self.stats.packets_in));
        }
        let mut found_pmt = None;
        match view.pid() {
            PAT_PID => {
                for s in d.pat_asm.push(&view).into_iter().flatten() {
                    if let Ok(pat) = Pat::from_section(&s) {
                        let (program, pid) = choose(&pat, self.opts.service)?;
                        if d.target.map(|t| t.1) != Some(pid) {
                            d.pmt_asm.reset();
                        }
                        d.target = Some((program, pid));
                        d.pat = Some(pat);
                    }
                }
            }
            ts::packet::CAT_PID => {
                for s in d.cat_asm.push(&view).into_iter().flatten() {
                    if let Ok(cat) = Cat::from_section(&s) {
                        d.cat = Some(cat);
                    }
                }
            }
            pid if d.target.is_some_and(|t| t.1 == pid) => {
                let program = d.target.map_or(0, |t| t.0);
                for s in d.pmt_asm.push(&view).into_iter().flatten() {
                    if let Ok(pmt) = Pmt::from_section(&s) {
                        if pmt.program_number == program {
                            found_pmt = Some(pmt);
                        }
                    }
                }
            }
            _ => {}
        }
        let Some(pmt) = found_pmt else {
            return Ok(());
        };
        // Found: set the roles up from what was seen, then replay the held
        // packets through the normal path, in order.
        let Some(d) = self.discovery.take() else {
            return Ok(());
        };
        if let Some(pat) = &d.pat {
            self.learn_pat(pat)?;
        }
        if let Some(cat) = &d.cat {
            self.learn_cat(cat);
        }
        self.learn_pmt(&pmt)?;
        tracing::info!(
            service = self.program,
            pmt_pid = self.pmt_pid,
            ecm_pid = self.ecm_pid,
            emm_pid = self.emm_pid,
            held = d.hold.len(),
            "service found"
        );
        for mut held in d.hold {
            self.process(&mut held, sink)?;
        }
        Ok(())
    }

    fn role(&self, pid: u16) -> Role {
        self.roles
            .get(usize::from(pid))
            .copied()
            .unwrap_or(Role::Drop)
    }

    fn set_role(&mut self, pid: u16, role: Role) {
        if let Some(r) = self.roles.get_mut(usize::from(pid)) {
            *r = role;
        }
    }

    /// Gives a PID back its role from before any table claimed it.
    fn release(&mut self, pid: u16) {
        self.set_role(pid, default_role(pid));
    }

    fn emit(&mut self, p: &[u8; PACKET_LEN], sink: &mut dyn PacketSink) -> Result<(), Failure> {
        sink.packet(p).map_err(output_error)?;
        self.stats.packets_out += 1;
        Ok(())
    }

    fn process(
        &mut self,
        p: &mut [u8; PACKET_LEN],
        sink: &mut dyn PacketSink,
    ) -> Result<(), Failure> {
        let Ok(view) = Packet::from_array(p) else {
            self.stats.bad_packets += 1;
            return Ok(());
        };
        let pid = view.pid();
        if Some(pid) == self.pcr_pid {
            if let Some(pcr) = view.pcr() {
                self.clock.pcr(pcr);
            }
        }
        match self.role(pid) {
            Role::Drop => Ok(()),
            Role::Pass => {
                if view.scrambling().0 != 0 {
                    self.stats.scrambled_elsewhere += 1;
                    return Ok(());
                }
                self.emit(p, sink)
            }
            Role::Pat => {
                for r in self.pat_asm.push(&view) {
                    match r {
                        Ok(s) => self.on_pat(&s, sink)?,
                        Err(_) => self.stats.section_errors += 1,
                    }
                }
                Ok(())
            }
            Role::Pmt => {
                for r in self.pmt_asm.push(&view) {
                    match r {
                        Ok(s) => self.on_pmt(&s, sink)?,
                        Err(_) => self.stats.section_errors += 1,
                    }
                }
                Ok(())
            }
            Role::Cat => {
                for r in self.cat_asm.push(&view) {
                    match r.ok().and_then(|s| Cat::from_section(&s).ok()) {
                        Some(cat) => self.learn_cat(&cat),
                        None => self.stats.section_errors += 1,
                    }
                }
                Ok(())
            }
            Role::Ecm => {
                for r in self.ecm_asm.push(&view) {
                    match r {
                        Ok(s) => self.on_ecm(&s)?,
                        Err(_) => self.stats.section_errors += 1,
                    }
                }
                Ok(())
            }
            Role::Emm => {
                for r in self.emm_asm.push(&view) {
                    match r {
                        Ok(s) => self.on_emm(&s)?,
                        Err(_) => self.stats.section_errors += 1,
                    }
                }
                Ok(())
            }
            Role::Es => self.on_es(p, sink),
            Role::PcrOnly => {
                if view.scrambling().0 == 0 {
                    return self.emit(p, sink);
                }
                if view.pcr().is_none() {
                    self.stats.scrambled_elsewhere += 1;
                    return Ok(());
                }
                let af = view.adaptation_field().map_or(&[][..], |a| a.bytes());
                let mut out = [0xFFu8; PACKET_LEN];
                // Same PID and counter; clear, adaptation field only.
                out[..3].copy_from_slice(&p[..3]);
                out[3] = 0x20 | (p[3] & 0x0F);
                out[4] = 183;
                out[5..5 + af.len()].copy_from_slice(af);
                self.emit(&out, sink)
            }
        }
    }

    fn on_es(
        &mut self,
        p: &mut [u8; PACKET_LEN],
        sink: &mut dyn PacketSink,
    ) -> Result<(), Failure> {
        match self.keys.descramble(p) {
            Descrambled::Clear => self.emit(p, sink),
            Descrambled::Done(_) => {
                self.stats.descrambled += 1;
                if self.first_clear.is_none() {
                    self.first_clear = Some(Instant::now());
                }
                self.emit(p, sink)
            }
            Descrambled::NoKey(_) | Descrambled::Invalid => {
                if self.ecm_answered {
                    self.stats.undecryptable += 1;
                } else {
                    self.stats.before_first_key += 1;
                }
                if let Some(d) = &self.denial {
                    if self.clock.since(d.since) >= self.opts.entitlement_wait {
                        return Err(Failure::NotEntitled(d.message.clone()));
                    }
                }
                if let (Some(since), Some(wait)) = (self.paired_elsewhere, self.opts.pairing_wait) {
                    if self.clock.since(since) >= wait {
                        return Err(self.card.paired_elsewhere_error().into());
                    }
                }
                Ok(())
            }
        }
    }

    // ---- PSI -------------------------------------------------------------

    fn learn_pat(&mut self, pat: &Pat) -> Result<(), Failure> {
        let (program, pid) = choose(pat, self.program.or(self.opts.service))?;
        if self.pmt_pid != Some(pid) {
            if let Some(old) = self.pmt_pid {
                self.release(old);
            }
            self.set_role(pid, Role::Pmt);
            self.pmt_pid = Some(pid);
            self.pmt_asm.reset();
        }
        self.program = Some(program);
        Ok(())
    }

    fn on_pat(&mut self, section: &[u8], sink: &mut dyn PacketSink) -> Result<(), Failure> {
        let Ok(pat) = Pat::from_section(section) else {
            self.stats.section_errors += 1;
            return Ok(());
        };
        self.learn_pat(&pat)?;
        let program = self.program;
        let make = || {
            let mut out = pat.clone();
            out.programs
                .retain(|e| e.program_number == 0 || Some(e.program_number) == program);
            out.to_section().ok()
        };
        self.pat_out
            .emit(section, PAT_PID, make, sink, &mut self.stats)
            .map_err(output_error)
    }

    fn learn_pmt(&mut self, pmt: &Pmt) -> Result<(), Failure> {
        let cas = all_ca(pmt);
        let ours = cas
            .iter()
            .find(|(id, _)| *id == CA_SYSTEM_ID)
            .map(|&(_, pid)| pid);
        if cas.is_empty() {
            // A clear service: nothing for the card to do, and a receiver
            // that passed it through would hide a headend that failed open.
            return Err(Failure::NotScrambled {
                service: pmt.program_number,
            });
        }
        if ours.is_none() {
            let mut ids: Vec<u16> = cas.iter().map(|&(id, _)| id).collect();
            ids.dedup();
            return Err(Failure::ForeignCa {
                service: pmt.program_number,
                ca_system_ids: ids,
            });
        }
        // Forget the old layout, then set the new one.
        for pid in std::mem::take(&mut self.es_pids)
            .into_iter()
            .chain(self.pcr_pid.take())
            .chain(std::mem::take(&mut self.dropped_ca_pids))
        {
            self.release(pid);
        }
        let mut es: Vec<u16> = pmt.streams.iter().map(|s| s.pid).collect();
        for &pid in &es {
            if !matches!(self.role(pid), Role::Pat | Role::Pmt | Role::Cat) {
                self.set_role(pid, Role::Es);
            }
        }
        if !matches!(
            self.role(pmt.pcr_pid),
            Role::Es | Role::Pat | Role::Pmt | Role::Cat | Role::Pass
        ) {
            self.set_role(pmt.pcr_pid, Role::PcrOnly);
            es.push(pmt.pcr_pid);
        }
        self.es_pids = es;
        self.pcr_pid = Some(pmt.pcr_pid).filter(|&p| p != NULL_PID);
        for &(_, pid) in &cas {
            if Some(pid) != ours {
                self.set_role(pid, Role::Drop);
                self.dropped_ca_pids.push(pid);
            }
        }
        if self.ecm_pid != ours {
            if let Some(old) = self.ecm_pid {
                self.release(old);
            }
            if let Some(pid) = ours {
                self.set_role(pid, Role::Ecm);
            }
            self.ecm_pid = ours;
            self.ecm_asm.reset();
            self.last_ecm = None;
        }
        Ok(())
    }

    fn on_pmt(&mut self, section: &[u8], sink: &mut dyn PacketSink) -> Result<(), Failure> {
        let Ok(pmt) = Pmt::from_section(section) else {
            self.stats.section_errors += 1;
            return Ok(());
        };
        if Some(pmt.program_number) != self.program {
            return Ok(());
        }
        self.learn_pmt(&pmt)?;
        let Some(pid) = self.pmt_pid else {
            return Ok(());
        };
        self.pmt_out
            .emit(
                section,
                pid,
                || clear_pmt(&pmt).to_section().ok(),
                sink,
                &mut self.stats,
            )
            .map_err(output_error)
    }

    fn learn_cat(&mut self, cat: &Cat) {
        let pid = cat.emm_pid(CA_SYSTEM_ID);
        if pid == self.emm_pid {
            return;
        }
        if let Some(old) = self.emm_pid {
            self.release(old);
        }
        if let Some(new) = pid {
            self.set_role(new, Role::Emm);
        }
        self.emm_pid = pid;
        self.emm_asm.reset();
    }

    // ---- ECM ---------------------------------------------------------------

    fn on_ecm(&mut self, section: &[u8]) -> Result<(), Failure> {
        self.stats.ecm_sections += 1;
        if self.last_ecm.as_deref() == Some(section) {
            return Ok(()); // a repetition
        }
        let Ok(ps) = PrivateSection::parse(section) else {
            self.stats.section_errors += 1;
            return Ok(());
        };
        if !ps.table_id.is_ecm() {
            self.stats.section_errors += 1;
            return Ok(());
        }
        let Ok(header) = EcmHeader::read(&mut Reader::new(ps.payload)) else {
            self.stats.section_errors += 1;
            return Ok(());
        };
        self.last_ecm = Some(section.to_vec());
        self.last_ecm_header = Some(header);
        self.send_ecm(&header, &section[PRIVATE_HEADER_LEN..])
    }

    fn send_ecm(&mut self, header: &EcmHeader, ecm: &[u8]) -> Result<(), Failure> {
        self.stats.ecms_to_card += 1;
        self.ecm_answered = true;
        match self.card.process_ecm(ecm)? {
            EcmOutcome::ControlWords(cws) => {
                tracing::debug!(
                    epoch = header.epoch,
                    generation = header.generation,
                    "ECM answered"
                );
                self.keys.install(header.epoch, &cws);
                if self.paired_elsewhere.take().is_some() {
                    tracing::warn!(
                        "card {} now gives control words to this receiver",
                        self.card.card_id()
                    );
                }
                if self.denial.take().is_some() {
                    tracing::info!(
                        product = header.product,
                        "the card releases control words again"
                    );
                }
            }
            EcmOutcome::Refused(StatusWord::NOT_PAIRED_RECEIVER) => {
                // Not this receiver's card for now: nothing from this period
                // on, and the card keeps getting its EMMs.
                self.stats.ecms_refused += 1;
                self.keys.revoke_from(header.epoch);
                if self.paired_elsewhere.is_none() {
                    self.wait_for_pairing();
                }
            }
            EcmOutcome::Refused(sw) => {
                self.stats.ecms_refused += 1;
                if matches!(
                    sw,
                    StatusWord::ECM_NOT_ENTITLED
                        | StatusWord::ECM_OUTSIDE_DATES
                        | StatusWord::ECM_UNKNOWN_GENERATION
                ) {
                    // Nothing from this period on, even though the previous
                    // ECM carried this period's key.
                    self.keys.revoke_from(header.epoch);
                }
                let message = self.explain(sw, header);
                match &mut self.denial {
                    Some(d) => {
                        tracing::debug!(%message, epoch = header.epoch, "ECM refused again");
                        d.message = message;
                    }
                    None => {
                        tracing::warn!(%message, epoch = header.epoch, "ECM refused");
                        self.denial = Some(Denial {
                            since: self.clock.now(),
                            message,
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// The card is paired with another receiver: says once what the
    /// operator can do, and waits (EMMs still go to the card, and each ECM
    /// tries the session again).
    fn wait_for_pairing(&mut self) {
        let card = self.card.card_id();
        tracing::warn!(
            "card {card} is paired with another receiver; waiting for the operator to run \
             \"headend pair {card} {}\" (this receiver's key) or \"headend unpair {card}\"",
            hex::encode(self.card.receiver_public())
        );
        self.paired_elsewhere = Some(self.clock.now());
    }

    /// A refusal in the user's terms.
    fn explain(&mut self, sw: StatusWord, h: &EcmHeader) -> String {
        let card = self.card.card_id();
        let product = h.product;
        match sw {
            StatusWord::ECM_NOT_ENTITLED => {
                format!("card {card} has no entitlement for product {product}")
            }
            StatusWord::ECM_OUTSIDE_DATES => match self.card.entitlement(product) {
                // The card's clock is the newest time it accepted; once it
                // has been inside the dates, the refusal means they ended.
                Some((e, clock)) if clock > e.end || clock >= e.start => format!(
                    "card {card} has no entitlement for product {product} (ended {})",
                    date(e.end)
                ),
                Some((e, _)) => format!(
                    "card {card} has no entitlement for product {product} yet (starts {})",
                    date(e.start)
                ),
                None => format!(
                    "card {card} has no entitlement for product {product} at this time"
                ),
            },
            StatusWord::ECM_UNKNOWN_GENERATION => format!(
                "card {card} lacks key generation {} of product {product}: the EMM that brings it has not arrived",
                h.generation
            ),
            StatusWord::ECM_AUTH_FAILED => format!(
                "card {card} cannot authenticate the ECMs of service {} (product {product}): they are damaged or from another operator",
                h.service
            ),
            other => format!(
                "card {card} refused the ECMs of service {} (product {product}): {}",
                h.service,
                status_text(other)
            ),
        }
    }

    // ---- EMM ---------------------------------------------------------------

    fn on_emm(&mut self, section: &[u8]) -> Result<(), Failure> {
        self.stats.emm_sections += 1;
        // The filter: nothing addressed to another card reaches ours.
        let Some(address) = emm_section_address(section) else {
            self.stats.section_errors += 1;
            return Ok(());
        };
        if address != self.card.card_id() && address != GLOBAL_ADDRESS {
            return Ok(());
        }
        if PrivateSection::parse(section).is_err() {
            self.stats.section_errors += 1;
            return Ok(());
        }
        self.stats.emms_for_card += 1;
        if !self.emms.insert(section) {
            self.stats.emm_duplicates += 1;
            return Ok(());
        }
        self.stats.emms_to_card += 1;
        match self.card.process_emm(&section[PRIVATE_HEADER_LEN..])? {
            EmmOutcome::Accepted => {
                self.stats.emms_accepted += 1;
                tracing::debug!(address, "EMM accepted");
                // It may have brought the entitlement or the pairing: ask
                // again.
                if self.denial.is_some() || self.paired_elsewhere.is_some() {
                    if let (Some(h), Some(s)) = (self.last_ecm_header, self.last_ecm.clone()) {
                        self.send_ecm(&h, &s[PRIVATE_HEADER_LEN..])?;
                    }
                }
            }
            EmmOutcome::Replayed => self.stats.emms_replayed += 1,
            EmmOutcome::Rejected(sw) => {
                self.stats.emms_rejected += 1;
                tracing::debug!(address, sw = %sw, "EMM rejected");
            }
        }
        Ok(())
    }
}
