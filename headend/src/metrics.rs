//! `/metrics`, in the Prometheus text exposition format (version 0.0.4).
//!
//! [`Exposition`] writes the text: one family at a time (`# HELP`,
//! `# TYPE`, then its samples), with label values and help text escaped as
//! the format requires (a label value's `\`, `"` and newline; a help
//! text's `\` and newline), so that a channel named by an operator can never
//! break the page. Other parts of the daemon add their families through
//! [`Metrics::add_collector`].

use std::collections::HashSet;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A sample's value: an integer, or a float (written so that Prometheus
/// parses it: `NaN`, `+Inf`, `-Inf` or a plain decimal).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Value::Int(u64::from(v))
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::Int(v as u64)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(u64::from(v))
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) if v.is_nan() => f.write_str("NaN"),
            Value::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Value::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            // Rust's shortest round-trip form, never an exponent.
            Value::Float(v) => write!(f, "{v}"),
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*` (metric names) or, without `:`, label names.
fn valid_name(name: &str, colon: bool) -> bool {
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic() || c == '_' || (colon && c == ':') || (!first && c.is_ascii_digit())
    };
    let mut chars = name.chars();
    chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
}

/// Escapes a label value: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The text of one scrape, built family by family.
///
/// ```
/// use headend::metrics::Exposition;
/// let mut e = Exposition::new();
/// e.gauge("iodoform_channel_on_air", "1 when the channel is on the air.")
///     .sample(&[("channel", "news \"24\""), ("service", "1")], true);
/// e.counter("iodoform_example_total", "An example.").sample(&[], 3u64);
/// let text = e.finish();
/// assert!(text.contains("iodoform_channel_on_air{channel=\"news \\\"24\\\"\",service=\"1\"} 1\n"));
/// ```
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
    names: HashSet<String>,
}

/// One family being written: add its samples, then drop it.
#[derive(Debug)]
pub struct Family<'a> {
    e: &'a mut Exposition,
    name: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family. Its name must be a valid metric name and must not
    /// have been used in this exposition (a programming error: panics in
    /// debug builds; in release the family is written anyway).
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> Family<'_> {
        debug_assert!(valid_name(name, true), "bad metric name {name:?}");
        let fresh = self.names.insert(name.to_string());
        debug_assert!(fresh, "metric family {name} written twice");
        let _ = write!(self.text, "# HELP {name} ");
        escape_help(help, &mut self.text);
        let _ = writeln!(self.text, "\n# TYPE {name} {}", kind.as_str());
        Family {
            e: self,
            name: name.to_string(),
        }
    }

    /// Starts a counter family (the name should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str) -> Family<'_> {
        debug_assert!(name.ends_with("_total"), "counter {name} without _total");
        self.family(name, help, Kind::Counter)
    }

    /// Starts a gauge family.
    pub fn gauge(&mut self, name: &str, help: &str) -> Family<'_> {
        self.family(name, help, Kind::Gauge)
    }

    /// Whether a family of this name has been written.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// The exposition text.
    pub fn finish(self) -> String {
        self.text
    }
}

impl Family<'_> {
    /// Adds a sample with these labels (name, value); values are escaped.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Into<Value>) -> &mut Self {
        let t = &mut self.e.text;
        t.push_str(&self.name);
        if !labels.is_empty() {
            t.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                debug_assert!(valid_name(k, false), "bad label name {k:?}");
                if i > 0 {
                    t.push(',');
                }
                t.push_str(k);
                t.push_str("=\"");
                escape_label_value(v, t);
                t.push('"');
            }
            t.push('}');
        }
        let _ = writeln!(t, " {}", value.into());
        self
    }
}

/// Adds families to a scrape; registered with [`Metrics::add_collector`].
pub type Collector = Arc<dyn Fn(&mut Exposition) + Send + Sync>;

/// The daemon's counters (every one only grows), and the collectors that
/// add their families to each scrape.
#[derive(Debug, Default)]
pub struct Metrics {
    pub emm_u_sent: AtomicU64,
    pub emm_g_sent: AtomicU64,
    pub ecm_sent: AtomicU64,
    /// Scheduler steps whose ECM generation failed (no ECM made or
    /// published for at least one service in that step).
    pub ecm_failures: AtomicU64,
    pub rotations: AtomicU64,
    pub carousel_cycles: AtomicU64,
    pub api_requests: AtomicU64,
    pub api_client_errors: AtomicU64,
    pub internal_errors: AtomicU64,
    collectors: Collectors,
}

#[derive(Default)]
struct Collectors(Mutex<Vec<Collector>>);

impl std::fmt::Debug for Collectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|v| v.len()).unwrap_or(0);
        write!(f, "Collectors({n})")
    }
}

/// A product's key timing, read from the daemon's state at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProductKeyGauge {
    pub product: u32,
    pub name: String,
    /// Seconds since the newest generation of the key was made.
    pub key_age_seconds: f64,
    /// Seconds until the scheduled renewal (negative if overdue).
    pub next_renewal_seconds: f64,
    /// The newest generation is not yet the one ECMs are sealed under.
    pub key_switch_pending: bool,
    /// Seconds until ECMs use the newest generation; 0 when none is
    /// pending.
    pub key_switch_seconds: f64,
    /// The pending renewal's delivery: TS bytes still to send, and the
    /// time that takes at the EMM bandwidth (0 when none is pending or it
    /// is delivered).
    pub renewal_bytes_left: u64,
    pub renewal_delivery_seconds: f64,
}

/// The EMM backlog (see [`EMM_BACKLOG_HELP`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EmmBacklog {
    /// EMM-U section bytes the carousel still owes in its current cycle:
    /// the cards not yet visited in this round and the cards queued for a
    /// changed entitlement, at the mean EMM-U section size.
    pub carousel_bytes: u64,
    /// EMM-U sections the carousel still owes in its current cycle.
    pub carousel_sections: u64,
    /// EMM section bytes published that the slowest channel stream has not
    /// yet sent (0 when no channel is streaming).
    pub unsent_bytes: u64,
    pub unsent_sections: u64,
    /// The EMM bandwidth of a channel, bit/s of TS.
    pub bitrate: u64,
}

/// TS bytes per section payload byte: 188-byte packets carry 184 bytes.
const TS_OVERHEAD: f64 = 188.0 / 184.0;

impl EmmBacklog {
    pub fn bytes(&self) -> u64 {
        self.carousel_bytes + self.unsent_bytes
    }

    /// The time to send [`EmmBacklog::bytes`] at the EMM bandwidth,
    /// counting the TS packet headers.
    pub fn seconds(&self) -> f64 {
        if self.bitrate == 0 {
            return 0.0;
        }
        self.bytes() as f64 * 8.0 * TS_OVERHEAD / self.bitrate as f64
    }
}

/// The help text of `iodoform_emm_backlog_bytes`, which defines it.
pub const EMM_BACKLOG_HELP: &str = "EMM bytes the headend still owes its cards: the EMM-U sections the carousel has yet to make in its current cycle (cards not yet visited in this round plus cards queued after a changed entitlement, at the mean EMM-U section size so far), plus EMM sections already made that the slowest channel stream has not yet sent.";

/// Gauges read from the daemon's state at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub cards_active: u64,
    pub cards_revoked: u64,
    pub products: u64,
    pub channels: u64,
    pub carousel_cards: u64,
    pub run: u64,
    /// The config's timing, for alert thresholds.
    pub emm_cycle_seconds: f64,
    pub key_renewal_seconds: f64,
    pub crypto_period_seconds: f64,
    pub product_keys: Vec<ProductKeyGauge>,
    pub emm_backlog: EmmBacklog,
    /// The clock is refused (more than `max_clock_jump_secs` ahead of the
    /// last time persisted), and by how much.
    pub clock_jump_refused: bool,
    pub clock_ahead_seconds: f64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `c` to every scrape from now on: it writes its own families
    /// (each name once per scrape) after the daemon's. It must be quick
    /// and must not take the core's lock.
    pub fn add_collector(&self, c: Collector) {
        self.collectors
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
    }

    /// The exposition text: the daemon's families, then the collectors'.
    pub fn render(&self, g: &Gauges) -> String {
        let mut e = Exposition::new();
        self.render_into(&mut e, g);
        let collectors = self
            .collectors
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for c in collectors {
            c(&mut e);
        }
        e.finish()
    }

    /// The daemon's own families.
    pub fn render_into(&self, e: &mut Exposition, g: &Gauges) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        e.counter("iodoform_emm_sent_total", "EMM sections made, by kind.")
            .sample(&[("kind", "unique")], get(&self.emm_u_sent))
            .sample(&[("kind", "global")], get(&self.emm_g_sent));
        for (name, help, c) in [
            (
                "iodoform_ecm_sent_total",
                "ECMs made (one per service and crypto period; repetitions on the air are not counted).",
                &self.ecm_sent,
            ),
            (
                "iodoform_ecm_failures_total",
                "Scheduler steps whose ECM generation failed: no new ECM was made for the services due one (see the log). Each failing step counts once; the step is retried at once.",
                &self.ecm_failures,
            ),
            ("iodoform_key_rotations_total", "Product period key renewals.", &self.rotations),
            (
                "iodoform_emm_carousel_cycles_total",
                "Completed EMM-U carousel cycles.",
                &self.carousel_cycles,
            ),
            ("iodoform_api_requests_total", "Admin API requests.", &self.api_requests),
        ] {
            e.counter(name, help).sample(&[], get(c));
        }
        e.counter(
            "iodoform_errors_total",
            "Errors: API requests refused as bad input, and internal errors.",
        )
        .sample(&[("kind", "client")], get(&self.api_client_errors))
        .sample(&[("kind", "internal")], get(&self.internal_errors));

        e.gauge("iodoform_cards", "Registered cards, by state.")
            .sample(&[("state", "active")], g.cards_active)
            .sample(&[("state", "revoked")], g.cards_revoked);
        for (name, help, v) in [
            ("iodoform_products", "Products.", Value::from(g.products)),
            ("iodoform_channels", "Channels.", g.channels.into()),
            (
                "iodoform_carousel_cards",
                "Cards in the EMM-U carousel (entitled or paired).",
                g.carousel_cards.into(),
            ),
            (
                "iodoform_run",
                "The daemon's run number (starts since the database was made).",
                g.run.into(),
            ),
            (
                "iodoform_emm_cycle_seconds",
                "The configured EMM-U carousel cycle (emm_cycle_ms), in seconds.",
                g.emm_cycle_seconds.into(),
            ),
            (
                "iodoform_key_renewal_seconds",
                "The configured period key renewal interval (key_renewal_secs).",
                g.key_renewal_seconds.into(),
            ),
            (
                "iodoform_crypto_period_seconds",
                "The configured crypto period (crypto_period_ms), in seconds.",
                g.crypto_period_seconds.into(),
            ),
            ("iodoform_emm_backlog_bytes", EMM_BACKLOG_HELP, g.emm_backlog.bytes().into()),
            (
                "iodoform_emm_backlog_seconds",
                "Estimated time to deliver iodoform_emm_backlog_bytes at a channel's EMM bandwidth (bytes x 8 x 188/184 / bit/s); alert when it exceeds iodoform_emm_cycle_seconds.",
                g.emm_backlog.seconds().into(),
            ),
            (
                "iodoform_clock_jump_refused",
                "1 while the clock is more than max_clock_jump_secs ahead of the last time the headend put on the air: it makes no ECM or EMM until an operator runs `headend clock accept`.",
                g.clock_jump_refused.into(),
            ),
            (
                "iodoform_clock_ahead_seconds",
                "How far the refused clock is ahead of the last time put on the air; 0 when not refused.",
                g.clock_ahead_seconds.into(),
            ),
        ] {
            e.gauge(name, help).sample(&[], v);
        }

        let ids: Vec<(String, &ProductKeyGauge)> = g
            .product_keys
            .iter()
            .map(|p| (p.product.to_string(), p))
            .collect();
        let mut per_product = |name: &str, help: &str, f: &dyn Fn(&ProductKeyGauge) -> Value| {
            let mut fam = e.gauge(name, help);
            for (id, p) in &ids {
                fam.sample(&[("product", id), ("name", &p.name)], f(p));
            }
        };
        per_product(
            "iodoform_product_key_age_seconds",
            "Seconds since the product's newest period key generation was made.",
            &|p| p.key_age_seconds.into(),
        );
        per_product(
            "iodoform_product_next_renewal_seconds",
            "Seconds until the product's scheduled key renewal (negative if overdue).",
            &|p| p.next_renewal_seconds.into(),
        );
        per_product(
            "iodoform_product_key_switch_pending",
            "1 while the product's newest key generation is not yet used in ECMs (it is being sent to the cards first).",
            &|p| p.key_switch_pending.into(),
        );
        per_product(
            "iodoform_product_key_switch_seconds",
            "Seconds until ECMs use the product's pending key generation; 0 when none is pending.",
            &|p| p.key_switch_seconds.into(),
        );
        per_product(
            "iodoform_product_renewal_bytes_left",
            "TS bytes of the pending key renewal's delivery (its passes over the holders, or its Subset Difference EMM-Gs) still to send; 0 when none is pending.",
            &|p| p.renewal_bytes_left.into(),
        );
        per_product(
            "iodoform_product_renewal_delivery_seconds",
            "Estimated seconds to send the rest of the pending key renewal's delivery at the EMM bandwidth; ECMs switch to the new key after it.",
            &|p| p.renewal_delivery_seconds.into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let m = Metrics::default();
        Metrics::inc(&m.ecm_sent);
        Metrics::add(&m.emm_u_sent, 3);
        let text = m.render(&Gauges {
            cards_active: 2,
            ..Gauges::default()
        });
        assert!(
            text.contains("# TYPE iodoform_ecm_sent_total counter\niodoform_ecm_sent_total 1\n")
        );
        assert!(text.contains("iodoform_emm_sent_total{kind=\"unique\"} 3\n"));
        assert!(text.contains("iodoform_cards{state=\"active\"} 2\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<f64>().unwrap();
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Exposition::new();
        e.gauge("a_gauge", "line one\nback\\slash \"quoted\"")
            .sample(&[("channel", "a\\b\"c\nd"), ("service", "7")], 1.5)
            .sample(&[("channel", "plain")], f64::INFINITY)
            .sample(&[("channel", "x")], f64::NAN)
            .sample(&[("channel", "y")], -2.0);
        e.counter("b_total", "B.").sample(&[], 3u64);
        assert!(e.has("b_total") && !e.has("c"));
        assert_eq!(
            e.finish(),
            "# HELP a_gauge line one\\nback\\\\slash \"quoted\"\n\
             # TYPE a_gauge gauge\n\
             a_gauge{channel=\"a\\\\b\\\"c\\nd\",service=\"7\"} 1.5\n\
             a_gauge{channel=\"plain\"} +Inf\n\
             a_gauge{channel=\"x\"} NaN\n\
             a_gauge{channel=\"y\"} -2\n\
             # HELP b_total B.\n\
             # TYPE b_total counter\n\
             b_total 3\n"
        );
    }

    #[test]
    fn collectors_add_their_families() {
        let m = Metrics::default();
        m.add_collector(Arc::new(|e: &mut Exposition| {
            e.gauge("iodoform_channel_on_air", "On air.")
                .sample(&[("channel", "n"), ("service", "1")], true);
        }));
        let text = m.render(&Gauges::default());
        assert!(text.contains("iodoform_channel_on_air{channel=\"n\",service=\"1\"} 1\n"));
        assert!(text.contains("# TYPE iodoform_emm_backlog_seconds gauge\n"));
    }

    #[test]
    #[should_panic(expected = "written twice")]
    #[cfg(debug_assertions)]
    fn a_family_is_written_once() {
        let mut e = Exposition::new();
        e.gauge("x", "X.");
        e.gauge("x", "X.");
    }
}
