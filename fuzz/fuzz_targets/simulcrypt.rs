//! The SimulCrypt codec on any bytes: a message or a typed error, never a
//! panic; a decoded message encodes back to the bytes it came from, and the
//! typed layers of both interfaces refuse with a one-line reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simulcrypt::ecmg::EcmgMessage;
use simulcrypt::emmg::EmmgMessage;
use simulcrypt::Message;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((message, used)) = Message::decode(rest) {
        assert_eq!(message.encode().unwrap(), rest[..used]);
        for verdict in [
            EcmgMessage::decode(&message).map(|m| m.to_message()),
            EmmgMessage::decode(&message).map(|m| m.to_message()),
        ] {
            if let Err(v) = verdict {
                assert!(!v.detail.contains('\n'));
            }
        }
        rest = &rest[used..];
    }
});
