//! The health service: cached reports, single-flight probes, and the background monitor.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use dbguard_core::health::probe::{postgres_checks, sqlite_checks};
use dbguard_core::health::{
    CheckResult, CheckStatus, PostgresObservations, ProbeThresholds, RoundTrip, SqliteObservations,
};
use dbguard_core::{CachedReport, DatabaseType, DbConfig, HealthReport, HealthStatus, Instant};
use sea_orm::{ConnectionTrait, DbErr, Statement};

use crate::classify::classify_db_err;
use crate::clock::rfc3339_now;
use crate::conn::DbConn;
use crate::manager::{DbManager, Inner};
use crate::pool;

/// `PRAGMA quick_check` reads the whole file: run it on the first probe and every Nth after.
const QUICK_CHECK_EVERY: u64 = 10;

/// The most bytes (names, messages, units) the extra checks may add to one report together.
/// Each plugin's own strings are bounded by the plugin host; this bounds their sum, however
/// many plugins there are, so the report stays small enough for every reader.
pub(crate) const MAX_EXTRA_CHECK_BYTES: usize = 32 << 10;

/// One check contributed from outside core's probe (a health-check plugin, for instance).
///
/// The health service runs it on a blocking thread (`spawn_blocking`) within the probe's
/// timeout, so [`ExtraCheck::run`] may block; if it errs, panics or overruns, the report gets a
/// failed, non-required check named [`ExtraCheck::name`] with the reason instead.
pub trait ExtraCheck: Send + Sync {
    /// The name to report when the check cannot answer.
    fn name(&self) -> String;
    /// Runs the check once. May block, but should return within its own timeout: a check that
    /// overruns the probe's is reported as failed while its thread keeps running.
    fn run(&self) -> Result<CheckResult, String>;
}

/// Supplies the extra checks each probe runs after core's checks; their results join the
/// report's `checks` and its aggregation. Installed with [`DbManager::set_extra_checks`].
pub trait ExtraChecks: Send + Sync {
    /// The checks to run in this probe (the set may change between probes).
    fn checks(&self) -> Vec<Arc<dyn ExtraCheck>>;
}

/// A cached report and the one shared copy every reader gets, so repeated reads return the
/// same `Arc` (callers can key their own caches, e.g. of the serialized body, on it).
struct CacheEntry {
    cached: CachedReport,
    shared: Arc<HealthReport>,
}

impl CacheEntry {
    fn new(cached: CachedReport) -> Self {
        let shared = Arc::new(cached.report.clone());
        Self { cached, shared }
    }
}

pub(crate) struct HealthState {
    cache: ArcSwapOption<CacheEntry>,
    /// Held while a probe runs: concurrent callers wait for it instead of probing again.
    probe_lock: tokio::sync::Mutex<()>,
    probes_started: AtomicU64,
    stale: AtomicBool,
    monitor_stop: tokio::sync::Notify,
    monitor_running: AtomicBool,
    ttl: Duration,
    /// Checks from outside core (plugins); none unless installed.
    extra_checks: ArcSwapOption<Arc<dyn ExtraChecks>>,
    /// The migrations whose state every probe reports; none unless watched.
    pub(crate) migrations: ArcSwapOption<crate::migrate::MigrationCatalog>,
}

impl HealthState {
    pub(crate) fn new(config: &DbConfig) -> Self {
        Self {
            cache: ArcSwapOption::empty(),
            probe_lock: tokio::sync::Mutex::new(()),
            probes_started: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            monitor_stop: tokio::sync::Notify::new(),
            monitor_running: AtomicBool::new(false),
            ttl: config.health.cache_ttl,
            extra_checks: ArcSwapOption::empty(),
            migrations: ArcSwapOption::empty(),
        }
    }

    /// Forces the next reader to probe.
    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Forces a probe only if the cache still claims everything is fine: under a failure storm
    /// this keeps probes to one per outage instead of one per failed call.
    pub(crate) fn mark_stale_if_healthy(&self) {
        let healthy = self.cache.load().as_ref().is_some_and(|c| c.cached.report.status == HealthStatus::Healthy);
        if healthy {
            self.mark_stale();
        }
    }

    pub(crate) fn stop_monitor(&self) {
        // The flag catches a monitor that was probing, not waiting, when the notice went out.
        self.monitor_running.store(false, Ordering::Release);
        self.monitor_stop.notify_waiters();
    }

    fn fresh(&self, now: Instant) -> Option<Arc<CacheEntry>> {
        if self.stale.load(Ordering::Acquire) {
            return None;
        }
        self.cache.load_full().filter(|entry| entry.cached.is_fresh(now, self.ttl))
    }
}

impl DbManager {
    /// The health report: from the cache while fresh (unless `force`), otherwise from one probe
    /// shared by every concurrent caller (a thousand simultaneous requests cause one round
    /// trip). A non-forced read that finds a probe already under way gets the last report
    /// rather than waiting for it. Never hangs: the probe has its own timeout.
    pub async fn check_health(&self, force: bool) -> Arc<HealthReport> {
        let inner = &self.inner;
        let asked_at = inner.clock.now();
        if !force && let Some(cached) = inner.health.fresh(asked_at) {
            return shared_report(cached);
        }
        let _probing = match inner.health.probe_lock.try_lock() {
            Ok(probing) => probing,
            Err(_) => {
                // A probe is under way (the monitor's, or another reader's), and it may take as
                // long as the slowest health-check plugin: a cached read answers with the last
                // report instead of waiting, unless there is none or it no longer applies.
                if !force
                    && !inner.health.stale.load(Ordering::Acquire)
                    && let Some(cached) = inner.health.cache.load_full()
                {
                    return shared_report(cached);
                }
                inner.health.probe_lock.lock().await
            }
        };
        // A report stored while we waited for the lock answers this request too. Freshness, not
        // the probe's timestamp, decides for a cached read: the prober reads the clock before it
        // stores, so a caller that asked in between would otherwise probe a second time.
        if !force && let Some(cached) = inner.health.fresh(inner.clock.now()) {
            return shared_report(cached);
        }
        if let Some(cached) = inner.health.cache.load_full()
            && cached.cached.probed_at >= asked_at
            && !inner.health.stale.load(Ordering::Acquire)
        {
            return shared_report(cached);
        }
        inner.health.stale.store(false, Ordering::Release);
        let report = self.probe().await;
        let cached = Arc::new(CacheEntry::new(CachedReport::new(report, inner.clock.now())));
        inner.health.cache.store(Some(cached.clone()));
        shared_report(cached)
    }

    /// The cached report without probing, if any probe has run.
    pub fn cached_health(&self) -> Option<Arc<HealthReport>> {
        self.inner.health.cache.load_full().map(shared_report)
    }

    /// Starts the background monitor: a probe now and every `DB_HEALTH_CHECK_INTERVAL`, keeping
    /// the cache and the breaker current. Stops when the manager is closed or dropped.
    pub fn spawn_monitor(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let interval = self.inner.config.health.interval;
        self.inner.health.monitor_running.store(true, Ordering::Release);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let manager = DbManager { inner };
                if !manager.inner.health.monitor_running.load(Ordering::Acquire) {
                    return;
                }
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = manager.inner.health.monitor_stop.notified() => return,
                }
                let report = manager.check_health(true).await;
                tracing::debug!(status = ?report.status, "health monitor probe");
            }
        })
    }

    /// Installs (or with `None` removes) checks that every probe runs after core's own, such as
    /// health-check plugins. The next read probes again so the change shows at once.
    pub fn set_extra_checks(&self, checks: Option<Arc<dyn ExtraChecks>>) {
        self.inner.health.extra_checks.store(checks.map(Arc::new));
        self.inner.health.mark_stale();
    }

    /// Health probes run so far.
    pub fn probe_count(&self) -> u64 {
        self.inner.stats.probes()
    }

    async fn probe(&self) -> HealthReport {
        let inner = &self.inner;
        let config = &inner.config;
        let thresholds = config.health.thresholds;
        let started = tokio::time::Instant::now();
        let number = inner.health.probes_started.fetch_add(1, Ordering::Relaxed);
        let slot = self.pool_slot();
        let span = tracing::debug_span!("health_probe", database = config.database_type().as_str());
        let _entered = span.enter();
        let conn = slot.pools.conn();
        let (version, mut checks, failure) = match config.database_type() {
            DatabaseType::Postgresql => {
                let (version, observed, failure) = observe_postgres(&conn, &thresholds, inner).await;
                (version, postgres_checks(&observed, &thresholds), failure)
            }
            DatabaseType::Sqlite => {
                let quick_check = number.is_multiple_of(QUICK_CHECK_EVERY);
                let (version, observed, failure) = observe_sqlite(&conn, &thresholds, quick_check, inner).await;
                (version, sqlite_checks(&observed, &thresholds), failure)
            }
        };
        // The response time is the database's; extra checks run after it is measured.
        let elapsed = started.elapsed();
        checks.extend(self.run_extra_checks(failure.is_none(), thresholds.timeout).await);
        if failure.is_none() {
            checks.extend(self.migrations_check(&conn).await);
        }
        if let Some(replicas) = &inner.replicas {
            checks.extend(replicas.checks(config.replicas.read_target));
        }
        let report = HealthReport::from_checks(
            config.database_type(),
            version,
            rfc3339_now(),
            elapsed.as_secs_f64() * 1000.0,
            pool::status(&slot.pools, config),
            checks,
        );
        let status_label = match report.status {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        };
        inner.stats.on_probe(status_label, elapsed);
        inner.stats.record_pool(&report.pool_status);
        let now = inner.clock.now();
        match failure {
            // The database answered: a breaker waiting out its cool-down can close now.
            None => inner.guard_probe_success(now),
            Some(class) => inner.on_attempt_failure(now, class),
        }
        if report.status != HealthStatus::Healthy {
            tracing::warn!(status = status_label, message = %report.message, "database health");
        }
        report
    }
}

impl DbManager {
    /// Runs the installed extra checks concurrently, each on a blocking thread within
    /// `timeout`. When the database did not answer the probe they are not run (they would only
    /// wait out their own timeouts) and are reported as failed.
    async fn run_extra_checks(&self, database_answered: bool, timeout: Duration) -> Vec<CheckResult> {
        let Some(source) = self.inner.health.extra_checks.load_full() else { return Vec::new() };
        let checks = source.checks();
        if !database_answered {
            return checks
                .iter()
                .map(|check| failed_check(check.name(), "not run: the database did not answer the probe".to_owned()))
                .collect();
        }
        let runs = checks.into_iter().map(|check| async move {
            let name = check.name();
            let task = tokio::task::spawn_blocking(move || check.run());
            match tokio::time::timeout(timeout, task).await {
                Ok(Ok(Ok(result))) => result,
                Ok(Ok(Err(reason))) => failed_check(name, reason),
                Ok(Err(join)) => failed_check(name, format!("the check did not finish: {join}")),
                Err(_) => failed_check(name, format!("no answer within {} ms", timeout.as_millis())),
            }
        });
        within_report_budget(futures::future::join_all(runs).await)
    }
}

/// Keeps extra-check results, in order, while their bytes fit [`MAX_EXTRA_CHECK_BYTES`]; the
/// rest are replaced by one failed, non-required check saying how many were left out.
fn within_report_budget(results: Vec<CheckResult>) -> Vec<CheckResult> {
    let size = |result: &CheckResult| {
        result.name.len()
            + result.message.as_ref().map_or(0, String::len)
            + result.observed_unit.as_ref().map_or(0, String::len)
    };
    let mut used = 0usize;
    let mut kept = Vec::with_capacity(results.len());
    let mut omitted = 0usize;
    for result in results {
        used = used.saturating_add(size(&result));
        if used <= MAX_EXTRA_CHECK_BYTES && omitted == 0 {
            kept.push(result);
        } else {
            omitted += 1;
        }
    }
    if omitted > 0 {
        kept.push(failed_check(
            "plugin:omitted".to_owned(),
            format!("{omitted} plugin checks left out: together they exceed {MAX_EXTRA_CHECK_BYTES} bytes"),
        ));
    }
    kept
}

/// A failed, non-required check: degrades the report without making it unhealthy.
fn failed_check(name: String, reason: String) -> CheckResult {
    let mut result = CheckResult::new(name, CheckStatus::Fail, false);
    result.message = Some(reason);
    result
}

fn shared_report(entry: Arc<CacheEntry>) -> Arc<HealthReport> {
    // The report is immutable once cached; share it without copying.
    entry.shared.clone()
}

type Failure = Option<dbguard_core::ErrorClass>;

async fn timed<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, DbErr>>,
) -> Result<(T, Duration), Result<DbErr, ()>> {
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(value)) => Ok((value, started.elapsed())),
        Ok(Err(err)) => Err(Ok(err)),
        Err(_) => Err(Err(())),
    }
}

async fn failed_round_trip(outcome: Result<DbErr, ()>, inner: &Inner) -> (RoundTrip, Failure) {
    match outcome {
        Ok(err) => {
            let (classified, cause) = inner.explain_pool_timeout(classify_db_err(&err)).await;
            let class = classified.class;
            let detail = cause.unwrap_or_else(|| inner.redactor.scrub(&err.to_string()));
            (RoundTrip::Failed(format!("{class}: {detail}")), Some(class))
        }
        Err(()) => (RoundTrip::TimedOut, Some(dbguard_core::ErrorClass::Timeout)),
    }
}

async fn observe_postgres(
    db: &DbConn,
    thresholds: &ProbeThresholds,
    inner: &Inner,
) -> (Option<String>, PostgresObservations, Failure) {
    let backend = db.get_database_backend();
    let deadline = tokio::time::Instant::now() + thresholds.timeout;
    // With no connection open, the pool would spend the whole probe timeout in its own connect
    // backoff against a server that refuses at once (a closed port, a wrong password, a
    // missing database), and report only a timeout: ask the server directly first.
    if let Ok(Some((refused, cause))) = tokio::time::timeout(thresholds.timeout, inner.refusal_while_pool_empty()).await
    {
        let class = refused.class;
        let round_trip = RoundTrip::Failed(format!("{class}: {cause}"));
        return (None, PostgresObservations { round_trip, in_recovery: None, read_only: None }, Some(class));
    }
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1));
    let round_trip = timed(remaining, db.execute_unprepared("SELECT 1")).await;
    let elapsed = match round_trip {
        Ok((_, elapsed)) => elapsed,
        Err(outcome) => {
            let (round_trip, failure) = failed_round_trip(outcome, inner).await;
            return (None, PostgresObservations { round_trip, in_recovery: None, read_only: None }, failure);
        }
    };
    let details = Statement::from_string(
        backend,
        "SELECT current_setting('server_version') AS version, pg_is_in_recovery() AS in_recovery, \
         current_setting('transaction_read_only') = 'on' AS read_only",
    );
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(1));
    let row = tokio::time::timeout(remaining, db.query_one_raw(details)).await.ok().and_then(Result::ok).flatten();
    let version = row.as_ref().and_then(|r| r.try_get::<String>("", "version").ok());
    let in_recovery = row.as_ref().and_then(|r| r.try_get::<bool>("", "in_recovery").ok());
    let read_only = row.as_ref().and_then(|r| r.try_get::<bool>("", "read_only").ok());
    (version, PostgresObservations { round_trip: RoundTrip::Answered(elapsed), in_recovery, read_only }, None)
}

async fn observe_sqlite(
    db: &DbConn,
    thresholds: &ProbeThresholds,
    quick_check: bool,
    inner: &Inner,
) -> (Option<String>, SqliteObservations, Failure) {
    let backend = db.get_database_backend();
    let round_trip = timed(thresholds.timeout, db.execute_unprepared("SELECT 1")).await;
    let elapsed = match round_trip {
        Ok((_, elapsed)) => elapsed,
        Err(outcome) => {
            let (round_trip, failure) = failed_round_trip(outcome, inner).await;
            let observed = SqliteObservations { round_trip, journal_mode: None, quick_check: None, size_bytes: None };
            return (None, observed, failure);
        }
    };
    let one = |sql: &str| db.query_one_raw(Statement::from_string(backend, sql.to_owned()));
    let within = |fut| tokio::time::timeout(thresholds.timeout, fut);
    let version = within(one("SELECT sqlite_version() AS v"))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .and_then(|r| r.try_get::<String>("", "v").ok());
    let journal_mode = within(one("PRAGMA journal_mode"))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .and_then(|r| r.try_get_by_index::<String>(0).ok())
        .map(|mode| mode.to_ascii_lowercase());
    // An integrity check that cannot run counts as a failed one, as in the WASI host.
    let quick_check = if quick_check {
        match within(one("PRAGMA quick_check")).await {
            Ok(Ok(row)) => Some(
                row.and_then(|r| r.try_get_by_index::<String>(0).ok())
                    .unwrap_or_else(|| "quick_check returned no result".to_owned()),
            ),
            Ok(Err(err)) => Some(format!("quick_check failed: {}", inner.redactor.scrub(&err.to_string()))),
            Err(_) => Some(format!("quick_check timed out after {} ms", thresholds.timeout.as_millis())),
        }
    } else {
        None
    };
    let size_bytes = within(one("SELECT page_count * page_size AS size FROM pragma_page_count(), pragma_page_size()"))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .and_then(|r| r.try_get::<i64>("", "size").ok())
        .and_then(|size| u64::try_from(size).ok());
    let observed =
        SqliteObservations { round_trip: RoundTrip::Answered(elapsed), journal_mode, quick_check, size_bytes };
    (version, observed, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_checks_are_kept_within_the_report_budget() {
        let check = |n: usize| {
            let mut result = CheckResult::new(format!("plugin:p{n}"), CheckStatus::Pass, false);
            result.message = Some("m".repeat(4 << 10));
            result
        };
        let kept = within_report_budget((0..20).map(check).collect());
        assert_eq!(kept.len(), 8, "seven fit in 32 KiB, then one summary");
        assert_eq!(kept[7].name, "plugin:omitted");
        assert!(kept[7].message.as_deref().is_some_and(|m| m.starts_with("13 plugin checks left out")), "{kept:?}");
        assert_eq!(within_report_budget((0..3).map(check).collect()).len(), 3);
    }
}
