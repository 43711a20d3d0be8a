//! Which PID carries what: the service, its components, its ECM and EMM
//! PIDs, learnt from the PAT, the PMT and the CAT.
//!
//! [`ServiceMap`] holds the role of every PID in a [`Demux`], which
//! assembles the sections of each table PID, and follows the tables as
//! they change mid-stream (a new PMT moves the components and the ECM PID;
//! a new CAT moves the EMM PID). The PAT and the CAT may span several
//! sections: they are gathered ([`TableSections`]) before they are read.
//! [`Search`] is the start of a run: it
//! holds the packets until the PAT and the service's PMT have been seen,
//! so that they can be replayed once the roles are known.
//!
//! What it must never do: write a packet, look into a payload other than
//! PSI, or talk to the CA module. It refuses a service the receiver
//! cannot descramble (clear, or scrambled by another CA system) as soon
//! as its PMT says so; what follows from a new ECM PID is the caller's.

use crate::error::Failure;
use std::collections::VecDeque;
use ts::demux::{Demux, Demuxed, PidRole};
use ts::packet::{CAT_PID, NULL_PID, PAT_PID};
use ts::psi::{Cat, Descriptor, Pat, Pmt, PsiError, TableSections, CA_SYSTEM_ID};
use ts::{Packet, PACKET_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Not part of the output.
    Drop,
    /// Written as it is (SI, null packets).
    Pass,
    Pat,
    Pmt,
    Cat,
    Ecm,
    Emm,
    /// A component of the service: descrambled.
    Es,
    /// The service's PCR PID when it is not one of its components (another
    /// service's stream, say): its payload is not ours to descramble, so a
    /// scrambled packet goes out as its adaptation field alone.
    PcrOnly,
}

impl PidRole for Role {
    fn carries_sections(&self) -> bool {
        matches!(
            self,
            Role::Pat | Role::Pmt | Role::Cat | Role::Ecm | Role::Emm
        )
    }
}

/// The role of a PID that no table has claimed.
fn default_role(pid: u16) -> Role {
    match pid {
        PAT_PID => Role::Pat,
        CAT_PID => Role::Cat,
        // DVB SI (NIT, SDT, EIT, TDT...) and stuffing stay in the output.
        0x10..=0x1F | NULL_PID => Role::Pass,
        _ => Role::Drop,
    }
}

/// The role of every PID, with the section assembly of the table PIDs,
/// and the PIDs the service's tables named.
#[derive(Debug)]
pub(super) struct ServiceMap {
    /// A PID with no role in it is dropped ([`Role::Drop`]).
    demux: Demux<Role>,
    program: Option<u16>,
    pmt_pid: Option<u16>,
    es_pids: Vec<u16>,
    pcr_pid: Option<u16>,
    ecm_pid: Option<u16>,
    emm_pid: Option<u16>,
    /// The ECM PIDs of other CA systems, dropped from the output.
    dropped_ca_pids: Vec<u16>,
    /// The service left the PAT after it had been found (see
    /// [`ServiceMap::learn_pat`]).
    off_air: bool,
}

impl ServiceMap {
    pub(super) fn new() -> Self {
        let mut demux = Demux::new();
        for pid in [PAT_PID, CAT_PID]
            .into_iter()
            .chain(0x10..=0x1F)
            .chain([NULL_PID])
        {
            // All in range.
            let _ = demux.set(pid, default_role(pid));
        }
        ServiceMap {
            demux,
            program: None,
            pmt_pid: None,
            es_pids: Vec::new(),
            pcr_pid: None,
            ecm_pid: None,
            emm_pid: None,
            dropped_ca_pids: Vec::new(),
            off_air: false,
        }
    }

    /// The service (program_number), once a PAT has named it.
    pub(super) fn program(&self) -> Option<u16> {
        self.program
    }

    pub(super) fn pmt_pid(&self) -> Option<u16> {
        self.pmt_pid
    }

    /// The service's PCR PID, unless it is the null PID (no PCR).
    pub(super) fn pcr_pid(&self) -> Option<u16> {
        self.pcr_pid
    }

    pub(super) fn ecm_pid(&self) -> Option<u16> {
        self.ecm_pid
    }

    pub(super) fn emm_pid(&self) -> Option<u16> {
        self.emm_pid
    }

    #[inline]
    pub(super) fn role(&self, pid: u16) -> Role {
        self.demux.role(pid).unwrap_or(Role::Drop)
    }

    /// One packet: its PID's role, and the sections it completed on a
    /// table PID.
    #[inline]
    pub(super) fn push(&mut self, view: &Packet<'_>) -> Demuxed<Role> {
        self.demux.push(view).unwrap_or(Demuxed {
            pid: view.pid(),
            role: Role::Drop,
            sections: Vec::new(),
        })
    }

    /// Gives `pid` its role; a PID that changes role starts its sections
    /// afresh.
    fn set_role(&mut self, pid: u16, role: Role) {
        if role == Role::Drop {
            self.demux.clear(pid);
        } else {
            // A PID out of range has no packets, and so no role to keep.
            let _ = self.demux.set(pid, role);
        }
    }

    /// Gives a PID back its role from before any table claimed it.
    fn release(&mut self, pid: u16) {
        self.set_role(pid, default_role(pid));
    }

    /// A PAT: the service (the one asked for, else the one already chosen,
    /// else the first) and its PMT PID. `Ok(false)` when the service was
    /// on the air and has left the PAT: a headend that fails closed
    /// withholds a service it cannot scramble (no CW, a lost input) and
    /// announces it again when it can. Nothing of it arrives meanwhile, so
    /// nothing goes out; the caller waits for it with the layout it has.
    pub(super) fn learn_pat(&mut self, pat: &Pat, wanted: Option<u16>) -> Result<bool, Failure> {
        let (program, pid) = match choose(pat, self.program.or(wanted)) {
            Ok(chosen) => chosen,
            Err(Failure::UnknownService { service, .. }) if self.program == Some(service) => {
                self.off_air = true;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        self.off_air = false;
        if self.pmt_pid != Some(pid) {
            if let Some(old) = self.pmt_pid {
                self.release(old);
            }
            self.set_role(pid, Role::Pmt);
            self.pmt_pid = Some(pid);
        }
        self.program = Some(program);
        Ok(true)
    }

    /// Whether the service has left the PAT (see [`ServiceMap::learn_pat`]).
    pub(super) fn off_air(&self) -> bool {
        self.off_air
    }

    /// The input was interrupted: every PID's partial section is dropped
    /// (the roles stay).
    pub(super) fn discontinuity(&mut self) {
        self.demux.discontinuity();
    }

    /// The service's PMT: its components, PCR PID and ECM PID replace
    /// those of the previous one. Returns whether the ECM PID changed.
    pub(super) fn learn_pmt(&mut self, pmt: &Pmt) -> Result<bool, Failure> {
        let cas = all_ca(pmt);
        let ours = cas
            .iter()
            .find(|(id, _)| *id == CA_SYSTEM_ID)
            .map(|&(_, pid)| pid);
        if cas.is_empty() {
            // A clear service: nothing for the card to do, and a receiver
            // that passed it through would hide a headend that failed open.
            return Err(Failure::NotScrambled {
                service: pmt.program_number,
            });
        }
        if ours.is_none() {
            let mut ids: Vec<u16> = cas.iter().map(|&(id, _)| id).collect();
            ids.dedup();
            return Err(Failure::ForeignCa {
                service: pmt.program_number,
                ca_system_ids: ids,
            });
        }
        // Forget the old layout, then set the new one.
        for pid in std::mem::take(&mut self.es_pids)
            .into_iter()
            .chain(self.pcr_pid.take())
            .chain(std::mem::take(&mut self.dropped_ca_pids))
        {
            self.release(pid);
        }
        let mut es: Vec<u16> = pmt.streams.iter().map(|s| s.pid).collect();
        for &pid in &es {
            if !matches!(self.role(pid), Role::Pat | Role::Pmt | Role::Cat) {
                self.set_role(pid, Role::Es);
            }
        }
        if !matches!(
            self.role(pmt.pcr_pid),
            Role::Es | Role::Pat | Role::Pmt | Role::Cat | Role::Pass
        ) {
            self.set_role(pmt.pcr_pid, Role::PcrOnly);
            es.push(pmt.pcr_pid);
        }
        self.es_pids = es;
        self.pcr_pid = Some(pmt.pcr_pid).filter(|&p| p != NULL_PID);
        for &(_, pid) in &cas {
            if Some(pid) != ours {
                self.set_role(pid, Role::Drop);
                self.dropped_ca_pids.push(pid);
            }
        }
        Ok(self.switch_ca_pid(ours, Role::Ecm, |m| &mut m.ecm_pid))
    }

    /// A CAT: the EMM PID of Iodoform's CA system, if it names one.
    pub(super) fn learn_cat(&mut self, cat: &Cat) {
        let pid = cat.emm_pid(CA_SYSTEM_ID);
        self.switch_ca_pid(pid, Role::Emm, |m| &mut m.emm_pid);
    }

    /// Moves `role` (ECM or EMM) to the PID `new` from the one `slot`
    /// holds (its sections start afresh there); whether the PID changed.
    fn switch_ca_pid(
        &mut self,
        new: Option<u16>,
        role: Role,
        slot: fn(&mut Self) -> &mut Option<u16>,
    ) -> bool {
        let old = *slot(self);
        if old == new {
            return false;
        }
        if let Some(old) = old {
            self.release(old);
        }
        if let Some(pid) = new {
            self.set_role(pid, role);
        }
        *slot(self) = new;
        true
    }
}

/// The start of a run: the packets held while the PAT, the CAT and the
/// service's PMT are looked for.
#[derive(Debug)]
pub(super) struct Search {
    hold: VecDeque<[u8; PACKET_LEN]>,
    /// The PAT, the CAT and, once the PAT has named it, the PMT PID.
    demux: Demux<Role>,
    pat: Option<Pat>,
    cat: Option<Cat>,
    /// The PAT and the CAT may each span several sections.
    pat_sections: TableSections,
    cat_sections: TableSections,
    /// (program_number, PMT PID)
    target: Option<(u16, u16)>,
}

impl Default for Search {
    fn default() -> Self {
        let mut demux = Demux::new();
        for (pid, role) in [(PAT_PID, Role::Pat), (CAT_PID, Role::Cat)] {
            // In range.
            let _ = demux.set(pid, role);
        }
        Search {
            hold: VecDeque::new(),
            demux,
            pat: None,
            cat: None,
            pat_sections: TableSections::new(),
            cat_sections: TableSections::new(),
            target: None,
        }
    }
}

/// What the search found: the tables to learn, then the packets to replay
/// in order.
#[derive(Debug)]
pub(super) struct Found {
    pub(super) pat: Option<Pat>,
    pub(super) cat: Option<Cat>,
    pub(super) pmt: Pmt,
    pub(super) held: VecDeque<[u8; PACKET_LEN]>,
}

impl Search {
    /// Holds one packet and looks at it. `Some` once the service's PMT has
    /// been seen; an error when more than `limit` packets were held, or
    /// the PAT does not have the service.
    pub(super) fn look(
        &mut self,
        p: &[u8; PACKET_LEN],
        view: &Packet<'_>,
        wanted: Option<u16>,
        limit: usize,
        packets_in: u64,
    ) -> Result<Option<Pmt>, Failure> {
        self.hold.push_back(*p);
        if self.hold.len() > limit {
            return Err(self.missing(packets_in));
        }
        let mut found = None;
        let Some(Demuxed { role, sections, .. }) = self.demux.push(view) else {
            return Ok(None);
        };
        for s in sections.into_iter().flatten() {
            match role {
                Role::Pat => {
                    if let Gathered::Whole(pat, _) =
                        gather(&mut self.pat_sections, &s, Pat::from_sections)
                    {
                        let (program, pid) = choose(&pat, wanted)?;
                        self.retarget(pid);
                        self.target = Some((program, pid));
                        self.pat = Some(pat);
                    }
                }
                Role::Cat => {
                    if let Gathered::Whole(cat, _) =
                        gather(&mut self.cat_sections, &s, Cat::from_sections)
                    {
                        self.cat = Some(cat);
                    }
                }
                _ => {
                    let program = self.target.map_or(0, |t| t.0);
                    if let Ok(pmt) = Pmt::from_section(&s) {
                        if pmt.program_number == program {
                            found = Some(pmt);
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    /// Looks for the PMT on `pid` (where its sections start afresh when
    /// it moved) instead of the last PMT PID. The PAT and CAT PIDs stay
    /// what they are.
    fn retarget(&mut self, pid: u16) {
        let old = self.target.map(|t| t.1);
        if old == Some(pid) {
            return;
        }
        if let Some(old) = old.filter(|&p| p != PAT_PID && p != CAT_PID) {
            self.demux.clear(old);
        }
        if pid != PAT_PID && pid != CAT_PID {
            // 13 bits: in range.
            let _ = self.demux.set(pid, Role::Pmt);
        }
    }

    /// Ends the search with the PMT that [`Search::look`] found.
    pub(super) fn found(self, pmt: Pmt) -> Found {
        Found {
            pat: self.pat,
            cat: self.cat,
            pmt,
            held: self.hold,
        }
    }

    /// Why the search did not end: what is missing.
    pub(super) fn missing(&self, packets: u64) -> Failure {
        match (&self.pat, self.target) {
            (None, _) => Failure::NotTs(format!(
                "no PAT (program association table) in {packets} packets"
            )),
            (Some(_), Some((program, pid))) => Failure::NotTs(format!(
                "no PMT for service {program} on PID 0x{pid:04X} in {packets} packets"
            )),
            (Some(_), None) => Failure::NotTs("the PAT lists no services".into()),
        }
    }
}

/// What a section of a table that may span several gave ([`gather`]).
#[derive(Debug)]
pub(super) enum Gathered<T> {
    /// The table, parsed, and its sections end to end.
    Whole(T, Vec<u8>),
    /// More sections are to come.
    Partial,
    /// A broken section, or a whole table that does not parse.
    Broken,
}

/// Adds a section to `sections`; the table once its last section is in.
pub(super) fn gather<T>(
    sections: &mut TableSections,
    section: &[u8],
    parse: fn(&[&[u8]]) -> Result<T, PsiError>,
) -> Gathered<T> {
    match sections.push(section) {
        Err(_) => Gathered::Broken,
        Ok(None) => Gathered::Partial,
        Ok(Some(all)) => {
            let refs: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
            match parse(&refs) {
                Ok(t) => Gathered::Whole(t, all.concat()),
                Err(_) => Gathered::Broken,
            }
        }
    }
}

/// What changed from one PMT of the service to the next, for the log: the
/// version, the ECM PID, the components added and removed.
pub(super) fn pmt_change(old: &Pmt, new: &Pmt) -> String {
    let ecm = |p: &Pmt| {
        p.ca_descriptors(CA_SYSTEM_ID)
            .first()
            .map(|c| format!("0x{:04X}", c.ca_pid))
            .unwrap_or_else(|| "none".into())
    };
    let pids = |p: &Pmt| p.streams.iter().map(|s| s.pid).collect::<Vec<_>>();
    let (a, b) = (pids(old), pids(new));
    let mut parts = vec![format!("version {} -> {}", old.version, new.version)];
    let (e0, e1) = (ecm(old), ecm(new));
    if e0 != e1 {
        parts.push(format!("ECM PID {e0} -> {e1}"));
    } else if old.ca_descriptors(CA_SYSTEM_ID) != new.ca_descriptors(CA_SYSTEM_ID) {
        parts.push("new CA descriptor".into());
    }
    for pid in b.iter().filter(|p| !a.contains(p)) {
        parts.push(format!("component 0x{pid:04X} added"));
    }
    for pid in a.iter().filter(|p| !b.contains(p)) {
        parts.push(format!("component 0x{pid:04X} removed"));
    }
    if old.pcr_pid != new.pcr_pid {
        parts.push(format!(
            "PCR PID 0x{:04X} -> 0x{:04X}",
            old.pcr_pid, new.pcr_pid
        ));
    }
    parts.join(", ")
}

/// Picks the service in a PAT: the one asked for, or the first.
fn choose(pat: &Pat, wanted: Option<u16>) -> Result<(u16, u16), Failure> {
    let services: Vec<u16> = pat
        .programs
        .iter()
        .filter(|e| e.program_number != 0)
        .map(|e| e.program_number)
        .collect();
    let program = match wanted {
        Some(s) => s,
        None => *services
            .first()
            .ok_or_else(|| Failure::NotTs("the PAT lists no services".into()))?,
    };
    match pat.programs.iter().find(|e| e.program_number == program) {
        Some(e) if program != 0 => Ok((program, e.pid)),
        _ => Err(Failure::UnknownService {
            service: program,
            available: services,
        }),
    }
}

/// The CA_system_ids of every CA_descriptor in a PMT, and their PIDs.
fn all_ca(pmt: &Pmt) -> Vec<(u16, u16)> {
    pmt.descriptors
        .iter()
        .chain(pmt.streams.iter().flat_map(|s| s.descriptors.iter()))
        .filter_map(|d| match d {
            Descriptor::Ca(ca) => Some((ca.ca_system_id, ca.ca_pid)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ts::psi::{CaDescriptor, PatEntry, PmtStream};

    fn pat(entries: &[(u16, u16)]) -> Pat {
        Pat {
            transport_stream_id: 1,
            version: 0,
            current_next: true,
            programs: entries
                .iter()
                .map(|&(program_number, pid)| PatEntry {
                    program_number,
                    pid,
                })
                .collect(),
        }
    }

    fn pmt(program: u16, pcr: u16, es: &[u16], ca: &[(u16, u16)]) -> Pmt {
        Pmt {
            program_number: program,
            version: 0,
            current_next: true,
            pcr_pid: pcr,
            descriptors: ca
                .iter()
                .map(|&(ca_system_id, ca_pid)| {
                    Descriptor::Ca(CaDescriptor {
                        ca_system_id,
                        ca_pid,
                        private_data: Vec::new(),
                    })
                })
                .collect(),
            streams: es
                .iter()
                .map(|&pid| PmtStream {
                    stream_type: 0x1B,
                    pid,
                    descriptors: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn choose_takes_the_service_asked_for_or_the_first() {
        let p = pat(&[(0, 0x10), (3, 0x300), (1, 0x100)]);
        assert_eq!(choose(&p, None).unwrap(), (3, 0x300));
        assert_eq!(choose(&p, Some(1)).unwrap(), (1, 0x100));
        match choose(&p, Some(2)) {
            Err(Failure::UnknownService { service, available }) => {
                assert_eq!((service, available), (2, vec![3, 1]));
            }
            other => panic!("{other:?}"),
        }
        // Program 0 is the network PID, not a service.
        assert!(matches!(
            choose(&p, Some(0)),
            Err(Failure::UnknownService { service: 0, .. })
        ));
        assert!(matches!(
            choose(&pat(&[(0, 0x10)]), None),
            Err(Failure::NotTs(_))
        ));
    }

    #[test]
    fn roles_follow_the_tables_and_go_back_when_released() {
        let mut m = ServiceMap::new();
        assert_eq!(m.role(PAT_PID), Role::Pat);
        assert_eq!(m.role(0x11), Role::Pass);
        assert_eq!(m.role(0x100), Role::Drop);
        m.learn_pat(&pat(&[(1, 0x100)]), None).unwrap();
        assert_eq!((m.program(), m.role(0x100)), (Some(1), Role::Pmt));
        // The PCR on a PID of no component; another system's ECM PID.
        let first = pmt(
            1,
            0x1FE,
            &[0x101, 0x102],
            &[(CA_SYSTEM_ID, 0x1F0), (0x0B00, 0x1E0)],
        );
        assert!(m.learn_pmt(&first).unwrap());
        assert_eq!(m.role(0x101), Role::Es);
        assert_eq!(m.role(0x1FE), Role::PcrOnly);
        assert_eq!(m.role(0x1F0), Role::Ecm);
        assert_eq!(m.role(0x1E0), Role::Drop);
        assert_eq!(m.pcr_pid(), Some(0x1FE));
        // The same ECM PID again: no change to report.
        assert!(!m.learn_pmt(&first).unwrap());
        // A new PMT: the old components and the old ECM PID are released.
        let second = pmt(1, 0x103, &[0x103], &[(CA_SYSTEM_ID, 0x1F2)]);
        assert!(m.learn_pmt(&second).unwrap());
        assert_eq!(m.role(0x101), Role::Drop);
        assert_eq!(m.role(0x1FE), Role::Drop);
        assert_eq!(m.role(0x1F0), Role::Drop);
        assert_eq!(m.role(0x103), Role::Es);
        assert_eq!((m.ecm_pid(), m.pcr_pid()), (Some(0x1F2), Some(0x103)));
        // A CAT names the EMM PID; a new one moves it.
        let cat = |pid| Cat {
            version: 0,
            current_next: true,
            descriptors: vec![Descriptor::iodoform_ca(pid)],
        };
        m.learn_cat(&cat(0x1F1));
        assert_eq!((m.emm_pid(), m.role(0x1F1)), (Some(0x1F1), Role::Emm));
        m.learn_cat(&cat(0x1F3));
        assert_eq!((m.role(0x1F1), m.role(0x1F3)), (Role::Drop, Role::Emm));
    }

    #[test]
    fn a_component_on_a_table_or_si_pid_keeps_that_role() {
        let mut m = ServiceMap::new();
        m.learn_pat(&pat(&[(1, 0x100)]), None).unwrap();
        // A (broken) PMT that lists its own PID and the SDT's.
        m.learn_pmt(&pmt(1, 0x11, &[0x100, 0x101], &[(CA_SYSTEM_ID, 0x1F0)]))
            .unwrap();
        assert_eq!(m.role(0x100), Role::Pmt);
        assert_eq!(m.role(0x101), Role::Es);
        assert_eq!(m.role(0x11), Role::Pass);
    }

    #[test]
    fn only_a_scrambled_service_of_our_ca_system_is_taken() {
        let mut m = ServiceMap::new();
        m.learn_pat(&pat(&[(1, 0x100)]), None).unwrap();
        assert!(matches!(
            m.learn_pmt(&pmt(1, 0x101, &[0x101], &[])),
            Err(Failure::NotScrambled { service: 1 })
        ));
        match m.learn_pmt(&pmt(
            1,
            0x101,
            &[0x101],
            &[(0x0B00, 0x1E0), (0x0B00, 0x1E1)],
        )) {
            Err(Failure::ForeignCa {
                service,
                ca_system_ids,
            }) => assert_eq!((service, ca_system_ids), (1, vec![0x0B00])),
            other => panic!("{other:?}"),
        }
        // Nothing was claimed by the refused tables.
        assert_eq!(m.role(0x101), Role::Drop);
        assert_eq!(m.ecm_pid(), None);
    }
}
