//! The headend's SQLite database: every SQL statement the daemon runs, one
//! file per group of tables, and the connection settings.
//!
//! * WAL journal, `synchronous = FULL`: a transaction that returned from
//!   `COMMIT` is on disk, so an API write acknowledged after its commit
//!   survives `kill -9` and a power cut.
//! * `locking_mode = EXCLUSIVE`: one daemon per database. Two daemons on
//!   one database would each think they own the sequence numbers.
//! * The schema is upgraded by numbered migrations (`schema`).
//!
//! The functions here read and write rows; they never open or commit a
//! transaction of their own. Where a change spans several statements, the
//! caller ([`crate::state`]) opens the transaction and commits it, because
//! when a change is committed is what its crash safety rests on. A
//! function that takes a [`Connection`] also takes a `&Transaction`.
//!
//! Secret columns (`sealed_*`) are sealed under the master key and opened
//! here, each blob bound to its row ([`crate::atrest::row`]), so a blob
//! moved to another row does not open. Nothing here logs.
//!
//! * [`operator`]: the operator's keys.
//! * [`runs`]: daemon runs, the clock each put on the air, and EMM
//!   sequence blocks.
//! * [`backup`]: the mark of a database that is a backup, and the copy.
//! * [`products`]: products and their period keys.
//! * [`channels`]: the channels.
//! * [`cards`]: cards and their KEKs.
//! * [`subscriptions`]: subscriptions and pairings.
//! * [`sd`]: the Subset Difference forest and the cards' places in it.
//! * [`control_words`]: control words, sealed ECMs and each service's
//!   newest epoch.

use rusqlite::{Connection, OpenFlags};
use std::path::Path;

pub mod backup;
pub mod cards;
pub mod channels;
pub mod control_words;
pub mod operator;
pub mod products;
pub mod runs;
mod schema;
pub mod sd;
pub mod subscriptions;

pub use operator::init_database;
pub use schema::schema_version;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this headend ({supported}); upgrade the headend")]
    TooNew { found: u32, supported: u32 },
    #[error("the database is in use by another headend process")]
    Locked,
    /// A sealed column does not open under this master key.
    #[error(transparent)]
    Sealed(#[from] crate::atrest::OpenError),
    /// A row that this headend could not have written.
    #[error("{0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Opens (creating if asked) the database with the daemon's settings and
/// brings its schema up to date.
pub fn open(path: &Path, create: bool) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_millis(0))?;
    let locked = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Locked
        }
        _ => StoreError::Sql(e),
    };
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(locked)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(locked)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Sql(rusqlite::Error::InvalidQuery));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    schema::migrate(&mut conn).map_err(|e| match e {
        StoreError::Sql(e) => locked(e),
        other => other,
    })?;
    Ok(conn)
}

/// Every row `sql` selects with `params`, each made by `row`.
fn select<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut st = conn.prepare(sql)?;
    let v = st.query_map(params, row)?.collect::<Result<_, _>>()?;
    Ok(v)
}

/// Unix milliseconds or seconds as SQLite's INTEGER holds them.
fn int(v: u64) -> i64 {
    v as i64
}
