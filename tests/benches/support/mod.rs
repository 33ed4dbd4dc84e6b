//! What the comparative benchmarks share: knobs read from the environment, latency
//! percentiles, markdown tables, and the report file `just bench` assembles BENCHMARKS.md from.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

/// Directory each benchmark writes its markdown section to (`<dir>/<bench>.md`), when set.
pub(crate) const REPORT_DIR_VAR: &str = "DBGUARD_BENCH_REPORT_DIR";

/// The cores this run may use, as the report states them (0 if the system will not say).
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
}

/// A knob: the variable if set and valid, the default if unset; exits naming the variable when
/// the value does not parse (a typo must not silently measure something else).
pub(crate) fn knob<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(raw) if !raw.trim().is_empty() => raw.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={raw:?} is not a valid value");
            std::process::exit(2)
        }),
        _ => default,
    }
}

/// A duration knob in seconds (fractions allowed, e.g. `0.2`).
pub(crate) fn knob_seconds(name: &str, default_secs: f64) -> Duration {
    let secs: f64 = knob(name, default_secs);
    if !(secs.is_finite() && secs > 0.0) {
        eprintln!("{name}={secs} must be a positive number of seconds");
        std::process::exit(2)
    }
    Duration::from_secs_f64(secs)
}

/// A comma-separated list knob, e.g. `1,4,16,64`.
pub(crate) fn knob_list<T: FromStr + Clone>(name: &str, default: &[T]) -> Vec<T> {
    match std::env::var(name) {
        Ok(raw) if !raw.trim().is_empty() => raw
            .split(',')
            .map(|item| {
                item.trim().parse().unwrap_or_else(|_| {
                    eprintln!("{name}={raw:?}: {item:?} is not a valid value");
                    std::process::exit(2)
                })
            })
            .collect(),
        _ => default.to_vec(),
    }
}

/// Latency percentiles of one measurement.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Percentiles {
    /// Median.
    pub(crate) p50: Duration,
    /// 99th percentile.
    pub(crate) p99: Duration,
}

impl Percentiles {
    /// Percentiles of `nanos`, which this sorts.
    pub(crate) fn of(nanos: &mut [u64]) -> Self {
        nanos.sort_unstable();
        Self { p50: quantile(nanos, 0.50), p99: quantile(nanos, 0.99) }
    }
}

/// The `q` quantile of sorted nanoseconds (nearest rank).
fn quantile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * q).ceil().max(1.0) as usize;
    Duration::from_nanos(sorted[rank.min(sorted.len()) - 1])
}

/// Microseconds with one decimal.
pub(crate) fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// Milliseconds with one decimal.
pub(crate) fn millis(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// The median of `values` (the lower middle for an even count); `None` when empty.
pub(crate) fn median<T: Copy + PartialOrd>(values: &[T]) -> Option<T> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

/// A markdown table built row by row.
#[derive(Debug)]
pub(crate) struct Table {
    text: String,
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(headers: &[&str]) -> Self {
        let mut text = format!("| {} |\n", headers.join(" | "));
        let _ = writeln!(text, "|{}", "---|".repeat(headers.len()));
        Self { text }
    }

    /// Appends a row.
    pub(crate) fn row(&mut self, cells: &[String]) {
        let _ = writeln!(self.text, "| {} |", cells.join(" | "));
    }

    /// The markdown.
    pub(crate) fn render(&self) -> &str {
        &self.text
    }
}

/// Collects what a benchmark prints, so the same markdown goes to stdout and to the report
/// file.
#[derive(Debug)]
pub(crate) struct Report {
    bench: &'static str,
    text: String,
}

impl Report {
    /// An empty report for benchmark `bench`.
    pub(crate) fn new(bench: &'static str) -> Self {
        Self { bench, text: String::new() }
    }

    /// Prints `line` and keeps it.
    pub(crate) fn line(&mut self, line: impl AsRef<str>) {
        let line = line.as_ref();
        println!("{line}");
        self.text.push_str(line);
        self.text.push('\n');
    }

    /// Writes the report to `$DBGUARD_BENCH_REPORT_DIR/<bench>.md` if the variable is set.
    pub(crate) fn finish(self) -> ExitCode {
        let Some(dir) = std::env::var_os(REPORT_DIR_VAR).filter(|d| !d.is_empty()).map(PathBuf::from) else {
            return ExitCode::SUCCESS;
        };
        let path = dir.join(format!("{}.md", self.bench));
        match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &self.text)) {
            Ok(()) => {
                eprintln!("wrote {}", path.display());
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("cannot write {}: {err}", path.display());
                ExitCode::FAILURE
            }
        }
    }
}

/// `url` with `sslmode=<mode>` added unless the URL already names one, so every client in a
/// comparison speaks the same protocol (the shared test server offers TLS; tokio-postgres here
/// has no TLS connector).
pub(crate) fn with_sslmode(url: &str, mode: &str) -> String {
    if url.contains("sslmode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&sslmode={mode}")
    } else {
        format!("{url}?sslmode={mode}")
    }
}

/// A small xorshift generator: random row ids without a dependency, seeded per task.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator seeded from `seed` (any value; zero is remapped).
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs `bench` on a multi-thread tokio runtime and writes its report: the `main` of every
/// benchmark here. `what` names the benchmark in a failure message.
pub(crate) fn run_main(what: &str, bench: impl std::future::Future<Output = Result<Report, String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench) {
        Ok(report) => report.finish(),
        Err(err) => {
            eprintln!("{what} benchmark failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// deadpool's managed pool of sqlx connections with nothing on top: no validation on checkout,
/// nothing done on return, no guard, no metrics. dbguard's PostgreSQL pool is this plus its
/// checks, so its row is the floor under the guarded rows and the gap to `raw sqlx` that any
/// pool of these connections pays.
pub(crate) struct BareManager<C: sqlx::Connection> {
    pub(crate) options: C::Options,
}

impl<C: sqlx::Connection> deadpool::managed::Manager for BareManager<C> {
    type Type = C;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<C, sqlx::Error> {
        sqlx::ConnectOptions::connect(&self.options).await
    }

    async fn recycle(
        &self,
        _: &mut C,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<sqlx::Error> {
        Ok(())
    }
}
