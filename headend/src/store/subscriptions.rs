//! The `subscriptions` and `pairings` tables: which card holds which
//! product from when to when (and whether that ended, `lapsed`), and the
//! one receiver each paired card works with.

use super::{int, select, Result, StoreError};
use rusqlite::{params, Connection, OptionalExtension};

/// A subscription as stored, with its product's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRow {
    pub card: u32,
    pub product: u32,
    pub product_name: String,
    /// Unix seconds.
    pub start: u64,
    pub end: u64,
    pub lapsed: bool,
}

/// Calls `each` with the card, product, start and end of every live
/// subscription of an active card.
pub fn for_each_live<E: From<StoreError>>(
    conn: &Connection,
    mut each: impl FnMut(u32, u32, u64, u64) -> Result<(), E>,
) -> Result<(), E> {
    let mut st = conn
        .prepare(
            "SELECT s.card, s.product, s.start, s.end FROM subscriptions s
             JOIN cards c ON c.id = s.card WHERE s.lapsed = 0 AND c.state = 'active'",
        )
        .map_err(StoreError::from)?;
    let mut rows = st.query([]).map_err(StoreError::from)?;
    while let Some(r) = rows.next().map_err(StoreError::from)? {
        let row = (|| -> rusqlite::Result<(u32, u32, i64, i64)> {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })()
        .map_err(StoreError::from)?;
        each(row.0, row.1, row.2 as u64, row.3 as u64)?;
    }
    Ok(())
}

/// Subscriptions in card and product order, of one card or of all.
pub fn list(conn: &Connection, card: Option<u32>) -> Result<Vec<SubscriptionRow>> {
    select(
        conn,
        "SELECT s.card, s.product, p.name, s.start, s.end, s.lapsed FROM subscriptions s
         JOIN products p ON p.id = s.product WHERE (?1 IS NULL OR s.card = ?1) ORDER BY s.card, s.product",
        params![card],
        |r| {
            Ok(SubscriptionRow {
                card: r.get(0)?,
                product: r.get(1)?,
                product_name: r.get(2)?,
                start: r.get::<_, i64>(3)? as u64,
                end: r.get::<_, i64>(4)? as u64,
                lapsed: r.get::<_, i64>(5)? != 0,
            })
        },
    )
}

/// Cards that hold `product` at `now` (Unix seconds): a live
/// subscription, an active card.
pub fn holders(conn: &Connection, product: u32, now: u64) -> Result<Vec<u32>> {
    select(
        conn,
        "SELECT s.card FROM subscriptions s JOIN cards c ON c.id = s.card
         WHERE s.product = ?1 AND s.lapsed = 0 AND c.state = 'active' AND s.end >= ?2",
        params![product, int(now)],
        |r| r.get(0),
    )
}

/// Cards subscribed (live) or paired at or after `since_ms`.
pub fn changed_since(conn: &Connection, since_ms: u64) -> Result<Vec<u32>> {
    select(
        conn,
        "SELECT card FROM subscriptions WHERE lapsed = 0 AND created_ms >= ?1
         UNION SELECT card FROM pairings WHERE created_ms >= ?1",
        params![int(since_ms)],
        |r| r.get(0),
    )
}

/// A subscription, new or renewed (it is live again).
pub fn upsert(
    conn: &Connection,
    card: u32,
    product: u32,
    start: u64,
    end: u64,
    now_ms: u64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO subscriptions (card, product, start, end, lapsed, created_ms) VALUES (?1, ?2, ?3, ?4, 0, ?5)
         ON CONFLICT(card, product) DO UPDATE SET start = ?3, end = ?4, lapsed = 0",
        params![card, product, int(start), int(end), int(now_ms)],
    )?;
    Ok(())
}

/// Whether a card's subscription to a product lapsed; `None` if it has
/// none.
pub fn lapsed(conn: &Connection, card: u32, product: u32) -> Result<Option<bool>> {
    let v: Option<i64> = conn
        .query_row(
            "SELECT lapsed FROM subscriptions WHERE card = ?1 AND product = ?2",
            params![card, product],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.map(|l| l != 0))
}

pub fn delete(conn: &Connection, card: u32, product: u32) -> Result<()> {
    conn.execute(
        "DELETE FROM subscriptions WHERE card = ?1 AND product = ?2",
        params![card, product],
    )?;
    Ok(())
}

/// Live subscriptions that ended before `now` (Unix seconds), at most
/// 10,000.
pub fn ended(conn: &Connection, now: u64) -> Result<Vec<(u32, u32)>> {
    let mut st = conn.prepare_cached(
        "SELECT card, product FROM subscriptions WHERE lapsed = 0 AND end < ?1 LIMIT 10000",
    )?;
    let v = st
        .query_map(params![int(now)], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(v)
}

pub fn set_lapsed(conn: &Connection, card: u32, product: u32) -> Result<()> {
    conn.execute(
        "UPDATE subscriptions SET lapsed = 1 WHERE card = ?1 AND product = ?2",
        params![card, product],
    )?;
    Ok(())
}

/// Every subscription of a card lapses (it is revoked).
pub fn lapse_all_of(conn: &Connection, card: u32) -> Result<()> {
    conn.execute(
        "UPDATE subscriptions SET lapsed = 1 WHERE card = ?1",
        params![card],
    )?;
    Ok(())
}

// ---- pairings --------------------------------------------------------------

/// Calls `each` with every active card's pairing. A receiver key that is
/// not 32 bytes is passed over.
pub fn for_each_pairing<E: From<StoreError>>(
    conn: &Connection,
    mut each: impl FnMut(u32, [u8; 32]) -> Result<(), E>,
) -> Result<(), E> {
    let mut st = conn
        .prepare(
            "SELECT p.card, p.receiver FROM pairings p JOIN cards c ON c.id = p.card WHERE c.state = 'active'",
        )
        .map_err(StoreError::from)?;
    let mut rows = st.query([]).map_err(StoreError::from)?;
    while let Some(r) = rows.next().map_err(StoreError::from)? {
        let card: u32 = r.get(0).map_err(StoreError::from)?;
        let rx: Vec<u8> = r.get(1).map_err(StoreError::from)?;
        if let Ok(rx) = <[u8; 32]>::try_from(rx) {
            each(card, rx)?;
        }
    }
    Ok(())
}

/// Pairs a card with a receiver, replacing any earlier one.
pub fn pair(conn: &Connection, card: u32, receiver: &[u8; 32], now_ms: u64) -> Result<()> {
    conn.execute(
        "INSERT INTO pairings (card, receiver, created_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(card) DO UPDATE SET receiver = ?2, created_ms = ?3",
        params![card, receiver.to_vec(), int(now_ms)],
    )?;
    Ok(())
}

pub fn unpair(conn: &Connection, card: u32) -> Result<()> {
    conn.execute("DELETE FROM pairings WHERE card = ?1", params![card])?;
    Ok(())
}
