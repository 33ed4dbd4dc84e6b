//! Hostile guests against the sandbox: each costs the host at most what its limits allow, and
//! its misbehaviour is refused at the gate or faulted, counted and quarantined.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbguard_core::ErrorClass;
use dbguard_core::retry::PolicyVerdict;
use dbguard_plugin_host::{
    HealthCheckPlugin, HostConfig, PluginError, PluginHost, PluginState, QueryFailure, QueryFn, Rows, SandboxLimits,
    SqlValue,
};
use support::info;

/// A stand-in database: answers every query with `rows` (or the failure) and counts them.
struct Database {
    answer: Result<Rows, QueryFailure>,
    queries: Mutex<u32>,
}

impl QueryFn for Database {
    fn query(&self, _sql: &str, _params: &[String], _timeout: Duration) -> Result<Rows, QueryFailure> {
        *self.queries.lock().unwrap() += 1;
        self.answer.clone()
    }
}

fn database(answer: Result<Rows, QueryFailure>) -> Arc<Database> {
    Arc::new(Database { answer, queries: Mutex::new(0) })
}

fn one_row() -> Result<Rows, QueryFailure> {
    Ok(Rows { columns: vec!["one".into()], rows: vec![vec![SqlValue::Integer(1)]] })
}

fn load_check(host: &PluginHost, fixture: &str, db: Arc<Database>) -> Result<HealthCheckPlugin, PluginError> {
    host.load_health_check(Some(fixture), &dbguard_tests::guest!(fixture), "postgres", db)
}

#[test]
fn a_policy_that_sleeps_is_refused_at_the_gate_instead_of_blocking_it() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let error = host.load_retry_policy(&dbguard_tests::guest!("fixture-sleep-at-load")).unwrap_err();
    assert!(matches!(&error, PluginError::Blocking(function) if function.contains("wasi:io/poll")), "{error:?}");
    assert!(host.retry_policy().stats().is_none(), "nothing was activated");
}

#[test]
fn a_policy_that_sleeps_on_real_failures_faults_and_is_quarantined_without_panicking() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    host.load_retry_policy(&dbguard_tests::guest!("fixture-sleep-on-failure")).expect("passes the gate");
    let policy = host.retry_policy();
    let real = info(ErrorClass::Busy, 1, Some("5"));
    for _ in 0..3 {
        assert!(matches!(policy.try_decide(&real), Err(PluginError::Blocking(_))));
    }
    let stats = policy.stats().expect("loaded");
    assert_eq!((stats.faults, stats.state), (3, PluginState::Quarantined));
    assert!(stats.last_fault.as_deref().is_some_and(|fault| fault.contains("may not sleep")), "{stats:?}");
    // Quarantined: the built-in schedule answers at once.
    assert!(matches!(policy.decide(&real), PolicyVerdict::RetryAfter(_)));
}

#[tokio::test(flavor = "current_thread")]
async fn a_policy_called_from_inside_an_async_runtime_faults_instead_of_panicking() {
    // WASI's synchronous bindings `block_on` inside a runtime thread panic; guest calls run on
    // the host's own threads, so this is an ordinary fault.
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    host.load_retry_policy(&dbguard_tests::guest!("fixture-sleep-on-failure")).expect("passes the gate");
    let error = host.retry_policy().try_decide(&info(ErrorClass::Busy, 1, Some("5"))).unwrap_err();
    assert!(matches!(error, PluginError::Blocking(_)), "{error:?}");
}

#[test]
fn a_check_that_sleeps_after_the_gate_faults_at_once_and_is_quarantined() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let plugin = load_check(&host, "fixture-sleep-after-gate", database(one_row())).expect("the gate is early");
    // The fixture sleeps once the host is five seconds old.
    std::thread::sleep(Duration::from_secs(5));
    for _ in 0..3 {
        let error = plugin.run("postgres", database(one_row())).unwrap_err();
        assert!(matches!(error, PluginError::Blocking(_)), "{error:?}");
    }
    assert_eq!(plugin.stats().state, PluginState::Quarantined);
    assert!(matches!(plugin.run("postgres", database(one_row())), Err(PluginError::Quarantined(3))));
}

#[test]
fn oversized_messages_and_spoofed_builtin_names_are_refused() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let error = load_check(&host, "fixture-huge-message", database(one_row())).unwrap_err();
    assert!(matches!(&error, PluginError::LimitExceeded(what) if what.contains("message")), "{error:?}");
    let error = load_check(&host, "fixture-spoof-builtin", database(one_row())).unwrap_err();
    assert!(error.to_string().contains("reserved"), "{error}");
}

#[test]
fn query_results_are_limited_in_bytes_not_only_rows() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let big = Rows { columns: vec!["x".into()], rows: vec![vec![SqlValue::Text("x".repeat(2 << 20))]] };
    let error = load_check(&host, "fixture-huge-rows", database(Ok(big))).unwrap_err();
    assert!(matches!(&error, PluginError::LimitExceeded(what) if what.contains("bytes")), "{error:?}");
    // The database side's own cap is a fault too, not an error the plugin may shrug off.
    let refused = database(Err(QueryFailure::TooLarge("more than 256 KiB of rows".into())));
    assert!(matches!(load_check(&host, "fixture-huge-rows", refused), Err(PluginError::LimitExceeded(_))));
}

#[test]
fn a_query_flood_uses_up_the_check_budget_and_faults() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let db = database(one_row());
    let error = load_check(&host, "fixture-query-flood", db.clone()).unwrap_err();
    assert!(matches!(&error, PluginError::LimitExceeded(what) if what.contains("queries")), "{error:?}");
    assert_eq!(*db.queries.lock().unwrap(), 16, "the default budget is 16 queries per check");
}

#[test]
fn a_slow_query_is_a_fault() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let slow = database(Err(QueryFailure::TimedOut("canceling statement due to statement timeout".into())));
    let error = load_check(&host, "fixture-huge-rows", slow).unwrap_err();
    assert!(matches!(error, PluginError::SlowQuery(_)), "{error:?}");
}

#[test]
fn a_log_flood_faults_at_its_call_budget() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let error = load_check(&host, "fixture-log-flood", database(one_row())).unwrap_err();
    assert!(matches!(&error, PluginError::LimitExceeded(what) if what.contains("log calls")), "{error:?}");
}

#[test]
fn log_lines_over_the_rate_are_dropped_and_counted_and_the_check_still_answers() {
    let limits = SandboxLimits { max_log_calls_per_call: 1_000_000, ..SandboxLimits::default() };
    let host = PluginHost::new(HostConfig::default().limits(limits)).expect("engine");
    let plugin = load_check(&host, "fixture-log-flood", database(one_row())).expect("logging is not a fault");
    let result = plugin.run("postgres", database(one_row())).expect("answers");
    assert_eq!(result.name, "plugin:fixture-log-flood/fixture:log_flood", "carries the plugin's name");
    // Two checks of 200,000 lines each, against a burst of 50 and 10 lines a second.
    let dropped = plugin.stats().log_lines_dropped;
    assert!(dropped >= 2 * 200_000 - 200, "dropped {dropped}");
}

#[test]
fn a_policy_is_held_to_the_class_and_the_minimum_spacing() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    host.load_retry_policy(&dbguard_tests::guest!("fixture-retry-zero")).expect("valid answers");
    let policy = host.retry_policy();
    assert_eq!(policy.decide(&info(ErrorClass::Busy, 1, None)), PolicyVerdict::RetryAfter(Duration::from_millis(10)));
    for class in [ErrorClass::Syntax, ErrorClass::Authentication, ErrorClass::Constraint] {
        assert!(matches!(policy.decide(&info(class, 1, None)), PolicyVerdict::GiveUp(_)), "{class} was retried");
    }
    // `unknown` is where codes the classification cannot place land: the policy's call.
    assert!(matches!(policy.decide(&info(ErrorClass::Unknown, 1, Some("XX000"))), PolicyVerdict::RetryAfter(_)));
    assert_eq!(policy.stats().expect("loaded").faults, 0, "holding a verdict is not a fault");
}
