//! # dbguard-cli
//!
//! The `dbguard` command (`serve`, `check`, `info`, `migrate`, `schemas`, `token`, `wasi run`) and the
//! WASI command runner behind `dbguard wasi run` ([`wasi_run`]). The binary is `src/main.rs`;
//! this library holds what it runs, so tests can drive it without a process.

pub mod cli;
pub mod logging;
pub mod migrate;
pub mod wasi_run;
