//! `/metrics` of a real `headend run`, scraped over HTTP with the
//! read-only scrape token and parsed by an independent parser, Python's
//! `prometheus_client` (scripts/parse_metrics.py); the scrape token opens
//! nothing else. Then the stream-health metrics of a channel whose UDP
//! input stops, and the shipped alert rules and dashboard: checked by
//! `promtool` and against the names the daemon exports.
//!
//! Under CI=true a missing `python3 -m pip install prometheus_client` or
//! `promtool` (Debian package `prometheus`) fails the tests; elsewhere they
//! are skipped with a note. scripts/test.sh installs both.

use crate::common::*;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A missing tool: a failure under CI=true, else a skip (`false`).
fn missing(what: &str) -> bool {
    if ci() {
        panic!("{what}; scripts/test.sh installs it");
    }
    eprintln!("SKIPPED: {what}");
    false
}

fn have_prometheus_client() -> bool {
    match Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
    {
        Ok(o) if o.status.success() => true,
        Ok(_) => missing(
            "Python's prometheus_client is missing (python3 -m pip install prometheus_client)",
        ),
        Err(e) => missing(&format!("python3 not found ({e})")),
    }
}

/// One scrape: the text and what prometheus_client made of it.
struct Scrape {
    text: String,
    families: Map<String, Value>,
}

impl Scrape {
    /// Parses `text` with scripts/parse_metrics.py (prometheus_client).
    fn parse(text: String) -> Scrape {
        let mut child = Command::new("python3")
            .arg(repo().join("scripts/parse_metrics.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "prometheus_client refused the exposition: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let families = serde_json::from_slice(&out.stdout).unwrap();
        Scrape { text, families }
    }

    /// The family of an exported name (prometheus_client names a counter
    /// family without its `_total`); asserts its type.
    fn family(&self, exported: &str, kind: &str) -> &Value {
        let key = exported.strip_suffix("_total").unwrap_or(exported);
        let f = self
            .families
            .get(key)
            .unwrap_or_else(|| panic!("no family {exported} in\n{}", self.text));
        assert_eq!(f["type"], kind, "{exported}");
        assert!(
            !f["help"].as_str().unwrap_or("").is_empty(),
            "{exported} has no HELP"
        );
        f
    }

    /// Every sample of `name` with its labels.
    fn samples(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let key = name.strip_suffix("_total").unwrap_or(name);
        let Some(f) = self.families.get(key) else {
            panic!("no family {name} in\n{}", self.text)
        };
        f["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == name)
            .map(|s| {
                let labels = s["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect();
                let v = match &s["value"] {
                    Value::Number(n) => n.as_f64().unwrap(),
                    other => panic!("{name}: value {other}"),
                };
                (labels, v)
            })
            .collect()
    }

    /// The one sample of `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .samples(name)
            .into_iter()
            .filter(|(l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{name}{labels:?}: {found:?} in\n{}",
            self.text
        );
        found[0]
    }

    /// The family names in the HELP lines, as exported.
    fn exported_names(&self) -> BTreeSet<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect()
    }
}

/// GET /metrics with `token`: the status and the body.
fn get_metrics(h: &Headend, token: &str) -> (u16, String, String) {
    let r = h
        .agent
        .get(&h.url("/metrics"))
        .set("Authorization", &format!("Bearer {token}"))
        .call();
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET /metrics: {e}"),
    };
    let status = resp.status();
    let ctype = resp.header("Content-Type").unwrap_or("").to_string();
    (status, ctype, resp.into_string().unwrap())
}

fn scrape(h: &Headend, token: &str) -> Scrape {
    let (status, ctype, text) = get_metrics(h, token);
    assert_eq!(status, 200, "{text}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    Scrape::parse(text)
}

/// A request with another token: the status and the JSON body.
fn call_with(h: &Headend, method: &str, path: &str, token: &str) -> (u16, Value) {
    let req = h
        .agent
        .request(method, &h.url(path))
        .set("Authorization", &format!("Bearer {token}"));
    let r = if method == "GET" {
        req.call()
    } else {
        req.send_json(json!({}))
    };
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    let status = resp.status();
    (status, resp.into_json().unwrap_or(Value::Null))
}

fn read_token(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// Names that the families of contracts section C must have, with types.
const FAMILIES: &[(&str, &str)] = &[
    ("iodoform_product_key_age_seconds", "gauge"),
    ("iodoform_product_next_renewal_seconds", "gauge"),
    ("iodoform_product_key_switch_pending", "gauge"),
    ("iodoform_product_key_switch_seconds", "gauge"),
    ("iodoform_product_renewal_bytes_left", "gauge"),
    ("iodoform_product_renewal_delivery_seconds", "gauge"),
    ("iodoform_clock_jump_refused", "gauge"),
    ("iodoform_emm_backlog_bytes", "gauge"),
    ("iodoform_emm_backlog_seconds", "gauge"),
    ("iodoform_ecm_failures_total", "counter"),
    ("iodoform_emm_sent_total", "counter"),
    ("iodoform_ecm_sent_total", "counter"),
    ("iodoform_key_rotations_total", "counter"),
    ("iodoform_emm_carousel_cycles_total", "counter"),
    ("iodoform_api_requests_total", "counter"),
    ("iodoform_errors_total", "counter"),
    ("iodoform_cards", "gauge"),
    ("iodoform_products", "gauge"),
    ("iodoform_channels", "gauge"),
    ("iodoform_carousel_cards", "gauge"),
    ("iodoform_run", "gauge"),
    ("iodoform_emm_cycle_seconds", "gauge"),
    ("iodoform_key_renewal_seconds", "gauge"),
];

/// The per-channel families (rendered by the channel supervisor).
const CHANNEL_FAMILIES: &[(&str, &str)] = &[
    ("iodoform_channel_input_packets_total", "counter"),
    ("iodoform_channel_input_bitrate_bits_per_second", "gauge"),
    ("iodoform_channel_input_continuity_errors_total", "counter"),
    ("iodoform_channel_input_silence_seconds", "gauge"),
    ("iodoform_channel_scrambled_packets_total", "counter"),
    ("iodoform_channel_clear_packets_total", "counter"),
    ("iodoform_channel_withheld_packets_total", "counter"),
    ("iodoform_channel_output_errors_total", "counter"),
    ("iodoform_channel_on_air", "gauge"),
    ("iodoform_channel_failed", "gauge"),
];

const ECM_FAIL_SERVICE: u16 = 4242;

#[test]
fn daemon_metrics_through_the_scrape_token_parse_with_prometheus_client() {
    if !have_prometheus_client() {
        return;
    }
    const PERIOD_MS: u64 = 1000;
    const CYCLE_MS: u64 = 600_000;
    let mut h = Headend::init(BIN, PERIOD_MS, Some(CYCLE_MS));

    // `headend init` made the scrape token, private and not the admin
    // token. An older headend has none: `headend run` makes it, and says so.
    let scrape_path = h.home().join("scrape.token");
    let mode = std::fs::metadata(&scrape_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_ne!(read_token(&scrape_path), h.token);
    std::fs::remove_file(&scrape_path).unwrap();

    // A database fault for one service only: its ECM row cannot be
    // written, so the ECM step fails while that channel exists.
    {
        let db = rusqlite::Connection::open(h.home().join("headend.db")).unwrap();
        db.execute_batch(&format!(
            "CREATE TRIGGER test_no_ecm BEFORE INSERT ON ecms WHEN NEW.service = {ECM_FAIL_SERVICE}
             BEGIN SELECT RAISE(FAIL, 'injected fault'); END"
        ))
        .unwrap();
    }

    h.start();
    let mode = std::fs::metadata(&scrape_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let token = read_token(&scrape_path);
    assert_eq!(token.len(), 64);
    assert_ne!(token, h.token);
    assert!(
        h.log().contains("scrape token"),
        "no log line about the new scrape token:\n{}",
        h.log()
    );

    // Names an operator typed: quotes and backslashes must survive the
    // label escaping.
    let product_name = r#"sport "HD" \ 1"#;
    let channel_name = r#"news "24" \ live"#;
    let p = h.post("/api/v1/products", json!({ "name": product_name }));
    let product = p["id"].as_u64().unwrap().to_string();
    let t_key = p["key_created_ms"].as_u64().unwrap();
    // With an input and an output (a channel has stream metrics once it
    // has a stream), though nothing is fed to it here.
    h.post(
        "/api/v1/channels",
        json!({"name": channel_name, "service_id": 7, "product": product_name,
               "ecm_pid": 0x1E0, "emm_pid": 0x1E1,
               "input": format!("udp://{}", free_udp_addr()),
               "output": format!("udp://{}", free_udp_addr())}),
    );
    let op = operator(&h);
    for id in [11, 12, 13] {
        let (_card, public) = new_card(&op, id);
        register(&h, id, &public);
        h.post(
            "/api/v1/subscriptions",
            plan_subscription(id, product_name, "2099-12-31"),
        );
    }
    // The new subscriptions' EMM-Us go out ahead of the carousel.
    wait_for("the subscriptions' EMM-Us", Duration::from_secs(5), || {
        scrape(&h, &token).value("iodoform_emm_sent_total", &[("kind", "unique")]) >= 3.0
    });
    // And the carousel's queue of changed cards is empty again (it is
    // served at every scheduler step, every 50 ms at most).
    std::thread::sleep(Duration::from_millis(300));

    let s = scrape(&h, &token);
    for (name, kind) in FAMILIES.iter().chain(CHANNEL_FAMILIES) {
        s.family(name, kind);
    }
    assert_eq!(s.value("iodoform_cards", &[("state", "active")]), 3.0);
    assert_eq!(s.value("iodoform_cards", &[("state", "revoked")]), 0.0);
    assert_eq!(s.value("iodoform_products", &[]), 1.0);
    assert_eq!(s.value("iodoform_channels", &[]), 1.0);
    assert_eq!(s.value("iodoform_carousel_cards", &[]), 3.0);
    assert_eq!(s.value("iodoform_emm_cycle_seconds", &[]), 600.0);
    assert_eq!(
        s.value("iodoform_key_renewal_seconds", &[]),
        30.0 * 86_400.0
    );
    assert_eq!(s.value("iodoform_ecm_failures_total", &[]), 0.0);
    assert!(s.value("iodoform_ecm_sent_total", &[]) >= 1.0);
    assert!(s.value("iodoform_api_requests_total", &[]) >= 8.0);

    // The product's key timing, under its escaped name.
    let labels = [("product", product.as_str()), ("name", product_name)];
    let now = headend::daemon::now_ms();
    let age = s.value("iodoform_product_key_age_seconds", &labels);
    let expect_age = (now - t_key) as f64 / 1000.0;
    assert!(
        age >= 0.0 && (age - expect_age).abs() < 2.0,
        "{age} {expect_age}"
    );
    let next = s.value("iodoform_product_next_renewal_seconds", &labels);
    assert!((next - (30.0 * 86_400.0 - age)).abs() < 2.0, "{next} {age}");
    assert_eq!(s.value("iodoform_product_key_switch_pending", &labels), 0.0);
    assert_eq!(s.value("iodoform_product_key_switch_seconds", &labels), 0.0);
    // The channel's, under its escaped name: not on the air, as it has no
    // input, and nothing sent clear.
    let ch = [("channel", channel_name), ("service", "7")];
    assert_eq!(s.value("iodoform_channel_clear_packets_total", &ch), 0.0);
    assert_eq!(s.value("iodoform_channel_input_packets_total", &ch), 0.0);
    assert_eq!(s.value("iodoform_channel_on_air", &ch), 0.0);

    // The EMM backlog: what the carousel owes this cycle (the round has
    // not reached any of the three cards yet, at one EMM-U each every
    // 200 s), each an EMM-U section of the size of those already sent, and
    // what the channel's stream has not sent yet of the EMMs made.
    let sections = h.get("/api/v1/debug/sections?since=0");
    let sizes: BTreeSet<usize> = sections["emms"]["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| hex::decode(x.as_str().unwrap()).unwrap())
        .filter(|x| x[0] == 0x82)
        .map(|x| x.len())
        // The Subset Difference label EMM-Us (kilobytes, once per card)
        // are not carousel EMM-Us.
        .filter(|&n| n < 1000)
        .collect();
    assert_eq!(sizes.len(), 1, "EMM-U sizes {sizes:?}");
    let emm_u = *sizes.iter().next().unwrap() as f64;
    let backlog = s.value("iodoform_emm_backlog_bytes", &[]);
    assert!(backlog >= 3.0 * emm_u, "{backlog}");
    let secs = s.value("iodoform_emm_backlog_seconds", &[]);
    let expect = backlog * 8.0 * 188.0 / 184.0 / 100_000.0;
    assert!((secs - expect).abs() < 1e-9, "{secs} {expect}");
    let b = &h.get("/api/v1/status")["emm_backlog"];
    let num = |k: &str| b[k].as_f64().unwrap();
    assert_eq!(num("carousel_sections"), 3.0, "{b}");
    assert_eq!(num("carousel_bytes"), 3.0 * emm_u, "{b}");
    assert_eq!(num("unsent_bytes"), num("unsent_sections") * emm_u, "{b}");
    assert_eq!(num("bytes"), num("carousel_bytes") + num("unsent_bytes"));
    assert_eq!(num("bitrate"), 100_000.0);

    // A renewal: a new generation, pending until its delivery to the
    // holders (three passes at the EMM bandwidth: well under a second
    // here) has been sent, then the 2 s margin and the next epoch.
    let rotated = h.post("/api/v1/rotate", json!({ "product": product_name }));
    let generation = rotated["rotated"][0]["generation"].as_u64().unwrap();
    let s = scrape(&h, &token);
    assert_eq!(s.value("iodoform_key_rotations_total", &[]), 1.0);
    assert_eq!(s.value("iodoform_product_key_switch_pending", &labels), 1.0);
    let switch = s.value("iodoform_product_key_switch_seconds", &labels);
    let most = (2_000 + 2 * PERIOD_MS) as f64 / 1000.0;
    assert!(switch > 0.0 && switch <= most, "{switch}");
    assert!(s.value("iodoform_product_key_age_seconds", &labels) < 5.0);
    let status = h.get("/api/v1/status");
    let sp = &status["products"][0];
    assert_eq!(sp["key_switch_pending"], true);
    assert!(sp["key_switch_secs"].as_i64().unwrap() <= most.ceil() as i64);
    assert!(sp["key_age_secs"].as_i64().unwrap() < 5);
    assert_eq!(sp["renewal"]["generation"], generation);
    assert_eq!(sp["renewal"]["passes_needed"], 3);

    // `headend status`, as a table and as JSON.
    let cli = |json: bool| {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(h.config());
        if json {
            c.arg("--json");
        }
        let out = c.arg("status").output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let table = cli(false);
    assert!(table.contains("EMM backlog: "), "{table}");
    assert!(
        table.contains("KEY AGE") && table.contains("KEY SWITCH"),
        "{table}"
    );
    // The renewal, or (if it has activated meanwhile) its generation.
    assert!(table.contains(&generation.to_string()), "{table}");
    let v: Value = serde_json::from_str(&cli(true)).unwrap();
    assert_eq!(v["products"][0]["generation"], generation);
    assert!(v["emm_backlog"]["bytes"].is_u64());

    // The scrape token opens /metrics only.
    for (method, path) in [
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/cards"),
        ("POST", "/api/v1/rotate"),
        ("GET", "/api/v1/debug/sections"),
    ] {
        let (st, v) = call_with(&h, method, path, &token);
        assert_eq!(st, 403, "{method} {path}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            !msg.contains('\n') && msg.contains("scrape token") && msg.contains("admin token"),
            "{msg}"
        );
    }
    assert_eq!(
        scrape(&h, &token).value("iodoform_key_rotations_total", &[]),
        1.0,
        "the refused rotation happened"
    );
    // The admin token reads /metrics too; a wrong one reads nothing.
    assert_eq!(get_metrics(&h, &h.token).0, 200);
    assert_eq!(get_metrics(&h, &"0".repeat(64)).0, 401);

    // ECM generation failing: a channel whose ECMs the database refuses.
    h.post(
        "/api/v1/channels",
        json!({"name": "broken", "service_id": ECM_FAIL_SERVICE, "product": product_name,
               "ecm_pid": 0x1D0, "emm_pid": 0x1D1}),
    );
    let mut last = 0.0;
    wait_for("ECM failures counted", Duration::from_secs(5), || {
        let now = scrape(&h, &token).value("iodoform_ecm_failures_total", &[]);
        let growing = last > 0.0 && now > last;
        last = now;
        growing
    });
}

#[test]
fn input_silence_rises_when_the_udp_input_stops() {
    if !have_prometheus_client() {
        return;
    }
    let Some(clip) = testkit::ffmpeg::ffmpeg_ts(4) else {
        return;
    };
    let mut h = Headend::init(BIN, 1000, Some(2000));
    // With the SimulCrypt ECMG, whose families the alert rules use too.
    let mut toml = std::fs::read_to_string(h.config()).unwrap();
    toml.push_str(&format!(
        "\n[simulcrypt.ecmg]\nlisten = \"127.0.0.1:{}\"\n",
        testkit::free_tcp_port()
    ));
    std::fs::write(h.config(), toml).unwrap();
    h.start();
    let token = read_token(&h.home().join("scrape.token"));
    h.post("/api/v1/products", json!({ "name": "basic" }));
    let input = free_udp_addr();
    let air = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    h.post(
        "/api/v1/channels",
        json!({"name": "feed", "service_id": 1, "product": "basic",
               "ecm_pid": 0x1F0, "emm_pid": 0x1F1,
               "input": format!("udp://{input}"),
               "output": format!("udp://{}", air.local_addr().unwrap())}),
    );
    let ch = [("channel", "feed"), ("service", "1")];
    let encoder = UdpEncoder::start(clip, 4.0, input);
    wait_for("input packets", Duration::from_secs(10), || {
        scrape(&h, &token).value("iodoform_channel_input_packets_total", &ch) > 0.0
    });
    std::thread::sleep(Duration::from_millis(1500));
    let fed = scrape(&h, &token);
    let silence = fed.value("iodoform_channel_input_silence_seconds", &ch);
    assert!(silence < 1.0, "silence {silence} while fed");
    assert!(fed.value("iodoform_channel_input_bitrate_bits_per_second", &ch) > 0.0);
    assert!(fed.value("iodoform_channel_scrambled_packets_total", &ch) > 0.0);
    assert_eq!(fed.value("iodoform_channel_clear_packets_total", &ch), 0.0);
    assert_eq!(fed.value("iodoform_channel_failed", &ch), 0.0);

    // The encoder dies.
    encoder.stop();
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    let a = scrape(&h, &token);
    std::thread::sleep(Duration::from_millis(1500));
    let b = scrape(&h, &token);
    let (sa, sb) = (
        a.value("iodoform_channel_input_silence_seconds", &ch),
        b.value("iodoform_channel_input_silence_seconds", &ch),
    );
    let waited = stopped.elapsed().as_secs_f64();
    assert!(sa >= 2.0, "silence {sa} 2.5 s after the input stopped");
    assert!(sb >= sa + 1.0 && sb <= waited + 0.5, "{sa} then {sb}");
    let (pa, pb) = (
        a.value("iodoform_channel_input_packets_total", &ch),
        b.value("iodoform_channel_input_packets_total", &ch),
    );
    assert!(pa >= fed.value("iodoform_channel_input_packets_total", &ch));
    assert_eq!(pa, pb, "input packets grew with no input");
    assert_eq!(b.value("iodoform_channel_clear_packets_total", &ch), 0.0);

    // Every metric the shipped alert rules and dashboard use is one the
    // daemon exports (`up` is Prometheus' own).
    let exported = b.exported_names();
    for (name, kind) in FAMILIES.iter().chain(CHANNEL_FAMILIES) {
        b.family(name, kind);
    }
    let rules =
        std::fs::read_to_string(repo().join("packaging/prometheus/iodoform-alerts.yml")).unwrap();
    let dashboard =
        std::fs::read_to_string(repo().join("packaging/grafana/iodoform-dashboard.json")).unwrap();
    let dash: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let used_rules = metric_names(&rules);
    let used_dash = metric_names(&exprs.join("\n"));
    assert!(used_rules.len() >= 10 && used_dash.len() >= 20);
    for name in used_rules.iter().chain(&used_dash) {
        assert!(
            exported.contains(name),
            "{name} (alert rules or dashboard) is not exported; the daemon has {exported:?}"
        );
    }
    // The rules cover each thing an operator must be paged for.
    for must in [
        "iodoform_channel_clear_packets_total",
        "iodoform_channel_on_air",
        "iodoform_channel_failed",
        "iodoform_channel_input_silence_seconds",
        "iodoform_emm_backlog_seconds",
        "iodoform_ecm_failures_total",
        "iodoform_product_key_switch_pending",
        "iodoform_product_key_age_seconds",
        "iodoform_mux_connected",
    ] {
        assert!(used_rules.contains(must), "no alert rule uses {must}");
    }
    assert!(rules.contains("up{job=\"iodoform-headend\"} == 0"));
}

/// Every `expr` string in a dashboard.
fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// The `iodoform_*` metric names in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("iodoform_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let before_ok =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if before_ok {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn alert_rules_pass_promtool() {
    let dir = repo().join("packaging/prometheus");
    for args in [
        ["check", "rules", "iodoform-alerts.yml"],
        ["test", "rules", "iodoform-alerts.test.yml"],
    ] {
        let out = match Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                missing(&format!(
                    "promtool not found ({e}); it comes with Debian's `prometheus` package"
                ));
                return;
            }
        };
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
