//! `smartcard provision` and `smartcard info`, run as the factory and the
//! support desk run them: the real binary, against cards that
//! `smartcard emulate` plugs into the system's pcscd.
//!
//! Without pcscd these tests fail under `CI=true` and are skipped, with a
//! message, otherwise (see `testkit::vpcd`). The command-line checks that need
//! no card run everywhere.

use card::eeprom::FileEeprom;
use card::Applet;
use cardlink::{CardClient, InProcessCard};
use proto::card::{CardInfo, LifeCycle};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use testkit::operator::{Operator, DAY, PRODUCT, T0};
use testkit::vpcd::{self, pcscd_or_skip};
use testkit::Emulator;

const BIN: &str = env!("CARGO_BIN_EXE_smartcard");

/// The operator's public info, as `headend init` writes it.
fn operator_file(dir: &Path, op: &Operator) -> PathBuf {
    let p = dir.join("operator.json");
    let v = json!({
        "operator_id": 1,
        "x25519": hex::encode(op.kex.public()),
        "ed25519": hex::encode(op.sig.public()),
    });
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    p
}

fn smartcard(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("IODOFORM_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

fn run(args: &[&str]) -> Output {
    smartcard(args).output().expect("run smartcard")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure with exit `code` and exactly one line on stderr containing
/// `want`.
fn assert_fails(o: &Output, code: i32, want: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line wanted: {err}");
    assert!(err.contains(want), "{want:?} not in: {err}");
}

/// GET INFO of the emulated card, through pcscd.
fn card_info(emu: &Emulator) -> CardInfo {
    let mut c = emu.connect();
    c.select().unwrap();
    c.info().unwrap()
}

/// GET INFO of a card whose emulator is gone, from its state file.
fn info_from_state(state: &Path) -> CardInfo {
    let applet = Applet::power_on(FileEeprom::open(state).unwrap()).unwrap();
    let mut c = CardClient::new(InProcessCard::new(applet));
    c.select().unwrap();
    c.info().unwrap()
}

/// Unix seconds as RFC 3339 UTC, as `info --json` prints them.
fn utc(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn record(v: &Value) -> (u64, String, u64) {
    (
        v["card_id"].as_u64().expect("card_id"),
        v["public_key"].as_str().expect("public_key").to_string(),
        v["operator_id"].as_u64().expect("operator_id"),
    )
}

#[test]
fn provision_a_blank_card_once_and_show_it() {
    if !pcscd_or_skip("provision_a_blank_card_once_and_show_it") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut op = Operator::new();
    let opfile = operator_file(dir.path(), &op);
    let slot = vpcd::slot();
    let emu = Emulator::start(crate::SMARTCARD, &slot, &dir.path().join("card.img"));
    let opfile = opfile.to_str().unwrap();

    let out = run(&[
        "provision",
        "--operator",
        opfile,
        "--card-id",
        "1000",
        "--reader",
        slot.reader,
    ]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), emu.log());
    let rec: Value = serde_json::from_slice(&out.stdout).expect("one JSON record");
    let info = card_info(&emu);
    assert_eq!(
        record(&rec),
        (1000, hex::encode(info.public_key), 1),
        "the record is what the card says"
    );
    assert_eq!(info.state, LifeCycle::LOCKED);
    assert_eq!(info.card_id, 1000);
    assert_eq!(info.operator_kex, op.kex.public());
    assert_eq!(info.operator_sig, op.sig.public());

    // Again: refused, with the card left as it is.
    let again = run(&[
        "provision",
        "--operator",
        opfile,
        "--card-id",
        "1001",
        "--reader",
        slot.reader,
    ]);
    assert_fails(&again, 1, "already provisioned and locked (card id 1000)");
    assert!(again.stdout.is_empty());
    assert_eq!(card_info(&emu), info);

    // Entitle it, then ask `info` for it, in JSON and as a table.
    let emm = op.emm_u(
        1000,
        &info.public_key,
        T0 + 5,
        vec![op.entitle(T0, T0 + 30 * DAY)],
    );
    let mut c = emu.connect();
    c.select().unwrap();
    c.process_emm(&emm).unwrap();
    drop(c);
    let out = run(&["info", "--json", "--reader", slot.reader]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["card_id"], 1000);
    assert_eq!(v["state"], "locked");
    assert_eq!(v["public_key"], rec["public_key"]);
    assert_eq!(v["operator_id"], 1);
    assert_eq!(v["reader"], slot.reader);
    assert_eq!(v["clock"], utc(T0 + 5));
    assert_eq!(v["clock_unix"], T0 + 5);
    assert_eq!(v["emm_u_seq"], 1);
    assert_eq!(v["emm_g_seq"], 0);
    assert_eq!(v["paired_receiver"], Value::Null);
    assert_eq!(
        v["entitlements"],
        json!([{
            "product": PRODUCT,
            "generation": 1,
            "start": utc(T0),
            "end": utc(T0 + 30 * DAY),
            "start_unix": T0,
            "end_unix": T0 + 30 * DAY,
        }])
    );
    let out = run(&["info", "--reader", slot.reader]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    let human = |t| utc(t).replace('T', " ").replace('Z', " UTC");
    for want in [
        "card id         1000".to_string(),
        "state           locked".to_string(),
        format!("clock           {}", human(T0 + 5)),
        "entitlements    1".to_string(),
        human(T0 + 30 * DAY),
    ] {
        assert!(table.contains(&want), "{want:?} not in:\n{table}");
    }
}

#[test]
fn missing_reader_and_missing_card() {
    if !pcscd_or_skip("missing_reader_and_missing_card") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opfile = operator_file(dir.path(), &Operator::new());
    let opfile = opfile.to_str().unwrap();
    let base = ["provision", "--operator", opfile, "--card-id", "7"];

    let t = Instant::now();
    let out = run(&[&base[..], &["--reader", "No Such Reader"]].concat());
    assert_fails(&out, 4, "reader \"No Such Reader\" not found; readers: ");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "no waiting for a typo"
    );
    let out = run(&["info", "--reader", "No Such Reader"]);
    assert_fails(&out, 4, "reader \"No Such Reader\" not found");

    // An empty slot: no card comes within the timeout.
    let slot = vpcd::slot();
    let out = run(&[&base[..], &["--reader", slot.reader, "--timeout", "0.5"]].concat());
    assert_fails(
        &out,
        4,
        &format!("no card in reader {:?} within 0.5 s", slot.reader),
    );
    assert!(out.stdout.is_empty());
    // A batch that did no card leaves no --out file behind.
    let cards = dir.path().join("cards.json");
    let batch = [
        "--reader",
        slot.reader,
        "--timeout",
        "0.5",
        "--count",
        "3",
        "--out",
        cards.to_str().unwrap(),
    ];
    let out = run(&[&base[..], &batch[..]].concat());
    assert_eq!(out.status.code(), Some(4));
    // Batch mode prompts on stderr; the error is the last line.
    let err = stderr(&out);
    assert!(
        err.lines().last().unwrap().contains("no card in reader"),
        "{err}"
    );
    assert!(!cards.exists());
    let out = run(&["info", "--reader", slot.reader]);
    assert_fails(&out, 4, "no card in reader");
}

/// Needs no pcscd: all of these are refused before any card is looked for.
#[test]
fn bad_command_lines_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let opfile = operator_file(dir.path(), &Operator::new());
    let opfile = opfile.to_str().unwrap();
    let missing = dir.path().join("missing.json");
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"operator_id\": 1}").unwrap();

    // `provision --operator OPERATOR --card-id ID` and more, refused
    // with exit 64 and the message given.
    let provision = |operator: &str, card_id: &str, more: &[&str], why: &str| {
        let mut args = vec!["provision", "--operator", operator, "--card-id", card_id];
        args.extend_from_slice(more);
        assert_fails(&run(&args), 64, why);
    };
    provision(
        missing.to_str().unwrap(),
        "1",
        &[],
        "cannot read operator file",
    );
    provision(
        junk.to_str().unwrap(),
        "1",
        &[],
        "is not the operator's public info",
    );
    provision(opfile, "0", &[], "0 is not a card id");
    provision(opfile, "4294967294", &["--count", "2"], "address of EMM-Gs");
    provision(
        opfile,
        "1",
        &["--register", "http://127.0.0.1:9"],
        "needs the admin token",
    );
    provision(opfile, "1", &["--out", opfile], "the file exists");
    // clap's own refusals exit 64 as well.
    let out = run(&[
        "provision",
        "--operator",
        opfile,
        "--card-id",
        "1",
        "--jsonl",
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let out = run(&["provision", "--card-id", "1"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}

/// Needs no pcscd, and stops none: libpcsclite is pointed at a socket
/// where no pcscd listens.
#[test]
fn no_pcscd_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let opfile = operator_file(dir.path(), &Operator::new());
    let nowhere = dir.path().join("no-pcscd.comm");
    for args in [
        &[
            "provision",
            "--operator",
            opfile.to_str().unwrap(),
            "--card-id",
            "1",
        ][..],
        &["info"][..],
        &["readers"][..],
    ] {
        let out = smartcard(args)
            .env("PCSCLITE_CSOCK_NAME", &nowhere)
            .output()
            .unwrap();
        assert_fails(&out, 69, "pcscd is not running");
        assert!(stderr(&out).contains("scripts/ensure-pcscd.sh"));
    }
}

/// Two blank cards, one after the other, in one reader: the tool waits
/// for each to be inserted and for the first to be removed. The records
/// go to `--out` as a JSON array.
#[test]
fn batch_of_two_cards_in_one_reader() {
    if !pcscd_or_skip("batch_of_two_cards_in_one_reader") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opfile = operator_file(dir.path(), &Operator::new());
    let out_file = dir.path().join("cards.json");
    let slot = vpcd::slot();
    let states = [dir.path().join("a.img"), dir.path().join("b.img")];

    // The batch starts before any card is in the reader.
    let mut child = smartcard(&[
        "provision",
        "--operator",
        opfile.to_str().unwrap(),
        "--card-id",
        "2000",
        "--count",
        "2",
        "--reader",
        slot.reader,
        "--timeout",
        "20",
        "--out",
        out_file.to_str().unwrap(),
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut wait_line = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(want);
                    seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("no {want:?} from the tool; it said: {seen:#?}"),
            }
        }
    };
    wait_line("card 1 of 2: insert a blank card");
    let mut first = Emulator::start(crate::SMARTCARD, &slot, &states[0]);
    wait_line("remove card 2000");
    first.kill();
    wait_line("card 2 of 2: insert a blank card");
    let second = Emulator::start(crate::SMARTCARD, &slot, &states[1]);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        rest.push_str(&l);
        rest.push('\n');
    }
    assert!(status.success(), "{rest}\n{}", second.log());
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(stdout.is_empty(), "records go to --out: {stdout}");

    let records: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(records.len(), 2);
    let b = card_info(&second);
    drop(second);
    let a = info_from_state(&states[0]);
    for (r, (id, info)) in records.iter().zip([(2000, a), (2001, b)]) {
        assert_eq!(record(r), (id, hex::encode(info.public_key), 1));
        assert_eq!(info.state, LifeCycle::LOCKED);
        assert_eq!(info.card_id, id as u32);
    }
}

/// What a tiny admin API saw of one request.
#[derive(Debug)]
struct Seen {
    request_line: String,
    authorization: Option<String>,
    body: Value,
}

/// Serves exactly one HTTP request on 127.0.0.1 with `status` and
/// `answer`, and reports what it saw.
fn one_request_server(status: &'static str, answer: Value) -> (String, mpsc::Receiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut r = BufReader::new(&stream);
        let mut request_line = String::new();
        r.read_line(&mut request_line).unwrap();
        let mut authorization = None;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (name, value) = h.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(value.trim().to_string()),
                "content-length" => len = value.trim().parse().unwrap(),
                _ => {}
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).unwrap();
        let text = answer.to_string();
        let mut w = &stream;
        write!(
            w,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        )
        .unwrap();
        let _ = tx.send(Seen {
            request_line: request_line.trim_end().to_string(),
            authorization,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
    });
    (url, rx)
}

/// `--register` against a stand-in for the admin API that checks the
/// route, the token and the body; then a headend that refuses the card.
#[test]
fn register_posts_the_record_with_the_token() {
    if !pcscd_or_skip("register_posts_the_record_with_the_token") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let opfile = operator_file(dir.path(), &Operator::new());
    let opfile = opfile.to_str().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "0123456789abcdef\n").unwrap();
    let slot = vpcd::slot();

    let mut emu = Emulator::start(crate::SMARTCARD, &slot, &dir.path().join("a.img"));
    let (url, seen) = one_request_server("201 Created", json!({"card_id": 3000}));
    let out = run(&[
        "provision",
        "--operator",
        opfile,
        "--card-id",
        "3000",
        "--reader",
        slot.reader,
        "--register",
        &format!("{url}/"),
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(got.request_line, "POST /api/v1/cards HTTP/1.1");
    assert_eq!(
        got.authorization.as_deref(),
        Some("Bearer 0123456789abcdef")
    );
    assert_eq!(got.body, rec);
    assert_eq!(
        record(&got.body),
        (3000, hex::encode(card_info(&emu).public_key), 1)
    );
    emu.kill();

    // The token from the environment; the headend says no. The card is
    // locked all the same, so its record is still printed.
    let emu = Emulator::start(crate::SMARTCARD, &slot, &dir.path().join("b.img"));
    let (url, seen) = one_request_server(
        "409 Conflict",
        json!({"error": "card 3001 is already registered (active)"}),
    );
    let out = smartcard(&[
        "provision",
        "--operator",
        opfile,
        "--card-id",
        "3001",
        "--reader",
        slot.reader,
        "--register",
        &url,
    ])
    .env("IODOFORM_TOKEN", "from-the-env")
    .output()
    .unwrap();
    assert_fails(&out, 1, "409: card 3001 is already registered (active)");
    assert!(stderr(&out).contains("card 3001 is provisioned and its record written"));
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record(&rec).0, 3001);
    let got = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(got.authorization.as_deref(), Some("Bearer from-the-env"));
    assert_eq!(card_info(&emu).state, LifeCycle::LOCKED);

    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    drop(emu);
    let _emu = Emulator::start(crate::SMARTCARD, &slot, &dir.path().join("c.img"));
    let out = smartcard(&[
        "provision",
        "--operator",
        opfile,
        "--card-id",
        "3002",
        "--reader",
        slot.reader,
        "--register",
        &dead,
    ])
    .env("IODOFORM_TOKEN", "t")
    .output()
    .unwrap();
    assert_fails(&out, 69, "cannot reach the headend at");
}

/// The `headend` binary, when the workspace build made it (as
/// `cargo test --workspace` does).
fn headend_bin() -> Option<PathBuf> {
    let p = Path::new(BIN).with_file_name("headend");
    p.is_file().then_some(p)
}

/// `--register` against the real daemon: `headend init`, `headend run`,
/// then the card shows up in the daemon's card list with its key.
#[test]
fn register_with_the_real_headend() {
    let Some(headend) = headend_bin() else {
        let msg =
            "the headend binary is not built next to smartcard (run `cargo test --workspace`)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("register_with_the_real_headend: {msg}");
        }
        eprintln!("SKIPPED register_with_the_real_headend: {msg}");
        return;
    };
    if !pcscd_or_skip("register_with_the_real_headend") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let init = Command::new(&headend)
        .args(["init", "--dir"])
        .arg(&home)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let daemon = Command::new(&headend)
        .args(["run", "--config"])
        .arg(home.join("headend.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _daemon = Kill(daemon);
    let daemon_log = || std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get(&format!("{url}/ready")).call().is_err() {
        assert!(
            Instant::now() < deadline,
            "daemon not ready:\n{}",
            daemon_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let slot = vpcd::slot();
    let emu = Emulator::start(crate::SMARTCARD, &slot, &dir.path().join("card.img"));
    let token = home.join("admin.token");
    let out = run(&[
        "provision",
        "--operator",
        home.join("operator.json").to_str().unwrap(),
        "--card-id",
        "4000",
        "--reader",
        slot.reader,
        "--register",
        &url,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}\ndaemon:\n{}",
        stderr(&out),
        daemon_log()
    );
    let rec: Value = serde_json::from_slice(&out.stdout).unwrap();
    let public = hex::encode(card_info(&emu).public_key);
    assert_eq!(record(&rec), (4000, public.clone(), 1));
    let tok = std::fs::read_to_string(&token).unwrap();
    let card: Value = ureq::get(&format!("{url}/api/v1/cards/4000"))
        .set("Authorization", &format!("Bearer {}", tok.trim()))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(card["card_id"], 4000);
    assert_eq!(card["public_key"], public);
    assert_eq!(card["operator_id"], 1);
    // The registration's answer carried the card's Subset Difference
    // labels, and the tool gave them to the card: every one of them is in
    // its stored state.
    let mut emu = emu;
    emu.kill();
    let image = FileEeprom::open(&dir.path().join("card.img")).unwrap();
    let applet = Applet::power_on(image).unwrap();
    let sd = applet
        .state()
        .sd
        .as_ref()
        .expect("no SD labels on the card");
    assert!(sd.complete(), "{} labels held", sd.held());
    assert_eq!(sd.held(), 18 * 19 / 2 + 1);
}
