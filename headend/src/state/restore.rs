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

#[cfg(test)]
pub(super) mod tests {
    use super::super::*;
    use crate::config::ChannelConfig;
    use crate::store::init_database;
    use headend_engine::operator::OperatorKeys;

    const T0: u64 = 1_800_000_000_000;
    const PERIOD: u64 = 1000;

    fn channel() -> ChannelConfig {
        ChannelConfig {
            name: "one".into(),
            service_id: 7,
            product: "basic".into(),
            scrambler: Default::default(),
            ecm_pid: 0x100,
            emm_pid: 0x101,
            maturity: 0,
            input: None,
            output: None,
            clear_services: vec![],
        }
    }

    pub(in super::super) fn open(db: &Path, key: &proto::secret::Key32, now: u64) -> Headend {
        Headend::open(
            db,
            MasterKey::new(key),
            1,
            Timing {
                period_ms: PERIOD,
                renewal_ms: 3_600_000,
                cycle_ms: 5000,
                emm_bitrate: headend_engine::stream::DEFAULT_EMM_BITRATE,
            },
            &[channel()],
            CaOutput::new(),
            Arc::new(Metrics::default()),
            now,
        )
        .unwrap()
    }

    pub(in super::super) fn fresh(dir: &Path) -> (std::path::PathBuf, proto::secret::Key32) {
        let db = dir.join("h.db");
        let key = proto::secret::Key32::random();
        init_database(&db, &MasterKey::new(&key), &OperatorKeys::generate(1), T0).unwrap();
        (db, key)
    }

    /// The ECM on the air for service 7: its epoch and section.
    fn on_air(h: &Headend) -> Option<(u64, Vec<u8>)> {
        h.output()
            .current_ecm(7)
            .map(|e| (e.epoch, e.section.to_vec()))
    }

    #[test]
    fn after_a_restore_only_fresh_epochs_are_sealed_and_every_key_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let (db, key) = fresh(dir.path());
        let e0 = T0 / PERIOD;

        // The first start of a database seals at once.
        let mut h = open(&db, &key, T0);
        h.tick(T0).unwrap();
        assert_eq!(on_air(&h).unwrap().0, e0);
        assert_eq!(h.status(T0).ecms_fresh_from_epoch, None);
        let backup = dir.path().join("b.db");
        h.backup(&backup, false, T0 + 100).unwrap();
        // Running on: epoch e0 + 1 is sealed after the backup.
        h.tick(T0 + PERIOD).unwrap();
        let (e, sealed_after) = on_air(&h).unwrap();
        assert_eq!(e, e0 + 1);
        let generation = h.products()[0].generation;
        drop(h);

        // Restored, and started again within epoch e0 + 1: the backup has
        // no row for it, so it is not sealed again, nor is e0 + 2.
        crate::backup::restore(&db, &backup, T0 + PERIOD + 300).unwrap();
        let start = T0 + PERIOD + 400;
        let mut h = open(&db, &key, start);
        assert_eq!(h.status(start).ecms_fresh_from_epoch, Some(e0 + 3));
        let r = h.status(start).restored.unwrap();
        assert_eq!(r.backup_taken_unix_ms, T0 + 100);
        assert!(r.renewed.is_empty());
        for t in [start, T0 + 2 * PERIOD, T0 + 3 * PERIOD - 1] {
            h.tick(t).unwrap();
            assert_eq!(on_air(&h), None, "at {t}");
        }
        assert!(h.status(start).restored.unwrap().renewed.len() == 1);
        assert!(h.products()[0].generation > generation);
        assert!(store::backup::mark(&h.conn).unwrap().is_none());
        h.tick(T0 + 3 * PERIOD).unwrap();
        let (e, fresh) = on_air(&h).unwrap();
        assert_eq!(e, e0 + 3);
        assert_ne!(fresh, sealed_after);
        assert_eq!(h.status(T0 + 3 * PERIOD).ecms_fresh_from_epoch, None);
        drop(h);

        // A restart on the intact database within the same epoch puts the
        // stored bytes on the air at once; the next epoch waits, since
        // the database cannot tell it from a copy.
        let mut h = open(&db, &key, T0 + 3 * PERIOD + 500);
        assert!(h.restore_status().is_none(), "the mark was dropped");
        h.tick(T0 + 3 * PERIOD + 500).unwrap();
        assert_eq!(on_air(&h).unwrap(), (e0 + 3, fresh));
        h.tick(T0 + 4 * PERIOD).unwrap();
        assert_eq!(on_air(&h).unwrap().0, e0 + 3, "epoch e0 + 4 is held");
        h.tick(T0 + 5 * PERIOD).unwrap();
        assert_eq!(on_air(&h).unwrap().0, e0 + 5);
    }
}
