//! Host-side bindings generated from `plugin-wasi/wit`, and lossless conversions between the
//! WIT types and dbguard-core's types.

use core::time::Duration;

use dbguard_core::ErrorClass;
use dbguard_core::health::{CheckResult, CheckStatus};
use dbguard_core::retry::{AttemptInfo, PolicyVerdict};

pub(crate) mod retry {
    wasmtime::component::bindgen!({
        world: "retry-policy",
        path: "../wit",
        // Imports may trap: an over-long log line is a fault, not a line.
        imports: { default: trappable },
    });
}

pub(crate) mod health {
    wasmtime::component::bindgen!({
        world: "health-check",
        path: "../wit",
        // Imports may trap: a spent query budget or a slow query is a fault.
        imports: { default: trappable },
    });
}

pub(crate) use retry::dbguard::plugin::types as rwit;

use health::dbguard::plugin::types as hwit;

/// The classes that version 0.1.0 of the plugin contract names, in its order: a prefix of
/// [`ErrorClass::ALL`]. Classes after them reach plugins as `unknown`.
pub const CONTRACT_CLASSES: &[ErrorClass] = ErrorClass::ALL.split_at(27).0;

/// Core's class as the WIT enum.
pub(crate) fn class_to_wit(class: ErrorClass) -> rwit::ErrorClass {
    use rwit::ErrorClass as W;
    match class {
        ErrorClass::ConnectionRefused => W::ConnectionRefused,
        ErrorClass::ConnectionLost => W::ConnectionLost,
        ErrorClass::Timeout => W::Timeout,
        ErrorClass::PoolExhausted => W::PoolExhausted,
        ErrorClass::TooManyConnections => W::TooManyConnections,
        ErrorClass::ResourcesExhausted => W::ResourcesExhausted,
        ErrorClass::ServerShuttingDown => W::ServerShuttingDown,
        ErrorClass::ServerStarting => W::ServerStarting,
        ErrorClass::ServerSystemError => W::ServerSystemError,
        ErrorClass::SerializationFailure => W::SerializationFailure,
        ErrorClass::Deadlock => W::Deadlock,
        ErrorClass::LockNotAvailable => W::LockNotAvailable,
        ErrorClass::ReadOnlyServer => W::ReadOnlyServer,
        ErrorClass::QueryCanceled => W::QueryCanceled,
        ErrorClass::Authentication => W::Authentication,
        ErrorClass::PermissionDenied => W::PermissionDenied,
        ErrorClass::Syntax => W::Syntax,
        ErrorClass::Constraint => W::Constraint,
        ErrorClass::Data => W::Data,
        ErrorClass::Busy => W::Busy,
        ErrorClass::Locked => W::Locked,
        ErrorClass::StorageFull => W::StorageFull,
        ErrorClass::StorageReadOnly => W::StorageReadOnly,
        ErrorClass::StorageIo => W::StorageIo,
        ErrorClass::StorageCorrupt => W::StorageCorrupt,
        ErrorClass::CommitOutcomeUnknown => W::CommitOutcomeUnknown,
        // `ErrorClass` is non-exhaustive: a class added to core but not yet to the contract
        // reaches plugins as `unknown` until the WIT package is revised.
        _ => W::Unknown,
    }
}

/// The WIT enum as core's class.
#[cfg(test)]
pub(crate) fn class_from_wit(class: rwit::ErrorClass) -> ErrorClass {
    use rwit::ErrorClass as W;
    match class {
        W::ConnectionRefused => ErrorClass::ConnectionRefused,
        W::ConnectionLost => ErrorClass::ConnectionLost,
        W::Timeout => ErrorClass::Timeout,
        W::PoolExhausted => ErrorClass::PoolExhausted,
        W::TooManyConnections => ErrorClass::TooManyConnections,
        W::ResourcesExhausted => ErrorClass::ResourcesExhausted,
        W::ServerShuttingDown => ErrorClass::ServerShuttingDown,
        W::ServerStarting => ErrorClass::ServerStarting,
        W::ServerSystemError => ErrorClass::ServerSystemError,
        W::SerializationFailure => ErrorClass::SerializationFailure,
        W::Deadlock => ErrorClass::Deadlock,
        W::LockNotAvailable => ErrorClass::LockNotAvailable,
        W::ReadOnlyServer => ErrorClass::ReadOnlyServer,
        W::QueryCanceled => ErrorClass::QueryCanceled,
        W::Authentication => ErrorClass::Authentication,
        W::PermissionDenied => ErrorClass::PermissionDenied,
        W::Syntax => ErrorClass::Syntax,
        W::Constraint => ErrorClass::Constraint,
        W::Data => ErrorClass::Data,
        W::Busy => ErrorClass::Busy,
        W::Locked => ErrorClass::Locked,
        W::StorageFull => ErrorClass::StorageFull,
        W::StorageReadOnly => ErrorClass::StorageReadOnly,
        W::StorageIo => ErrorClass::StorageIo,
        W::StorageCorrupt => ErrorClass::StorageCorrupt,
        W::CommitOutcomeUnknown => ErrorClass::CommitOutcomeUnknown,
        W::Unknown => ErrorClass::Unknown,
    }
}

pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn attempt_to_wit(info: &AttemptInfo) -> rwit::AttemptInfo {
    rwit::AttemptInfo {
        class: class_to_wit(info.class),
        code: info.code.clone(),
        attempt: info.attempt,
        elapsed_ns: nanos(info.elapsed),
        previous_delay_ns: nanos(info.previous_delay),
        idempotent: info.idempotent,
    }
}

#[cfg(test)]
pub(crate) fn attempt_from_wit(info: rwit::AttemptInfo) -> AttemptInfo {
    AttemptInfo {
        class: class_from_wit(info.class),
        code: info.code,
        attempt: info.attempt,
        elapsed: Duration::from_nanos(info.elapsed_ns),
        previous_delay: Duration::from_nanos(info.previous_delay_ns),
        idempotent: info.idempotent,
    }
}

pub(crate) fn verdict_from_wit(decision: rwit::Decision) -> PolicyVerdict {
    match decision {
        rwit::Decision::RetryAfter(ns) => PolicyVerdict::RetryAfter(Duration::from_nanos(ns)),
        rwit::Decision::GiveUp(reason) => PolicyVerdict::GiveUp(reason),
    }
}

#[cfg(test)]
pub(crate) fn verdict_to_wit(verdict: &PolicyVerdict) -> rwit::Decision {
    match verdict {
        PolicyVerdict::RetryAfter(delay) => rwit::Decision::RetryAfter(nanos(*delay)),
        PolicyVerdict::GiveUp(reason) => rwit::Decision::GiveUp(reason.clone()),
    }
}

/// A plugin's check result as core's; `required` is the host's call, so it starts `false`.
pub(crate) fn check_result_from_wit(result: hwit::CheckResult) -> CheckResult {
    let mut out = CheckResult::new(result.name, status_from_wit(result.status), false);
    out.observed_value = result.observed_value;
    out.observed_unit = result.observed_unit;
    out.message = result.message;
    out
}

#[cfg(test)]
pub(crate) fn check_result_to_wit(result: &CheckResult) -> hwit::CheckResult {
    hwit::CheckResult {
        name: result.name.clone(),
        status: status_to_wit(result.status),
        observed_value: result.observed_value,
        observed_unit: result.observed_unit.clone(),
        message: result.message.clone(),
    }
}

pub(crate) fn status_from_wit(status: hwit::CheckStatus) -> CheckStatus {
    match status {
        hwit::CheckStatus::Pass => CheckStatus::Pass,
        hwit::CheckStatus::Warn => CheckStatus::Warn,
        hwit::CheckStatus::Fail => CheckStatus::Fail,
    }
}

#[cfg(test)]
pub(crate) fn status_to_wit(status: CheckStatus) -> hwit::CheckStatus {
    match status {
        CheckStatus::Pass => hwit::CheckStatus::Pass,
        CheckStatus::Warn => hwit::CheckStatus::Warn,
        CheckStatus::Fail => hwit::CheckStatus::Fail,
    }
}

pub(crate) fn rows_to_wit(rows: crate::Rows) -> hwit::Rows {
    hwit::Rows {
        columns: rows.columns,
        rows: rows.rows.into_iter().map(|row| row.into_iter().map(value_to_wit).collect()).collect(),
    }
}

fn value_to_wit(value: crate::SqlValue) -> hwit::SqlValue {
    match value {
        crate::SqlValue::Null => hwit::SqlValue::Null,
        crate::SqlValue::Integer(v) => hwit::SqlValue::Integer(v),
        crate::SqlValue::Real(v) => hwit::SqlValue::Real(v),
        crate::SqlValue::Text(v) => hwit::SqlValue::Text(v),
        crate::SqlValue::Blob(v) => hwit::SqlValue::Blob(v),
    }
}

pub(crate) fn health_level(level: hwit::LogLevel) -> tracing::Level {
    match level {
        hwit::LogLevel::Trace => tracing::Level::TRACE,
        hwit::LogLevel::Debug => tracing::Level::DEBUG,
        hwit::LogLevel::Info => tracing::Level::INFO,
        hwit::LogLevel::Warn => tracing::Level::WARN,
        hwit::LogLevel::Error => tracing::Level::ERROR,
    }
}

pub(crate) fn retry_level(level: rwit::LogLevel) -> tracing::Level {
    match level {
        rwit::LogLevel::Trace => tracing::Level::TRACE,
        rwit::LogLevel::Debug => tracing::Level::DEBUG,
        rwit::LogLevel::Info => tracing::Level::INFO,
        rwit::LogLevel::Warn => tracing::Level::WARN,
        rwit::LogLevel::Error => tracing::Level::ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_class_round_trips_in_declaration_order() {
        for (index, &class) in CONTRACT_CLASSES.iter().enumerate() {
            let wit = class_to_wit(class);
            assert_eq!(wit as usize, index, "{class} sits at a different position in the WIT enum");
            assert_eq!(class_from_wit(wit), class);
        }
    }

    #[test]
    fn classes_newer_than_the_contract_reach_plugins_as_unknown() {
        let newer = &ErrorClass::ALL[CONTRACT_CLASSES.len()..];
        assert!(newer.contains(&ErrorClass::DatabaseMissing));
        for &class in newer {
            assert_eq!(class_to_wit(class), rwit::ErrorClass::Unknown, "{class}");
        }
    }

    #[test]
    fn wit_class_names_match_core_names() {
        for &class in CONTRACT_CLASSES {
            let wit_debug = format!("{:?}", class_to_wit(class));
            let wit_name = wit_debug.trim_start_matches("ErrorClass::");
            let core_name = format!("{class:?}");
            assert_eq!(wit_name, core_name);
        }
    }

    #[test]
    fn attempt_info_round_trips() {
        for &class in CONTRACT_CLASSES {
            for (code, idempotent) in [(None, true), (Some("40001".to_owned()), false)] {
                let info = AttemptInfo {
                    class,
                    code,
                    attempt: 5,
                    elapsed: Duration::from_nanos(1_234_567_891),
                    previous_delay: Duration::from_millis(750),
                    idempotent,
                };
                assert_eq!(attempt_from_wit(attempt_to_wit(&info)), info);
            }
        }
    }

    #[test]
    fn verdicts_round_trip() {
        for verdict in [
            PolicyVerdict::RetryAfter(Duration::ZERO),
            PolicyVerdict::RetryAfter(Duration::from_nanos(u64::MAX)),
            PolicyVerdict::GiveUp("night".into()),
        ] {
            assert_eq!(verdict_from_wit(verdict_to_wit(&verdict)), verdict);
        }
    }

    #[test]
    fn check_results_round_trip() {
        for status in [CheckStatus::Pass, CheckStatus::Warn, CheckStatus::Fail] {
            let mut result = CheckResult::new("postgres:replication_lag", status, false).observed(1.5, "s");
            result.message = Some("standby".into());
            assert_eq!(check_result_from_wit(check_result_to_wit(&result)), result);
            assert_eq!(status_from_wit(status_to_wit(status)), status);
        }
        let bare = CheckResult::new("x", CheckStatus::Pass, false);
        assert_eq!(check_result_from_wit(check_result_to_wit(&bare)), bare);
    }
}
