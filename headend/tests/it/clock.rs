//! The clock check through the real binary: a daemon started with its
//! clock two hours past the last time a run put on the air (shifted by
//! the test-only `IODOFORM_TEST_CLOCK_OFFSET_MS`) makes no ECM, refuses
//! writes, says so once at ERROR, in `headend status` and in /metrics, and
//! seals again once `headend clock accept` is run; `headend run
//! --accept-clock-jump` accepts a jump found at the start.

use crate::common::*;
use headend::daemon::TEST_CLOCK_OFFSET_ENV;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const PERIOD_MS: u64 = 500;
const HOUR_MS: u64 = 3_600_000;

fn ecms(h: &Headend) -> usize {
    h.get("/api/v1/debug/sections")["ecms"]
        .as_array()
        .unwrap()
        .len()
}

fn gauge(h: &Headend, name: &str) -> f64 {
    let (st, v) = h.request("GET", "/metrics", None).unwrap();
    assert_eq!(st, 200);
    let text = v.as_str().unwrap().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_clock_jump_is_refused_until_an_operator_accepts_it() {
    let mut h = Headend::init(BIN, PERIOD_MS, Some(1000));
    h.start();
    h.post("/api/v1/products", json!({"name": "basic"}));
    h.post(
        "/api/v1/channels",
        json!({"name": "one", "service_id": 1, "product": "basic",
               "ecm_pid": 0x1F0, "emm_pid": 0x1F1}),
    );
    wait_for("an ECM", Duration::from_secs(10), || ecms(&h) == 1);
    assert_eq!(gauge(&h, "iodoform_clock_jump_refused"), 0.0);
    h.stop();

    // Two hours later by the daemon's clock.
    let two_hours = (2 * HOUR_MS).to_string();
    h.start_with(&[], &[(TEST_CLOCK_OFFSET_ENV, &two_hours)]);
    wait_for("the clock refused", Duration::from_secs(10), || {
        h.get("/api/v1/status")["clock"]["refused"] == json!(true)
    });
    std::thread::sleep(Duration::from_millis(4 * PERIOD_MS));
    assert_eq!(ecms(&h), 0, "an ECM with the refused time");
    let status = h.get("/api/v1/status");
    let ahead = status["clock"]["ahead_secs"].as_u64().unwrap();
    assert!((7190..7300).contains(&ahead), "{status}");
    assert_eq!(gauge(&h, "iodoform_clock_jump_refused"), 1.0);
    assert!(gauge(&h, "iodoform_clock_ahead_seconds") >= 7190.0);
    // Writes are refused with the fix; the CLI shows it in the status.
    let (st, v) = h
        .request("POST", "/api/v1/products", Some(&json!({"name": "more"})))
        .unwrap();
    assert_eq!(st, 503, "{v}");
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("headend clock accept"));
    let shown = String::from_utf8_lossy(&h.cli(&["status"]).stdout).to_string();
    assert!(shown.contains("CLOCK REFUSED"), "{shown}");
    // Logged once, at ERROR.
    let log = h.log();
    let refusals = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("more than max_clock_jump_secs"))
        .count();
    assert_eq!(refusals, 1, "{log}");
    assert!(!log.contains("scheduler step failed"));

    // The operator accepts it: ECMs again, the gauge back to 0.
    let out = h.cli(&["clock", "accept"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("accepted"));
    wait_for("an ECM after the accept", Duration::from_secs(10), || {
        ecms(&h) == 1
    });
    assert_eq!(gauge(&h, "iodoform_clock_jump_refused"), 0.0);
    // Nothing left to accept: refused with the reason (exit 65).
    let none = Command::new(BIN)
        .args(["clock", "accept", "--config"])
        .arg(h.config())
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(i32::from(cli::exit::DATA)));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no jump to accept"));
    h.stop();

    // Two hours further, accepted at the start.
    let four_hours = (4 * HOUR_MS).to_string();
    h.start_with(
        &["--accept-clock-jump"],
        &[(TEST_CLOCK_OFFSET_ENV, &four_hours)],
    );
    wait_for(
        "an ECM with the accepted jump",
        Duration::from_secs(10),
        || ecms(&h) == 1,
    );
    assert_eq!(h.get("/api/v1/status")["clock"]["refused"], json!(false));
    assert!(h
        .log()
        .contains("clock jump accepted (--accept-clock-jump)"));
    h.stop();
}
