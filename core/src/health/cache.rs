//! The freshness rule for cached health reports.

use core::time::Duration;

use super::report::HealthReport;
use crate::time::Instant;

/// A report and when its probe finished, on the host's monotonic clock.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedReport {
    /// The report.
    pub report: HealthReport,
    /// When the probe that produced it finished.
    pub probed_at: Instant,
}

impl CachedReport {
    /// Wraps a report probed at `probed_at`.
    pub fn new(report: HealthReport, probed_at: Instant) -> Self {
        Self { report, probed_at }
    }

    /// Whether the report may be served at `now` without probing again: younger than `ttl`.
    /// A `now` before `probed_at` (clock confusion) counts as fresh rather than panicking.
    pub fn is_fresh(&self, now: Instant, ttl: Duration) -> bool {
        now.saturating_duration_since(self.probed_at) < ttl
    }

    /// Age of the report at `now`.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.probed_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatabaseType;
    use crate::health::PoolStatus;

    #[test]
    fn fresh_within_ttl_only() {
        let report =
            HealthReport::from_checks(DatabaseType::Sqlite, None, String::new(), 0.0, PoolStatus::default(), vec![]);
        let cached = CachedReport::new(report, Instant::from_nanos(1_000));
        let ttl = Duration::from_nanos(500);
        assert!(cached.is_fresh(Instant::from_nanos(1_000), ttl));
        assert!(cached.is_fresh(Instant::from_nanos(1_499), ttl));
        assert!(!cached.is_fresh(Instant::from_nanos(1_500), ttl));
        assert!(cached.is_fresh(Instant::from_nanos(10), ttl));
    }
}
