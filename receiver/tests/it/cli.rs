//! The `receiver` binary: files, pipes and UDP, exit codes and messages,
//! with its card in a reader of the real pcscd (the applet served through
//! vpcd from a thread of the test, see `testkit::vpcd`). The receiver has
//! no software card of its own.
//!
//! The tests that need a card fail without pcscd under `CI=true` and are
//! skipped (with a note) otherwise.

use crate::common::*;
use card::{Applet, MemEeprom};
use receiver::exit;
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use testkit::vpcd::CardInReader;

fn receiver() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_receiver"));
    c.env_remove("RUST_LOG");
    c
}

/// The receiver writing every packet it descrambles: these tests compare
/// the output with synthetic streams packet for packet, and their random
/// payloads hold no picture to start at.
fn every_packet() -> Command {
    let mut c = receiver();
    c.arg("--no-rap-join");
    c
}

struct Ran {
    code: i32,
    stderr: String,
    out: Vec<u8>,
    stats: Value,
}

impl Ran {
    /// The last line on stderr: the reason for a failure.
    fn reason(&self) -> &str {
        self.stderr.lines().last().unwrap_or("")
    }
}

/// Runs the receiver on a scrambled file with the card in a reader.
fn run(dir: &Path, scrambled: &[u8], card: &CardInReader, extra: &[&str]) -> Ran {
    run_in(dir, scrambled, card.reader(), extra)
}

/// Runs the receiver on a scrambled file with the card in `reader`.
fn run_in(dir: &Path, scrambled: &[u8], reader: &str, extra: &[&str]) -> Ran {
    let input = dir.join("in.ts");
    let output = dir.join("out.ts");
    let stats = dir.join("stats.json");
    std::fs::write(&input, scrambled).unwrap();
    let _ = std::fs::remove_file(&stats);
    let o = every_packet()
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(["--reader", reader])
        .arg("--identity")
        .arg(dir.join("rx.key"))
        .arg("--stats-json")
        .arg(&stats)
        .args(extra)
        .output()
        .unwrap();
    ran(o, std::fs::read(&output).unwrap_or_default(), &stats)
}

fn ran(o: Output, out: Vec<u8>, stats: &Path) -> Ran {
    let r = Ran {
        code: o.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        out,
        stats: std::fs::read(stats)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null),
    };
    eprintln!("exit {}; stderr:\n{}", r.code, r.stderr);
    r
}

/// Card 42 for the engine, entitled from `dates` if given.
fn applet(engine: &mut headend_engine::KeyEngine, dates: Option<(u64, u64)>) -> Applet<MemEeprom> {
    mem_card(engine, CARD, dates).0
}

/// Runs the receiver on 3 s of ffmpeg's stream scrambled from `start_ms`
/// with 1 s crypto periods, card 42 (entitled from `dates` if given) in a
/// reader: the clear and the scrambled stream and the run. `None` when
/// ffmpeg or pcscd is missing (the test is skipped).
fn run_on_ffmpeg_stream(
    test: &str,
    dates: Option<(u64, u64)>,
    start_ms: u64,
) -> Option<(Vec<u8>, Vec<u8>, Ran)> {
    let clear = ffmpeg_ts(3)?;
    let dir = tempfile::tempdir().unwrap();
    let mut engine = engine();
    let applet = applet(&mut engine, dates);
    let (scrambled, _) = scramble(&clear, TestFeed::new(engine, 1000), start_ms, 0);
    let card = CardInReader::insert(test, applet)?;
    let r = run(dir.path(), &scrambled, &card, &[]);
    Some((clear, scrambled, r))
}

#[test]
fn file_to_file_clear_output_stats_and_ffprobe() {
    let Some(clear) = ffmpeg_ts(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, applet) = entitled_card();
    let other = engine.emm_u_for(CARD, START_MS / 1000).unwrap();
    let mut feed = TestFeed::new(engine, 1000);
    feed.carousel_emm(&other);
    let (scrambled, _) = scramble(&clear, feed, START_MS, 100_000);
    let Some(card) = CardInReader::insert("file_to_file_clear_output_stats_and_ffprobe", applet)
    else {
        return;
    };
    let r = run(dir.path(), &scrambled, &card, &[]);
    assert_eq!(r.code, 0);
    assert!(r.stderr.contains("created a new receiver key"));
    assert!(
        r.reason().starts_with("receiver: "),
        "summary line: {}",
        r.reason()
    );
    assert!(r.reason().contains("0 undecryptable"));
    assert_es_identical(&clear, &r.out);
    let s = &r.stats;
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["reason"], Value::Null);
    assert_eq!(s["service"], 1);
    assert_eq!(s["card_id"], CARD);
    assert_eq!(s["stats"]["undecryptable"], 0);
    assert_eq!(s["stats"]["emms_accepted"], 1);
    assert!(s["stats"]["cw_changes"].as_u64().unwrap() >= 3);
    assert_eq!(
        s["stats"]["packets_out"].as_u64().unwrap() as usize * 188,
        r.out.len()
    );
    let out = dir.path().join("out.ts");
    let input = dir.path().join("clear.ts");
    std::fs::write(&input, &clear).unwrap();
    if let (Some((want, _)), Some((got, errors))) = (ffprobe_frames(&input), ffprobe_frames(&out)) {
        assert_eq!(got, want);
        assert_eq!(errors.trim(), "");
    }
    // The key file was made 0600 and is used again.
    let key = dir.path().join("rx.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let r = run(dir.path(), &scrambled, &card, &["--service", "1"]);
    assert_eq!(r.code, 0);
    assert!(!r.stderr.contains("created a new receiver key"));
}

#[test]
fn stdin_to_stdout() {
    let clear = synthetic_ts(3_000, 6);
    let dir = tempfile::tempdir().unwrap();
    let (engine, applet) = entitled_card();
    let (scrambled, _) = scramble(&clear, TestFeed::new(engine, 1000), START_MS, 0);
    let Some(card) = CardInReader::insert("stdin_to_stdout", applet) else {
        return;
    };
    let mut child = every_packet()
        .args(["-i", "-", "-o", "-", "--reader", card.reader()])
        .arg("--identity")
        .arg(dir.path().join("rx.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // In odd-sized pieces, as a pipe may deliver them.
        for piece in scrambled.chunks(1000) {
            stdin.write_all(piece).unwrap();
        }
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_es_identical(&clear, &o.stdout);
}

#[test]
fn a_card_without_the_product_gets_no_clear_output_and_exit_3() {
    let Some((_, _, r)) = run_on_ffmpeg_stream(
        "a_card_without_the_product_gets_no_clear_output_and_exit_3",
        None,
        START_MS,
    ) else {
        return;
    };
    assert_eq!(r.code, i32::from(exit::NOT_ENTITLED));
    assert_eq!(
        r.reason(),
        "receiver: card 42 has no entitlement for product 7"
    );
    assert_eq!(
        r.stats["reason"],
        "card 42 has no entitlement for product 7"
    );
    let got = es(&r.out, &[VIDEO, AUDIO]);
    assert!(got.values().all(Vec::is_empty), "ES packets in the output");
}

#[test]
fn an_entitlement_ending_mid_run_stops_at_the_next_crypto_period_with_exit_3() {
    // Ends 2026-11-30T23:59:59Z; the stream starts a second before, with
    // 1 s crypto periods: the third period's ECM is refused.
    let end = DAY0 + DAY - 1;
    let Some((clear, scrambled, r)) = run_on_ffmpeg_stream(
        "an_entitlement_ending_mid_run_stops_at_the_next_crypto_period_with_exit_3",
        Some((DAY0 - DAY, end)),
        (end - 1) * 1000,
    ) else {
        return;
    };
    assert_eq!(r.code, i32::from(exit::NOT_ENTITLED));
    assert_eq!(
        r.reason(),
        "receiver: card 42 has no entitlement for product 7 (ended 2026-11-30)"
    );
    let cut = es_before_epoch(&scrambled, end + 1);
    let want = es(&clear, &[VIDEO, AUDIO]);
    let got = es(&r.out, &[VIDEO, AUDIO]);
    for pid in [VIDEO, AUDIO] {
        assert!(cut[&pid] * 10 > want[&pid].len() * 5, "{cut:?}");
        assert!(cut[&pid] < want[&pid].len(), "{cut:?}");
        assert_eq!(got[&pid].len(), cut[&pid], "PID {pid:#x}");
        assert_eq!(&got[&pid][..], &want[&pid][..cut[&pid]]);
    }
}

#[test]
fn input_that_is_not_ts_is_refused_with_exit_7() {
    let dir = tempfile::tempdir().unwrap();
    let (_, applet) = entitled_card();
    let Some(card) = CardInReader::insert("input_that_is_not_ts_is_refused_with_exit_7", applet)
    else {
        return;
    };
    let mut rng = Rng(7);
    let mut garbage = vec![0u8; 200_000];
    rng.fill(&mut garbage);
    for b in garbage.iter_mut() {
        if *b == 0x47 {
            *b = 0x48;
        }
    }
    let r = run(dir.path(), &garbage, &card, &[]);
    assert_eq!(r.code, i32::from(exit::NOT_TS));
    assert!(
        r.reason().starts_with(
            "receiver: input is not an MPEG transport stream: no packet sync in the first"
        ),
        "{}",
        r.reason()
    );
    let r = run(dir.path(), b"", &card, &[]);
    assert_eq!(r.code, i32::from(exit::NOT_TS));
    assert_eq!(
        r.reason(),
        "receiver: input is not an MPEG transport stream: the input is empty"
    );
    // A missing input file is an I/O error, said as such.
    let o = receiver()
        .args(["-i", "/nonexistent/in.ts", "-o"])
        .arg(dir.path().join("o.ts"))
        .args(["--reader", card.reader()])
        .arg("--identity")
        .arg(dir.path().join("rx.key"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(i32::from(exit::IO)));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("receiver: input /nonexistent/in.ts: No such file"),
        "{err}"
    );
}

#[test]
fn input_that_is_not_ts_is_refused_at_once_without_waiting_for_a_card() {
    // No card and no reader: a receiver that waited for one would take
    // the whole card timeout before it looked at the input.
    let dir = tempfile::tempdir().unwrap();
    let mut garbage = vec![0u8; 100_000];
    Rng(11).fill(&mut garbage);
    for b in garbage.iter_mut() {
        if *b == 0x47 {
            *b = 0x46;
        }
    }
    for (input, reason) in [
        (
            &garbage[..],
            "receiver: input is not an MPEG transport stream: no packet sync in the first",
        ),
        (
            &b""[..],
            "receiver: input is not an MPEG transport stream: the input is empty",
        ),
        // Shorter than the sync limit, but the whole of it.
        (
            &garbage[..5000],
            "receiver: input is not an MPEG transport stream: no packet sync in its 5000 bytes",
        ),
    ] {
        let t = std::time::Instant::now();
        let r = run_in(
            dir.path(),
            input,
            "No Such Reader",
            &["--card-timeout", "30"],
        );
        assert_eq!(r.code, i32::from(exit::NOT_TS));
        assert!(r.reason().starts_with(reason), "{}", r.reason());
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}

#[test]
fn an_unknown_service_a_missing_card_and_a_paired_card_are_clear_errors() {
    let clear = synthetic_ts(2_000, 6);
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, applet) = entitled_card();
    // Pair the card with another receiver's key.
    let theirs = proto::crypto::X25519Secret::random();
    let pair = engine
        .emm_u_pair(CARD, theirs.public(), START_MS / 1000)
        .unwrap();
    let (scrambled, _) = scramble(&clear, TestFeed::new(engine, 1000), START_MS, 0);
    let Some(mut card) = CardInReader::insert(
        "an_unknown_service_a_missing_card_and_a_paired_card_are_clear_errors",
        applet,
    ) else {
        return;
    };

    let r = run(dir.path(), &scrambled, &card, &["--service", "9"]);
    assert_eq!(r.code, i32::from(exit::UNKNOWN_SERVICE));
    assert_eq!(
        r.reason(),
        "receiver: service 9 is not in the stream (it has service 1)"
    );

    // No card where it is asked for (a reader that is not there, which
    // the receiver waits for as for a card): said once the wait is over.
    let t = std::time::Instant::now();
    let r = run_in(
        dir.path(),
        &scrambled,
        "No Such Reader",
        &["--card-timeout", "1"],
    );
    assert_eq!(r.code, i32::from(exit::NO_CARD));
    assert_eq!(
        r.reason(),
        "receiver: no card in reader 'No Such Reader' within 1 s"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    card.with_applet(|applet| {
        let mut c = cardlink::CardClient::new(cardlink::InProcessCard::new(applet));
        c.select().unwrap();
        c.process_emm(&pair).unwrap();
        c.into_transport().applet
    });
    let r = run(dir.path(), &scrambled, &card, &[]);
    // A file input: the receiver reads it all, waiting for the operator,
    // and reports the pairing when it ends.
    assert_eq!(r.code, i32::from(exit::PAIRED_ELSEWHERE));
    assert!(
        r.reason().starts_with(
            "receiver: card 42 is paired with another receiver: the operator must run \"headend pair 42 "
        ) && r.reason().ends_with("\" (this receiver's key) or \"headend unpair 42\""),
        "{}",
        r.reason()
    );
    assert!(es(&r.out, &[VIDEO])[&VIDEO].is_empty());
}

#[test]
fn the_paired_receiver_works_and_identity_prints_its_key() {
    let clear = synthetic_ts(2_000, 6);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("rx.key");
    let o = receiver()
        .arg("identity")
        .arg("--identity")
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success());
    let hex_key = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert_eq!(hex_key.len(), 64);
    assert!(String::from_utf8_lossy(&o.stderr).contains("created a new receiver key"));
    // The same key again, from the default place under XDG_STATE_HOME too.
    let again = receiver()
        .args(["identity", "--identity"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), hex_key);
    let state = dir.path().join("state");
    let a = receiver()
        .arg("identity")
        .env("XDG_STATE_HOME", &state)
        .output()
        .unwrap();
    assert!(a.status.success());
    assert!(state.join("iodoform/receiver.key").is_file());

    let (mut engine, applet) = entitled_card();
    let public: [u8; 32] = hex::decode(&hex_key).unwrap().try_into().unwrap();
    let pair = engine.emm_u_pair(CARD, public, START_MS / 1000).unwrap();
    let mut feed = TestFeed::new(engine, 1000);
    feed.carousel_emm(&pair);
    let (scrambled, _) = scramble(&clear, feed, START_MS, 100_000);
    let Some(card) = CardInReader::insert(
        "the_paired_receiver_works_and_identity_prints_its_key",
        applet,
    ) else {
        return;
    };
    let r = run(dir.path(), &scrambled, &card, &[]);
    assert_eq!(r.code, 0);
    assert_eq!(r.stats["stats"]["emms_accepted"], 1);
    assert_es_identical(&clear, &r.out);
}

#[test]
fn help_says_how_to_use_it() {
    let o = receiver().arg("--help").output().unwrap();
    assert!(o.status.success());
    let h = String::from_utf8(o.stdout).unwrap();
    for want in [
        "--input",
        "--output",
        "--service",
        "--reader",
        "--stats-json",
        "Exit codes",
        "identity",
    ] {
        assert!(h.contains(want), "--help lacks {want}:\n{h}");
    }
    assert!(h.contains(cli::EXIT_CODES_HELP), "{h}");
    let o = receiver().args(["-i", "x.ts"]).output().unwrap();
    assert_eq!(o.status.code(), Some(64));
    // No software card: the receiver takes its card from PC/SC only.
    let o = receiver()
        .args(["-i", "x.ts", "-o", "y.ts", "--card-state", "card.bin"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(64));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unexpected argument '--card-state'"), "{err}");
}

/// The stream address syntax (tsio's, the headend's too) as the receiver
/// takes it: `udp://@:PORT` listens, and an address that cannot be is
/// refused before anything opens, in one line naming the fix, exit 64.
#[test]
fn stream_addresses_and_their_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let h = String::from_utf8(receiver().arg("--help").output().unwrap().stdout).unwrap();
    for want in [
        "PATH?loop",
        "udp://@:PORT",
        "udp://HOST:PORT",
        "file://PATH",
        "--no-rap-join",
        "-o capture.ts --no-rap-join",
    ] {
        assert!(h.contains(want), "--help lacks {want}:\n{h}");
    }
    for (input, output, fix) in [
        ("udp://127.0.0.1:5000?loop", "out.ts", "drop ?loop"),
        ("-?loop", "out.ts", "drop ?loop"),
        ("in.ts", "out.ts?loop", "drop it from the output"),
        (
            "in.ts",
            "udp://@:5000",
            "give the receivers' udp://HOST:PORT",
        ),
        ("rtp://127.0.0.1:5000", "out.ts", "give a file"),
        ("udp://127.0.0.1", "out.ts", "give udp://HOST:PORT"),
    ] {
        let o = receiver()
            .current_dir(dir.path())
            .arg(format!("--input={input}"))
            .arg(format!("--output={output}"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(i32::from(exit::USAGE)),
            "{input} {output}: {err}"
        );
        let line = err.lines().next().unwrap_or("");
        assert!(line.contains(fix), "{input} {output}: {err}");
        assert_eq!(err.matches("error:").count(), 1, "{err}");
    }
    assert!(!dir.path().join("out.ts").exists());
    // `udp://@:PORT` is taken and bound: the run gets as far as the card.
    let o = receiver()
        .current_dir(dir.path())
        .args([
            "-i",
            "udp://@:0",
            "-o",
            "out.ts",
            "--reader",
            "no such reader",
        ])
        .args(["--card-timeout", "0.2", "--identity", "rx.key"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(i32::from(exit::USAGE)), "{err}");
    assert_ne!(o.status.code(), Some(i32::from(exit::IO)), "{err}");
    assert!(!err.contains("udp://"), "{err}");
}

/// A file input ending in `?loop` is played again and again: the output
/// runs past the clear output of one pass, until the receiver is stopped.
#[test]
fn a_looped_file_input_keeps_the_output_going() {
    let clear = synthetic_ts(3_000, 6);
    let dir = tempfile::tempdir().unwrap();
    let (engine, applet) = entitled_card();
    let (scrambled, _) = scramble(&clear, TestFeed::new(engine, 1000), START_MS, 0);
    let Some(card) = CardInReader::insert("a_looped_file_input_keeps_the_output_going", applet)
    else {
        return;
    };
    // One pass, for its length.
    let once = run(dir.path(), &scrambled, &card, &[]);
    assert_eq!(once.code, 0, "{}", once.stderr);
    assert_es_identical(&clear, &once.out);
    let input = dir.path().join("in.ts");
    let output = dir.path().join("looped.ts");
    let mut child = every_packet()
        .arg("-i")
        .arg(format!("{}?loop", input.display()))
        .arg("-o")
        .arg(&output)
        .args(["--reader", card.reader()])
        .arg("--identity")
        .arg(dir.path().join("rx.key"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let want = 3 * once.out.len() as u64;
    let mut len = 0;
    while len <= want && std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none()
    {
        std::thread::sleep(Duration::from_millis(50));
        len = std::fs::metadata(&output).map_or(0, |m| m.len());
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        len > want,
        "{len} bytes after 30 s, one pass is {}: {err}",
        once.out.len()
    );
    assert_eq!(o.status.code(), Some(0), "{err}");
    // Pass after pass, the clear stream again, packet for packet.
    let out = std::fs::read(&output).unwrap();
    let (want, got) = (es(&clear, &[VIDEO]), es(&out, &[VIDEO]));
    let (want, got) = (&want[&VIDEO], &got[&VIDEO]);
    assert!(
        got.len() > 2 * want.len(),
        "{} of {}",
        got.len(),
        want.len()
    );
    for (i, pass) in got.chunks(want.len()).take(2).enumerate() {
        assert!(pass == &want[..], "pass {i} differs from the clear stream");
    }
}

/// `receiver identity | true` ends quietly (141), no panic.
#[test]
fn identity_into_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("rx.key");
    let mut c = receiver();
    c.arg("identity").arg("--identity").arg(&key);
    // The first run makes the key and says so on stderr.
    assert!(c.output().unwrap().status.success());
    cli::testing::assert_quiet_closed_pipe(
        "receiver identity",
        &cli::testing::into_closed_pipe(&c),
    );
}

#[test]
fn udp_in_udp_out_live() {
    let clear = synthetic_ts(3_000, 20);
    let dir = tempfile::tempdir().unwrap();
    let (engine, applet) = entitled_card();
    let (scrambled, _) = scramble(&clear, TestFeed::new(engine, 500), START_MS, 0);
    let Some(card) = CardInReader::insert("udp_in_udp_out_live", applet) else {
        return;
    };
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let in_port = testkit::free_udp_addr();
    let stats = dir.path().join("stats.json");
    let mut child = every_packet()
        .arg("-i")
        .arg(format!("udp://{in_port}"))
        .arg("-o")
        .arg(format!("udp://{}", sink.local_addr().unwrap()))
        .args(["--reader", card.reader()])
        .arg("--identity")
        .arg(dir.path().join("rx.key"))
        .arg("--stats-json")
        .arg(&stats)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let sender = {
        let s = scrambled.clone();
        std::thread::spawn(move || {
            receiver::bench::pace_udp(&s, in_port, &std::sync::atomic::AtomicBool::new(false))
                .unwrap()
        })
    };
    let mut out = Vec::new();
    let mut datagram = [0u8; 2048];
    let mut receive = |out: &mut Vec<u8>| {
        let mut idle = 0;
        while idle < 5 {
            match sink.recv(&mut datagram) {
                Ok(n) => {
                    assert_eq!(n % 188, 0);
                    assert!(n <= 7 * 188);
                    out.extend_from_slice(&datagram[..n]);
                    idle = 0;
                }
                Err(_) => idle += 1,
            }
        }
    };
    while !sender.is_finished() {
        receive(&mut out);
    }
    sender.join().unwrap();
    // SIGINT: a clean stop, with the last packet, the summary and exit 0;
    // delivered twice at once, as `timeout` does (the process, then its
    // group), it is still one request, not the second that exits 130.
    Command::new("sh")
        .args(["-c", r#"kill -INT "$0"; kill -INT "$0""#])
        .arg(child.id().to_string())
        .status()
        .unwrap();
    receive(&mut out);
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("0 undecryptable"), "{err}");
    assert_es_identical(&clear, &out);
    let s: Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(s["stats"]["datagrams_dropped"], 0);
}
