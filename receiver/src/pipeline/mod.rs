//! The receiver's stream path: scrambled TS in, clear TS out.
//!
//! ```text
//! bytes ─► PacketReader (sync, resync) ─► per-PID role ─┬─ PAT ─► rewritten: this service only
//!                                                       ├─ PMT ─► rewritten: no CA or scrambling descriptors
//!                                                       ├─ CAT ─► learns the EMM PID; dropped
//!                                                       ├─ ECM ─► new ECMs to the card thread ─► CW slots
//!                                                       ├─ EMM ─► address filter, dedup ─► card
//!                                                       ├─ ES  ─► descrambled with the slot its bits name
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
//! * `clock`: stream time from the PCR, for the waits.
//! * `worker`: where the CA module runs, on a thread of its own (the
//!   default) or inline. It never runs two commands on the card at once.
//!
//! This module reads the packets, sends each to its stage by the role of
//! its PID, and descrambles the service's packets.
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
use discovery::{Role, Search, ServiceMap};
use rewrite::Rewritten;
use std::io;
use std::time::{Duration, Instant};
use ts::demux::Demuxed;
use ts::packet::PAT_PID;
use ts::psi::{Cat, Pat, Pmt, PsiError};
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
    pub live: bool,
}

/// The default [`PipelineOptions::entitlement_wait`]: the headend's
/// default EMM cycle (60 s), in which the carousel reaches every entitled
/// card, plus its default crypto period (10 s). A change made by the
/// operator (a new subscription, a pairing) is sent at once and repeated
/// every second for 30 s, so it comes much sooner.
pub const DEFAULT_ENTITLEMENT_WAIT: Duration = Duration::from_secs(70);

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
    /// For each PID of the service's components and ECMs: its last
    /// continuity counter (`NO_CC` before its first packet) and the number
    /// of input gaps noted by then.
    continuity: Box<[(u8, u64); 8192]>,
}

/// No continuity counter seen yet.
const NO_CC: u8 = 0xFF;

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
                continuity: Box::new([(NO_CC, 0); 8192]),
            },
        }
    }
}

impl<C: CaModule> Pipeline<C> {
    /// Feeds bytes of the input; clear packets go to `sink`.
    pub fn push(&mut self, bytes: &[u8], sink: &mut dyn PacketSink) -> Result<(), Failure> {
        self.reader.push(bytes);
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

    /// When the first descrambled packet was written (for the zap time).
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
                match Cat::from_section(s) {
                    Ok(cat) => me.map.learn_cat(&cat),
                    Err(_) => me.stats.section_errors += 1,
                }
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
            Role::Es => self.on_es(p, sink),
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
        let pid = usize::from(u16::from_be_bytes([p[1] & 0x1F, p[2]]));
        let has_payload = p[3] & 0x10 != 0;
        let cc = p[3] & 0x0F;
        let flagged = p[3] & 0x20 != 0 && p[4] > 0 && p[5] & 0x80 != 0;
        let gaps = self.stats.input_gaps;
        let (last, gaps_then) = std::mem::replace(&mut self.continuity[pid], (cc, gaps));
        if last == NO_CC || flagged || gaps_then != gaps {
            return;
        }
        let expected = if has_payload { (last + 1) & 0x0F } else { last };
        if cc != expected && cc != last {
            self.input_gap("a continuity counter jumped");
            self.continuity[pid].1 = self.stats.input_gaps;
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
            Descrambled::Clear => self.emit(p, sink),
            Descrambled::Done(_) => {
                self.stats.descrambled += 1;
                if self.first_clear.is_none() {
                    self.first_clear = Some(Instant::now());
                }
                self.emit(p, sink)
            }
            Descrambled::NoKey(_) | Descrambled::Invalid => {
                if self.access.awaiting_ecm_after_gap() {
                    self.stats.after_gap += 1;
                } else if self.access.ecm_answered() {
                    self.stats.undecryptable += 1;
                } else {
                    self.stats.before_first_key += 1;
                }
                self.access.give_up(&self.clock, &self.opts)
            }
        }
    }

    fn on_pat(&mut self, section: &[u8], sink: &mut dyn PacketSink) -> Result<(), Failure> {
        let Ok(pat) = Pat::from_section(section) else {
            self.stats.section_errors += 1;
            return Ok(());
        };
        self.map.learn_pat(&pat, self.opts.service)?;
        let program = self.map.program();
        self.pat_out
            .emit(
                section,
                PAT_PID,
                || rewrite::service_pat(&pat, program),
                sink,
                &mut self.stats,
            )
            .map_err(output_error)
    }

    fn learn_pmt(&mut self, pmt: &Pmt) -> Result<(), Failure> {
        if self.map.learn_pmt(pmt)? {
            self.access.ecm_pid_changed();
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
