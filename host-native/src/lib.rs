//! # dbguard
//!
//! Database connections that survive real life. [`DbManager`] turns a validated
//! [`DbConfig`](dbguard_core::DbConfig) into a pool of its own for PostgreSQL or a SQLite file
//! (nothing is done to a connection when it is returned), hands each attempt a [`DbConn`] that
//! SeaORM's entities and statements run on, and guards every call with `dbguard-core`'s policy:
//! errors are classified once, retried only when that is safe, with backoff, a shared retry
//! budget and a circuit breaker; health is probed on a schedule, cached, and shared between
//! concurrent callers; the pool can be rebuilt in place.
//!
//! This crate is the library a service links: no HTTP server, no command line. The HTTP API
//! lives in `dbguard-http` and the `dbguard` command in `dbguard-cli`.
//!
//! PostgreSQL is always built in. Features: `sqlite` (opt-in: it builds the SQLite C library),
//! `plugins` (WebAssembly retry policies and health checks through wasmtime; see [`plugins`]),
//! `sea-orm-migration` (guarded runs of a SeaORM migrator; see [`migrate`]). Schema migrations
//! from a directory of SQL files are always built in ([`migrate`]).
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

mod backend;
mod classify;
pub mod clock;
mod conn;
pub mod env;
mod error;
mod health;
mod manager;
pub mod migrate;
mod owned_pool;
#[cfg(feature = "plugins")]
pub mod plugins;
pub mod pool;
mod queries;
mod reachability;
mod replicas;
mod retry_helper;
mod runner;
mod secrets;
pub mod stats;
mod transaction;

pub use classify::{Classified, classify_db_err, classify_sqlx};
pub use conn::DbConn;
pub use dbguard_core::{ErrorClass, HealthReport, HealthStatus, Idempotency};
pub use error::DbError;
pub use health::{ExtraCheck, ExtraChecks};
pub use manager::{ConnectError, DbManager, PluginDirectory};
pub use retry_helper::with_db_retry;
pub use runner::{RetryAdvisor, TxnFuture};
pub use secrets::Redactor;
pub use transaction::TxnOptions;
