//! The `cards` table: each registered card, its public key, its KEK
//! (sealed) and whether it is active or revoked.

use super::{int, select, Result, StoreError};
use crate::atrest::{row, MasterKey};
use proto::secret::Kek;
use rusqlite::{params, Connection, OptionalExtension};

fn kek_row(card: u32) -> crate::atrest::RowId<'static> {
    row("cards", u64::from(card), 0)
}

/// A card as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRow {
    pub id: u32,
    pub operator_id: u32,
    pub public_key: Vec<u8>,
    /// `active` or `revoked`.
    pub state: String,
    pub created_ms: u64,
    pub revoked_ms: Option<u64>,
}

fn card_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CardRow> {
    Ok(CardRow {
        id: r.get(0)?,
        operator_id: r.get(1)?,
        public_key: r.get(2)?,
        state: r.get(3)?,
        created_ms: r.get::<_, i64>(4)? as u64,
        revoked_ms: r.get::<_, Option<i64>>(5)?.map(|x| x as u64),
    })
}

/// Calls `each` with every active card's id, public key and opened KEK,
/// in id order.
pub fn for_each_active<E: From<StoreError>>(
    conn: &Connection,
    mk: &MasterKey,
    mut each: impl FnMut(u32, [u8; 32], Kek) -> Result<(), E>,
) -> Result<(), E> {
    let mut st = conn
        .prepare("SELECT id, public_key, sealed_kek FROM cards WHERE state = 'active' ORDER BY id")
        .map_err(StoreError::from)?;
    let mut rows = st.query([]).map_err(StoreError::from)?;
    while let Some(r) = rows.next().map_err(StoreError::from)? {
        let id: u32 = r.get(0).map_err(StoreError::from)?;
        let public: Vec<u8> = r.get(1).map_err(StoreError::from)?;
        let blob: Vec<u8> = r.get(2).map_err(StoreError::from)?;
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| StoreError::Corrupt(format!("card {id}: stored key is not 32 bytes")))?;
        let kek = Kek::from_bytes(
            mk.open::<32>(kek_row(id), &blob)
                .map_err(StoreError::from)?,
        );
        each(id, public, kek)?;
    }
    Ok(())
}

/// The ids of the active cards.
pub fn active_ids(conn: &Connection) -> Result<Vec<u32>> {
    let mut st = conn.prepare_cached("SELECT id FROM cards WHERE state = 'active'")?;
    let v = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(v)
}

pub fn count_revoked(conn: &Connection) -> Result<u64> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM cards WHERE state = 'revoked'",
        [],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// A card's state (`active`, `revoked`), if it is registered.
pub fn state(conn: &Connection, id: u32) -> Result<Option<String>> {
    Ok(conn
        .query_row("SELECT state FROM cards WHERE id = ?1", params![id], |r| {
            r.get(0)
        })
        .optional()?)
}

pub fn get(conn: &Connection, id: u32) -> Result<Option<CardRow>> {
    Ok(conn
        .query_row(
            "SELECT id, operator_id, public_key, state, created_ms, revoked_ms FROM cards WHERE id = ?1",
            params![id],
            card_row,
        )
        .optional()?)
}

/// Cards in id order, from `after` (exclusive), at most `limit`.
pub fn page(conn: &Connection, after: u32, limit: u32) -> Result<Vec<CardRow>> {
    select(
        conn,
        "SELECT id, operator_id, public_key, state, created_ms, revoked_ms FROM cards WHERE id > ?1 ORDER BY id LIMIT ?2",
        params![after, limit],
        card_row,
    )
}

/// Registers an active card, its KEK sealed.
pub fn insert(
    conn: &Connection,
    mk: &MasterKey,
    id: u32,
    operator_id: u32,
    public: &[u8; 32],
    kek: &Kek,
    now_ms: u64,
) -> Result<()> {
    let sealed = mk.seal(kek_row(id), kek.expose());
    conn.execute(
        "INSERT INTO cards (id, operator_id, public_key, sealed_kek, state, created_ms, sd_number)
         VALUES (?1, ?2, ?3, ?4, 'active', ?5, (SELECT COALESCE(MAX(sd_number) + 1, 0) FROM cards))",
        params![id, operator_id, public.to_vec(), sealed, int(now_ms)],
    )?;
    Ok(())
}

/// Registers many active cards, each subscribed to `product` from `start`
/// to `end` (Unix seconds).
#[allow(clippy::too_many_arguments)]
pub fn import(
    conn: &Connection,
    mk: &MasterKey,
    operator_id: u32,
    cards: &[(u32, [u8; 32], Kek)],
    product: u32,
    start: u64,
    end: u64,
    now_ms: u64,
) -> Result<()> {
    let mut card = conn.prepare(
        "INSERT INTO cards (id, operator_id, public_key, sealed_kek, state, created_ms, sd_number)
         VALUES (?1, ?2, ?3, ?4, 'active', ?5, (SELECT COALESCE(MAX(sd_number) + 1, 0) FROM cards))",
    )?;
    let mut sub = conn.prepare(
        "INSERT INTO subscriptions (card, product, start, end, lapsed, created_ms) VALUES (?1, ?2, ?3, ?4, 0, ?5)",
    )?;
    for (id, public, kek) in cards {
        let sealed = mk.seal(kek_row(*id), kek.expose());
        card.execute(params![
            id,
            operator_id,
            public.to_vec(),
            sealed,
            int(now_ms)
        ])?;
        sub.execute(params![id, product, int(start), int(end), int(now_ms)])?;
    }
    Ok(())
}

/// Marks a card revoked.
pub fn revoke(conn: &Connection, id: u32, now_ms: u64) -> Result<()> {
    conn.execute(
        "UPDATE cards SET state = 'revoked', revoked_ms = ?2 WHERE id = ?1",
        params![id, int(now_ms)],
    )?;
    Ok(())
}
