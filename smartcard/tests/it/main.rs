//! The smartcard tools' integration tests, in one binary: the card's
//! behaviour on both transports (`behaviour`, over the cases in `suite`),
//! `smartcard emulate` behind the real pcscd (`emulator`, `robustness`),
//! the protected link as seen on the reader's cable (`protected_link`),
//! `smartcard provision` and `info` as the factory runs them
//! (`provision`), and the emulator as slow as a real card, with short
//! APDUs only (`slow_card`).
//!
//! Cards behind pcscd take a vpcd slot from `testkit::vpcd`; without
//! pcscd those tests fail under `CI=true` and are skipped, with a note,
//! otherwise.

mod behaviour;
mod emulator;
mod protected_link;
mod provision;
mod robustness;
mod slow_card;
mod suite;

/// The `smartcard` binary under test.
const SMARTCARD: &str = env!("CARGO_BIN_EXE_smartcard");
