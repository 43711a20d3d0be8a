//! Products and their period keys K_P: creation, renewal (scheduled, on
//! request, or because a card lost the product) and the switch of ECMs to
//! a new generation once the cards have had time to receive it.

use super::fields::{check_name, rfc3339, secs};
use super::{Clash, Headend, Result, StateError, Timing, Unknown};
use crate::atrest::MasterKey;
use crate::metrics::Metrics;
use crate::store;
use api::{NewProduct, Product, ProductRef, Rotated};
use proto::secret::ProductKey;
use rusqlite::Connection;
use std::collections::BTreeMap;

/// A renewal written in a transaction, to apply once it commits.
pub(super) struct Renewal {
    product: u32,
    generation: u32,
    active_generation: u32,
    activate_at_ms: u64,
    next_renewal_ms: u64,
    created_ms: u64,
    key: ProductKey,
}

/// Writes the next generation of each product's key into the caller's
/// transaction; `reason` says why (`scheduled`, `revocation`...).
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
    let generation = p
        .generation
        .checked_add(1)
        .ok_or(Clash::NoGenerationsLeft(p.id))?;
    // A renewal while the previous one is still pending activates that
    // one now: ECMs may use only the two newest generations, the two a
    // card holds.
    let active_generation = p.generation;
    let key = ProductKey::random();
    let activate_at_ms = now_ms + timing.cycle_ms + timing.period_ms;
    let next_renewal_ms = now_ms + timing.renewal_ms;
    store::products::insert_key(tx, mk, p.id, generation, &key, reason, now_ms)?;
    store::products::set_generations(
        tx,
        p.id,
        generation,
        active_generation,
        activate_at_ms,
        next_renewal_ms,
    )?;
    Ok(Renewal {
        product: p.id,
        generation,
        active_generation,
        activate_at_ms,
        next_renewal_ms,
        created_ms: now_ms,
        key,
    })
}

impl Headend {
    pub(super) fn load_products(&mut self, now_ms: u64) -> Result<()> {
        for mut p in store::products::all(&self.conn)? {
            p.key_created_ms = store::products::key_created_ms(&self.conn, p.id, p.generation)?;
            let first = p.generation.saturating_sub(1).max(1);
            for g in first..=p.generation {
                let key = store::products::key(&self.conn, &self.mk, p.id, g)?;
                if g == first {
                    self.engine.add_product_with_key(p.id, g, key)?;
                } else {
                    self.engine.renew_product_key_with(p.id, key)?;
                }
            }
            // The cards had no EMMs while the daemon was down: a pending
            // generation gets a whole cycle from now before ECMs use it.
            if p.active_generation < p.generation {
                p.activate_at_ms = p
                    .activate_at_ms
                    .max(now_ms + self.timing.cycle_ms + self.timing.period_ms);
            }
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
            activate_at_ms: now_ms,
            next_renewal_ms: now_ms + self.timing.renewal_ms,
            created_ms: now_ms,
            key_created_ms: now_ms,
        };
        let tx = self.conn.transaction()?;
        store::products::insert(&tx, &p)?;
        store::products::insert_key(&tx, &self.mk, id, 1, &key, "created", now_ms)?;
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

    /// Applies a committed renewal: the engine gets the key, and the
    /// product's holders jump the carousel's queue.
    pub(super) fn apply_renewal(&mut self, r: Renewal, now_ms: u64) -> Result<()> {
        self.engine.renew_product_key_with(r.product, r.key)?;
        if let Some(p) = self.products.get_mut(&r.product) {
            p.generation = r.generation;
            p.active_generation = r.active_generation;
            p.activate_at_ms = r.activate_at_ms;
            p.next_renewal_ms = r.next_renewal_ms;
            p.key_created_ms = r.created_ms;
        }
        Metrics::inc(&self.metrics.rotations);
        tracing::info!(
            product = r.product,
            generation = r.generation,
            "product key renewed"
        );
        // The holders need the new key before it goes into ECMs.
        for card in store::subscriptions::holders(&self.conn, r.product, secs(now_ms))? {
            self.carousel.prioritize(card);
        }
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

    /// Switches ECMs to the pending generations whose time has come.
    pub(super) fn activation_step(&mut self, now_ms: u64) -> Result<()> {
        let due: Vec<(u32, u32)> = self
            .products
            .values()
            .filter(|p| p.active_generation < p.generation && p.activate_at_ms <= now_ms)
            .map(|p| (p.id, p.generation))
            .collect();
        for (id, generation) in due {
            store::products::set_active_generation(&self.conn, id, generation)?;
            if let Some(p) = self.products.get_mut(&id) {
                p.active_generation = generation;
            }
            tracing::info!(product = id, generation, "ECMs now use the new period key");
        }
        Ok(())
    }
}
