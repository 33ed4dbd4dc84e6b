//! # dbguard-core
//!
//! The decisions behind dbguard, with no I/O and no clock: what the configuration means,
//! whether an error is worth retrying, when to retry, whether to fail fast, and whether the
//! database is healthy. The same code runs in the native host, inside WebAssembly plugins and
//! in the WASI host, and is tested on simulated time.
//!
//! **The contract:** nothing here reads a clock, the environment, a file or a socket, sleeps or
//! spawns. Every time-dependent method takes `now` (an [`Instant`]: monotonic nanoseconds) and
//! returns a decision or a deadline; the host reads the clock, sleeps until the deadline, and
//! calls back. Randomness comes in through [`RandomSource`].
//!
//! Driving a retry loop (the host owns the clock and the sleep):
//!
//! ```no_run
//! use dbguard_core::{Decision, ErrorClass, Idempotency, Instant, RetryPolicy, RetryState};
//! # fn now() -> Instant { Instant::ZERO }
//! # fn sleep_until(_: Instant) {}
//! # fn query() -> Result<u32, &'static str> { Ok(1) }
//! # fn classify(_: &str) -> ErrorClass { ErrorClass::ConnectionLost }
//! let mut state = RetryState::new(RetryPolicy::default(), Idempotency::Idempotent);
//! let rows = loop {
//!     match query() {
//!         Ok(rows) => { state.on_success(now()); break Ok(rows) }
//!         Err(err) => match state.on_failure(now(), classify(err)) {
//!             Decision::RetryAt(deadline) => sleep_until(deadline),
//!             Decision::GiveUp(reason) => break Err((err, reason)),
//!         },
//!     }
//! };
//! # let _ = rows;
//! ```
//!
//! Configuration comes in as pairs, never from `std::env` directly:
//!
//! ```
//! use dbguard_core::DbConfig;
//! let config = DbConfig::from_vars([("DATABASE_URL", "postgres://app:pw@db:5432/orders")]).unwrap();
//! assert_eq!(config.pool.size, 5);
//! assert!(!format!("{config:?}").contains("pw@"));
//! ```

pub mod api;
pub mod classify;
pub mod config;
pub mod health;
pub mod migrations;
pub mod queries;
pub mod replication;
pub mod retry;
pub mod rng;
pub mod schema;
mod serde_util;
pub mod time;

pub use api::{
    DashboardSample, DatabaseStatus, ErrorBody, LastError, MetricsSummary, PluginStatus, ServerRole, ServerState,
    ServerStatus, SuccessEnvelope,
};
pub use classify::ErrorClass;
pub use config::{
    ConfigError, ConnectionInfo, DatabaseType, DatabaseUrl, DbConfig, LoadBalanceHosts, LogFormat, PoolConfig, Profile,
    ReadTarget, ReplicaConfig, Secret, SslMode, StatementMode, TargetSessionAttrs,
};
pub use health::{CachedReport, CheckResult, CheckStatus, HealthReport, HealthStatus, PoolStatus};
pub use migrations::{AppliedMigration, KnownMigration, MigrationEntry, MigrationState, MigrationsReport};
pub use queries::QueryAnalytics;
pub use retry::{
    Admission, AttemptInfo, BreakerConfig, BreakerState, CallGuard, CircuitBreaker, Decision, GiveUpReason,
    Idempotency, Jitter, PolicyVerdict, RetryBudget, RetryPolicy, RetryState, Transition,
};
pub use rng::{RandomSource, SeededRng};
pub use time::Instant;
