//! Failing closed: why each configured service cannot go on the air now
//! ([`Withheld`]), the operator's detail for it, and the PID roles that
//! follow whenever the services or the input's PSI change.

use super::*;

impl<F: CaFeed> Mux<F> {
    /// Why service `i` cannot go on the air now, if it cannot.
    pub(super) fn cause(&self, i: usize, now: u64) -> Option<Withheld> {
        let svc = &self.services[i];
        if self.stats.packets_in == 0 {
            return Some(Withheld::NoInput);
        }
        let Some(pat) = &self.pat else {
            return Some(Withheld::NoPat);
        };
        let Some(pmt_pid) = pat.pmt_pid(svc.id) else {
            return Some(Withheld::ServiceMissing);
        };
        if svc.pmt_in.is_none() || self.role(pmt_pid) != Role::PmtOurs {
            return Some(Withheld::PmtUnparsable);
        }
        let hold = SCRAMBLED_HOLD_MS * TICKS_PER_MS;
        if svc.unscramblable.is_some()
            || svc
                .scrambled_input
                .is_some_and(|(_, t)| now.saturating_sub(t) < hold)
        {
            return Some(Withheld::Unscramblable);
        }
        if svc.active.is_none() {
            return Some(Withheld::NoControlWord);
        }
        None
    }

    /// What the operator reads next to the cause.
    pub(super) fn detail(&self, i: usize, cause: Withheld) -> String {
        let svc = &self.services[i];
        let pmt_pid = self.pat.as_ref().and_then(|p| p.pmt_pid(svc.id));
        match cause {
            Withheld::NoInput => "nothing read from the input yet".to_owned(),
            Withheld::NoPat => "the input carries no PAT".to_owned(),
            Withheld::ServiceMissing => {
                let programs: Vec<String> = self
                    .pat
                    .iter()
                    .flat_map(|p| &p.programs)
                    .filter(|e| e.program_number != 0)
                    .map(|e| e.program_number.to_string())
                    .collect();
                if programs.is_empty() {
                    format!("the input's PAT lists no program, so not {}", svc.id)
                } else {
                    format!(
                        "the input's PAT lists program{} {}, not {}",
                        if programs.len() == 1 { "" } else { "s" },
                        programs.join(", "),
                        svc.id
                    )
                }
            }
            Withheld::PmtUnparsable => match (&svc.pmt_error, pmt_pid) {
                (Some(e), _) => e.clone(),
                (None, Some(p)) if !usable(p) => {
                    format!("the input's PAT puts its PMT on reserved PID {p:#06x}")
                }
                (None, Some(p)) if self.role(p) == Role::Generated => {
                    format!("its PMT is on PID {p:#06x}, the channel's ECM or EMM PID")
                }
                (None, Some(p)) => format!("no PMT on PID {p:#06x} yet"),
                (None, None) => "no PMT yet".to_owned(),
            },
            Withheld::Unscramblable => match (&svc.unscramblable, svc.scrambled_input) {
                (Some(why), _) => why.clone(),
                (None, Some((pid, _))) => {
                    format!("input packets on PID {pid:#06x} come already scrambled")
                }
                (None, None) => "a component cannot be scrambled".to_owned(),
            },
            Withheld::NoControlWord => match &svc.feed_error {
                Some(e) => format!("no control word from the CA side: {e}"),
                None => "no control word from the CA side yet".to_owned(),
            },
        }
    }

    /// Decides which services are on the air, logs the causes that
    /// last, and remakes our PAT (sent with the next bundle, at once) when
    /// that changes what it lists.
    pub(super) fn refresh(&mut self, now: u64) {
        let dirty = std::mem::take(&mut self.detail_dirty);
        let mut changed = dirty;
        let hold = SCRAMBLED_HOLD_MS * TICKS_PER_MS;
        for i in 0..self.services.len() {
            let svc = &mut self.services[i];
            if svc
                .scrambled_input
                .is_some_and(|(_, t)| now.saturating_sub(t) >= hold)
            {
                svc.scrambled_input = None;
            }
            let cause = self.cause(i, now);
            let svc = &self.services[i];
            if cause != svc.withheld || (dirty && cause.is_some()) {
                let detail = cause.map(|c| self.detail(i, c));
                let svc = &mut self.services[i];
                if cause != svc.withheld || detail != svc.detail {
                    self.health_generation += 1;
                }
                if cause != svc.withheld {
                    svc.withheld_since = now;
                }
                svc.withheld = cause;
                svc.detail = detail;
            }
            let svc = &mut self.services[i];
            if svc.on_air != cause.is_none() {
                svc.on_air = cause.is_none();
                changed = true;
                self.health_generation += 1;
            }
            match cause {
                Some(c)
                    if svc.reported != Some(c)
                        && now.saturating_sub(svc.withheld_since)
                            >= REPORT_AFTER_MS * TICKS_PER_MS =>
                {
                    svc.reported = Some(c);
                    svc.reports += 1;
                    tracing::error!(
                        channel = %self.name,
                        service = svc.id,
                        cause = c.as_str(),
                        "channel {:?}: service {} is off the air: {}; {}",
                        self.name,
                        svc.id,
                        svc.detail.as_deref().unwrap_or(""),
                        c.fix()
                    );
                }
                None if svc.reported.take().is_some() => {
                    tracing::info!(
                        channel = %self.name,
                        service = svc.id,
                        "channel {:?}: service {} is on the air again",
                        self.name,
                        svc.id
                    );
                }
                _ => {}
            }
        }
        self.orphan_withheld = self.services.iter().any(|s| {
            matches!(
                s.withheld,
                Some(Withheld::NoPat | Withheld::ServiceMissing | Withheld::PmtUnparsable)
            )
        });
        if changed && self.rebuild_pat() {
            self.next_psi = now;
            self.next_event = now;
        }
    }

    /// Rebuilds every PID's role, and which may carry clear content,
    /// from the PAT and the PMTs.
    pub(super) fn reclassify(&mut self) {
        let mut roles = vec![Role::Drop; PIDS];
        roles[0] = Role::Pat;
        roles[1] = Role::CatIn;
        for r in &mut roles[2..0x20] {
            *r = Role::Pass;
        }
        roles[usize::from(SDT_PID)] = Role::Sdt;
        roles[usize::from(NULL_PID)] = Role::Null;
        // Nothing of the input goes out on our ECM and EMM PIDs.
        for s in &self.services {
            roles[usize::from(s.ecm_pid)] = Role::Generated;
        }
        roles[usize::from(self.emm.pid)] = Role::Generated;
        let mut programs = Vec::new();
        if let Some(pat) = &self.pat {
            for e in &pat.programs {
                if e.program_number == 0 {
                    if usable(e.pid) && roles[usize::from(e.pid)] == Role::Drop {
                        roles[usize::from(e.pid)] = Role::Pass; // NIT
                    }
                    continue;
                }
                programs.push(e.program_number);
                if !usable(e.pid) {
                    continue;
                }
                let r = &mut roles[usize::from(e.pid)];
                if self.services.iter().any(|s| s.id == e.program_number) {
                    if *r != Role::Generated {
                        *r = Role::PmtOurs;
                    }
                } else if self.clear_services.contains(&e.program_number) && *r == Role::Drop {
                    *r = Role::PmtPass;
                }
            }
        }
        // The clear services, as they came.
        for (program, pmt) in &self.other_pmts {
            if !programs.contains(program) || !self.clear_services.contains(program) {
                continue;
            }
            for pid in pmt.streams.iter().map(|s| s.pid) {
                if usable(pid) && roles[usize::from(pid)] == Role::Drop {
                    roles[usize::from(pid)] = Role::Pass;
                }
            }
            if usable(pmt.pcr_pid) && roles[usize::from(pmt.pcr_pid)] == Role::Drop {
                roles[usize::from(pmt.pcr_pid)] = Role::PcrClear;
            }
        }
        // Ours: every PES component scrambled, over anything else that
        // claims its PID; a component we cannot scramble withholds the
        // whole service.
        let mut clock_pid = None;
        let mut why_not = vec![None; self.services.len()];
        for (i, svc) in self.services.iter().enumerate() {
            let Some(pmt) = svc.pmt_in.as_ref().filter(|_| programs.contains(&svc.id)) else {
                continue;
            };
            let me = i as u8;
            for st in &pmt.streams {
                let pid = st.pid;
                let r = &mut roles[usize::from(pid)];
                if !carries_pes(st.stream_type) {
                    if usable(pid) && matches!(*r, Role::Drop | Role::Pass) {
                        *r = Role::Side(me);
                    }
                    continue;
                }
                let why = if !usable(pid) {
                    Some("a reserved PID")
                } else {
                    match *r {
                        Role::Generated => Some("the channel's ECM or EMM PID"),
                        Role::PmtOurs | Role::PmtPass => Some("a PMT PID"),
                        _ => None,
                    }
                };
                match why {
                    Some(what) => {
                        why_not[i].get_or_insert_with(|| {
                            format!(
                                "its component on PID {pid:#06x} (stream_type {:#04x}) is on {what}",
                                st.stream_type
                            )
                        });
                        if (2..0x20).contains(&pid) {
                            // Not as SI either: it is said to be content.
                            *r = Role::Drop;
                        }
                    }
                    None => *r = Role::Es(me),
                }
            }
            if usable(pmt.pcr_pid) {
                let r = &mut roles[usize::from(pmt.pcr_pid)];
                if *r == Role::Drop {
                    *r = Role::Pcr(me);
                }
                clock_pid.get_or_insert(pmt.pcr_pid);
            }
        }
        for (svc, why) in self.services.iter_mut().zip(why_not) {
            if svc.unscramblable != why {
                svc.unscramblable = why;
                self.detail_dirty = true;
            }
        }
        for (ok, r) in self.clear_ok.iter_mut().zip(&roles) {
            *ok = !matches!(r, Role::Drop | Role::Es(_) | Role::Pcr(_) | Role::PcrClear);
        }
        // A PID whose role changed starts its sections afresh.
        for (pid, &role) in (0..=MAX_PID).zip(&roles) {
            if role == Role::Drop {
                self.demux.clear(pid);
            } else {
                // Every PID of the table is in range.
                let _ = self.demux.set(pid, role);
            }
        }
        if let Some(pid) = clock_pid {
            self.clock.set_pid(pid);
        }
        // Services may have gone on or off the air: run the timers at once.
        self.next_event = 0;
    }
}
