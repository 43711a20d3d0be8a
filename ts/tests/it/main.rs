//! The `ts` crate's integration tests, in one binary: DVB-CISSA known
//! answers (`cissa_kat`), property tests of every parser and builder
//! (`proptest`) and of the PID demultiplexer (`demux`).

mod cissa_kat;
mod demux;
mod proptest;
