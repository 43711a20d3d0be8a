//! Subset Difference in the headend: the forest, each card's number in
//! it, its labels (sent once, in EMM-Us, when the card is registered or
//! changed), and the planner that picks, per renewal, the cheaper
//! delivery of the new key: flat EMM-Us to every holder, or one
//! signed SD delivery (EMM-Gs) wrapping it for the cover of everyone
//! else (revoked cards, cards without the product, unassigned leaves).

use super::carousel::{air_bytes, EMM_U_AIR_BYTES};
use super::{Headend, Result, StateError, EMM_U_TABLE};
use crate::store;
use proto::emm::{SdLabels, MAX_EMM_U_PAYLOAD};
use proto::sd::{Forest, SdAuthority};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use ts::psi::TableId;

/// The forest's tree depth for a new database: 2^18 cards a tree.
pub const SD_DEPTH: u8 = proto::sd::DEFAULT_DEPTH;

/// The headend's Subset Difference state.
#[derive(Debug)]
pub(super) struct SdState {
    pub(super) authority: SdAuthority,
    /// Every card's number (revoked ones too).
    numbers: HashMap<u32, u64>,
    /// Numbers given so far: the next card gets this one.
    pub(super) assigned: u64,
    /// Cards sent their labels in this run.
    labelled: HashSet<u32>,
}

/// How a renewal's key goes to the cards.
#[derive(Debug, Clone)]
pub(super) enum Delivery {
    /// An EMM-U to every holder (they carry the pending key anyway).
    Flat,
    /// These EMM-G sections, signed, for the cover of the excluded cards.
    Sd {
        sections: Vec<Arc<[u8]>>,
        subsets: usize,
    },
}

/// What the planner weighed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Costs {
    pub(super) flat_bytes: u64,
    pub(super) sd_bytes: u64,
    pub(super) subsets: usize,
    pub(super) excluded: u64,
}

impl Headend {
    pub(super) fn load_sd(&mut self, now_ms: u64) -> Result<()> {
        let (depth, master) = store::sd::load_or_create(&self.conn, &self.mk, SD_DEPTH, now_ms)?;
        let forest = Forest::new(depth)
            .map_err(|e| StateError::Internal(format!("stored Subset Difference forest: {e}")))?;
        let numbers: HashMap<u32, u64> = store::sd::numbers(&self.conn)?.into_iter().collect();
        let assigned = numbers.values().max().map_or(0, |m| m + 1);
        self.sd = Some(SdState {
            authority: SdAuthority::new(forest, master),
            numbers,
            assigned,
            labelled: HashSet::new(),
        });
        Ok(())
    }

    fn sd(&self) -> Result<&SdState> {
        self.sd
            .as_ref()
            .ok_or_else(|| StateError::Internal("Subset Difference not loaded".into()))
    }

    /// Notes a registered card's number.
    pub(super) fn sd_register(&mut self, card: u32) -> Result<()> {
        let n = store::sd::number_of(&self.conn, card)?;
        if let Some(sd) = self.sd.as_mut() {
            sd.numbers.insert(card, n);
            sd.assigned = sd.assigned.max(n + 1);
        }
        Ok(())
    }

    /// The EMM-Us that carry a card's labels (a few kilobytes: sent once
    /// per run, when the card is registered or the operator changes it).
    pub(super) fn label_emms(&mut self, card: u32, now: u64) -> Result<Vec<Vec<u8>>> {
        let sd = self.sd()?;
        let n = *sd
            .numbers
            .get(&card)
            .ok_or_else(|| StateError::Internal(format!("card {card} has no SD number")))?;
        let forest = sd.authority.forest();
        let address = forest
            .address(n)
            .map_err(|e| StateError::Internal(format!("card {card}: {e}")))?;
        let labels = sd
            .authority
            .card_labels(address)
            .map_err(|e| StateError::Internal(format!("card {card}: {e}")))?;
        let commands = SdLabels::for_card(&labels);
        let per = (MAX_EMM_U_PAYLOAD - 8)
            / (2 + proto::emm::SD_LABELS_HEADER_LEN + 32 * proto::emm::SD_LABELS_PER_COMMAND);
        let mut out = Vec::new();
        for chunk in commands.chunks(per.max(1)) {
            out.push(self.engine.emm_u(card, now, chunk.to_vec())?);
        }
        Ok(out)
    }

    /// Sends a card its labels if it has not had them in this run.
    pub(super) fn send_labels_once(&mut self, card: u32, now: u64) {
        let done = self
            .sd
            .as_ref()
            .is_none_or(|sd| sd.labelled.contains(&card));
        if done {
            return;
        }
        match self.label_emms(card, now) {
            Ok(emms) => {
                // One-offs: not counted in the mean carousel EMM-U size.
                let (sections, bytes) = (self.emm_u_sections, self.emm_u_bytes);
                for emm in emms {
                    self.emit(EMM_U_TABLE, &emm, false);
                }
                (self.emm_u_sections, self.emm_u_bytes) = (sections, bytes);
                if let Some(sd) = self.sd.as_mut() {
                    sd.labelled.insert(card);
                }
            }
            Err(e) => self.internal_error(&format!("SD labels for card {card}: {e}")),
        }
    }

    /// Picks the delivery of `product`'s pending key to `holders`: flat
    /// EMM-Us, or the SD EMM-Gs for the cover of everyone else, whichever
    /// is fewer bytes on the air.
    pub(super) fn plan_delivery(
        &mut self,
        product: u32,
        generation: u32,
        holders: &[u32],
        now: u64,
    ) -> Result<(Delivery, Costs)> {
        let sd = self.sd()?;
        let assigned = sd.assigned;
        let mut held = vec![false; assigned as usize];
        for h in holders {
            if let Some(&n) = sd.numbers.get(h) {
                held[n as usize] = true;
            }
        }
        let excluded: Vec<u64> = (0..assigned).filter(|&n| !held[n as usize]).collect();
        let cover = proto::sd::cover(sd.authority.forest(), assigned, &excluded);
        let flat_bytes = holders.len() as u64 * EMM_U_AIR_BYTES;
        let mut costs = Costs {
            flat_bytes,
            sd_bytes: u64::MAX,
            subsets: cover.len(),
            excluded: excluded.len() as u64,
        };
        if cover.is_empty() || holders.is_empty() {
            return Ok((Delivery::Flat, costs));
        }
        // Price the SD delivery without signing it: wraps are 40 bytes,
        // each EMM-G has its header, time, SD_KEY and signature.
        let wraps_per = proto::emm::SdKey::wraps_fitting(proto::emm::MAX_EMM_G_PAYLOAD - 8).max(1);
        let emms = cover.len().div_ceil(wraps_per);
        let estimate = (proto::emm::SdKey::encoded_len(cover.len())
            + emms * (3 + proto::emm::EMM_HEADER_LEN + 8 + 64)) as u64;
        if estimate >= flat_bytes {
            costs.sd_bytes = estimate;
            return Ok((Delivery::Flat, costs));
        }
        let authority = sd.authority.clone();
        let emms = self
            .engine
            .emm_g_sd(&authority, &cover, product, generation, now)?;
        let mut sections: Vec<Arc<[u8]>> = Vec::with_capacity(emms.len());
        for emm in &emms {
            let s = ts::psi::emm_section(TableId(super::EMM_G_TABLE.0), emm)
                .map_err(|e| StateError::Internal(format!("SD EMM-G section: {e}")))?;
            sections.push(s.into());
        }
        costs.sd_bytes = sections.iter().map(|s| air_bytes(s.len())).sum();
        if costs.sd_bytes < flat_bytes {
            Ok((
                Delivery::Sd {
                    sections,
                    subsets: cover.len(),
                },
                costs,
            ))
        } else {
            Ok((Delivery::Flat, costs))
        }
    }
}
