//! Runs dbguard plugins — retry policies and health checks written as WebAssembly
//! components against `plugin-wasi/wit/dbguard-plugin.wit` — in a sandbox.
//!
//! A plugin gets nothing but its world's imports: `random` and `log` for a retry policy,
//! `query`, `now` and `log` for a health check. WASI is linked (Rust guests import it through
//! std) with nothing behind it: no files, sockets, environment or arguments, stopped clocks,
//! seeded randomness, and every function that waits (sleep, poll) traps instead. Every
//! instance has a memory limit (16 MiB by default), a deadline per call enforced by epoch
//! interruption, and optionally fuel; every guest call runs on a thread the host owns, and the
//! caller waits for it at most its deadline plus a margin. What crosses the boundary is
//! limited in bytes, log lines are rate-limited and escaped, and health checks have a budget
//! of queries, bytes and time ([`SandboxLimits`], settable from `DBGUARD_PLUGIN_*`).
//!
//! Loading is a gate: [`PluginHost::load_retry_policy`] compiles the component off the call
//! path, links it, runs golden vectors, and only then swaps it in atomically; a plugin that
//! fails is refused with a [`PluginError`] and the previous one stays active. At call time,
//! [`ActiveRetryPolicy::decide`] never fails: a fault gets the built-in verdict, and a plugin
//! that faults repeatedly is quarantined.
//!
//! ```no_run
//! use dbguard_core::{ErrorClass, Instant};
//! use dbguard_core::retry::{Decision, Idempotency, RetryPolicy, RetryState};
//! use dbguard_plugin_host::{HostConfig, PluginHost};
//!
//! let host = PluginHost::new(HostConfig::default()).expect("engine");
//! host.load_retry_policy(&std::fs::read("decorrelated_retry.wasm").unwrap()).expect("verified");
//! let policy = host.retry_policy();
//!
//! let mut state = RetryState::new(RetryPolicy::default(), Idempotency::Idempotent);
//! match state.on_failure_with(Instant::ZERO, ErrorClass::Busy, Some("5"), |info| policy.decide(info)) {
//!     Decision::RetryAt(deadline) => println!("retry at {deadline:?}"),
//!     Decision::GiveUp(reason) => println!("give up: {reason}"),
//! }
//! ```

mod bindings;
mod config;
mod env;
mod error;
mod faults;
mod health;
mod host;
mod log;
mod query;
mod retry;
mod sandbox;
mod store;
mod threads;

pub use bindings::CONTRACT_CLASSES;
pub use config::{HostConfig, SandboxLimits};
pub use env::ENV_PREFIX;
pub use error::PluginError;
pub use health::{HealthCheckPlugin, RESERVED_CHECK_PREFIX};
pub use host::{PluginHandle, PluginHost, PluginWorld};
pub use query::{QueryFailure, QueryFn, Rows, SqlValue};
pub use retry::{ActiveRetryPolicy, PluginState, PluginStats};
