//! The data fields of the card interface: GET INFO, PERSONALIZE, LIST
//! ENTITLEMENTS and ESTABLISH SESSION bodies, and the sealed control-word
//! reply of PROCESS ECM (opened with a fixed session key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::card::{
    open_control_words, seal_control_words, CardInfo, EntitlementPage, EntitlementRecord,
    Personalization,
};
use proto::codec::{Codec, Reader};
use proto::crypto::{SessionInit, X25519Secret};
use proto::ecm::EcmHeader;
use proto::secret::{Kek, Seed, SessionKey};

const SESSION_KEY: [u8; 32] = [0x53; 32];
const HEADER: EcmHeader = EcmHeader {
    product: 7,
    generation: 3,
    epoch: 171_000_000,
    service: 0x1234,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = CardInfo::from_bytes(data) {
        // Not byte-canonical (the 32 bytes after a 00 paired flag are
        // ignored), but value-stable.
        assert_eq!(CardInfo::from_bytes(&info.to_bytes()).as_ref(), Ok(&info));
    }

    if let Ok(p) = Personalization::from_bytes(data) {
        assert_eq!(p.to_bytes(), data, "personalization codec is not canonical");
        // What the card does next: derive KEK_card with the operator key it
        // was given. A low-order key must be refused, not panic.
        let card = X25519Secret::from_seed(&Seed::from_bytes([0x43; 32]));
        if let Ok(kek) = Kek::derive_card(&card, p.card_id, &p.operator_kex) {
            let _ = kek;
        }
    }

    if let Ok(page) = EntitlementPage::from_bytes(data) {
        assert_eq!(
            page.to_bytes(),
            data,
            "entitlement page codec is not canonical"
        );
    }
    if let Ok(rec) = EntitlementRecord::from_bytes(data) {
        assert_eq!(rec.to_bytes(), data);
    }
    if let Ok(init) = SessionInit::from_bytes(data) {
        assert_eq!(init.to_bytes(), data, "session init codec is not canonical");
    }

    // The CW reply, against a fixed header and against a header taken from
    // the input itself.
    let key = SessionKey::from_bytes(SESSION_KEY);
    if let Ok((counter, cws)) = open_control_words(&key, &HEADER, data) {
        assert_eq!(seal_control_words(&key, counter, &HEADER, &cws), data);
    }
    let mut r = Reader::new(data);
    if let Ok(h) = EcmHeader::read(&mut r) {
        let reply = r.rest();
        if let Ok((counter, cws)) = open_control_words(&key, &h, reply) {
            assert_eq!(seal_control_words(&key, counter, &h, &cws), reply);
        }
    }
});
