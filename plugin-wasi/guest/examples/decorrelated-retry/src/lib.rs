//! A retry policy with decorrelated jitter (`min(cap, U(base, previous · 3))`) that also retries
//! one SQLSTATE the built-in classification does not consider transient.

use core::time::Duration;

use dbguard_plugin_sdk::{
    AttemptInfo, HostRng, Jitter, PolicyVerdict, RetryPolicy, RetryPolicyPlugin, backoff, export_retry_policy,
};

/// Retried in addition to the transient classes: some proxies report a backend failover as
/// `XX000` (internal_error). Change it to whatever your stack emits.
pub const EXTRA_RETRYABLE_SQLSTATE: &str = "XX000";
/// The first delay and the lower bound of every delay.
pub const BASE_DELAY: Duration = Duration::from_millis(100);
/// No delay exceeds this.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

struct Decorrelated;

fn schedule() -> RetryPolicy {
    RetryPolicy::builder()
        .base_delay(BASE_DELAY)
        .max_delay(MAX_DELAY)
        .jitter(Jitter::Decorrelated)
        .max_retries(RetryPolicy::MAX_RETRIES_LIMIT)
        .build()
        .unwrap_or_default()
}

impl RetryPolicyPlugin for Decorrelated {
    fn decide(info: &AttemptInfo) -> PolicyVerdict {
        let extra = info.code.as_deref().is_some_and(|code| code.eq_ignore_ascii_case(EXTRA_RETRYABLE_SQLSTATE));
        if !info.class.is_retryable() && !extra {
            return PolicyVerdict::GiveUp(format!("{} errors are not retried", info.class));
        }
        let delay = backoff::delay_for(&schedule(), info.attempt.saturating_sub(1), info.previous_delay, &mut HostRng);
        PolicyVerdict::RetryAfter(delay)
    }
}

export_retry_policy!(Decorrelated);
