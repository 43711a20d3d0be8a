//! The whole-system tests, in one binary: the CA core in process
//! (`card_lifecycle`), and the real `headend`, `smartcard` and `receiver`
//! binaries with a card behind pcscd and streams made by ffmpeg
//! (`e2e_stream`), the EMMG client against a SimulCrypt MUX test peer
//! (`emmg_mux`), a third-party scrambler that gets its ECMs from the
//! headend's SimulCrypt ECMG (`ecmg_scs`), revocation and key renewal
//! through them (`revocation`), a stream that changes under a running
//! receiver (`live_changes`), cards as slow as real ones (`slow_card`),
//! one of them through 1,000 control-word changes (`card_endurance`,
//! nine minutes: first by name, so that it starts at once and the rest
//! run beside it), and a multi-program TS with services under different
//! products (`multiplex`).

mod card_endurance;
mod card_lifecycle;
mod e2e_stream;
mod ecmg_scs;
mod emmg_mux;
mod live_changes;
mod multiplex;
mod revocation;
mod slow_card;
