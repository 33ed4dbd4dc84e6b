//! The example plugins, loaded into the host and checked against dbguard-core's expectations.
//!
//! The health-check tests here are ABI tests: the query function is an in-memory fake that
//! returns canned rows, to exercise the plugin contract (arguments, rows, results). Read-only
//! enforcement and real queries are tested by the native host against PostgreSQL and SQLite.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbguard_core::ErrorClass;
use dbguard_core::health::CheckStatus;
use dbguard_core::retry::{AttemptInfo, PolicyVerdict};
use dbguard_plugin_host::{
    CONTRACT_CLASSES, HostConfig, PluginError, PluginHost, QueryFailure, QueryFn, Rows, SqlValue,
};

const BASE: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(10);

#[test]
fn decorrelated_retry_follows_core_classification_and_its_schedule() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    host.load_retry_policy_named(Some("decorrelated"), &dbguard_tests::guest!("decorrelated-retry"))
        .expect("example loads");
    let policy = host.retry_policy();
    for &class in CONTRACT_CLASSES {
        let mut previous = Duration::ZERO;
        for attempt in 1..=8 {
            let info = AttemptInfo {
                class,
                code: None,
                attempt,
                elapsed: Duration::ZERO,
                previous_delay: previous,
                idempotent: true,
            };
            let verdict = policy.try_decide(&info).expect("no fault").expect("plugin answers");
            match verdict {
                PolicyVerdict::RetryAfter(delay) => {
                    assert!(class.is_retryable(), "{class} is not retryable but the plugin retried");
                    let high = (previous.max(BASE) * 3).min(CAP);
                    assert!(
                        BASE <= delay && delay <= high,
                        "{class} attempt {attempt}: {delay:?} not in [{BASE:?}, {high:?}]"
                    );
                    previous = delay;
                }
                PolicyVerdict::GiveUp(reason) => {
                    assert!(!class.is_retryable(), "{class} is retryable but the plugin gave up: {reason}");
                    assert_eq!(reason, format!("{class} errors are not retried"));
                    break;
                }
            }
        }
    }
    assert_eq!(policy.stats().unwrap().faults, 0);
}

#[test]
fn decorrelated_retry_also_retries_its_extra_sqlstate() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    host.load_retry_policy(&dbguard_tests::guest!("decorrelated-retry")).expect("example loads");
    let policy = host.retry_policy();
    let info = |code: &str| AttemptInfo {
        class: ErrorClass::Unknown,
        code: Some(code.to_owned()),
        attempt: 1,
        elapsed: Duration::ZERO,
        previous_delay: Duration::ZERO,
        idempotent: true,
    };
    assert!(matches!(policy.try_decide(&info("XX000")), Ok(Some(PolicyVerdict::RetryAfter(_)))));
    assert!(matches!(policy.try_decide(&info("xx000")), Ok(Some(PolicyVerdict::RetryAfter(_)))));
    assert!(matches!(policy.try_decide(&info("XX001")), Ok(Some(PolicyVerdict::GiveUp(_)))));
}

/// An in-memory fake answering by SQL substring; records what it was asked. ABI tests only.
struct FakeRows {
    answers: Vec<(&'static str, Result<Rows, String>)>,
    asked: Mutex<Vec<(String, Duration)>>,
}

impl QueryFn for FakeRows {
    fn query(&self, sql: &str, _params: &[String], timeout: Duration) -> Result<Rows, QueryFailure> {
        self.asked.lock().unwrap().push((sql.to_owned(), timeout));
        self.answers
            .iter()
            .find(|(needle, _)| sql.contains(needle))
            .map(|(_, rows)| rows.clone())
            .unwrap_or_else(|| Err(format!("fake has no answer for {sql}")))
            .map_err(QueryFailure::Failed)
    }
}

fn fake(answers: Vec<(&'static str, Result<Rows, String>)>) -> Arc<FakeRows> {
    Arc::new(FakeRows { answers, asked: Mutex::new(Vec::new()) })
}

fn row(values: Vec<SqlValue>) -> Result<Rows, String> {
    Ok(Rows { columns: (0..values.len()).map(|i| format!("c{i}")).collect(), rows: vec![values] })
}

#[test]
fn abi_replication_lag_passes_on_a_primary_without_replicas() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let query = fake(vec![
        ("pg_is_in_recovery", row(vec![SqlValue::Text("f".into())])),
        ("pg_stat_replication", row(vec![SqlValue::Integer(0), SqlValue::Real(0.0)])),
    ]);
    let plugin = host
        .load_health_check(Some("lag"), &dbguard_tests::guest!("replication-lag"), "postgres", query.clone())
        .expect("gate");
    let result = plugin.check("postgres", query.clone()).expect("check runs");
    assert_eq!(result.status, CheckStatus::Pass);
    assert_eq!(result.name, "postgres:replication_lag");
    assert_eq!(result.message.as_deref(), Some("primary with no replicas"));
    let asked = query.asked.lock().unwrap();
    assert!(asked.iter().all(|(_, timeout)| *timeout == Duration::from_secs(2)), "timeout crosses the ABI");
}

#[test]
fn abi_replication_lag_warns_and_fails_on_a_lagging_standby() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    for (lag, status) in [(1.5, CheckStatus::Pass), (42.0, CheckStatus::Warn), (900.0, CheckStatus::Fail)] {
        let query = fake(vec![
            ("pg_is_in_recovery", row(vec![SqlValue::Text("t".into())])),
            ("pg_last_xact_replay_timestamp", row(vec![SqlValue::Real(lag)])),
        ]);
        let plugin = host
            .load_health_check(None, &dbguard_tests::guest!("replication-lag"), "postgres", query.clone())
            .expect("gate");
        let result = plugin.check("postgres", query).expect("check runs");
        assert_eq!(result.status, status, "lag {lag}");
        assert_eq!(result.observed_value, Some(lag));
        assert_eq!(result.observed_unit.as_deref(), Some("s"));
    }
}

#[test]
fn abi_replication_lag_reports_query_errors_as_a_failed_check() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let query = fake(vec![("pg_is_in_recovery", Err("permission denied".into()))]);
    let plugin = host
        .load_health_check(None, &dbguard_tests::guest!("replication-lag"), "postgres", query.clone())
        .expect("gate");
    let result = plugin.check("postgres", query.clone()).expect("check runs");
    assert_eq!(result.status, CheckStatus::Fail);
    assert!(result.message.unwrap().contains("permission denied"));
    let sqlite = plugin.check("sqlite", query).expect("check runs");
    assert_eq!(sqlite.status, CheckStatus::Pass, "not applicable on SQLite");
}

#[test]
fn abi_table_freshness_on_sqlite() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let cases = [
        (row(vec![SqlValue::Integer(120), SqlValue::Integer(30)]), CheckStatus::Pass),
        (row(vec![SqlValue::Integer(120), SqlValue::Integer(7200)]), CheckStatus::Warn),
        (row(vec![SqlValue::Integer(0), SqlValue::Null]), CheckStatus::Warn),
        (Err("no such table: events".to_owned()), CheckStatus::Fail),
    ];
    for (answer, status) in cases {
        let query = fake(vec![("FROM events", answer.clone())]);
        let plugin = host
            .load_health_check(None, &dbguard_tests::guest!("table-freshness"), "sqlite", query.clone())
            .expect("gate");
        let result = plugin.check("sqlite", query.clone()).expect("check runs");
        assert_eq!(result.status, status, "{answer:?}: {:?}", result.message);
        let asked = query.asked.lock().unwrap();
        assert!(asked[0].0.contains("strftime('%s', 'now')"), "SQLite dialect: {}", asked[0].0);
    }
}

#[test]
fn a_retry_policy_offered_as_a_health_check_is_refused() {
    let host = PluginHost::new(HostConfig::default()).expect("engine");
    let query = fake(vec![]);
    let error =
        host.load_health_check(None, &dbguard_tests::guest!("fixture-fixed-delay-a"), "sqlite", query).unwrap_err();
    assert!(matches!(error, PluginError::WrongWorld { expected: "health-check", .. }), "{error:?}");
}
