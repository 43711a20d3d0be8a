//! `smartcard emulate` behind the real pcscd: its state survives power
//! cycles, resets and restarts of the process; the PC/SC transport waits
//! for cards, notices removal and reconnects after a reset; a NOP costs a
//! fraction of a millisecond.

use crate::suite;
use cardlink::pcsc::{PcscTransport, ReaderChoice};
use cardlink::{CardClient, CardTransport, TransportError};
use pcsc::Disposition;
use proto::card::{CardInfo, EntitlementRecord, LifeCycle};
use std::time::{Duration, Instant};
use testkit::emulator::PcscCard;
use testkit::operator::{Operator, CARD, DAY, T0};
use testkit::vpcd::{self, pcscd_or_skip};
use testkit::{Emulator, Process};

/// A locked card with one entitlement; returns what it reports.
fn issue_and_entitle(c: &mut PcscCard) -> (CardInfo, Vec<EntitlementRecord>) {
    let mut op = Operator::new();
    let info = suite::issue(c, &op);
    let emm = op.emm_u(
        CARD,
        &info.public_key,
        T0 + 5,
        vec![op.entitle(T0, T0 + 30 * DAY)],
    );
    c.process_emm(&emm).unwrap();
    let info = c.info().unwrap();
    assert_eq!(info.emm_u_seq, 1);
    assert_eq!(info.clock, T0 + 5);
    (info, c.list_entitlements().unwrap())
}

fn read_back(c: &mut PcscCard) -> (CardInfo, Vec<EntitlementRecord>) {
    c.select().unwrap();
    (c.info().unwrap(), c.list_entitlements().unwrap())
}

#[test]
fn state_survives_power_cycles_resets_and_restarts() {
    if !pcscd_or_skip("state_survives_power_cycles_resets_and_restarts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slot = vpcd::slot();
    let mut emu = Emulator::start(crate::SMARTCARD, &slot, &dir.path().join("card.img"));
    let mut c = emu.connect();
    let want = issue_and_entitle(&mut c);
    assert_eq!(want.0.state, LifeCycle::LOCKED);
    assert_eq!(want.1.len(), 1);

    // Power cycles: the card is powered down and up again.
    for _ in 0..3 {
        c.into_transport()
            .disconnect(Disposition::UnpowerCard)
            .unwrap();
        c = emu.connect();
        assert_eq!(read_back(&mut c), want);
    }

    // A reset by another application: this one gets CardReset, reconnects
    // and selects again.
    let other = emu.transport();
    other.disconnect(Disposition::ResetCard).unwrap();
    match c.nop() {
        Err(cardlink::ClientError::Transport(TransportError::CardReset)) => {}
        other => panic!("expected a reset, got {other:?}"),
    }
    c.transport().reconnect().unwrap();
    assert_eq!(read_back(&mut c), want);
    drop(c);

    // SIGTERM and start again.
    let status = emu.terminate();
    assert!(status.success(), "{status:?}\n{}", emu.log());
    emu.restart();
    let mut c = emu.connect();
    assert_eq!(read_back(&mut c), want);
    drop(c);

    // SIGKILL and start again.
    emu.kill();
    emu.restart();
    let mut c = emu.connect();
    assert_eq!(read_back(&mut c), want);
}

#[test]
fn removal_is_noticed_and_reinsertion_recovered() {
    if !pcscd_or_skip("removal_is_noticed_and_reinsertion_recovered") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slot = vpcd::slot();
    let mut emu = Emulator::start(crate::SMARTCARD, &slot, &dir.path().join("card.img"));
    let mut c = emu.connect();
    let want = issue_and_entitle(&mut c);
    assert!(c.transport().card_present().unwrap());
    assert!(!c
        .transport()
        .wait_for_removal(Duration::from_millis(50))
        .unwrap());

    emu.kill();
    assert!(c
        .transport()
        .wait_for_removal(Duration::from_secs(5))
        .unwrap());
    assert!(!c.transport().card_present().unwrap());
    let err = c.nop().expect_err("the card is gone");
    assert!(
        matches!(
            err,
            cardlink::ClientError::Transport(
                TransportError::CardRemoved | TransportError::NoCard | TransportError::Other(_)
            )
        ),
        "{err:?}"
    );
    assert!(
        c.transport().reconnect().is_err(),
        "no card to reconnect to"
    );

    emu.restart();
    let deadline = Instant::now() + vpcd::SETTLE;
    while let Err(e) = c.transport().reconnect() {
        assert!(Instant::now() < deadline, "no reconnection: {e}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_back(&mut c), want);
}

#[test]
fn waiting_for_a_card() {
    if !pcscd_or_skip("waiting_for_a_card") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slot = vpcd::slot();
    let choice = ReaderChoice::Named(slot.reader.to_string());
    let t0 = Instant::now();
    let r = PcscTransport::wait_for_card(choice.clone(), Duration::from_millis(300));
    assert_eq!(r.err(), Some(TransportError::Timeout));
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        PcscTransport::connect(choice.clone()).err(),
        Some(TransportError::NoCard)
    );
    assert_eq!(
        PcscTransport::connect(ReaderChoice::Named("No Such Reader".into())).err(),
        Some(TransportError::ReaderNotFound("No Such Reader".into()))
    );

    // The card arrives while we wait; found by a substring of its name.
    let state = dir.path().join("card.img");
    let addr = slot.addr();
    let mut child = Process::spawn(
        std::process::Command::new(crate::SMARTCARD)
            .args(["emulate", "--vpcd", &addr, "--state"])
            .arg(&state),
        &dir.path().join("card.log"),
    );
    // A part of its name that no other reader's has (the slot numbers
    // alone, "00 01", are in two readers' names).
    let suffix = &slot.reader[2..];
    let waited = PcscTransport::wait_for_card(
        ReaderChoice::Named(suffix.to_string()),
        Duration::from_secs(10),
    );
    let t = waited.unwrap();
    assert_eq!(t.reader(), slot.reader);
    assert_eq!(t.atr().unwrap(), card::applet::ATR);
    // Disconnected before the card goes: a PC/SC disconnect from a card
    // that vpcd has lost leaves the slot deaf to the next card for a
    // while.
    drop(t);
    child.kill();
    assert!(vpcd::wait_reader(slot.reader, false, vpcd::SETTLE));
}

#[test]
fn second_emulator_on_the_same_state_is_refused() {
    // Needs no pcscd: the lock is taken before any connection.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("card.img");
    let bin = env!("CARGO_BIN_EXE_smartcard");
    let mut first = std::process::Command::new(bin)
        .args(["emulate", "--vpcd", "127.0.0.1:9", "--state"])
        .arg(&state)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !state.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let second = std::process::Command::new(bin)
        .args(["emulate", "--vpcd", "127.0.0.1:9", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another emulator"), "{err}");
    // A file that is not a card image is refused too.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a card").unwrap();
    let out = std::process::Command::new(bin)
        .args(["emulate", "--vpcd", "127.0.0.1:9", "--state"])
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an Iodoform card image"));
}

/// The bare transport cost: TCP_NODELAY and TCP_QUICKACK on the
/// emulator's socket make it a fraction of a millisecond. Without them it
/// is ~44 ms (vpcd's Nagle against our delayed ACK); the bound here only
/// catches that regression, the real figure is printed and benchmarked.
#[test]
fn nop_latency_through_pcscd() {
    if !pcscd_or_skip("nop_latency_through_pcscd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slot = vpcd::slot();
    let emu = Emulator::start(crate::SMARTCARD, &slot, &dir.path().join("card.img"));
    let mut c = emu.connect();
    c.select().unwrap();
    for _ in 0..50 {
        c.nop().unwrap();
    }
    let mut ms: Vec<f64> = (0..1000)
        .map(|_| {
            let t = Instant::now();
            c.nop().unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let (p50, p99) = (ms[500], ms[990]);
    println!("NOP round trip through pcscd and vpcd: p50 {p50:.3} ms, p99 {p99:.3} ms");
    assert!(
        p50 < 5.0,
        "p50 {p50:.3} ms: are TCP_NODELAY/TCP_QUICKACK set?"
    );
}

/// pcscd stops and comes back: the emulator plugs itself in again and a
/// client reconnects with a new context. This restarts the system's pcscd,
/// so it runs under CI=true (or IODOFORM_TEST_PCSCD_RESTART=1) only, and
/// holds every vpcd slot meanwhile.
#[test]
fn emulator_and_client_follow_a_pcscd_restart() {
    if !vpcd::restart_allowed("emulator_and_client_follow_a_pcscd_restart") {
        return;
    }
    if !pcscd_or_skip("emulator_and_client_follow_a_pcscd_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let slots = vpcd::all_slots();
    let emu = Emulator::start(crate::SMARTCARD, &slots[0], &dir.path().join("card.img"));
    let mut c = emu.connect();
    let want = issue_and_entitle(&mut c);

    vpcd::stop_pcscd().unwrap();
    let err = c.nop().expect_err("pcscd is gone");
    eprintln!("while pcscd is down: {err}");
    let r = c.transport().reconnect();
    assert!(matches!(r, Err(TransportError::NoService(_))), "{r:?}");
    let r = cardlink::pcsc::list_readers();
    assert!(matches!(r, Err(TransportError::NoService(_))), "{r:?}");

    vpcd::start_pcscd().unwrap();
    assert!(
        vpcd::wait_reader(emu.reader, true, vpcd::SETTLE),
        "the emulator did not come back:\n{}",
        emu.log()
    );
    let deadline = Instant::now() + vpcd::SETTLE;
    while let Err(e) = c.transport().reconnect() {
        assert!(Instant::now() < deadline, "no reconnection: {e}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(read_back(&mut c), want);
    // And a new client finds it as well.
    let mut fresh: PcscCard = CardClient::new(emu.transport());
    assert_eq!(read_back(&mut fresh), want);
    assert!(fresh.transport().supports_extended());
}

/// `smartcard readers | true` ends quietly (141), no panic; a
/// bad command line exits 64; `--help` prints the shared exit codes.
#[test]
fn readers_into_a_closed_pipe_and_usage() {
    let bin = env!("CARGO_BIN_EXE_smartcard");
    let out = std::process::Command::new(bin)
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains(cli::EXIT_CODES_HELP));
    if !vpcd::pcscd_or_skip("readers_into_a_closed_pipe_and_usage") {
        return;
    }
    let mut readers = std::process::Command::new(bin);
    readers.arg("readers").env("RUST_LOG", "off");
    cli::testing::assert_quiet_closed_pipe(
        "smartcard readers",
        &cli::testing::into_closed_pipe(&readers),
    );
}
