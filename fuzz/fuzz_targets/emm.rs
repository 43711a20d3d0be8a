//! EMMs as they arrive from the air: the header codec, EMM-U opening under a
//! fixed KEK, EMM-G verification under a fixed operator key, the payload and
//! command codecs, and a seal/open round trip of any payload that parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::codec::Codec;
use proto::crypto::SigningKey;
use proto::emm::{Emm, EmmCommand, EmmKind, EmmPayload, MAX_BODY_LEN};
use proto::secret::{Kek, Seed};
use std::sync::OnceLock;

struct Keys {
    kek: Kek,
    operator: SigningKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        kek: Kek::from_bytes([0x4B; 32]),
        operator: SigningKey::from_seed(Seed::from_bytes([0x4F; 32])).expect("valid seed"),
    })
}

fuzz_target!(|data: &[u8]| {
    let k = keys();

    // The air format. The codec is canonical: what parses re-encodes to
    // the same bytes.
    if let Ok(emm) = Emm::from_bytes(data) {
        assert_eq!(emm.to_bytes(), data, "EMM codec is not canonical");
        // Opening must never accept bytes that the headend would not have
        // produced for that content: an accepted EMM re-seals identically.
        match emm.kind {
            EmmKind::UNIQUE => {
                if let Ok(p) = emm.open_unique(&k.kek) {
                    assert_eq!(Emm::seal_unique(&k.kek, emm.address, emm.seq, &p), data);
                }
                assert!(emm.verify_global(&k.operator.public()).is_err());
            }
            _ => {
                if let Ok(p) = emm.verify_global(&k.operator.public()) {
                    assert_eq!(Emm::sign_global(&k.operator, emm.seq, &p), data);
                }
                assert!(emm.open_unique(&k.kek).is_err());
            }
        }
    }

    // A single command.
    if let Ok(c) = EmmCommand::from_bytes(data) {
        assert_eq!(c.to_bytes(), data, "EMM command codec is not canonical");
    }

    // The clear payload, and both protections of it.
    if let Ok(p) = EmmPayload::from_bytes(data) {
        assert_eq!(p.to_bytes(), data, "EMM payload codec is not canonical");
        if data.len() + 64 <= MAX_BODY_LEN {
            let sealed = Emm::seal_unique(&k.kek, 7, 1, &p);
            let emm = Emm::from_bytes(&sealed).expect("sealed EMM-U parses");
            assert_eq!(emm.open_unique(&k.kek).expect("EMM-U opens"), p);
            let signed = Emm::sign_global(&k.operator, 1, &p);
            let emm = Emm::from_bytes(&signed).expect("signed EMM-G parses");
            assert_eq!(
                emm.verify_global(&k.operator.public())
                    .expect("EMM-G verifies"),
                p
            );
        }
    }
});
