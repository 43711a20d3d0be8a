//! The PID demultiplexer: which PID carries what, and the sections of the
//! PIDs that carry tables, assembled PID by PID.
//!
//! The caller names the roles: `Demux<R>` is generic over the caller's
//! own role type (the headend mux and the receiver each have theirs), and
//! the caller assigns a role to each PID it cares about with
//! [`Demux::set`] and takes it back with [`Demux::clear`]. Pushing a
//! packet ([`Demux::push`]) returns its PID's role and, when that role
//! carries sections ([`PidRole::carries_sections`]), the sections the
//! packet completed on that PID, in stream order, each a
//! [`PsiError`] when it had to be dropped.
//!
//! As in mpeg2ts-reader, the table is a `Vec` indexed by PID, so the
//! per-packet lookup is one index; a PID's [`SectionAssembler`] exists
//! only while its role carries sections. A PID whose role changes starts
//! its sections afresh, and so do all of them after
//! [`Demux::discontinuity`] (an input that starts again from its
//! beginning): a section is never joined from the packets of two tables
//! or of two passes over a file.
//!
//! What it must never do: look into a payload other than to assemble
//! sections, decide a role (the caller does), or panic on any input.

use crate::packet::{Packet, PacketError, MAX_PID};
use crate::psi::{PsiError, SectionAssembler};

/// A caller's role for a PID.
pub trait PidRole: Copy + Eq {
    /// Whether the packets of a PID with this role carry sections to
    /// assemble (PSI, ECMs, EMMs) rather than PES or nothing of interest.
    fn carries_sections(&self) -> bool;
}

/// What one packet was, for its PID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demuxed<R> {
    pub pid: u16,
    pub role: R,
    /// The sections this packet completed on its PID, and errors for
    /// what had to be dropped, in stream order. Always empty for a role
    /// that carries no sections (and then it allocates nothing).
    pub sections: Vec<Result<Vec<u8>, PsiError>>,
}

#[derive(Debug, Clone)]
struct Slot<R> {
    role: Option<R>,
    /// Boxed, so that the 8,192 slots stay small.
    asm: Option<Box<SectionAssembler>>,
}

/// The PID demultiplexer (see the module docs).
#[derive(Debug, Clone)]
pub struct Demux<R> {
    slots: Vec<Slot<R>>,
}

impl<R: PidRole> Default for Demux<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: PidRole> Demux<R> {
    /// A demultiplexer with no PID assigned.
    pub fn new() -> Self {
        Demux {
            slots: (0..=MAX_PID)
                .map(|_| Slot {
                    role: None,
                    asm: None,
                })
                .collect(),
        }
    }

    /// The role of `pid`, if one is assigned (`None` too for a PID out of
    /// range).
    #[inline]
    pub fn role(&self, pid: u16) -> Option<R> {
        self.slots.get(usize::from(pid)).and_then(|s| s.role)
    }

    /// Assigns `role` to `pid` and returns the role it had. A change of
    /// role drops the PID's partial section; the same role again changes
    /// nothing.
    pub fn set(&mut self, pid: u16, role: R) -> Result<Option<R>, PacketError> {
        let slot = self
            .slots
            .get_mut(usize::from(pid))
            .ok_or(PacketError::PidOutOfRange(pid))?;
        let old = slot.role.replace(role);
        if old != Some(role) {
            slot.asm = None;
        }
        Ok(old)
    }

    /// Takes `pid`'s role away (with its partial section) and returns it.
    pub fn clear(&mut self, pid: u16) -> Option<R> {
        let slot = self.slots.get_mut(usize::from(pid))?;
        slot.asm = None;
        slot.role.take()
    }

    /// Every PID that has a role, in PID order.
    pub fn roles(&self) -> impl Iterator<Item = (u16, R)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(pid, s)| s.role.map(|r| (pid as u16, r)))
    }

    /// Drops `pid`'s partial section and continuity state; its role stays.
    pub fn reset(&mut self, pid: u16) {
        if let Some(slot) = self.slots.get_mut(usize::from(pid)) {
            slot.asm = None;
        }
    }

    /// The input starts again (a file loop, a retune): every PID's partial
    /// section and continuity state are dropped; the roles stay.
    pub fn discontinuity(&mut self) {
        for slot in &mut self.slots {
            slot.asm = None;
        }
    }

    /// Takes one packet: its PID's role and the sections it completed, or
    /// `None` for a PID with no role.
    #[inline]
    pub fn push(&mut self, pkt: &Packet<'_>) -> Option<Demuxed<R>> {
        let pid = pkt.pid();
        // `pid()` is 13 bits: always a slot.
        let slot = self.slots.get_mut(usize::from(pid))?;
        let role = slot.role?;
        let sections = if role.carries_sections() {
            slot.asm.get_or_insert_with(Default::default).push(pkt)
        } else {
            Vec::new()
        };
        Some(Demuxed {
            pid,
            role,
            sections,
        })
    }

    /// [`push`](Self::push) for bytes that have not been checked as a
    /// packet yet.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Result<Option<Demuxed<R>>, PacketError> {
        Ok(self.push(&Packet::new(bytes)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{PacketBuilder, PACKET_LEN};
    use crate::psi::{packetize, PrivateSection, TableId};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Role {
        Table,
        Other,
        Es,
    }

    impl PidRole for Role {
        fn carries_sections(&self) -> bool {
            matches!(self, Role::Table | Role::Other)
        }
    }

    fn packets(sections: &[&[u8]], pid: u16) -> Vec<[u8; PACKET_LEN]> {
        let mut out = Vec::new();
        packetize(sections, pid, &mut 0, &mut out).unwrap();
        out
    }

    fn push_all(d: &mut Demux<Role>, pkts: &[[u8; PACKET_LEN]]) -> Vec<Result<Vec<u8>, PsiError>> {
        pkts.iter()
            .filter_map(|p| d.push(&Packet::from_array(p).unwrap()))
            .flat_map(|r| r.sections)
            .collect()
    }

    #[test]
    fn roles_are_set_cleared_and_listed() {
        let mut d = Demux::new();
        assert_eq!(d.set(0x100, Role::Table), Ok(None));
        assert_eq!(d.set(0x20, Role::Es), Ok(None));
        assert_eq!(d.set(0x100, Role::Other), Ok(Some(Role::Table)));
        assert_eq!(
            d.set(0x2000, Role::Es),
            Err(PacketError::PidOutOfRange(0x2000))
        );
        assert_eq!(
            d.roles().collect::<Vec<_>>(),
            [(0x20, Role::Es), (0x100, Role::Other)]
        );
        assert_eq!(d.clear(0x20), Some(Role::Es));
        assert_eq!(
            (d.role(0x20), d.clear(0x20), d.clear(0x2000)),
            (None, None, None)
        );
        let (p, _) = PacketBuilder::new(0x20).build(&[1; 184]).unwrap();
        assert_eq!(d.push_bytes(&p), Ok(None));
        assert_eq!(d.push_bytes(&p[1..]), Err(PacketError::WrongLength(187)));
    }

    #[test]
    fn sections_are_assembled_per_pid_and_only_for_section_roles() {
        let a = PrivateSection::build(TableId::ECM_EVEN, &[1; 300]).unwrap();
        let b = PrivateSection::build(TableId::EMM_FIRST, &[2; 300]).unwrap();
        let (pa, pb) = (packets(&[&a], 0x100), packets(&[&b], 0x101));
        let mut d = Demux::new();
        d.set(0x100, Role::Table).unwrap();
        d.set(0x101, Role::Other).unwrap();
        // Interleaved: each PID has its own assembler.
        let mixed = [pa[0], pb[0], pa[1], pb[1]];
        assert_eq!(push_all(&mut d, &mixed), [Ok(a.clone()), Ok(b)]);
        // A role without sections gives the role and nothing else.
        d.set(0x100, Role::Es).unwrap();
        let r = d.push(&Packet::from_array(&pa[0]).unwrap()).unwrap();
        assert_eq!((r.pid, r.role, r.sections), (0x100, Role::Es, vec![]));
    }

    #[test]
    fn a_role_change_or_a_discontinuity_drops_the_partial_section() {
        let a = PrivateSection::build(TableId::ECM_EVEN, &[1; 300]).unwrap();
        let pa = packets(&[&a], 0x100);
        let mut d = Demux::new();
        d.set(0x100, Role::Table).unwrap();
        push_all(&mut d, &pa[..1]);
        // The same role again: the section goes on.
        d.set(0x100, Role::Table).unwrap();
        assert_eq!(push_all(&mut d, &pa[1..]), [Ok(a.clone())]);

        push_all(&mut d, &pa[..1]);
        d.set(0x100, Role::Other).unwrap();
        assert_eq!(push_all(&mut d, &pa[1..]), []);

        push_all(&mut d, &pa[..1]);
        d.discontinuity();
        assert_eq!(push_all(&mut d, &pa[1..]), []);
        assert_eq!(d.role(0x100), Some(Role::Other));

        push_all(&mut d, &pa[..1]);
        d.reset(0x100);
        assert_eq!(push_all(&mut d, &pa[1..]), []);
        assert_eq!(push_all(&mut d, &pa), [Ok(a)]);
    }
}
