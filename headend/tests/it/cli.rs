//! The `headend` command line: `init`, `run` (exit 64 on a bad config,
//! 0 on SIGTERM) and the API client subcommands, with their errors.

use crate::common::*;
use serde_json::Value;
use std::process::{Command, Output};

fn cli(h: &Headend, args: &[&str]) -> Output {
    Command::new(BIN)
        .env("IODOFORM_CONFIG", h.config())
        .args(args)
        .output()
        .unwrap()
}

fn ok_json(h: &Headend, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = cli(h, &a);
    assert!(out.status.success(), "{args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn init_refuses_to_overwrite_and_run_rejects_bad_configs() {
    let h = Headend::init(BIN, 1000, Some(2000));
    let again = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(h.home())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));

    for (bad, field) in [
        ("crypto_period_ms = 50", "crypto_period_ms"),
        ("emm_cycle_ms = 5", "emm_cycle_ms"),
        ("listen = \"not an address\"", "listen"),
        ("surprise = true", "surprise"),
        (
            "[[channels]]\nname = \"a\"\nservice_id = 1\nproduct = \"p\"\necm_pid = 1\nemm_pid = 0x200",
            "channels[0].ecm_pid",
        ),
    ] {
        let mut cfg = std::fs::read_to_string(h.config()).unwrap();
        cfg = cfg
            .lines()
            .filter(|l| {
                !l.starts_with(field.split('[').next().unwrap()) || field.starts_with("channels")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = h.home().join("bad.toml");
        std::fs::write(&path, format!("{cfg}\n{bad}\n")).unwrap();
        let out = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{bad}: {}", text(&out));
        assert!(text(&out).contains(field), "{bad}: {}", text(&out));
    }
    let out = Command::new(BIN)
        .args(["run"])
        .env_remove("IODOFORM_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn cli_subcommands_drive_the_daemon() {
    let mut h = Headend::init(BIN, 500, Some(1000));
    // Not running yet: a clear message.
    let out = cli(&h, &["status"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not running"), "{}", text(&out));

    h.start();
    let p = ok_json(&h, &["product", "add", "sports"]);
    assert_eq!(p["id"], 1);
    let out = cli(&h, &["product", "list"]);
    assert!(text(&out).contains("sports"), "{}", text(&out));
    ok_json(
        &h,
        &[
            "channel",
            "add",
            "--name",
            "sport1",
            "--service-id",
            "0x101",
            "--product",
            "sports",
            "--ecm-pid",
            "0x201",
            "--emm-pid",
            "0x202",
        ],
    );
    let out = cli(&h, &["channel", "list"]);
    assert!(text(&out).contains("0x0201"), "{}", text(&out));

    // A card as the provisioning tool describes it.
    let (_card, public) = new_card(&operator(&h), 42);
    let card_json = h.home().join("card.json");
    std::fs::write(
        &card_json,
        serde_json::json!({"card_id": 42, "public_key": hex::encode(public), "operator_id": 1})
            .to_string(),
    )
    .unwrap();
    let c = ok_json(&h, &["card", "add", "--from", &path_str(&card_json)]);
    assert_eq!(c["state"], "active");
    ok_json(&h, &["subscribe", "42", "sports", "--until", "2099-06-30"]);
    let shown = ok_json(&h, &["card", "show", "42"]);
    assert_eq!(shown["subscriptions"][0]["until"], "2099-06-30T23:59:59Z");
    let out = cli(&h, &["card", "show", "42"]);
    assert!(
        text(&out).contains("2099-06-30T23:59:59Z"),
        "{}",
        text(&out)
    );
    let out = cli(&h, &["card", "list"]);
    assert!(text(&out).contains("42"), "{}", text(&out));
    ok_json(&h, &["pair", "42", &"ab".repeat(32)]);
    // A low-order key is refused with the fix; unpair ends the pairing.
    let out = cli(&h, &["pair", "42", &"00".repeat(32)]);
    assert_eq!(out.status.code(), Some(65));
    assert!(
        text(&out).contains("receiver_key") && text(&out).contains("receiver identity"),
        "{}",
        text(&out)
    );
    let shown = ok_json(&h, &["card", "show", "42"]);
    assert_eq!(shown["paired_receiver"], "ab".repeat(32));
    let unpaired = ok_json(&h, &["unpair", "42"]);
    assert_eq!(unpaired["paired_receiver"], serde_json::Value::Null);
    ok_json(&h, &["pair", "42", &"ab".repeat(32)]);
    // Generation numbers follow the clock (seconds since 2024) and only
    // go up; ECMs stay on generation 1 while a renewal is delivered.
    let since_2024 = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1_704_067_200) as i64;
    let r = ok_json(&h, &["rotate", "sports"]);
    let g1 = r["rotated"][0]["generation"].as_i64().unwrap();
    assert!(g1 >= since_2024 - 5 && g1 <= since_2024 + 5, "{r}");
    assert_eq!(r["rotated"][0]["active_generation"], 1);
    let r = ok_json(&h, &["rotate"]);
    let g2 = r["rotated"][0]["generation"].as_i64().unwrap();
    assert!(g2 > g1, "{r}");
    let out = cli(&h, &["unsubscribe", "42", "sports"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = ok_json(&h, &["status"]);
    assert!(status["products"][0]["generation"].as_i64().unwrap() > g2);
    let out = cli(&h, &["status"]);
    assert!(
        text(&out).contains("crypto period 500 ms"),
        "{}",
        text(&out)
    );

    // API errors come back as messages with a non-zero exit.
    let out = cli(&h, &["card", "show", "43"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(text(&out).contains("unknown card 43"), "{}", text(&out));
    let out = cli(&h, &["subscribe", "42", "sports", "--until", "someday"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(text(&out).contains("until"), "{}", text(&out));
    ok_json(&h, &["card", "revoke", "42"]);

    // A wrong token: a config naming another token file.
    let bad_token = h.home().join("other.token");
    std::fs::write(&bad_token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let mut perms = std::fs::metadata(&bad_token).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&bad_token, perms).unwrap();
    let cfg = std::fs::read_to_string(h.config())
        .unwrap()
        .replace("token = \"admin.token\"", "token = \"other.token\"");
    let other = h.home().join("other.toml");
    std::fs::write(&other, cfg).unwrap();
    let out = Command::new(BIN)
        .args(["--config", &path_str(&other), "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("token"), "{}", text(&out));

    // SIGTERM: a clean exit.
    assert!(h.terminate().success());
    assert!(h.log().contains("headend stopped"), "{}", h.log());
}

/// A closed pipe ends the tool quietly (141, no panic); a bad
/// command line exits 64 as everywhere else; a bad `init` flag names the
/// flag; `--help` prints the shared exit-code table.
#[test]
fn closed_pipes_usage_errors_and_help() {
    use cli::testing::{assert_quiet_closed_pipe, into_closed_pipe};
    let mut h = Headend::init(BIN, 500, Some(1000));
    h.start();
    let mut status = Command::new(BIN);
    status
        .env("IODOFORM_CONFIG", h.config())
        .args(["status", "--json"]);
    assert_quiet_closed_pipe("headend status --json", &into_closed_pipe(&status));
    // As in a shell: the reader takes one byte and goes.
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#""$0" status --json | head -c1 > /dev/null; exit "${PIPESTATUS[0]}""#)
        .arg(BIN)
        .env("IODOFORM_CONFIG", h.config())
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 141)), "{}", text(&out));
    assert!(!text(&out).contains("panicked"), "{}", text(&out));
    assert_quiet_closed_pipe(
        "headend --help",
        &into_closed_pipe(Command::new(BIN).arg("--help")),
    );

    let out = Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let out = Command::new(BIN)
        .args(["card", "show", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir.path().join("h"))
        .args(["--crypto-period-ms", "50"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.starts_with("headend init: --crypto-period-ms must be at least"),
        "{msg}"
    );
    assert_eq!(msg.trim_end().lines().count(), 1, "{msg}");
    assert!(!dir.path().join("h").exists(), "nothing is written");

    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains(cli::EXIT_CODES_HELP), "{help}");
    assert!(help.contains("Examples:"), "{help}");
}
