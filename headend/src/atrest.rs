//! Secrets sealed at rest under the master key.
//!
//! Every secret the headend stores (the operator's private keys, each
//! product's period keys, each card's KEK, the control words of the
//! current and next crypto periods) is sealed with ChaCha20-Poly1305
//! (ring) under the 32-byte master key, which lives in its own 0600 file
//! and never in the database.
//!
//! * The nonce is 96 random bits per record, drawn from the OS CSPRNG at
//!   every seal. The master key seals at most a few million records over
//!   its life, far below the 2^32 at which random 96-bit nonces start to
//!   risk a collision.
//! * The associated data names the row: `"iodoform/v1/at-rest" ‖ table ‖
//!   id ‖ generation`. A sealed blob copied into another row (another
//!   card's KEK column, another generation of a product key) fails to open.
//!
//! Stored form: `nonce[12] ‖ ciphertext ‖ tag[16]`. Nothing here logs.

use proto::secret::Key32;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use std::fmt;
use zeroize::Zeroize;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const AAD_PREFIX: &[u8] = b"iodoform/v1/at-rest";

/// Which row a sealed blob belongs to: its AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowId<'a> {
    pub table: &'a str,
    pub id: u64,
    pub generation: u64,
}

impl RowId<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut a = Vec::with_capacity(AAD_PREFIX.len() + 1 + self.table.len() + 16);
        a.extend_from_slice(AAD_PREFIX);
        a.push(self.table.len() as u8);
        a.extend_from_slice(self.table.as_bytes());
        a.extend_from_slice(&self.id.to_be_bytes());
        a.extend_from_slice(&self.generation.to_be_bytes());
        a
    }
}

/// A row id for `table`, `id` and `generation`.
pub fn row(table: &str, id: u64, generation: u64) -> RowId<'_> {
    RowId {
        table,
        id,
        generation,
    }
}

/// The sealed blob did not open: wrong master key, a damaged record, or a
/// blob moved from another row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealed record in {table} (id {id}, generation {generation}) did not open: wrong master key, damaged, or moved from another row")]
pub struct OpenError {
    pub table: String,
    pub id: u64,
    pub generation: u64,
}

/// The master key, ready to seal and open.
pub struct MasterKey {
    key: LessSafeKey,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(REDACTED)")
    }
}

impl MasterKey {
    pub fn new(key: &Key32) -> Self {
        let k = UnboundKey::new(&CHACHA20_POLY1305, key.expose())
            .expect("32 bytes is the ChaCha20-Poly1305 key length");
        MasterKey {
            key: LessSafeKey::new(k),
        }
    }

    /// Seals `plaintext` for the row `at`.
    pub fn seal(&self, at: RowId<'_>, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        proto::secret::fill_random(&mut nonce);
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(at.aad()),
                &mut out[NONCE_LEN..],
            )
            .expect("ChaCha20-Poly1305 seals any record size");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Opens a blob sealed for the row `at`, returning exactly `N` bytes.
    /// The caller wraps them in a secret type at once.
    pub fn open<const N: usize>(&self, at: RowId<'_>, blob: &[u8]) -> Result<[u8; N], OpenError> {
        let err = || OpenError {
            table: at.table.to_string(),
            id: at.id,
            generation: at.generation,
        };
        if blob.len() != NONCE_LEN + N + TAG_LEN {
            return Err(err());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&blob[..NONCE_LEN]);
        let mut buf = blob[NONCE_LEN..].to_vec();
        let result = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(at.aad()),
                &mut buf,
            )
            .map(|pt| {
                let mut a = [0u8; N];
                a.copy_from_slice(pt);
                a
            })
            .map_err(|_| err());
        buf.zeroize();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_row_binding() {
        let mk = MasterKey::new(&Key32::random());
        let blob = mk.seal(row("cards", 7, 0), &[9u8; 32]);
        assert_eq!(blob.len(), 12 + 32 + 16);
        assert_eq!(mk.open::<32>(row("cards", 7, 0), &blob).unwrap(), [9u8; 32]);
        // Another row, another generation, another table: refused.
        assert!(mk.open::<32>(row("cards", 8, 0), &blob).is_err());
        assert!(mk.open::<32>(row("cards", 7, 1), &blob).is_err());
        assert!(mk.open::<32>(row("product_keys", 7, 0), &blob).is_err());
        // Another master key: refused.
        let other = MasterKey::new(&Key32::random());
        assert!(other.open::<32>(row("cards", 7, 0), &blob).is_err());
        // A flipped bit or a wrong length: refused.
        let mut bad = blob.clone();
        bad[20] ^= 1;
        assert!(mk.open::<32>(row("cards", 7, 0), &bad).is_err());
        assert!(mk.open::<16>(row("cards", 7, 0), &blob).is_err());
        // Fresh nonce per seal.
        assert_ne!(mk.seal(row("cards", 7, 0), &[9u8; 32]), blob);
        assert_eq!(format!("{mk:?}"), "MasterKey(REDACTED)");
    }
}
