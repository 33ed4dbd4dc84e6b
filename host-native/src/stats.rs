//! Counters for the status page, mirrored to the `metrics` facade as `dbguard_*` series.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use dbguard_core::{ErrorClass, LastError, MetricsSummary, PoolStatus};

/// Metric names, Prometheus style.
pub mod names {
    /// Guarded calls, by outcome (`ok` / `error`).
    pub const CALLS: &str = "dbguard_calls_total";
    /// Failed attempts, by class.
    pub const FAILURES: &str = "dbguard_failures_total";
    /// Retries, by class.
    pub const RETRIES: &str = "dbguard_retries_total";
    /// Guarded call latency (all attempts and sleeps), seconds.
    pub const CALL_SECONDS: &str = "dbguard_call_duration_seconds";
    /// Calls failed fast by the open breaker.
    pub const BREAKER_REJECTIONS: &str = "dbguard_breaker_rejections_total";
    /// Breaker state: 0 closed, 1 half-open, 2 open.
    pub const BREAKER_STATE: &str = "dbguard_breaker_state";
    /// Pool rebuilds, by outcome.
    pub const RECONNECTS: &str = "dbguard_reconnects_total";
    /// Health probes, by resulting status.
    pub const HEALTH_PROBES: &str = "dbguard_health_probes_total";
    /// Health probe latency, seconds.
    pub const HEALTH_PROBE_SECONDS: &str = "dbguard_health_probe_duration_seconds";
    /// Pool connections in use (HikariCP's `connections_active`).
    pub const POOL_ACTIVE: &str = "dbguard_pool_connections_active";
    /// Idle pooled connections (`connections_idle`).
    pub const POOL_IDLE: &str = "dbguard_pool_connections_idle";
    /// Tasks waiting for a connection, where the pool exposes it (`connections_pending`).
    pub const POOL_PENDING: &str = "dbguard_pool_connections_pending";
    /// The most connections the pool opens (`connections_max`).
    pub const POOL_MAX: &str = "dbguard_pool_connections_max";
    /// Connections kept open (`connections_min`).
    pub const POOL_MIN: &str = "dbguard_pool_connections_min";
    /// Attempts that found no connection within `DB_POOL_TIMEOUT` (`connections_timeout_total`).
    pub const POOL_TIMEOUTS: &str = "dbguard_pool_connections_timeout_total";
    /// Time to check a connection out of dbguard's PostgreSQL pool, seconds
    /// (`connections_acquire`).
    pub const POOL_ACQUIRE_SECONDS: &str = "dbguard_pool_connections_acquire_seconds";
    /// Time a connection of dbguard's PostgreSQL pool stayed checked out, seconds
    /// (`connections_usage`).
    pub const POOL_USAGE_SECONDS: &str = "dbguard_pool_connections_usage_seconds";
    /// Reads each server answered through `run_read`, by `server` (`host:port`), reads that fell
    /// back to the primary included.
    pub const SERVER_READS: &str = "dbguard_server_reads_total";
    /// Whether a server takes reads (1) or not (0: down, lagging, or the primary), by `server`.
    pub const SERVER_TAKES_READS: &str = "dbguard_server_takes_reads";
    /// Replay lag as last sampled, seconds, by `server`.
    pub const SERVER_LAG_SECONDS: &str = "dbguard_server_lag_seconds";
}

/// Histogram buckets for durations of database work, in seconds: 100 µs to 30 s, about three
/// to a decade, so a fleet's quantiles can be computed from the summed buckets.
pub const DURATION_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The series every guarded call updates, registered with the current recorder once per
/// thread instead of looked up by name on every call (a lookup hashes the key and reads a
/// shared map; a handle is one atomic update).
///
/// The cache is keyed by the recorder's address, so installing the global recorder after calls
/// have run (they registered with the no-op recorder) is picked up at the next call. A
/// scoped local recorder (`metrics::with_local_recorder`) that is dropped and replaced by
/// another at the same address keeps the first one's handles on threads that cached them;
/// scoped recorders are a testing aid and the handles stay valid, so that costs misrouted
/// test samples, never memory safety.
pub(crate) struct HotSeries {
    recorder: *const (),
    calls_ok: metrics::Counter,
    calls_error: metrics::Counter,
    call_seconds: metrics::Histogram,
    /// [`names::POOL_ACQUIRE_SECONDS`].
    pub(crate) acquire_seconds: metrics::Histogram,
    /// [`names::POOL_USAGE_SECONDS`].
    pub(crate) usage_seconds: metrics::Histogram,
}

/// Where the hot series are registered from, as the `metrics` macros would report it.
static HOT_METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
static OUTCOME_OK: [metrics::Label; 1] = [metrics::Label::from_static_parts("outcome", "ok")];
static OUTCOME_ERROR: [metrics::Label; 1] = [metrics::Label::from_static_parts("outcome", "error")];

impl HotSeries {
    fn register(recorder: &dyn metrics::Recorder) -> Self {
        let histogram =
            |name: &'static str| recorder.register_histogram(&metrics::Key::from_static_name(name), &HOT_METADATA);
        Self {
            recorder: recorder_address(recorder),
            calls_ok: recorder
                .register_counter(&metrics::Key::from_static_parts(names::CALLS, &OUTCOME_OK), &HOT_METADATA),
            calls_error: recorder
                .register_counter(&metrics::Key::from_static_parts(names::CALLS, &OUTCOME_ERROR), &HOT_METADATA),
            call_seconds: histogram(names::CALL_SECONDS),
            acquire_seconds: histogram(names::POOL_ACQUIRE_SECONDS),
            usage_seconds: histogram(names::POOL_USAGE_SECONDS),
        }
    }

    /// Runs `update` with this thread's handles for the current recorder.
    pub(crate) fn with(update: impl Fn(&HotSeries)) {
        thread_local! {
            static CACHED: RefCell<Option<HotSeries>> = const { RefCell::new(None) };
        }
        metrics::with_recorder(|recorder| {
            let current = recorder_address(recorder);
            let updated = CACHED.try_with(|cached| {
                let Ok(mut cached) = cached.try_borrow_mut() else { return false };
                let series = match &mut *cached {
                    Some(series) if series.recorder == current => series,
                    stale => stale.insert(HotSeries::register(recorder)),
                };
                update(series);
                true
            });
            if !matches!(updated, Ok(true)) {
                // The thread is exiting (its cache is gone) or already inside an update:
                // register for this one update.
                update(&HotSeries::register(recorder));
            }
        });
    }
}

fn recorder_address(recorder: &dyn metrics::Recorder) -> *const () {
    std::ptr::from_ref(recorder).cast::<()>()
}

/// Log-spaced latency buckets: bucket `i` holds latencies below `2^i` microseconds.
const BUCKETS: usize = 40;

/// Process-local counters, cheap enough for the hot path (relaxed atomics, no locks on success).
#[derive(Debug)]
pub struct Stats {
    calls: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    reconnects: AtomicU64,
    probes: AtomicU64,
    by_class: [AtomicU64; ErrorClass::ALL.len()],
    latency: [AtomicU64; BUCKETS],
    last_error: Mutex<Option<LastError>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            by_class: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            last_error: Mutex::new(None),
        }
    }
}

fn class_index(class: ErrorClass) -> usize {
    ErrorClass::ALL.iter().position(|c| *c == class).unwrap_or(ErrorClass::ALL.len() - 1)
}

impl Stats {
    /// A call finished, successfully or not, after `elapsed`.
    pub fn on_call(&self, elapsed: Duration, ok: bool) {
        self.calls.fetch_add(1, Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = (u64::BITS - micros.leading_zeros()) as usize;
        self.latency[bucket.min(BUCKETS - 1)].fetch_add(1, Relaxed);
        HotSeries::with(|series| {
            if ok { &series.calls_ok } else { &series.calls_error }.increment(1);
            series.call_seconds.record(elapsed.as_secs_f64());
        });
    }

    /// An attempt failed with `class`.
    pub fn on_failed_attempt(&self, class: ErrorClass) {
        self.by_class[class_index(class)].fetch_add(1, Relaxed);
        metrics::counter!(names::FAILURES, "class" => class.as_str()).increment(1);
        if class == ErrorClass::PoolExhausted {
            metrics::counter!(names::POOL_TIMEOUTS).increment(1);
        }
    }

    /// Mirrors the pool's occupancy to the `dbguard_pool_connections_*` gauges.
    pub fn record_pool(&self, pool: &PoolStatus) {
        metrics::gauge!(names::POOL_ACTIVE).set(f64::from(pool.checked_out));
        metrics::gauge!(names::POOL_IDLE).set(f64::from(pool.checked_in));
        if let Some(waiting) = pool.waiting {
            metrics::gauge!(names::POOL_PENDING).set(f64::from(waiting));
        }
        metrics::gauge!(names::POOL_MAX).set(f64::from(pool.pool_size.saturating_add(pool.max_overflow)));
        metrics::gauge!(names::POOL_MIN).set(f64::from(pool.pool_size));
    }

    /// A call gave up and returned an error to its caller.
    pub fn on_surfaced_error(&self, class: ErrorClass, message: &str, at: String) {
        self.failures.fetch_add(1, Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(LastError { class, message: message.to_owned(), at });
        }
    }

    /// A retry was scheduled after `class`.
    pub fn on_retry(&self, class: ErrorClass) {
        self.retries.fetch_add(1, Relaxed);
        metrics::counter!(names::RETRIES, "class" => class.as_str()).increment(1);
    }

    /// A reconnect finished.
    pub fn on_reconnect(&self, ok: bool) {
        self.reconnects.fetch_add(1, Relaxed);
        metrics::counter!(names::RECONNECTS, "outcome" => if ok { "ok" } else { "error" }).increment(1);
    }

    /// A health probe finished.
    pub fn on_probe(&self, status: &'static str, elapsed: Duration) {
        self.probes.fetch_add(1, Relaxed);
        metrics::counter!(names::HEALTH_PROBES, "status" => status).increment(1);
        metrics::histogram!(names::HEALTH_PROBE_SECONDS).record(elapsed.as_secs_f64());
    }

    /// Health probes run so far.
    pub fn probes(&self) -> u64 {
        self.probes.load(Relaxed)
    }

    /// Retries made so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }

    /// The most recent error a caller saw.
    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().ok().and_then(|last| last.clone())
    }

    /// The summary for the status page.
    pub fn summary(&self) -> MetricsSummary {
        let calls = self.calls.load(Relaxed);
        let failures = self.failures.load(Relaxed);
        let failures_by_class: BTreeMap<String, u64> = ErrorClass::ALL
            .iter()
            .zip(&self.by_class)
            .map(|(class, count)| (class.as_str().to_owned(), count.load(Relaxed)))
            .filter(|(_, count)| *count > 0)
            .collect();
        let counts: Vec<u64> = self.latency.iter().map(|b| b.load(Relaxed)).collect();
        MetricsSummary {
            calls_total: calls,
            failures_total: failures,
            retries_total: self.retries.load(Relaxed),
            success_rate: if calls == 0 { 1.0 } else { (calls.saturating_sub(failures)) as f64 / calls as f64 },
            failures_by_class,
            response_time_p50_ms: percentile_ms(&counts, 0.50),
            response_time_p99_ms: percentile_ms(&counts, 0.99),
            reconnects_total: self.reconnects.load(Relaxed),
            health_probes_total: self.probes.load(Relaxed),
        }
    }
}

/// The upper bound of the bucket holding the `q` quantile, in milliseconds (log-bucket
/// resolution: within a factor of two).
fn percentile_ms(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            let upper_micros = if i == 0 { 1.0 } else { (1u64 << i) as f64 };
            return Some(upper_micros / 1000.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A recorder that counts the `dbguard_calls_total{outcome="ok"}` increments it receives.
    #[derive(Default)]
    struct CountingRecorder {
        calls_ok: Arc<AtomicU64>,
    }

    impl metrics::Recorder for CountingRecorder {
        fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
        fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
            let ok = key.name() == names::CALLS && key.labels().any(|l| l.key() == "outcome" && l.value() == "ok");
            if ok { metrics::Counter::from_arc(Arc::clone(&self.calls_ok)) } else { metrics::Counter::noop() }
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    /// Handles cached while no recorder was installed must not swallow later calls: `dbguard
    /// serve` installs its recorder after the manager has connected and run calls.
    #[test]
    fn calls_reach_a_recorder_installed_after_earlier_calls() {
        let stats = Stats::default();
        stats.on_call(Duration::from_micros(10), true);
        let first = CountingRecorder::default();
        let second = CountingRecorder::default();
        metrics::with_local_recorder(&first, || stats.on_call(Duration::from_micros(10), true));
        metrics::with_local_recorder(&second, || {
            stats.on_call(Duration::from_micros(10), true);
            stats.on_call(Duration::from_micros(10), true);
        });
        stats.on_call(Duration::from_micros(10), true);
        assert_eq!(first.calls_ok.load(Relaxed), 1);
        assert_eq!(second.calls_ok.load(Relaxed), 2);
        assert_eq!(stats.summary().calls_total, 5);
    }

    #[test]
    fn summary_counts_and_percentiles() {
        let stats = Stats::default();
        for _ in 0..99 {
            stats.on_call(Duration::from_micros(100), true);
        }
        stats.on_call(Duration::from_millis(50), false);
        stats.on_failed_attempt(ErrorClass::Busy);
        stats.on_surfaced_error(ErrorClass::Busy, "busy", "2026-01-01T00:00:00.000Z".into());
        let summary = stats.summary();
        assert_eq!(summary.calls_total, 100);
        assert_eq!(summary.failures_total, 1);
        assert!((summary.success_rate - 0.99).abs() < 1e-9);
        assert_eq!(summary.failures_by_class.get("busy"), Some(&1));
        // 100 µs lands in the bucket below 128 µs; 50 ms below 65.536 ms.
        assert_eq!(summary.response_time_p50_ms, Some(0.128));
        assert_eq!(summary.response_time_p99_ms, Some(0.128));
        assert_eq!(
            percentile_ms(&stats.latency.iter().map(|b| b.load(Relaxed)).collect::<Vec<_>>(), 1.0),
            Some(65.536)
        );
        assert_eq!(stats.last_error().map(|e| e.class), Some(ErrorClass::Busy));
    }
}
