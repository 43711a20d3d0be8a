//! The card applet's integration tests, in one binary, on the in-process
//! transport (no PC/SC): every refusal with its own status word and the
//! stored state unchanged (`rejections`), and power cut at every page
//! write of every state-changing command (`tearing`).

mod rejections;
mod sd;
mod tearing;
