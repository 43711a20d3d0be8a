//! The way out: every packet leaves through [`Mux::emit`], the last line
//! of defence against clear content, and with its continuity counter
//! re-linked when the input loops.

use super::*;

impl<F: CaFeed> Mux<F> {
    /// Every packet leaves through here. The last line of defence: a
    /// packet marked clear that carries payload bytes, on a PID that may
    /// not carry clear content (a protected service's PES component, its
    /// PCR-only PID, anything not explicitly allowed), is dropped and
    /// counted in `clear_packets`, whatever the code before decided.
    #[inline]
    pub(super) fn emit(&mut self, bytes: &[u8; PACKET_LEN], ticks: u64) {
        // transport_scrambling_control 00 and a payload: rare on the
        // per-packet path, where almost everything is scrambled.
        if bytes[3] & 0xD0 == 0x10 && !self.may_leave_clear(bytes) {
            return;
        }
        self.stats.packets_out += 1;
        self.out.push(OutPacket {
            bytes: *bytes,
            ticks,
        });
    }

    /// Whether a clear packet with the payload flag may leave; if not, it
    /// is counted and reported.
    #[cold]
    #[inline(never)]
    pub(super) fn may_leave_clear(&mut self, bytes: &[u8; PACKET_LEN]) -> bool {
        let pid = usize::from(u16::from_be_bytes([bytes[1] & 0x1F, bytes[2]]));
        if self.clear_ok[pid] || clear_payload_len(bytes) == 0 {
            return true;
        }
        self.caught_clear(pid);
        false
    }

    pub(super) fn caught_clear(&mut self, pid: usize) {
        self.stats.clear_packets += 1;
        let svc = match self.role(pid as u16) {
            Role::Es(i) | Role::Side(i) | Role::Pcr(i) => {
                let svc = &mut self.services[usize::from(i)];
                svc.clear_packets += 1;
                Some(svc.id)
            }
            _ => None,
        };
        if self.warned.insert("clear") {
            tracing::error!(
                channel = %self.name,
                "channel {:?}: a clear packet on PID {pid:#06x}{} reached the output and was \
                 dropped; nothing left clear, but this is a bug: report it with the input",
                self.name,
                svc.map(|s| format!(" (service {s})")).unwrap_or_default(),
            );
        }
    }

    /// Continuity re-linking and the post-loop PCR discontinuity flag, for
    /// packets that pass through (scrambled or not).
    pub(super) fn relink(&mut self, pid: u16, pkt: &mut [u8; PACKET_LEN]) {
        // Plain header bytes on this per-packet path (validated in
        // `push`); the PCR flag, set once after a loop, goes the slow way.
        let c = &mut self.cc[usize::from(pid)];
        let has_payload = pkt[3] & 0x10 != 0;
        let cc_in = pkt[3] & 0x0F;
        if c.relink {
            if let Some(last) = c.last.last() {
                let want = if has_payload {
                    last.wrapping_add(1)
                } else {
                    last
                };
                c.offset = want.wrapping_sub(cc_in) & 0x0F;
            }
            if has_payload {
                c.relink = false;
            }
        }
        let out = (cc_in + c.offset) & 0x0F;
        pkt[3] = (pkt[3] & 0xF0) | out;
        c.last.set_last(out);
        if c.pcr_discontinuity {
            mark_pcr_discontinuity(c, pkt);
        }
    }

    pub(super) fn emit_input(&mut self, pid: u16, pkt: &mut [u8; PACKET_LEN], now: u64) {
        self.relink(pid, pkt);
        self.emit(pkt, now);
    }

    /// Sends the packets in `scratch`.
    pub(super) fn emit_scratch(&mut self, now: u64) {
        let scratch = std::mem::take(&mut self.scratch);
        for p in &scratch {
            self.emit(p, now);
        }
        self.scratch = scratch;
    }

    /// Cuts sections into packets on `pid`, continuing its counter (a
    /// table sent once: a clear service's PMT on one of our PMT PIDs).
    pub(super) fn emit_sections(&mut self, pid: u16, sections: &[&[u8]], now: u64) -> usize {
        let c = &mut self.cc[usize::from(pid)];
        self.scratch.clear();
        if packetize_continuing(sections, pid, &mut c.last, &mut self.scratch).is_err() {
            return 0;
        }
        let n = self.scratch.len();
        for i in 0..n {
            let p = self.scratch[i];
            self.emit(&p, now);
        }
        n
    }
}

/// The payload bytes of a packet whose header was validated (0 for one
/// that is all adaptation field).
pub(super) fn clear_payload_len(p: &[u8; PACKET_LEN]) -> usize {
    if p[3] & 0x10 == 0 {
        return 0;
    }
    let at = if p[3] & 0x20 != 0 {
        5 + usize::from(p[4])
    } else {
        4
    };
    PACKET_LEN.saturating_sub(at)
}

/// The discontinuity_indicator on the first packet with a PCR after the
/// input started again (a packet with a PCR has the flags byte for it).
#[cold]
fn mark_pcr_discontinuity(c: &mut Cc, pkt: &mut [u8; PACKET_LEN]) {
    let Ok(mut pkt) = PacketMut::from_array(pkt) else {
        return;
    };
    if pkt.view().pcr().is_some() && pkt.set_discontinuity(true).is_ok() {
        c.pcr_discontinuity = false;
    }
}
