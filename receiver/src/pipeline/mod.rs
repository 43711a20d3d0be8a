//! The receiver's stream path: scrambled TS in, clear TS out.
//!
//! ```text
//! bytes ─► PacketReader (sync, resync) ─► per-PID role ─┬─ PAT ─► rewritten: this service only
//!                                                       ├─ PMT ─► rewritten: no CA or scrambling descriptors
//!                                                       ├─ CAT ─► learns the EMM PID; dropped
//!                                                       ├─ ECM ─► new ECMs to the card thread ─► CW slots
//!                                                       ├─ EMM ─► address filter, dedup ─► card
//!                                                       ├─ ES  ─► descrambled with the slot its bits name ─► join
//!                                                       └─ other PIDs: SI (0x10..0x1F) and null pass, the rest is dropped
//! ```
//!
//! The stages, each in its own module, and what each must never do:
//!
//! * `discovery`: the role of every PID, learnt from the PAT, the PMT and
//!   the CAT, and the search at the start of a run. Until the PAT and the
//!   service's PMT have been seen, packets are held (up to
//!   [`PipelineOptions::hold_limit`]) and then replayed in order, so an
//!   ECM or an EMM that came before the PMT is not lost. It never writes a
//!   packet nor talks to the card.
//! * `access`: new ECMs to the CA module and its control words into the
//!   CW slots ([`crate::keys`]); EMMs for this card to it, once each;
//!   refusals and how long they are waited out. It never hands the module
//!   an EMM addressed to another card.
//! * `rewrite`: the PAT and PMT of the clear output, and the PCR of a PID
//!   the service shares. It never writes a scrambled packet or CA
//!   signalling.
//! * [`ca`]: the [`CaModule`] trait, all the pipeline asks of a card;
//!   [`CardLink`] is the card-backed module, and the unit tests (`tests`)
//!   use a scripted one (`script`) that needs no card.
//! * `join`: where each component's clear output starts: at a random
//!   access point for video, a PES start for audio, at the start of a run
//!   and again after a loss, an input outage or the service's return
//!   ([`PipelineOptions::rap_join`]). It never changes a packet.
//! * `clock`: stream time from the PCR, for the waits.
//! * `worker`: where the CA module runs, on a thread of its own (the
//!   default) or inline. It never runs two commands on the card at once.
//!
//! This module reads the packets, sends each to its stage by the role of
//! its PID, and descrambles the service's packets.
//!
//! The stream may change under it, and each change is handled live,
//! counted in [`Stats`] and logged once: a new PAT, PMT or CAT (a new
//! version or content: a new ECM PID or CA descriptor, a component added
//! or removed, a new EMM PID; the PAT and the CAT may span several
//! sections), the service leaving the PAT or its PMT stopping (off the
//! air: nothing of it is written until its PMT comes back), and an input
//! that falls silent and comes back ([`Pipeline::input_outage`], called by
//! the run loop for a live input).
//!
//! The card works on its own thread ([`PipelineOptions::card_thread`]): a
//! real card takes 100 to 300 ms per command, and the packets keep
//! flowing meanwhile, descrambled with the keys already held. The ECM of
//! period n carries the key of period n+1, so the card has a whole crypto
//! period to answer before that key is needed. One command is at the card
//! at a time; the queue towards it holds the newest ECM, which always
//! goes first, and up to 64 EMMs. A packet whose key is missing while an
//! ECM is queued or at the card waits for the card (at the start of a run,
//! or after a zap). Beyond that, the input decides
//! ([`PipelineOptions::live`]):
//!
//! * live (UDP): nothing else waits for the card. A packet goes out with
//!   the key the card released one ECM earlier, so a refusal takes effect
//!   when the card's answer arrives, a card-time into its period. What the
//!   card cannot keep up with is dropped and counted (a stale ECM, when a
//!   newer one came before the card was free; the oldest EMMs), and the
//!   receiver says once that the card is too slow.
//! * a file or a pipe: a packet of the period of an ECM not yet answered
//!   waits for the answer, so that a refusal stops the output exactly at
//!   its period, and a full queue waits for the card: the card sets the
//!   pace and nothing is lost.
//!
//! What it must never do: write a packet it could not descramble (the
//! output is clear or absent), descramble with a key of another crypto
//! period (see [`crate::keys`]), or hand the card an EMM addressed to
//! another card.

mod access;
pub mod ca;
mod clock;
mod discovery;
mod join;
mod rewrite;
#[cfg(test)]
mod script;
#[cfg(test)]
mod tests;
mod worker;

pub use ca::{CaModule, EcmOutcome, EmmOutcome};

use crate::card::CardLink;
use crate::error::Failure;
use crate::keys::Descrambled;
use crate::stats::Stats;
use access::Access;
use clock::StreamClock;
use discovery::{Gathered, Role, Search, ServiceMap};
use join::{Admit, Join};
use rewrite::Rewritten;
use std::io;
use std::time::{Duration, Instant};
use ts::demux::Demuxed;
use ts::packet::{Continuity, ContinuityCheck, PAT_PID};
use ts::psi::{Cat, Pat, Pmt, PsiError, TableSections, CA_SYSTEM_ID};
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
    /// Call the CA module from a thread of its own (the default), so that
    /// packets keep flowing while the card works; `false` calls it in
    /// stream order, each answer before the next packet.
    pub card_thread: bool,
    /// The input is live (UDP): what the card cannot keep up with is
    /// dropped and counted (a stale ECM, the oldest EMMs) rather than
    /// waited for. A file or a pipe waits for the card and loses nothing.
    /// Each [`Pipeline::push`] of a live input is one datagram of whole
    /// packets.
    pub live: bool,
    /// Start each component's output at a random access point (video) or
    /// a PES start (audio, data): at the start, after a loss on its PID,
    /// after an input outage and when the service comes back (see
    /// `join`). Off, every packet that can be descrambled is written as
    /// it comes. The `receiver` command turns it on unless
    /// `--no-rap-join`; a pipeline built in code has it off unless asked.
    pub rap_join: bool,
}

/// The default [`PipelineOptions::entitlement_wait`]: the headend's
/// default EMM cycle (60 s), in which the carousel reaches every entitled
/// card, plus its default crypto period (10 s). A change made by the
/// operator (a new subscription, a pairing) is sent at once and repeated
/// every second for 30 s, so it comes much sooner.
pub const DEFAULT_ENTITLEMENT_WAIT: Duration = Duration::from_secs(70);

/// A live input silent for this long has had an outage
/// ([`Pipeline::input_outage`] when it comes back): more than a gap, a
/// stream that stopped. A live TS carries its PAT at least every 0.5 s.
pub const OUTAGE_AFTER: Duration = Duration::from_secs(1);

/// A live input silent for longer than this has had a gap: the source
/// stopped or restarted, or the network lost what it sent. (A stream sends
/// a PCR at least every 100 ms; its packets come far more often.)
pub const INPUT_GAP: Duration = Duration::from_millis(250);

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            service: None,
            entitlement_wait: DEFAULT_ENTITLEMENT_WAIT,
            pairing_wait: None,
            hold_limit: 50_000,
            sync_limit: 64 * 1024,
            emm_memory: 4096,
            card_thread: true,
            live: false,
            rap_join: false,
        }
    }
}

/// The receiver pipeline over one CA module (see the module docs): the
/// card behind its protected link in production.
pub struct Pipeline<C: CaModule = CardLink> {
    reader: PacketReader,
    stages: Stages<C>,
}

/// Everything after the packet reader, one packet at a time.
struct Stages<C> {
    opts: PipelineOptions,
    stats: Stats,
    clock: StreamClock,
    /// Until the service's PMT has been seen.
    search: Option<Search>,
    map: ServiceMap,
    pat_out: Rewritten,
    pmt_out: Rewritten,
    access: Access<C>,
    first_clear: Option<Instant>,
    /// For each PID of the service's components and ECMs: its continuity
    /// counter, and the number of input gaps noted by its last packet.
    continuity: Box<[(ContinuityCheck, u64); 8192]>,
    join: Join,
    /// The PAT and the CAT may span several sections.
    pat_sections: TableSections,
    cat_sections: TableSections,
    /// The last of each table, to tell a change from a repetition.
    last_pat: Option<Pat>,
    last_cat: Option<Cat>,
    last_pmt: Option<Pmt>,
    /// Whole PATs since the service's PMT was last seen.
    pats_without_pmt: u32,
    /// Since when the service has been off the air, if it is.
    lost_since: Option<Instant>,
}

/// Whole PATs without the service's PMT after which the service is taken
/// as gone: 1.5 s at the headend's rate (both every 100 ms); DVB wants
/// each at least every 0.5 s (ETSI TR 101 290).
const PMT_LOST_AFTER_PATS: u32 = 15;

impl<C: CaModule> std::fmt::Debug for Pipeline<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("service", &self.service())
            .field("stats", &self.stages.stats)
            .finish_non_exhaustive()
    }
}

impl<C: CaModule + Send + 'static> Pipeline<C> {
    /// A pipeline over a CA module that is ready (a card link already
    /// open).
    pub fn new(card: C, opts: PipelineOptions) -> Self {
        let clock = StreamClock::new();
        let access = Access::new(card, &opts, &clock);
        let join = Join::new(opts.rap_join);
        Pipeline {
            reader: PacketReader::new(),
            stages: Stages {
                opts,
                stats: Stats::default(),
                clock,
                search: Some(Search::default()),
                map: ServiceMap::new(),
                pat_out: Rewritten::default(),
                pmt_out: Rewritten::default(),
                access,
                first_clear: None,
                continuity: Box::new([(ContinuityCheck::new(), 0); 8192]),
                join,
                pat_sections: TableSections::new(),
                cat_sections: TableSections::new(),
                last_pat: None,
                last_cat: None,
                last_pmt: None,
                pats_without_pmt: 0,
                lost_since: None,
            },
        }
    }
}

impl<C: CaModule> Pipeline<C> {
    /// Feeds bytes of the input; clear packets go to `sink`.
    pub fn push(&mut self, bytes: &[u8], sink: &mut dyn PacketSink) -> Result<(), Failure> {
        // A live input comes a UDP datagram at a time: its last packet
        // goes out with it, not with the next datagram (up to a whole
        // datagram interval later on a low-rate stream).
        if self.stages.opts.live {
            self.reader.push_datagram(bytes);
        } else {
            self.reader.push(bytes);
        }
        self.drain(sink)?;
        let s = self.reader.stats();
        if s.packets == 0 && s.skipped_bytes >= self.stages.opts.sync_limit {
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
        let st = &mut self.stages;
        st.access.settle(&st.clock, &mut st.stats)?;
        let st = &self.stages;
        if st.stats.packets_in == 0 {
            return Err(Failure::NotTs(if self.reader.stats().skipped_bytes == 0 {
                "the input is empty".into()
            } else {
                format!(
                    "no packet sync in its {} bytes",
                    self.reader.stats().skipped_bytes
                )
            }));
        }
        if let Some(s) = &st.search {
            return Err(s.missing(st.stats.packets_in));
        }
        if let Some(f) = st.access.unresolved() {
            return Err(f);
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
            self.stages.packet(p, sink)?;
        }
        let s = self.reader.stats();
        self.stages.stats.bytes_skipped = s.skipped_bytes;
        self.stages.stats.sync_losses = s.sync_losses;
        Ok(())
    }

    /// The input had a gap that the stream itself may not show (a live
    /// source silent for longer than [`INPUT_GAP`]): nothing is
    /// descrambled until an ECM arrives after it (see
    /// [`KeySlots::input_gap`](crate::keys::KeySlots::input_gap)).
    pub fn input_gap(&mut self, why: &str) {
        self.stages.input_gap(why);
    }

    /// The live input fell silent for `gap` (at least
    /// [`OUTAGE_AFTER`]) and has come back: an input gap (see
    /// [`Pipeline::input_gap`]), and more: partial sections are dropped,
    /// and every component's output starts again at its next random
    /// access point. Counted and logged.
    pub fn input_outage(&mut self, gap: Duration) {
        self.stages.input_outage(gap);
    }

    /// Whether the card has a command in hand or one waiting for it: the
    /// input loop then comes back soon ([`Pipeline::poll_card`]).
    pub fn card_working(&self) -> bool {
        self.stages.access.busy()
    }

    /// Takes the card's answers and gives it its next command, between
    /// inputs: packets come in bursts, and the card's work should not wait
    /// for the next one.
    pub fn poll_card(&mut self) -> Result<(), Failure> {
        let st = &mut self.stages;
        st.access.poll(&st.clock, &mut st.stats)
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let mut s = self.stages.stats.clone();
        self.stages.access.fill_stats(&mut s);
        s
    }

    /// The service being descrambled, once the PAT has been seen.
    pub fn service(&self) -> Option<u16> {
        self.stages.map.program()
    }

    pub fn card_id(&self) -> u32 {
        self.stages.access.card_id()
    }

    /// When the first packet was descrambled (for the zap time: the
    /// card's part of it; with [`PipelineOptions::rap_join`] the output
    /// may wait for a random access point after that).
    pub fn first_clear_at(&self) -> Option<Instant> {
        self.stages.first_clear
    }

    /// Hands the CA module back, once it has done the command in its
    /// hands.
    pub fn into_card(self) -> C {
        self.stages.access.into_card()
    }
}

fn output_error(source: io::Error) -> Failure {
    Failure::Output {
        what: String::new(),
        source,
    }
}

impl<C: CaModule> Stages<C> {
    fn packet(
        &mut self,
        p: &mut [u8; PACKET_LEN],
        sink: &mut dyn PacketSink,
    ) -> Result<(), Failure> {
        self.stats.packets_in += 1;
        if self.search.is_some() {
            return self.search(p, sink);
        }
        self.process(p, sink)
    }

    /// Holds the packets while the PAT, CAT and PMT are looked for; once
    /// the PMT is found, sets the roles up from what was seen and replays
    /// the held packets through the normal path, in order.
    fn search(
        &mut self,
        p: &mut [u8; PACKET_LEN],
        sink: &mut dyn PacketSink,
    ) -> Result<(), Failure> {
        let Some(search) = self.search.as_mut() else {
            return Ok(());
        };
        let Ok(view) = Packet::from_array(p) else {
            self.stats.bad_packets += 1;
            return Ok(());
        };
        let looked = search.look(
            p,
            &view,
            self.opts.service,
            self.opts.hold_limit,
            self.stats.packets_in,
        )?;
        let Some(pmt) = looked else {
            return Ok(());
        };
        let Some(search) = self.search.take() else {
            return Ok(());
        };
        let found = search.found(pmt);
        if let Some(pat) = &found.pat {
            self.map.learn_pat(pat, self.opts.service)?;
        }
        if let Some(cat) = &found.cat {
            self.map.learn_cat(cat);
        }
        self.last_pat = found.pat.clone();
        self.last_cat = found.cat.clone();
        self.learn_pmt(&found.pmt)?;
        tracing::info!(
            service = self.map.program(),
            pmt_pid = self.map.pmt_pid(),
            ecm_pid = self.map.ecm_pid(),
            emm_pid = self.map.emm_pid(),
            held = found.held.len(),
            "service found"
        );
        for mut held in found.held {
            self.process(&mut held, sink)?;
        }
        Ok(())
    }

    fn emit(&mut self, p: &[u8; PACKET_LEN], sink: &mut dyn PacketSink) -> Result<(), Failure> {
        sink.packet(p).map_err(output_error)?;
        self.stats.packets_out += 1;
        Ok(())
    }

    /// Each section a packet completed, to `on_section` in order; a
    /// broken one counted as a section error.
    fn each_section(
        &mut self,
        sections: Vec<Result<Vec<u8>, PsiError>>,
        mut on_section: impl FnMut(&mut Self, &[u8]) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        for r in sections {
            match r {
                Ok(s) => on_section(self, &s)?,
                Err(_) => self.stats.section_errors += 1,
            }
        }
        Ok(())
    }

    /// One packet, by the role of its PID.
    fn process(
        &mut self,
        p: &mut [u8; PACKET_LEN],
        sink: &mut dyn PacketSink,
    ) -> Result<(), Failure> {
        let Ok(view) = Packet::from_array(p) else {
            self.stats.bad_packets += 1;
            return Ok(());
        };
        if self.access.busy() {
            self.access.poll(&self.clock, &mut self.stats)?;
        }
        let pid = view.pid();
        if Some(pid) == self.map.pcr_pid() {
            if let Some(pcr) = view.pcr() {
                self.clock.pcr(pcr);
            }
        }
        let Demuxed { role, sections, .. } = self.map.push(&view);
        match role {
            Role::Drop => Ok(()),
            Role::Pass => {
                if view.scrambling().0 != 0 {
                    self.stats.scrambled_elsewhere += 1;
                    return Ok(());
                }
                self.emit(p, sink)
            }
            Role::Pat => self.each_section(sections, |me, s| me.on_pat(s, sink)),
            Role::Pmt => self.each_section(sections, |me, s| me.on_pmt(s, sink)),
            Role::Cat => self.each_section(sections, |me, s| {
                me.on_cat(s);
                Ok(())
            }),
            Role::Ecm => {
                self.check_continuity(p);
                self.each_section(sections, |me, s| {
                    me.access.on_ecm(s, &me.clock, &mut me.stats)
                })
            }
            Role::Emm => self.each_section(sections, |me, s| {
                me.access.on_emm(s, &me.clock, &mut me.stats)
            }),
            Role::Es => {
                self.join.arrived(&view, &self.clock, &mut self.stats);
                self.on_es(p, sink)
            }
            Role::PcrOnly => {
                if view.scrambling().0 == 0 {
                    return self.emit(p, sink);
                }
                match rewrite::adaptation_only(&view) {
                    Some(out) => self.emit(&out, sink),
                    None => {
                        self.stats.scrambled_elsewhere += 1;
                        Ok(())
                    }
                }
            }
        }
    }

    fn input_gap(&mut self, why: &str) {
        self.stats.input_gaps += 1;
        tracing::info!("gap in the input ({why}): waiting for an ECM before descrambling again");
        self.access.input_gap();
    }

    /// Notes the continuity counter of a packet of the service's
    /// components or ECMs. A jump (not a repetition, not marked by the
    /// discontinuity_indicator) is a gap, unless one was already noted
    /// since the PID's last packet: one gap shows on every PID, and the
    /// ECM that may have come after it on another PID must count.
    fn check_continuity(&mut self, p: &[u8; PACKET_LEN]) {
        let Ok(view) = Packet::from_array(p) else {
            return;
        };
        let gaps = self.stats.input_gaps;
        let (check, gaps_then) = &mut self.continuity[usize::from(view.pid())];
        let jumped = check.check(&view) == Continuity::Jump;
        let noted = std::mem::replace(gaps_then, gaps) != gaps;
        if jumped && !noted {
            self.input_gap("a continuity counter jumped");
            self.continuity[usize::from(view.pid())].1 = self.stats.input_gaps;
        }
    }

    /// A packet of the service: out descrambled, or not at all.
    fn on_es(
        &mut self,
        p: &mut [u8; PACKET_LEN],
        sink: &mut dyn PacketSink,
    ) -> Result<(), Failure> {
        self.check_continuity(p);
        if self.access.must_wait(p) {
            self.access.wait_for_key(&self.clock, &mut self.stats)?;
        }
        let mut d = self.access.descramble(p);
        if matches!(d, Descrambled::NoKey(_)) && self.access.key_may_come() {
            // The key may come from what the card is working on: the one
            // packet that needs it waits for it. With the headend's
            // one-period lead this happens at the start of a run only.
            self.access.wait_for_key(&self.clock, &mut self.stats)?;
            d = self.access.descramble(p);
        }
        match d {
            Descrambled::Clear => self.write_es(p, sink),
            Descrambled::Done(_) => {
                self.stats.descrambled += 1;
                if self.first_clear.is_none() {
                    self.first_clear = Some(Instant::now());
                }
                self.write_es(p, sink)
            }
            Descrambled::NoKey(_) | Descrambled::Invalid => {
                if self.access.awaiting_ecm_after_gap() {
                    self.stats.after_gap += 1;
                } else if self.access.ecm_answered() {
                    self.stats.undecryptable += 1;
                } else {
                    self.stats.before_first_key += 1;
                }
                let pid = u16::from_be_bytes([p[1] & 0x1F, p[2]]);
                self.join.lost(pid, &self.clock, &mut self.stats);
                self.access.give_up(&self.clock, &self.opts)
            }
        }
    }

    /// A clear packet of the service, out if its component has reached
    /// its start (see `join`).
    fn write_es(&mut self, p: &[u8; PACKET_LEN], sink: &mut dyn PacketSink) -> Result<(), Failure> {
        match self.join.admit(p, &self.clock, &mut self.stats) {
            Admit::Write => self.emit(p, sink),
            Admit::Hold => Ok(()),
            Admit::Release(held) => {
                for q in &held {
                    self.emit(q, sink)?;
                }
                Ok(())
            }
        }
    }

    /// See [`Pipeline::input_outage`].
    fn input_outage(&mut self, gap: Duration) {
        self.stats.input_outages += 1;
        tracing::warn!(
            silent_ms = gap.as_millis() as u64,
            "the input was silent for {:.1} s and has come back: each component's output starts again at its next random access point",
            gap.as_secs_f64()
        );
        self.map.discontinuity();
        self.pat_sections.clear();
        self.cat_sections.clear();
        self.pats_without_pmt = 0;
        self.input_gap("the input was silent");
        if self.search.is_none() {
            self.join.restart_all(&self.clock, &mut self.stats);
        }
    }

    /// The service went off the air: it left the PAT, or its PMT stopped.
    fn service_lost(&mut self, why: &str) {
        if self.lost_since.is_some() {
            return;
        }
        self.lost_since = Some(Instant::now());
        self.stats.service_lost += 1;
        tracing::warn!(
            service = self.map.program(),
            "the service is off the air ({why}); waiting for it to return"
        );
        // Its stream stops, and whole crypto periods may pass before it
        // comes back: as after an input outage, the packets' period is
        // inferred again from the next ECM, and each component starts
        // again at a random access point.
        self.input_gap("the service went off the air");
        self.join.restart_all(&self.clock, &mut self.stats);
    }

    /// A CAT section: the EMM PID, once the whole table is in.
    fn on_cat(&mut self, section: &[u8]) {
        let cat = match discovery::gather(&mut self.cat_sections, section, Cat::from_sections) {
            Gathered::Whole(cat, _) => cat,
            Gathered::Partial => return,
            Gathered::Broken => {
                self.stats.section_errors += 1;
                return;
            }
        };
        if let Some(old) = &self.last_cat {
            if *old != cat {
                self.stats.cat_changes += 1;
                let emm = |c: &Cat| {
                    c.emm_pid(CA_SYSTEM_ID)
                        .map_or_else(|| "none".to_string(), |p| format!("0x{p:04X}"))
                };
                tracing::info!(
                    "the CAT changed: version {} -> {}, EMM PID {} -> {}",
                    old.version,
                    cat.version,
                    emm(old),
                    emm(&cat)
                );
            }
        }
        self.map.learn_cat(&cat);
        self.last_cat = Some(cat);
    }

    fn on_pat(&mut self, section: &[u8], sink: &mut dyn PacketSink) -> Result<(), Failure> {
        let (pat, input) =
            match discovery::gather(&mut self.pat_sections, section, Pat::from_sections) {
                Gathered::Whole(pat, input) => (pat, input),
                Gathered::Partial => return Ok(()),
                Gathered::Broken => {
                    self.stats.section_errors += 1;
                    return Ok(());
                }
            };
        if let Some(old) = &self.last_pat {
            if *old != pat {
                self.stats.pat_changes += 1;
                tracing::info!(
                    "the PAT changed: version {} -> {}, {} services",
                    old.version,
                    pat.version,
                    pat.programs
                        .iter()
                        .filter(|e| e.program_number != 0)
                        .count()
                );
            }
        }
        let listed = self.map.learn_pat(&pat, self.opts.service)?;
        self.pats_without_pmt = self.pats_without_pmt.saturating_add(1);
        if !listed {
            self.service_lost("it left the PAT");
        } else if self.pats_without_pmt > PMT_LOST_AFTER_PATS {
            self.service_lost("its PMT stopped");
        }
        self.last_pat = Some(pat.clone());
        let program = self.map.program();
        self.pat_out
            .emit(
                &input,
                PAT_PID,
                || rewrite::service_pat(&pat, program),
                sink,
                &mut self.stats,
            )
            .map_err(output_error)
    }

    /// The service's PMT (every repetition): its layout, and what changed.
    fn learn_pmt(&mut self, pmt: &Pmt) -> Result<(), Failure> {
        if self.map.learn_pmt(pmt)? {
            self.access.ecm_pid_changed();
        }
        self.pats_without_pmt = 0;
        match &self.last_pmt {
            Some(old) if old == pmt => {}
            Some(old) => {
                self.stats.pmt_changes += 1;
                tracing::info!(
                    service = pmt.program_number,
                    "the PMT changed: {}",
                    discovery::pmt_change(old, pmt)
                );
                self.join.set_components(&pmt.streams, &self.clock);
                self.last_pmt = Some(pmt.clone());
            }
            None => {
                self.join.set_components(&pmt.streams, &self.clock);
                self.last_pmt = Some(pmt.clone());
            }
        }
        if !self.map.off_air() {
            if let Some(since) = self.lost_since.take() {
                self.stats.service_returned += 1;
                tracing::info!(
                    service = pmt.program_number,
                    "the service is back on the air after {:.1} s",
                    since.elapsed().as_secs_f64()
                );
            }
        }
        Ok(())
    }

    fn on_pmt(&mut self, section: &[u8], sink: &mut dyn PacketSink) -> Result<(), Failure> {
        let Ok(pmt) = Pmt::from_section(section) else {
            self.stats.section_errors += 1;
            return Ok(());
        };
        if Some(pmt.program_number) != self.map.program() {
            return Ok(());
        }
        self.learn_pmt(&pmt)?;
        let Some(pid) = self.map.pmt_pid() else {
            return Ok(());
        };
        self.pmt_out
            .emit(
                section,
                pid,
                || rewrite::clear_pmt(&pmt).to_section().ok(),
                sink,
                &mut self.stats,
            )
            .map_err(output_error)
    }
}
