//! Endurance of the card path: a card as slow as a real one (300 ms per
//! APDU, short APDUs only, behind the system's pcscd) through 1,000
//! control-word changes of a live stream, through the real binaries, as
//! in [`slow_card`](crate::slow_card) (its tee, taps and playout check).

use crate::e2e_stream::{prerequisites, receiver_input, Feeder, System, Tap};
use crate::slow_card::{check, clip, viewers, watch};
use std::time::{Duration, Instant};
use testkit::emulator::CardModel;
use testkit::vpcd;

/// The long run's crypto period: the card's 300 ms per ECM and 200 ms to
/// spare. That is less than one more command (an EMM takes 300 ms too),
/// so the run starts once the carousel's fast lane for the new
/// subscription is over, and the regular round (one hour) hands the card
/// nothing more: only ECMs reach it, as for a subscriber whose
/// entitlement is months old. EMMs meeting ECMs on a 300 ms card are
/// the test above's (an EMM every second, 2 s periods).
const LONG_PERIOD_MS: u64 = 500;
const LONG_CW_CHANGES: u64 = 1000;
/// The carousel's fast lane after a subscription (headend's
/// `FAST_WINDOW_MS`), and a second more.
const FAST_LANE: Duration = Duration::from_secs(31);

/// A card at 300 ms per APDU through 1,000 control-word changes of
/// 500 ms crypto periods (about nine minutes, nearly all of it asleep):
/// no packet undecryptable or lost, no ECM left behind.
///
/// It is the first test of this binary by name, so that it starts at
/// once and the others run beside it. Every packet counts: a single
/// datagram lost anywhere on the way makes the receiver join again at the
/// next IDR picture, and the test fails with the packets dropped till
/// then. (It found the headend's pacer keeping a stall's lag for good,
/// with its input socket full and overflowing under load.)
#[test]
fn a_card_at_300_ms_per_apdu_goes_through_1000_control_word_changes_without_losing_a_packet() {
    let test =
        "a_card_at_300_ms_per_apdu_goes_through_1000_control_word_changes_without_losing_a_packet";
    if !prerequisites(test) {
        return;
    }
    let t0 = Instant::now();
    let slot = vpcd::slot();
    let rx_in = receiver_input();
    let tee = Tap::start(Some(rx_in));
    let sys = System::set_up_card(
        &slot,
        tee.addr,
        LONG_PERIOD_MS,
        Some(3_600_000),
        CardModel::fixed(300),
        &[],
    );
    let fast_lane_over = Instant::now() + FAST_LANE;
    let viewers = viewers(&sys, ("300ms", &slot, rx_in), vec![]);
    let (clip, clip_set) = clip(&sys, "size=160x120");
    let feeder = Feeder::start(sys.input, move || Some(clip.clone()));
    viewers[0].entitle(&sys);
    std::thread::sleep(fast_lane_over.saturating_duration_since(Instant::now()));
    let set_up = t0.elapsed();
    let runs = watch(
        &sys,
        &viewers,
        &tee,
        feeder,
        LONG_CW_CHANGES,
        LONG_PERIOD_MS,
    );
    let (line, _) = check(&viewers[0], &runs[0], &clip_set, LONG_CW_CHANGES);
    eprintln!(
        "{line}\nset-up {:.1} s, total {:.1} s",
        set_up.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
