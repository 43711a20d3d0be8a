//! Zero-copy views over 188-byte MPEG-TS packets (ISO/IEC 13818-1 §2.4.3),
//! a builder for new packets, and a reader that finds packet boundaries in
//! a byte stream and recovers them after garbage.
//!
//! ```text
//! byte 0      sync_byte 0x47
//! byte 1      TEI:1 PUSI:1 priority:1 PID[12..8]:5
//! byte 2      PID[7..0]
//! byte 3      scrambling:2 adaptation_field_control:2 continuity_counter:4
//! byte 4..    adaptation field (if afc & 0b10): length:8 then `length` bytes
//!             payload (if afc & 0b01): the rest of the packet
//! ```
//!
//! Views validate once, on construction, that the adaptation field fits in
//! the packet; after that every accessor is infallible and cheap. Nothing
//! here allocates per packet (except the reader's buffer, which is reused),
//! and nothing panics on any input.

use thiserror::Error;

/// The length of a TS packet.
pub const PACKET_LEN: usize = 188;
/// The first byte of every TS packet.
pub const SYNC_BYTE: u8 = 0x47;
/// The length of the fixed TS header.
pub const HEADER_LEN: usize = 4;
/// The largest payload: a packet with no adaptation field.
pub const MAX_PAYLOAD_LEN: usize = PACKET_LEN - HEADER_LEN;
/// The PID of the Program Association Table.
pub const PAT_PID: u16 = 0x0000;
/// The PID of the Conditional Access Table.
pub const CAT_PID: u16 = 0x0001;
/// The PID of null (stuffing) packets.
pub const NULL_PID: u16 = 0x1FFF;
/// The largest PID (13 bits).
pub const MAX_PID: u16 = 0x1FFF;

proto::wire_enum! {
    /// `transport_scrambling_control`, the two top bits of byte 3.
    /// DVB (ETSI TS 100 289) gives `10` to the even key and `11` to the odd
    /// key; `01` is reserved.
    ScramblingControl(u8) {
        CLEAR = 0b00,
        RESERVED = 0b01,
        EVEN = 0b10,
        ODD = 0b11,
    }
}

/// Which of the two control-word slots a scrambled packet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    Even,
    Odd,
}

impl Parity {
    /// The parity of crypto period `epoch`: even epochs use the even slot,
    /// as [`proto::secret::CwPair`] places their control words.
    pub fn of_epoch(epoch: u64) -> Parity {
        if epoch % 2 == 0 {
            Parity::Even
        } else {
            Parity::Odd
        }
    }

    /// The other parity: the slot the next crypto period will use.
    pub fn other(self) -> Parity {
        match self {
            Parity::Even => Parity::Odd,
            Parity::Odd => Parity::Even,
        }
    }

    /// The scrambling control bits that select this parity's key.
    pub fn scrambling_control(self) -> ScramblingControl {
        match self {
            Parity::Even => ScramblingControl::EVEN,
            Parity::Odd => ScramblingControl::ODD,
        }
    }
}

impl ScramblingControl {
    /// The key parity that these bits select, if they select one.
    pub fn parity(self) -> Option<Parity> {
        match self {
            ScramblingControl::EVEN => Some(Parity::Even),
            ScramblingControl::ODD => Some(Parity::Odd),
            _ => None,
        }
    }
}

/// Why bytes are not a usable TS packet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PacketError {
    #[error("a TS packet is 188 bytes, not {0}")]
    WrongLength(usize),
    #[error("missing sync byte: found 0x{0:02x} instead of 0x47")]
    NoSync(u8),
    #[error("adaptation field of {len} bytes does not fit in the packet")]
    AdaptationFieldTooLong { len: u8 },
    #[error("PID 0x{0:04x} is more than 13 bits")]
    PidOutOfRange(u16),
    #[error("{0}")]
    Build(&'static str),
    #[error(
        "no adaptation field flags byte to carry the discontinuity_indicator; \
         build the packet with one (PacketBuilder::discontinuity)"
    )]
    NoAdaptationFlags,
}

/// A Program Clock Reference: 33 bits at 90 kHz and 9 bits at 27 MHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pcr {
    /// 90 kHz units, 33 bits.
    pub base: u64,
    /// 27 MHz units, 0..300.
    pub extension: u16,
}

impl Pcr {
    /// The PCR in 27 MHz ticks.
    pub fn ticks_27mhz(self) -> u64 {
        // Masked so that out-of-range fields cannot overflow.
        (self.base & ((1 << 33) - 1)) * 300 + u64::from(self.extension & 0x1FF)
    }

    /// The PCR for a count of 27 MHz ticks (wrapped to 33 bits of base).
    pub fn from_27mhz(ticks: u64) -> Pcr {
        Pcr {
            base: (ticks / 300) & ((1 << 33) - 1),
            extension: (ticks % 300) as u16,
        }
    }

    fn read(b: &[u8; 6]) -> Pcr {
        let base = (u64::from(b[0]) << 25)
            | (u64::from(b[1]) << 17)
            | (u64::from(b[2]) << 9)
            | (u64::from(b[3]) << 1)
            | (u64::from(b[4]) >> 7);
        let extension = (u16::from(b[4] & 1) << 8) | u16::from(b[5]);
        Pcr { base, extension }
    }

    fn write(self) -> [u8; 6] {
        let base = self.base & ((1 << 33) - 1);
        let ext = self.extension & 0x1FF;
        [
            (base >> 25) as u8,
            (base >> 17) as u8,
            (base >> 9) as u8,
            (base >> 1) as u8,
            ((base as u8 & 1) << 7) | 0x7E | (ext >> 8) as u8,
            ext as u8,
        ]
    }
}

/// Validates the packet's framing and returns where its payload starts
/// (`PACKET_LEN` when it has none). This is all that the hot paths need.
#[inline]
pub(crate) fn payload_offset(b: &[u8; PACKET_LEN]) -> Result<usize, PacketError> {
    if b[0] != SYNC_BYTE {
        return Err(PacketError::NoSync(b[0]));
    }
    let afc = (b[3] >> 4) & 0b11;
    if afc & 0b10 == 0 {
        // 01: payload only. 00 (reserved): neither; decoders discard it,
        // and a view shows it as having no payload.
        return Ok(if afc & 0b01 != 0 {
            HEADER_LEN
        } else {
            PACKET_LEN
        });
    }
    let len = b[4];
    // With a payload the field is at most 182 bytes; alone, at most 183.
    let max = if afc & 0b01 != 0 { 182 } else { 183 };
    if usize::from(len) > max {
        return Err(PacketError::AdaptationFieldTooLong { len });
    }
    Ok(if afc & 0b01 != 0 {
        HEADER_LEN + 1 + usize::from(len)
    } else {
        PACKET_LEN
    })
}

fn as_array(bytes: &[u8]) -> Result<&[u8; PACKET_LEN], PacketError> {
    bytes
        .try_into()
        .map_err(|_| PacketError::WrongLength(bytes.len()))
}

/// A read-only view of one TS packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'buf> {
    buf: &'buf [u8; PACKET_LEN],
    payload_at: usize,
}

impl<'buf> Packet<'buf> {
    /// Checks length, sync byte and adaptation-field length.
    pub fn new(bytes: &'buf [u8]) -> Result<Self, PacketError> {
        Self::from_array(as_array(bytes)?)
    }

    pub fn from_array(buf: &'buf [u8; PACKET_LEN]) -> Result<Self, PacketError> {
        let payload_at = payload_offset(buf)?;
        Ok(Packet { buf, payload_at })
    }

    pub fn bytes(&self) -> &'buf [u8; PACKET_LEN] {
        self.buf
    }

    /// transport_error_indicator: the demodulator could not correct it.
    pub fn tei(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }

    /// payload_unit_start_indicator: a PES packet or a section starts here.
    pub fn pusi(&self) -> bool {
        self.buf[1] & 0x40 != 0
    }

    pub fn transport_priority(&self) -> bool {
        self.buf[1] & 0x20 != 0
    }

    pub fn pid(&self) -> u16 {
        u16::from_be_bytes([self.buf[1] & 0x1F, self.buf[2]])
    }

    pub fn scrambling(&self) -> ScramblingControl {
        ScramblingControl(self.buf[3] >> 6)
    }

    /// The two adaptation_field_control bits: `01` payload only, `10`
    /// adaptation field only, `11` both, `00` reserved.
    pub fn adaptation_field_control(&self) -> u8 {
        (self.buf[3] >> 4) & 0b11
    }

    pub fn has_adaptation_field(&self) -> bool {
        self.adaptation_field_control() & 0b10 != 0
    }

    pub fn has_payload(&self) -> bool {
        self.adaptation_field_control() & 0b01 != 0
    }

    pub fn continuity_counter(&self) -> u8 {
        self.buf[3] & 0x0F
    }

    /// The adaptation field, without its length byte.
    pub fn adaptation_field(&self) -> Option<AdaptationField<'buf>> {
        if !self.has_adaptation_field() {
            return None;
        }
        let len = usize::from(self.buf[4]);
        // Validated by `payload_offset`: 5 + len <= 188.
        Some(AdaptationField {
            buf: &self.buf[5..5 + len],
        })
    }

    /// Where the payload starts (188 when there is none).
    pub fn payload_offset(&self) -> usize {
        self.payload_at
    }

    /// The payload; empty when there is none.
    pub fn payload(&self) -> &'buf [u8] {
        &self.buf[self.payload_at..]
    }

    /// The PCR, if the adaptation field carries one.
    pub fn pcr(&self) -> Option<Pcr> {
        self.adaptation_field().and_then(|af| af.pcr())
    }
}

/// An adaptation field (the bytes after its length byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptationField<'buf> {
    buf: &'buf [u8],
}

impl<'buf> AdaptationField<'buf> {
    /// The field's bytes (flags, optional fields, stuffing); empty for a
    /// one-byte stuffing field.
    pub fn bytes(&self) -> &'buf [u8] {
        self.buf
    }

    fn flags(&self) -> u8 {
        self.buf.first().copied().unwrap_or(0)
    }

    pub fn discontinuity(&self) -> bool {
        self.flags() & 0x80 != 0
    }

    pub fn random_access(&self) -> bool {
        self.flags() & 0x40 != 0
    }

    pub fn es_priority(&self) -> bool {
        self.flags() & 0x20 != 0
    }

    /// The PCR. A PCR flag in a field too short to hold the PCR reads as
    /// no PCR: the packet is damaged, and pacing on a guess would be worse.
    pub fn pcr(&self) -> Option<Pcr> {
        if self.flags() & 0x10 == 0 {
            return None;
        }
        self.buf.get(1..7).map(|b| {
            let mut a = [0u8; 6];
            a.copy_from_slice(b);
            Pcr::read(&a)
        })
    }

    /// The original PCR, which follows the PCR when both are present.
    pub fn opcr(&self) -> Option<Pcr> {
        if self.flags() & 0x08 == 0 {
            return None;
        }
        let at = if self.flags() & 0x10 != 0 { 7 } else { 1 };
        self.buf.get(at..at + 6).map(|b| {
            let mut a = [0u8; 6];
            a.copy_from_slice(b);
            Pcr::read(&a)
        })
    }
}

/// A mutable view of one TS packet, for scrambling and rewriting in place.
#[derive(Debug, PartialEq, Eq)]
pub struct PacketMut<'buf> {
    buf: &'buf mut [u8; PACKET_LEN],
    payload_at: usize,
}

impl<'buf> PacketMut<'buf> {
    pub fn new(bytes: &'buf mut [u8]) -> Result<Self, PacketError> {
        let len = bytes.len();
        let buf: &mut [u8; PACKET_LEN] = bytes
            .try_into()
            .map_err(|_| PacketError::WrongLength(len))?;
        Self::from_array(buf)
    }

    pub fn from_array(buf: &'buf mut [u8; PACKET_LEN]) -> Result<Self, PacketError> {
        let payload_at = payload_offset(buf)?;
        Ok(PacketMut { buf, payload_at })
    }

    /// A read-only view of the same packet.
    pub fn view(&self) -> Packet<'_> {
        Packet {
            buf: self.buf,
            payload_at: self.payload_at,
        }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8; PACKET_LEN] {
        self.buf
    }

    pub fn set_scrambling(&mut self, sc: ScramblingControl) {
        self.buf[3] = (self.buf[3] & 0x3F) | ((sc.0 & 0b11) << 6);
    }

    pub fn set_pid(&mut self, pid: u16) -> Result<(), PacketError> {
        if pid > MAX_PID {
            return Err(PacketError::PidOutOfRange(pid));
        }
        self.buf[1] = (self.buf[1] & 0xE0) | (pid >> 8) as u8;
        self.buf[2] = pid as u8;
        Ok(())
    }

    pub fn set_continuity_counter(&mut self, cc: u8) {
        self.buf[3] = (self.buf[3] & 0xF0) | (cc & 0x0F);
    }

    /// Sets or clears the discontinuity_indicator, which lives in the
    /// adaptation field's flags byte: a packet without an adaptation
    /// field, or with a one-byte (length only) field, has nowhere to carry
    /// it, and is left as it was.
    pub fn set_discontinuity(&mut self, on: bool) -> Result<(), PacketError> {
        if self.buf[3] & 0x20 == 0 || self.buf[4] == 0 {
            return Err(PacketError::NoAdaptationFlags);
        }
        self.buf[5] = (self.buf[5] & !0x80) | if on { 0x80 } else { 0 };
        Ok(())
    }

    pub fn set_pusi(&mut self, on: bool) {
        self.buf[1] = (self.buf[1] & !0x40) | if on { 0x40 } else { 0 };
    }

    /// The payload, for in-place scrambling; empty when there is none.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.payload_at..]
    }
}

/// A null packet (PID 0x1FFF, payload of 0xFF).
pub fn null_packet() -> [u8; PACKET_LEN] {
    let mut p = [0xFF; PACKET_LEN];
    p[..4].copy_from_slice(&[SYNC_BYTE, 0x1F, 0xFF, 0x10]);
    p
}

/// What a packet's continuity counter says about the packets of its PID
/// before it ([`ContinuityCheck::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// The next packet, the first one seen, or a discontinuity the
    /// source signalled (discontinuity_indicator): nothing was lost.
    Next,
    /// The same counter again with a payload: a repetition (ISO/IEC
    /// 13818-1 allows one).
    Repeated,
    /// Packets are missing in between: a loss.
    Jump,
}

/// Follows the continuity counter of one PID, to tell a loss in the
/// input from a stream that goes on. Packets without a payload do not
/// advance the counter and are not looked at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContinuityCheck {
    last: Option<u8>,
}

impl ContinuityCheck {
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks at the next packet of the PID.
    pub fn check(&mut self, pkt: &Packet<'_>) -> Continuity {
        if !pkt.has_payload() {
            return Continuity::Next;
        }
        let cc = pkt.continuity_counter();
        let signalled = pkt.adaptation_field().is_some_and(|a| a.discontinuity());
        let last = self.last.replace(cc);
        match last {
            None => Continuity::Next,
            _ if signalled => Continuity::Next,
            Some(l) if l == cc => Continuity::Repeated,
            Some(l) if (l + 1) & 0x0F == cc => Continuity::Next,
            Some(_) => Continuity::Jump,
        }
    }

    /// Forgets the last counter (the input starts again): the next packet
    /// is a first one.
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// Writes new packets: header, an adaptation field when one is needed (for
/// a PCR, flags, or stuffing a short payload) and the payload.
#[derive(Debug, Clone, Default)]
pub struct PacketBuilder {
    pub pid: u16,
    pub pusi: bool,
    pub priority: bool,
    pub continuity_counter: u8,
    pub scrambling: Option<ScramblingControl>,
    pub discontinuity: bool,
    pub random_access: bool,
    pub pcr: Option<Pcr>,
    /// Extra adaptation-field stuffing bytes to add (tests use this to
    /// place the payload at any offset).
    pub stuffing: usize,
}

impl PacketBuilder {
    pub fn new(pid: u16) -> Self {
        PacketBuilder {
            pid,
            ..Default::default()
        }
    }

    /// Builds one packet carrying as much of `payload` as fits and returns
    /// it with the number of payload bytes it took. When the payload is
    /// shorter than the room left, the adaptation field is stuffed, as
    /// ISO/IEC 13818-1 requires for PES (PSI uses 0xFF after the section
    /// instead: see `psi::packetize`). An empty payload gives a packet
    /// with an adaptation field only.
    pub fn build(&self, payload: &[u8]) -> Result<([u8; PACKET_LEN], usize), PacketError> {
        if self.pid > MAX_PID {
            return Err(PacketError::PidOutOfRange(self.pid));
        }
        let mut p = [0xFFu8; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[1] = (self.pid >> 8) as u8
            | if self.pusi { 0x40 } else { 0 }
            | if self.priority { 0x20 } else { 0 };
        p[2] = self.pid as u8;
        let sc = self.scrambling.unwrap_or(ScramblingControl::CLEAR).0 & 0b11;

        // The adaptation field's content before stuffing: flags and PCR.
        let needs_flags =
            self.discontinuity || self.random_access || self.pcr.is_some() || self.stuffing > 0;
        let mut af_body = 0usize;
        if needs_flags {
            af_body = 1 + if self.pcr.is_some() { 6 } else { 0 } + self.stuffing;
        }
        // 0 = no field; else 1 (length byte) + body.
        let mut af_total = if needs_flags { 1 + af_body } else { 0 };
        if af_total > MAX_PAYLOAD_LEN {
            return Err(PacketError::Build("adaptation field too long"));
        }
        let room = MAX_PAYLOAD_LEN - af_total;
        let take = payload.len().min(room);
        if take < room {
            // Stuff the field so that the payload ends the packet.
            let extra = room - take;
            if af_total == 0 {
                // A 1-byte field is just the length byte (0); longer ones
                // need the flags byte.
                af_total = extra;
                af_body = extra.saturating_sub(1);
            } else {
                af_total += extra;
                af_body += extra;
            }
        }
        let afc = match (af_total > 0, take > 0) {
            (true, true) => 0b11,
            (true, false) => 0b10,
            (false, _) => 0b01,
        };
        p[3] = (sc << 6) | (afc << 4) | (self.continuity_counter & 0x0F);
        if af_total > 0 {
            p[4] = af_body as u8;
            if af_body > 0 {
                let mut flags = 0u8;
                if self.discontinuity {
                    flags |= 0x80;
                }
                if self.random_access {
                    flags |= 0x40;
                }
                let mut at = 6;
                if let Some(pcr) = self.pcr {
                    flags |= 0x10;
                    p[at..at + 6].copy_from_slice(&pcr.write());
                    at += 6;
                }
                p[5] = flags;
                // The rest of the field stays 0xFF (stuffing).
                let _ = at;
            }
        }
        let start = HEADER_LEN + af_total;
        p[start..start + take].copy_from_slice(&payload[..take]);
        Ok((p, take))
    }
}

/// How many sync bytes, one packet apart, confirm a packet boundary when
/// searching for sync.
pub const SYNC_CONFIRM: usize = 3;

/// Counters kept by the packet readers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Packets returned.
    pub packets: u64,
    /// Bytes thrown away while looking for sync.
    pub skipped_bytes: u64,
    /// Times sync was lost after it had been found.
    pub sync_losses: u64,
}

enum Step {
    /// A packet starts at this offset.
    Packet(usize),
    /// Nothing decided until more bytes come.
    NeedMore,
}

/// Whether a packet starts at `q`: `SYNC_CONFIRM` sync bytes one packet
/// apart. `None` while the bytes that would decide are still to come; at
/// the end of the stream, the sync bytes that the data can hold suffice,
/// provided a whole packet starts at `q`.
fn confirmed(buf: &[u8], q: usize, eof: bool) -> Option<bool> {
    for i in 0..SYNC_CONFIRM {
        match buf.get(q + i * PACKET_LEN) {
            Some(&SYNC_BYTE) => {}
            Some(_) => return Some(false),
            None if eof => return Some(q + PACKET_LEN <= buf.len()),
            None => return None,
        }
    }
    Some(true)
}

/// The shared sync logic. `pos` is where the next packet should start.
///
/// In sync, a packet is taken when it starts with a sync byte and so does
/// the next one. When the next one does not, either this packet was cut
/// short (a packet starts inside it: drop it and go on from there) or a
/// whole packet is followed by garbage (take it; sync is lost after it).
/// Out of sync, bytes are skipped until a confirmed start. Nothing is
/// decided before the bytes that decide it are here, so the result does
/// not depend on how the stream was split into reads.
fn scan(buf: &[u8], pos: &mut usize, synced: &mut bool, stats: &mut SyncStats, eof: bool) -> Step {
    loop {
        let left = buf.len() - *pos;
        if *synced {
            if left < PACKET_LEN {
                if eof && left > 0 {
                    stats.skipped_bytes += left as u64;
                    *pos = buf.len();
                }
                return Step::NeedMore;
            }
            if buf[*pos] != SYNC_BYTE {
                *synced = false;
                stats.sync_losses += 1;
                continue;
            }
            match buf.get(*pos + PACKET_LEN) {
                Some(&SYNC_BYTE) => return Step::Packet(*pos),
                None if eof => return Step::Packet(*pos),
                None => return Step::NeedMore,
                Some(_) => {}
            }
            for q in *pos + 1..*pos + PACKET_LEN {
                match confirmed(buf, q, eof) {
                    Some(true) => {
                        // This packet was cut short by the one at `q`.
                        stats.sync_losses += 1;
                        stats.skipped_bytes += (q - *pos) as u64;
                        *pos = q;
                        return Step::Packet(q);
                    }
                    Some(false) => {}
                    None => return Step::NeedMore,
                }
            }
            // A whole packet, with garbage after it.
            return Step::Packet(*pos);
        }
        if left == 0 {
            return Step::NeedMore;
        }
        match confirmed(buf, *pos, eof) {
            Some(true) => {
                *synced = true;
                return Step::Packet(*pos);
            }
            Some(false) => {
                stats.skipped_bytes += 1;
                *pos += 1;
            }
            None => return Step::NeedMore,
        }
    }
}

/// An iterator over the packets of a complete byte buffer (a file, a test
/// vector), skipping garbage and resynchronizing.
#[derive(Debug, Clone)]
pub struct Packets<'a> {
    buf: &'a [u8],
    pos: usize,
    synced: bool,
    stats: SyncStats,
}

impl<'a> Packets<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Packets {
            buf,
            pos: 0,
            synced: false,
            stats: SyncStats::default(),
        }
    }

    pub fn stats(&self) -> SyncStats {
        self.stats
    }
}

impl<'a> Iterator for Packets<'a> {
    type Item = &'a [u8; PACKET_LEN];

    fn next(&mut self) -> Option<Self::Item> {
        match scan(
            self.buf,
            &mut self.pos,
            &mut self.synced,
            &mut self.stats,
            true,
        ) {
            Step::Packet(at) => {
                self.pos = at + PACKET_LEN;
                self.stats.packets += 1;
                as_array(&self.buf[at..at + PACKET_LEN]).ok()
            }
            Step::NeedMore => None,
        }
    }
}

/// A push-style packet reader for a stream that arrives in pieces (UDP
/// datagrams, file reads). Feed bytes with [`push`](Self::push) and take
/// packets with [`next_packet`](Self::next_packet), which lends them
/// mutably so that they can be descrambled in place.
///
/// A packet is returned once the first byte of the packet after it has
/// arrived too, so the reader holds back at most one packet until the
/// next read or [`finish`](Self::finish) (more only while garbage is
/// being sorted out). Bytes given with
/// [`push_datagram`](Self::push_datagram) end on a packet boundary, so
/// their last packet needs no such confirmation: a live UDP input gets
/// every packet of a datagram at once, not the last one only with the
/// next datagram.
#[derive(Debug, Clone, Default)]
pub struct PacketReader {
    buf: Vec<u8>,
    pos: usize,
    synced: bool,
    eof: bool,
    /// The bytes pushed last were a datagram: their end is a packet's.
    datagram_end: bool,
    stats: SyncStats,
}

impl PacketReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes from the stream.
    pub fn push(&mut self, data: &[u8]) {
        // Drop what was consumed before growing, so that the buffer stays
        // about the size of one read.
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
        self.datagram_end = false;
    }

    /// Appends a datagram of whole packets (7 in a UDP datagram of TS, as
    /// every sender here makes them). Its end is a packet boundary: once
    /// in sync, a packet that ends exactly there is returned at once.
    pub fn push_datagram(&mut self, data: &[u8]) {
        self.push(data);
        self.datagram_end = true;
    }

    /// Says that no more bytes will come: the last packets no longer need
    /// the sync bytes after them to be confirmed.
    pub fn finish(&mut self) {
        self.eof = true;
    }

    /// Whether the reader currently has packet sync.
    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn stats(&self) -> SyncStats {
        self.stats
    }

    /// Bytes held that are not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next whole packet, or `None` until more bytes are pushed.
    pub fn next_packet(&mut self) -> Option<&mut [u8; PACKET_LEN]> {
        // The last packet of a datagram, in sync, needs no next sync byte.
        let boundary = self.datagram_end
            && self.synced
            && self.buf.len() - self.pos == PACKET_LEN
            && self.buf[self.pos] == SYNC_BYTE;
        match scan(
            &self.buf,
            &mut self.pos,
            &mut self.synced,
            &mut self.stats,
            self.eof || boundary,
        ) {
            Step::Packet(at) => {
                self.pos = at + PACKET_LEN;
                self.stats.packets += 1;
                (&mut self.buf[at..at + PACKET_LEN]).try_into().ok()
            }
            Step::NeedMore => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn continuity_check_tells_a_loss_from_a_repeat_and_a_signalled_break() {
        let pkt = |cc: u8, payload: bool, disc: bool| {
            let mut b = PacketBuilder::new(0x100);
            b.continuity_counter = cc;
            b.discontinuity = disc;
            b.build(if payload { &[1; 10] } else { &[] }).unwrap().0
        };
        let mut c = ContinuityCheck::new();
        let mut see =
            |cc, payload, disc| c.check(&Packet::from_array(&pkt(cc, payload, disc)).unwrap());
        assert_eq!(see(14, true, false), Continuity::Next);
        assert_eq!(see(15, true, false), Continuity::Next);
        assert_eq!(see(0, true, false), Continuity::Next);
        assert_eq!(see(0, true, false), Continuity::Repeated);
        // No payload: the counter does not move and is not looked at.
        assert_eq!(see(9, false, false), Continuity::Next);
        assert_eq!(see(1, true, false), Continuity::Next);
        assert_eq!(see(5, true, false), Continuity::Jump);
        assert_eq!(see(6, true, false), Continuity::Next);
        assert_eq!(see(12, true, true), Continuity::Next);
        c.reset();
        assert_eq!(
            c.check(&Packet::from_array(&pkt(3, true, false)).unwrap()),
            Continuity::Next
        );
    }

    use super::*;

    #[test]
    fn an_epochs_parity_selects_the_slot_of_its_control_word() {
        use proto::secret::{ControlWord, CwPair};
        for epoch in [0u64, 7, 10, u64::MAX] {
            let p = CwPair::of_ecm(
                epoch,
                ControlWord::from_bytes([1; 16]),
                ControlWord::random(),
            );
            let slot = match Parity::of_epoch(epoch) {
                Parity::Even => &p.even,
                Parity::Odd => &p.odd,
            };
            assert_eq!(slot, p.for_epoch(epoch));
            assert_eq!(
                Parity::of_epoch(epoch).other(),
                Parity::of_epoch(epoch.wrapping_add(1))
            );
        }
    }

    #[test]
    fn header_fields() {
        let mut b = PacketBuilder::new(0x1234);
        b.pusi = true;
        b.continuity_counter = 7;
        b.scrambling = Some(ScramblingControl::ODD);
        let (p, n) = b.build(&[1, 2, 3]).unwrap();
        assert_eq!(n, 3);
        let v = Packet::new(&p).unwrap();
        assert_eq!(v.pid(), 0x1234);
        assert!(v.pusi() && !v.tei());
        assert_eq!(v.continuity_counter(), 7);
        assert_eq!(v.scrambling(), ScramblingControl::ODD);
        assert_eq!(v.payload(), &[1, 2, 3]);
        assert!(v.has_adaptation_field());
    }

    #[test]
    fn setters_touch_only_their_bits() {
        let mut b = PacketBuilder::new(0x123);
        b.continuity_counter = 5;
        b.pcr = Some(Pcr::from_27mhz(42));
        let (mut p, _) = b.build(&[7; 20]).unwrap();
        let before = p;
        let mut m = PacketMut::from_array(&mut p).unwrap();
        m.set_discontinuity(true).unwrap();
        m.set_continuity_counter(0x1E);
        m.set_scrambling(ScramblingControl::ODD);
        let v = m.view();
        let af = v.adaptation_field().unwrap();
        assert!(af.discontinuity());
        assert_eq!((af.pcr(), v.pid()), (Some(Pcr::from_27mhz(42)), 0x123));
        assert_eq!(
            (v.continuity_counter(), v.scrambling()),
            (0xE, ScramblingControl::ODD)
        );
        m.set_discontinuity(false).unwrap();
        m.set_continuity_counter(5);
        m.set_scrambling(ScramblingControl::CLEAR);
        assert_eq!(p, before);

        // No flags byte: nowhere to put it, and nothing changes.
        for payload in [&[1u8; 184][..], &[1; 183]] {
            let (mut p, _) = PacketBuilder::new(0x10).build(payload).unwrap();
            let before = p;
            let mut m = PacketMut::from_array(&mut p).unwrap();
            assert_eq!(
                m.set_discontinuity(true),
                Err(PacketError::NoAdaptationFlags)
            );
            assert_eq!(p, before);
        }
    }

    #[test]
    fn one_byte_adaptation_field() {
        let (p, n) = PacketBuilder::new(0x100).build(&[9; 183]).unwrap();
        assert_eq!(n, 183);
        let v = Packet::new(&p).unwrap();
        assert_eq!(v.adaptation_field().unwrap().bytes(), &[] as &[u8]);
        assert_eq!(v.payload().len(), 183);
    }

    #[test]
    fn pcr_round_trip() {
        let pcr = Pcr::from_27mhz(0x0123_4567_89ab);
        let mut b = PacketBuilder::new(0x100);
        b.pcr = Some(pcr);
        let (p, n) = b.build(&[0; 200]).unwrap();
        assert_eq!(n, 184 - 8);
        let v = Packet::new(&p).unwrap();
        assert_eq!(v.pcr(), Some(pcr));
        assert_eq!(v.pcr().unwrap().ticks_27mhz(), pcr.ticks_27mhz());
    }

    #[test]
    fn bad_adaptation_length() {
        let mut p = null_packet();
        p[3] = 0x30;
        p[4] = 183;
        assert_eq!(
            Packet::new(&p),
            Err(PacketError::AdaptationFieldTooLong { len: 183 })
        );
        p[3] = 0x20;
        assert!(Packet::new(&p).is_ok());
        p[0] = 0;
        assert_eq!(Packet::new(&p), Err(PacketError::NoSync(0)));
        assert_eq!(Packet::new(&p[1..]), Err(PacketError::WrongLength(187)));
    }

    #[test]
    fn resync_after_garbage() {
        let mut s = vec![0x47, 1, 2];
        for i in 0..5u8 {
            let mut p = null_packet();
            p[4] = i;
            s.extend_from_slice(&p);
        }
        s.extend_from_slice(&[0x47; 50]);
        for i in 5..10u8 {
            let mut p = null_packet();
            p[4] = i;
            s.extend_from_slice(&p);
        }
        let mut it = Packets::new(&s);
        let got: Vec<u8> = it.by_ref().map(|p| p[4]).collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(it.stats().skipped_bytes, 53);
        assert_eq!(it.stats().sync_losses, 1);

        // The same stream pushed one byte at a time.
        let mut r = PacketReader::new();
        let mut got = Vec::new();
        for b in &s {
            r.push(std::slice::from_ref(b));
            while let Some(p) = r.next_packet() {
                got.push(p[4]);
            }
        }
        r.finish();
        while let Some(p) = r.next_packet() {
            got.push(p[4]);
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_datagram_gives_its_last_packet_at_once_and_a_read_waits_for_the_next() {
        let datagram = |first: u8| {
            let mut d = Vec::new();
            for i in first..first + 7 {
                let mut p = null_packet();
                p[4] = i;
                d.extend_from_slice(&p);
            }
            d
        };
        let take = |r: &mut PacketReader| {
            let mut got = Vec::new();
            while let Some(p) = r.next_packet() {
                got.push(p[4]);
            }
            got
        };
        let mut r = PacketReader::new();
        r.push_datagram(&datagram(0));
        assert_eq!(take(&mut r), (0..7).collect::<Vec<_>>());
        r.push_datagram(&datagram(7));
        assert_eq!(take(&mut r), (7..14).collect::<Vec<_>>());
        // The same bytes as reads: the last packet waits for the next
        // sync byte.
        let mut r = PacketReader::new();
        r.push(&datagram(0));
        assert_eq!(take(&mut r), (0..6).collect::<Vec<_>>());
        r.push(&datagram(7));
        assert_eq!(take(&mut r), (6..13).collect::<Vec<_>>());
        // A datagram cut short is not taken for a boundary: out of sync,
        // its bytes wait for a confirmed start.
        let mut r = PacketReader::new();
        let mut d = datagram(0);
        d.truncate(6 * PACKET_LEN + 100);
        r.push_datagram(&d);
        assert_eq!(take(&mut r), (0..6).collect::<Vec<_>>());
        r.push_datagram(&datagram(7));
        assert_eq!(take(&mut r), (7..14).collect::<Vec<_>>());
        assert_eq!(r.stats().skipped_bytes, 100);
    }
}
