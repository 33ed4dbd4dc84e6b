//! # dbguard
//!
//! Database connections that survive real life. [`DbManager`] turns a validated
//! [`DbConfig`](dbguard_core::DbConfig) into a SeaORM pool for PostgreSQL or SQLite and guards
//! every call with `dbguard-core`'s policy: errors are classified once, retried only when that
//! is safe, with backoff, a shared retry budget and a circuit breaker; health is probed on a
//! schedule, cached, and shared between concurrent callers; the pool can be rebuilt in place.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dbguard::{DbManager, Idempotency};
//! use sea_orm::ConnectionTrait;
//!
//! let config = dbguard::env::load_config()?;
//! let manager = DbManager::connect(config).await?;
//! manager.spawn_monitor();
//! manager
//!     .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("SELECT 1").await })
//!     .await?;
//! println!("{:?}", manager.check_health(false).await.status);
//! # Ok(()) }
//! ```

pub mod api;
pub mod auth;
mod classify;
pub mod clock;
pub mod env;
mod error;
mod health;
mod manager;
#[cfg(feature = "plugins")]
pub mod plugins;
pub mod pool;
mod reachability;
pub mod readonly;
mod retry_helper;
mod runner;
mod secrets;
pub mod stats;
mod transaction;
pub mod wasi_run;

pub use classify::{Classified, classify_db_err, classify_sqlx};
pub use dbguard_core::{ErrorClass, HealthReport, HealthStatus, Idempotency};
pub use error::DbError;
pub use health::{ExtraCheck, ExtraChecks};
pub use manager::{ConnectError, DbManager, PluginDirectory};
pub use retry_helper::with_db_retry;
pub use runner::{RetryAdvisor, TxnFuture};
pub use secrets::Redactor;
pub use transaction::TxnOptions;
