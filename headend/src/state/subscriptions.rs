//! Subscriptions and pairings: what a card may decrypt and which receiver
//! it works with. A change goes to the card at once (and again through
//! the carousel's fast lane); taking a product away renews its key.

use super::carousel::FAST_WINDOW_MS;
use super::fields::{parse_date, parse_key32, rfc3339, secs};
use super::products::renew_in_tx;
use super::{Clash, Headend, Result, StateError, Unknown, EMM_U_TABLE};
use crate::store;
use api::{CardView, NewPairing, NewSubscription, ProductRef, SubscriptionView};
use headend_engine::engine::MAX_ENTITLEMENTS_PER_CARD;
use proto::emm::EmmCommand;
use std::collections::BTreeSet;

impl Headend {
    /// Loads the live subscriptions and the pairings of the active cards;
    /// each such card joins the carousel.
    pub(super) fn load_subscriptions(&mut self) -> Result<()> {
        store::subscriptions::for_each_live(&self.conn, |card, product, start, end| {
            self.engine.entitle(card, product, start, end)?;
            self.carousel.members.insert(card);
            Ok::<_, StateError>(())
        })?;
        store::subscriptions::for_each_pairing(&self.conn, |card, rx| {
            self.pairings.insert(card, rx);
            self.carousel.members.insert(card);
            Ok::<_, StateError>(())
        })?;
        Ok(())
    }

    /// Cards subscribed or paired less than [`FAST_WINDOW_MS`] ago (the
    /// daemon restarted just after the change) go first and into the fast
    /// lane again, so that a restart does not push their EMM-U a whole
    /// cycle away.
    pub(super) fn load_fast_lane(&mut self, now_ms: u64) -> Result<()> {
        let since = now_ms.saturating_sub(FAST_WINDOW_MS);
        for card in store::subscriptions::changed_since(&self.conn, since)? {
            if self.carousel.members.contains(&card) {
                self.carousel.prioritize(card);
                self.carousel.fast_lane(card, false, now_ms);
            }
        }
        Ok(())
    }

    /// Subscriptions of one card, or of every card.
    pub fn subscriptions(&self, card: Option<u32>) -> Result<Vec<SubscriptionView>> {
        Ok(store::subscriptions::list(&self.conn, card)?
            .into_iter()
            .map(|s| SubscriptionView {
                card_id: s.card,
                product: s.product,
                product_name: s.product_name,
                start: rfc3339(s.start),
                until: rfc3339(s.end),
                start_unix: s.start,
                end_unix: s.end,
                lapsed: s.lapsed,
            })
            .collect())
    }

    pub fn subscribe(&mut self, req: NewSubscription, now_ms: u64) -> Result<SubscriptionView> {
        let product = self.resolve_product(&req.product)?.id;
        self.require_active_card(req.card_id)?;
        let end = parse_date(&req.until, true, "until")?;
        let start = match &req.start {
            Some(s) => parse_date(s, false, "start")?,
            None => secs(now_ms) - secs(now_ms) % 86_400,
        };
        if end < start {
            return Err(StateError::invalid("until", "is before start"));
        }
        if end < secs(now_ms) {
            return Err(StateError::invalid("until", "is in the past"));
        }
        let ents = self.engine.entitlements(req.card_id)?;
        if !ents.iter().any(|e| e.product == product) && ents.len() >= MAX_ENTITLEMENTS_PER_CARD {
            return Err(Clash::CardFull(req.card_id).into());
        }
        store::subscriptions::upsert(&self.conn, req.card_id, product, start, end, now_ms)?;
        self.engine.entitle(req.card_id, product, start, end)?;
        self.carousel.members.insert(req.card_id);
        self.carousel.prioritize(req.card_id);
        self.carousel.fast_lane(req.card_id, false, now_ms);
        tracing::info!(card = req.card_id, product, end, "subscribed");
        let name = self.products[&product].name.clone();
        Ok(SubscriptionView {
            card_id: req.card_id,
            product,
            product_name: name,
            start: rfc3339(start),
            until: rfc3339(end),
            start_unix: start,
            end_unix: end,
            lapsed: false,
        })
    }

    /// Takes a product from a card: the subscription's removal and the
    /// product's key renewal are committed together, then the card gets
    /// REMOVE PRODUCT at once.
    pub fn unsubscribe(&mut self, card: u32, product: &ProductRef, now_ms: u64) -> Result<()> {
        let product = self.resolve_product(product)?.id;
        let Some(lapsed) = store::subscriptions::lapsed(&self.conn, card, product)? else {
            return Err(Unknown::Subscription { card, product }.into());
        };
        let live = !lapsed && self.engine.has_card(card);
        let tx = self.conn.transaction()?;
        store::subscriptions::delete(&tx, card, product)?;
        let renewals = renew_in_tx(
            &tx,
            &self.mk,
            &self.products,
            live.then_some(product),
            self.timing,
            "unsubscribe",
            now_ms,
        )?;
        tx.commit()?;
        if live {
            self.engine.unentitle(card, product)?;
            self.refresh_membership(card);
            self.ensure_seq_room(1, now_ms)?;
            match self.engine.emm_u(
                card,
                secs(now_ms),
                vec![EmmCommand::RemoveProduct { product }],
            ) {
                Ok(emm) => self.emit(EMM_U_TABLE, &emm, false),
                Err(e) => self.internal_error(&format!("REMOVE PRODUCT for card {card}: {e}")),
            }
        }
        self.apply_renewals(renewals, now_ms)?;
        tracing::info!(card, product, "unsubscribed");
        Ok(())
    }

    /// Lapses the subscriptions that ended, renewing their products' keys
    /// in the same transaction.
    pub(super) fn lapse_step(&mut self, now_ms: u64) -> Result<()> {
        let lapsed = store::subscriptions::ended(&self.conn, secs(now_ms))?;
        if lapsed.is_empty() {
            return Ok(());
        }
        let products: BTreeSet<u32> = lapsed.iter().map(|&(_, p)| p).collect();
        let tx = self.conn.transaction()?;
        for &(card, product) in &lapsed {
            store::subscriptions::set_lapsed(&tx, card, product)?;
        }
        let renewals = renew_in_tx(
            &tx,
            &self.mk,
            &self.products,
            products,
            self.timing,
            "subscription ended",
            now_ms,
        )?;
        tx.commit()?;
        for (card, product) in lapsed {
            if self.engine.has_card(card) {
                self.engine.unentitle(card, product)?;
                self.refresh_membership(card);
            }
            tracing::info!(card, product, "subscription ended");
        }
        self.apply_renewals(renewals, now_ms)
    }

    /// A card is in the carousel while it holds a product or is paired.
    pub(super) fn refresh_membership(&mut self, card: u32) {
        let has = self
            .engine
            .entitlements(card)
            .map(|e| !e.is_empty())
            .unwrap_or(false);
        if has || self.pairings.contains_key(&card) {
            self.carousel.members.insert(card);
        } else {
            self.carousel.members.remove(&card);
        }
    }

    /// Pairs a card with one receiver (or with another one: the new key
    /// replaces the old). The receiver's key gets the check a card's key
    /// gets at registration. The card's EMM-U, with the pairing and its
    /// entitlements, goes out at once and through the fast lane.
    pub fn pair(&mut self, req: NewPairing, now_ms: u64) -> Result<CardView> {
        let rx = parse_key32(&req.receiver_key, "receiver_key")?;
        self.engine.operator().kex().check_peer(&rx).map_err(|_| {
            StateError::invalid(
                "receiver_key",
                "a low-order X25519 point (such as all zeros), which no receiver has: \
                 give the key that `receiver identity` prints on the receiver",
            )
        })?;
        self.require_active_card(req.card_id)?;
        store::subscriptions::pair(&self.conn, req.card_id, &rx, now_ms)?;
        self.pairings.insert(req.card_id, rx);
        self.carousel.members.insert(req.card_id);
        self.send_now(req.card_id, false, now_ms)?;
        tracing::info!(card = req.card_id, "card paired");
        self.card(req.card_id)
    }

    /// Ends a card's pairing: the removal is committed, then an EMM-U with
    /// UNPAIR (and the card's entitlements) goes out at once and through
    /// the fast lane, so the card accepts any receiver again. A card that
    /// is not paired in the database gets UNPAIR all the same (its own
    /// state may differ).
    pub fn unpair(&mut self, card: u32, now_ms: u64) -> Result<CardView> {
        self.require_active_card(card)?;
        store::subscriptions::unpair(&self.conn, card)?;
        let was = self.pairings.remove(&card).is_some();
        self.refresh_membership(card);
        self.send_now(card, true, now_ms)?;
        tracing::info!(card, was_paired = was, "card unpaired");
        self.card(card)
    }
}
