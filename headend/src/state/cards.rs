//! Cards: registration (the card's key checked and its KEK derived and
//! sealed), the views the API shows, revocation, and the bulk import.

use super::fields::{parse_key32, rfc3339, secs};
use super::products::renew_in_tx;
use super::{Clash, Headend, Result, StateError, Unknown, EMM_G_TABLE};
use crate::store::{self, cards::CardRow};
use api::{CardView, NewCard, ProductRef};
use proto::emm::EmmCommand;

impl Headend {
    /// Loads the active cards into the engine, each counter at `floor`.
    pub(super) fn load_cards(&mut self, floor: u64) -> Result<()> {
        let mut prepared = Vec::new();
        store::cards::for_each_active(&self.conn, &self.mk, |id, public, kek| {
            prepared.push(self.engine.prepare_stored_card(id, public, kek)?);
            Ok::<_, StateError>(())
        })?;
        for p in prepared {
            let id = p.id();
            self.engine.insert_card(p)?;
            self.engine.raise_emm_u_seq(id, floor)?;
        }
        self.cards_revoked = store::cards::count_revoked(&self.conn)?;
        Ok(())
    }

    pub fn add_card(&mut self, req: NewCard, now_ms: u64) -> Result<CardView> {
        let public = parse_key32(&req.public_key, "public_key")?;
        let ours = self.engine.operator().operator_id();
        if req.operator_id != ours {
            return Err(StateError::invalid(
                "operator_id",
                format!("this headend is operator {ours}, not {}", req.operator_id),
            ));
        }
        if let Some(state) = store::cards::state(&self.conn, req.card_id)? {
            return Err(Clash::CardRegistered {
                card: req.card_id,
                state,
            }
            .into());
        }
        let prepared = self
            .engine
            .prepare_card(req.card_id, public)
            .map_err(|e| StateError::invalid("card_id/public_key", e.to_string()))?;
        store::cards::insert(
            &self.conn,
            &self.mk,
            req.card_id,
            ours,
            &public,
            prepared.kek(),
            now_ms,
        )?;
        self.engine.insert_card(prepared)?;
        self.engine.raise_emm_u_seq(req.card_id, self.seq_floor)?;
        // Its Subset Difference labels: in the answer, sealed to the card,
        // for the provisioning tool to give it at the factory; and over
        // the air with its first change (`send_now`), for a card
        // registered some other way.
        self.sd_register(req.card_id)?;
        self.ensure_seq_room(3, now_ms)?;
        let labels = self.label_emms(req.card_id, secs(now_ms))?;
        tracing::info!(card = req.card_id, "card registered");
        let mut view = self.card(req.card_id)?;
        view.sd_labels = labels.iter().map(hex::encode).collect();
        Ok(view)
    }

    fn card_view(&self, r: CardRow) -> Result<CardView> {
        Ok(CardView {
            card_id: r.id,
            operator_id: r.operator_id,
            public_key: hex::encode(r.public_key),
            state: r.state,
            created: rfc3339(r.created_ms / 1000),
            revoked: r.revoked_ms.map(|x| rfc3339(x / 1000)),
            // One indexed query per card: a page is at most 10,000 cards.
            subscriptions: self.subscriptions(Some(r.id))?,
            paired_receiver: self.pairings.get(&r.id).map(hex::encode),
            sd_labels: Vec::new(),
        })
    }

    pub fn card(&self, id: u32) -> Result<CardView> {
        let row = store::cards::get(&self.conn, id)?.ok_or(Unknown::Card(id))?;
        self.card_view(row)
    }

    /// Cards in id order, from `after` (exclusive), at most `limit`.
    pub fn cards(&self, after: u32, limit: u32) -> Result<Vec<CardView>> {
        store::cards::page(&self.conn, after, limit)?
            .into_iter()
            .map(|r| self.card_view(r))
            .collect()
    }

    pub(super) fn require_active_card(&self, id: u32) -> Result<()> {
        if self.engine.has_card(id) {
            return Ok(());
        }
        match store::cards::state(&self.conn, id)? {
            None => Err(Unknown::Card(id).into()),
            Some(state) => Err(Clash::CardNotActive { card: id, state }.into()),
        }
    }

    /// Revokes a card for good: its subscriptions lapse, its pairing goes,
    /// and the key of every product it held is renewed, all in one
    /// transaction; then the engine forgets it and an EMM-G blocks it.
    pub fn revoke(&mut self, id: u32, now_ms: u64) -> Result<CardView> {
        self.require_active_card(id)?;
        let products: Vec<u32> = self
            .engine
            .entitlements(id)?
            .iter()
            .filter(|e| e.end >= secs(now_ms))
            .map(|e| e.product)
            .collect();
        let tx = self.conn.transaction()?;
        store::cards::revoke(&tx, id, now_ms)?;
        store::subscriptions::lapse_all_of(&tx, id)?;
        store::subscriptions::unpair(&tx, id)?;
        let renewals = renew_in_tx(
            &tx,
            &self.mk,
            &self.products,
            products.iter().copied(),
            self.timing,
            "revocation",
            now_ms,
        )?;
        tx.commit()?;
        self.engine.remove_card(id)?;
        self.pairings.remove(&id);
        self.carousel.forget(id);
        self.cards_revoked += 1;
        self.apply_renewals(renewals, now_ms)?;
        // Tell the card itself, for good measure; the renewal is what
        // actually cuts it off.
        self.ensure_seq_room(1, now_ms)?;
        match self
            .engine
            .emm_g(secs(now_ms), vec![EmmCommand::BlockCards(vec![id])])
        {
            Ok(emm) => self.emit(EMM_G_TABLE, &emm, true),
            Err(e) => self.internal_error(&format!("EMM-G for revoked card {id}: {e}")),
        }
        tracing::info!(card = id, products = products.len(), "card revoked");
        self.card(id)
    }

    /// Registers cards whose KEKs were derived elsewhere (a bulk import
    /// from another subscriber system, or a benchmark), each subscribed to
    /// `product` from `start` to `end` (Unix seconds), in one transaction.
    pub fn import_cards(
        &mut self,
        cards: Vec<(u32, [u8; 32], proto::secret::Kek)>,
        product: u32,
        start: u64,
        end: u64,
        now_ms: u64,
    ) -> Result<usize> {
        if !self.products.contains_key(&product) {
            return Err(Unknown::Product(ProductRef::Id(product)).into());
        }
        let ours = self.engine.operator().operator_id();
        let tx = self.conn.transaction()?;
        store::cards::import(&tx, &self.mk, ours, &cards, product, start, end, now_ms)?;
        tx.commit()?;
        let n = cards.len();
        for (id, public, kek) in cards {
            let p = self.engine.prepare_stored_card(id, public, kek)?;
            self.engine.insert_card(p)?;
            self.engine.raise_emm_u_seq(id, self.seq_floor)?;
            self.engine.entitle(id, product, start, end)?;
            self.carousel.members.insert(id);
        }
        // Their places in the forest, as the database gave them.
        self.load_sd(now_ms)?;
        Ok(n)
    }
}
