//! Plugin costs: a warm `decide`, a call on a fresh instance, load + verify (cached
//! compilation), and a swap between two already-compiled plugins.
//!
//! Needs the guest components: `cargo build --release --target wasm32-wasip2` in
//! `plugin-wasi/guest` (the tests build them; `DBGUARD_PLUGIN_DIR` points elsewhere).

#![allow(missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use dbguard_core::ErrorClass;
use dbguard_core::retry::AttemptInfo;
use dbguard_plugin_host::{ActiveRetryPolicy, HostConfig, PluginHost};

fn component(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("DBGUARD_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guest/target/wasm32-wasip2/release"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{}: {e}; build plugin-wasi/guest for wasm32-wasip2 or set DBGUARD_PLUGIN_DIR", path.display())
    })
}

fn info() -> AttemptInfo {
    AttemptInfo {
        class: ErrorClass::SerializationFailure,
        code: Some("40001".into()),
        attempt: 2,
        elapsed: Duration::from_millis(150),
        previous_delay: Duration::from_millis(100),
        idempotent: true,
    }
}

fn bench(c: &mut Criterion) {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let decorrelated = component("decorrelated_retry");
    let a = component("fixture_fixed_delay_a");
    let b = component("fixture_fixed_delay_b");
    host.load_retry_policy(&decorrelated).expect("loads");
    let policy = host.retry_policy();
    let info = info();

    c.bench_function("builtin_decide", |bench| bench.iter(|| black_box(policy.builtin(black_box(&info)))));
    c.bench_function("warm_decide", |bench| bench.iter(|| black_box(policy.decide(black_box(&info)))));
    c.bench_function("fresh_instance_decide", |bench| {
        bench.iter(|| black_box(policy.decide_on_fresh_instance(black_box(&info))))
    });
    c.bench_function("load_and_verify_cached", |bench| {
        bench.iter(|| black_box(host.load_retry_policy(black_box(&decorrelated)).expect("loads")))
    });
    let mut flip = false;
    c.bench_function("swap_a_b", |bench| {
        bench.iter(|| {
            flip = !flip;
            black_box(host.load_retry_policy(if flip { &a } else { &b }).expect("loads"))
        })
    });
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("load_and_verify_uncached", |bench| {
        bench.iter(|| {
            let fresh = PluginHost::new(HostConfig::default()).expect("engine");
            black_box(fresh.load_retry_policy(black_box(&decorrelated)).expect("loads"))
        })
    });
    group.finish();
    warm_decide_distribution(&policy, &info);
}

/// Calls timed one by one, for the tail criterion's per-iteration mean does not show.
const DISTRIBUTION_CALLS: usize = 100_000;

/// Prints p50/p99/p99.9/max of single warm `decide` calls (each timed with its own clock
/// reads, which add some tens of nanoseconds to every figure).
fn warm_decide_distribution(policy: &ActiveRetryPolicy, info: &AttemptInfo) {
    for _ in 0..10_000 {
        black_box(policy.decide(black_box(info)));
    }
    let mut nanos: Vec<u128> = (0..DISTRIBUTION_CALLS)
        .map(|_| {
            let start = Instant::now();
            black_box(policy.decide(black_box(info)));
            start.elapsed().as_nanos()
        })
        .collect();
    nanos.sort_unstable();
    let at = |quantile: f64| nanos[((nanos.len() - 1) as f64 * quantile) as usize];
    let (p50, p99) = (at(0.50), at(0.99));
    println!(
        "per-call warm_decide over {DISTRIBUTION_CALLS} calls: p50 {p50} ns, p99 {p99} ns, p99.9 {} ns, max {} ns; \
         targets p50 ≤ {P50_TARGET_NS} ns: {}, p99 ≤ {P99_TARGET_NS} ns: {}",
        at(0.999),
        nanos[nanos.len() - 1],
        verdict(p50 <= P50_TARGET_NS),
        verdict(p99 <= P99_TARGET_NS),
    );
}

/// Targets for one warm `decide`: well under a database round trip even in the tail.
const P50_TARGET_NS: u128 = 1_000;
/// See [`P50_TARGET_NS`].
const P99_TARGET_NS: u128 = 5_000;

/// How the report states a target.
fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

criterion_group!(benches, bench);
criterion_main!(benches);
