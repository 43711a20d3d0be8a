//! Shared by the receiver's tests: real TS from ffmpeg and synthetic TS,
//! cards provisioned for a headend key engine, scrambled streams from the
//! headend's stream engine with a CA feed that renews product keys, and an
//! in-process card that can be pulled out of its reader.
#![allow(dead_code)]

use card::eeprom::{Eeprom, MemEeprom};
use card::Applet;
use cardlink::{CardClient, CardTransport, InProcessCard, TransportError};
use headend_engine::stream::{
    process_buffer, CaFeed, ChannelStreamConfig, CryptoPeriod, EngineFeed, FeedError,
};
use headend_engine::{ControlWordSchedule, KeyEngine, OperatorKeys};
use proto::crypto::X25519Secret;
use proto::ecm::EcmHeader;
use proto::secret::ControlWord;
use proto::Codec;
use receiver::card::{CardConnector, CardLink, LinkOptions};
use receiver::{Failure, Pipeline, PipelineOptions, Stats};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use ts::packet::{Packet, PacketBuilder, Packets, Pcr, PACKET_LEN};
use ts::psi::{packetize, stream_type, Pat, PatEntry, Pmt, PmtStream, SectionAssembler, TableId};

pub const CARD: u32 = 42;
pub const OTHER_CARD: u32 = 43;
pub const PRODUCT: u32 = 7;
pub const SERVICE: u16 = 1;
pub const ECM_PID: u16 = 0x1F0;
pub const EMM_PID: u16 = 0x1F1;
/// ffmpeg's (and the synthetic stream's) elementary streams.
pub const VIDEO: u16 = 0x100;
pub const AUDIO: u16 = 0x101;
/// 2026-11-30T00:00:00Z.
pub const DAY0: u64 = 1_795_996_800;
pub const DAY: u64 = 86_400;
/// Streams start at 2026-11-30T12:00:00Z unless a test says otherwise.
pub const START_MS: u64 = (DAY0 + DAY / 2) * 1000;

// ---------------------------------------------------------------- streams

pub use testkit::ffmpeg::{ffmpeg_ts, ffprobe_frames};

/// A small xorshift for filler bytes: deterministic, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

/// A synthetic clear TS, `duration_ms` long: PAT and PMT every 100 ms,
/// video (with a PCR in every packet) and audio, `per_100ms` ES packets
/// per 100 ms, with random payloads.
pub fn synthetic_ts(duration_ms: u64, per_100ms: u64) -> Vec<u8> {
    synthetic_multi(duration_ms, per_100ms, 1)
}

/// Like [`synthetic_ts`] with `services` programs: program `n` has its
/// PMT on 0x1000 + n - 1 and its video and audio on 0x100 + 0x100 (n - 1)
/// and the next PID; the first program's video carries the PCR.
pub fn synthetic_multi(duration_ms: u64, per_100ms: u64, services: u16) -> Vec<u8> {
    let pat = Pat {
        transport_stream_id: 1,
        version: 0,
        current_next: true,
        programs: (1..=services)
            .map(|n| PatEntry {
                program_number: n,
                pid: 0x1000 + n - 1,
            })
            .collect(),
    }
    .to_section()
    .unwrap();
    let pmts: Vec<Vec<u8>> = (1..=services)
        .map(|n| {
            let v = VIDEO + 0x100 * (n - 1);
            Pmt {
                program_number: n,
                version: 0,
                current_next: true,
                pcr_pid: VIDEO,
                descriptors: vec![],
                streams: vec![
                    PmtStream {
                        stream_type: stream_type::H264,
                        pid: v,
                        descriptors: vec![],
                    },
                    PmtStream {
                        stream_type: stream_type::AAC_ADTS,
                        pid: v + 1,
                        descriptors: vec![],
                    },
                ],
            }
            .to_section()
            .unwrap()
        })
        .collect();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut out = Vec::new();
    let mut cc: HashMap<u16, u8> = HashMap::new();
    let mut psi = Vec::new();
    let mut payload = [0u8; 184];
    for t in (0..duration_ms).step_by(100) {
        psi.clear();
        packetize(&[&pat], 0, cc.entry(0).or_default(), &mut psi).unwrap();
        for (i, pmt) in pmts.iter().enumerate() {
            let pid = 0x1000 + i as u16;
            packetize(&[pmt], pid, cc.entry(pid).or_default(), &mut psi).unwrap();
        }
        for p in &psi {
            out.extend_from_slice(p);
        }
        for k in 0..per_100ms {
            let n = (k / 2 % u64::from(services)) as u16;
            let pid = VIDEO + 0x100 * n + (k % 2) as u16;
            let mut b = PacketBuilder::new(pid);
            let c = cc.entry(pid).or_default();
            b.continuity_counter = *c;
            *c = (*c + 1) & 0x0F;
            b.pusi = k % 10 < 2;
            if pid == VIDEO {
                let ms = t * 1000 + k * 100_000 / per_100ms;
                b.pcr = Some(Pcr::from_27mhz(27_000 * (1_000 + ms / 1000)));
            }
            rng.fill(&mut payload);
            let (p, _) = b.build(&payload).unwrap();
            out.extend_from_slice(&p);
        }
    }
    out
}

/// The packets of each PID, in order.
pub fn packets_by_pid(ts: &[u8]) -> BTreeMap<u16, Vec<[u8; PACKET_LEN]>> {
    let mut m: BTreeMap<u16, Vec<[u8; PACKET_LEN]>> = BTreeMap::new();
    for p in Packets::new(ts) {
        let pid = u16::from_be_bytes([p[1] & 0x1F, p[2]]);
        m.entry(pid).or_default().push(*p);
    }
    m
}

/// The elementary-stream packets of `pids`, in order.
pub fn es(ts: &[u8], pids: &[u16]) -> BTreeMap<u16, Vec<[u8; PACKET_LEN]>> {
    let mut all = packets_by_pid(ts);
    pids.iter()
        .map(|pid| (*pid, all.remove(pid).unwrap_or_default()))
        .collect()
}

/// Asserts that the output carries exactly the input's ES packets, byte
/// for byte.
pub fn assert_es_identical(clear: &[u8], out: &[u8]) {
    let want = es(clear, &[VIDEO, AUDIO]);
    let got = es(out, &[VIDEO, AUDIO]);
    for pid in [VIDEO, AUDIO] {
        assert!(!want[&pid].is_empty());
        assert_eq!(
            got[&pid].len(),
            want[&pid].len(),
            "PID {pid:#x}: packet count"
        );
        let first_diff = got[&pid].iter().zip(&want[&pid]).position(|(a, b)| a != b);
        assert_eq!(
            first_diff, None,
            "PID {pid:#x}: packets differ from the input"
        );
    }
}

/// How many ES packets of each PID the scrambled stream carries before
/// the first ECM of `epoch`.
pub fn es_before_epoch(scrambled: &[u8], epoch: u64) -> BTreeMap<u16, usize> {
    let mut asm = SectionAssembler::new();
    let mut n = BTreeMap::from([(VIDEO, 0), (AUDIO, 0)]);
    for p in Packets::new(scrambled) {
        let v = Packet::from_array(p).unwrap();
        if v.pid() == ECM_PID {
            for s in asm.push(&v) {
                let s = s.unwrap();
                let h = proto::ecm::EcmHeader::read(&mut proto::Reader::new(&s[3..])).unwrap();
                if h.epoch >= epoch {
                    return n;
                }
            }
        }
        if let Some(c) = n.get_mut(&v.pid()) {
            *c += 1;
        }
    }
    n
}

// ---------------------------------------------------------------- headend

/// A key engine with product 7.
pub fn engine() -> KeyEngine {
    let mut e = KeyEngine::new(OperatorKeys::generate(1));
    e.add_product(PRODUCT).unwrap();
    e
}

/// A card personalized for the engine's operator, locked and registered.
pub fn provision<E: Eeprom>(engine: &mut KeyEngine, card_id: u32, eeprom: E) -> Applet<E> {
    let mut c = CardClient::new(InProcessCard::new(Applet::power_on(eeprom).unwrap()));
    c.select().unwrap();
    let public = c
        .personalize(&engine.operator().public().personalization(card_id))
        .unwrap();
    c.lock().unwrap();
    engine.add_card(card_id, public).unwrap();
    c.into_transport().applet
}

/// An entitlement from a month before [`DAY0`] to a month after.
pub const WIDE: (u64, u64) = (DAY0 - 30 * DAY, DAY0 + 30 * DAY);

/// The key engine and card 42 in RAM, entitled to the product for
/// [`WIDE`].
pub fn entitled_card() -> (KeyEngine, Applet<MemEeprom>) {
    let mut engine = engine();
    let (applet, _) = mem_card(&mut engine, CARD, Some(WIDE));
    (engine, applet)
}

/// Provisions a card in RAM, entitled to the product from `start` to `end`
/// (Unix seconds) if given; returns it with the EMM-U it was given.
pub fn mem_card(
    engine: &mut KeyEngine,
    card_id: u32,
    dates: Option<(u64, u64)>,
) -> (Applet<MemEeprom>, Option<Vec<u8>>) {
    let applet = provision(engine, card_id, MemEeprom::default());
    let mut c = CardClient::new(InProcessCard::new(applet));
    c.select().unwrap();
    let mut given = None;
    if let Some((start, end)) = dates {
        engine.entitle(card_id, PRODUCT, start, end).unwrap();
        let emm = engine.emm_u_for(card_id, start).unwrap();
        c.process_emm(&emm).unwrap();
        given = Some(emm);
    }
    (c.into_transport().applet, given)
}

/// A CA feed on the key engine, as the daemon would run it (the headend's
/// [`EngineFeed`]), with what a test needs on top: product-key renewals at
/// set times (the cards get their EMM-U at once, and the ECMs keep the old
/// key a little longer, as a headend must), EMMs sent once at set times,
/// and a record of every CW put on the air.
#[derive(Debug)]
pub struct TestFeed {
    inner: EngineFeed,
    /// Unix ms at which to renew the product key.
    pub renewals: VecDeque<u64>,
    /// Cards that receive the renewal EMM-U.
    pub renew_for: Vec<u32>,
    /// How long after a renewal the ECMs keep the old key.
    pub lead_ms: u64,
    old: Option<(u32, u64)>,
    once: VecDeque<Arc<[u8]>>,
    /// EMM sections to send once, at a stream time (Unix ms).
    pub scheduled: VecDeque<(u64, Arc<[u8]>)>,
    /// Every CW that scrambled or was announced, for leak checks.
    pub cws: Vec<ControlWord>,
    last_epoch: Option<u64>,
    pub generations_used: Vec<u32>,
}

impl TestFeed {
    pub fn new(engine: KeyEngine, period_ms: u64) -> Self {
        let mut inner =
            EngineFeed::new(engine, ControlWordSchedule::new(10).unwrap(), period_ms).unwrap();
        inner.add_service(SERVICE, PRODUCT, 0);
        TestFeed {
            inner,
            renewals: VecDeque::new(),
            renew_for: Vec::new(),
            lead_ms: 300,
            old: None,
            once: VecDeque::new(),
            scheduled: VecDeque::new(),
            cws: Vec::new(),
            last_epoch: None,
            generations_used: Vec::new(),
        }
    }

    pub fn engine_mut(&mut self) -> &mut KeyEngine {
        self.inner.engine_mut()
    }

    /// Scrambles another service under the same product.
    pub fn add_service(&mut self, service: u16) {
        self.inner.add_service(service, PRODUCT, 0);
    }

    /// Sends an EMM once, at `at_ms` (Unix ms of stream time).
    pub fn emm_at(&mut self, at_ms: u64, emm: &[u8]) {
        self.scheduled.push_back((
            at_ms,
            ts::psi::emm_section(TableId(0x84), emm).unwrap().into(),
        ));
    }

    /// Adds an EMM to the carousel (table_id 0x82).
    pub fn carousel_emm(&mut self, emm: &[u8]) {
        self.inner.push_emm(TableId(0x82), emm).unwrap();
    }
}

impl CaFeed for TestFeed {
    fn period(&mut self, service: u16, now_ms: u64) -> Result<CryptoPeriod, FeedError> {
        while self.renewals.front().is_some_and(|&t| t <= now_ms) {
            self.renewals.pop_front();
            let engine = self.inner.engine_mut();
            let old = engine.product_generation(PRODUCT)?;
            engine.renew_product_key(PRODUCT)?;
            for &card in &self.renew_for {
                let emm = engine.emm_u_for(card, now_ms / 1000)?;
                self.once
                    .push_back(ts::psi::emm_section(TableId(0x83), &emm)?.into());
            }
            self.old = Some((old, now_ms + self.lead_ms));
        }
        let mut p = self.inner.period(service, now_ms)?;
        let mut generation = self.inner.engine().product_generation(PRODUCT)?;
        if let Some((old, until)) = self.old {
            if now_ms < until {
                // The cards may not have the new key yet: seal this
                // period's ECM under the old one.
                generation = old;
                let time = p.epoch * self.inner.period_ms() / 1000;
                let header = EcmHeader {
                    product: PRODUCT,
                    generation,
                    epoch: p.epoch,
                    service,
                };
                let ecm = self.inner.engine_mut().seal_ecm(header, &p.cws, time, 0)?;
                p.ecm_section = ts::psi::ecm_section(p.parity(), &ecm.to_bytes())?.into();
            }
        }
        if self.generations_used.last() != Some(&generation) {
            self.generations_used.push(generation);
        }
        if self.last_epoch != Some(p.epoch) {
            self.last_epoch = Some(p.epoch);
            for cw in [&p.cws.even, &p.cws.odd] {
                if !self.cws.contains(cw) {
                    self.cws.push(cw.clone());
                }
            }
        }
        Ok(p)
    }

    fn emm_sections(&mut self, now_ms: u64, max_bytes: usize) -> Vec<Arc<[u8]>> {
        while self.scheduled.front().is_some_and(|(t, _)| *t <= now_ms) {
            if let Some((_, s)) = self.scheduled.pop_front() {
                self.once.push_back(s);
            }
        }
        let mut out = Vec::new();
        let mut used = 0;
        while let Some(s) = self.once.front() {
            if used + s.len() > max_bytes {
                return out;
            }
            used += s.len();
            out.extend(self.once.pop_front());
        }
        out.extend(self.inner.emm_sections(now_ms, max_bytes - used));
        out
    }
}

/// Scrambles a clear TS with the headend's stream engine.
pub fn scramble(
    clear: &[u8],
    feed: TestFeed,
    start_ms: u64,
    emm_bitrate: u64,
) -> (Vec<u8>, TestFeed) {
    scramble_services(clear, feed, start_ms, emm_bitrate, &[(SERVICE, ECM_PID)])
}

/// Scrambles the given (service, ECM PID) pairs.
pub fn scramble_services(
    clear: &[u8],
    feed: TestFeed,
    start_ms: u64,
    emm_bitrate: u64,
    services: &[(u16, u16)],
) -> (Vec<u8>, TestFeed) {
    let mut cfg = ChannelStreamConfig::new("test", "-", "-", EMM_PID);
    for &(s, pid) in services {
        cfg = cfg.service(s, pid);
    }
    cfg.start_unix_ms = Some(start_ms);
    cfg.emm_bitrate = emm_bitrate;
    let (out, stats, feed) = process_buffer(&cfg, feed, clear, start_ms).unwrap();
    assert_eq!(stats.dropped_no_cw, 0, "{stats:?}");
    (out, feed)
}

// ----------------------------------------------------------- in-process card

/// What the test does to the card behind the receiver's back.
#[derive(Debug, Default)]
pub struct Faults {
    /// Transmit numbers (from 0) at which the card is pulled out.
    pub remove_at: Vec<usize>,
    /// Transmit numbers at which the card is reset (a warm reset that the
    /// transport reports).
    pub reset_at: Vec<usize>,
    /// Connection attempts that fail after a removal before the card is
    /// back in.
    pub absent_for: usize,
    /// How long each command takes, as on a real card behind a slow
    /// reader.
    pub delay: Duration,
    absent: usize,
    transmits: usize,
    pub removals: usize,
    pub resets: usize,
}

/// An in-process card the test keeps a handle on: recording, with faults.
#[derive(Debug, Clone)]
pub struct SharedCard {
    pub card: Arc<Mutex<InProcessCard<MemEeprom>>>,
    pub faults: Arc<Mutex<Faults>>,
}

impl SharedCard {
    pub fn new(applet: Applet<MemEeprom>) -> Self {
        SharedCard {
            card: Arc::new(Mutex::new(InProcessCard::new(applet).recording())),
            faults: Arc::default(),
        }
    }

    /// Every command and response that crossed the link.
    pub fn log(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.card.lock().unwrap().log.clone().unwrap_or_default()
    }
}

impl CardTransport for SharedCard {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, TransportError> {
        let mut f = self.faults.lock().unwrap();
        if f.absent > 0 {
            return Err(TransportError::NoCard);
        }
        let n = f.transmits;
        f.transmits += 1;
        if f.remove_at.contains(&n) {
            f.absent = f.absent_for;
            f.removals += 1;
            // Out and back in: the card loses its RAM (the session).
            self.card.lock().unwrap().applet.reset();
            return Err(TransportError::CardRemoved);
        }
        if f.reset_at.contains(&n) {
            f.resets += 1;
            self.card.lock().unwrap().applet.reset();
            return Err(TransportError::CardReset);
        }
        let delay = f.delay;
        drop(f);
        std::thread::sleep(delay);
        self.card.lock().unwrap().transmit(apdu)
    }

    fn reconnect(&mut self) -> Result<(), TransportError> {
        let mut f = self.faults.lock().unwrap();
        if f.absent > 0 {
            f.absent -= 1;
            return Err(TransportError::NoCard);
        }
        Ok(())
    }
}

impl CardConnector for SharedCard {
    fn connect(
        &mut self,
        _wait: Duration,
    ) -> Result<Box<dyn CardTransport + Send>, TransportError> {
        let mut f = self.faults.lock().unwrap();
        if f.absent > 0 {
            f.absent -= 1;
            return Err(TransportError::NoCard);
        }
        Ok(Box::new(self.clone()))
    }

    fn describe(&self) -> String {
        "in-process test card".into()
    }
}

/// Logs to the test's output with RUST_LOG (e.g. RUST_LOG=receiver=debug).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// Runs a stream through a pipeline on `card`, in reads of `chunk` bytes.
pub fn receive(
    card: SharedCard,
    identity: &X25519Secret,
    input: &[u8],
    opts: PipelineOptions,
    chunk: usize,
) -> (Vec<u8>, Result<(), Failure>, Stats) {
    logs();
    let link = match CardLink::open(Box::new(card), identity.clone(), LinkOptions::default()) {
        Ok(l) => l,
        Err(e) => return (Vec::new(), Err(e.into()), Stats::default()),
    };
    let mut p = Pipeline::new(link, opts);
    let mut out = Vec::new();
    for c in input.chunks(chunk.max(1)) {
        if let Err(e) = p.push(c, &mut out) {
            return (out, Err(e), p.stats());
        }
    }
    let r = p.finish(&mut out);
    (out, r, p.stats())
}
