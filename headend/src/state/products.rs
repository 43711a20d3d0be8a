//! Products and their period keys K_P: creation, and renewal (scheduled,
//! on request, or because a card lost the product) as a delivery process.
//!
//! A renewal makes a new generation and walks it through persisted states
//! (`product_keys.state`):
//!
//! * **prepared**: made and sealed in the same transaction as its cause
//!   (a revocation, an unsubscription...); nothing on the air yet.
//! * **delivering**: EMM-Us carry it beside the active generation, in
//!   [`DELIVERY_PASSES`] passes over the product's holders at the EMM
//!   bandwidth ([`super::carousel`]); ECMs keep the active generation.
//! * **active**: once every channel has sent the last pass (counted in
//!   the output, not guessed), ECMs switch to it at the next epoch that
//!   starts at least [`ACTIVATION_MARGIN_MS`] later. The one it replaces
//!   is **retired**.
//! * **superseded**: a renewal requested while another is prepared or
//!   delivering replaces that pending generation with a newer one and
//!   starts the delivery again: ECMs never move to a generation that the
//!   cards have not all been sent, and only ever to the newest.
//!
//! A restart resumes a pending renewal with a whole new delivery (the
//! cards had nothing while the daemon was down). New generation numbers
//! are at least the seconds since 2024 ([`generation_floor`]), so a
//! database restored from an old backup never hands out a number that
//! cards already hold for another key.

use super::fields::{check_name, rfc3339, secs};
use super::{Clash, Headend, Result, StateError, Timing, Unknown};
use crate::atrest::MasterKey;
use crate::metrics::Metrics;
use crate::store;
use crate::store::products::KeyState;
use api::{NewProduct, Product, ProductRef, Rotated};
use proto::secret::ProductKey;
use rusqlite::Connection;
use std::collections::BTreeMap;

/// Passes over the holders that deliver a new generation: broadcast has
/// no acknowledgements, so each card gets its EMM-U this many times
/// before ECMs use the key.
pub const DELIVERY_PASSES: u32 = 3;
/// Time between the end of a delivery and the epoch that activates it:
/// the receivers' and cards' processing.
pub const ACTIVATION_MARGIN_MS: u64 = 2_000;
/// 2024-01-01T00:00:00Z: generation numbers count seconds from here.
const GENERATION_EPOCH_S: u64 = 1_704_067_200;

/// The lowest generation number a renewal at `now_ms` may take: seconds
/// since 2024, so numbers follow the clock even when the database is
/// rolled back to a backup.
pub(crate) fn generation_floor(now_ms: u64) -> u32 {
    u32::try_from((now_ms / 1000).saturating_sub(GENERATION_EPOCH_S)).unwrap_or(u32::MAX)
}

/// A renewal under way: a product's pending generation on its way to the
/// cards.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) generation: u32,
    pub(super) state: KeyState,
    pub(super) reason: String,
    /// The holders to send it to, in card order, taken when it went on the
    /// air.
    pub(super) holders: Vec<u32>,
    /// Flat EMM-Us to the holders, or SD EMM-Gs (planned on the air).
    pub(super) delivery: super::sd::Delivery,
    /// The next holder (or SD section) to send in this pass, and the
    /// passes finished.
    pub(super) next: usize,
    pub(super) passes: u32,
    pub(super) on_air_ms: Option<u64>,
    /// The EMM log index just after the last pass's last section.
    pub(super) sent_through: Option<u64>,
    /// When every channel had sent the whole delivery.
    pub(super) delivered_ms: Option<u64>,
    /// The epoch whose ECMs switch to it.
    pub(super) activate_epoch: Option<u64>,
}

impl Pending {
    fn new(generation: u32, reason: &str) -> Pending {
        Pending {
            generation,
            state: KeyState::Prepared,
            reason: reason.to_string(),
            holders: Vec::new(),
            delivery: super::sd::Delivery::Flat,
            next: 0,
            passes: 0,
            on_air_ms: None,
            sent_through: None,
            delivered_ms: None,
            activate_epoch: None,
        }
    }

    /// Messages (EMM-Us or SD sections) in one pass.
    pub(super) fn items(&self) -> usize {
        match &self.delivery {
            super::sd::Delivery::Flat => self.holders.len(),
            super::sd::Delivery::Sd { sections, .. } => sections.len(),
        }
    }

    /// Messages still to send before the delivery is complete.
    pub(super) fn emms_left(&self) -> u64 {
        match self.state {
            KeyState::Prepared => 0,
            _ => (u64::from(DELIVERY_PASSES.saturating_sub(self.passes)) * self.items() as u64)
                .saturating_sub(self.next as u64),
        }
    }

    /// TS bytes still to send before the delivery is complete.
    pub(super) fn bytes_left(&self) -> u64 {
        match &self.delivery {
            super::sd::Delivery::Flat => self.emms_left() * super::carousel::EMM_U_AIR_BYTES,
            super::sd::Delivery::Sd { sections, .. } => {
                let pass: u64 = sections
                    .iter()
                    .map(|s| super::carousel::air_bytes(s.len()))
                    .sum();
                let left = self.emms_left();
                let n = sections.len().max(1) as u64;
                pass * (left / n) + pass * (left % n) / n
            }
        }
    }
}

/// A renewal written in a transaction, to apply once it commits.
pub(super) struct Renewal {
    product: u32,
    generation: u32,
    superseded: Option<u32>,
    next_renewal_ms: u64,
    created_ms: u64,
    reason: String,
    key: ProductKey,
}

/// Writes the next generation of each product's key into the caller's
/// transaction, in state `prepared`, superseding a pending one; `reason`
/// says why (`scheduled`, `revocation`...).
pub(super) fn renew_in_tx(
    tx: &Connection,
    mk: &MasterKey,
    products: &BTreeMap<u32, Product>,
    ids: impl IntoIterator<Item = u32>,
    timing: Timing,
    reason: &str,
    now_ms: u64,
) -> Result<Vec<Renewal>> {
    ids.into_iter()
        .map(|id| renew_one(tx, mk, &products[&id], timing, reason, now_ms))
        .collect()
}

fn renew_one(
    tx: &Connection,
    mk: &MasterKey,
    p: &Product,
    timing: Timing,
    reason: &str,
    now_ms: u64,
) -> Result<Renewal> {
    let newest = p
        .generation
        .max(store::products::newest_generation(tx, p.id)?);
    let generation = newest
        .checked_add(1)
        .ok_or(Clash::NoGenerationsLeft(p.id))?
        .max(generation_floor(now_ms));
    let superseded = (p.generation > p.active_generation).then_some(p.generation);
    if let Some(g) = superseded {
        store::products::set_key_state(tx, p.id, g, KeyState::Superseded, now_ms)?;
    }
    let key = ProductKey::random();
    let next_renewal_ms = now_ms + timing.renewal_ms;
    store::products::insert_key(
        tx,
        mk,
        p.id,
        generation,
        &key,
        KeyState::Prepared,
        reason,
        now_ms,
    )?;
    store::products::set_generations(
        tx,
        p.id,
        generation,
        p.active_generation,
        0,
        next_renewal_ms,
    )?;
    Ok(Renewal {
        product: p.id,
        generation,
        superseded,
        next_renewal_ms,
        created_ms: now_ms,
        reason: reason.to_string(),
        key,
    })
}

impl Headend {
    pub(super) fn load_products(&mut self, now_ms: u64) -> Result<()> {
        for mut p in store::products::all(&self.conn)? {
            let active = p.active_generation;
            let key = store::products::key(&self.conn, &self.mk, p.id, active)?;
            self.engine.add_product_with_key(p.id, active, key)?;
            let pending = store::products::keys_in(
                &self.conn,
                p.id,
                &[KeyState::Prepared, KeyState::Delivering],
            )?;
            // One pending generation at most: the newest; any older one
            // left by a crash between two writes is superseded.
            if let Some(&(g, _, _)) = pending.last() {
                for &(old, _, _) in &pending[..pending.len() - 1] {
                    store::products::set_key_state(
                        &self.conn,
                        p.id,
                        old,
                        KeyState::Superseded,
                        now_ms,
                    )?;
                }
                let key = store::products::key(&self.conn, &self.mk, p.id, g)?;
                self.engine.set_pending_key(p.id, g, key)?;
                // The cards had nothing while the daemon was down: the
                // delivery starts again.
                let reason = "resumed after a restart";
                self.renewals.insert(p.id, Pending::new(g, reason));
                tracing::info!(
                    product = p.id,
                    generation = g,
                    "renewal resumed: its delivery starts again"
                );
            }
            p.key_created_ms = store::products::key_created_ms(&self.conn, p.id, p.generation)?;
            p.activate_at_ms = 0;
            self.products.insert(p.id, p);
        }
        Ok(())
    }

    pub(super) fn resolve_product(&self, r: &ProductRef) -> Result<&Product> {
        match r {
            ProductRef::Id(id) => self.products.get(id),
            ProductRef::Name(n) => match n.trim().parse::<u32>() {
                Ok(id) => self.products.get(&id),
                Err(_) => self.products.values().find(|p| &p.name == n),
            },
        }
        .ok_or_else(|| Unknown::Product(r.clone()).into())
    }

    pub fn add_product(&mut self, req: NewProduct, now_ms: u64) -> Result<Product> {
        check_name(&req.name, "name")?;
        if self.products.values().any(|p| p.name == req.name) {
            return Err(Clash::ProductName(req.name).into());
        }
        let id = match req.id {
            Some(0) => return Err(StateError::invalid("id", "products are numbered from 1")),
            Some(id) if self.products.contains_key(&id) => return Err(Clash::ProductId(id).into()),
            Some(id) => id,
            None => self
                .products
                .keys()
                .next_back()
                .map_or(Some(1), |m| m.checked_add(1))
                .ok_or_else(|| StateError::invalid("id", "no product ids left; give one"))?,
        };
        let key = ProductKey::random();
        let p = Product {
            id,
            name: req.name,
            generation: 1,
            active_generation: 1,
            activate_at_ms: 0,
            next_renewal_ms: now_ms + self.timing.renewal_ms,
            created_ms: now_ms,
            key_created_ms: now_ms,
        };
        let tx = self.conn.transaction()?;
        store::products::insert(&tx, &p)?;
        store::products::insert_key(
            &tx,
            &self.mk,
            id,
            1,
            &key,
            KeyState::Active,
            "created",
            now_ms,
        )?;
        tx.commit()?;
        self.engine.add_product_with_key(id, 1, key)?;
        self.products.insert(id, p.clone());
        tracing::info!(product = id, name = %p.name, "product created");
        Ok(p)
    }

    pub fn products(&self) -> Vec<Product> {
        self.products.values().cloned().collect()
    }

    /// Renews the key of one product, or of every product.
    pub fn rotate(
        &mut self,
        product: Option<&ProductRef>,
        reason: &str,
        now_ms: u64,
    ) -> Result<Vec<Rotated>> {
        let ids: Vec<u32> = match product {
            Some(r) => vec![self.resolve_product(r)?.id],
            None => self.products.keys().copied().collect(),
        };
        let tx = self.conn.transaction()?;
        let renewals = renew_in_tx(
            &tx,
            &self.mk,
            &self.products,
            ids,
            self.timing,
            reason,
            now_ms,
        )?;
        tx.commit()?;
        let mut out = Vec::new();
        for r in renewals {
            let id = r.product;
            self.apply_renewal(r, now_ms)?;
            let p = &self.products[&id];
            out.push(Rotated {
                product: id,
                name: p.name.clone(),
                generation: p.generation,
                active_generation: p.active_generation,
                activate_at: rfc3339(p.activate_at_ms / 1000),
            });
        }
        Ok(out)
    }

    /// Applies committed renewals (see [`Headend::apply_renewal`]).
    pub(super) fn apply_renewals(&mut self, renewals: Vec<Renewal>, now_ms: u64) -> Result<()> {
        for r in renewals {
            self.apply_renewal(r, now_ms)?;
        }
        Ok(())
    }

    /// Applies a committed renewal: the engine holds the key as pending
    /// (EMM-Us carry it, ECMs do not yet), and its delivery is planned.
    pub(super) fn apply_renewal(&mut self, r: Renewal, now_ms: u64) -> Result<()> {
        self.engine
            .set_pending_key(r.product, r.generation, r.key)?;
        self.renewals
            .insert(r.product, Pending::new(r.generation, &r.reason));
        if let Some(p) = self.products.get_mut(&r.product) {
            p.generation = r.generation;
            p.next_renewal_ms = r.next_renewal_ms;
            p.key_created_ms = r.created_ms;
        }
        Metrics::inc(&self.metrics.rotations);
        match r.superseded {
            Some(old) => tracing::info!(
                product = r.product,
                generation = r.generation,
                superseded = old,
                reason = %r.reason,
                "product key renewed; the renewal still being delivered is superseded, ECMs stay on the active key"
            ),
            None => tracing::info!(
                product = r.product,
                generation = r.generation,
                reason = %r.reason,
                "product key renewed"
            ),
        }
        self.plan_activation(now_ms);
        Ok(())
    }

    /// Renews the keys that are due.
    pub(super) fn renewal_step(&mut self, now_ms: u64) -> Result<()> {
        let due: Vec<u32> = self
            .products
            .values()
            .filter(|p| p.next_renewal_ms <= now_ms)
            .map(|p| p.id)
            .collect();
        for id in due {
            self.rotate(Some(&ProductRef::Id(id)), "scheduled", now_ms)?;
        }
        Ok(())
    }

    /// Puts prepared renewals on the air (their holders, taken now, are
    /// what the delivery passes go over), and notes deliveries that every
    /// channel has sent.
    pub(super) fn delivery_step(&mut self, now_ms: u64) -> Result<()> {
        let ids: Vec<u32> = self.renewals.keys().copied().collect();
        for id in ids {
            let state = self.renewals[&id].state;
            if state == KeyState::Prepared {
                let holders = store::subscriptions::holders(&self.conn, id, secs(now_ms))?;
                let generation = self.renewals[&id].generation;
                store::products::set_key_state(
                    &self.conn,
                    id,
                    generation,
                    KeyState::Delivering,
                    now_ms,
                )?;
                let (delivery, costs) =
                    self.plan_delivery(id, generation, &holders, secs(now_ms))?;
                let r = self.renewals.get_mut(&id).expect("listed above");
                r.state = KeyState::Delivering;
                r.holders = holders;
                r.on_air_ms = Some(now_ms);
                let method = match &delivery {
                    super::sd::Delivery::Flat => "flat EMM-Us",
                    super::sd::Delivery::Sd { .. } => "Subset Difference EMM-Gs",
                };
                r.delivery = delivery;
                tracing::info!(
                    product = id,
                    generation,
                    holders = r.holders.len(),
                    excluded = costs.excluded,
                    subsets = costs.subsets,
                    flat_bytes = costs.flat_bytes,
                    sd_bytes = costs.sd_bytes,
                    method,
                    passes = DELIVERY_PASSES,
                    "renewal on the air"
                );
            }
            let r = &self.renewals[&id];
            if let (Some(through), None) = (r.sent_through, r.delivered_ms) {
                if self.output.sent_through(through, now_ms) {
                    let period = self.timing.period_ms;
                    let epoch = (now_ms + ACTIVATION_MARGIN_MS) / period + 1;
                    let r = self.renewals.get_mut(&id).expect("listed above");
                    r.delivered_ms = Some(now_ms);
                    r.activate_epoch = Some(epoch);
                    tracing::info!(
                        product = id,
                        generation = r.generation,
                        delivery_s = secs_f(now_ms.saturating_sub(r.on_air_ms.unwrap_or(now_ms))),
                        activate_at = %rfc3339(epoch * period / 1000),
                        "renewal delivered"
                    );
                }
            }
        }
        self.plan_activation(now_ms);
        Ok(())
    }

    /// Each pending renewal's expected activation (`activate_at_ms`): the
    /// EMM-Us still to send, in the order the carousel sends them, at the
    /// EMM bandwidth, then the margin, rounded up to an epoch.
    pub(super) fn plan_activation(&mut self, now_ms: u64) {
        let period = self.timing.period_ms;
        let bytes_per_s = (self.timing.emm_bitrate / 8).max(1);
        let mut ahead = 0u64;
        for (&id, r) in &self.renewals {
            let at = match r.activate_epoch {
                Some(e) => e * period,
                None => {
                    ahead += r.bytes_left();
                    let t = now_ms + ahead * 1000 / bytes_per_s + ACTIVATION_MARGIN_MS;
                    (t / period + 1) * period
                }
            };
            if let Some(p) = self.products.get_mut(&id) {
                p.activate_at_ms = at;
            }
        }
    }

    /// Switches ECMs to the delivered generations whose epoch has come;
    /// the generations they replace retire.
    pub(super) fn activation_step(&mut self, now_ms: u64) -> Result<()> {
        let epoch = now_ms / self.timing.period_ms;
        let due: Vec<(u32, u32)> = self
            .renewals
            .iter()
            .filter(|(_, r)| r.activate_epoch.is_some_and(|e| e <= epoch))
            .map(|(&id, r)| (id, r.generation))
            .collect();
        for (id, generation) in due {
            let old = self.products[&id].active_generation;
            let tx = self.conn.transaction()?;
            store::products::set_key_state(&tx, id, old, KeyState::Retired, now_ms)?;
            store::products::set_key_state(&tx, id, generation, KeyState::Active, now_ms)?;
            store::products::set_active_generation(&tx, id, generation)?;
            tx.commit()?;
            self.engine.activate_pending(id)?;
            let r = self.renewals.remove(&id);
            // An SD delivery stays on the air, once a cycle, for cards that
            // were off: they recover the key from it alone.
            match r.as_ref().map(|r| &r.delivery) {
                Some(super::sd::Delivery::Sd { sections, .. }) => {
                    self.carousel.standing.insert(id, sections.clone());
                }
                _ => {
                    self.carousel.standing.remove(&id);
                }
            }
            if let Some(p) = self.products.get_mut(&id) {
                p.active_generation = generation;
                p.activate_at_ms = 0;
            }
            let took = r
                .and_then(|r| r.on_air_ms)
                .map_or(0.0, |t| secs_f(now_ms.saturating_sub(t)));
            tracing::info!(
                product = id,
                generation,
                retired = old,
                on_air_s = took,
                "ECMs now use the new period key"
            );
        }
        Ok(())
    }
}

fn secs_f(ms: u64) -> f64 {
    ms as f64 / 1000.0
}
