//! Secret byte strings: zeroized on drop, redacted in `Debug`, compared in
//! constant time. Every key in the hierarchy is its own newtype, so that a
//! KEK can never be passed where an ECM key is expected.
//!
//! Nothing in this module may print, log or serialize a secret in clear,
//! except the explicit `expose` accessors that the crypto code needs.

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

macro_rules! secret_type {
    ($(#[$m:meta])* $name:ident, $len:expr) => {
        $(#[$m])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Wraps raw key bytes. The caller should zeroize its own copy.
            pub fn from_bytes(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }

            /// Fresh key material from the operating system's CSPRNG.
            pub fn random() -> Self {
                let mut b = [0u8; $len];
                $crate::secret::fill_random(&mut b);
                $name(b)
            }

            /// The raw bytes, for the crypto code that needs them.
            pub fn expose(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl ::core::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(concat!(stringify!($name), "(REDACTED)"))
            }
        }

        impl ConstantTimeEq for $name {
            fn ct_eq(&self, other: &Self) -> subtle::Choice {
                self.0.ct_eq(&other.0)
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.ct_eq(other).into()
            }
        }
        impl Eq for $name {}

        // Serde support exists only so that the card's EEPROM image and the
        // headend's sealed-at-rest records can hold keys. It is never used
        // for logging.
        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::secret::deserialize_array::<D, $len>(d).map($name)
            }
        }
    };
}

/// Deserializes a fixed-size byte array written by `serialize_bytes`.
#[doc(hidden)]
pub fn deserialize_array<'de, D: serde::Deserializer<'de>, const N: usize>(
    d: D,
) -> Result<[u8; N], D::Error> {
    struct V<const N: usize>;
    impl<'de, const N: usize> serde::de::Visitor<'de> for V<N> {
        type Value = [u8; N];
        fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "{N} bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<[u8; N], E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
            let mut out = [0u8; N];
            for (i, b) in out.iter_mut().enumerate() {
                *b = seq
                    .next_element()?
                    .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
            }
            Ok(out)
        }
    }
    d.deserialize_bytes(V::<N>)
}

#[doc(hidden)]
pub fn fill_random(buf: &mut [u8]) {
    use rand_core::RngCore;
    rand_core::OsRng.fill_bytes(buf);
}

secret_type!(
    /// A 32-byte key with no more specific role (test vectors, seeds).
    Key32, 32
);
secret_type!(
    /// `KEK_card`: the pairwise key between the headend and one card.
    Kek, 32
);
secret_type!(
    /// `K_P`: a product's period key, renewed monthly and on loss.
    ProductKey, 32
);
secret_type!(
    /// `K_{P,e}`: a product's key for one epoch, derived from `K_P`.
    EpochKey, 32
);
secret_type!(
    /// The AEAD key that seals the ECMs of one product and epoch.
    EcmKey, 32
);
secret_type!(
    /// The receiver-card session key that seals returned control words.
    SessionKey, 32
);
secret_type!(
    /// A DVB-CISSA control word (AES-128 key).
    ControlWord, 16
);
secret_type!(
    /// A 32-byte seed for an X25519 or Ed25519 private key.
    Seed, 32
);
secret_type!(
    /// The headend's Subset Difference forest master secret: every node
    /// label of every tree is derived from it.
    SdMaster, 32
);
secret_type!(
    /// A Subset Difference label: `LABEL(i)` of a node, or `LABEL(i, j)`
    /// derived from it, or a tree's "nobody excluded" key as a card holds it.
    SdLabel, 32
);
secret_type!(
    /// The key of one Subset Difference subset, `G_M(LABEL(i, j))`.
    SubsetKey, 32
);

/// The two control words of an ECM, as it carries them and as the card
/// returns them: each in the slot of its epoch's parity (the slot that
/// transport_scrambling_control `10` or `11` selects). The ECM of epoch
/// `n` carries `CW_n` and `CW_{n+1}`, so one slot scrambles the current
/// crypto period and the other holds the next one's key, ahead of the
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CwPair {
    pub even: ControlWord,
    pub odd: ControlWord,
}

impl CwPair {
    /// The pair of the ECM of `epoch`: `this` (`CW_epoch`) and `next`
    /// (`CW_{epoch+1}`), each in the slot of its own epoch's parity.
    pub fn of_ecm(epoch: u64, this: ControlWord, next: ControlWord) -> CwPair {
        if epoch % 2 == 0 {
            CwPair {
                even: this,
                odd: next,
            }
        } else {
            CwPair {
                even: next,
                odd: this,
            }
        }
    }

    /// The control word of `epoch`: the even slot for an even epoch.
    pub fn for_epoch(&self, epoch: u64) -> &ControlWord {
        if epoch % 2 == 0 {
            &self.even
        } else {
            &self.odd
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_eq_is_by_value() {
        let k = Kek::from_bytes([7; 32]);
        assert_eq!(format!("{k:?}"), "Kek(REDACTED)");
        assert_eq!(k, Kek::from_bytes([7; 32]));
        assert_ne!(k, Kek::from_bytes([8; 32]));
        assert_ne!(Kek::random(), Kek::random());
    }

    #[test]
    fn an_ecm_pair_puts_each_word_in_its_epochs_slot() {
        let cw = |b| ControlWord::from_bytes([b; 16]);
        for epoch in [10u64, 11] {
            let p = CwPair::of_ecm(epoch, cw(1), cw(2));
            assert_eq!(p.for_epoch(epoch), &cw(1));
            assert_eq!(p.for_epoch(epoch + 1), &cw(2));
        }
        assert_eq!(CwPair::of_ecm(10, cw(1), cw(2)).even, cw(1));
        assert_eq!(CwPair::of_ecm(11, cw(1), cw(2)).even, cw(2));
    }
}
