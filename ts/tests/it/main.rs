//! The `ts` crate's integration tests, in one binary: DVB-CISSA known
//! answers (`cissa_kat`) and property tests of every parser and builder
//! (`proptest`).

mod cissa_kat;
mod proptest;
