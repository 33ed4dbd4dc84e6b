//! The process-wide metrics recorder behind `GET /metrics`: Prometheus's exporter for counters
//! and gauges, and fixed-bucket histograms for durations.
//!
//! The exporter keeps every histogram sample it receives (a lock-free queue drained at scrape
//! time) and sorts it into buckets only when `/metrics` is rendered. dbguard records three
//! durations on every guarded call (the call, the pool checkout, the connection's use), so
//! that queue was the largest single cost a call paid to metrics, and it grew without bound
//! between scrapes. Durations are counted into their buckets as they are recorded instead:
//! two relaxed atomic additions on a stripe of counters the recording thread mostly has to
//! itself, and memory that does not grow with traffic. The buckets are
//! [`DURATION_BUCKETS`](dbguard::stats::DURATION_BUCKETS), as the exporter was configured
//! with before, so the exposition is the same.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Histograms whose names end with this are durations, counted into fixed buckets here.
const DURATION_SUFFIX: &str = "_seconds";

/// Counter stripes per histogram: enough that threads on different cores rarely share one.
const STRIPES: usize = 8;

/// The most buckets a histogram has, the one above every bound included.
const MAX_BUCKETS: usize = 32;
const _: () = assert!(dbguard::stats::DURATION_BUCKETS.len() < MAX_BUCKETS, "every duration bucket fits");

/// Renders what the process recorded, in Prometheus's text format. Cloning shares the
/// recorder's state.
#[derive(Clone)]
pub struct MetricsHandle {
    prometheus: PrometheusHandle,
    durations: Arc<DurationHistograms>,
}

impl std::fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsHandle").finish_non_exhaustive()
    }
}

impl MetricsHandle {
    /// Everything recorded so far, in Prometheus's text exposition format.
    pub fn render(&self) -> String {
        let mut text = self.prometheus.render();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        self.durations.render_into(&mut text);
        text
    }

    /// Drains the exporter's queue of histogram samples (histograms not named `*_seconds`, such
    /// as ones the linking service records) into their summaries. Rendering does it too; this
    /// bounds the queue when nobody scrapes.
    pub fn run_upkeep(&self) {
        self.prometheus.run_upkeep();
    }

    /// Runs [`MetricsHandle::run_upkeep`] every [`UPKEEP_PERIOD`] on a thread of its own for the
    /// rest of the process (as the exporter's own installer does), whatever runtime there is.
    pub(crate) fn spawn_upkeep(&self) {
        let handle = self.clone();
        let spawned = std::thread::Builder::new().name("dbguard-metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_PERIOD);
                handle.run_upkeep();
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "metrics upkeep thread did not start; samples are drained at each scrape only");
        }
    }
}

/// How often the exporter's queued samples are drained when nobody scrapes (the exporter's own
/// default).
const UPKEEP_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder [`MetricsHandle`] reads.
struct DbguardRecorder {
    prometheus: PrometheusRecorder,
    durations: Arc<DurationHistograms>,
}

/// Builds the recorder and the handle that renders it.
pub(crate) fn build() -> (impl Recorder + Send + Sync + 'static, MetricsHandle) {
    let prometheus = PrometheusBuilder::new().build_recorder();
    let durations = Arc::new(DurationHistograms::default());
    let handle = MetricsHandle { prometheus: prometheus.handle(), durations: Arc::clone(&durations) };
    (DbguardRecorder { prometheus, durations }, handle)
}

impl Recorder for DbguardRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.prometheus.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.prometheus.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.prometheus.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if key.name().ends_with(DURATION_SUFFIX) {
            Histogram::from_arc(self.durations.series(key, dbguard::stats::DURATION_BUCKETS))
        } else {
            self.prometheus.register_histogram(key, metadata)
        }
    }
}

/// Every duration histogram registered, by key, in a stable order for rendering.
#[derive(Default)]
struct DurationHistograms {
    series: RwLock<BTreeMap<Key, Arc<FixedHistogram>>>,
}

impl DurationHistograms {
    /// The histogram for `key`, created on first registration.
    fn series(&self, key: &Key, bounds: &'static [f64]) -> Arc<FixedHistogram> {
        if let Some(found) = self.series.read().unwrap_or_else(PoisonError::into_inner).get(key) {
            return Arc::clone(found);
        }
        let mut series = self.series.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(series.entry(key.clone()).or_insert_with(|| Arc::new(FixedHistogram::new(bounds))))
    }

    /// Appends every histogram as Prometheus text: one `TYPE` line per name, cumulative
    /// `_bucket` series ending in `+Inf`, then `_sum` and `_count`.
    fn render_into(&self, text: &mut String) {
        let series = self.series.read().unwrap_or_else(PoisonError::into_inner);
        let mut last_name: Option<&str> = None;
        for (key, histogram) in series.iter() {
            let name = key.name();
            if last_name != Some(name) {
                let _ = writeln!(text, "# TYPE {name} histogram");
                last_name = Some(name);
            }
            let labels: Vec<String> =
                key.labels().map(|label| format!("{}=\"{}\"", label.key(), escape_label(label.value()))).collect();
            let with = |extra: Option<String>| {
                let all: Vec<&str> = labels.iter().map(String::as_str).chain(extra.as_deref()).collect();
                if all.is_empty() { String::new() } else { format!("{{{}}}", all.join(",")) }
            };
            let snapshot = histogram.snapshot();
            let mut cumulative = 0;
            for (bound, count) in histogram.bounds.iter().zip(&snapshot.counts) {
                cumulative += count;
                let _ = writeln!(text, "{name}_bucket{} {cumulative}", with(Some(format!("le=\"{bound}\""))));
            }
            let _ = writeln!(text, "{name}_bucket{} {}", with(Some("le=\"+Inf\"".to_owned())), snapshot.total);
            let _ = writeln!(text, "{name}_sum{} {}", with(None), snapshot.sum_seconds);
            let _ = writeln!(text, "{name}_count{} {}", with(None), snapshot.total);
        }
    }
}

/// A label value as Prometheus's text format quotes it.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A duration histogram with fixed bucket bounds (seconds), counted as samples arrive.
struct FixedHistogram {
    bounds: &'static [f64],
    stripes: [Stripe; STRIPES],
}

/// One thread group's counts: per bucket (the one after the last bound is above every bound)
/// and the sum of the samples in nanoseconds. Inline and aligned to its own cache lines, so that
/// stripes written by different cores do not contend.
#[repr(align(128))]
struct Stripe {
    counts: [AtomicU64; MAX_BUCKETS],
    sum_nanos: AtomicU64,
}

/// A histogram's counts at one moment.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// Samples per bucket (not cumulative), one per bound; samples above every bound are only in
    /// `total`.
    counts: Vec<u64>,
    total: u64,
    sum_seconds: f64,
}

impl FixedHistogram {
    /// A histogram with `bounds`, of which only the first `MAX_BUCKETS - 1` are kept.
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds: &bounds[..bounds.len().min(MAX_BUCKETS - 1)],
            stripes: std::array::from_fn(|_| Stripe {
                counts: std::array::from_fn(|_| AtomicU64::new(0)),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut counts = vec![0; self.bounds.len() + 1];
        let mut sum_nanos = 0u64;
        for stripe in &self.stripes {
            for (total, count) in counts.iter_mut().zip(stripe.counts.iter()) {
                *total += count.load(Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(stripe.sum_nanos.load(Relaxed));
        }
        let total = counts.iter().sum();
        counts.truncate(self.bounds.len());
        Snapshot { counts, total, sum_seconds: sum_nanos as f64 / 1e9 }
    }
}

impl HistogramFn for FixedHistogram {
    fn record(&self, seconds: f64) {
        // A sample belongs to the first bucket whose bound is at least the sample (`le`);
        // NaN and negative durations count as zero.
        let seconds = if seconds > 0.0 { seconds } else { 0.0 };
        let bucket = self.bounds.partition_point(|bound| *bound < seconds);
        let stripe = &self.stripes[this_threads_stripe()];
        stripe.counts[bucket].fetch_add(1, Relaxed);
        // Float-to-int `as` saturates: a sample past 584 years counts as u64::MAX nanoseconds.
        stripe.sum_nanos.fetch_add((seconds * 1e9) as u64, Relaxed);
    }
}

/// The stripe this thread records into: threads take stripes in turn as they first record.
fn this_threads_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    STRIPE.try_with(|stripe| *stripe).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process-wide recorder drains the exporter's queue on its own thread, so samples of
    /// histograms nobody scrapes do not pile up for the life of the process.
    #[cfg(target_os = "linux")]
    #[test]
    fn installing_the_recorder_starts_its_upkeep_thread() {
        let Some(_handle) = crate::api::metrics_handle() else {
            panic!("this test binary installs no other metrics recorder");
        };
        let thread_names = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .expect("the process's threads are listed")
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim().to_owned())
                .collect()
        };
        // A new thread names itself once it runs; the kernel keeps the first 15 bytes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let names = thread_names();
            if names.iter().any(|name| name == "dbguard-metrics") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no upkeep thread among {names:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    const BOUNDS: &[f64] = &[0.001, 0.01, 0.1];

    #[test]
    fn a_sample_on_a_bound_belongs_to_that_bucket() {
        let histogram = FixedHistogram::new(BOUNDS);
        for sample in [0.0005, 0.001, 0.002, 0.01, 0.5, -1.0, f64::NAN] {
            histogram.record(sample);
        }
        let snapshot = histogram.snapshot();
        // ≤ 0.001: 0.0005, 0.001, and the negative and NaN samples as zero; ≤ 0.01: 0.002, 0.01;
        // none ≤ 0.1; 0.5 is above every bound.
        assert_eq!(snapshot.counts, vec![4, 2, 0]);
        assert_eq!(snapshot.total, 7);
        assert!((snapshot.sum_seconds - 0.5135).abs() < 1e-9, "{}", snapshot.sum_seconds);
    }

    #[test]
    fn samples_from_many_threads_all_count() {
        let histogram = Arc::new(FixedHistogram::new(BOUNDS));
        let threads: Vec<_> = (0..STRIPES * 2)
            .map(|_| {
                let histogram = Arc::clone(&histogram);
                std::thread::spawn(move || (0..1000).for_each(|_| histogram.record(0.005)))
            })
            .collect();
        threads.into_iter().for_each(|thread| thread.join().expect("a recording thread"));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.counts, vec![0, 16_000, 0]);
        assert!((snapshot.sum_seconds - 80.0).abs() < 1e-6, "{}", snapshot.sum_seconds);
    }

    #[test]
    fn renders_cumulative_buckets_sum_and_count_per_label_set() {
        let histograms = DurationHistograms::default();
        let plain = Key::from_static_name("demo_seconds");
        let labelled = Key::from_parts("demo_seconds", vec![metrics::Label::new("server", "a\"b")]);
        histograms.series(&plain, BOUNDS).record(0.0005);
        histograms.series(&plain, BOUNDS).record(0.05);
        histograms.series(&plain, BOUNDS).record(3.0);
        histograms.series(&labelled, BOUNDS).record(0.002);
        let mut text = String::new();
        histograms.render_into(&mut text);
        let expected = "\
# TYPE demo_seconds histogram
demo_seconds_bucket{le=\"0.001\"} 1
demo_seconds_bucket{le=\"0.01\"} 1
demo_seconds_bucket{le=\"0.1\"} 2
demo_seconds_bucket{le=\"+Inf\"} 3
demo_seconds_sum 3.0505
demo_seconds_count 3
demo_seconds_bucket{server=\"a\\\"b\",le=\"0.001\"} 0
demo_seconds_bucket{server=\"a\\\"b\",le=\"0.01\"} 1
demo_seconds_bucket{server=\"a\\\"b\",le=\"0.1\"} 1
demo_seconds_bucket{server=\"a\\\"b\",le=\"+Inf\"} 1
demo_seconds_sum{server=\"a\\\"b\"} 0.002
demo_seconds_count{server=\"a\\\"b\"} 1
";
        assert_eq!(text, expected);
    }

    #[test]
    fn durations_are_counted_here_and_other_histograms_go_to_the_exporter() {
        let (recorder, handle) = build();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("demo_wait_seconds").record(0.002);
            metrics::histogram!("demo_rows").record(7.0);
            metrics::counter!("demo_total").increment(2);
        });
        let text = handle.render();
        assert!(text.contains("demo_wait_seconds_bucket{le=\"0.0025\"} 1\n"), "{text}");
        assert!(text.contains("demo_wait_seconds_count 1\n"), "{text}");
        assert!(text.contains("demo_total 2\n"), "{text}");
        // The exporter's default for histograms without buckets is a summary.
        assert!(text.contains("demo_rows{quantile="), "{text}");
        assert_eq!(text.matches("# TYPE demo_wait_seconds histogram").count(), 1, "{text}");
    }
}
