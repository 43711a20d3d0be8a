//! The `smartcard` tools' library: the vpcd emulator, which serves the
//! card applet of the `card` crate as a virtual card behind the system's
//! real pcscd (`smartcard emulate`, and tests that want a card in a
//! reader without a child process).
//!
//! Its responsibility ends at the vpcd socket: the applet's behaviour is
//! the `card` crate's, and talking to a card through PC/SC is the
//! `cardlink` crate's. The command-line tools themselves (emulate,
//! provision, info, readers) are the binary's.
#![forbid(unsafe_code)]

pub mod vpcd;
