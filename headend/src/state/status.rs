//! What the daemon reports about itself: the status JSON of `GET
//! /api/v1/status` and the gauges of `/metrics` (key timing per product,
//! the EMM backlog, counts).

use super::fields::{rfc3339, secs};
use super::Headend;
use crate::metrics::{EmmBacklog, Gauges, ProductKeyGauge};
use api::Product;
use proto::emm::EMM_HEADER_LEN;

/// The section size of a carousel EMM-U for one product (section header,
/// EMM header, time, one ENTITLE, tag): the backlog's price of an EMM-U
/// until this run has made some.
pub(super) const ONE_PRODUCT_EMM_U_SECTION: u64 = 3 + EMM_HEADER_LEN as u64 + 8 + 58 + 16;

impl Headend {
    /// A product's key timing at `now_ms`.
    pub fn product_key_gauge(&self, p: &Product, now_ms: u64) -> ProductKeyGauge {
        let secs_between = |from: u64, to: u64| (to as f64 - from as f64) / 1000.0;
        let pending = p.active_generation < p.generation;
        let left = self.renewals.get(&p.id).map_or(0, |r| r.bytes_left());
        ProductKeyGauge {
            product: p.id,
            name: p.name.clone(),
            key_age_seconds: secs_between(p.key_created_ms, now_ms).max(0.0),
            next_renewal_seconds: secs_between(now_ms, p.next_renewal_ms),
            key_switch_pending: pending,
            key_switch_seconds: if pending {
                secs_between(now_ms, p.activate_at_ms).max(0.0)
            } else {
                0.0
            },
            renewal_bytes_left: left,
            renewal_delivery_seconds: left as f64 * 8.0 / self.timing.emm_bitrate.max(1) as f64,
        }
    }

    /// The EMM backlog at `now_ms` (see [`crate::metrics::EMM_BACKLOG_HELP`]).
    pub fn emm_backlog(&self, now_ms: u64) -> EmmBacklog {
        let c = &self.carousel;
        let delivering: u64 = self.renewals.values().map(|r| r.emms_left()).sum();
        let owed = c.members.range(c.cursor.saturating_add(1)..).count()
            + c.priority.len()
            + delivering as usize;
        let mean = if self.emm_u_sections == 0 {
            ONE_PRODUCT_EMM_U_SECTION
        } else {
            self.emm_u_bytes.div_ceil(self.emm_u_sections)
        };
        let unsent = self.output.emm_unsent(now_ms);
        EmmBacklog {
            carousel_bytes: owed as u64 * mean,
            carousel_sections: owed as u64,
            unsent_bytes: unsent.bytes,
            unsent_sections: unsent.sections,
            bitrate: self.timing.emm_bitrate,
        }
    }

    pub fn gauges(&self, now_ms: u64) -> Gauges {
        Gauges {
            cards_active: self.engine.card_count() as u64,
            cards_revoked: self.cards_revoked,
            products: self.products.len() as u64,
            channels: self.channels.len() as u64,
            carousel_cards: self.carousel.members.len() as u64,
            run: self.run,
            emm_cycle_seconds: self.timing.cycle_ms as f64 / 1000.0,
            key_renewal_seconds: self.timing.renewal_ms as f64 / 1000.0,
            crypto_period_seconds: self.timing.period_ms as f64 / 1000.0,
            product_keys: self
                .products
                .values()
                .map(|p| self.product_key_gauge(p, now_ms))
                .collect(),
            emm_backlog: self.emm_backlog(now_ms),
            clock_jump_refused: self.clock_refused(),
            clock_ahead_seconds: self.clock_ahead_seconds(),
        }
    }

    /// The answer of `GET /api/v1/status`, but for where each channel
    /// stands (the supervisor's, added by the server).
    pub fn status(&self, now_ms: u64) -> api::Status {
        let g = self.gauges(now_ms);
        // Each product with its key timing (the metrics' numbers, rounded
        // to the second).
        let products = self
            .products
            .values()
            .zip(&g.product_keys)
            .map(|(p, k)| api::ProductStatus {
                product: p.clone(),
                key_age_secs: k.key_age_seconds.floor() as i64,
                next_renewal_secs: k.next_renewal_seconds.ceil() as i64,
                key_switch_pending: k.key_switch_pending,
                key_switch_secs: k.key_switch_seconds.ceil() as i64,
                renewal: self.renewals.get(&p.id).map(|r| api::RenewalStatus {
                    generation: r.generation,
                    state: r.state.as_str().to_string(),
                    method: match (&r.delivery, r.state) {
                        (_, crate::store::products::KeyState::Prepared) => String::new(),
                        (super::sd::Delivery::Flat, _) => "flat".into(),
                        (super::sd::Delivery::Sd { .. }, _) => "sd".into(),
                    },
                    subsets: match &r.delivery {
                        super::sd::Delivery::Sd { subsets, .. } => *subsets as u64,
                        super::sd::Delivery::Flat => 0,
                    },
                    reason: r.reason.clone(),
                    holders: r.holders.len() as u64,
                    passes_done: r.passes.min(super::products::DELIVERY_PASSES),
                    passes_needed: super::products::DELIVERY_PASSES,
                    emms_left: r.emms_left(),
                    delivered: r.delivered_ms.is_some(),
                    activate_at: rfc3339(p.activate_at_ms / 1000),
                }),
            })
            .collect();
        let b = g.emm_backlog;
        let ecms = self
            .output
            .current_ecms()
            .iter()
            .map(|e| api::EcmStatus {
                service_id: e.service,
                product: e.product,
                generation: e.generation,
                epoch: e.epoch,
            })
            .collect();
        api::Status {
            run: self.run,
            now: rfc3339(secs(now_ms)),
            operator_id: self.engine.operator().operator_id(),
            crypto_period_ms: self.timing.period_ms,
            emm_cycle_ms: self.timing.cycle_ms,
            key_renewal_secs: self.timing.renewal_ms / 1000,
            epoch: now_ms / self.timing.period_ms,
            cards: api::CardCounts {
                active: g.cards_active,
                revoked: g.cards_revoked,
            },
            carousel_cards: g.carousel_cards,
            carousel_pending: self.carousel.priority.len() as u64,
            products,
            channels: self
                .channels
                .values()
                .map(|c| api::ChannelStatus {
                    channel: c.clone(),
                    run: None,
                })
                .collect(),
            ecms,
            emm_sections: self.output.emm_cursor(),
            emm_backlog: api::EmmBacklog {
                bytes: b.bytes(),
                seconds: (b.seconds() * 1000.0).round() / 1000.0,
                carousel_sections: b.carousel_sections,
                carousel_bytes: b.carousel_bytes,
                unsent_sections: b.unsent_sections,
                unsent_bytes: b.unsent_bytes,
                bitrate: b.bitrate,
            },
            clock: self.clock_status(),
            restored: self.restore_status(),
            ecms_fresh_from_epoch: self.ecm_fresh_from,
            muxes: Vec::new(),
            ecmg: None,
        }
    }
}
