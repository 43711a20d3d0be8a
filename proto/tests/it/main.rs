//! The `proto` crate's integration tests, in one binary: known answers
//! from the vector files in `tests/data/` (`kat`) and property tests of
//! every codec and parser (`proptest_parsers`).

mod kat;
mod proptest_parsers;
mod sd;
