//! The `sd_forest` table and the cards' `sd_number`: the Subset
//! Difference forest (its depth, and the master secret every node label
//! derives from, sealed) and each card's place in it.

use super::{int, select, Result, StoreError};
use crate::atrest::{row, MasterKey};
use proto::secret::SdMaster;
use rusqlite::{params, Connection, OptionalExtension};

fn master_row() -> crate::atrest::RowId<'static> {
    row("sd_forest", 1, 0)
}

/// The forest's depth and master secret, made (random, of `depth`) the
/// first time.
pub fn load_or_create(
    conn: &Connection,
    mk: &MasterKey,
    depth: u8,
    now_ms: u64,
) -> Result<(u8, SdMaster)> {
    let found: Option<(u8, Vec<u8>)> = conn
        .query_row(
            "SELECT depth, sealed_master FROM sd_forest WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((depth, blob)) = found {
        return Ok((
            depth,
            SdMaster::from_bytes(mk.open::<32>(master_row(), &blob)?),
        ));
    }
    let master = SdMaster::random();
    conn.execute(
        "INSERT INTO sd_forest (id, depth, sealed_master, created_ms) VALUES (1, ?1, ?2, ?3)",
        params![depth, mk.seal(master_row(), master.expose()), int(now_ms)],
    )?;
    Ok((depth, master))
}

/// Every card's id and number in the forest (revoked cards included: a
/// number is never given again).
pub fn numbers(conn: &Connection) -> Result<Vec<(u32, u64)>> {
    select(
        conn,
        "SELECT id, sd_number FROM cards WHERE sd_number IS NOT NULL ORDER BY sd_number",
        [],
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)),
    )
}

/// The number of a card (given when it was registered).
pub fn number_of(conn: &Connection, card: u32) -> Result<u64> {
    let n: Option<i64> = conn.query_row(
        "SELECT sd_number FROM cards WHERE id = ?1",
        params![card],
        |r| r.get(0),
    )?;
    n.map(|n| n as u64)
        .ok_or_else(|| StoreError::Corrupt(format!("card {card} has no Subset Difference number")))
}
