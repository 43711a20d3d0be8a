//! Backups, and a run on a database restored from one.
//!
//! A backup is taken on the daemon's own connection ([`crate::backup`]).
//! A database that carries a backup's mark was restored (or copied) from
//! one: it lacks whatever happened after the backup was taken, notably
//! subscriptions ended, cards revoked and products taken since, which the
//! cards may still hold. So at the first step whose clock passes the clock
//! check, the daemon says so at WARN, renews every product key with the
//! reason "restored from a backup" (the cards the restored database
//! entitles get the new keys by EMM; the others lose the products when
//! ECMs switch to them), records it for `headend status`, and drops the
//! mark. The ECM side of a restore (only fresh epochs are sealed) is in
//! `ecm`.

use super::fields::{rfc3339, secs};
use super::{Headend, Result};
use crate::backup::{BackupError, Taken};
use crate::store;
use std::path::Path;

impl Headend {
    /// Takes a consistent backup of the database into `target` (see
    /// [`crate::backup::backup`]).
    pub fn backup(
        &self,
        target: &Path,
        force: bool,
        now_ms: u64,
    ) -> std::result::Result<Taken, BackupError> {
        let started = std::time::Instant::now();
        let t = crate::backup::backup(&self.conn, target, force, now_ms)?;
        tracing::info!(
            path = %t.path.display(),
            bytes = t.bytes,
            ms = started.elapsed().as_millis() as u64,
            "backup taken"
        );
        Ok(t)
    }

    /// At open: a database restored from a backup is said so at once.
    pub(super) fn note_restore(&mut self) {
        let Some(m) = self.restore_pending else {
            return;
        };
        let taken = rfc3339(secs(m.taken_ms));
        tracing::warn!(
            backup_taken = %taken,
            restored = %m.restored_ms.map(|r| rfc3339(secs(r))).unwrap_or_else(|| "by a copy".into()),
            "running on a database restored from a backup taken at {taken}: everything after it is lost; \
             every product key is renewed at the first step so that entitlements the backup lacks end"
        );
        self.restored = Some(api::RestoreStatus {
            backup_taken: taken,
            backup_taken_unix_ms: m.taken_ms,
            restored: m.restored_ms.map(|r| rfc3339(secs(r))),
            renewed: Vec::new(),
        });
    }

    /// Renews every product key once on a restored database, then drops
    /// its mark.
    pub(super) fn restore_step(&mut self, now_ms: u64) -> Result<()> {
        let Some(m) = self.restore_pending else {
            return Ok(());
        };
        let renewed = self.rotate(None, "restored from a backup", now_ms)?;
        store::backup::clear_mark(&self.conn)?;
        self.restore_pending = None;
        for r in &renewed {
            tracing::warn!(
                product = r.product,
                name = %r.name,
                generation = r.generation,
                activate_at = %r.activate_at,
                "product key renewed: restored from a backup taken at {}; cards holding this product \
                 without a subscription in the restored database lose it when ECMs use the new key",
                rfc3339(secs(m.taken_ms))
            );
        }
        if let Some(s) = self.restored.as_mut() {
            s.renewed = renewed;
        }
        Ok(())
    }

    /// This run's restore, as `headend status` shows it.
    pub fn restore_status(&self) -> Option<api::RestoreStatus> {
        self.restored.clone()
    }
}

