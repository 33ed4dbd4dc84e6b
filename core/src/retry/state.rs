//! The per-operation retry state machine.

use core::time::Duration;

use super::backoff::delay_for;
use super::policy::RetryPolicy;
use crate::classify::ErrorClass;
use crate::rng::{RandomSource, SeededRng};
use crate::time::Instant;

/// Whether repeating an operation can change its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Idempotency {
    /// Running it twice is the same as once (reads, upserts keyed by an idempotency key).
    Idempotent,
    /// Running it twice may apply it twice; retried only when nothing took effect.
    NonIdempotent,
}

/// What the host should do after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Try again once the host's monotonic clock reaches this instant.
    RetryAt(Instant),
    /// Stop and surface the error.
    GiveUp(GiveUpReason),
}

/// Why a [`RetryState`] stopped retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The class is not worth retrying.
    #[error("{0} errors are not retried")]
    NotRetryable(ErrorClass),
    /// The operation is not idempotent and the error does not prove nothing took effect.
    #[error("{0} may have taken effect and the operation is not idempotent")]
    UnsafeToRepeat(ErrorClass),
    /// The policy's retry count is used up.
    #[error("gave up after {attempts} attempts", attempts = .0.saturating_add(1))]
    RetriesExhausted(u32),
    /// The next retry would start after the policy's total time budget.
    #[error("the retry time budget is used up")]
    TimeBudgetExhausted,
    /// The shared retry budget has no tokens left (many callers are failing at once).
    #[error("the shared retry budget is exhausted")]
    RetryBudgetExhausted,
    /// The circuit breaker is open.
    #[error("the circuit breaker is open")]
    CircuitOpen,
    /// A retry-policy plugin chose to give up.
    #[error("the retry policy gave up: {0}")]
    PolicyGaveUp(String),
}

/// What a retry policy (built in or a plugin) is told about a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptInfo {
    /// The failure's class.
    pub class: ErrorClass,
    /// The driver's own code, when there is one: a SQLSTATE or a SQLite result code.
    pub code: Option<String>,
    /// The attempt that just failed, from 1.
    pub attempt: u32,
    /// Time since the first failure of this operation.
    pub elapsed: Duration,
    /// The delay used before the attempt that just failed (zero after the first attempt).
    pub previous_delay: Duration,
    /// Whether the operation is idempotent.
    pub idempotent: bool,
}

/// The built-in policy's answer for one failure: retry a retryable class on `policy`'s
/// schedule, give up on any other. The plugin host answers with it whenever a plugin cannot.
pub fn builtin_verdict<R: RandomSource + ?Sized>(
    policy: &RetryPolicy,
    info: &AttemptInfo,
    rng: &mut R,
) -> PolicyVerdict {
    if !info.class.is_retryable() {
        return PolicyVerdict::GiveUp(GiveUpReason::NotRetryable(info.class).to_string());
    }
    let retries_so_far = info.attempt.saturating_sub(1);
    PolicyVerdict::RetryAfter(delay_for(policy, retries_so_far, info.previous_delay, rng))
}

/// A policy's answer for one failure, before the state machine applies its hard limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyVerdict {
    /// Retry after this delay (capped at the policy's `max_delay` by the state machine).
    RetryAfter(Duration),
    /// Do not retry, for this reason.
    GiveUp(String),
}

/// Drives retries of one operation. Host loop:
///
/// ```text
/// loop {
///     match op() {
///         Ok(v) => { state.on_success(now()); return Ok(v) }
///         Err(e) => match state.on_failure(now(), classify(&e)) {
///             Decision::RetryAt(deadline) => sleep_until(deadline),
///             Decision::GiveUp(reason) => return Err((e, reason)),
///         },
///     }
/// }
/// ```
///
/// Limits the state machine always enforces, whatever policy decides the delay: a
/// non-idempotent operation is repeated only when the class is safe; commit-outcome-unknown is
/// never repeated; at most `max_retries` retries; each delay at most `max_delay`; no retry
/// starting after the total time budget.
#[derive(Debug, Clone)]
pub struct RetryState<R = SeededRng> {
    policy: RetryPolicy,
    idempotency: Idempotency,
    rng: R,
    retries: u32,
    first_failure: Option<Instant>,
    last_attempt: Option<Instant>,
    previous_delay: Duration,
}

impl RetryState<SeededRng> {
    /// A fresh state with the default seeded RNG.
    pub fn new(policy: RetryPolicy, idempotency: Idempotency) -> Self {
        Self::with_rng(policy, idempotency, SeededRng::default())
    }
}

impl<R: RandomSource> RetryState<R> {
    /// A fresh state drawing jitter from `rng`.
    pub fn with_rng(policy: RetryPolicy, idempotency: Idempotency, rng: R) -> Self {
        Self {
            policy,
            idempotency,
            rng,
            retries: 0,
            first_failure: None,
            last_attempt: None,
            previous_delay: Duration::ZERO,
        }
    }

    /// Handles a failed attempt at `now` with the built-in policy.
    pub fn on_failure(&mut self, now: Instant, class: ErrorClass) -> Decision {
        self.decide(now, class, None, |state, info| builtin_verdict(&state.policy, info, &mut state.rng))
    }

    /// Handles a failed attempt at `now`, letting `policy` (a plugin, say) choose whether and
    /// when to retry; the limits listed on [`RetryState`] still apply.
    pub fn on_failure_with(
        &mut self,
        now: Instant,
        class: ErrorClass,
        code: Option<&str>,
        policy: impl FnOnce(&AttemptInfo) -> PolicyVerdict,
    ) -> Decision {
        self.decide(now, class, code, |_, info| policy(info))
    }

    /// Records a successful attempt; the state may be reused for the next operation.
    pub fn on_success(&mut self, now: Instant) {
        self.last_attempt = Some(now);
        self.retries = 0;
        self.first_failure = None;
        self.previous_delay = Duration::ZERO;
    }

    /// Retries granted so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// When the last attempt ended, if any.
    pub fn last_attempt(&self) -> Option<Instant> {
        self.last_attempt
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    fn decide(
        &mut self,
        now: Instant,
        class: ErrorClass,
        code: Option<&str>,
        policy: impl FnOnce(&mut Self, &AttemptInfo) -> PolicyVerdict,
    ) -> Decision {
        self.last_attempt = Some(now);
        let first_failure = *self.first_failure.get_or_insert(now);
        if class == ErrorClass::CommitOutcomeUnknown {
            return Decision::GiveUp(GiveUpReason::NotRetryable(class));
        }
        if self.idempotency == Idempotency::NonIdempotent && !class.is_safe_for_non_idempotent() {
            return Decision::GiveUp(if class.is_retryable() {
                GiveUpReason::UnsafeToRepeat(class)
            } else {
                GiveUpReason::NotRetryable(class)
            });
        }
        if self.retries >= self.policy.max_retries() {
            if !class.is_retryable() {
                return Decision::GiveUp(GiveUpReason::NotRetryable(class));
            }
            return Decision::GiveUp(GiveUpReason::RetriesExhausted(self.retries));
        }
        let info = AttemptInfo {
            class,
            code: code.map(str::to_owned),
            attempt: self.retries + 1,
            elapsed: now.saturating_duration_since(first_failure),
            previous_delay: self.previous_delay,
            idempotent: self.idempotency == Idempotency::Idempotent,
        };
        let delay = match policy(self, &info) {
            PolicyVerdict::RetryAfter(delay) => delay.min(self.policy.max_delay()),
            PolicyVerdict::GiveUp(_) if !class.is_retryable() => {
                return Decision::GiveUp(GiveUpReason::NotRetryable(class));
            }
            PolicyVerdict::GiveUp(reason) => return Decision::GiveUp(GiveUpReason::PolicyGaveUp(reason)),
        };
        if let Some(budget) = self.policy.total_budget()
            && info.elapsed.saturating_add(delay) > budget
        {
            return Decision::GiveUp(GiveUpReason::TimeBudgetExhausted);
        }
        self.retries += 1;
        self.previous_delay = delay;
        Decision::RetryAt(now + delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Instant {
        Instant::from_nanos(s * 1_000_000_000)
    }

    #[test]
    fn default_policy_retries_at_one_two_four_seconds_then_gives_up() {
        let mut state = RetryState::new(RetryPolicy::default(), Idempotency::Idempotent);
        let mut now = Instant::ZERO;
        let mut delays = Vec::new();
        loop {
            match state.on_failure(now, ErrorClass::ConnectionLost) {
                Decision::RetryAt(at) => {
                    delays.push(at.saturating_duration_since(now));
                    now = at;
                }
                Decision::GiveUp(reason) => {
                    assert_eq!(reason, GiveUpReason::RetriesExhausted(3));
                    break;
                }
            }
        }
        assert_eq!(delays, [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(4)]);
        assert_eq!(now, secs(7));
    }

    #[test]
    fn non_retryable_classes_give_up_at_once() {
        let mut state = RetryState::new(RetryPolicy::default(), Idempotency::Idempotent);
        assert_eq!(
            state.on_failure(Instant::ZERO, ErrorClass::Syntax),
            Decision::GiveUp(GiveUpReason::NotRetryable(ErrorClass::Syntax))
        );
        assert_eq!(state.retries(), 0);
    }

    #[test]
    fn non_idempotent_retries_only_when_nothing_took_effect() {
        let mut state = RetryState::new(RetryPolicy::default(), Idempotency::NonIdempotent);
        assert_eq!(
            state.on_failure(Instant::ZERO, ErrorClass::ConnectionLost),
            Decision::GiveUp(GiveUpReason::UnsafeToRepeat(ErrorClass::ConnectionLost))
        );
        assert!(matches!(state.on_failure(Instant::ZERO, ErrorClass::ConnectionRefused), Decision::RetryAt(_)));
    }

    #[test]
    fn commit_outcome_unknown_is_never_replayed_even_by_a_plugin() {
        let mut state = RetryState::new(RetryPolicy::default(), Idempotency::Idempotent);
        let decision = state.on_failure_with(Instant::ZERO, ErrorClass::CommitOutcomeUnknown, None, |_| {
            PolicyVerdict::RetryAfter(Duration::from_millis(1))
        });
        assert_eq!(decision, Decision::GiveUp(GiveUpReason::NotRetryable(ErrorClass::CommitOutcomeUnknown)));
    }

    #[test]
    fn plugin_delays_are_capped_and_its_reasons_kept() {
        let mut state = RetryState::new(RetryPolicy::default(), Idempotency::Idempotent);
        let decision = state.on_failure_with(Instant::ZERO, ErrorClass::Timeout, Some("57014"), |info| {
            assert_eq!(info.code.as_deref(), Some("57014"));
            assert_eq!(info.attempt, 1);
            PolicyVerdict::RetryAfter(Duration::from_secs(3600))
        });
        assert_eq!(decision, Decision::RetryAt(secs(30)));
        let decision =
            state.on_failure_with(secs(30), ErrorClass::Timeout, None, |_| PolicyVerdict::GiveUp("night".into()));
        assert_eq!(decision, Decision::GiveUp(GiveUpReason::PolicyGaveUp("night".into())));
    }

    #[test]
    fn a_plugin_may_retry_a_class_the_built_in_policy_would_not() {
        let mut state = RetryState::new(RetryPolicy::default(), Idempotency::Idempotent);
        let decision = state.on_failure_with(Instant::ZERO, ErrorClass::Unknown, Some("XX123"), |_| {
            PolicyVerdict::RetryAfter(Duration::from_millis(10))
        });
        assert_eq!(decision, Decision::RetryAt(Instant::from_nanos(10_000_000)));
    }

    #[test]
    fn total_budget_stops_retries_that_would_start_too_late() {
        let policy = RetryPolicy::builder()
            .max_retries(10)
            .total_budget(Some(Duration::from_secs(5)))
            .build()
            .expect("valid policy");
        let mut state = RetryState::new(policy, Idempotency::Idempotent);
        assert_eq!(state.on_failure(secs(0), ErrorClass::Busy), Decision::RetryAt(secs(1)));
        assert_eq!(state.on_failure(secs(1), ErrorClass::Busy), Decision::RetryAt(secs(3)));
        // 3 s elapsed + 4 s delay > 5 s budget
        assert_eq!(state.on_failure(secs(3), ErrorClass::Busy), Decision::GiveUp(GiveUpReason::TimeBudgetExhausted));
    }

    #[test]
    fn time_going_backwards_does_not_panic() {
        let mut state = RetryState::new(RetryPolicy::default(), Idempotency::Idempotent);
        assert!(matches!(state.on_failure(secs(10), ErrorClass::Busy), Decision::RetryAt(_)));
        assert!(matches!(state.on_failure(secs(1), ErrorClass::Busy), Decision::RetryAt(_)));
    }

    #[test]
    fn success_resets_the_schedule() {
        let mut state = RetryState::new(RetryPolicy::default(), Idempotency::Idempotent);
        let _ = state.on_failure(secs(0), ErrorClass::Busy);
        let _ = state.on_failure(secs(1), ErrorClass::Busy);
        state.on_success(secs(3));
        assert_eq!(state.retries(), 0);
        assert_eq!(state.on_failure(secs(10), ErrorClass::Busy), Decision::RetryAt(secs(11)));
    }
}
