//! The schema: numbered migrations. `PRAGMA user_version` records the
//! last one applied, and each runs in its own transaction, so a schema is
//! never half upgraded.

use super::StoreError;
use rusqlite::Connection;

/// Each entry upgrades the schema by one version.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE operator (
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        operator_id   INTEGER NOT NULL,
        x25519_public BLOB NOT NULL,
        ed25519_public BLOB NOT NULL,
        sealed_x25519 BLOB NOT NULL,
        sealed_ed25519 BLOB NOT NULL,
        created_ms    INTEGER NOT NULL
    );
    -- One row per daemon start.
    CREATE TABLE runs (
        run        INTEGER PRIMARY KEY,
        started_ms INTEGER NOT NULL
    );
    -- EMM sequence number blocks: the high-water mark of every counter.
    -- While a block is in use, every EMM's seq is in [floor, floor + 2^20);
    -- a new block (at each start, and every few minutes) is committed
    -- before any seq in it is used, and its floor is above every earlier
    -- block's range (see state::seq::next_seq_floor).
    CREATE TABLE seq_blocks (
        floor      INTEGER PRIMARY KEY,
        run        INTEGER NOT NULL,
        started_ms INTEGER NOT NULL
    );
    CREATE TABLE products (
        id                INTEGER PRIMARY KEY CHECK (id BETWEEN 1 AND 4294967295),
        name              TEXT NOT NULL UNIQUE,
        generation        INTEGER NOT NULL,
        active_generation INTEGER NOT NULL,
        activate_at_ms    INTEGER NOT NULL,
        next_renewal_ms   INTEGER NOT NULL,
        created_ms        INTEGER NOT NULL
    );
    CREATE TABLE product_keys (
        product    INTEGER NOT NULL REFERENCES products(id),
        generation INTEGER NOT NULL,
        sealed_key BLOB NOT NULL,
        reason     TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (product, generation)
    );
    CREATE TABLE channels (
        service_id INTEGER PRIMARY KEY CHECK (service_id BETWEEN 1 AND 65535),
        name       TEXT NOT NULL UNIQUE,
        product    INTEGER NOT NULL REFERENCES products(id),
        ecm_pid    INTEGER NOT NULL,
        emm_pid    INTEGER NOT NULL,
        maturity   INTEGER NOT NULL,
        input      TEXT,
        output     TEXT,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE cards (
        id          INTEGER PRIMARY KEY CHECK (id BETWEEN 1 AND 4294967294),
        operator_id INTEGER NOT NULL,
        public_key  BLOB NOT NULL,
        sealed_kek  BLOB NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('active', 'revoked')),
        created_ms  INTEGER NOT NULL,
        revoked_ms  INTEGER
    );
    CREATE TABLE subscriptions (
        card       INTEGER NOT NULL REFERENCES cards(id),
        product    INTEGER NOT NULL REFERENCES products(id),
        start      INTEGER NOT NULL,
        end        INTEGER NOT NULL,
        lapsed     INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (card, product)
    );
    CREATE INDEX subscriptions_by_product ON subscriptions(product, lapsed);
    CREATE INDEX subscriptions_by_end ON subscriptions(lapsed, end);
    CREATE TABLE pairings (
        card       INTEGER PRIMARY KEY REFERENCES cards(id),
        receiver   BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    );
    -- Control words of the current and next crypto periods, sealed, written
    -- before the ECM that carries them is first emitted.
    CREATE TABLE control_words (
        service   INTEGER NOT NULL,
        epoch     INTEGER NOT NULL,
        sealed_cw BLOB NOT NULL,
        PRIMARY KEY (service, epoch)
    );
    -- Every ECM sealed, as emitted: the same header always gets these bytes.
    CREATE TABLE ecms (
        product    INTEGER NOT NULL,
        generation INTEGER NOT NULL,
        epoch      INTEGER NOT NULL,
        service    INTEGER NOT NULL,
        bytes      BLOB NOT NULL,
        PRIMARY KEY (product, generation, epoch, service)
    );
    -- The newest epoch each service has put on the air.
    CREATE TABLE service_epochs (
        service    INTEGER PRIMARY KEY,
        last_epoch INTEGER NOT NULL,
        period_ms  INTEGER NOT NULL
    );
    "#,
    // 2: channels changed live. Where each came from ('config': a
    // [[channels]] table of headend.toml, made again at every start and
    // dropped when the file no longer has it; 'api': added through the
    // API), and the programs it carries clear on purpose (service ids,
    // comma-separated).
    r#"
    ALTER TABLE channels ADD COLUMN origin TEXT NOT NULL DEFAULT 'api'
        CHECK (origin IN ('config', 'api'));
    ALTER TABLE channels ADD COLUMN clear_services TEXT NOT NULL DEFAULT '';
    "#,
    // 3: renewals as a delivery process. Each generation of a product's
    // key moves through 'prepared' (made and sealed, not yet on the air),
    // 'delivering' (EMMs carry it, ECMs do not use it yet), 'active' (ECMs
    // use it), then 'retired'; a generation replaced by a newer renewal
    // before it was active is 'superseded' (see state::products).
    r#"
    ALTER TABLE product_keys ADD COLUMN state TEXT NOT NULL DEFAULT 'retired'
        CHECK (state IN ('prepared', 'delivering', 'active', 'retired', 'superseded'));
    ALTER TABLE product_keys ADD COLUMN changed_ms INTEGER NOT NULL DEFAULT 0;
    UPDATE product_keys SET state = 'active'
        WHERE (product, generation) IN (SELECT id, active_generation FROM products);
    UPDATE product_keys SET state = 'delivering'
        WHERE (product, generation) IN
            (SELECT id, generation FROM products WHERE generation > active_generation);
    "#,
    // 4: the clock each run last put on the air (checked at the next
    // start, see state::clock), and the mark of a database that is a
    // backup (see crate::backup): when it was taken, and when `headend
    // restore` put it in place. A daemon that opens a marked database
    // renews every product key, then drops the mark.
    r#"
    ALTER TABLE runs ADD COLUMN clock_ms INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE backup_mark (
        id          INTEGER PRIMARY KEY CHECK (id = 1),
        taken_ms    INTEGER NOT NULL,
        restored_ms INTEGER
    );
    "#,
    // 5: Subset Difference. The forest (its depth, and the master secret
    // every node label derives from, sealed), and each card's place in it:
    // its number, handed out in registration order and never reused.
    r#"
    CREATE TABLE sd_forest (
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        depth         INTEGER NOT NULL CHECK (depth BETWEEN 1 AND 24),
        sealed_master BLOB NOT NULL,
        created_ms    INTEGER NOT NULL
    );
    ALTER TABLE cards ADD COLUMN sd_number INTEGER;
    UPDATE cards SET sd_number = (SELECT COUNT(*) FROM cards AS c WHERE c.rowid < cards.rowid);
    CREATE UNIQUE INDEX cards_by_sd_number ON cards(sd_number);
    "#,
];

/// The schema version this build writes.
pub fn schema_version() -> u32 {
    MIGRATIONS.len() as u32
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let supported = schema_version();
    if found > supported {
        return Err(StoreError::TooNew { found, supported });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as u32 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open;

    #[test]
    fn migrates_once_and_locks_out_a_second_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        assert!(open(&path, false).is_err(), "no create without asking");
        {
            let conn = open(&path, true).unwrap();
            let v: u32 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(v, schema_version());
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(sync, 2, "FULL");
            assert!(matches!(open(&path, false), Err(StoreError::Locked)));
        }
        // Reopening applies nothing twice.
        let conn = open(&path, false).unwrap();
        conn.execute("INSERT INTO runs (run, started_ms) VALUES (1, 0)", [])
            .unwrap();
        drop(conn);
        let conn = open(&path, false).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            open(&path, false),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
