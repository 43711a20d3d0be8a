//! The `runs` and `seq_blocks` tables: one row per daemon start, and one
//! per EMM sequence block (see [`crate::state::seq`]).

use super::{int, Result};
use rusqlite::{params, Connection};

/// The newest run, 0 if none.
pub fn last_run(conn: &Connection) -> Result<u64> {
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(run), 0) FROM runs", [], |r| r.get(0))?;
    Ok(last as u64)
}

pub fn insert_run(conn: &Connection, run: u64, now_ms: u64) -> Result<()> {
    conn.execute(
        "INSERT INTO runs (run, started_ms) VALUES (?1, ?2)",
        params![int(run), int(now_ms)],
    )?;
    Ok(())
}

/// The floor of the newest sequence block, 0 if none.
pub fn last_seq_floor(conn: &Connection) -> Result<u64> {
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(floor), 0) FROM seq_blocks", [], |r| {
        r.get(0)
    })?;
    Ok(last as u64)
}

pub fn insert_seq_block(conn: &Connection, floor: u64, run: u64, now_ms: u64) -> Result<()> {
    conn.execute(
        "INSERT INTO seq_blocks (floor, run, started_ms) VALUES (?1, ?2, ?3)",
        params![int(floor), int(run), int(now_ms)],
    )?;
    Ok(())
}

/// The newest clock any run put on the air ([`set_clock`]), if one did.
pub fn last_clock(conn: &Connection) -> Result<Option<u64>> {
    let last: i64 = conn.query_row("SELECT COALESCE(MAX(clock_ms), 0) FROM runs", [], |r| {
        r.get(0)
    })?;
    Ok((last > 0).then_some(last as u64))
}

/// Records `clock_ms` as the clock `run` has put on the air.
pub fn set_clock(conn: &Connection, run: u64, clock_ms: u64) -> Result<()> {
    conn.execute(
        "UPDATE runs SET clock_ms = MAX(clock_ms, ?2) WHERE run = ?1",
        params![int(run), int(clock_ms)],
    )?;
    Ok(())
}
