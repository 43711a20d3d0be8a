//! ECMs as they arrive from the air: the header and whole-ECM codecs,
//! opening under the key a card would derive from a fixed `K_P`, and a
//! seal/open round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::codec::{Codec, Reader};
use proto::ecm::{Ecm, EcmHeader, EcmPayload, ECM_PLAIN_LEN};
use proto::secret::{ControlWord, CwPair, ProductKey};

const K_P: [u8; 32] = [0x50; 32];

fuzz_target!(|data: &[u8]| {
    let kp = ProductKey::from_bytes(K_P);

    if let Ok(ecm) = Ecm::from_bytes(data) {
        assert_eq!(ecm.to_bytes(), data, "ECM codec is not canonical");
        let h = ecm.header;
        // The key a card holding K_P would derive for this header.
        let key = kp.epoch_key(h.product, h.generation, h.epoch).ecm_key();
        if let Ok(p) = ecm.open(&key) {
            // Only what the headend would have sealed is accepted.
            assert_eq!(Ecm::seal(&key, h, &p).to_bytes(), data);
        }
    }

    // A header followed by anything: the header codec, then a round trip
    // with the next 41 bytes as the clear payload.
    let mut r = Reader::new(data);
    if let Ok(h) = EcmHeader::read(&mut r) {
        assert_eq!(&h.bytes()[..], &data[..21]);
        let rest = r.rest();
        if rest.len() >= ECM_PLAIN_LEN {
            let p = EcmPayload {
                cws: CwPair {
                    even: ControlWord::from_bytes(rest[..16].try_into().unwrap()),
                    odd: ControlWord::from_bytes(rest[16..32].try_into().unwrap()),
                },
                time: u64::from_be_bytes(rest[32..40].try_into().unwrap()),
                maturity: rest[40],
            };
            let key = kp.epoch_key(h.product, h.generation, h.epoch).ecm_key();
            let ecm = Ecm::seal(&key, h, &p);
            let back = Ecm::from_bytes(&ecm.to_bytes()).expect("sealed ECM parses");
            assert_eq!(back.open(&key).expect("sealed ECM opens"), p);
        }
    }
});
