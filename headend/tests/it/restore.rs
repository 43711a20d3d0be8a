//! `headend backup` and `headend restore` through the real binary: a
//! backup taken through the admin API while the daemon streams, the
//! daemon run on past it, stopped, the backup restored and the daemon
//! started again inside the crypto period of its last ECM. Every ECM on
//! the air (the daemon's UDP output, parsed with `ts::psi` and
//! `proto::ecm`) is captured across both runs: no 21-byte header may come
//! with two different bodies.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ts::packet::{Packet, PacketReader};
use ts::psi::{PrivateSection, SectionAssembler};

const PERIOD_MS: u64 = 3000;
const ECM_PID: u16 = 0x1F0;

/// The ECMs seen on the air: header → bodies, and the epochs in order.
#[derive(Default)]
struct Seen {
    bodies: HashMap<Vec<u8>, BTreeSet<Vec<u8>>>,
    epochs: Vec<u64>,
}

/// Reads the daemon's UDP output until stopped and keeps every ECM.
fn capture(rx: UdpSocket, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut reader = PacketReader::new();
    let mut asm = SectionAssembler::default();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = rx.recv(&mut buf) else { continue };
        reader.push(&buf[..n]);
        while let Some(p) = reader.next_packet() {
            let v = Packet::from_array(p).unwrap();
            if v.pid() != ECM_PID {
                continue;
            }
            for s in asm.push(&v).into_iter().flatten() {
                let sec = PrivateSection::parse(&s).expect("an ECM section");
                assert!(sec.table_id.is_ecm());
                let ecm = sec.payload;
                let header =
                    <proto::ecm::EcmHeader as proto::Codec>::read(&mut proto::Reader::new(ecm))
                        .expect("an ECM header");
                let (h, body) = ecm.split_at(proto::ecm::ECM_HEADER_LEN);
                let mut seen = seen.lock().unwrap();
                if seen.epochs.last() != Some(&header.epoch) {
                    seen.epochs.push(header.epoch);
                }
                seen.bodies
                    .entry(h.to_vec())
                    .or_default()
                    .insert(body.to_vec());
            }
        }
    }
}

fn epoch_now() -> u64 {
    headend::daemon::now_ms() / PERIOD_MS
}

#[test]
fn a_restore_inside_the_crypto_period_never_seals_an_ecm_header_twice() {
    let Some(clear) = testkit::ffmpeg::ffmpeg_ts(4) else {
        return;
    };
    let mut h = Headend::init(BIN, PERIOD_MS, Some(4000));
    std::fs::write(h.home().join("clip.ts"), &clear).unwrap();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = std::fs::read_to_string(h.config()).unwrap();
    cfg.push_str(&format!(
        "\n[[channels]]\nname = \"one\"\nservice_id = 1\nproduct = \"basic\"\n\
         ecm_pid = {ECM_PID}\nemm_pid = 0x1F1\ninput = \"clip.ts?loop\"\n\
         output = \"udp://{}\"\n",
        rx.local_addr().unwrap()
    ));
    std::fs::write(h.config(), cfg).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let capturer = {
        let (seen, stop) = (seen.clone(), stop.clone());
        std::thread::spawn(move || capture(rx, seen, stop))
    };
    h.start();
    let epochs = |s: &Arc<Mutex<Seen>>| s.lock().unwrap().epochs.clone();
    wait_for("the first ECM on the air", Duration::from_secs(15), || {
        !epochs(&seen).is_empty()
    });

    // The backup, through the API while the daemon streams.
    let backup = h.home().join("backup").join("b.db");
    std::fs::create_dir(backup.parent().unwrap()).unwrap();
    let b = backup.to_str().unwrap();
    let out = h.cli(&["backup", b]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("the running headend wrote it"), "{said}");
    let backup_epoch = epoch_now();
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Not over an existing file without --force (exit 73, the fix named).
    let again = Command::new(BIN)
        .args(["backup", b, "--config"])
        .arg(h.config())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(i32::from(cli::exit::CANT_CREATE)));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    // No restore while the daemon runs (exit 75, the fix named).
    let busy = Command::new(BIN)
        .args(["restore", b, "--config"])
        .arg(h.config())
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(i32::from(cli::exit::TEMP_FAIL)));
    assert!(String::from_utf8_lossy(&busy.stderr).contains("stop it first"));

    // Run on into the next crypto period: its ECM is sealed after the
    // backup, so the backup does not have it. Right after it starts:
    // stop, restore, start, all inside that period.
    wait_for(
        "an ECM sealed after the backup",
        Duration::from_secs(3 * PERIOD_MS / 1000 + 5),
        || epochs(&seen).last().is_some_and(|&e| e > backup_epoch),
    );
    let last_old = *epochs(&seen).last().unwrap();
    let old_ecms = seen.lock().unwrap().bodies.len();
    h.stop();
    let out = h.cli(&["restore", b]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("restored") && said.contains("two crypto periods"),
        "{said}"
    );
    let started = Instant::now();
    h.start();
    let status = h.get("/api/v1/status");
    let fresh_from = status["ecms_fresh_from_epoch"]
        .as_u64()
        .unwrap_or_else(|| panic!("no fresh epoch after a restore: {status}"));
    assert_eq!(
        fresh_from - 2,
        last_old,
        "the restarted daemon is not in the period of the old one's last ECM \
         (started {:?} after the restore); the test needs it",
        started.elapsed()
    );

    // The new run: nothing until the fresh epoch, then ECMs again.
    wait_for(
        "an ECM of the restored daemon",
        Duration::from_secs(4 * PERIOD_MS / 1000 + 5),
        || epochs(&seen).last().is_some_and(|&e| e >= fresh_from),
    );
    std::thread::sleep(Duration::from_millis(500));
    let status = h.get("/api/v1/status");
    h.stop();
    stop.store(true, Ordering::Relaxed);
    capturer.join().unwrap();

    let seen = seen.lock().unwrap();
    let twice: BTreeMap<String, usize> = seen
        .bodies
        .iter()
        .filter(|(_, b)| b.len() > 1)
        .map(|(h, b)| (hex::encode(h), b.len()))
        .collect();
    assert!(
        twice.is_empty(),
        "ECM headers sealed with different bodies: {twice:?}"
    );
    assert!(
        seen.bodies.len() > old_ecms,
        "the restored daemon sealed ECMs"
    );
    // Between the old run's last epoch and the fresh one, nothing new.
    let new_epochs: Vec<u64> = seen
        .epochs
        .iter()
        .copied()
        .skip_while(|&e| e <= last_old)
        .collect();
    assert!(
        new_epochs.iter().all(|&e| e >= fresh_from),
        "epochs after the restore: {new_epochs:?}, fresh from {fresh_from}"
    );
    // Every product key was renewed, and said so.
    let r = &status["restored"];
    assert!(r["backup_taken"].is_string(), "{status}");
    assert_eq!(r["renewed"].as_array().map(Vec::len), Some(1), "{status}");
    let log = h.log();
    assert!(
        log.contains("running on a database restored from a backup taken at"),
        "{log}"
    );
    assert!(log.contains("no ECM is sealed fresh before epoch"));
}

const CARD: u32 = 1001;

/// Feeds the in-process card what the air carries for `dur`. Returns the
/// control words it got, and the ECMs it refused after it had accepted an
/// EMM of this run of the daemon (generation, error).
fn watch(
    h: &Headend,
    card: &mut Card,
    s: &mut Sections,
    dur: Duration,
    had_emm: &mut bool,
) -> (usize, Vec<(u32, String)>) {
    let end = Instant::now() + dur;
    let (mut cws, mut refused) = (0, Vec::new());
    while Instant::now() < end {
        if let Some((ecms, emms)) = s.poll(h) {
            if feed_emms(card, CARD, &emms) > 0 {
                *had_emm = true;
            }
            for e in &ecms {
                let (header, ecm) = ecm_of(e);
                match card.process_ecm(ecm) {
                    Ok(_) => cws += 1,
                    Err(err) if *had_emm => refused.push((header.generation, err.to_string())),
                    Err(_) => {}
                }
            }
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    (cws, refused)
}

/// Waits until the product's newest generation is the one ECMs use,
/// feeding the card meanwhile; returns that generation.
fn until_active(
    h: &Headend,
    card: &mut Card,
    s: &mut Sections,
    had_emm: &mut bool,
) -> (u64, Vec<(u32, String)>) {
    let mut all = Vec::new();
    for _ in 0..60 {
        let (_, refused) = watch(h, card, s, Duration::from_millis(500), had_emm);
        all.extend(refused);
        let p = &h.get("/api/v1/status")["products"][0];
        if p["renewal"].is_null() && p["generation"] == p["active_generation"] {
            return (p["generation"].as_u64().unwrap(), all);
        }
    }
    panic!("the renewal never activated: {}", h.get("/api/v1/status"));
}

/// A backup two generations old put back: the restored database knows an
/// older active generation than the card's, and renews every product at
/// start. The card is given the restored active key in its next EMM-U
/// and keeps it beside its own, so it keeps getting control words: from
/// the restored generation, then from the renewed one, with no refusal
/// once it has had an EMM-U of the restored run.
#[test]
fn a_backup_two_generations_old_restored_keeps_the_cards_getting_cws() {
    const PERIOD: u64 = 1000;
    let mut h = Headend::init(BIN, PERIOD, Some(1000));
    h.start();
    let op = operator(&h);
    h.post(
        "/api/v1/products",
        serde_json::json!({"name": "sports", "id": 1}),
    );
    h.post(
        "/api/v1/channels",
        serde_json::json!({"name": "sport1", "service_id": 0x101, "product": 1, "ecm_pid": 0x201, "emm_pid": 0x202}),
    );
    let (mut card, public) = new_card(&op, CARD);
    register(&h, CARD, &public);
    h.post(
        "/api/v1/subscriptions",
        plan_subscription(CARD, 1, "2099-12-31"),
    );
    let mut s = Sections::default();
    let mut had_emm = false;
    let (cws, _) = watch(&h, &mut card, &mut s, Duration::from_secs(4), &mut had_emm);
    assert!(cws > 0, "no control word before the backup");

    let backup = h.home().join("b.db");
    let b = backup.to_str().unwrap();
    let out = h.cli(&["backup", b]);
    assert!(out.status.success(), "{out:?}");
    let g_backup = h.get("/api/v1/status")["products"][0]["active_generation"]
        .as_u64()
        .unwrap();
    let mut refused = Vec::new();
    let mut generations = vec![g_backup];
    for _ in 0..2 {
        h.post("/api/v1/rotate", serde_json::json!({"product": 1}));
        let (g, r) = until_active(&h, &mut card, &mut s, &mut had_emm);
        generations.push(g);
        refused.extend(r);
    }
    assert!(
        refused.is_empty(),
        "refused before the restore: {refused:?}"
    );
    assert!(
        generations.windows(2).all(|w| w[0] < w[1]),
        "{generations:?}"
    );

    h.stop();
    let out = h.cli(&["restore", b]);
    assert!(out.status.success(), "{out:?}");
    h.start();
    had_emm = false;
    let (cws, refused) = watch(&h, &mut card, &mut s, Duration::from_secs(6), &mut had_emm);
    let status = h.get("/api/v1/status");
    assert!(had_emm, "no EMM-U from the restored headend: {status}");
    assert!(
        refused.is_empty(),
        "refused after the restore: {refused:?}\n{status}"
    );
    assert!(cws > 0, "no control word after the restore: {status}");
    // The renewal the restore started activates, numbered above every
    // generation the card ever had, and the card follows it.
    let (g, refused) = until_active(&h, &mut card, &mut s, &mut had_emm);
    assert!(refused.is_empty(), "refused after the renewal: {refused:?}");
    assert!(g > generations[2], "generation {g} after {generations:?}");
    let (cws, refused) = watch(&h, &mut card, &mut s, Duration::from_secs(2), &mut had_emm);
    assert!(cws > 0 && refused.is_empty(), "{cws} {refused:?}");
}
