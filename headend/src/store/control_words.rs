//! The `control_words`, `ecms` and `service_epochs` tables: each
//! service's control words (sealed) for its current and next crypto
//! periods, every ECM as it was sealed and emitted (so that the same
//! header always gets the same bytes), and the newest epoch each service
//! has put on the air.

use super::{int, Result};
use crate::atrest::{row, MasterKey};
use proto::secret::ControlWord;
use rusqlite::{params, Connection, OptionalExtension};

fn cw_row(service: u16, epoch: u64) -> crate::atrest::RowId<'static> {
    row("control_words", u64::from(service), epoch)
}

/// The control word of `epoch` of `service`, opened, if one was stored.
pub fn control_word(
    conn: &Connection,
    mk: &MasterKey,
    service: u16,
    epoch: u64,
) -> Result<Option<ControlWord>> {
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT sealed_cw FROM control_words WHERE service = ?1 AND epoch = ?2",
            params![service, int(epoch)],
            |r| r.get(0),
        )
        .optional()?;
    match stored {
        Some(blob) => Ok(Some(ControlWord::from_bytes(
            mk.open::<16>(cw_row(service, epoch), &blob)?,
        ))),
        None => Ok(None),
    }
}

/// Stores a control word, sealed.
pub fn insert_control_word(
    conn: &Connection,
    mk: &MasterKey,
    service: u16,
    epoch: u64,
    cw: &ControlWord,
) -> Result<()> {
    conn.execute(
        "INSERT INTO control_words (service, epoch, sealed_cw) VALUES (?1, ?2, ?3)",
        params![
            service,
            int(epoch),
            mk.seal(cw_row(service, epoch), cw.expose())
        ],
    )?;
    Ok(())
}

/// The bytes of the ECM sealed for this header, if one was.
pub fn ecm(
    conn: &Connection,
    product: u32,
    generation: u32,
    epoch: u64,
    service: u16,
) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .query_row(
            "SELECT bytes FROM ecms WHERE product = ?1 AND generation = ?2 AND epoch = ?3 AND service = ?4",
            params![product, generation, int(epoch), service],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn insert_ecm(
    conn: &Connection,
    product: u32,
    generation: u32,
    epoch: u64,
    service: u16,
    bytes: &[u8],
) -> Result<()> {
    conn.execute(
        "INSERT INTO ecms (product, generation, epoch, service, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![product, generation, int(epoch), service, bytes],
    )?;
    Ok(())
}

/// Each service's newest epoch on the air and the crypto period (ms) it
/// was counted in.
pub fn epochs(conn: &Connection) -> Result<Vec<(u16, u64, u64)>> {
    let mut st = conn.prepare("SELECT service, last_epoch, period_ms FROM service_epochs")?;
    let v = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(v)
}

/// The newest epoch `service` put on the air, if any.
pub fn newest_epoch(conn: &Connection, service: u16) -> Result<Option<u64>> {
    let v: Option<i64> = conn
        .query_row(
            "SELECT last_epoch FROM service_epochs WHERE service = ?1",
            params![service],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.map(|e| e as u64))
}

/// Records that `epoch` is on the air for `service`: the newest epoch
/// only moves up; the period is the one in force.
pub fn raise_epoch(conn: &Connection, service: u16, epoch: u64, period_ms: u64) -> Result<()> {
    conn.execute(
        "INSERT INTO service_epochs (service, last_epoch, period_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(service) DO UPDATE SET last_epoch = MAX(last_epoch, ?2), period_ms = ?3",
        params![service, int(epoch), int(period_ms)],
    )?;
    Ok(())
}

/// Drops a service's control words and ECMs of epochs before `keep`.
pub fn prune(conn: &Connection, service: u16, keep: u64) -> Result<()> {
    conn.execute(
        "DELETE FROM control_words WHERE service = ?1 AND epoch < ?2",
        params![service, int(keep)],
    )?;
    conn.execute(
        "DELETE FROM ecms WHERE service = ?1 AND epoch < ?2",
        params![service, int(keep)],
    )?;
    Ok(())
}
