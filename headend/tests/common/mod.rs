//! Shared helpers for the daemon tests: a real `headend` process on a
//! loopback port with its files in a temporary folder, a small HTTP
//! client, in-process cards, and a section collector.
#![allow(dead_code)]

use card::eeprom::MemEeprom;
use card::Applet;
use cardlink::{CardClient, InProcessCard};
use headend::OperatorPublic;
use proto::crypto::X25519Secret;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A headend's folder and, while it runs, its process.
pub struct Headend {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub token: String,
    pub child: Option<Child>,
    pub agent: ureq::Agent,
}

impl Headend {
    /// `headend init` with the given timing.
    pub fn init(period_ms: u64, cycle_ms: u64) -> Headend {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let out = Command::new(BIN)
            .args(["init", "--dir"])
            .arg(dir.path().join("h"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--crypto-period-ms", &period_ms.to_string()])
            .args(["--emm-cycle-ms", &cycle_ms.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let token = std::fs::read_to_string(dir.path().join("h/admin.token"))
            .unwrap()
            .trim()
            .to_string();
        Headend {
            dir,
            port,
            token,
            child: None,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build(),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("h")
    }

    pub fn config(&self) -> PathBuf {
        self.home().join("headend.toml")
    }

    pub fn operator(&self) -> OperatorPublic {
        serde_json::from_str(&std::fs::read_to_string(self.home().join("operator.json")).unwrap())
            .unwrap()
    }

    /// Starts the daemon and waits until it answers `/live` (`/ready`
    /// waits for every channel to be on the air).
    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home().join("daemon.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(self.config())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.agent.get(&self.url("/live")).call() {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited at start: {st}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home().join("daemon.log")).unwrap_or_default()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let st = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A request with the token; returns the status and the JSON body, for
    /// errors too. A transport error (daemon gone) is `None`.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
        let req = self
            .agent
            .request(method, &self.url(path))
            .set("Authorization", &format!("Bearer {}", self.token));
        let r = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let resp = match r {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(ureq::Error::Transport(_)) => return None,
        };
        let status = resp.status();
        let text = resp.into_string().ok()?;
        Some((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub fn get(&self, path: &str) -> Value {
        let (st, v) = self.request("GET", path, None).expect("daemon answers");
        assert_eq!(st, 200, "GET {path}: {v}");
        v
    }

    pub fn post(&self, path: &str, body: Value) -> Value {
        let (st, v) = self
            .request("POST", path, Some(&body))
            .expect("daemon answers");
        assert!((200..300).contains(&st), "POST {path} {body}: {st} {v}");
        v
    }
}

impl Drop for Headend {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
        json!({"card_id": id, "public_key": hex::encode(public), "operator_id": h.operator().operator_id}),
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

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// A free UDP port on loopback (bound, then released).
pub fn free_udp_addr() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
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
