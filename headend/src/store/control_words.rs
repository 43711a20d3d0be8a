//! The `control_words`, `ecms` and `service_epochs` tables: each
//! service's control words (sealed) for its current and next crypto
//! periods, every ECM as it was sealed and emitted (so that the same
//! header always gets the same bytes), and the newest epoch each service
//! has put on the air.
//!
//! [`SealedCws`] is the daemon's store of the control-word schedule
//! ([`headend_engine::schedule::ControlWordSchedule`]): it writes into the caller's
//! transaction, so a control word is committed with the ECM that carries
//! it, before that ECM is published.

use super::{int, select, Result, StoreError};
use crate::atrest::{row, MasterKey};
use headend_engine::schedule::CwStore;
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
    select(
        conn,
        "SELECT service, last_epoch, period_ms FROM service_epochs",
        [],
        |r| {
            Ok((
                r.get(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        },
    )
}

/// The newest epoch `service` put on the air, if any.
pub fn newest_epoch(conn: &Connection, service: u16) -> Result<Option<u64>> {
    let v: Option<i64> = conn
        .prepare_cached("SELECT last_epoch FROM service_epochs WHERE service = ?1")?
        .query_row(params![service], |r| r.get(0))
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

/// Drops the control words and ECMs of epochs that can never be on the
/// air again: those more than two before their service's newest epoch.
pub fn prune(conn: &Connection) -> Result<()> {
    conn.execute(
        "DELETE FROM control_words WHERE epoch < (SELECT e.last_epoch - 2 FROM service_epochs e
           WHERE e.service = control_words.service)",
        [],
    )?;
    conn.execute(
        "DELETE FROM ecms WHERE epoch < (SELECT e.last_epoch - 2 FROM service_epochs e
           WHERE e.service = ecms.service)",
        [],
    )?;
    Ok(())
}

/// The [`CwStore`] of the daemon: control words sealed in the database,
/// each service's newest epoch in `service_epochs`, all written through
/// `conn` (the caller's transaction). Old rows are dropped by [`prune`].
#[derive(Debug)]
pub struct SealedCws<'a> {
    conn: &'a Connection,
    mk: &'a MasterKey,
    /// The crypto period the epochs are counted in, recorded with them.
    period_ms: u64,
}

impl<'a> SealedCws<'a> {
    pub fn new(conn: &'a Connection, mk: &'a MasterKey, period_ms: u64) -> Self {
        SealedCws {
            conn,
            mk,
            period_ms,
        }
    }
}

impl CwStore for SealedCws<'_> {
    type Error = StoreError;

    fn control_word(&mut self, service: u16, epoch: u64) -> Result<Option<ControlWord>> {
        control_word(self.conn, self.mk, service, epoch)
    }

    fn insert_control_word(&mut self, service: u16, epoch: u64, cw: &ControlWord) -> Result<()> {
        insert_control_word(self.conn, self.mk, service, epoch, cw)
    }

    fn newest_epoch(&mut self, service: u16) -> Result<Option<u64>> {
        newest_epoch(self.conn, service)
    }

    fn raise_epoch(&mut self, service: u16, epoch: u64) -> Result<()> {
        raise_epoch(self.conn, service, epoch, self.period_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use headend_engine::schedule::ControlWordSchedule;

    /// A schedule over the sealed store of `conn`, with 1 s periods.
    fn schedule<'a>(conn: &'a Connection, mk: &'a MasterKey) -> ControlWordSchedule<SealedCws<'a>> {
        ControlWordSchedule::with_store(1000, SealedCws::new(conn, mk, 1000)).unwrap()
    }

    #[test]
    fn the_schedule_keeps_its_words_and_epochs_across_a_restart() {
        let home = tempfile::tempdir().unwrap();
        let mk = MasterKey::new(&proto::secret::Key32::random());
        let mut conn = super::super::open(&home.path().join("cw.db"), true).unwrap();
        let tx = conn.transaction().unwrap();
        let mut s = schedule(&tx, &mk);
        headend_engine::schedule::check_rules(&mut s);
        let before = s.pair(1, 13).unwrap();
        tx.commit().unwrap();
        drop(conn);

        // Reopened: the same words, and the epochs still never go back.
        let conn = super::super::open(&home.path().join("cw.db"), false).unwrap();
        let mut s = schedule(&conn, &mk);
        assert_eq!(s.pair(1, 13).unwrap(), before);
        assert_eq!(s.epoch_on_air(1, 0).unwrap(), 13);
        assert!(s.pair(1, 11).is_err());
        // Another master key opens none of them.
        let other = MasterKey::new(&proto::secret::Key32::random());
        assert!(matches!(
            schedule(&conn, &other).pair(1, 13),
            Err(headend_engine::error::ScheduleError::Store(
                StoreError::Sealed(_)
            ))
        ));
    }
}
