//! The health model: reports, checks, aggregation, probe judgement and cache freshness.

mod cache;
pub mod probe;
mod report;

pub use cache::CachedReport;
pub use probe::{PostgresObservations, ProbeThresholds, RoundTrip, SqliteObservations};
pub use report::{CheckResult, CheckStatus, HealthReport, HealthStatus, PoolStatus};
