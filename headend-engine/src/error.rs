//! The engine's typed errors. None of them carries key material, so any
//! of them may be logged.

use proto::crypto::CryptoError;
use thiserror::Error;

/// Why the key engine refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("unknown card {0}")]
    UnknownCard(u32),
    #[error("card {0} is already registered")]
    CardExists(u32),
    /// 0 and 0xFFFFFFFF (the EMM-G address) are not card ids.
    #[error("{0:#010x} is not a valid card id")]
    InvalidCardId(u32),
    #[error("card {card}: public key rejected: {source}")]
    CardKey {
        card: u32,
        #[source]
        source: CryptoError,
    },
    /// The card was prepared by an engine with another operator key.
    #[error("card {0} was prepared for another operator key")]
    ForeignPreparedCard(u32),
    #[error("unknown product {0}")]
    UnknownProduct(u32),
    #[error("product {0} already exists")]
    ProductExists(u32),
    /// Only the current and the previous generation of `K_P` are kept.
    #[error("product {product} has no key of generation {generation}")]
    UnknownGeneration { product: u32, generation: u32 },
    #[error("product {0} has used up its key generations")]
    GenerationExhausted(u32),
    #[error("generation {generation} of product {product} is not above its newest, {newest}")]
    GenerationNotNewer {
        product: u32,
        generation: u32,
        newest: u32,
    },
    #[error("entitlement starts at {start} but ends at {end}")]
    InvalidDates { start: u64, end: u64 },
    /// A card stores a bounded number of products (see
    /// [`crate::MAX_ENTITLEMENTS_PER_CARD`]).
    #[error("card {0} holds the maximum number of entitlements")]
    TooManyEntitlements(u32),
    #[error("EMM sequence numbers exhausted")]
    SequenceExhausted,
    /// The command may not travel in this kind of EMM: an EMM-G is signed
    /// but not encrypted, so it never carries a key, and cards accept only
    /// BLOCK CARDS in it.
    #[error("command {command} is not allowed in an {kind}")]
    CommandNotAllowed {
        kind: &'static str,
        command: &'static str,
    },
    /// One BLOCK CARDS command holds at most 63 ids (its length is one
    /// byte); proto's encoder would silently drop the rest.
    #[error("BLOCK CARDS lists {0} cards, more than one command holds")]
    BlockListTooLong(usize),
    #[error("EMM body of {0} bytes is larger than the protocol allows")]
    EmmTooLarge(usize),
    /// Sealing an older epoch again could reuse an ECM nonce.
    #[error("ECM for product {product} service {service}: epoch {epoch} is before {last}, which was already sealed")]
    EcmEpochRegressed {
        product: u32,
        service: u16,
        epoch: u64,
        last: u64,
    },
    /// The same (key, nonce) with another plaintext would break
    /// ChaCha20-Poly1305; repetitions of an ECM must be identical.
    #[error("ECM for product {product} service {service} epoch {epoch} was already sealed with other content")]
    EcmResealed {
        product: u32,
        service: u16,
        epoch: u64,
    },
}

/// Why the control word schedule refused a request. `E` is its store's
/// error (none for the in-memory store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ScheduleError<E = std::convert::Infallible> {
    #[error("the crypto period must not be zero")]
    ZeroPeriod,
    /// Its control words are forgotten; a fresh one would contradict what
    /// is already on the air.
    #[error("service {service}: epoch {epoch} has passed")]
    EpochPassed { service: u16, epoch: u64 },
    #[error("epoch {0} has no successor")]
    EpochOverflow(u64),
    /// The store could not read or keep a control word.
    #[error(transparent)]
    Store(E),
}
