//! The `products` and `product_keys` tables: each product's key
//! generations and timing, and every period key K_P ever made, sealed.

use super::{int, select, Result};
use crate::atrest::{row, MasterKey};
use api::Product;
use proto::secret::ProductKey;
use rusqlite::{params, Connection};

fn key_row(product: u32, generation: u32) -> crate::atrest::RowId<'static> {
    row("product_keys", u64::from(product), u64::from(generation))
}

/// Every product, with `key_created_ms` 0 (see [`key_created_ms`]).
pub fn all(conn: &Connection) -> Result<Vec<Product>> {
    select(
        conn,
        "SELECT id, name, generation, active_generation, activate_at_ms, next_renewal_ms, created_ms FROM products",
        [],
        |r| {
            Ok(Product {
                id: r.get(0)?,
                name: r.get(1)?,
                generation: r.get(2)?,
                active_generation: r.get(3)?,
                activate_at_ms: r.get::<_, i64>(4)? as u64,
                next_renewal_ms: r.get::<_, i64>(5)? as u64,
                created_ms: r.get::<_, i64>(6)? as u64,
                key_created_ms: 0,
            })
        },
    )
}

/// When a generation of a product's key was made.
pub fn key_created_ms(conn: &Connection, product: u32, generation: u32) -> Result<u64> {
    let ms: i64 = conn.query_row(
        "SELECT created_ms FROM product_keys WHERE product = ?1 AND generation = ?2",
        params![product, generation],
        |r| r.get(0),
    )?;
    Ok(ms as u64)
}

/// A generation of a product's key, opened.
pub fn key(conn: &Connection, mk: &MasterKey, product: u32, generation: u32) -> Result<ProductKey> {
    let blob: Vec<u8> = conn.query_row(
        "SELECT sealed_key FROM product_keys WHERE product = ?1 AND generation = ?2",
        params![product, generation],
        |r| r.get(0),
    )?;
    Ok(ProductKey::from_bytes(
        mk.open::<32>(key_row(product, generation), &blob)?,
    ))
}

pub fn insert(conn: &Connection, p: &Product) -> Result<()> {
    conn.execute(
        "INSERT INTO products (id, name, generation, active_generation, activate_at_ms, next_renewal_ms, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            p.id,
            p.name,
            p.generation,
            p.active_generation,
            int(p.activate_at_ms),
            int(p.next_renewal_ms),
            int(p.created_ms)
        ],
    )?;
    Ok(())
}

/// Where a generation of a product's key is in its life: see the
/// `product_keys.state` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Prepared,
    Delivering,
    Active,
    Retired,
    Superseded,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Prepared => "prepared",
            KeyState::Delivering => "delivering",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Superseded => "superseded",
        }
    }

    fn parse(s: &str) -> Option<KeyState> {
        [
            KeyState::Prepared,
            KeyState::Delivering,
            KeyState::Active,
            KeyState::Retired,
            KeyState::Superseded,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Stores a new generation of a product's key, sealed, in `state`;
/// `reason` says why it was made (`created`, `scheduled`, `revocation`...).
#[allow(clippy::too_many_arguments)]
pub fn insert_key(
    conn: &Connection,
    mk: &MasterKey,
    product: u32,
    generation: u32,
    key: &ProductKey,
    state: KeyState,
    reason: &str,
    now_ms: u64,
) -> Result<()> {
    let sealed = mk.seal(key_row(product, generation), key.expose());
    conn.execute(
        "INSERT INTO product_keys (product, generation, sealed_key, reason, created_ms, state, changed_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5)",
        params![product, generation, sealed, reason, int(now_ms), state.as_str()],
    )?;
    Ok(())
}

/// Moves a generation to `state`.
pub fn set_key_state(
    conn: &Connection,
    product: u32,
    generation: u32,
    state: KeyState,
    now_ms: u64,
) -> Result<()> {
    conn.execute(
        "UPDATE product_keys SET state = ?3, changed_ms = ?4 WHERE product = ?1 AND generation = ?2",
        params![product, generation, state.as_str(), int(now_ms)],
    )?;
    Ok(())
}

/// A product's generations in `states`, oldest first, with their state
/// and when they entered it.
pub fn keys_in(
    conn: &Connection,
    product: u32,
    states: &[KeyState],
) -> Result<Vec<(u32, KeyState, u64)>> {
    let all = select(
        conn,
        "SELECT generation, state, changed_ms FROM product_keys WHERE product = ?1 ORDER BY generation",
        params![product],
        |r| {
            Ok((
                r.get::<_, u32>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)? as u64,
            ))
        },
    )?;
    let mut out = Vec::new();
    for (g, s, at) in all {
        let state = KeyState::parse(&s).ok_or_else(|| {
            super::StoreError::Corrupt(format!(
                "product {product} generation {g} has an unknown state {s:?}"
            ))
        })?;
        if states.contains(&state) {
            out.push((g, state, at));
        }
    }
    Ok(out)
}

/// The highest generation a product has ever had (any state).
pub fn newest_generation(conn: &Connection, product: u32) -> Result<u32> {
    let g: Option<u32> = conn.query_row(
        "SELECT MAX(generation) FROM product_keys WHERE product = ?1",
        params![product],
        |r| r.get(0),
    )?;
    Ok(g.unwrap_or(0))
}

/// A renewal's new generations and timing.
pub fn set_generations(
    conn: &Connection,
    product: u32,
    generation: u32,
    active_generation: u32,
    activate_at_ms: u64,
    next_renewal_ms: u64,
) -> Result<()> {
    conn.execute(
        "UPDATE products SET generation = ?2, active_generation = ?3, activate_at_ms = ?4, next_renewal_ms = ?5 WHERE id = ?1",
        params![product, generation, active_generation, int(activate_at_ms), int(next_renewal_ms)],
    )?;
    Ok(())
}

/// ECMs now use `generation`.
pub fn set_active_generation(conn: &Connection, product: u32, generation: u32) -> Result<()> {
    conn.execute(
        "UPDATE products SET active_generation = ?2 WHERE id = ?1",
        params![product, generation],
    )?;
    Ok(())
}
