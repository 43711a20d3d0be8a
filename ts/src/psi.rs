//! Program-specific information: sections carried in TS packets, and the
//! tables that a conditional-access stream needs (ISO/IEC 13818-1 §2.4.4,
//! ETSI EN 300 468 for the DVB descriptors, ETSI TS 100 289 for CA sections).
//!
//! The layers are small and separate, as in mpeg2ts-reader:
//! packets → [`SectionAssembler`] (pointer_field, continuity, CRC) →
//! table parsers ([`Pat`], [`Pmt`], [`Cat`], [`PrivateSection`]).
//! Going out, the builders make sections and [`packetize`] cuts them into
//! packets. Nothing here does I/O, and no input makes anything panic.
//!
//! ECMs and EMMs travel in *private sections* with the short syntax:
//!
//! ```text
//! off len field
//!   0   1 table_id          0x80/0x81 ECM (even/odd CW period), 0x82..=0x8F EMM
//!   1   2 section_syntax_indicator:1 = 0, private_indicator:1 = 1,
//!         reserved:2 = 11, section_length:12
//!   3   n payload           the ECM or EMM bytes of `proto::ecm` / `proto::emm`
//! ```
//!
//! So the EMM's card address sits at section offset
//! [`EMM_SECTION_ADDRESS_OFFSET`] = 3 + `proto::emm::ADDRESS_OFFSET`, where a
//! receiver filters before anything reaches the card.

use crate::packet::{
    Packet, PacketError, PacketMut, Parity, MAX_PAYLOAD_LEN, MAX_PID, PACKET_LEN, SYNC_BYTE,
};
use proto::codec::{InvalidMessage, Reader};
use thiserror::Error;

/// Iodoform's CA_system_id, in CA_descriptors of the PMT and the CAT.
///
/// DVB allocates CA_system_ids (ETSI TS 101 162) and has no formal range
/// for private use. 0x4AE1, once suggested for us, belongs to an existing
/// system (Cifra, 0x4AE0-0x4AE1), so a receiver could mistake our ECMs for
/// theirs. 0xF10D ("IOD") lies in a stretch that no allocation list we
/// know of uses. A deployed system would ask DVB for its own value.
pub const CA_SYSTEM_ID: u16 = 0xF10D;

/// scrambling_mode of the scrambling_descriptor for DVB-CISSA version 1
/// (EN 300 468, table of scrambling_mode values).
pub const SCRAMBLING_MODE_CISSA: u8 = 0x10;

/// The largest section of any kind (section_length ≤ 4093).
pub const MAX_SECTION_LEN: usize = 4096;
/// The largest PAT, PMT or CAT section (section_length ≤ 1021).
pub const MAX_PSI_SECTION_LEN: usize = 1024;
/// The short-syntax header: table_id and the 16 bits with section_length.
pub const PRIVATE_HEADER_LEN: usize = 3;
/// The largest ECM or EMM that fits a private section.
pub const MAX_PRIVATE_PAYLOAD: usize = MAX_SECTION_LEN - PRIVATE_HEADER_LEN;
/// Offset of the EMM's 32-bit card address inside its section.
pub const EMM_SECTION_ADDRESS_OFFSET: usize = PRIVATE_HEADER_LEN + proto::emm::ADDRESS_OFFSET;
/// The length of the CRC32 that ends a long-syntax section.
pub const CRC_LEN: usize = 4;

proto::wire_enum! {
    /// table_id, the first byte of every section.
    TableId(u8) {
        PAT = 0x00,
        CAT = 0x01,
        PMT = 0x02,
        /// service_description_section, actual transport stream (DVB SI,
        /// PID 0x11).
        SDT_ACTUAL = 0x42,
        /// service_description_section, other transport stream.
        SDT_OTHER = 0x46,
        /// ECM for a crypto period whose packets use the even CW.
        ECM_EVEN = 0x80,
        /// ECM for a crypto period whose packets use the odd CW.
        ECM_ODD = 0x81,
        /// The first of the EMM table_ids.
        EMM_FIRST = 0x82,
        /// The last of the EMM table_ids.
        EMM_LAST = 0x8F,
    }
}

impl TableId {
    pub fn is_ecm(self) -> bool {
        self == TableId::ECM_EVEN || self == TableId::ECM_ODD
    }
    pub fn is_emm(self) -> bool {
        (TableId::EMM_FIRST.0..=TableId::EMM_LAST.0).contains(&self.0)
    }
    /// The ECM table_id that goes with a crypto period's parity: it
    /// changes exactly when the ECM does, so a receiver can pass the card
    /// only new ECMs.
    pub fn ecm(parity: Parity) -> TableId {
        match parity {
            Parity::Even => TableId::ECM_EVEN,
            Parity::Odd => TableId::ECM_ODD,
        }
    }
}

/// Common stream_type values of the PMT.
pub mod stream_type {
    pub const MPEG2_VIDEO: u8 = 0x02;
    pub const MPEG1_AUDIO: u8 = 0x03;
    pub const MPEG2_AUDIO: u8 = 0x04;
    pub const PRIVATE_PES: u8 = 0x06;
    pub const AAC_ADTS: u8 = 0x0F;
    pub const H264: u8 = 0x1B;
    pub const HEVC: u8 = 0x24;
}

/// Descriptor tags that this crate interprets.
pub mod descriptor_tag {
    pub const CA: u8 = 0x09;
    pub const SCRAMBLING: u8 = 0x65;
    /// service_descriptor (SDT): service type, provider and name.
    pub const SERVICE: u8 = 0x48;
    /// CA_identifier_descriptor (SDT): the CA systems of a service.
    pub const CA_IDENTIFIER: u8 = 0x53;
}

/// The PID of the SDT (and BAT, ST) in DVB SI.
pub const SDT_PID: u16 = 0x11;

/// Why bytes are not a usable section or table.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PsiError {
    #[error("malformed section: {0}")]
    Malformed(#[from] InvalidMessage),
    #[error("section CRC32 mismatch: computed 0x{computed:08x}, carried 0x{carried:08x}")]
    BadCrc { computed: u32, carried: u32 },
    #[error("expected table_id {expected:?}, found {found:?}")]
    WrongTable { expected: TableId, found: TableId },
    #[error("section_syntax_indicator is {found}, expected the other syntax")]
    WrongSyntax { found: bool },
    #[error("section of {0} bytes is too long")]
    TooLong(usize),
    #[error("section_length says {declared} bytes but {actual} are here")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("table split over {0} sections, which is not supported")]
    MultiSection(u8),
    #[error("{0} is out of range")]
    OutOfRange(&'static str),
    #[error("pointer_field {pointer} points past the {available} bytes of the payload")]
    BadPointer { pointer: u8, available: usize },
    #[error("continuity counter jumped from {last} to {found}; partial section dropped")]
    Discontinuity { last: u8, found: u8 },
    #[error("section truncated: the next one started after {got} of its {expected} bytes")]
    Truncated { got: usize, expected: usize },
    #[error("scrambled packet on a section PID")]
    Scrambled,
    #[error("transport error indicator set; partial section dropped")]
    TransportError,
    #[error(transparent)]
    Packet(#[from] PacketError),
}

// ---------------------------------------------------------------- CRC32

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04C1_1DB7
            } else {
                c << 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32/MPEG-2: polynomial 0x04C11DB7, initial value 0xFFFFFFFF, no
/// reflection, no final XOR. Over a whole section including its CRC the
/// result is 0.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    data.iter().fold(0xFFFF_FFFF, |crc, &b| {
        (crc << 8) ^ CRC_TABLE[((crc >> 24) as u8 ^ b) as usize]
    })
}

// ------------------------------------------------------------ sections

/// The header of any section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionHeader {
    pub table_id: TableId,
    pub section_syntax_indicator: bool,
    pub private_indicator: bool,
    /// The bytes after the 3-byte header.
    pub section_length: usize,
}

impl SectionHeader {
    pub fn parse(bytes: &[u8]) -> Result<SectionHeader, PsiError> {
        let mut r = Reader::new(bytes);
        let table_id = TableId(r.u8("table_id")?);
        let flags = r.u16("section_length")?;
        let h = SectionHeader {
            table_id,
            section_syntax_indicator: flags & 0x8000 != 0,
            private_indicator: flags & 0x4000 != 0,
            section_length: usize::from(flags & 0x0FFF),
        };
        if h.section_length + 3 > MAX_SECTION_LEN {
            return Err(PsiError::TooLong(h.section_length + 3));
        }
        Ok(h)
    }

    /// The whole section's length.
    pub fn total_len(&self) -> usize {
        self.section_length + 3
    }
}

/// The fixed fields of a long-syntax section and its body (between those
/// fields and the CRC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LongSection<'a> {
    table_id_extension: u16,
    version: u8,
    current_next: bool,
    body: &'a [u8],
}

/// Checks and splits a long-syntax, single-section table.
fn parse_long(bytes: &[u8], expected: TableId) -> Result<LongSection<'_>, PsiError> {
    let (s, section_number, last) = parse_long_numbered(bytes, expected)?;
    if section_number != 0 || last != 0 {
        return Err(PsiError::MultiSection(
            last.max(section_number).saturating_add(1),
        ));
    }
    Ok(s)
}

/// Checks and splits one long-syntax section of a table that may span
/// several: the section, its section_number and last_section_number.
fn parse_long_numbered(
    bytes: &[u8],
    expected: TableId,
) -> Result<(LongSection<'_>, u8, u8), PsiError> {
    let h = SectionHeader::parse(bytes)?;
    if h.table_id != expected {
        return Err(PsiError::WrongTable {
            expected,
            found: h.table_id,
        });
    }
    if !h.section_syntax_indicator {
        return Err(PsiError::WrongSyntax { found: false });
    }
    if h.total_len() > MAX_PSI_SECTION_LEN {
        return Err(PsiError::TooLong(h.total_len()));
    }
    if h.total_len() != bytes.len() {
        return Err(PsiError::LengthMismatch {
            declared: h.total_len(),
            actual: bytes.len(),
        });
    }
    if h.section_length < 5 + CRC_LEN {
        return Err(InvalidMessage::BadLength("long section").into());
    }
    check_crc(bytes)?;
    let mut r = Reader::new(&bytes[3..bytes.len() - CRC_LEN]);
    let table_id_extension = r.u16("table_id_extension")?;
    let v = r.u8("version")?;
    let section_number = r.u8("section_number")?;
    let last = r.u8("last_section_number")?;
    if section_number > last {
        return Err(PsiError::OutOfRange("section_number"));
    }
    Ok((
        LongSection {
            table_id_extension,
            version: (v >> 1) & 0x1F,
            current_next: v & 1 != 0,
            body: r.rest(),
        },
        section_number,
        last,
    ))
}

fn check_crc(section: &[u8]) -> Result<(), PsiError> {
    let split = section
        .len()
        .checked_sub(CRC_LEN)
        .ok_or(InvalidMessage::BadLength("section CRC"))?;
    let (data, crc) = section.split_at(split);
    let carried = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32_mpeg2(data);
    if computed != carried {
        return Err(PsiError::BadCrc { computed, carried });
    }
    Ok(())
}

fn check_version(version: u8) -> Result<(), PsiError> {
    if version > 31 {
        return Err(PsiError::OutOfRange("version_number"));
    }
    Ok(())
}

fn check_pid(pid: u16) -> Result<(), PsiError> {
    if pid > MAX_PID {
        return Err(PacketError::PidOutOfRange(pid).into());
    }
    Ok(())
}

/// Writes a long-syntax single section with its CRC.
fn build_long(
    table_id: TableId,
    ext: u16,
    version: u8,
    current_next: bool,
    body: &[u8],
) -> Result<Vec<u8>, PsiError> {
    build_long_numbered(table_id, 0xB000, ext, version, current_next, (0, 0), body)
}

/// Writes one long-syntax section with its CRC: `flags` holds the top
/// four bits of the second and third bytes (0xB000 for MPEG's tables,
/// 0xF000 for DVB's SI, whose reserved_future_use bit is set), `numbers`
/// the section_number and last_section_number.
fn build_long_numbered(
    table_id: TableId,
    flags: u16,
    ext: u16,
    version: u8,
    current_next: bool,
    numbers: (u8, u8),
    body: &[u8],
) -> Result<Vec<u8>, PsiError> {
    check_version(version)?;
    if numbers.0 > numbers.1 {
        return Err(PsiError::OutOfRange("section_number"));
    }
    let section_length = 5 + body.len() + CRC_LEN;
    if section_length + 3 > MAX_PSI_SECTION_LEN {
        return Err(PsiError::TooLong(section_length + 3));
    }
    let mut s = Vec::with_capacity(section_length + 3);
    s.push(table_id.0);
    // section_syntax_indicator 1, then '0' (MPEG) or '1' (DVB), reserved 11.
    s.extend_from_slice(&((flags & 0xF000) | section_length as u16).to_be_bytes());
    s.extend_from_slice(&ext.to_be_bytes());
    s.push(0xC0 | (version << 1) | u8::from(current_next));
    s.push(numbers.0);
    s.push(numbers.1);
    s.extend_from_slice(body);
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    Ok(s)
}

// --------------------------------------------------------- descriptors

/// A CA_descriptor (tag 0x09): which CA system, and the PID of its ECMs
/// (in a PMT) or EMMs (in the CAT).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CaDescriptor {
    pub ca_system_id: u16,
    pub ca_pid: u16,
    pub private_data: Vec<u8>,
}

/// A descriptor of a PMT or CAT loop.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Descriptor {
    Ca(CaDescriptor),
    /// scrambling_descriptor (tag 0x65): the scrambling_mode, 0x10 for
    /// DVB-CISSA.
    Scrambling {
        mode: u8,
    },
    /// Any other descriptor, kept as it came.
    Other {
        tag: u8,
        data: Vec<u8>,
    },
}

impl Descriptor {
    pub fn tag(&self) -> u8 {
        match self {
            Descriptor::Ca(_) => descriptor_tag::CA,
            Descriptor::Scrambling { .. } => descriptor_tag::SCRAMBLING,
            Descriptor::Other { tag, .. } => *tag,
        }
    }

    /// The CA_descriptor for Iodoform's CA system.
    pub fn iodoform_ca(ca_pid: u16) -> Descriptor {
        Descriptor::Ca(CaDescriptor {
            ca_system_id: CA_SYSTEM_ID,
            ca_pid,
            private_data: Vec::new(),
        })
    }

    /// The scrambling_descriptor for DVB-CISSA.
    pub fn cissa() -> Descriptor {
        Descriptor::Scrambling {
            mode: SCRAMBLING_MODE_CISSA,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<(), PsiError> {
        out.push(self.tag());
        let len_at = out.len();
        out.push(0);
        match self {
            Descriptor::Ca(ca) => {
                check_pid(ca.ca_pid)?;
                out.extend_from_slice(&ca.ca_system_id.to_be_bytes());
                out.extend_from_slice(&(0xE000 | ca.ca_pid).to_be_bytes());
                out.extend_from_slice(&ca.private_data);
            }
            Descriptor::Scrambling { mode } => out.push(*mode),
            Descriptor::Other { data, .. } => out.extend_from_slice(data),
        }
        let len = out.len() - len_at - 1;
        out[len_at] = u8::try_from(len).map_err(|_| PsiError::OutOfRange("descriptor length"))?;
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Descriptor, PsiError> {
        let tag = r.u8("descriptor tag")?;
        let len = usize::from(r.u8("descriptor length")?);
        let mut v = r.sub(len, "descriptor")?;
        let d = match tag {
            descriptor_tag::CA => {
                let ca_system_id = v.u16("CA_system_id")?;
                let ca_pid = v.u16("CA_PID")? & 0x1FFF;
                Descriptor::Ca(CaDescriptor {
                    ca_system_id,
                    ca_pid,
                    private_data: v.rest().to_vec(),
                })
            }
            descriptor_tag::SCRAMBLING => {
                let mode = v.u8("scrambling_mode")?;
                v.expect_empty()?;
                Descriptor::Scrambling { mode }
            }
            _ => Descriptor::Other {
                tag,
                data: v.rest().to_vec(),
            },
        };
        Ok(d)
    }
}

/// Writes a descriptor loop preceded by its 12-bit length (with 4
/// reserved bits set).
fn encode_loop(descriptors: &[Descriptor], out: &mut Vec<u8>) -> Result<(), PsiError> {
    let len_at = out.len();
    out.extend_from_slice(&[0, 0]);
    for d in descriptors {
        d.encode(out)?;
    }
    let len = out.len() - len_at - 2;
    if len > 0x3FF {
        return Err(PsiError::OutOfRange("descriptor loop length"));
    }
    out[len_at..len_at + 2].copy_from_slice(&(0xF000 | len as u16).to_be_bytes());
    Ok(())
}

fn read_descriptors(mut r: Reader<'_>) -> Result<Vec<Descriptor>, PsiError> {
    let mut v = Vec::new();
    while r.left() > 0 {
        v.push(Descriptor::read(&mut r)?);
    }
    Ok(v)
}

fn read_loop(r: &mut Reader<'_>) -> Result<Vec<Descriptor>, PsiError> {
    let len = usize::from(r.u16("descriptor loop length")? & 0x0FFF);
    read_descriptors(r.sub(len, "descriptor loop")?)
}

/// The CA_descriptors in a loop, for one CA system.
pub fn ca_descriptors(
    descriptors: &[Descriptor],
    ca_system_id: u16,
) -> impl Iterator<Item = &CaDescriptor> {
    descriptors.iter().filter_map(move |d| match d {
        Descriptor::Ca(ca) if ca.ca_system_id == ca_system_id => Some(ca),
        _ => None,
    })
}

// ------------------------------------------------- multi-section tables

/// Gathers the sections of a table that may span several (the PAT, the
/// CAT): once every section `0..=last_section_number` of one version is
/// in, it hands them all out, in order, and starts again. A section of
/// another version, table_id_extension, table or section count starts a
/// new collection; a repeat of one already held replaces it.
#[derive(Debug, Clone, Default)]
pub struct TableSections {
    /// (table_id, table_id_extension, version, current_next, last).
    key: Option<(u8, u16, u8, bool, u8)>,
    got: Vec<Option<Vec<u8>>>,
}

impl TableSections {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a long-syntax section (checked: CRC, lengths, numbers); the
    /// whole table when it completes it.
    pub fn push(&mut self, section: &[u8]) -> Result<Option<Vec<Vec<u8>>>, PsiError> {
        let table = TableId(
            *section
                .first()
                .ok_or(InvalidMessage::BadLength("section"))?,
        );
        let (s, number, last) = parse_long_numbered(section, table)?;
        let key = (
            table.0,
            s.table_id_extension,
            s.version,
            s.current_next,
            last,
        );
        if self.key != Some(key) {
            self.key = Some(key);
            self.got = vec![None; usize::from(last) + 1];
        }
        self.got[usize::from(number)] = Some(section.to_vec());
        if self.got.iter().all(Option::is_some) {
            let all = self.got.iter_mut().filter_map(Option::take).collect();
            self.key = None;
            self.got.clear();
            return Ok(Some(all));
        }
        Ok(None)
    }

    /// Forgets what was gathered.
    pub fn clear(&mut self) {
        self.key = None;
        self.got.clear();
    }
}

/// Splits the sections of one table: each checked, all of the same
/// table_id, table_id_extension, version and section count, numbered
/// 0, 1, ... in order. The first's fields and every body.
fn split_table<'a>(
    sections: &[&'a [u8]],
    expected: TableId,
) -> Result<(LongSection<'a>, Vec<&'a [u8]>), PsiError> {
    let mut first = None;
    let mut bodies = Vec::with_capacity(sections.len());
    for (i, sec) in sections.iter().enumerate() {
        let (s, number, last) = parse_long_numbered(sec, expected)?;
        if usize::from(number) != i || usize::from(last) + 1 != sections.len() {
            return Err(PsiError::OutOfRange("section_number"));
        }
        match first {
            None => first = Some(s),
            Some(f)
                if (f.table_id_extension, f.version, f.current_next)
                    == (s.table_id_extension, s.version, s.current_next) => {}
            Some(_) => return Err(PsiError::OutOfRange("version_number")),
        }
        bodies.push(s.body);
    }
    let first = first.ok_or(InvalidMessage::BadLength("table with no section"))?;
    Ok((first, bodies))
}

// ---------------------------------------------------------------- PAT

/// One PAT entry. Program number 0 points at the network PID (NIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PatEntry {
    pub program_number: u16,
    pub pid: u16,
}

/// The Program Association Table (PID 0, table_id 0x00).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pat {
    pub transport_stream_id: u16,
    pub version: u8,
    pub current_next: bool,
    pub programs: Vec<PatEntry>,
}

impl Pat {
    /// A PAT of one section; one of several is refused
    /// ([`PsiError::MultiSection`]): see [`Pat::from_sections`].
    pub fn from_section(section: &[u8]) -> Result<Pat, PsiError> {
        let s = parse_long(section, TableId::PAT)?;
        Self::from_bodies(s, &[s.body])
    }

    /// A PAT from all of its sections, in order (as [`TableSections`]
    /// gives them): their programs, one after the other.
    pub fn from_sections(sections: &[&[u8]]) -> Result<Pat, PsiError> {
        let (s, bodies) = split_table(sections, TableId::PAT)?;
        Self::from_bodies(s, &bodies)
    }

    fn from_bodies(s: LongSection<'_>, bodies: &[&[u8]]) -> Result<Pat, PsiError> {
        let mut programs = Vec::new();
        for body in bodies {
            if body.len() % 4 != 0 {
                return Err(InvalidMessage::BadLength("PAT program loop").into());
            }
            let mut r = Reader::new(body);
            while r.left() > 0 {
                programs.push(PatEntry {
                    program_number: r.u16("program_number")?,
                    pid: r.u16("program PID")? & 0x1FFF,
                });
            }
        }
        Ok(Pat {
            transport_stream_id: s.table_id_extension,
            version: s.version,
            current_next: s.current_next,
            programs,
        })
    }

    pub fn to_section(&self) -> Result<Vec<u8>, PsiError> {
        let mut body = Vec::with_capacity(self.programs.len() * 4);
        for e in &self.programs {
            check_pid(e.pid)?;
            body.extend_from_slice(&e.program_number.to_be_bytes());
            body.extend_from_slice(&(0xE000 | e.pid).to_be_bytes());
        }
        build_long(
            TableId::PAT,
            self.transport_stream_id,
            self.version,
            self.current_next,
            &body,
        )
    }

    /// The PAT in sections of at most `per_section` programs each (at
    /// least one section, at most 256).
    pub fn to_sections(&self, per_section: usize) -> Result<Vec<Vec<u8>>, PsiError> {
        let chunks: Vec<&[PatEntry]> = if self.programs.is_empty() {
            vec![&[]]
        } else {
            self.programs.chunks(per_section.max(1)).collect()
        };
        let last = u8::try_from(chunks.len() - 1)
            .map_err(|_| PsiError::OutOfRange("last_section_number"))?;
        let mut out = Vec::with_capacity(chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            let mut body = Vec::with_capacity(chunk.len() * 4);
            for e in *chunk {
                check_pid(e.pid)?;
                body.extend_from_slice(&e.program_number.to_be_bytes());
                body.extend_from_slice(&(0xE000 | e.pid).to_be_bytes());
            }
            out.push(build_long_numbered(
                TableId::PAT,
                0xB000,
                self.transport_stream_id,
                self.version,
                self.current_next,
                (i as u8, last),
                &body,
            )?);
        }
        Ok(out)
    }

    /// The PMT PID of a program.
    pub fn pmt_pid(&self, program_number: u16) -> Option<u16> {
        self.programs
            .iter()
            .find(|e| e.program_number == program_number)
            .map(|e| e.pid)
    }
}

// ---------------------------------------------------------------- PMT

/// One elementary stream of a PMT.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PmtStream {
    pub stream_type: u8,
    pub pid: u16,
    pub descriptors: Vec<Descriptor>,
}

/// The Program Map Table of one program (service).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pmt {
    pub program_number: u16,
    pub version: u8,
    pub current_next: bool,
    pub pcr_pid: u16,
    /// Program-level descriptors (where the CA_descriptor and the
    /// scrambling_descriptor go when the whole program is scrambled).
    pub descriptors: Vec<Descriptor>,
    pub streams: Vec<PmtStream>,
}

impl Pmt {
    pub fn from_section(section: &[u8]) -> Result<Pmt, PsiError> {
        let s = parse_long(section, TableId::PMT)?;
        let mut r = Reader::new(s.body);
        let pcr_pid = r.u16("PCR_PID")? & 0x1FFF;
        let descriptors = read_loop(&mut r)?;
        let mut streams = Vec::new();
        while r.left() > 0 {
            let stream_type = r.u8("stream_type")?;
            let pid = r.u16("elementary_PID")? & 0x1FFF;
            let descriptors = read_loop(&mut r)?;
            streams.push(PmtStream {
                stream_type,
                pid,
                descriptors,
            });
        }
        Ok(Pmt {
            program_number: s.table_id_extension,
            version: s.version,
            current_next: s.current_next,
            pcr_pid,
            descriptors,
            streams,
        })
    }

    pub fn to_section(&self) -> Result<Vec<u8>, PsiError> {
        check_pid(self.pcr_pid)?;
        let mut body = Vec::with_capacity(64);
        body.extend_from_slice(&(0xE000 | self.pcr_pid).to_be_bytes());
        encode_loop(&self.descriptors, &mut body)?;
        for st in &self.streams {
            check_pid(st.pid)?;
            body.push(st.stream_type);
            body.extend_from_slice(&(0xE000 | st.pid).to_be_bytes());
            encode_loop(&st.descriptors, &mut body)?;
        }
        build_long(
            TableId::PMT,
            self.program_number,
            self.version,
            self.current_next,
            &body,
        )
    }

    /// The CA_descriptors for `ca_system_id`, at program level and then
    /// in every stream.
    pub fn ca_descriptors(&self, ca_system_id: u16) -> Vec<&CaDescriptor> {
        ca_descriptors(&self.descriptors, ca_system_id)
            .chain(
                self.streams
                    .iter()
                    .flat_map(|s| ca_descriptors(&s.descriptors, ca_system_id)),
            )
            .collect()
    }
}

// ---------------------------------------------------------------- CAT

/// The Conditional Access Table (PID 1, table_id 0x01): CA_descriptors
/// that point at the EMM PIDs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cat {
    pub version: u8,
    pub current_next: bool,
    pub descriptors: Vec<Descriptor>,
}

impl Cat {
    /// A CAT of one section; one of several is refused
    /// ([`PsiError::MultiSection`]): see [`Cat::from_sections`].
    pub fn from_section(section: &[u8]) -> Result<Cat, PsiError> {
        let s = parse_long(section, TableId::CAT)?;
        Ok(Cat {
            version: s.version,
            current_next: s.current_next,
            descriptors: read_descriptors(Reader::new(s.body))?,
        })
    }

    /// A CAT from all of its sections, in order: their descriptors, one
    /// after the other.
    pub fn from_sections(sections: &[&[u8]]) -> Result<Cat, PsiError> {
        let (s, bodies) = split_table(sections, TableId::CAT)?;
        let mut descriptors = Vec::new();
        for body in bodies {
            descriptors.extend(read_descriptors(Reader::new(body))?);
        }
        Ok(Cat {
            version: s.version,
            current_next: s.current_next,
            descriptors,
        })
    }

    pub fn to_section(&self) -> Result<Vec<u8>, PsiError> {
        let mut body = Vec::with_capacity(16);
        for d in &self.descriptors {
            d.encode(&mut body)?;
        }
        // table_id_extension is reserved in the CAT: all ones.
        build_long(TableId::CAT, 0xFFFF, self.version, self.current_next, &body)
    }

    /// The CAT in sections of at most `per_section` descriptors each (at
    /// least one section, at most 256).
    pub fn to_sections(&self, per_section: usize) -> Result<Vec<Vec<u8>>, PsiError> {
        let chunks: Vec<&[Descriptor]> = if self.descriptors.is_empty() {
            vec![&[]]
        } else {
            self.descriptors.chunks(per_section.max(1)).collect()
        };
        let last = u8::try_from(chunks.len() - 1)
            .map_err(|_| PsiError::OutOfRange("last_section_number"))?;
        let mut out = Vec::with_capacity(chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            let mut body = Vec::with_capacity(16);
            for d in *chunk {
                d.encode(&mut body)?;
            }
            out.push(build_long_numbered(
                TableId::CAT,
                0xB000,
                0xFFFF,
                self.version,
                self.current_next,
                (i as u8, last),
                &body,
            )?);
        }
        Ok(out)
    }

    /// The EMM PID for `ca_system_id`.
    pub fn emm_pid(&self, ca_system_id: u16) -> Option<u16> {
        ca_descriptors(&self.descriptors, ca_system_id)
            .next()
            .map(|ca| ca.ca_pid)
    }
}

// ---------------------------------------------------------------- SDT

/// running_status of an SDT entry (EN 300 468 table 6).
pub mod running_status {
    pub const UNDEFINED: u8 = 0;
    pub const NOT_RUNNING: u8 = 1;
    pub const RUNNING: u8 = 4;
}

/// One service of an SDT.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SdtService {
    pub service_id: u16,
    pub eit_schedule: bool,
    pub eit_present_following: bool,
    /// 3 bits (see [`running_status`]).
    pub running_status: u8,
    /// Set: one or more of the service's components are scrambled (a
    /// receiver without a CA module lists it as pay TV).
    pub free_ca_mode: bool,
    pub descriptors: Vec<Descriptor>,
}

impl SdtService {
    /// The CA_identifier_descriptor's CA_system_ids, if it has one.
    pub fn ca_identifiers(&self) -> Vec<u16> {
        self.descriptors
            .iter()
            .filter_map(|d| match d {
                Descriptor::Other { tag, data } if *tag == descriptor_tag::CA_IDENTIFIER => Some(
                    data.chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]])),
                ),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The service_descriptor's provider and service names (their bytes,
    /// in the DVB character table they came in), if it has one.
    pub fn names(&self) -> Option<(&[u8], &[u8])> {
        self.descriptors.iter().find_map(|d| match d {
            Descriptor::Other { tag, data } if *tag == descriptor_tag::SERVICE => {
                let pl = usize::from(*data.get(1)?);
                let provider = data.get(2..2 + pl)?;
                let nl = usize::from(*data.get(2 + pl)?);
                let name = data.get(3 + pl..3 + pl + nl)?;
                Some((provider, name))
            }
            _ => None,
        })
    }
}

/// One section of a Service Description Table (DVB SI, PID 0x11,
/// table_id 0x42 for the actual transport stream, 0x46 for another). A
/// table may span several sections, each carrying some of the services;
/// each section is read and written on its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sdt {
    /// [`TableId::SDT_ACTUAL`] or [`TableId::SDT_OTHER`].
    pub table_id: TableId,
    pub transport_stream_id: u16,
    pub version: u8,
    pub current_next: bool,
    pub section_number: u8,
    pub last_section_number: u8,
    pub original_network_id: u16,
    pub services: Vec<SdtService>,
}

impl Sdt {
    pub fn from_section(section: &[u8]) -> Result<Sdt, PsiError> {
        let table_id = match section.first().copied().map(TableId) {
            Some(t @ (TableId::SDT_ACTUAL | TableId::SDT_OTHER)) => t,
            _ => TableId::SDT_ACTUAL,
        };
        let (s, section_number, last_section_number) = parse_long_numbered(section, table_id)?;
        let mut r = Reader::new(s.body);
        let original_network_id = r.u16("original_network_id")?;
        r.u8("reserved_future_use")?;
        let mut services = Vec::new();
        while r.left() > 0 {
            let service_id = r.u16("service_id")?;
            let eit = r.u8("EIT flags")?;
            let flags = r.u16("running_status")?;
            let len = usize::from(flags & 0x0FFF);
            let descriptors = read_descriptors(r.sub(len, "service descriptor loop")?)?;
            services.push(SdtService {
                service_id,
                eit_schedule: eit & 0x02 != 0,
                eit_present_following: eit & 0x01 != 0,
                running_status: (flags >> 13) as u8,
                free_ca_mode: flags & 0x1000 != 0,
                descriptors,
            });
        }
        Ok(Sdt {
            table_id,
            transport_stream_id: s.table_id_extension,
            version: s.version,
            current_next: s.current_next,
            section_number,
            last_section_number,
            original_network_id,
            services,
        })
    }

    pub fn to_section(&self) -> Result<Vec<u8>, PsiError> {
        if !matches!(self.table_id, TableId::SDT_ACTUAL | TableId::SDT_OTHER) {
            return Err(PsiError::OutOfRange("SDT table_id"));
        }
        let mut body = Vec::with_capacity(64);
        body.extend_from_slice(&self.original_network_id.to_be_bytes());
        body.push(0xFF);
        for svc in &self.services {
            if svc.running_status > 7 {
                return Err(PsiError::OutOfRange("running_status"));
            }
            body.extend_from_slice(&svc.service_id.to_be_bytes());
            body.push(
                0xFC | (u8::from(svc.eit_schedule) << 1) | u8::from(svc.eit_present_following),
            );
            let len_at = body.len();
            body.extend_from_slice(&[0, 0]);
            for d in &svc.descriptors {
                d.encode(&mut body)?;
            }
            let len = body.len() - len_at - 2;
            if len > 0x0FFF {
                return Err(PsiError::OutOfRange("service descriptor loop length"));
            }
            let flags = (u16::from(svc.running_status) << 13)
                | (u16::from(svc.free_ca_mode) << 12)
                | len as u16;
            body[len_at..len_at + 2].copy_from_slice(&flags.to_be_bytes());
        }
        build_long_numbered(
            self.table_id,
            0xF000,
            self.transport_stream_id,
            self.version,
            self.current_next,
            (self.section_number, self.last_section_number),
            &body,
        )
    }

    /// The entry of `service_id`.
    pub fn service(&self, service_id: u16) -> Option<&SdtService> {
        self.services.iter().find(|s| s.service_id == service_id)
    }
}

/// The CA_identifier_descriptor (tag 0x53) naming Iodoform's CA system,
/// for an SDT entry.
pub fn iodoform_ca_identifier() -> Descriptor {
    Descriptor::Other {
        tag: descriptor_tag::CA_IDENTIFIER,
        data: CA_SYSTEM_ID.to_be_bytes().to_vec(),
    }
}

// --------------------------------------------------- private sections

/// A short-syntax private section: an ECM or an EMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivateSection<'a> {
    pub table_id: TableId,
    pub payload: &'a [u8],
}

impl<'a> PrivateSection<'a> {
    /// Parses a short-syntax section, which must be exactly one section.
    pub fn parse(section: &'a [u8]) -> Result<Self, PsiError> {
        let h = SectionHeader::parse(section)?;
        if h.section_syntax_indicator {
            return Err(PsiError::WrongSyntax { found: true });
        }
        if h.total_len() != section.len() {
            return Err(PsiError::LengthMismatch {
                declared: h.total_len(),
                actual: section.len(),
            });
        }
        Ok(PrivateSection {
            table_id: h.table_id,
            payload: &section[PRIVATE_HEADER_LEN..],
        })
    }

    /// Writes a short-syntax section around `payload`.
    pub fn build(table_id: TableId, payload: &[u8]) -> Result<Vec<u8>, PsiError> {
        if payload.len() > MAX_PRIVATE_PAYLOAD {
            return Err(PsiError::TooLong(payload.len() + PRIVATE_HEADER_LEN));
        }
        if table_id.0 == 0xFF {
            // 0xFF is stuffing after a section; it cannot start one.
            return Err(PsiError::OutOfRange("table_id"));
        }
        let mut s = Vec::with_capacity(PRIVATE_HEADER_LEN + payload.len());
        s.push(table_id.0);
        // section_syntax_indicator 0, private_indicator 1, reserved 11.
        s.extend_from_slice(&(0x7000 | payload.len() as u16).to_be_bytes());
        s.extend_from_slice(payload);
        Ok(s)
    }
}

/// An ECM section: table_id 0x80 for an even crypto period, 0x81 for odd.
pub fn ecm_section(parity: Parity, ecm: &[u8]) -> Result<Vec<u8>, PsiError> {
    PrivateSection::build(TableId::ecm(parity), ecm)
}

/// An EMM section with a table_id in 0x82..=0x8F.
pub fn emm_section(table_id: TableId, emm: &[u8]) -> Result<Vec<u8>, PsiError> {
    if !table_id.is_emm() {
        return Err(PsiError::OutOfRange("EMM table_id"));
    }
    PrivateSection::build(table_id, emm)
}

/// The card address of an EMM section, for the receiver's filter; `None`
/// when the section is not an EMM section or is too short to hold one.
/// It reads only the header, so it is cheap enough for every section.
pub fn emm_section_address(section: &[u8]) -> Option<u32> {
    let h = SectionHeader::parse(section).ok()?;
    if !h.table_id.is_emm() || h.section_syntax_indicator {
        return None;
    }
    let end = EMM_SECTION_ADDRESS_OFFSET + 4;
    if h.total_len() < end {
        return None;
    }
    let b = section.get(EMM_SECTION_ADDRESS_OFFSET..end)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

// ------------------------------------------------------------ assembly

/// Rebuilds sections from the packets of one PID.
///
/// It follows pointer_field, joins sections that span packets, splits
/// packets that carry several sections, skips 0xFF stuffing, drops
/// duplicate packets (same continuity counter) and drops the partial
/// section on a continuity break or a transport error. Long-syntax
/// sections have their CRC32 checked; short-syntax ones (ECM, EMM) carry
/// none and are returned as they came.
#[derive(Debug, Clone, Default)]
pub struct SectionAssembler {
    partial: Vec<u8>,
    /// Whether a section is being collected in `partial`.
    active: bool,
    last_cc: Option<u8>,
}

impl SectionAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets any partial section and the continuity state.
    pub fn reset(&mut self) {
        self.partial.clear();
        self.active = false;
        self.last_cc = None;
    }

    /// Feeds one packet of this PID. Returns the sections it completed,
    /// and errors for what had to be dropped, in stream order.
    pub fn push(&mut self, pkt: &Packet<'_>) -> Vec<Result<Vec<u8>, PsiError>> {
        let mut out = Vec::new();
        if pkt.tei() {
            if self.active {
                out.push(Err(PsiError::TransportError));
            }
            self.abandon();
            self.last_cc = None;
            return out;
        }
        if !pkt.has_payload() {
            // The counter only advances with a payload.
            return out;
        }
        if pkt.scrambling().0 != 0 {
            out.push(Err(PsiError::Scrambled));
            self.abandon();
            return out;
        }
        let cc = pkt.continuity_counter();
        let discontinuity = pkt.adaptation_field().is_some_and(|af| af.discontinuity());
        match self.last_cc {
            Some(last) if last == cc && !discontinuity => return out, // duplicate
            Some(last) if (last + 1) & 0x0F != cc && !discontinuity => {
                if self.active {
                    out.push(Err(PsiError::Discontinuity { last, found: cc }));
                }
                self.abandon();
            }
            _ => {}
        }
        self.last_cc = Some(cc);

        let data = pkt.payload();
        if !pkt.pusi() {
            if self.active {
                self.feed(data, &mut out);
            }
            return out;
        }
        let Some((&pointer, data)) = data.split_first() else {
            return out;
        };
        if usize::from(pointer) > data.len() {
            out.push(Err(PsiError::BadPointer {
                pointer,
                available: data.len(),
            }));
            self.abandon();
            return out;
        }
        let (tail, rest) = data.split_at(usize::from(pointer));
        if self.active {
            self.feed(tail, &mut out);
            if self.active {
                out.push(Err(PsiError::Truncated {
                    got: self.partial.len(),
                    expected: self.expected_len().unwrap_or(0),
                }));
                self.abandon();
            }
        }
        let mut rest = rest;
        while let Some(&first) = rest.first() {
            if first == 0xFF {
                break; // stuffing to the end of the packet
            }
            self.active = true;
            self.partial.clear();
            let used = self.feed(rest, &mut out);
            if self.active || used == 0 {
                break;
            }
            rest = &rest[used..];
        }
        out
    }

    fn abandon(&mut self) {
        self.active = false;
        self.partial.clear();
    }

    fn expected_len(&self) -> Option<usize> {
        if self.partial.len() < 3 {
            return None;
        }
        Some(usize::from(u16::from_be_bytes([self.partial[1], self.partial[2]]) & 0x0FFF) + 3)
    }

    /// Adds bytes to the active section; returns how many it used.
    /// Completes (or rejects) the section when it has all its bytes.
    fn feed(&mut self, data: &[u8], out: &mut Vec<Result<Vec<u8>, PsiError>>) -> usize {
        let mut used = 0;
        loop {
            // `expected_len` is checked as soon as the header is in, so the
            // partial section never holds more than its declared length.
            let want = match self.expected_len() {
                None => 3 - self.partial.len(),
                Some(total) => total - self.partial.len(),
            };
            let n = want.min(data.len() - used);
            self.partial.extend_from_slice(&data[used..used + n]);
            used += n;
            match self.expected_len() {
                Some(total) if total > MAX_SECTION_LEN => {
                    out.push(Err(PsiError::TooLong(total)));
                    self.abandon();
                    // The rest of the packet cannot be framed.
                    return data.len();
                }
                Some(total) if self.partial.len() == total => {
                    let section = std::mem::take(&mut self.partial);
                    self.active = false;
                    let long_syntax = section[1] & 0x80 != 0;
                    out.push(match long_syntax {
                        true => check_crc(&section).map(|()| section),
                        false => Ok(section),
                    });
                    return used;
                }
                _ => {}
            }
            if used == data.len() {
                return used;
            }
        }
    }
}

// ------------------------------------------------------- packetization

/// The continuity counter of a PID whose packets the caller writes
/// itself (a re-emitted table, the CAT, the EMMs): it persists from one
/// emission to the next, so a table repeated or changed comes out as one
/// continuous stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Continuity {
    last: Option<u8>,
}

impl Continuity {
    /// The counter of the last packet written, if any.
    pub fn last(&self) -> Option<u8> {
        self.last
    }

    /// Records `cc` as the counter of the last packet written.
    pub fn set_last(&mut self, cc: u8) {
        self.last = Some(cc & 0x0F);
    }

    /// The counter the next packet with a payload carries (0 at first).
    pub fn next(&self) -> u8 {
        self.last.map_or(0, |l| l.wrapping_add(1) & 0x0F)
    }

    /// Gives the packet `p` (which carries a payload) the next counter.
    pub fn stamp(&mut self, p: &mut [u8; PACKET_LEN]) {
        let cc = self.next();
        p[3] = (p[3] & 0xF0) | cc;
        self.last = Some(cc);
    }
}

/// [`packetize`] on `pid`, continuing `counter`: the sections re-emitted
/// on a PID with a counter of its own. Returns the number of packets
/// appended to `out`.
pub fn packetize_continuing(
    sections: &[&[u8]],
    pid: u16,
    counter: &mut Continuity,
    out: &mut Vec<[u8; PACKET_LEN]>,
) -> Result<usize, PsiError> {
    let before = out.len();
    let mut cc = counter.next();
    packetize(sections, pid, &mut cc, out)?;
    if out.len() > before {
        counter.set_last(cc.wrapping_sub(1));
    }
    Ok(out.len() - before)
}

/// A table re-emitted on demand on one PID: its sections are cut into
/// packets once, when they change, and every emission gives those packets
/// the PID's next continuity counters, so that a table repeated or
/// changed comes out as one continuous stream.
///
/// The counter is the repeater's own ([`emit`](Self::emit)) on a PID that
/// carries nothing else; where other packets share the PID (two programs'
/// PMTs on one PID, a PID that was passed through before), the caller
/// keeps the PID's counter and emits with
/// [`emit_continuing`](Self::emit_continuing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repeater {
    pid: u16,
    packets: Vec<[u8; PACKET_LEN]>,
    counter: Continuity,
}

impl Repeater {
    /// A repeater on `pid` with no table yet.
    pub fn new(pid: u16) -> Result<Self, PsiError> {
        check_pid(pid)?;
        Ok(Repeater {
            pid,
            packets: Vec::new(),
            counter: Continuity::default(),
        })
    }

    pub fn pid(&self) -> u16 {
        self.pid
    }

    /// Moves the table to another PID (a PMT the PAT has moved); the
    /// packets are cut again, and the counter goes on.
    pub fn set_pid(&mut self, pid: u16) -> Result<(), PsiError> {
        check_pid(pid)?;
        if pid != self.pid {
            self.pid = pid;
            for p in &mut self.packets {
                // Made by `packetize`: always a valid packet.
                PacketMut::from_array(p)?.set_pid(pid)?;
            }
        }
        Ok(())
    }

    /// Replaces the table. On an error the repeater keeps the table it
    /// had.
    pub fn set_sections(&mut self, sections: &[&[u8]]) -> Result<(), PsiError> {
        let mut packets = Vec::with_capacity(self.packets.len().max(1));
        packetize(sections, self.pid, &mut 0, &mut packets)?;
        self.packets = packets;
        Ok(())
    }

    /// Forgets the table: nothing is emitted until the next one.
    pub fn clear(&mut self) {
        self.packets.clear();
    }

    /// Whether there is no table to emit.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// The counter of the last packet emitted with the repeater's own.
    pub fn continuity(&self) -> Continuity {
        self.counter
    }

    /// Appends the table's packets to `out`, continuing the repeater's own
    /// counter; returns how many.
    pub fn emit(&mut self, out: &mut Vec<[u8; PACKET_LEN]>) -> usize {
        let mut counter = self.counter;
        let n = self.emit_continuing(&mut counter, out);
        self.counter = counter;
        n
    }

    /// Appends the table's packets to `out`, continuing `counter` (the
    /// PID's, kept by the caller); returns how many.
    pub fn emit_continuing(
        &self,
        counter: &mut Continuity,
        out: &mut Vec<[u8; PACKET_LEN]>,
    ) -> usize {
        for p in &self.packets {
            let mut p = *p;
            counter.stamp(&mut p);
            out.push(p);
        }
        self.packets.len()
    }
}

/// Cuts sections into TS packets on `pid`, packed back to back: a packet
/// where a section starts has PUSI set and a pointer_field to the first
/// such start; the last packet is filled with 0xFF. `cc` is the continuity
/// counter for the next packet and is advanced. Packets are appended to
/// `out`.
pub fn packetize(
    sections: &[&[u8]],
    pid: u16,
    cc: &mut u8,
    out: &mut Vec<[u8; PACKET_LEN]>,
) -> Result<(), PsiError> {
    check_pid(pid)?;
    let mut data = Vec::with_capacity(sections.iter().map(|s| s.len()).sum());
    let mut starts = Vec::with_capacity(sections.len());
    for s in sections {
        if s.first() == Some(&0xFF) {
            return Err(PsiError::OutOfRange("table_id"));
        }
        if !s.is_empty() {
            starts.push(data.len());
            data.extend_from_slice(s);
        }
    }
    let mut next_start = starts.iter().copied().peekable();
    let mut pos = 0;
    while pos < data.len() {
        while next_start.peek().is_some_and(|&s| s < pos) {
            next_start.next();
        }
        let mut p = [0xFFu8; PACKET_LEN];
        p[0] = SYNC_BYTE;
        p[2] = pid as u8;
        p[3] = 0x10 | (*cc & 0x0F);
        let offset = next_start.peek().map(|&s| s - pos);
        let carried = match offset {
            Some(off) if off < MAX_PAYLOAD_LEN - 1 => {
                // A section starts here: PUSI, pointer_field, 183 bytes.
                p[1] = 0x40 | (pid >> 8) as u8;
                p[4] = off as u8;
                let n = (data.len() - pos).min(MAX_PAYLOAD_LEN - 1);
                p[5..5 + n].copy_from_slice(&data[pos..pos + n]);
                n
            }
            Some(off) if off == MAX_PAYLOAD_LEN - 1 => {
                // The next section would start in the last byte, where a
                // pointer_field leaves no room: end this packet one byte
                // early with stuffing and start it in the next.
                p[1] = (pid >> 8) as u8;
                let n = MAX_PAYLOAD_LEN - 1;
                p[4..4 + n].copy_from_slice(&data[pos..pos + n]);
                n
            }
            _ => {
                p[1] = (pid >> 8) as u8;
                let n = (data.len() - pos).min(MAX_PAYLOAD_LEN);
                p[4..4 + n].copy_from_slice(&data[pos..pos + n]);
                n
            }
        };
        pos += carried;
        *cc = (*cc & 0x0F).wrapping_add(1) & 0x0F;
        out.push(p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_known_answer() {
        // CRC-32/MPEG-2 check value for "123456789".
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
    }

    #[test]
    fn pat_known_bytes() {
        // A PAT from an ffmpeg-made TS: TSID 1, program 1 on PID 0x1000.
        let s = Pat {
            transport_stream_id: 1,
            version: 0,
            current_next: true,
            programs: vec![PatEntry {
                program_number: 1,
                pid: 0x1000,
            }],
        }
        .to_section()
        .unwrap();
        assert_eq!(
            s,
            [
                0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00, 0x2A, 0xB1,
                0x04, 0xB2
            ]
        );
    }

    #[test]
    fn emm_address_offset() {
        assert_eq!(EMM_SECTION_ADDRESS_OFFSET, 5);
        let mut emm = vec![0x01, 0x01, 0, 0, 0, 42];
        emm.extend_from_slice(&[0; 20]);
        let s = emm_section(TableId::EMM_FIRST, &emm).unwrap();
        assert_eq!(emm_section_address(&s), Some(42));
        assert_eq!(emm_section_address(&s[..8]), None);
        let e = ecm_section(Parity::Odd, &emm).unwrap();
        assert_eq!(emm_section_address(&e), None);
    }

    #[test]
    fn pointer_at_last_byte() {
        // A first section of 366 bytes: 183 in the first packet, and the
        // second section would start at the last payload byte of the next.
        let a = PrivateSection::build(TableId::ECM_EVEN, &[1; 363]).unwrap();
        let b = PrivateSection::build(TableId::ECM_ODD, &[2; 10]).unwrap();
        let mut pkts = Vec::new();
        let mut cc = 15;
        packetize(&[&a, &b], 0x100, &mut cc, &mut pkts).unwrap();
        assert_eq!(cc, 2);
        let mut asm = SectionAssembler::new();
        let got: Vec<_> = pkts
            .iter()
            .flat_map(|p| asm.push(&Packet::from_array(p).unwrap()))
            .collect();
        assert_eq!(got, vec![Ok(a), Ok(b)]);
    }

    #[test]
    fn a_re_emitted_section_continues_its_counter() {
        let section = [
            0x00u8, 0xB0, 0x0D, 0, 1, 0xC1, 0, 0, 0, 1, 0xE1, 0, 0, 0, 0, 0,
        ];
        let mut c = Continuity::default();
        let mut out = Vec::new();
        for _ in 0..17 {
            assert_eq!(
                packetize_continuing(&[&section], 0, &mut c, &mut out),
                Ok(1)
            );
        }
        let ccs: Vec<u8> = out.iter().map(|p| p[3] & 0x0F).collect();
        assert_eq!(ccs, (0..17).map(|i| i & 0x0F).collect::<Vec<u8>>());
        // A cached packet stamped again goes on from the same counter.
        let mut p = out[0];
        c.stamp(&mut p);
        assert_eq!((p[3] & 0x0F, c.last()), (1, Some(1)));
    }

    #[test]
    fn a_repeater_cuts_once_and_counts_on_across_a_change_and_a_move() {
        let pat = |v: u8| {
            Pat {
                transport_stream_id: 1,
                version: v,
                current_next: true,
                programs: vec![PatEntry {
                    program_number: 1,
                    pid: 0x100,
                }],
            }
            .to_section()
            .unwrap()
        };
        let mut r = Repeater::new(0).unwrap();
        let mut out = Vec::new();
        assert_eq!(r.emit(&mut out), 0);
        assert!(r.is_empty());
        r.set_sections(&[&pat(0)]).unwrap();
        for _ in 0..16 {
            assert_eq!(r.emit(&mut out), 1);
        }
        r.set_sections(&[&pat(1)]).unwrap();
        // A bad table leaves the last good one in place.
        assert!(r.set_sections(&[&[0xFF, 0, 0]]).is_err());
        assert_eq!(r.emit(&mut out), 1);
        let ccs: Vec<u8> = out.iter().map(|p| p[3] & 0x0F).collect();
        assert_eq!(ccs, (0..17).map(|i| i & 0x0F).collect::<Vec<u8>>());
        assert_eq!(r.continuity().last(), Some(0));
        let mut asm = SectionAssembler::new();
        let versions: Vec<u8> = out
            .iter()
            .flat_map(|p| asm.push(&Packet::from_array(p).unwrap()))
            .map(|s| Pat::from_section(&s.unwrap()).unwrap().version)
            .collect();
        assert_eq!(versions.len(), 17);
        assert_eq!(versions[15..], [0, 1]);

        // Moved, and emitted on a counter kept elsewhere.
        r.set_pid(0x20).unwrap();
        assert!(r.set_pid(0x2000).is_err());
        let mut shared = Continuity::default();
        shared.set_last(6);
        out.clear();
        assert_eq!(r.emit_continuing(&mut shared, &mut out), 1);
        let v = Packet::from_array(&out[0]).unwrap();
        assert_eq!((v.pid(), v.continuity_counter()), (0x20, 7));
        assert_eq!((shared.last(), r.continuity().last()), (Some(7), Some(0)));
        r.clear();
        assert_eq!(r.emit(&mut out), 0);
    }
}
