//! Command and response APDUs, and each command's data field parsed the way
//! the applet would parse it for that INS (opening EMMs and ECMs with fixed
//! keys, so the crypto paths run too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::apdu::{Command, Ins, Response};
use proto::card::Personalization;
use proto::codec::Codec;
use proto::crypto::{SessionInit, SigningKey};
use proto::ecm::Ecm;
use proto::emm::{Emm, EmmKind};
use proto::secret::{Kek, ProductKey, Seed};
use std::sync::OnceLock;

fn operator() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_seed(Seed::from_bytes([0x4F; 32])).expect("valid seed"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = Command::parse(data) {
        // Short or extended, what to_bytes writes parses to the same.
        let again = cmd.to_bytes();
        assert_eq!(Command::parse(&again).as_ref(), Ok(&cmd));
        assert!(again.len() <= data.len(), "re-encoding grew the APDU");
        assert_eq!(
            cmd.is_extended(),
            cmd.data.len() > 255 || cmd.le.is_some_and(|l| l > 256)
        );

        match cmd.ins {
            Ins::PROCESS_EMM => {
                if let Ok(emm) = Emm::from_bytes(&cmd.data) {
                    let _ = match emm.kind {
                        EmmKind::UNIQUE => emm.open_unique(&Kek::from_bytes([0x4B; 32])).is_ok(),
                        _ => emm.verify_global(&operator().public()).is_ok(),
                    };
                }
            }
            Ins::PROCESS_ECM => {
                if let Ok(ecm) = Ecm::from_bytes(&cmd.data) {
                    let h = ecm.header;
                    let key = ProductKey::from_bytes([0x50; 32])
                        .epoch_key(h.product, h.generation, h.epoch)
                        .ecm_key();
                    let _ = ecm.open(&key);
                }
            }
            Ins::PERSONALIZE => {
                let _ = Personalization::from_bytes(&cmd.data);
            }
            Ins::ESTABLISH_SESSION => {
                let _ = SessionInit::from_bytes(&cmd.data);
            }
            _ => {}
        }
    }

    if let Ok(r) = Response::parse(data) {
        assert_eq!(r.to_bytes(), data, "response codec is not canonical");
    }
});
