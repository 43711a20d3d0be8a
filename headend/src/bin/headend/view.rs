//! The answers of the admin API as an operator reads them: tables, the
//! status report, and why each channel that is not on the air is not.
//! Each answer is read into its [`api`] type first, and printed from its
//! fields.

use api::{CardView, ChannelStatus, ChannelView, Product, Rotation, Status, SubscriptionView};
use headend::client::ClientError;
use serde::de::DeserializeOwned;
use serde_json::Value;

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

/// An answer as its type; a refusal naming the fix when it is not one.
pub(crate) fn typed<T: DeserializeOwned>(v: &Value) -> Result<T, ClientError> {
    T::deserialize(v).map_err(|e| ClientError::Api {
        status: 0,
        message: format!(
            "the headend's answer is not what this CLI reads ({e}); \
             use the CLI of the daemon's version, or --json to see the answer"
        ),
    })
}

/// An answer that is a list, or one item (the answer of an add).
fn many<T: DeserializeOwned>(v: &Value) -> Result<Vec<T>, ClientError> {
    match v {
        Value::Array(_) => typed(v),
        other => typed(other).map(|t| vec![t]),
    }
}

/// An optional field as a table cell: `-` when absent.
fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), T::to_string)
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

fn ms_date(ms: u64) -> String {
    headend::state::rfc3339(ms / 1000)
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

fn products(ps: &[Product]) {
    table(
        &["ID", "NAME", "GENERATION", "ACTIVE", "NEXT RENEWAL"],
        &ps.iter()
            .map(|p| {
                vec![
                    p.id.to_string(),
                    p.name.clone(),
                    p.generation.to_string(),
                    p.active_generation.to_string(),
                    ms_date(p.next_renewal_ms),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

fn channels(cs: &[ChannelView]) {
    table(
        &[
            "SERVICE", "NAME", "STATE", "PRODUCT", "ECM PID", "EMM PID", "MATURITY", "INPUT",
            "OUTPUT",
        ],
        &cs.iter()
            .map(|v| {
                let c = &v.channel;
                vec![
                    c.service_id.to_string(),
                    c.name.clone(),
                    opt(&v.report.as_ref().map(|r| r.state.clone())),
                    c.product.to_string(),
                    format!("{:#06x}", c.ecm_pid),
                    format!("{:#06x}", c.emm_pid),
                    c.maturity.to_string(),
                    opt(&c.input),
                    opt(&c.output),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

fn cards(cs: &[CardView]) {
    table(
        &["CARD", "STATE", "CREATED", "PAIRED"],
        &cs.iter()
            .map(|c| {
                vec![
                    c.card_id.to_string(),
                    c.state.clone(),
                    c.created.clone(),
                    if c.paired_receiver.is_some() {
                        "yes"
                    } else {
                        "no"
                    }
                    .into(),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

fn card(c: &CardView) {
    cli::outln!("card {}  ({})", c.card_id, c.state);
    cli::outln!("  operator     {}", c.operator_id);
    cli::outln!("  public key   {}", c.public_key);
    cli::outln!("  created      {}", c.created);
    if let Some(r) = &c.revoked {
        cli::outln!("  revoked      {r}");
    }
    cli::outln!("  paired with  {}", opt(&c.paired_receiver));
    if !c.subscriptions.is_empty() {
        cli::outln!();
        subscriptions(&c.subscriptions);
    }
}

fn subscriptions(ss: &[SubscriptionView]) {
    table(
        &["CARD", "PRODUCT", "NAME", "START", "UNTIL", "LAPSED"],
        &ss.iter()
            .map(|s| {
                vec![
                    s.card_id.to_string(),
                    s.product.to_string(),
                    s.product_name.clone(),
                    s.start.clone(),
                    s.until.clone(),
                    s.lapsed.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

fn rotated(r: &Rotation) {
    table(
        &["PRODUCT", "NAME", "GENERATION", "IN ECMS FROM"],
        &r.rotated
            .iter()
            .map(|p| {
                vec![
                    p.product.to_string(),
                    p.name.clone(),
                    p.generation.to_string(),
                    p.activate_at.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

/// The lines of `headend status` on the clock check, a restored backup
/// and the epochs held after a start.
fn restore_and_clock(v: &Status) {
    let c = &v.clock;
    if c.refused {
        cli::outln!(
            "CLOCK REFUSED: {} s ahead of the last time put on the air ({}), more than max_clock_jump_secs ({}); no ECM or EMM is made: {}",
            c.ahead_secs.unwrap_or(0),
            c.persisted.as_deref().unwrap_or("-"),
            c.max_jump_secs,
            c.fix.as_deref().unwrap_or("")
        );
    }
    if let Some(r) = &v.restored {
        let when = r
            .restored
            .as_deref()
            .map(|t| format!(", restored at {t}"))
            .unwrap_or_default();
        if r.renewed.is_empty() {
            cli::outln!(
                "RESTORED from a backup taken at {}{when}: every product key is renewed once the clock passes its check",
                r.backup_taken
            );
        } else {
            let names: Vec<String> = r
                .renewed
                .iter()
                .map(|p| format!("{} (generation {})", p.name, p.generation))
                .collect();
            cli::outln!(
                "RESTORED from a backup taken at {}{when}: product keys renewed so that entitlements the backup lacks end: {}",
                r.backup_taken,
                names.join(", ")
            );
        }
    }
    if let Some(e) = v.ecms_fresh_from_epoch {
        cli::outln!(
            "ECMs: none sealed fresh before epoch {e} (an earlier run may have sealed epochs this database does not record); channels without a stored ECM are withheld until then"
        );
    }
}

fn status(v: &Status) {
    cli::outln!("run {}  at {}", v.run, v.now);
    restore_and_clock(v);
    cli::outln!(
        "crypto period {} ms (epoch {}), EMM cycle {} ms, key renewal every {} s",
        v.crypto_period_ms,
        v.epoch,
        v.emm_cycle_ms,
        v.key_renewal_secs
    );
    cli::outln!(
        "cards: {} active, {} revoked; {} in the EMM carousel, {} waiting for a changed entitlement",
        v.cards.active,
        v.cards.revoked,
        v.carousel_cards,
        v.carousel_pending
    );
    let b = &v.emm_backlog;
    cli::outln!(
        "EMM backlog: {} bytes, about {:?} s to send at {} kbit/s ({} EMM-Us the carousel owes this cycle, {} sections not yet sent by the slowest channel)",
        b.bytes,
        b.seconds,
        b.bitrate / 1000,
        b.carousel_sections,
        b.unsent_sections
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
        &v.products
            .iter()
            .map(|s| {
                let p = &s.product;
                let switch = match (&s.renewal, s.key_switch_pending) {
                    (Some(r), _) if r.delivered => format!(
                        "generation {} delivered ({}), ECMs switch in {}",
                        r.generation,
                        r.reason,
                        human_secs(s.key_switch_secs)
                    ),
                    (Some(r), _) => format!(
                        "generation {} {} ({}): pass {}/{} to {} cards, {} EMMs left, ECMs switch in about {}",
                        r.generation,
                        r.state,
                        r.reason,
                        r.passes_done,
                        r.passes_needed,
                        r.holders,
                        r.emms_left,
                        human_secs(s.key_switch_secs)
                    ),
                    (None, true) => format!(
                        "generation {} in {}",
                        p.generation,
                        human_secs(s.key_switch_secs)
                    ),
                    (None, false) => "-".into(),
                };
                vec![
                    p.id.to_string(),
                    p.name.clone(),
                    p.generation.to_string(),
                    p.active_generation.to_string(),
                    human_secs(s.key_age_secs),
                    format!(
                        "in {} ({})",
                        human_secs(s.next_renewal_secs),
                        ms_date(p.next_renewal_ms)
                    ),
                    switch,
                ]
            })
            .collect::<Vec<_>>(),
    );
    cli::outln!();
    table(
        &["SERVICE", "PRODUCT", "GENERATION", "EPOCH"],
        &v.ecms
            .iter()
            .map(|e| {
                vec![
                    e.service_id.to_string(),
                    e.product.to_string(),
                    e.generation.to_string(),
                    e.epoch.to_string(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    if !v.channels.is_empty() {
        cli::outln!();
        channel_states(&v.channels);
    }
    if !v.muxes.is_empty() {
        cli::outln!();
        mux_states(&v.muxes);
    }
    if let Some(e) = &v.ecmg {
        cli::outln!();
        ecmg(e);
    }
}

/// The SimulCrypt MUXes of `headend status`: a line each, then the last
/// error of each one that is not connected.
fn mux_states(ms: &[api::MuxStatus]) {
    table(
        &[
            "MUX",
            "ADDRESS",
            "CLIENT ID",
            "STATE",
            "ALLOCATED",
            "EMM BYTES SENT",
            "BACKLOG",
            "DROPPED",
            "RECONNECTS",
            "ERRORS",
        ],
        &ms.iter()
            .map(|m| {
                let errors: Vec<String> = m
                    .errors
                    .iter()
                    .chain(&m.faults)
                    .map(|(k, v)| format!("{k}×{v}"))
                    .collect();
                vec![
                    m.name.clone(),
                    format!("{} ({})", m.address, m.data_provision),
                    format!("0x{:08X}", m.client_id),
                    if m.connected {
                        "connected"
                    } else {
                        "not connected"
                    }
                    .into(),
                    m.allocated_kbps
                        .map(|k| format!("{k} of {} kbit/s", m.requested_kbps))
                        .unwrap_or_else(|| "-".into()),
                    m.emm_bytes_sent.to_string(),
                    m.backlog_sections.to_string(),
                    m.emm_sections_dropped.to_string(),
                    m.reconnects.to_string(),
                    if errors.is_empty() {
                        "-".into()
                    } else {
                        errors.join(" ")
                    },
                ]
            })
            .collect::<Vec<_>>(),
    );
    for m in ms.iter().filter(|m| !m.connected) {
        if let Some(e) = &m.last_error {
            cli::outln!("  {}: {e}", m.name);
        }
    }
}

/// The SimulCrypt ECMG's part of `headend status`: a summary line, the
/// errors sent by code, and a line per SCS connection.
fn ecmg(e: &api::EcmgStatus) {
    cli::outln!(
        "SimulCrypt ECMG on {} (Super_CAS_id {}): {} SCS connections, {} channels, {} streams; {} CW_provisions, {} ECMs sent",
        e.listen,
        e.super_cas_id,
        e.connections,
        e.channels,
        e.streams,
        e.ecm_requests,
        e.ecm_responses
    );
    if !e.errors.is_empty() {
        let errors: Vec<String> = e.errors.iter().map(|(c, n)| format!("{c} x{n}")).collect();
        cli::outln!("ECMG errors sent, by error_status: {}", errors.join(", "));
    }
    if !e.peers.is_empty() {
        table(
            &["SCS", "CHANNEL", "STREAMS", "ECMS", "ERRORS", "CONNECTED"],
            &e.peers
                .iter()
                .map(|p| {
                    vec![
                        p.address.clone(),
                        p.channel.map_or("-".into(), |c| c.to_string()),
                        p.streams.to_string(),
                        p.ecms.to_string(),
                        p.errors.to_string(),
                        human_secs(p.connected_secs as i64),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
}

/// The channels of `headend status`: a line each, then why each one that
/// is not on the air is not, and what to do.
fn channel_states(cs: &[ChannelStatus]) {
    table(
        &[
            "SERVICE",
            "CHANNEL",
            "STATE",
            "CAUSE",
            "INPUT PACKETS",
            "INPUT RATE",
            "SINCE INPUT",
            "INPUT CC ERRORS",
        ],
        &cs.iter()
            .map(|c| {
                let r = c.run.as_ref();
                let bitrate = match r.map(|r| r.input_bitrate_bps) {
                    Some(b) if b >= 1_000_000 => format!("{:.1} Mbit/s", b as f64 / 1e6),
                    Some(b) if b > 0 => format!("{:.0} kbit/s", b as f64 / 1e3),
                    Some(_) => "0".into(),
                    None => "-".into(),
                };
                vec![
                    c.channel.service_id.to_string(),
                    c.channel.name.clone(),
                    opt(&r.map(|r| r.state.clone())),
                    opt(&r.and_then(|r| r.cause.clone())),
                    opt(&r.map(|r| r.input_packets)),
                    bitrate,
                    opt(&r
                        .and_then(|r| r.input_silence_seconds)
                        .map(|x| format!("{x:.1} s"))),
                    opt(&r.and_then(|r| r.health.as_ref()).map(|h| h.input_cc_errors)),
                ]
            })
            .collect::<Vec<_>>(),
    );
    for c in cs {
        let name = &c.channel.name;
        let Some(r) = &c.run else { continue };
        if let Some(e) = &r.error {
            let retry = r
                .retry_in_seconds
                .map(|s| format!(" (tried again in {s:.0} s)"))
                .unwrap_or_default();
            cli::outln!("  {name}: {e}{retry}");
        } else if let Some(fix) = &r.fix {
            let why = r.detail.as_deref().or(r.cause.as_deref()).unwrap_or("");
            cli::outln!("  {name}: {why}: {fix}");
        }
    }
}

impl View {
    /// Prints an answer, read into its type.
    pub(crate) fn print(&self, v: &Value) -> Result<(), ClientError> {
        match self {
            View::Products => products(&many(v)?),
            View::Channels => channels(&many(v)?),
            View::Cards => cards(&many(v)?),
            View::Card => card(&typed(v)?),
            View::Subscription => subscriptions(&many(v)?),
            View::Rotated => rotated(&typed(v)?),
            View::Status => status(&typed(v)?),
            View::Done(msg) => cli::outln!("{msg}"),
        }
        Ok(())
    }
}
