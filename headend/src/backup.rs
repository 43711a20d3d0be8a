//! `headend backup` and `headend restore`: a consistent copy of the
//! database taken while the daemon runs, and a backup put back in place.
//!
//! **Backup.** The daemon holds its database exclusively, so the copy is
//! made on the daemon's own connection, at an admin API request (or, with
//! no daemon running, by the CLI on a connection of its own: the same
//! [`backup`] function). `VACUUM INTO` writes one committed state into an
//! empty 0600 file made in the target's folder; the copy is switched to a
//! rollback journal (one self-contained file), marked as a backup with the
//! time it was taken ([`store::backup::BackupMark`]), synced, and only
//! then given its name: linked (never replacing a file) or, with
//! `--force`, renamed over the old one. The folder is synced last. A
//! failure leaves no file under the target's name.
//!
//! **Restore.** With the daemon stopped (its lock on the database tells),
//! [`restore`] copies the backup into a 0600 file next to the database,
//! checks that it is an Iodoform database of a schema this headend reads,
//! upgrades it, records when it was restored, syncs it, moves the replaced
//! database aside, removes the stale `-wal` and `-shm` files (which belong
//! to the replaced database and would corrupt the restored one), and
//! renames the copy into place.
//!
//! What a daemon does on a restored database (fresh epochs only, every
//! product key renewed, the clock check) is in `docs/OPERATIONS.md`,
//! "Backup and restore".

use crate::store::{self, backup::BackupMark, StoreError};
use rusqlite::{Connection, OpenFlags};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a backup or a restore was refused or failed. Each message names the
/// problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The target exists and `--force` was not given.
    #[error("{0} already exists: give another file name, or add --force to replace it")]
    Exists(PathBuf),
    /// The target cannot be used as given.
    #[error("{path}: {message}")]
    Target { path: PathBuf, message: String },
    /// Writing the copy failed.
    #[error("cannot write {path}: {source}; check that the folder exists, is writable by the headend's user and has room")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The backup to restore is missing or unreadable.
    #[error("cannot read {path}: {source}; give the file `headend backup` wrote")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file to restore is not an Iodoform headend database.
    #[error(
        "{path} is not an Iodoform headend database ({why}); give a file `headend backup` wrote"
    )]
    NotOurs { path: PathBuf, why: String },
    /// The file to restore has a newer schema.
    #[error("{path} has schema version {found}, newer than this headend's {supported}; restore it with the headend version that wrote it, or upgrade this one")]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// A daemon holds the database.
    #[error("the headend is running on {0} (the database is locked): stop it first (systemctl stop iodoform-headend), then restore")]
    Running(PathBuf),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl BackupError {
    /// The exit status for this error, from the cli crate's table.
    pub fn exit_code(&self) -> u8 {
        use cli::exit;
        match self {
            BackupError::Exists(_) | BackupError::Target { .. } | BackupError::Write { .. } => {
                exit::CANT_CREATE
            }
            BackupError::Read { .. } => exit::NO_INPUT,
            BackupError::NotOurs { .. } | BackupError::TooNew { .. } => exit::DATA,
            BackupError::Running(_) | BackupError::Store(StoreError::Locked) => exit::TEMP_FAIL,
            BackupError::Store(_) => exit::SOFTWARE,
        }
    }
}

/// A backup taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub path: PathBuf,
    pub bytes: u64,
    pub taken_ms: u64,
}

/// A backup restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub database: PathBuf,
    /// When the backup was taken (its mark; the file's time for a copy
    /// made otherwise).
    pub taken_ms: u64,
    /// Its schema version before it was upgraded.
    pub schema_version: u32,
    /// Where the replaced database went, if there was one.
    pub replaced: Option<PathBuf>,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// A new empty 0600 file in `dir`, named after `name`.
fn temp_file(dir: &Path, name: &str, now_ms: u64) -> Result<PathBuf, BackupError> {
    for i in 0..100u32 {
        let p = dir.join(format!(".{name}.tmp-{}-{now_ms}-{i}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
        {
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(write_err(&p)(e)),
        }
    }
    Err(BackupError::Target {
        path: dir.to_path_buf(),
        message: "cannot make a temporary file in this folder; remove its stale .*.tmp-* files"
            .into(),
    })
}

/// Syncs a file or a folder to disk.
fn sync(path: &Path) -> Result<(), BackupError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(write_err(path))
}

/// Removes a file, if it is there.
fn remove_if_there(path: &Path) -> Result<(), BackupError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(write_err(path)(e)),
        _ => Ok(()),
    }
}

/// The folder and file name of `target`, which must be absolute.
fn split(target: &Path) -> Result<(PathBuf, String), BackupError> {
    let bad = |message: &str| BackupError::Target {
        path: target.to_path_buf(),
        message: message.into(),
    };
    if !target.is_absolute() {
        return Err(bad("give an absolute path (the daemon writes the file)"));
    }
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("give a file name in UTF-8, not a folder"))?
        .to_string();
    let dir = target.parent().unwrap_or(Path::new("/")).to_path_buf();
    if !dir.is_dir() {
        return Err(bad(&format!(
            "the folder {} does not exist; make it first",
            dir.display()
        )));
    }
    if target.is_dir() {
        return Err(bad("is a folder; give a file name inside it"));
    }
    Ok((dir, name))
}

/// Takes a consistent copy of the database open on `conn` into `target`
/// (an absolute path), mode 0600, marked as a backup taken at `now_ms`.
/// An existing `target` is refused unless `force`.
pub fn backup(
    conn: &Connection,
    target: &Path,
    force: bool,
    now_ms: u64,
) -> Result<Taken, BackupError> {
    let (dir, name) = split(target)?;
    if !force && target.symlink_metadata().is_ok() {
        return Err(BackupError::Exists(target.to_path_buf()));
    }
    let tmp = temp_file(&dir, &name, now_ms)?;
    let made = (|| {
        store::backup::vacuum_into(conn, &tmp)?;
        {
            let copy = Connection::open_with_flags(&tmp, OpenFlags::SQLITE_OPEN_READ_WRITE)
                .map_err(StoreError::from)?;
            let _: String = copy
                .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
                .map_err(StoreError::from)?;
            store::backup::set_mark(
                &copy,
                BackupMark {
                    taken_ms: now_ms,
                    restored_ms: None,
                },
            )?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(write_err(&tmp))?;
        sync(&tmp)?;
        if force {
            std::fs::rename(&tmp, target).map_err(write_err(target))?;
        } else {
            // A link never replaces a file: a backup made meanwhile under
            // the same name is refused, not overwritten.
            match std::fs::hard_link(&tmp, target) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(BackupError::Exists(target.to_path_buf()))
                }
                Err(e) => return Err(write_err(target)(e)),
            }
            remove_if_there(&tmp)?;
        }
        sync(&dir)?;
        let bytes = std::fs::metadata(target).map_err(write_err(target))?.len();
        Ok(Taken {
            path: target.to_path_buf(),
            bytes,
            taken_ms: now_ms,
        })
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(tmp.with_extension("journal"));
    }
    made
}

/// Takes a backup with no daemon running: opens the database itself
/// (which fails with [`StoreError::Locked`] if a daemon holds it) and
/// calls [`backup`].
pub fn backup_database(
    db: &Path,
    target: &Path,
    force: bool,
    now_ms: u64,
) -> Result<Taken, BackupError> {
    let conn = store::open(db, false)?;
    backup(&conn, target, force, now_ms)
}

/// Checks that `path` is an Iodoform headend database this build reads;
/// returns its schema version.
fn check_ours(path: &Path, shown: &Path) -> Result<u32, BackupError> {
    let not_ours = |why: String| BackupError::NotOurs {
        path: shown.to_path_buf(),
        why,
    };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| not_ours(e.to_string()))?;
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| not_ours(e.to_string()))?;
    let supported = store::schema_version();
    if version == 0 {
        return Err(not_ours("it has no schema version".into()));
    }
    if version > supported {
        return Err(BackupError::TooNew {
            path: shown.to_path_buf(),
            found: version,
            supported,
        });
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| not_ours(e.to_string()))?;
    if check != "ok" {
        return Err(not_ours(format!("damaged: {check}")));
    }
    let operators: i64 = conn
        .query_row("SELECT COUNT(*) FROM operator", [], |r| r.get(0))
        .map_err(|e| not_ours(e.to_string()))?;
    if operators != 1 {
        return Err(not_ours(format!("{operators} operator rows, not 1")));
    }
    Ok(version)
}

/// Puts the backup `from` in place of the database `db`, with no daemon
/// running (see the module's doc). `now_ms` is recorded as the time of
/// the restore.
pub fn restore(db: &Path, from: &Path, now_ms: u64) -> Result<Restored, BackupError> {
    let read_err = |source| BackupError::Read {
        path: from.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(from).map_err(read_err)?;
    if !meta.is_file() {
        return Err(BackupError::NotOurs {
            path: from.to_path_buf(),
            why: "not a file".into(),
        });
    }
    let wal = PathBuf::from(format!("{}-wal", from.display()));
    if wal.exists() {
        return Err(BackupError::NotOurs {
            path: from.to_path_buf(),
            why: format!(
                "{} is next to it, so it is a database in use, not a closed backup; take one with `headend backup`",
                wal.display()
            ),
        });
    }
    let db = std::path::absolute(db).unwrap_or_else(|_| db.to_path_buf());
    let (dir, name) = split(&db)?;
    // The daemon's lock on the database tells whether it runs. Opening it
    // also checkpoints and closes its write-ahead log.
    let had_db = db.exists();
    if had_db {
        match store::open(&db, false) {
            Ok(conn) => drop(conn),
            Err(StoreError::Locked) => return Err(BackupError::Running(db)),
            // A database this build cannot read is replaced all the same.
            Err(_) => {}
        }
    }
    let tmp = temp_file(&dir, &name, now_ms)?;
    let done = (|| {
        {
            let mut src = File::open(from).map_err(read_err)?;
            let mut out = OpenOptions::new()
                .write(true)
                .open(&tmp)
                .map_err(write_err(&tmp))?;
            std::io::copy(&mut src, &mut out).map_err(write_err(&tmp))?;
            out.flush().map_err(write_err(&tmp))?;
        }
        let version = check_ours(&tmp, from)?;
        let taken_ms = {
            let conn = store::open(&tmp, false)?;
            let taken_ms = match store::backup::mark(&conn)? {
                Some(m) => m.taken_ms,
                // A copy made otherwise: the file's time.
                None => meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64),
            };
            store::backup::set_mark(
                &conn,
                BackupMark {
                    taken_ms,
                    restored_ms: Some(now_ms),
                },
            )?;
            let _: String = conn
                .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
                .map_err(StoreError::from)?;
            taken_ms
        };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(write_err(&tmp))?;
        sync(&tmp)?;
        let replaced = if had_db {
            let aside = dir.join(format!("{name}.replaced-{}", now_ms / 1000));
            std::fs::rename(&db, &aside).map_err(write_err(&aside))?;
            Some(aside)
        } else {
            None
        };
        for stale in ["-wal", "-shm", "-journal"] {
            remove_if_there(&PathBuf::from(format!("{}{stale}", db.display())))?;
        }
        std::fs::rename(&tmp, &db).map_err(write_err(&db))?;
        sync(&dir)?;
        Ok(Restored {
            database: db.clone(),
            taken_ms,
            schema_version: version,
            replaced,
        })
    })();
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
        for stale in ["-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{stale}", tmp.display()));
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_with_runs(path: &Path) -> Connection {
        let conn = store::open(path, true).unwrap();
        conn.execute_batch(
            "INSERT INTO operator VALUES (1, 7, x'00', x'00', x'00', x'00', 0);
             INSERT INTO runs (run, started_ms) VALUES (1, 5);",
        )
        .unwrap();
        conn
    }

    #[test]
    fn a_backup_is_a_marked_private_copy_that_restores_in_place() {
        let home = tempfile::tempdir().unwrap();
        let db = home.path().join("h.db");
        let conn = db_with_runs(&db);
        let target = home.path().join("b.db");

        let t = backup(&conn, &target, false, 1_000).unwrap();
        assert!(t.bytes > 0);
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Refused over a file unless forced; a relative path or a missing
        // folder is refused; nothing is left behind.
        assert!(matches!(
            backup(&conn, &target, false, 2_000),
            Err(BackupError::Exists(_))
        ));
        backup(&conn, &target, true, 3_000).unwrap();
        assert!(matches!(
            backup(&conn, Path::new("b.db"), false, 0),
            Err(BackupError::Target { .. })
        ));
        assert!(matches!(
            backup(&conn, &home.path().join("no/b.db"), false, 0),
            Err(BackupError::Target { .. })
        ));
        let names: Vec<_> = std::fs::read_dir(home.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        {
            let copy = Connection::open(&target).unwrap();
            let m = store::backup::mark(&copy).unwrap().unwrap();
            assert_eq!(m.taken_ms, 3_000);
            assert_eq!(m.restored_ms, None);
            let runs: i64 = copy
                .query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))
                .unwrap();
            assert_eq!(runs, 1);
        }

        // Restore is refused while the database is held.
        conn.execute("INSERT INTO runs (run, started_ms) VALUES (2, 6)", [])
            .unwrap();
        assert!(matches!(
            restore(&db, &target, 9_000),
            Err(BackupError::Running(_))
        ));
        drop(conn);
        let r = restore(&db, &target, 9_000).unwrap();
        assert_eq!(r.taken_ms, 3_000);
        assert!(r.replaced.as_ref().unwrap().exists());
        let mode = std::fs::metadata(&db).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let conn = store::open(&db, false).unwrap();
        let m = store::backup::mark(&conn).unwrap().unwrap();
        assert_eq!(m.restored_ms, Some(9_000));
        assert_eq!(
            store::runs::last_run(&conn).unwrap(),
            1,
            "the backup's runs"
        );
        drop(conn);

        // Not a database, or not ours: refused, and the database stays.
        let junk = home.path().join("junk.db");
        std::fs::write(&junk, b"not a database at all, just some bytes....").unwrap();
        assert!(matches!(
            restore(&db, &junk, 10_000),
            Err(BackupError::NotOurs { .. })
        ));
        let other = home.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); PRAGMA user_version = 1;")
            .unwrap();
        let e = restore(&db, &other, 10_000).unwrap_err();
        assert!(matches!(e, BackupError::NotOurs { .. }), "{e}");
        assert_eq!(e.exit_code(), cli::exit::DATA);
        Connection::open(&other)
            .unwrap()
            .execute_batch("PRAGMA user_version = 999;")
            .unwrap();
        assert!(matches!(
            restore(&db, &other, 10_000),
            Err(BackupError::TooNew { found: 999, .. })
        ));
        assert!(matches!(
            restore(&db, &home.path().join("missing.db"), 10_000),
            Err(BackupError::Read { .. })
        ));
        assert!(store::open(&db, false).is_ok());
    }
}
