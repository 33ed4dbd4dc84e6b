//! Hot swap under load: calls never fail and every answer comes from the old or the new plugin.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dbguard_core::ErrorClass;
use dbguard_core::retry::PolicyVerdict;
use dbguard_plugin_host::{HostConfig, PluginHost};
use support::info;

#[test]
fn eight_threads_keep_deciding_while_the_policy_is_replaced_fifty_times() {
    // A generous deadline: this machine may be busy, and a timeout here would be a fallback
    // answer, which the test counts as a failure.
    let host = PluginHost::new(HostConfig::default().call_timeout(Duration::from_secs(2))).expect("engine");
    let a = dbguard_tests::guest!("fixture-fixed-delay-a");
    let b = dbguard_tests::guest!("fixture-fixed-delay-b");
    host.load_retry_policy(&a).expect("a loads");
    let policy = host.retry_policy();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));

    let workers: Vec<_> = (0..8)
        .map(|thread| {
            let policy = policy.clone();
            let stop = stop.clone();
            let answered = answered.clone();
            std::thread::spawn(move || {
                let (mut from_a, mut from_b) = (0u64, 0u64);
                let class = ErrorClass::ALL[thread % ErrorClass::ALL.len()];
                while !stop.load(Ordering::Relaxed) {
                    match policy.try_decide(&info(class, 1 + (thread as u32 % 5), None)) {
                        Ok(Some(PolicyVerdict::RetryAfter(d))) if d == Duration::from_millis(100) => from_a += 1,
                        Ok(Some(PolicyVerdict::RetryAfter(d))) if d == Duration::from_millis(200) => from_b += 1,
                        other => panic!("thread {thread}: answer from neither plugin: {other:?}"),
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                (from_a, from_b)
            })
        })
        .collect();

    for swap in 0..50 {
        let bytes = if swap % 2 == 0 { &b } else { &a };
        host.load_retry_policy(bytes).expect("swap");
    }
    stop.store(true, Ordering::Relaxed);
    let (mut from_a, mut from_b) = (0, 0);
    for worker in workers {
        let (a, b) = worker.join().expect("no worker panicked");
        from_a += a;
        from_b += b;
    }
    assert!(from_a > 0 && from_b > 0, "both plugins answered: a={from_a} b={from_b}");
    assert_eq!(from_a + from_b, answered.load(Ordering::Relaxed));
    assert_eq!(policy.fallback_answers(), 0, "no call fell back");
    // The last swap (index 49) loaded a.
    assert_eq!(policy.decide(&info(ErrorClass::Busy, 1, None)), PolicyVerdict::RetryAfter(Duration::from_millis(100)));
    assert_eq!(host.cached_components(), 2);
}
