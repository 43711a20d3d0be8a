//! The `backup_mark` table, and the consistent copy of the database that
//! `headend backup` takes (see [`crate::backup`]).
//!
//! A database with a mark is a backup: it was taken at `taken_ms` and,
//! once `headend restore` has put it in place, restored at
//! `restored_ms`. The daemon that opens a marked database knows it runs on
//! a restored one (see `state::restore`), acts on it, then drops the mark.

use super::{int, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// The mark of a database that is a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupMark {
    /// When the backup was taken (Unix ms).
    pub taken_ms: u64,
    /// When `headend restore` put it in place, if it did.
    pub restored_ms: Option<u64>,
}

/// The mark, if the database is a backup.
pub fn mark(conn: &Connection) -> Result<Option<BackupMark>> {
    Ok(conn
        .query_row(
            "SELECT taken_ms, restored_ms FROM backup_mark WHERE id = 1",
            [],
            |r| {
                Ok(BackupMark {
                    taken_ms: r.get::<_, i64>(0)? as u64,
                    restored_ms: r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
                })
            },
        )
        .optional()?)
}

/// Marks the database as a backup (replacing any mark).
pub fn set_mark(conn: &Connection, m: BackupMark) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO backup_mark (id, taken_ms, restored_ms) VALUES (1, ?1, ?2)",
        params![int(m.taken_ms), m.restored_ms.map(int)],
    )?;
    Ok(())
}

/// Drops the mark: the daemon has acted on it.
pub fn clear_mark(conn: &Connection) -> Result<()> {
    conn.execute("DELETE FROM backup_mark", [])?;
    Ok(())
}

/// Writes a consistent copy of the database into `empty`, an empty file
/// (`VACUUM INTO`: one read transaction, so the copy is one committed
/// state; it runs on the daemon's own connection, which holds the
/// database's exclusive lock).
pub fn vacuum_into(conn: &Connection, empty: &Path) -> Result<()> {
    let path = empty.to_string_lossy();
    conn.execute("VACUUM INTO ?1", params![path.as_ref()])?;
    Ok(())
}
