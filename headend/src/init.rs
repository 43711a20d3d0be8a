//! `headend init --dir DIR`: a new headend's files, and the readers for
//! its key files.
//!
//! | file | mode | what |
//! |---|---|---|
//! | `headend.toml` | 0644 | the config (no secrets) |
//! | `master.key` | 0600 | 32 random bytes, hex: seals every secret at rest |
//! | `admin.token` | 0600 | 32 random bytes, hex: the API's bearer token |
//! | `scrape.token` | 0600 | 32 random bytes, hex: a bearer token for `GET /metrics` only |
//! | `headend.db` | 0600 | SQLite: the operator keys (sealed) and all state |
//! | `operator.json` | 0644 | the operator's public keys, for provisioning |
//!
//! It refuses to touch a folder that already holds any of them: keys are
//! never overwritten.

use crate::atrest::MasterKey;
use crate::config::Config;
use crate::store::init_database;
use headend_engine::operator::OperatorKeys;
use proto::secret::Key32;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, Zeroizing};

pub const CONFIG_FILE: &str = "headend.toml";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already exists; refusing to overwrite a headend's keys (use another --dir)")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new file with `mode`, failing if it exists, and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InitError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                InitError::Exists(path.to_path_buf())
            } else {
                InitError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(())
}

/// Writes a new bearer token file (32 random bytes, hex, mode 0600),
/// failing if it exists.
fn write_new_token(path: &Path) -> Result<(), InitError> {
    let mut token = [0u8; 32];
    proto::secret::fill_random(&mut token);
    let mut token_hex = Zeroizing::new(hex::encode(token));
    token.zeroize();
    token_hex.push('\n');
    write_new(path, token_hex.as_bytes(), 0o600)
}

/// Reads the scrape token file, making it first if it does not exist (a
/// headend made before there was one). Returns the token and whether it
/// was made.
pub fn ensure_scrape_token(path: &Path) -> Result<(Zeroizing<String>, bool), KeyFileError> {
    let made = match write_new_token(path) {
        Ok(()) => true,
        Err(InitError::Exists(_)) => false,
        Err(InitError::Io { source, .. }) => {
            return Err(KeyFileError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(InitError::Other(m)) => {
            return Err(KeyFileError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(m),
            })
        }
    };
    Ok((read_token(path)?, made))
}

/// What `init` made.
#[derive(Debug)]
pub struct Initialized {
    pub config: PathBuf,
    pub operator_public: PathBuf,
    pub operator_id: u32,
}

/// Creates a headend in `dir` with `config` (whose paths should be
/// relative, as the defaults are).
pub fn init(dir: &Path, config: &Config, now_ms: u64) -> Result<Initialized, InitError> {
    config
        .validate()
        .map_err(|e| InitError::Other(e.to_string()))?;
    fs::create_dir_all(dir).map_err(io(dir))?;
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let paths = [
        dir.join(CONFIG_FILE),
        resolve(&config.master_key),
        resolve(&config.token),
        resolve(&config.database),
        resolve(&config.operator_public),
        resolve(&config.scrape_token),
    ];
    for p in &paths {
        if p.exists() {
            return Err(InitError::Exists(p.clone()));
        }
    }
    let [config_path, key_path, token_path, db_path, public_path, scrape_path] = paths;

    let master = Key32::random();
    let mut hexed = Zeroizing::new(hex::encode(master.expose()));
    hexed.push('\n');
    write_new(&key_path, hexed.as_bytes(), 0o600)?;

    write_new_token(&token_path)?;
    write_new_token(&scrape_path)?;

    let op = OperatorKeys::generate(config.operator_id);
    // SQLite creates the file; make it private before anything is in it.
    write_new(&db_path, b"", 0o600)?;
    init_database(&db_path, &MasterKey::new(&master), &op, now_ms)
        .map_err(|e| InitError::Other(format!("{}: {e}", db_path.display())))?;

    let public = serde_json::to_string_pretty(&op.public()).expect("public keys serialize") + "\n";
    write_new(&public_path, public.as_bytes(), 0o644)?;
    write_new(&config_path, config.to_commented_toml().as_bytes(), 0o644)?;
    Ok(Initialized {
        config: config_path,
        operator_public: public_path,
        operator_id: config.operator_id,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is readable or writable by group or others (mode {1:o}); run: chmod 600 {0}")]
    Mode(PathBuf, u32),
    #[error("{0} does not hold 64 hex digits")]
    Format(PathBuf),
}

fn read_private(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    let err = |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Mode(path.to_path_buf(), mode));
    }
    Ok(Zeroizing::new(fs::read_to_string(path).map_err(err)?))
}

/// Reads the master key file (must be mode 0600 or stricter).
pub fn read_master_key(path: &Path) -> Result<Key32, KeyFileError> {
    let text = read_private(path)?;
    let mut k = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut k)
        .map_err(|_| KeyFileError::Format(path.to_path_buf()))?;
    let key = Key32::from_bytes(k);
    k.zeroize();
    Ok(key)
}

/// Reads the admin token file (must be mode 0600 or stricter).
pub fn read_token(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    let text = read_private(path)?;
    let t = Zeroizing::new(text.trim().to_string());
    if t.len() < 16 {
        return Err(KeyFileError::Format(path.to_path_buf()));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_makes_private_files_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("h");
        let made = init(&d, &Config::default(), 0).unwrap();
        for (f, mode) in [
            ("master.key", 0o600),
            ("admin.token", 0o600),
            ("scrape.token", 0o600),
            ("headend.db", 0o600),
            ("operator.json", 0o644),
            ("headend.toml", 0o644),
        ] {
            let m = fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, mode, "{f}");
        }
        let loaded = Config::load(&made.config).unwrap();
        read_master_key(&loaded.master_key()).unwrap();
        assert_eq!(read_token(&loaded.token()).unwrap().len(), 64);
        let (scrape, fresh) = ensure_scrape_token(&loaded.scrape_token()).unwrap();
        assert!(!fresh);
        assert_eq!(scrape.len(), 64);
        assert_ne!(*scrape, *read_token(&loaded.token()).unwrap());
        // An older headend without one gets it at the next start.
        fs::remove_file(d.join("scrape.token")).unwrap();
        let (again, fresh) = ensure_scrape_token(&loaded.scrape_token()).unwrap();
        assert!(fresh);
        assert_ne!(*again, *scrape);
        let m = fs::metadata(d.join("scrape.token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, 0o600);
        let public: headend_engine::OperatorPublic =
            serde_json::from_str(&fs::read_to_string(&made.operator_public).unwrap()).unwrap();
        assert_eq!(public.operator_id, 1);
        let key_before = fs::read(d.join("master.key")).unwrap();
        assert!(matches!(
            init(&d, &Config::default(), 0),
            Err(InitError::Exists(_))
        ));
        assert_eq!(fs::read(d.join("master.key")).unwrap(), key_before);
        fs::set_permissions(d.join("master.key"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_master_key(&d.join("master.key")),
            Err(KeyFileError::Mode(..))
        ));
    }
}
