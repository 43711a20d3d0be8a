//! The key hierarchy and the AEAD/signature primitives, in one place.
//!
//! * `KEK_card = HKDF-SHA256(X25519(op, card), info = v ‖ card id ‖ op pub ‖ card pub)`
//! * `K_{P,e}  = HKDF-SHA256(K_P, info = product ‖ generation ‖ epoch)`
//! * `K_ecm    = HKDF-SHA256(K_{P,e}, info = "ecm")`
//! * session   = HKDF-SHA256(ee ‖ es ‖ se, info = transcript)
//!
//! The headend seals with *ring* (the fastest ChaCha20-Poly1305 we have);
//! the card opens with the RustCrypto `chacha20poly1305` crate, which suits
//! card-class code. Both are RFC 8439, and a known-answer test proves they
//! agree byte for byte. This module never logs and never does I/O.

use crate::secret::{EcmKey, EpochKey, Kek, ProductKey, Seed, SessionKey};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};

/// Version byte mixed into every derivation, so that a future hierarchy
/// never collides with this one.
pub const KDF_VERSION: u8 = 1;
/// Length of the Poly1305 tag appended to every sealed body.
pub const TAG_LEN: usize = 16;
/// Length of an Ed25519 signature.
pub const SIG_LEN: usize = 64;
/// A 96-bit AEAD nonce.
pub type NonceBytes = [u8; 12];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("authentication failed")]
    Auth,
    #[error("bad signature")]
    Signature,
    #[error("degenerate (low-order) public key")]
    WeakKey,
    #[error("invalid key material")]
    BadKey,
}

/// A key that may seal and open ChaCha20-Poly1305 bodies.
pub trait AeadKey {
    fn aead_bytes(&self) -> &[u8; 32];
}
impl AeadKey for Kek {
    fn aead_bytes(&self) -> &[u8; 32] {
        self.expose()
    }
}
impl AeadKey for EcmKey {
    fn aead_bytes(&self) -> &[u8; 32] {
        self.expose()
    }
}
impl AeadKey for SessionKey {
    fn aead_bytes(&self) -> &[u8; 32] {
        self.expose()
    }
}

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 extract-then-expand to 32 bytes.
pub fn hkdf32(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so neither call
    // can fail.
    prk.expand(info, Len(32))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF output length is valid");
    out
}

/// A sealer bound to one key, built once and reused on the hot path.
/// Uses ring.
pub struct Sealer(LessSafeKey);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(REDACTED)")
    }
}

impl Sealer {
    pub fn new(key: &impl AeadKey) -> Self {
        let k = UnboundKey::new(&CHACHA20_POLY1305, key.aead_bytes())
            .expect("32 bytes is the ChaCha20-Poly1305 key length");
        Sealer(LessSafeKey::new(k))
    }

    /// Seals `buf[start..]` in place and appends the tag.
    pub fn seal_tail(&self, nonce: NonceBytes, aad: &[u8], buf: &mut Vec<u8>, start: usize) {
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf[start..],
            )
            .expect("ChaCha20-Poly1305 seals any length below 256 GiB");
        buf.extend_from_slice(tag.as_ref());
    }
}

/// Opens `ct ‖ tag` in place with the RustCrypto implementation (card side)
/// and returns the plaintext slice.
pub fn open_in_place<'a>(
    key: &impl AeadKey,
    nonce: NonceBytes,
    aad: &[u8],
    ct_and_tag: &'a mut [u8],
) -> Result<&'a mut [u8], CryptoError> {
    if ct_and_tag.len() < TAG_LEN {
        return Err(CryptoError::Auth);
    }
    let split = ct_and_tag.len() - TAG_LEN;
    let (ct, tag) = ct_and_tag.split_at_mut(split);
    let cipher = ChaCha20Poly1305::new(key.aead_bytes().into());
    cipher
        .decrypt_in_place_detached(&nonce.into(), aad, ct, (&*tag).into())
        .map_err(|_| CryptoError::Auth)?;
    Ok(ct)
}

/// Seals with the RustCrypto implementation (card side), appending the tag.
pub fn seal_rustcrypto(
    key: &impl AeadKey,
    nonce: NonceBytes,
    aad: &[u8],
    buf: &mut Vec<u8>,
    start: usize,
) {
    let cipher = ChaCha20Poly1305::new(key.aead_bytes().into());
    let tag = cipher
        .encrypt_in_place_detached(&nonce.into(), aad, &mut buf[start..])
        .expect("ChaCha20-Poly1305 seals any length below 256 GiB");
    buf.extend_from_slice(&tag);
}

/// An X25519 private key (operator, card or receiver), with its public
/// key computed once. Zeroized on drop.
#[derive(Clone)]
pub struct X25519Secret(StaticSecret, PublicKey);

impl std::fmt::Debug for X25519Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("X25519Secret(REDACTED)")
    }
}

impl X25519Secret {
    pub fn random() -> Self {
        Self::new(StaticSecret::random_from_rng(rand_core::OsRng))
    }
    fn new(s: StaticSecret) -> Self {
        let p = PublicKey::from(&s);
        X25519Secret(s, p)
    }
    pub fn from_seed(seed: &Seed) -> Self {
        Self::new(StaticSecret::from(*seed.expose()))
    }
    /// The private scalar as a seed, for sealed storage only.
    pub fn to_seed(&self) -> Seed {
        Seed::from_bytes(self.0.to_bytes())
    }
    pub fn public(&self) -> [u8; 32] {
        self.1.to_bytes()
    }
    /// The check every agreement with `peer` makes, on its own: refuses a
    /// public key of low order (the all-zero point and its few kin), with
    /// which an agreement gives a secret anyone knows. For keys that are
    /// stored before they are used, such as a receiver's pairing key.
    pub fn check_peer(&self, peer: &[u8; 32]) -> Result<(), CryptoError> {
        let mut ss = self.dh(peer)?;
        zeroize::Zeroize::zeroize(&mut ss);
        Ok(())
    }
    fn dh(&self, peer: &[u8; 32]) -> Result<[u8; 32], CryptoError> {
        let ss = self.0.diffie_hellman(&PublicKey::from(*peer));
        if !ss.was_contributory() {
            return Err(CryptoError::WeakKey);
        }
        Ok(*ss.as_bytes())
    }
}

fn kek_info(card_id: u32, op_pub: &[u8; 32], card_pub: &[u8; 32]) -> [u8; 69] {
    let mut info = [0u8; 69];
    info[0] = KDF_VERSION;
    info[1..5].copy_from_slice(&card_id.to_be_bytes());
    info[5..37].copy_from_slice(op_pub);
    info[37..69].copy_from_slice(card_pub);
    info
}

impl Kek {
    /// Headend side: the operator's X25519 key and the card's public key.
    pub fn derive_headend(
        op: &X25519Secret,
        card_id: u32,
        card_pub: &[u8; 32],
    ) -> Result<Kek, CryptoError> {
        let mut ss = op.dh(card_pub)?;
        let k = hkdf32(
            b"iodoform/v1/kek",
            &ss,
            &[&kek_info(card_id, &op.public(), card_pub)],
        );
        zeroize::Zeroize::zeroize(&mut ss);
        Ok(Kek::from_bytes(k))
    }

    /// Card side: the card's X25519 key and the operator's public key.
    pub fn derive_card(
        card: &X25519Secret,
        card_id: u32,
        op_pub: &[u8; 32],
    ) -> Result<Kek, CryptoError> {
        let mut ss = card.dh(op_pub)?;
        let k = hkdf32(
            b"iodoform/v1/kek",
            &ss,
            &[&kek_info(card_id, op_pub, &card.public())],
        );
        zeroize::Zeroize::zeroize(&mut ss);
        Ok(Kek::from_bytes(k))
    }
}

impl ProductKey {
    /// `K_{P,e}`. HKDF is one-way, so a card that holds one generation of
    /// `K_P` learns nothing about another generation's epoch keys.
    pub fn epoch_key(&self, product: u32, generation: u32, epoch: u64) -> EpochKey {
        let mut info = [0u8; 17];
        info[0] = KDF_VERSION;
        info[1..5].copy_from_slice(&product.to_be_bytes());
        info[5..9].copy_from_slice(&generation.to_be_bytes());
        info[9..17].copy_from_slice(&epoch.to_be_bytes());
        EpochKey::from_bytes(hkdf32(b"iodoform/v1/epoch", self.expose(), &[&info]))
    }
}

impl EpochKey {
    /// The AEAD key for ECMs of this product and epoch.
    pub fn ecm_key(&self) -> EcmKey {
        EcmKey::from_bytes(hkdf32(
            b"iodoform/v1/ecm",
            self.expose(),
            &[&[KDF_VERSION], b"ecm"],
        ))
    }
}

/// The operator's Ed25519 signing key (ring).
pub struct SigningKey {
    pair: ring::signature::Ed25519KeyPair,
    seed: Seed,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(REDACTED)")
    }
}

impl SigningKey {
    pub fn from_seed(seed: Seed) -> Result<Self, CryptoError> {
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed.expose())
            .map_err(|_| CryptoError::BadKey)?;
        Ok(SigningKey { pair, seed })
    }
    pub fn random() -> Self {
        Self::from_seed(Seed::random()).expect("any 32-byte seed is an Ed25519 key")
    }
    pub fn seed(&self) -> &Seed {
        &self.seed
    }
    pub fn public(&self) -> [u8; 32] {
        use ring::signature::KeyPair;
        let mut p = [0u8; 32];
        p.copy_from_slice(self.pair.public_key().as_ref());
        p
    }
    pub fn sign(&self, msg: &[u8]) -> [u8; SIG_LEN] {
        let mut s = [0u8; SIG_LEN];
        s.copy_from_slice(self.pair.sign(msg).as_ref());
        s
    }
}

/// Verifies an Ed25519 signature by the operator.
pub fn verify_signature(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(msg, sig)
        .map_err(|_| CryptoError::Signature)
}

/// The receiver's half of a session: what it sends in ESTABLISH SESSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInit {
    pub receiver_static: [u8; 32],
    pub receiver_ephemeral: [u8; 32],
}

/// A receiver's session in progress. `finish` consumes it, so an
/// ephemeral key is never used for two sessions.
#[derive(Debug)]
pub struct PendingSession {
    ephemeral: X25519Secret,
    init: SessionInit,
}

fn session_key(
    ee: &[u8; 32],
    es: &[u8; 32],
    se: &[u8; 32],
    card_id: u32,
    card_static: &[u8; 32],
    init: &SessionInit,
    card_ephemeral: &[u8; 32],
) -> SessionKey {
    let mut ikm = [0u8; 96];
    ikm[..32].copy_from_slice(ee);
    ikm[32..64].copy_from_slice(es);
    ikm[64..].copy_from_slice(se);
    let k = hkdf32(
        b"iodoform/v1/session",
        &ikm,
        &[
            &[KDF_VERSION],
            &card_id.to_be_bytes(),
            card_static,
            &init.receiver_static,
            &init.receiver_ephemeral,
            card_ephemeral,
        ],
    );
    zeroize::Zeroize::zeroize(&mut ikm);
    SessionKey::from_bytes(k)
}

impl PendingSession {
    /// Starts a session for a receiver whose long-term key is `identity`.
    pub fn start(identity: &X25519Secret) -> (SessionInit, PendingSession) {
        let ephemeral = X25519Secret::random();
        let init = SessionInit {
            receiver_static: identity.public(),
            receiver_ephemeral: ephemeral.public(),
        };
        (init, PendingSession { ephemeral, init })
    }

    /// Completes the agreement with the card's answer. `card_static` is the
    /// card's public key as read from GET INFO; mixing it in means only the
    /// real card can compute the key.
    pub fn finish(
        self,
        identity: &X25519Secret,
        card_id: u32,
        card_static: &[u8; 32],
        card_ephemeral: &[u8; 32],
    ) -> Result<SessionKey, CryptoError> {
        let ee = self.ephemeral.dh(card_ephemeral)?;
        let es = identity.dh(card_ephemeral)?;
        let se = self.ephemeral.dh(card_static)?;
        Ok(session_key(
            &ee,
            &es,
            &se,
            card_id,
            card_static,
            &self.init,
            card_ephemeral,
        ))
    }
}

/// The card's half of the session agreement. Returns the card's ephemeral
/// public key (sent back to the receiver) and the session key.
pub fn respond_session(
    card: &X25519Secret,
    card_id: u32,
    init: &SessionInit,
) -> Result<([u8; 32], SessionKey), CryptoError> {
    let ephemeral = X25519Secret::random();
    let ee = ephemeral.dh(&init.receiver_ephemeral)?;
    let es = ephemeral.dh(&init.receiver_static)?;
    let se = card.dh(&init.receiver_ephemeral)?;
    let eph_pub = ephemeral.public();
    let key = session_key(&ee, &es, &se, card_id, &card.public(), init, &eph_pub);
    Ok((eph_pub, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_agrees_both_sides() {
        let op = X25519Secret::random();
        let card = X25519Secret::random();
        let a = Kek::derive_headend(&op, 42, &card.public()).unwrap();
        let b = Kek::derive_card(&card, 42, &op.public()).unwrap();
        assert_eq!(a, b);
        let c = Kek::derive_card(&card, 43, &op.public()).unwrap();
        assert_ne!(a, c);
        assert_eq!(
            Kek::derive_card(&card, 1, &[0u8; 32]),
            Err(CryptoError::WeakKey)
        );
        // The same check, on its own: the all-zero point and the order-2
        // point (u = 1) are refused, a real key is not.
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(op.check_peer(&[0u8; 32]), Err(CryptoError::WeakKey));
        assert_eq!(op.check_peer(&one), Err(CryptoError::WeakKey));
        assert_eq!(op.check_peer(&card.public()), Ok(()));
    }

    #[test]
    fn ring_seal_rustcrypto_open_agree() {
        let k = Kek::random();
        let mut buf = b"hello world".to_vec();
        Sealer::new(&k).seal_tail([1; 12], b"aad", &mut buf, 0);
        let mut other = b"hello world".to_vec();
        seal_rustcrypto(&k, [1; 12], b"aad", &mut other, 0);
        assert_eq!(buf, other);
        assert_eq!(
            open_in_place(&k, [1; 12], b"aad", &mut buf).unwrap(),
            b"hello world"
        );
        other[0] ^= 1;
        assert_eq!(
            open_in_place(&k, [1; 12], b"aad", &mut other),
            Err(CryptoError::Auth)
        );
    }

    #[test]
    fn session_agrees() {
        let card = X25519Secret::random();
        let rx = X25519Secret::random();
        let (init, pending) = PendingSession::start(&rx);
        let (eph, k_card) = respond_session(&card, 9, &init).unwrap();
        let k_rx = pending.finish(&rx, 9, &card.public(), &eph).unwrap();
        assert_eq!(k_card, k_rx);
        // A receiver that only knows the public static key gets another key.
        let impostor = X25519Secret::random();
        let (mut init2, pending2) = PendingSession::start(&impostor);
        init2.receiver_static = rx.public();
        let (eph2, k_card2) = respond_session(&card, 9, &init2).unwrap();
        let k_imp = pending2
            .finish(&impostor, 9, &card.public(), &eph2)
            .unwrap();
        assert_ne!(k_card2, k_imp);
    }

    #[test]
    fn signatures() {
        let s = SigningKey::random();
        let sig = s.sign(b"msg");
        verify_signature(&s.public(), b"msg", &sig).unwrap();
        assert_eq!(
            verify_signature(&s.public(), b"msh", &sig),
            Err(CryptoError::Signature)
        );
    }
}
