//! The card's persistent memory and its anti-tearing commit.
//!
//! A card can lose power in the middle of any write. Like a real card OS,
//! we never update state in place: the memory holds two record slots, and a
//! commit writes the new record, page by page, into the slot that does *not*
//! hold the current state. Each record carries a generation number and a
//! SHA-256 over its header and body. On power-up the valid record with the
//! highest generation wins, so after a cut we see exactly the old state or
//! exactly the new one, never a mix.
//!
//! Record layout in a slot:
//! `magic "IOD1" ‖ generation:u64 ‖ len:u32 ‖ sha256[32] ‖ body[len]`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Size of one record slot.
pub const SLOT_SIZE: usize = 16 * 1024;
/// Total memory size: two slots.
pub const EEPROM_SIZE: usize = 2 * SLOT_SIZE;
/// EEPROM page size: the unit of one write, and so of one tearing point.
pub const PAGE_SIZE: usize = 64;
const MAGIC: &[u8; 4] = b"IOD1";
const HEADER_LEN: usize = 4 + 8 + 4 + 32;
/// The largest body a slot can hold.
pub const MAX_RECORD: usize = SLOT_SIZE - HEADER_LEN;

/// Byte-addressed non-volatile memory.
pub trait Eeprom {
    fn read(&mut self, offset: usize, buf: &mut [u8]) -> io::Result<()>;
    /// Writes one page (or less). May be cut by a power loss.
    fn write(&mut self, offset: usize, data: &[u8]) -> io::Result<()>;
    /// Makes earlier writes durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// EEPROM in RAM, for tests and the in-process card.
#[derive(Debug, Clone)]
pub struct MemEeprom(pub Vec<u8>);

impl Default for MemEeprom {
    fn default() -> Self {
        MemEeprom(vec![0xFF; EEPROM_SIZE])
    }
}

fn bounds(len: usize, offset: usize, n: usize) -> io::Result<()> {
    match offset.checked_add(n) {
        Some(end) if end <= len => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "EEPROM access out of range",
        )),
    }
}

impl Eeprom for MemEeprom {
    fn read(&mut self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        bounds(self.0.len(), offset, buf.len())?;
        buf.copy_from_slice(&self.0[offset..offset + buf.len()]);
        Ok(())
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> io::Result<()> {
        bounds(self.0.len(), offset, data.len())?;
        self.0[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// EEPROM in a file (mode 0600, since it holds the card's keys). Every
/// flush is an fsync.
#[derive(Debug)]
pub struct FileEeprom(File);

/// Opens a card image for reading and writing, creating it empty with
/// mode 0600 (it holds the card's keys) if missing; never truncates.
pub fn open_image(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

impl FileEeprom {
    pub fn open(path: &Path) -> io::Result<Self> {
        let f = open_image(path)?;
        let len = f.metadata()?.len();
        if len == 0 {
            f.write_all_at(&vec![0xFF; EEPROM_SIZE], 0)?;
            f.sync_all()?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir)?.sync_all()?;
            }
        } else if len != EEPROM_SIZE as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is {len} bytes, not an Iodoform card image of {EEPROM_SIZE} bytes",
                    path.display()
                ),
            ));
        }
        Ok(FileEeprom(f))
    }
}

impl Eeprom for FileEeprom {
    fn read(&mut self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        bounds(EEPROM_SIZE, offset, buf.len())?;
        self.0.read_exact_at(buf, offset as u64)
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> io::Result<()> {
        bounds(EEPROM_SIZE, offset, data.len())?;
        self.0.write_all_at(data, offset as u64)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

fn digest(header: &[u8], body: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(header);
    ctx.update(body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The two-slot record store on top of an [`Eeprom`].
#[derive(Debug)]
pub struct Store<E> {
    eeprom: E,
    /// Generation and slot of the current record, if any.
    current: Option<(u64, usize)>,
}

impl<E: Eeprom> Store<E> {
    /// Reads both slots and returns the store with the newest valid record.
    pub fn load(mut eeprom: E) -> io::Result<(Self, Option<Vec<u8>>)> {
        let mut best: Option<(u64, usize, Vec<u8>)> = None;
        for slot in 0..2 {
            if let Some((gen, body)) = read_slot(&mut eeprom, slot)? {
                if best.as_ref().is_none_or(|(g, _, _)| gen > *g) {
                    best = Some((gen, slot, body));
                }
            }
        }
        let current = best.as_ref().map(|(g, s, _)| (*g, *s));
        Ok((Store { eeprom, current }, best.map(|(_, _, b)| b)))
    }

    /// Atomically replaces the record. On error the old record is intact;
    /// the caller must treat the card as having lost power.
    pub fn commit(&mut self, body: &[u8]) -> io::Result<()> {
        if body.len() > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "card state exceeds its EEPROM slot",
            ));
        }
        let (gen, slot) = match self.current {
            Some((g, s)) => (g + 1, 1 - s),
            None => (1, 0),
        };
        let mut rec = Vec::with_capacity(HEADER_LEN + body.len());
        rec.extend_from_slice(MAGIC);
        rec.extend_from_slice(&gen.to_be_bytes());
        rec.extend_from_slice(&(body.len() as u32).to_be_bytes());
        let d = digest(&rec, body);
        rec.extend_from_slice(&d);
        rec.extend_from_slice(body);
        let base = slot * SLOT_SIZE;
        for (i, page) in rec.chunks(PAGE_SIZE).enumerate() {
            self.eeprom.write(base + i * PAGE_SIZE, page)?;
        }
        self.eeprom.flush()?;
        self.current = Some((gen, slot));
        Ok(())
    }

    /// Records committed in the card's whole life: the generation of the
    /// current record, which every commit raises by one and which is kept
    /// in the record's own header, so it needs no write of its own.
    pub fn writes(&self) -> u64 {
        self.current.map_or(0, |(g, _)| g)
    }

    pub fn eeprom(&self) -> &E {
        &self.eeprom
    }

    pub fn into_eeprom(self) -> E {
        self.eeprom
    }
}

fn read_slot<E: Eeprom>(e: &mut E, slot: usize) -> io::Result<Option<(u64, Vec<u8>)>> {
    let base = slot * SLOT_SIZE;
    let mut h = [0u8; HEADER_LEN];
    e.read(base, &mut h)?;
    if &h[..4] != MAGIC {
        return Ok(None);
    }
    let gen = u64::from_be_bytes(h[4..12].try_into().unwrap_or_default());
    let len = u32::from_be_bytes(h[12..16].try_into().unwrap_or_default()) as usize;
    if len > MAX_RECORD {
        return Ok(None);
    }
    let mut body = vec![0u8; len];
    e.read(base + HEADER_LEN, &mut body)?;
    let want = digest(&h[..16], &body);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&want[..], &h[16..48])) {
        return Ok(None);
    }
    Ok(Some((gen, body)))
}

/// An EEPROM that loses power after a set number of page writes, leaving
/// the page being written torn: only its first `torn_bytes` bytes land.
/// Used by the tearing tests.
#[derive(Debug, Clone)]
pub struct TearingEeprom {
    pub mem: MemEeprom,
    /// Writes that still succeed before the cut.
    pub writes_left: usize,
    /// How much of the cut page is written.
    pub torn_bytes: usize,
    /// Whether the cut has happened.
    pub cut: bool,
}

impl TearingEeprom {
    pub fn new(mem: MemEeprom, writes_left: usize, torn_bytes: usize) -> Self {
        TearingEeprom {
            mem,
            writes_left,
            torn_bytes,
            cut: false,
        }
    }
}

fn power_lost() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "power lost")
}

impl Eeprom for TearingEeprom {
    fn read(&mut self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        if self.cut {
            return Err(power_lost());
        }
        self.mem.read(offset, buf)
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> io::Result<()> {
        if self.cut {
            return Err(power_lost());
        }
        if self.writes_left == 0 {
            self.cut = true;
            let n = self.torn_bytes.min(data.len());
            self.mem.write(offset, &data[..n])?;
            return Err(power_lost());
        }
        self.writes_left -= 1;
        self.mem.write(offset, data)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.cut {
            return Err(power_lost());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_valid_record_wins() {
        let (mut s, r) = Store::load(MemEeprom::default()).unwrap();
        assert!(r.is_none());
        s.commit(b"one").unwrap();
        s.commit(b"two").unwrap();
        let (mut s, r) = Store::load(s.into_eeprom()).unwrap();
        assert_eq!(r.unwrap(), b"two");
        s.commit(&[9u8; 1000]).unwrap();
        let mem = s.into_eeprom();
        let (_, r) = Store::load(mem.clone()).unwrap();
        assert_eq!(r.unwrap(), vec![9u8; 1000]);
    }

    #[test]
    fn torn_commit_keeps_old_record() {
        let (mut s, _) = Store::load(MemEeprom::default()).unwrap();
        s.commit(&[1u8; 500]).unwrap();
        let mem = s.into_eeprom();
        let pages = (HEADER_LEN + 700).div_ceil(PAGE_SIZE);
        for cut in 0..=pages {
            for torn in [0, 1, PAGE_SIZE / 2, PAGE_SIZE - 1] {
                let (mut s, _) = Store::load(TearingEeprom::new(mem.clone(), cut, torn)).unwrap();
                let ok = s.commit(&[2u8; 700]).is_ok();
                let (_, r) = Store::load(s.into_eeprom().mem).unwrap();
                let r = r.unwrap();
                if ok {
                    assert_eq!(r, vec![2u8; 700]);
                } else {
                    assert!(
                        r == vec![1u8; 500] || r == vec![2u8; 700],
                        "cut {cut} torn {torn}"
                    );
                }
            }
        }
    }

    #[test]
    fn file_eeprom_is_private_and_persistent() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card.img");
        let (mut s, _) = Store::load(FileEeprom::open(&p).unwrap()).unwrap();
        s.commit(b"state").unwrap();
        drop(s);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (_, r) = Store::load(FileEeprom::open(&p).unwrap()).unwrap();
        assert_eq!(r.unwrap(), b"state");
        std::fs::write(dir.path().join("bad"), b"xx").unwrap();
        assert!(FileEeprom::open(&dir.path().join("bad")).is_err());
    }
}
