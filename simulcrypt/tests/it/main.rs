//! The SimulCrypt codec against arbitrary bytes and arbitrary messages.
mod codec;
