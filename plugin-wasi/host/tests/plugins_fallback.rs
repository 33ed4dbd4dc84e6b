//! Faults at call time: the call gets core's built-in verdict, the fault is counted, and after
//! three in a row the plugin is quarantined until reloaded.

mod support;

use std::time::Duration;

use dbguard_core::ErrorClass;
use dbguard_core::retry::PolicyVerdict;
use dbguard_plugin_host::{HostConfig, PluginError, PluginHost, PluginState};
use support::info;

const PLUGIN_DELAY: Duration = Duration::from_millis(50);

fn host() -> PluginHost {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    host.load_retry_policy_named(Some("misbehave"), &dbguard_tests::guest!("fixture-trap")).expect("gate passes");
    host
}

/// The default built-in schedule: 1 s before the first retry, not retrying syntax errors.
fn builtin_first_delay() -> PolicyVerdict {
    PolicyVerdict::RetryAfter(Duration::from_secs(1))
}

#[test]
fn a_trap_falls_back_and_three_in_a_row_quarantine_the_plugin() {
    let host = host();
    let policy = host.retry_policy();
    let good = info(ErrorClass::Busy, 1, None);
    let trap = info(ErrorClass::Busy, 1, Some("trap"));
    assert_eq!(policy.decide(&good), PolicyVerdict::RetryAfter(PLUGIN_DELAY));

    assert_eq!(policy.decide(&trap), builtin_first_delay());
    // The trapped instance was discarded; a fresh one answers normally and resets the streak.
    assert_eq!(policy.decide(&good), PolicyVerdict::RetryAfter(PLUGIN_DELAY));
    assert_eq!(policy.stats().unwrap().consecutive_faults, 0);

    for _ in 0..3 {
        assert_eq!(policy.decide(&trap), builtin_first_delay());
    }
    let stats = policy.stats().unwrap();
    assert_eq!(stats.state, PluginState::Quarantined);
    assert_eq!(stats.faults, 4);
    assert_eq!(stats.calls, 6);
    // Quarantined: even good calls get the built-in verdict, without entering the plugin.
    assert_eq!(policy.decide(&good), builtin_first_delay());
    assert_eq!(policy.stats().unwrap().calls, 6);
    assert!(matches!(policy.try_decide(&good), Err(PluginError::Quarantined(3))));
    assert_eq!(policy.fallback_answers(), 5);

    // Reloading brings it back with fresh counters.
    host.load_retry_policy(&dbguard_tests::guest!("fixture-trap")).expect("reload");
    let stats = policy.stats().unwrap();
    assert_eq!((stats.state, stats.calls, stats.faults), (PluginState::Active, 0, 0));
    assert_eq!(policy.decide(&good), PolicyVerdict::RetryAfter(PLUGIN_DELAY));
}

#[test]
fn an_infinite_loop_is_interrupted_at_its_deadline_and_falls_back() {
    let host = host();
    let policy = host.retry_policy();
    let timeout = host.config().get_call_timeout();
    // The guest spins forever: that the call returns at all, with the deadline's error, is the
    // interruption. How soon is a timing figure, which belongs in the plugin bench.
    let result = policy.try_decide(&info(ErrorClass::Busy, 1, Some("spin")));
    assert_eq!(result, Err(PluginError::Timeout(timeout)));

    assert_eq!(policy.decide(&info(ErrorClass::Busy, 1, Some("spin"))), builtin_first_delay());
    assert_eq!(policy.decide(&info(ErrorClass::Busy, 1, None)), PolicyVerdict::RetryAfter(PLUGIN_DELAY));
}

#[test]
fn memory_growth_past_the_limit_falls_back() {
    let host = host();
    let policy = host.retry_policy();
    let result = policy.try_decide(&info(ErrorClass::Busy, 1, Some("grow")));
    assert_eq!(result, Err(PluginError::MemoryLimit { limit: 16 << 20 }));
    assert_eq!(
        policy.decide(&info(ErrorClass::Syntax, 1, Some("grow"))),
        PolicyVerdict::GiveUp("syntax errors are not retried".into())
    );
    assert_eq!(policy.decide(&info(ErrorClass::Busy, 1, None)), PolicyVerdict::RetryAfter(PLUGIN_DELAY));
}

#[test]
fn an_out_of_range_delay_is_an_invalid_decision() {
    let host = host();
    let policy = host.retry_policy();
    let result = policy.try_decide(&info(ErrorClass::Busy, 1, Some("huge")));
    assert!(matches!(result, Err(PluginError::InvalidDecision(_))), "{result:?}");
    assert_eq!(policy.decide(&info(ErrorClass::Busy, 1, Some("huge"))), builtin_first_delay());
    assert_eq!(policy.stats().unwrap().faults, 2);
}

#[test]
fn fuel_limits_a_spinning_plugin_too() {
    let host = PluginHost::new(HostConfig::default().fuel(Some(5_000_000)).call_timeout(Duration::from_secs(5)))
        .expect("engine");
    host.load_retry_policy(&dbguard_tests::guest!("fixture-trap")).expect("gate passes with fuel");
    let result = host.retry_policy().try_decide(&info(ErrorClass::Busy, 1, Some("spin")));
    assert_eq!(result, Err(PluginError::OutOfFuel));
}

#[test]
fn without_a_plugin_the_builtin_schedule_answers() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let policy = host.retry_policy();
    assert_eq!(policy.try_decide(&info(ErrorClass::Busy, 1, None)), Ok(None));
    assert_eq!(policy.decide(&info(ErrorClass::Busy, 2, None)), PolicyVerdict::RetryAfter(Duration::from_secs(2)));
    assert_eq!(policy.fallback_answers(), 0);
}
