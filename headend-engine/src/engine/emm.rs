//! EMM-U and EMM-G: each sealed (EMM-U) or signed (EMM-G) under a
//! sequence number that only moves up.

use super::*;

impl KeyEngine {
    /// Appends one sealed EMM-U for the card to `out`: its time is `now`,
    /// and it carries one ENTITLE, with the current key, per product the
    /// card is entitled to at or after `now` (an ended entitlement must
    /// not receive new keys). Allocates nothing once `out` has room.
    pub fn write_emm_u_into(
        &mut self,
        card_id: u32,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), EngineError> {
        let slot = self
            .cards
            .slot(card_id)
            .ok_or(EngineError::UnknownCard(card_id))?;
        self.write_emm_u_at(slot, card_id, now, out)
    }

    pub(super) fn write_emm_u_at(
        &mut self,
        slot: usize,
        card_id: u32,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), EngineError> {
        let card = self.cards.at_mut(slot);
        let seq = card
            .last_seq
            .checked_add(1)
            .ok_or(EngineError::SequenceExhausted)?;
        let payload = &mut self.scratch;
        payload.time = now;
        payload.commands.clear();
        for e in card.entitlements.iter().filter(|e| e.end >= now) {
            // `entitle` checks the product exists and products are never
            // removed, so this lookup always succeeds.
            let p = self
                .products
                .get(&e.product)
                .ok_or(EngineError::UnknownProduct(e.product))?;
            // The pending key first, then the active one: a card keeps
            // the key of the last ECM it opened, and the newest.
            for g in p.pending.iter().chain([&p.active]) {
                payload.commands.push(EmmCommand::Entitle(Entitle {
                    product: e.product,
                    generation: g.number,
                    start: e.start,
                    end: e.end,
                    key: g.key.clone(),
                }));
            }
        }
        debug_assert!(8 + payload.commands.len() * ENTITLE_LEN + TAG_LEN <= MAX_BODY_LEN);
        Emm::seal_unique_into(&Sealer::new(&card.kek), card_id, seq, payload, out);
        card.last_seq = seq;
        // Drop (and so zeroize) the key copies now, not at the next call.
        payload.commands.clear();
        Ok(())
    }

    /// Appends the EMM-U of each card in turn (see
    /// [`KeyEngine::write_emm_u_into`]); EMMs are self-delimiting, so the
    /// result can be cut into sections as it is. An unknown card fails the
    /// batch before anything is written.
    pub fn emm_u_batch(
        &mut self,
        cards: &[u32],
        now: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), EngineError> {
        // Resolve every id first: the lookups are independent, so the CPU
        // overlaps their cache misses instead of taking one per EMM.
        let mut slots = std::mem::take(&mut self.batch_slots);
        slots.clear();
        let resolved = cards.iter().try_for_each(|&id| {
            let slot = self.cards.slot(id).ok_or(EngineError::UnknownCard(id))?;
            slots.push(slot);
            Ok(())
        });
        let written = resolved.and_then(|()| {
            cards
                .iter()
                .zip(&slots)
                .try_for_each(|(&id, &slot)| self.write_emm_u_at(slot, id, now, out))
        });
        self.batch_slots = slots;
        written
    }

    /// One EMM-U for the card with its current entitlements and keys.
    pub fn emm_u_for(&mut self, card_id: u32, now: u64) -> Result<Vec<u8>, EngineError> {
        let n = self.card(card_id)?.entitlements.len();
        let mut out = Vec::with_capacity(EMM_HEADER_LEN + 8 + n * ENTITLE_LEN + TAG_LEN);
        self.write_emm_u_into(card_id, now, &mut out)?;
        Ok(out)
    }

    /// An EMM-U with arbitrary commands (UNPAIR, REMOVE PRODUCT, ...).
    /// BLOCK CARDS is for EMM-Gs only.
    pub fn emm_u(
        &mut self,
        card_id: u32,
        now: u64,
        commands: Vec<EmmCommand>,
    ) -> Result<Vec<u8>, EngineError> {
        for c in &commands {
            if matches!(c, EmmCommand::BlockCards(_) | EmmCommand::SdKey(_)) {
                return Err(EngineError::CommandNotAllowed {
                    kind: "EMM-U",
                    command: command_name(c),
                });
            }
        }
        let payload = EmmPayload {
            time: now,
            commands,
        };
        let body_len = encoded_len(&payload) + TAG_LEN;
        if body_len > MAX_BODY_LEN {
            return Err(EngineError::EmmTooLarge(body_len));
        }
        let card = self
            .cards
            .get_mut(card_id)
            .ok_or(EngineError::UnknownCard(card_id))?;
        let seq = card
            .last_seq
            .checked_add(1)
            .ok_or(EngineError::SequenceExhausted)?;
        let mut out = Vec::with_capacity(EMM_HEADER_LEN + body_len);
        Emm::seal_unique_into(&Sealer::new(&card.kek), card_id, seq, &payload, &mut out);
        card.last_seq = seq;
        Ok(out)
    }

    /// An EMM-U that pairs the card with one receiver: from then on it
    /// seals control words only to that receiver's static key.
    pub fn emm_u_pair(
        &mut self,
        card_id: u32,
        receiver_pub: [u8; 32],
        now: u64,
    ) -> Result<Vec<u8>, EngineError> {
        self.emm_u(
            card_id,
            now,
            vec![EmmCommand::Pair {
                receiver: receiver_pub,
            }],
        )
    }

    // ---- EMM-G -------------------------------------------------------

    /// The signed EMM-Gs that deliver `key` (generation `generation` of
    /// `product`, which must be the product's pending or active key) to
    /// every card of `cover`: as many as the wraps need, each under its own
    /// sequence number. The first sequence number is the delivery's
    /// `issue`, which enters every wrap key: sequence numbers are never
    /// used twice, so neither is a wrap key.
    pub fn emm_g_sd(
        &mut self,
        authority: &proto::sd::SdAuthority,
        cover: &[proto::sd::Subset],
        product: u32,
        generation: u32,
        now: u64,
    ) -> Result<Vec<Vec<u8>>, EngineError> {
        let key = self.key_of(product, generation)?;
        let issue = self
            .emm_g_seq
            .checked_add(1)
            .ok_or(EngineError::SequenceExhausted)?;
        let delivery = proto::emm::SdKey::wrap(authority, cover, product, generation, issue, key);
        let mut out = Vec::new();
        for payload in delivery.payloads(now) {
            let seq = self
                .emm_g_seq
                .checked_add(1)
                .ok_or(EngineError::SequenceExhausted)?;
            out.push(Emm::sign_global(self.operator.signing(), seq, &payload));
            self.emm_g_seq = seq;
        }
        Ok(out)
    }

    /// A signed EMM-G. It is not encrypted, so it may carry no key: only
    /// BLOCK CARDS (what cards accept in an EMM-G), each of at most 63 ids.
    pub fn emm_g(&mut self, now: u64, commands: Vec<EmmCommand>) -> Result<Vec<u8>, EngineError> {
        for c in &commands {
            match c {
                EmmCommand::BlockCards(ids) if ids.len() > BLOCK_IDS_PER_COMMAND => {
                    return Err(EngineError::BlockListTooLong(ids.len()))
                }
                EmmCommand::BlockCards(_) => {}
                other => {
                    return Err(EngineError::CommandNotAllowed {
                        kind: "EMM-G",
                        command: command_name(other),
                    })
                }
            }
        }
        let payload = EmmPayload {
            time: now,
            commands,
        };
        let body_len = encoded_len(&payload) + SIG_LEN;
        if body_len > MAX_BODY_LEN {
            return Err(EngineError::EmmTooLarge(body_len));
        }
        let seq = self
            .emm_g_seq
            .checked_add(1)
            .ok_or(EngineError::SequenceExhausted)?;
        let out = Emm::sign_global(self.operator.signing(), seq, &payload);
        self.emm_g_seq = seq;
        Ok(out)
    }

    /// Signed EMM-Gs that block the given cards, split into as many
    /// commands and EMMs as the layout needs.
    pub fn emm_g_block_cards(
        &mut self,
        now: u64,
        cards: &[u32],
    ) -> Result<Vec<Vec<u8>>, EngineError> {
        // Header, time and signature around commands of 2 + 4 * 63 bytes.
        let per_emm = (MAX_BODY_LEN - 8 - SIG_LEN) / (2 + 4 * BLOCK_IDS_PER_COMMAND);
        cards
            .chunks(per_emm * BLOCK_IDS_PER_COMMAND)
            .map(|chunk| {
                let commands = chunk
                    .chunks(BLOCK_IDS_PER_COMMAND)
                    .map(|ids| EmmCommand::BlockCards(ids.to_vec()))
                    .collect();
                self.emm_g(now, commands)
            })
            .collect()
    }

    /// The last EMM-G sequence number used (0: none yet).
    pub fn emm_g_seq(&self) -> u64 {
        self.emm_g_seq
    }

    /// Restores the EMM-G counter from storage; it only moves forward.
    pub fn raise_emm_g_seq(&mut self, last_seq: u64) {
        self.emm_g_seq = self.emm_g_seq.max(last_seq);
    }
}

fn encoded_len(payload: &EmmPayload) -> usize {
    let mut buf = payload.to_bytes();
    let n = buf.len();
    // The encoding may hold product keys.
    buf.zeroize();
    n
}

fn command_name(c: &EmmCommand) -> &'static str {
    match c {
        EmmCommand::Entitle(_) => "ENTITLE",
        EmmCommand::Pair { .. } => "PAIR",
        EmmCommand::Unpair => "UNPAIR",
        EmmCommand::RemoveProduct { .. } => "REMOVE PRODUCT",
        EmmCommand::BlockCards(_) => "BLOCK CARDS",
        EmmCommand::SdKey(_) => "SD KEY",
        EmmCommand::SdLabels(_) => "SD LABELS",
        _ => "unknown",
    }
}
