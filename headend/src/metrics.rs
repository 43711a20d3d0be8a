//! Counters for `/metrics`, in the Prometheus text exposition format
//! (version 0.0.4), written by hand: a dozen counters do not need a crate.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The daemon's counters. Every field only grows.
#[derive(Debug, Default)]
pub struct Metrics {
    pub emm_u_sent: AtomicU64,
    pub emm_g_sent: AtomicU64,
    pub ecm_sent: AtomicU64,
    pub rotations: AtomicU64,
    pub carousel_cycles: AtomicU64,
    pub api_requests: AtomicU64,
    pub api_client_errors: AtomicU64,
    pub internal_errors: AtomicU64,
}

/// Gauges read from the daemon's state at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub cards_active: u64,
    pub cards_revoked: u64,
    pub products: u64,
    pub channels: u64,
    pub carousel_cards: u64,
    pub run: u64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The exposition text.
    pub fn render(&self, g: &Gauges) -> String {
        let mut s = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} counter");
            for (labels, v) in samples {
                if labels.is_empty() {
                    let _ = writeln!(s, "{name} {v}");
                } else {
                    let _ = writeln!(s, "{name}{{{labels}}} {v}");
                }
            }
        };
        counter(
            "iodoform_emm_sent_total",
            "EMM sections made, by kind.",
            &[
                ("kind=\"unique\"", get(&self.emm_u_sent)),
                ("kind=\"global\"", get(&self.emm_g_sent)),
            ],
        );
        counter(
            "iodoform_ecm_sent_total",
            "ECMs made (one per service and crypto period; repetitions on the air are not counted).",
            &[("", get(&self.ecm_sent))],
        );
        counter(
            "iodoform_key_rotations_total",
            "Product period key renewals.",
            &[("", get(&self.rotations))],
        );
        counter(
            "iodoform_emm_carousel_cycles_total",
            "Completed EMM-U carousel cycles.",
            &[("", get(&self.carousel_cycles))],
        );
        counter(
            "iodoform_api_requests_total",
            "Admin API requests.",
            &[("", get(&self.api_requests))],
        );
        counter(
            "iodoform_errors_total",
            "Errors: API requests refused as bad input, and internal errors.",
            &[
                ("kind=\"client\"", get(&self.api_client_errors)),
                ("kind=\"internal\"", get(&self.internal_errors)),
            ],
        );
        let mut gauge = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} gauge");
            for (labels, v) in samples {
                if labels.is_empty() {
                    let _ = writeln!(s, "{name} {v}");
                } else {
                    let _ = writeln!(s, "{name}{{{labels}}} {v}");
                }
            }
        };
        gauge(
            "iodoform_cards",
            "Registered cards, by state.",
            &[
                ("state=\"active\"", g.cards_active),
                ("state=\"revoked\"", g.cards_revoked),
            ],
        );
        gauge("iodoform_products", "Products.", &[("", g.products)]);
        gauge("iodoform_channels", "Channels.", &[("", g.channels)]);
        gauge(
            "iodoform_carousel_cards",
            "Cards in the EMM-U carousel (entitled or paired).",
            &[("", g.carousel_cards)],
        );
        gauge(
            "iodoform_run",
            "The daemon's run number (starts since the database was made).",
            &[("", g.run)],
        );
        s
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
            v.parse::<u64>().unwrap();
        }
    }
}
