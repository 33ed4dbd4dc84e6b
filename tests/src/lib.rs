//! The shared harness of dbguard's integration tests, fault drills and benchmarks.
//!
//! Everything here is real: a real PostgreSQL server, real TCP. Nothing is mocked.
//!
//! - [`TestDb`]: a throwaway database on the shared server (`DBGUARD_TEST_PG_URL`, default
//!   `postgres://postgres@127.0.0.1:5432/postgres`), dropped on `Drop`; plus login roles.
//! - [`PgCluster`]: a private server (initdb in a temp dir) for tests that stop, kill, restart,
//!   starve (`max_connections`) or fail over a server. The shared server is never touched.
//! - [`PgBouncer`]: Debian's PgBouncer in front of a server, in session or transaction pooling
//!   mode with a chosen pool size, for running dbguard behind a pooler.
//! - [`FaultProxy`]: a TCP proxy that adds latency, blackholes, refuses or resets connections.
//! - [`Ledger`] and [`LedgerReport`]: the bookkeeping of write workloads under faults.
//! - [`guest_plugin`]: the example and fixture plugins, built for `wasm32-wasip2` on first use.
//! - [`skip`] / [`require_all`]: a test missing a component says `SKIP <test>: <reason>` on
//!   stderr and returns; with `DBGUARD_REQUIRE_ALL=1` (CI) it fails instead.
//!
//! ```no_run
//! use dbguard_tests::{FaultProxy, PgCluster, ProxyMode, TestDb};
//!
//! #[tokio::test]
//! async fn survives_a_restart() {
//!     let Some(pg) = PgCluster::start_or_skip("survives_a_restart").await else { return };
//!     let proxy = FaultProxy::start(pg.addr()).await.unwrap();
//!     let url = proxy.rewrite_url(&pg.url("postgres"));
//!     // ... connect through `url`, then:
//!     pg.restart().await.unwrap();
//!     proxy.set_mode(ProxyMode::Blackhole);
//! }
//! # fn main() {}
//! ```

mod harness;

pub use harness::cluster::{BINDIR_VAR, ClusterError, DEFAULT_DB, PgBinaries, PgCluster, StopMode, WAIT_LIMIT};
pub use harness::database::{
    DEFAULT_ADMIN_URL, NAME_PREFIX, TEST_PG_URL_VAR, TestDb, TestDbError, TestRole, shared_admin_url,
};
pub use harness::guest::guest_plugin;
pub use harness::ledger::{APPEND_SQL, Ledger, LedgerAudit, LedgerKind, LedgerReport, Outcome, UPSERT_SQL, ledger_key};
pub use harness::names::{host_port, redact_url, with_credentials, with_database, with_host_port};
pub use harness::pgbouncer::{ADMIN_DB, PGBOUNCER_VAR, PgBouncer, PgBouncerOptions, PoolMode, locate_pgbouncer};
pub use harness::proxy::{FaultProxy, ProxyMode, ProxyStats};
pub use harness::require::{REQUIRE_ALL_VAR, require_all, skip};
