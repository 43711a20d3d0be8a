//! EMM sequence blocks: how every EMM gets a sequence number above every
//! one a card has seen, across restarts, without a write per EMM.
//!
//! The key engine counts sequence numbers in memory. A *block* is a range
//! `[floor, floor + 2^20)` committed to the database before any number in
//! it is used; at each start, and every few minutes, every counter moves
//! up to a new block's floor. A restart therefore never reuses a number
//! (a card would refuse the EMM as a replay), at the price of one commit
//! per block.

use super::{Headend, Result, StateError};
use crate::store;
use rusqlite::Connection;

/// Room for EMM sequence numbers in one block, per card: a block is
/// retired long before any card could get this many EMMs in it.
pub const BLOCK_SHIFT: u32 = 20;
pub(super) const BLOCK_ROOM: u64 = 1 << BLOCK_SHIFT;
/// A block is retired after this long, or sooner if a card could come near
/// its room.
const BLOCK_MAX_AGE_MS: u64 = 10 * 60 * 1000;

/// The floor of a new EMM sequence block: above the whole range of the
/// last block in the database (`last_floor + 2^20`), and at least
/// `now_ms << 20`. The second part keeps a database restored from a backup
/// (whose last block is old) from reusing a sequence number: blocks are
/// made at least a millisecond apart, so every block made before `now`
/// lies below `now_ms << 20`, as long as the clock has not gone back.
pub fn next_seq_floor(last_floor: u64, now_ms: u64) -> Option<u64> {
    let by_chain = last_floor.checked_add(BLOCK_ROOM)?;
    let by_clock = now_ms
        .checked_shl(BLOCK_SHIFT)
        .filter(|v| v >> BLOCK_SHIFT == now_ms)?;
    let floor = by_chain.max(by_clock);
    // Stored as a SQLite INTEGER, with room above it.
    (floor <= i64::MAX as u64 - BLOCK_ROOM).then_some(floor)
}

/// Commits a new EMM sequence block and returns its floor.
pub(super) fn new_seq_block(conn: &mut Connection, run: u64, now_ms: u64) -> Result<u64> {
    let tx = conn.transaction()?;
    let last = store::runs::last_seq_floor(&tx)?;
    let floor = next_seq_floor(last, now_ms)
        .ok_or_else(|| StateError::Internal("EMM sequence space exhausted".into()))?;
    store::runs::insert_seq_block(&tx, floor, run, now_ms)?;
    tx.commit()?;
    Ok(floor)
}

impl Headend {
    /// Moves every counter to a new sequence block, committed first.
    pub(super) fn roll_seq_block(&mut self, now_ms: u64) -> Result<()> {
        let floor = new_seq_block(&mut self.conn, self.run, now_ms)?;
        for id in store::cards::active_ids(&self.conn)? {
            self.engine.raise_emm_u_seq(id, floor)?;
        }
        self.engine.raise_emm_g_seq(floor);
        self.seq_floor = floor;
        self.block_started_ms = now_ms;
        self.block_ticks = 0;
        self.block_one_offs = 0;
        tracing::debug!(floor, "new EMM sequence block");
        Ok(())
    }

    /// A card gets at most three carousel EMMs per tick (one queued, one in
    /// the round, one in the fast lane) plus the one-off EMMs (pair,
    /// unpair, remove product, block): a new block starts well before that
    /// could reach the room.
    pub(super) fn ensure_seq_room(&mut self, one_offs: u64, now_ms: u64) -> Result<()> {
        let bound = 3 * (self.block_ticks + 1) + self.block_one_offs + one_offs;
        if bound >= BLOCK_ROOM / 2
            || now_ms.saturating_sub(self.block_started_ms) >= BLOCK_MAX_AGE_MS
        {
            self.roll_seq_block(now_ms)?;
        }
        self.block_one_offs += one_offs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_floors_only_move_up_and_survive_a_rolled_back_database() {
        let t0 = 1_800_000_000_000u64;
        let a = next_seq_floor(0, t0).unwrap();
        assert_eq!(a, t0 << BLOCK_SHIFT);
        // The next block is above the whole range of the previous one, even
        // with the clock stopped or gone back.
        let b = next_seq_floor(a, t0).unwrap();
        assert!(b >= a + BLOCK_ROOM);
        let c = next_seq_floor(b, t0 - 3_600_000).unwrap();
        assert!(c >= b + BLOCK_ROOM);
        // A database restored from before blocks b and c (its last floor is
        // a): a millisecond later by the clock, the new block is above
        // both of their ranges.
        let restored = next_seq_floor(a, t0 + 3).unwrap();
        assert!(restored >= c + BLOCK_ROOM, "{restored} {c}");
        assert_eq!(next_seq_floor(i64::MAX as u64, t0), None);
        assert_eq!(next_seq_floor(0, u64::MAX), None);
    }
}
