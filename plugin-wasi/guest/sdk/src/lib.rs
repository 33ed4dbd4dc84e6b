//! Write dbguard plugins in Rust with dbguard-core's own types.
//!
//! A plugin is a WebAssembly component built for `wasm32-wasip2`. It implements one trait and
//! calls one macro:
//!
//! ```ignore
//! use dbguard_plugin_sdk::{AttemptInfo, PolicyVerdict, RetryPolicyPlugin};
//!
//! struct Fixed;
//!
//! impl RetryPolicyPlugin for Fixed {
//!     fn decide(info: &AttemptInfo) -> PolicyVerdict {
//!         if info.class.is_retryable() {
//!             PolicyVerdict::RetryAfter(core::time::Duration::from_millis(100))
//!         } else {
//!             PolicyVerdict::GiveUp("not retryable".into())
//!         }
//!     }
//! }
//!
//! dbguard_plugin_sdk::export_retry_policy!(Fixed);
//! ```
//!
//! The host still enforces its hard limits (retry count, delay cap, never repeating a
//! non-idempotent operation that may have taken effect): a policy only picks *whether* and
//! *how long*. A plugin has no filesystem, network, clock or environment; a retry policy gets
//! randomness through [`HostRng`], a health check runs queries through [`query`].

use core::time::Duration;

pub use dbguard_core::ErrorClass;
pub use dbguard_core::health::{CheckResult, CheckStatus};
pub use dbguard_core::retry::backoff;
pub use dbguard_core::retry::{AttemptInfo, Jitter, PolicyVerdict, RetryPolicy};
pub use dbguard_core::rng::RandomSource;

/// Generated bindings for the `retry-policy` world. Use [`export_retry_policy!`] instead.
#[doc(hidden)]
pub mod retry_bindings {
    wit_bindgen::generate!({
        world: "retry-policy",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "dbguard_plugin_sdk::retry_bindings",
    });
}

/// Generated bindings for the `health-check` world. Use [`export_health_check!`] instead.
#[doc(hidden)]
pub mod health_bindings {
    wit_bindgen::generate!({
        world: "health-check",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "dbguard_plugin_sdk::health_bindings",
    });
}

use health_bindings::dbguard::plugin::types as hwit;
use retry_bindings::dbguard::plugin::types as rwit;

pub use hwit::{Rows, SqlValue};

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// Detailed.
    Debug,
    /// Normal.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something is wrong.
    Error,
}

/// A retry policy: decides whether and how long to wait after a failed attempt.
pub trait RetryPolicyPlugin {
    /// Decides what to do after the failure described by `info`.
    fn decide(info: &AttemptInfo) -> PolicyVerdict;
}

/// What a health check is told when it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckContext {
    /// `postgres` or `sqlite`.
    pub database_type: String,
    /// The host's monotonic clock when the check started, in nanoseconds.
    pub now_ns: u64,
}

/// A health check: runs read-only queries through [`query`] and reports a [`CheckResult`].
///
/// The `required` field of the result is decided by the host's configuration, not the plugin.
pub trait HealthCheckPlugin {
    /// Runs the check.
    fn check(ctx: &CheckContext) -> CheckResult;
}

/// Randomness from the host, for jitter; implements core's [`RandomSource`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HostRng;

impl RandomSource for HostRng {
    fn next_u64(&mut self) -> u64 {
        retry_bindings::random()
    }
}

/// Writes a line to the host's log from a retry policy.
pub fn log_retry(level: LogLevel, message: &str) {
    retry_bindings::log(to_retry_level(level), message);
}

/// Writes a line to the host's log from a health check.
pub fn log_health(level: LogLevel, message: &str) {
    health_bindings::log(to_health_level(level), message);
}

/// Runs one read-only query with positional text parameters (`$1`/`?1`) and a timeout.
pub fn query(sql: &str, params: &[&str], timeout: Duration) -> Result<Rows, String> {
    let params: Vec<String> = params.iter().map(|p| (*p).to_owned()).collect();
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    health_bindings::query(sql, &params, timeout_ms)
}

/// The host's monotonic clock, in nanoseconds.
pub fn now_ns() -> u64 {
    health_bindings::now()
}

impl SqlValue {
    /// The value as an integer: integers as is, reals truncated, numeric text parsed.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            SqlValue::Integer(v) => Some(*v),
            SqlValue::Real(v) if v.is_finite() => Some(*v as i64),
            SqlValue::Text(t) => t.trim().parse().ok(),
            _ => None,
        }
    }

    /// The value as a float: numbers as is, numeric text parsed.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            SqlValue::Integer(v) => Some(*v as f64),
            SqlValue::Real(v) => Some(*v),
            SqlValue::Text(t) => t.trim().parse().ok(),
            _ => None,
        }
    }

    /// Whether the value is SQL `NULL`.
    pub fn is_null(&self) -> bool {
        matches!(self, SqlValue::Null)
    }
}

impl Rows {
    /// The value at (`row`, `column`), if present.
    pub fn get(&self, row: usize, column: usize) -> Option<&SqlValue> {
        self.rows.get(row)?.get(column)
    }
}

// ---- conversions between the WIT types and core's types (used by the export macros) ----

fn to_retry_level(level: LogLevel) -> rwit::LogLevel {
    match level {
        LogLevel::Trace => rwit::LogLevel::Trace,
        LogLevel::Debug => rwit::LogLevel::Debug,
        LogLevel::Info => rwit::LogLevel::Info,
        LogLevel::Warn => rwit::LogLevel::Warn,
        LogLevel::Error => rwit::LogLevel::Error,
    }
}

fn to_health_level(level: LogLevel) -> hwit::LogLevel {
    match level {
        LogLevel::Trace => hwit::LogLevel::Trace,
        LogLevel::Debug => hwit::LogLevel::Debug,
        LogLevel::Info => hwit::LogLevel::Info,
        LogLevel::Warn => hwit::LogLevel::Warn,
        LogLevel::Error => hwit::LogLevel::Error,
    }
}

fn class_from_wit(class: rwit::ErrorClass) -> ErrorClass {
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

fn duration_to_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[doc(hidden)]
pub fn __decide<P: RetryPolicyPlugin>(info: rwit::AttemptInfo) -> rwit::Decision {
    let info = AttemptInfo {
        class: class_from_wit(info.class),
        code: info.code,
        attempt: info.attempt,
        elapsed: Duration::from_nanos(info.elapsed_ns),
        previous_delay: Duration::from_nanos(info.previous_delay_ns),
        idempotent: info.idempotent,
    };
    match P::decide(&info) {
        PolicyVerdict::RetryAfter(delay) => rwit::Decision::RetryAfter(duration_to_ns(delay)),
        PolicyVerdict::GiveUp(reason) => rwit::Decision::GiveUp(reason),
    }
}

#[doc(hidden)]
pub fn __check<P: HealthCheckPlugin>(ctx: hwit::CheckContext) -> hwit::CheckResult {
    let ctx = CheckContext { database_type: ctx.database_type, now_ns: ctx.now_ns };
    let result = P::check(&ctx);
    hwit::CheckResult {
        name: result.name,
        status: match result.status {
            CheckStatus::Pass => hwit::CheckStatus::Pass,
            CheckStatus::Warn => hwit::CheckStatus::Warn,
            CheckStatus::Fail => hwit::CheckStatus::Fail,
        },
        observed_value: result.observed_value,
        observed_unit: result.observed_unit,
        message: result.message,
    }
}

/// Exports a [`RetryPolicyPlugin`] implementation as the component's `decide`.
#[macro_export]
macro_rules! export_retry_policy {
    ($policy:ty) => {
        struct __DbguardRetryPolicyExport;
        impl $crate::retry_bindings::Guest for __DbguardRetryPolicyExport {
            fn decide(
                info: $crate::retry_bindings::dbguard::plugin::types::AttemptInfo,
            ) -> $crate::retry_bindings::dbguard::plugin::types::Decision {
                $crate::__decide::<$policy>(info)
            }
        }
        $crate::retry_bindings::export!(__DbguardRetryPolicyExport with_types_in $crate::retry_bindings);
    };
}

/// Exports a [`HealthCheckPlugin`] implementation as the component's `check`.
#[macro_export]
macro_rules! export_health_check {
    ($check:ty) => {
        struct __DbguardHealthCheckExport;
        impl $crate::health_bindings::Guest for __DbguardHealthCheckExport {
            fn check(
                ctx: $crate::health_bindings::dbguard::plugin::types::CheckContext,
            ) -> $crate::health_bindings::dbguard::plugin::types::CheckResult {
                $crate::__check::<$check>(ctx)
            }
        }
        $crate::health_bindings::export!(__DbguardHealthCheckExport with_types_in $crate::health_bindings);
    };
}
