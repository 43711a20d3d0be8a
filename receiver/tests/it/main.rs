//! The receiver's integration tests, in one binary: the pipeline on
//! scrambled streams from the headend's stream engine with an in-process
//! card (`pipeline`, `robustness`, `zap`, `slow_card`), the pipeline with its card
//! behind the real pcscd (`pcsc`), and the `receiver` binary itself
//! (`cli`). What they share is in `common`; cards behind pcscd take a
//! vpcd slot from `testkit::vpcd`.

mod cli;
mod common;
mod pcsc;
mod pipeline;
mod robustness;
mod slow_card;
mod zap;
