//! The receiver's long-term X25519 key: what the card seals control words
//! to in pairing mode, and what the operator names in `headend pair CARD KEY`.
//!
//! The key lives in a 32-byte file of mode 0600, created on first start
//! (by default `$XDG_STATE_HOME/iodoform/receiver.key`, else
//! `~/.local/state/iodoform/receiver.key`). Creation is atomic: the key is
//! written to a temporary file and hard-linked into place, so two receivers
//! starting at once agree on one key and a crash never leaves half a key.
//!
//! This module never logs or prints the private key; only
//! [`public_hex`] leaves it, and that is the public half.

use proto::crypto::X25519Secret;
use proto::secret::Seed;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;
use zeroize::Zeroize;

/// The length of the key file: the raw X25519 scalar.
pub const KEY_FILE_LEN: usize = 32;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("no place for the receiver key: set --identity, XDG_STATE_HOME or HOME")]
    NoDefaultPath,
    #[error("receiver key {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("receiver key {path} is {len} bytes, not a {KEY_FILE_LEN}-byte key")]
    WrongLength { path: PathBuf, len: u64 },
    #[error(
        "receiver key {path} is accessible to other users (mode {mode:04o}); run chmod 600 on it"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("receiver key {path} is not a regular file")]
    NotAFile { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the key lives when `--identity` is not given.
pub fn default_path() -> Result<PathBuf, IdentityError> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .ok_or(IdentityError::NoDefaultPath)?;
            PathBuf::from(home).join(".local").join("state")
        }
    };
    Ok(base.join("iodoform").join("receiver.key"))
}

/// The receiver's key, loaded or made on first start.
#[derive(Debug)]
pub struct Identity {
    pub secret: X25519Secret,
    pub path: PathBuf,
    /// Whether this call created the key file.
    pub created: bool,
}

impl Identity {
    /// The public key as lowercase hex, for `headend pair`.
    pub fn public_hex(&self) -> String {
        public_hex(&self.secret)
    }
}

/// The public half of a receiver key as lowercase hex.
pub fn public_hex(secret: &X25519Secret) -> String {
    hex::encode(secret.public())
}

/// Loads the key at `path`, creating it (and its directory, mode 0700)
/// if it does not exist yet.
pub fn load_or_create(path: &Path) -> Result<Identity, IdentityError> {
    match load(path) {
        Ok(secret) => {
            return Ok(Identity {
                secret,
                path: path.to_owned(),
                created: false,
            })
        }
        Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let created = create(path)?;
    Ok(Identity {
        secret: load(path)?,
        path: path.to_owned(),
        created,
    })
}

/// Loads an existing key file.
pub fn load(path: &Path) -> Result<X25519Secret, IdentityError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let meta = f.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(IdentityError::NotAFile {
            path: path.to_owned(),
        });
    }
    // Like ssh with its keys: a private key that others can read is
    // refused, not silently used.
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() != KEY_FILE_LEN as u64 {
        return Err(IdentityError::WrongLength {
            path: path.to_owned(),
            len: meta.len(),
        });
    }
    let mut buf = [0u8; KEY_FILE_LEN];
    let read = f.read_exact(&mut buf).map_err(io_err(path));
    let seed = Seed::from_bytes(buf);
    buf.zeroize();
    read?;
    Ok(X25519Secret::from_seed(&seed))
}

/// Writes a fresh key to `path` unless one appears there first. Returns
/// whether this call made it.
fn create(path: &Path) -> Result<bool, IdentityError> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_owned(),
        None => PathBuf::from("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err(&dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "receiver.key".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let secret = X25519Secret::random();
    let write = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let seed = secret.to_seed();
        f.write_all(seed.expose())?;
        f.sync_all()
    })();
    if let Err(e) = write {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    // A hard link fails if the name exists: whoever links first wins, and
    // everyone then loads the same key.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/iodoform/receiver.key");
        let a = load_or_create(&path).unwrap();
        assert!(a.created);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let dir_mode = fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let b = load_or_create(&path).unwrap();
        assert!(!b.created);
        assert_eq!(a.public_hex(), b.public_hex());
        assert_eq!(a.public_hex().len(), 64);
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        assert_eq!(format!("{:?}", a.secret), "X25519Secret(REDACTED)");
    }

    #[test]
    fn refuses_open_modes_and_wrong_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        load_or_create(&path).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let e = load(&path).unwrap_err();
        assert!(
            matches!(e, IdentityError::TooOpen { mode: 0o644, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"));
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        fs::write(&path, [1u8; 31]).unwrap();
        assert!(matches!(
            load(&path).unwrap_err(),
            IdentityError::WrongLength { len: 31, .. }
        ));
    }
}
