//! The Subset Difference parsers and the card's use of what they return:
//! subset ids, SD_KEY / SD_WRAPS / SD_LABELS commands (canonical codec),
//! and a card with fixed labels finding its subset and unwrapping from
//! any SD_KEY that parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::codec::Codec;
use proto::emm::{EmmCommand, EmmPayload};
use proto::sd::{CardAddress, CardLabels, Forest, SdAuthority, Subset};
use proto::secret::SdMaster;
use std::sync::OnceLock;

fn card() -> &'static CardLabels {
    static LABELS: OnceLock<CardLabels> = OnceLock::new();
    LABELS.get_or_init(|| {
        let auth = SdAuthority::new(Forest::new(6).expect("depth"), SdMaster::from_bytes([3; 32]));
        auth.card_labels(CardAddress { tree: 0, leaf: 21 })
            .expect("labels")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = <[u8; 8]>::try_from(data.get(..8).unwrap_or_default()) {
        if let Ok(s) = Subset::from_id(&id) {
            assert_eq!(s.to_id(), id, "subset id is not canonical");
            let _ = card().subset_key(&s);
        }
    }
    for prefix in [&[0x06u8, 24][..], &[0x08][..], &[][..]] {
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(data);
        if let Ok(c) = EmmCommand::from_bytes(&bytes) {
            assert_eq!(c.to_bytes(), bytes, "SD command codec is not canonical");
            if let EmmCommand::SdKey(k) = &c {
                let _ = k.open(card());
            }
        }
    }
    if let Ok(p) = EmmPayload::from_bytes(data) {
        assert_eq!(p.to_bytes(), data);
    }
});
