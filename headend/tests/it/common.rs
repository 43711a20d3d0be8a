//! Shared helpers for the daemon tests: the real `headend` process (a
//! `testkit::Headend`), in-process cards, a section collector and a UDP
//! encoder.
#![allow(dead_code)]

use card::eeprom::MemEeprom;
use card::Applet;
use cardlink::{CardClient, InProcessCard};
use headend_engine::OperatorPublic;
use proto::crypto::X25519Secret;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
pub use testkit::process::wait_for;
pub use testkit::{free_udp_addr, Headend};

pub const BIN: &str = env!("CARGO_BIN_EXE_headend");

/// A deterministic, seedable generator (xorshift64*).
pub struct Rng(u64);
impl Rng {
    pub fn from_env() -> Rng {
        let seed = std::env::var("IODOFORM_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("seed: IODOFORM_TEST_SEED={seed}");
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The operator's public keys, from the headend's `operator.json`.
pub fn operator(h: &Headend) -> OperatorPublic {
    let path = h.home().join("operator.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub type Card = CardClient<InProcessCard<MemEeprom>>;

/// A blank in-process card, personalized for the operator and locked, with
/// a session open (it stays "powered" for the whole test).
pub fn new_card(op: &OperatorPublic, id: u32) -> (Card, [u8; 32]) {
    let mut card = CardClient::new(InProcessCard::new(
        Applet::power_on(MemEeprom::default()).unwrap(),
    ));
    card.select().unwrap();
    let public = card.personalize(&op.personalization(id)).unwrap();
    card.lock().unwrap();
    let rx = X25519Secret::random();
    let info = card.info().unwrap();
    card.establish_session(&rx, &info).unwrap();
    (card, public)
}

pub fn register(h: &Headend, id: u32, public: &[u8; 32]) {
    h.post(
        "/api/v1/cards",
        json!({"card_id": id, "public_key": hex::encode(public), "operator_id": operator(h).operator_id}),
    );
}

/// New ECM sections and new EMM sections.
pub type NewSections = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// What the debug endpoint showed: ECM sections and EMM sections in order.
#[derive(Debug, Default)]
pub struct Sections {
    pub run: u64,
    pub cursor: u64,
    /// ECMs as (header bytes, section), in the order first seen.
    pub ecms: Vec<(Vec<u8>, Vec<u8>)>,
    pub emms: Vec<Vec<u8>>,
    /// ECMs that a later run put on the air again, byte for byte.
    pub repeated_across_runs: usize,
    seen_in_run: std::collections::HashMap<Vec<u8>, u64>,
}

impl Sections {
    /// Polls the debug endpoint once; returns the new ECMs and EMMs.
    pub fn poll(&mut self, h: &Headend) -> Option<NewSections> {
        let (st, v) = h.request(
            "GET",
            &format!("/api/v1/debug/sections?since={}", self.cursor),
            None,
        )?;
        if st != 200 {
            return None;
        }
        let run = v["run"].as_u64().unwrap();
        if run != self.run {
            // A new daemon run: its EMM log starts again at 0.
            self.run = run;
            self.cursor = 0;
            return self.poll(h);
        }
        let mut new_ecms = Vec::new();
        for e in v["ecms"].as_array().unwrap() {
            let s = hex::decode(e["section"].as_str().unwrap()).unwrap();
            let header = s[3..3 + proto::ecm::ECM_HEADER_LEN].to_vec();
            let first_run = *self.seen_in_run.entry(s.clone()).or_insert(run);
            if first_run != run {
                self.repeated_across_runs += 1;
                self.seen_in_run.insert(s.clone(), run);
            }
            if !self.ecms.iter().any(|(h, b)| *h == header && *b == s) {
                self.ecms.push((header, s.clone()));
                new_ecms.push(s);
            }
        }
        let mut new_emms = Vec::new();
        for e in v["emms"]["sections"].as_array().unwrap() {
            let s = hex::decode(e.as_str().unwrap()).unwrap();
            self.emms.push(s.clone());
            new_emms.push(s);
        }
        self.cursor = v["emms"]["next"].as_u64().unwrap();
        Some((new_ecms, new_emms))
    }
}

/// The EMM inside an EMM section, and its address and sequence number.
pub fn emm_of(section: &[u8]) -> (u32, u64, &[u8]) {
    let p = ts::psi::PrivateSection::parse(section).unwrap();
    assert!(p.table_id.is_emm());
    let emm = p.payload;
    let addr = u32::from_be_bytes(emm[2..6].try_into().unwrap());
    let seq = u64::from_be_bytes(emm[6..14].try_into().unwrap());
    (addr, seq, emm)
}

/// The ECM inside an ECM section, and its header.
pub fn ecm_of(section: &[u8]) -> (proto::ecm::EcmHeader, &[u8]) {
    let p = ts::psi::PrivateSection::parse(section).unwrap();
    assert!(p.table_id.is_ecm());
    let h =
        <proto::ecm::EcmHeader as proto::Codec>::read(&mut proto::Reader::new(p.payload)).unwrap();
    (h, p.payload)
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Feeds a card the EMMs addressed to it; returns how many it accepted.
pub fn feed_emms(card: &mut Card, id: u32, emms: &[Vec<u8>]) -> usize {
    let mut n = 0;
    for s in emms {
        let (addr, seq, emm) = emm_of(s);
        if addr == id || addr == proto::emm::GLOBAL_ADDRESS {
            match card.process_emm(emm) {
                Ok(()) => n += 1,
                Err(e) => panic!("card {id} refused EMM seq {seq} (address {addr:#x}): {e}"),
            }
        }
    }
    n
}

pub fn plan_subscription(card: u32, product: impl Into<Value>, until: &str) -> Value {
    json!({"card_id": card, "product": product.into(), "until": until})
}

/// An encoder: sends a TS again and again to a UDP port at about `secs`
/// per pass, 7 packets a datagram, until stopped or dropped.
pub struct UdpEncoder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpEncoder {
    pub fn start(ts: Vec<u8>, secs: f64, to: std::net::SocketAddr) -> UdpEncoder {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let per_sec = ts.len() as f64 / secs;
                let t0 = Instant::now();
                let mut sent = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    for d in ts.chunks(7 * 188) {
                        let due = t0 + Duration::from_secs_f64(sent as f64 / per_sec);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        let _ = sock.send_to(d, to);
                        sent += d.len();
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                }
            })
        };
        UdpEncoder {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sending; returns once the last datagram is out.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UdpEncoder {
    fn drop(&mut self) {
        self.halt();
    }
}
