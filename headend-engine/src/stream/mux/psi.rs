//! The PSI: the input's PAT, PMTs and CAT learnt, and ours built from
//! them (our PAT, each service's PMT with its CA and scrambling
//! descriptors, our CAT with the EMM PID).

use super::*;

impl<F: CaFeed> Mux<F> {
    /// The sections an input packet on PSI PID `pid` completed.
    pub(super) fn sections(
        &mut self,
        pid: u16,
        results: Vec<Result<Vec<u8>, ts::psi::PsiError>>,
        now: u64,
    ) {
        for r in results {
            match r {
                Ok(section) => self.section(pid, &section, now),
                Err(e) => {
                    self.stats.psi_errors += 1;
                    self.pmt_trouble(pid, || format!("its PMT on PID {pid:#06x}: {e}"));
                }
            }
        }
    }

    /// Notes why the PMT on `pid` is unusable, for the services that
    /// have no good one and whose PMT the PAT puts there.
    pub(super) fn pmt_trouble(&mut self, pid: u16, why: impl Fn() -> String) {
        let Some(pat) = &self.pat else { return };
        for svc in &mut self.services {
            if svc.pmt_in.is_none() && pat.pmt_pid(svc.id) == Some(pid) {
                svc.pmt_error = Some(why());
                self.detail_dirty = true;
            }
        }
    }

    pub(super) fn section(&mut self, pid: u16, section: &[u8], now: u64) {
        let role = self.role(pid);
        match (role, section.first().copied()) {
            (Role::Pat, Some(0x00)) => {
                match gather(&mut self.pat_sections, section, Pat::from_sections) {
                    Ok(Some(pat)) if pat.current_next => {
                        if self.pat.as_ref() != Some(&pat) {
                            // A service whose PMT moved waits for the PMT on
                            // its new PID.
                            for svc in &mut self.services {
                                if pat.pmt_pid(svc.id) != Some(svc.pmt_pid) {
                                    svc.pmt_in = None;
                                    svc.pmt_error = None;
                                }
                            }
                            self.pat = Some(pat);
                            self.pat_seen_at.get_or_insert(now);
                            self.reclassify();
                            // Our PAT goes out at once if it changed; then
                            // with the bundle.
                            self.detail_dirty = true;
                            self.refresh(now);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => self.stats.psi_errors += 1,
                }
            }
            (Role::CatIn, Some(0x01)) => {
                match gather(&mut self.cat_sections, section, Cat::from_sections) {
                    Ok(Some(cat)) if cat.current_next => {
                        let mut d = cat.descriptors;
                        d.retain(|d| !is_ours(d));
                        if d != self.cat_in {
                            self.cat_in = d;
                            self.rebuild_cat(false);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => self.stats.psi_errors += 1,
                }
            }
            (Role::PmtPass | Role::PmtOurs, Some(0x02)) => self.pmt_section(pid, section, now),
            (Role::Sdt, Some(0x42)) => self.sdt_section(pid, section, now),
            (Role::Sdt, Some(_)) => {
                self.emit_sections(pid, &[section], now);
            }
            // Anything else on a PMT PID that we regenerate is not sent.
            _ => {}
        }
    }

    pub(super) fn pmt_section(&mut self, pid: u16, section: &[u8], now: u64) {
        let pmt = match Pmt::from_section(section) {
            Ok(p) => p,
            Err(e) => {
                self.stats.psi_errors += 1;
                self.pmt_trouble(pid, || {
                    format!("its PMT on PID {pid:#06x} does not parse: {e}")
                });
                return;
            }
        };
        let listed = self
            .pat
            .as_ref()
            .and_then(|p| p.pmt_pid(pmt.program_number));
        if listed != Some(pid) || !pmt.current_next {
            // Not the PMT the PAT points at: ignored, not sent.
            return;
        }
        let Some(i) = self
            .services
            .iter()
            .position(|s| s.id == pmt.program_number)
        else {
            if !self.clear_services.contains(&pmt.program_number) {
                // Not sent: neither ours nor clear on purpose.
                return;
            }
            if self.other_pmts.get(&pmt.program_number) != Some(&pmt) {
                self.other_pmts.insert(pmt.program_number, pmt);
                self.reclassify();
            }
            if self.role(pid) == Role::PmtOurs {
                // A clear service's PMT on the PID of one of ours.
                self.emit_sections(pid, &[section], now);
            }
            return;
        };
        if self.services[i].pmt_in.as_ref() != Some(&pmt) {
            let svc = &mut self.services[i];
            let made = rewrite_pmt(&pmt, svc.ecm_pid, svc.pmt_out.as_ref()).and_then(|(out, s)| {
                let mut repeater = Repeater::new(pid)?;
                repeater.set_sections(&[&s])?;
                Ok((out, repeater))
            });
            match made {
                Ok((out, repeater)) => {
                    if svc.pmt_out.as_ref().map(|o| o.version) != Some(out.version) {
                        self.stats.pmt_versions += 1;
                    }
                    svc.pmt_out = Some(out);
                    svc.pmt_repeater = repeater;
                }
                Err(e) => {
                    self.stats.psi_errors += 1;
                    if self.services[i].pmt_in.is_none() {
                        self.services[i].pmt_error =
                            Some(format!("its PMT cannot take our CA signalling: {e}"));
                        self.detail_dirty = true;
                    }
                    return;
                }
            }
            let svc = &mut self.services[i];
            svc.pmt_in = Some(pmt);
            svc.pmt_pid = pid;
            svc.pmt_error = None;
            self.reclassify();
            self.detail_dirty = true;
            self.refresh(now);
            // A new or changed PMT goes out at once (if the service is on
            // the air); then with the bundle.
            self.emit_pmt(i, now);
        }
    }

    /// The input's SDT (actual TS) rewritten and sent at once: the
    /// programs we never send left out, each configured service marked
    /// scrambled (`free_CA_mode`, and a CA_identifier_descriptor for our
    /// CA system). One we cannot read or rewrite is dropped: sent as it
    /// came it would call a scrambled service free-to-air.
    pub(super) fn sdt_section(&mut self, pid: u16, section: &[u8], now: u64) {
        let made = Sdt::from_section(section).and_then(|mut sdt| {
            sdt.services.retain(|e| {
                self.clear_services.contains(&e.service_id)
                    || self.services.iter().any(|s| s.id == e.service_id)
            });
            for e in &mut sdt.services {
                if self.services.iter().any(|s| s.id == e.service_id) {
                    e.free_ca_mode = true;
                    e.descriptors
                        .retain(|d| d.tag() != ts::psi::descriptor_tag::CA_IDENTIFIER);
                    e.descriptors.push(ts::psi::iodoform_ca_identifier());
                }
            }
            sdt.to_section()
        });
        match made {
            Ok(out) => {
                self.emit_sections(pid, &[&out], now);
            }
            Err(e) => {
                self.stats.psi_errors += 1;
                let name = self.name.clone();
                self.warn_once(
                    "sdt",
                    format_args!(
                        "channel {:?}: the input's SDT is dropped, as it cannot be rewritten \
                         ({e}); receivers still find the services through the PAT: have the \
                         encoder send a valid SDT, at most 1,024 bytes a section",
                        name
                    ),
                );
            }
        }
    }

    /// Makes the PAT we send from the input's: its NIT entry, the
    /// services on the air and the clear services, under our own version
    /// number. True if it changed.
    pub(super) fn rebuild_pat(&mut self) -> bool {
        let Some(pat) = &self.pat else {
            return false;
        };
        let programs = pat
            .programs
            .iter()
            .filter(|e| {
                let n = e.program_number;
                (n == 0 && (0x10..NULL_PID).contains(&e.pid))
                    || (usable(e.pid)
                        && (self.clear_services.contains(&n)
                            || self.services.iter().any(|s| s.id == n && s.on_air)))
            })
            .cloned()
            .collect();
        let mut out = Pat {
            transport_stream_id: pat.transport_stream_id,
            version: pat.version & 0x1F,
            current_next: true,
            programs,
        };
        if let Some(prev) = &self.pat_out {
            out.version = prev.version;
            if &out == prev {
                return false;
            }
            out.version = (prev.version + 1) & 0x1F;
        }
        match out
            .to_section()
            .and_then(|s| self.pat_repeater.set_sections(&[&s]))
        {
            Ok(()) => {
                self.pat_out = Some(out);
                self.health_generation += 1;
                true
            }
            Err(e) => {
                // Fewer programs than the input's PAT: cannot be.
                self.stats.psi_errors += 1;
                self.warn_once("pat", format_args!("our PAT cannot be made: {e}"));
                false
            }
        }
    }

    /// Sends our PAT, unless it lists no service: with nothing on the
    /// air no PAT goes out at all, since a receiver that sees its service
    /// leave the PAT gives up, where one that sees no PMT waits. For the
    /// same reason, in the first second after the input's first PAT, while
    /// a service has yet to go on the air (its PMT and CW may come a
    /// moment after the others'), none goes out either.
    pub(super) fn emit_pat(&mut self, now: u64) {
        let starting = self
            .pat_seen_at
            .is_some_and(|t| now < t.saturating_add(REPORT_AFTER_MS * TICKS_PER_MS))
            && self.services.iter().any(|s| !s.on_air);
        let Some(pat) = &self.pat_out else {
            return;
        };
        if starting || pat.programs.iter().all(|e| e.program_number == 0) {
            return;
        }
        self.scratch.clear();
        self.pat_repeater.emit(&mut self.scratch);
        self.emit_scratch(now);
        self.stats.pat_sections += 1;
    }

    pub(super) fn emit_pmt(&mut self, i: usize, now: u64) {
        let svc = &self.services[i];
        let pid = svc.pmt_pid;
        if !svc.on_air || svc.pmt_out.is_none() || self.role(pid) != Role::PmtOurs {
            return;
        }
        // The PID's counter: another program's PMT may share the PID.
        self.scratch.clear();
        svc.pmt_repeater
            .emit_continuing(&mut self.cc[usize::from(pid)].last, &mut self.scratch);
        self.emit_scratch(now);
        self.stats.pmt_sections += 1;
    }

    /// PAT, then each live service's PMT and ECM, back to back: a
    /// receiver that tunes in has all it needs to descramble within one
    /// interval, whatever the input's PSI rate.
    pub(super) fn emit_psi_bundle(&mut self, now: u64) {
        self.emit_pat(now);
        for i in 0..self.services.len() {
            if self.services[i].on_air {
                self.emit_pmt(i, now);
                self.emit_ecm(i, now);
            }
        }
    }

    pub(super) fn rebuild_cat(&mut self, first: bool) {
        let mut descriptors = self.cat_in.clone();
        descriptors.push(Descriptor::iodoform_ca(self.emm.pid));
        let version = if first {
            0
        } else {
            (self.cat_out.version + 1) & 0x1F
        };
        let cat = Cat {
            version,
            current_next: true,
            descriptors,
        };
        match cat
            .to_section()
            .and_then(|s| self.cat_repeater.set_sections(&[&s]))
        {
            Ok(()) => {
                self.cat_out = cat;
                // Send the new table at once.
                self.next_cat = 0;
                self.next_event = 0;
            }
            Err(e) => {
                self.stats.psi_errors += 1;
                // Keep the CAT we have: it is valid.
                self.warn_once("cat", format_args!("input CAT cannot be merged: {e}"));
                if first {
                    // Our own descriptor alone always fits.
                    self.cat_in.clear();
                    self.rebuild_cat(true);
                }
            }
        }
    }
}

/// Adds a section of a table that may span several; the table, parsed,
/// once all of its sections are in.
fn gather<T>(
    sections: &mut TableSections,
    section: &[u8],
    parse: fn(&[&[u8]]) -> Result<T, ts::psi::PsiError>,
) -> Result<Option<T>, ts::psi::PsiError> {
    if section.get(5).is_some_and(|b| b & 1 == 0) {
        // A table not yet in force: not gathered with the current one.
        return Ok(None);
    }
    let Some(all) = sections.push(section)? else {
        return Ok(None);
    };
    let refs: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
    parse(&refs).map(Some)
}

fn is_ours(d: &Descriptor) -> bool {
    match d {
        Descriptor::Ca(ca) => ca.ca_system_id == CA_SYSTEM_ID,
        Descriptor::Scrambling { .. } => true,
        _ => false,
    }
}

/// The PMT we send for `pmt`: our CA_descriptor and the CISSA
/// scrambling_descriptor in the program loop (any of ours that came in
/// removed, from every loop). Its version is the input's the first time,
/// and one more than the last one we sent whenever the content changes.
fn rewrite_pmt(
    pmt: &Pmt,
    ecm_pid: u16,
    last: Option<&Pmt>,
) -> Result<(Pmt, Vec<u8>), ts::psi::PsiError> {
    let mut out = pmt.clone();
    out.descriptors.retain(|d| !is_ours(d));
    out.descriptors.push(Descriptor::iodoform_ca(ecm_pid));
    out.descriptors.push(Descriptor::cissa());
    for s in &mut out.streams {
        s.descriptors.retain(|d| !is_ours(d));
    }
    out.current_next = true;
    out.version = match last {
        None => pmt.version & 0x1F,
        Some(prev) => {
            let mut same = out.clone();
            same.version = prev.version;
            if &same == prev {
                prev.version
            } else {
                (prev.version + 1) & 0x1F
            }
        }
    };
    let s = out.to_section()?;
    Ok((out, s))
}
