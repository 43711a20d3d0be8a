//! The answers of the admin API as an operator reads them: tables, the
//! status report, and why each channel that is not on the air is not.

use serde_json::{json, Value};

/// The channels of `headend status`: a line each, then why each one that
/// is not on the air is not, and what to do.
fn channel_states(v: &Value) {
    let bitrate = |c: &Value| match c.get("input_bitrate_bps").and_then(Value::as_u64) {
        Some(b) if b >= 1_000_000 => format!("{:.1} Mbit/s", b as f64 / 1e6),
        Some(b) if b > 0 => format!("{:.0} kbit/s", b as f64 / 1e3),
        Some(_) => "0".into(),
        None => "-".into(),
    };
    let silent = |c: &Value| {
        c.get("input_silence_seconds")
            .and_then(Value::as_f64)
            .map(|x| format!("{x:.1} s"))
            .unwrap_or_else(|| "-".into())
    };
    table(
        &[
            "SERVICE",
            "CHANNEL",
            "STATE",
            "CAUSE",
            "INPUT PACKETS",
            "INPUT RATE",
            "SINCE INPUT",
        ],
        &rows(v, |c| {
            vec![
                s(c, "service_id"),
                s(c, "name"),
                s(c, "state"),
                s(c, "cause"),
                s(c, "input_packets"),
                bitrate(c),
                silent(c),
            ]
        }),
    );
    for c in v.as_array().into_iter().flatten() {
        let name = s(c, "name");
        if let Some(e) = c.get("error").and_then(Value::as_str) {
            let retry = c
                .get("retry_in_seconds")
                .and_then(Value::as_f64)
                .map(|r| format!(" (tried again in {r:.0} s)"))
                .unwrap_or_default();
            cli::outln!("  {name}: {e}{retry}");
        } else if let Some(fix) = c.get("fix").and_then(Value::as_str) {
            let why = c
                .get("detail")
                .and_then(Value::as_str)
                .or_else(|| c.get("cause").and_then(Value::as_str))
                .unwrap_or("");
            cli::outln!("  {name}: {why}: {fix}");
        }
    }
}

pub(crate) enum View {
    Products,
    Channels,
    Cards,
    Card,
    Subscription,
    Rotated,
    Status,
    Done(String),
}

/// A field of an answer as a table cell: `-` when absent or null.
pub(crate) fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A duration for a person: `45s`, `12m 5s`, `3h 20m`, `29d 23h`;
/// negative as `-5s`.
fn human_secs(secs: i64) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let t = secs.unsigned_abs();
    let (d, h, m, sec) = (t / 86_400, t / 3600 % 24, t / 60 % 60, t % 60);
    let body = if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    };
    format!("{sign}{body}")
}

fn ms_date(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_u64)
        .map(|ms| headend::state::rfc3339(ms / 1000))
        .unwrap_or_else(|| "-".into())
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        cli::outln!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// The rows of an array, each its `keys` as text, in that order.
fn fields(v: &Value, keys: &[&str]) -> Vec<Vec<String>> {
    rows(v, |r| keys.iter().map(|k| s(r, k)).collect())
}

fn rows(v: &Value, f: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    match v {
        Value::Array(a) => a.iter().map(f).collect(),
        other => vec![f(other)],
    }
}

impl View {
    pub(crate) fn print(&self, v: &Value) {
        match self {
            View::Products => table(
                &["ID", "NAME", "GENERATION", "ACTIVE", "NEXT RENEWAL"],
                &rows(v, |p| {
                    vec![
                        s(p, "id"),
                        s(p, "name"),
                        s(p, "generation"),
                        s(p, "active_generation"),
                        ms_date(p, "next_renewal_ms"),
                    ]
                }),
            ),
            View::Channels => table(
                &[
                    "SERVICE", "NAME", "STATE", "PRODUCT", "ECM PID", "EMM PID", "MATURITY",
                    "INPUT", "OUTPUT",
                ],
                &rows(v, |c| {
                    let pid = |k: &str| {
                        c.get(k)
                            .and_then(Value::as_u64)
                            .map(|p| format!("{p:#06x}"))
                            .unwrap_or_default()
                    };
                    vec![
                        s(c, "service_id"),
                        s(c, "name"),
                        s(c, "state"),
                        s(c, "product"),
                        pid("ecm_pid"),
                        pid("emm_pid"),
                        s(c, "maturity"),
                        s(c, "input"),
                        s(c, "output"),
                    ]
                }),
            ),
            View::Cards => table(
                &["CARD", "STATE", "CREATED", "PAIRED"],
                &rows(v, |c| {
                    vec![
                        s(c, "card_id"),
                        s(c, "state"),
                        s(c, "created"),
                        if c.get("paired_receiver").is_some_and(|x| !x.is_null()) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                    ]
                }),
            ),
            View::Card => {
                cli::outln!("card {}  ({})", s(v, "card_id"), s(v, "state"));
                cli::outln!("  operator     {}", s(v, "operator_id"));
                cli::outln!("  public key   {}", s(v, "public_key"));
                cli::outln!("  created      {}", s(v, "created"));
                if v.get("revoked").is_some_and(|x| !x.is_null()) {
                    cli::outln!("  revoked      {}", s(v, "revoked"));
                }
                cli::outln!("  paired with  {}", s(v, "paired_receiver"));
                let subs = v.get("subscriptions").cloned().unwrap_or(json!([]));
                if subs.as_array().is_some_and(|a| !a.is_empty()) {
                    cli::outln!();
                    View::Subscription.print(&subs);
                }
            }
            View::Subscription => table(
                &["CARD", "PRODUCT", "NAME", "START", "UNTIL", "LAPSED"],
                &fields(
                    v,
                    &[
                        "card_id",
                        "product",
                        "product_name",
                        "start",
                        "until",
                        "lapsed",
                    ],
                ),
            ),
            View::Rotated => table(
                &["PRODUCT", "NAME", "GENERATION", "IN ECMS FROM"],
                &fields(
                    &v["rotated"],
                    &["product", "name", "generation", "activate_at"],
                ),
            ),
            View::Status => {
                cli::outln!("run {}  at {}", s(v, "run"), s(v, "now"));
                cli::outln!(
                    "crypto period {} ms (epoch {}), EMM cycle {} ms, key renewal every {} s",
                    s(v, "crypto_period_ms"),
                    s(v, "epoch"),
                    s(v, "emm_cycle_ms"),
                    s(v, "key_renewal_secs")
                );
                cli::outln!(
                    "cards: {} active, {} revoked; {} in the EMM carousel, {} waiting for a changed entitlement",
                    s(&v["cards"], "active"),
                    s(&v["cards"], "revoked"),
                    s(v, "carousel_cards"),
                    s(v, "carousel_pending")
                );
                let b = &v["emm_backlog"];
                cli::outln!(
                    "EMM backlog: {} bytes, about {} s to send at {} kbit/s ({} EMM-Us the carousel owes this cycle, {} sections not yet sent by the slowest channel)",
                    s(b, "bytes"),
                    s(b, "seconds"),
                    b["bitrate"].as_u64().map_or("-".into(), |r| (r / 1000).to_string()),
                    s(b, "carousel_sections"),
                    s(b, "unsent_sections")
                );
                cli::outln!();
                table(
                    &[
                        "ID",
                        "NAME",
                        "GENERATION",
                        "IN ECMS",
                        "KEY AGE",
                        "NEXT RENEWAL",
                        "KEY SWITCH",
                    ],
                    &rows(&v["products"], |p| {
                        let secs = |k: &str| p[k].as_i64().map_or("-".into(), human_secs);
                        let switch = if p["key_switch_pending"].as_bool() == Some(true) {
                            format!(
                                "generation {} in {}",
                                s(p, "generation"),
                                secs("key_switch_secs")
                            )
                        } else {
                            "-".into()
                        };
                        vec![
                            s(p, "id"),
                            s(p, "name"),
                            s(p, "generation"),
                            s(p, "active_generation"),
                            secs("key_age_secs"),
                            format!(
                                "in {} ({})",
                                secs("next_renewal_secs"),
                                ms_date(p, "next_renewal_ms")
                            ),
                            switch,
                        ]
                    }),
                );
                cli::outln!();
                table(
                    &["SERVICE", "PRODUCT", "GENERATION", "EPOCH"],
                    &fields(
                        &v["ecms"],
                        &["service_id", "product", "generation", "epoch"],
                    ),
                );
                if v["channels"].as_array().is_some_and(|a| !a.is_empty()) {
                    cli::outln!();
                    channel_states(&v["channels"]);
                }
            }
            View::Done(msg) => cli::outln!("{msg}"),
        }
    }
}
