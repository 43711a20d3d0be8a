//! The `operator` table: one row, the operator's X25519 and Ed25519 keys,
//! their public halves in clear and their seeds sealed.

use super::{int, open, Result, StoreError};
use crate::atrest::{row, MasterKey};
use headend_engine::operator::OperatorKeys;
use proto::crypto::{SigningKey, X25519Secret};
use proto::secret::Seed;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// Makes a database at `path` and writes the operator's keys into it, in
/// one transaction (`headend init`).
pub fn init_database(path: &Path, mk: &MasterKey, op: &OperatorKeys, now_ms: u64) -> Result<()> {
    let mut conn = open(path, true)?;
    let tx = conn.transaction()?;
    let id = u64::from(op.operator_id());
    let kex = mk.seal(row("operator.x25519", id, 0), op.kex().to_seed().expose());
    let sig = mk.seal(row("operator.ed25519", id, 0), op.signing().seed().expose());
    tx.execute(
        "INSERT INTO operator (id, operator_id, x25519_public, ed25519_public, sealed_x25519, sealed_ed25519, created_ms)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            op.operator_id(),
            op.kex().public().to_vec(),
            op.signing().public().to_vec(),
            kex,
            sig,
            int(now_ms)
        ],
    )?;
    tx.commit()?;
    Ok(())
}

/// The operator's keys, opened.
pub fn load(conn: &Connection, mk: &MasterKey) -> Result<OperatorKeys> {
    let (op_id, kex, sig): (u32, Vec<u8>, Vec<u8>) = conn
        .query_row(
            "SELECT operator_id, sealed_x25519, sealed_ed25519 FROM operator WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
        .ok_or_else(|| {
            StoreError::Corrupt(
                "the database has no operator keys: was it made by `headend init`?".into(),
            )
        })?;
    let id = u64::from(op_id);
    let kex = Seed::from_bytes(mk.open::<32>(row("operator.x25519", id, 0), &kex)?);
    let sig = Seed::from_bytes(mk.open::<32>(row("operator.ed25519", id, 0), &sig)?);
    let signing = SigningKey::from_seed(sig)
        .map_err(|_| StoreError::Corrupt("stored operator signing key is invalid".into()))?;
    Ok(OperatorKeys::from_parts(
        op_id,
        X25519Secret::from_seed(&kex),
        signing,
    ))
}
