//! The stream address parser of `tsio` on any text: a typed error or an
//! address that reads back from its own display, never a panic. Host
//! names are refused rather than looked up, so the fuzzer does no DNS.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsio::Address;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Address::parse_numeric(text) {
        Ok(a) => {
            assert_eq!(Address::parse_numeric(&a.to_string()).unwrap(), a);
            let _ = a.into_output(text);
        }
        Err(e) => assert!(!e.to_string().contains('\n')),
    }
});
