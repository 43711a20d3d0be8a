//! The CA side of the stream: the timers (PSI and ECM repetition, crypto
//! period polls, the EMM budget), each service's crypto period and ECM,
//! the EMM carousel in place of null packets, and the scrambling itself.

use super::*;

impl<F: CaFeed> Mux<F> {
    pub(super) fn timers(&mut self, now: u64) {
        let mut next = u64::MAX;
        for i in 0..self.services.len() {
            if self.services[i].pmt_in.is_none() {
                continue;
            }
            if now >= self.services[i].next_poll {
                self.poll(i, now);
            }
            next = next.min(self.services[i].next_poll);
        }
        self.refresh(now);
        if self.services.iter().any(|s| !s.on_air) {
            // Causes that time out, and their reports.
            next = next.min(now.saturating_add(POLL_MS * TICKS_PER_MS));
        }
        if now >= self.next_psi {
            self.emit_psi_bundle(now);
            self.next_psi = now.saturating_add(self.ecm_interval);
        }
        next = next.min(self.next_psi);
        if now >= self.next_cat {
            self.scratch.clear();
            self.cat_repeater.emit(&mut self.scratch);
            self.emit_scratch(now);
            self.stats.cat_sections += 1;
            self.next_cat = now.saturating_add(self.cat_interval);
        }
        next = next.min(self.next_cat);
        if self.emm.rate > 0 {
            if now >= self.emm.next_tick {
                self.emm_tick(now);
            }
            next = next.min(self.emm.next_tick);
        }
        self.next_event = next;
    }

    pub(super) fn poll(&mut self, i: usize, now: u64) {
        let now_ms = self.now_ms(now);
        let id = self.services[i].id;
        let result = self
            .feed
            .period(id, now_ms)
            .and_then(|p| p.check().map(|()| p));
        let next_ticks = |ms: u64| {
            ms.saturating_sub(self.start_unix_ms)
                .saturating_mul(TICKS_PER_MS)
        };
        let mut next_poll = now.saturating_add(POLL_MS * TICKS_PER_MS);
        if let Ok(CryptoPeriod {
            next_ms: Some(ms), ..
        }) = &result
        {
            let at = next_ticks(*ms);
            if at > now {
                next_poll = next_poll.min(at);
            }
        }
        let svc = &mut self.services[i];
        svc.next_poll = next_poll;
        match result {
            Ok(p) => {
                svc.failing_since = None;
                if svc.feed_error.take().is_some() {
                    self.detail_dirty = true;
                }
                let changed = match &svc.active {
                    Some(a) => a.epoch != p.epoch || a.section != p.ecm_section,
                    None => true,
                };
                if changed {
                    self.start_period(i, p, now);
                }
            }
            Err(e) => {
                let grace = self.ecm_interval.max(POLL_MS * TICKS_PER_MS) * 10;
                let since = *svc.failing_since.get_or_insert(now);
                if svc.active.is_some() && now.saturating_sub(since) > grace {
                    // The feed has lost the service: stop sending it rather
                    // than scramble on with a CW that nobody renews.
                    svc.active = None;
                    svc.scrambler = Scrambler::new();
                }
                self.stats.feed_errors += 1;
                let e = e.to_string();
                if svc.active.is_some() && svc.feed_error.is_none() {
                    tracing::warn!(
                        channel = %self.name,
                        service = id,
                        "channel {:?}: the CA feed fails for service {id}, which goes on with \
                         its current control word for now: {e}",
                        self.name
                    );
                }
                if svc.feed_error.as_ref() != Some(&e) {
                    svc.feed_error = Some(e);
                    self.detail_dirty = true;
                }
            }
        }
    }

    pub(super) fn start_period(&mut self, i: usize, p: CryptoPeriod, now: u64) {
        let svc = &mut self.services[i];
        let parity = p.parity();
        let previous = svc.active.as_ref().map(|a| (a.epoch, a.parity));
        svc.scrambler.set_even(&p.cws.even);
        svc.scrambler.set_odd(&p.cws.odd);
        if svc.ecm_repeater.set_sections(&[&p.ecm_section]).is_err() {
            // Not sent, as a section that cannot be cut into packets.
            svc.ecm_repeater.clear();
        }
        svc.active = Some(Active {
            epoch: p.epoch,
            parity,
            section: p.ecm_section,
        });
        if let Some((old_epoch, old_parity)) = previous {
            if old_epoch != p.epoch {
                self.stats.cw_changes += 1;
                if old_parity == parity {
                    // The feed skipped an epoch (its scheduler stalled for
                    // more than a period): this ECM keeps the table_id of
                    // the last one, and its CW was never announced.
                    // Receivers that pass the card every changed ECM
                    // recover at once; nothing better exists.
                    self.stats.epoch_skips += 1;
                    tracing::warn!(
                        service = svc.id,
                        epoch = p.epoch,
                        "the CA feed skipped an epoch"
                    );
                }
            }
        }
        // The new ECM goes out at once, before the first packet of the
        // period (a receiver passes an ECM to its card when it changes),
        // with the PAT and PMT; the repetitions follow from here.
        self.next_psi = now;
        self.next_event = now;
    }

    pub(super) fn emit_ecm(&mut self, i: usize, now: u64) {
        let svc = &mut self.services[i];
        if svc.active.is_none() {
            return;
        }
        self.scratch.clear();
        svc.ecm_repeater.emit(&mut self.scratch);
        self.emit_scratch(now);
        self.stats.ecm_sections += 1;
    }

    pub(super) fn emm_tick(&mut self, now: u64) {
        let dt = now.saturating_sub(self.emm.last_refill);
        self.emm.last_refill = now;
        self.emm.bucket = (self.emm.bucket
            + self.emm.rate as f64 * dt as f64 / (1000 * TICKS_PER_MS) as f64)
            .min(self.emm.burst);
        self.emm.next_tick = now.saturating_add(EMM_TICK_MS * TICKS_PER_MS);
        if self.emm.mode == EmmInsertion::AddRate {
            let made = self.fetch_emms(now);
            for p in made {
                self.emit(&p, now);
            }
        }
    }

    /// Asks the feed for what the budget allows and makes the packets,
    /// charging the budget for every TS byte.
    pub(super) fn fetch_emms(&mut self, now: u64) -> Vec<[u8; PACKET_LEN]> {
        if self.emm.bucket < PACKET_LEN as f64 {
            return Vec::new();
        }
        // A packet carries at most 183 bytes of sections after its
        // pointer_field.
        let max = (self.emm.bucket * 183.0 / PACKET_LEN as f64) as usize;
        let now_ms = self.now_ms(now);
        let mut sections = self
            .feed
            .emm_sections(now_ms, max.min(64 * MAX_SECTION_LEN));
        let before = sections.len();
        sections.retain(|s| PrivateSection::parse(s).is_ok_and(|p| p.table_id.is_emm()));
        self.stats.emm_rejected += (before - sections.len()) as u64;
        if sections.is_empty() {
            return Vec::new();
        }
        let refs: Vec<&[u8]> = sections.iter().map(|s| &**s).collect();
        let mut made = Vec::new();
        if self.emm.repeater.set_sections(&refs).is_err() || self.emm.repeater.emit(&mut made) == 0
        {
            return Vec::new();
        }
        self.emm.bucket -= (made.len() * PACKET_LEN) as f64;
        self.stats.emm_sections += sections.len() as u64;
        self.stats.emm_packets += made.len() as u64;
        made
    }

    pub(super) fn null_packet(&mut self, pkt: &mut [u8; PACKET_LEN], now: u64) {
        if self.emm.mode == EmmInsertion::ReplaceNulls && self.emm.rate > 0 {
            if self.emm.queue.is_empty() {
                let made = self.fetch_emms(now);
                self.emm.queue.extend(made);
            }
            if let Some(p) = self.emm.queue.pop_front() {
                self.stats.nulls_replaced += 1;
                self.emit(&p, now);
                return;
            }
        }
        // Our own null packet: an input's could carry anything in its
        // payload, and null counters carry no meaning.
        let _ = pkt;
        self.emit(&null_packet(), now);
    }

    // ------------------------------------------------------- scrambling

    pub(super) fn scramble(&mut self, i: usize, pid: u16, pkt: &mut [u8; PACKET_LEN], now: u64) {
        if pkt[3] >> 6 != 0 {
            // Scrambled by someone else: we cannot scramble it again, and
            // it must not go out marked with our parity. The whole service
            // is withheld while this goes on.
            self.stats.dropped_already_scrambled += 1;
            let svc = &mut self.services[i];
            let first = svc.scrambled_input.is_none();
            svc.scrambled_input = Some((pid, now));
            svc.withheld_packets[Withheld::Unscramblable.index()] += 1;
            if first || svc.on_air {
                self.detail_dirty = true;
                self.refresh(now);
            }
            return;
        }
        let svc = &self.services[i];
        let parity = match &svc.active {
            Some(a) if svc.on_air => a.parity,
            _ => return self.withhold(i),
        };
        self.relink(pid, pkt);
        match self.services[i].scrambler.scramble(pkt, parity) {
            Ok(Outcome::Done(_)) => {
                self.stats.scrambled += 1;
                self.services[i].scrambled_packets += 1;
            }
            // No payload byte: nothing to scramble (the adaptation field,
            // PCR included, stays clear by design).
            Ok(Outcome::Clear) => {}
            Ok(Outcome::NoKey(_)) | Err(_) => {
                self.stats.dropped_no_cw += 1;
                self.services[i].withheld_packets[Withheld::NoControlWord.index()] += 1;
                return;
            }
        }
        self.emit(pkt, now);
    }
}
