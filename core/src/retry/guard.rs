//! The breaker and the retry budget behind one owner, so that every change of the breaker's
//! state is reported to the host exactly once.

use crate::classify::ErrorClass;
use crate::retry::breaker::{Admission, BreakerConfig, BreakerState, CircuitBreaker};
use crate::retry::budget::RetryBudget;
use crate::time::Instant;

/// A change of the breaker's state that an input caused. The host logs it and updates its
/// gauge; nothing else moves the breaker, so the gauge cannot go stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before the input.
    pub from: BreakerState,
    /// The state after it.
    pub to: BreakerState,
}

/// What the shared guard of one database says to an attempt: the circuit breaker (fail fast
/// while the database is down) and the retry budget (no retry storm), changed only through
/// these methods.
///
/// Inputs, in the order a host calls them for one attempt:
/// [`CallGuard::admit`] before it, then [`CallGuard::on_success`] or [`CallGuard::on_failure`]
/// after it, and [`CallGuard::try_spend_retry`] before sleeping for a retry. A health probe feeds
/// the same inputs ([`CallGuard::on_probe_success`] for an answer); an operator's reconnect
/// calls [`CallGuard::reset`]. Each input that changes the breaker's state returns the
/// [`Transition`].
///
/// ```
/// use dbguard_core::{Admission, BreakerConfig, BreakerState, CallGuard, ErrorClass, Instant, RetryBudget};
/// let now = Instant::ZERO;
/// let mut guard = CallGuard::new(BreakerConfig::default(), RetryBudget::new(10, 1, now));
/// assert_eq!(guard.admit(now).0, Admission::Allowed);
/// let mut opened = None;
/// for _ in 0..10 {
///     opened = opened.or(guard.on_failure(now, ErrorClass::ConnectionRefused));
/// }
/// assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));
/// ```
#[derive(Debug, Clone)]
pub struct CallGuard {
    breaker: CircuitBreaker,
    budget: RetryBudget,
    /// The state last reported to the host. An open breaker becomes half-open by time alone;
    /// comparing with what was reported (not with the state just before the input) lets the
    /// next input report that change too.
    reported: BreakerState,
}

impl CallGuard {
    /// A closed breaker and a full budget.
    pub fn new(breaker: BreakerConfig, budget: RetryBudget) -> Self {
        Self { breaker: CircuitBreaker::new(breaker), budget, reported: BreakerState::Closed }
    }

    /// Asks whether an attempt may reach the database at `now`.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        self.observe(now, |breaker| breaker.admit(now))
    }

    /// Records an attempt that reached the database.
    pub fn on_success(&mut self, now: Instant) -> Option<Transition> {
        self.observe(now, |breaker| breaker.on_success(now)).1
    }

    /// Records a failed attempt (or probe) of class `class`.
    pub fn on_failure(&mut self, now: Instant, class: ErrorClass) -> Option<Transition> {
        self.observe(now, |breaker| breaker.on_failure(now, class)).1
    }

    /// Records a health probe the database answered: a breaker that is not closed closes at
    /// once, without waiting for a caller's half-open probe.
    pub fn on_probe_success(&mut self, now: Instant) -> Option<Transition> {
        if self.breaker.state(now) == BreakerState::Closed {
            return self.observe(now, |_| ()).1;
        }
        self.reset(now)
    }

    /// Forces the breaker closed (a rebuilt pool starts with a clean record).
    pub fn reset(&mut self, now: Instant) -> Option<Transition> {
        self.observe(now, CircuitBreaker::reset).1
    }

    /// Whether a success or an admission would change nothing and report no transition
    /// ([`CircuitBreaker::is_settled`]); the retry budget is not touched by either.
    pub fn is_settled(&self) -> bool {
        self.reported == BreakerState::Closed && self.breaker.is_settled()
    }

    /// Takes one retry from the shared budget; `false` means the retry must not happen.
    pub fn try_spend_retry(&mut self, now: Instant) -> bool {
        self.budget.try_withdraw(now)
    }

    /// The breaker's state at `now`, with the change since the last report (an open breaker
    /// whose cool-down has ended reads half-open).
    pub fn state(&mut self, now: Instant) -> (BreakerState, Option<Transition>) {
        self.observe(now, |breaker| breaker.state(now))
    }

    /// How many times the breaker has opened.
    pub fn opened_total(&self) -> u64 {
        self.breaker.opened_total()
    }

    fn observe<R>(&mut self, now: Instant, input: impl FnOnce(&mut CircuitBreaker) -> R) -> (R, Option<Transition>) {
        let output = input(&mut self.breaker);
        let (from, to) = (self.reported, self.breaker.state(now));
        self.reported = to;
        (output, (from != to).then_some(Transition { from, to }))
    }
}

#[cfg(test)]
mod tests {
    use core::time::Duration;

    use super::*;

    fn tripped(now: Instant) -> CallGuard {
        let mut guard = CallGuard::new(BreakerConfig::default(), RetryBudget::new(2, 1, now));
        for _ in 0..64 {
            guard.on_failure(now, ErrorClass::ConnectionRefused);
        }
        assert_eq!(guard.state(now).0, BreakerState::Open);
        guard
    }

    #[test]
    fn every_state_change_is_reported_once() {
        let now = Instant::ZERO;
        let mut guard = CallGuard::new(BreakerConfig::default(), RetryBudget::new(2, 1, now));
        let mut transitions = Vec::new();
        for _ in 0..64 {
            transitions.extend(guard.on_failure(now, ErrorClass::ConnectionRefused));
        }
        assert_eq!(transitions, vec![Transition { from: BreakerState::Closed, to: BreakerState::Open }]);

        let later = now + BreakerConfig::default().cool_down + Duration::from_millis(1);
        // The cool-down ending is a change of state that the next input reports.
        let (admission, moved) = guard.admit(later);
        assert_eq!(admission, Admission::Probe);
        assert_eq!(moved, Some(Transition { from: BreakerState::Open, to: BreakerState::HalfOpen }));
        assert_eq!(guard.state(later), (BreakerState::HalfOpen, None));
        assert_eq!(
            guard.on_success(later),
            Some(Transition { from: BreakerState::HalfOpen, to: BreakerState::Closed })
        );
        assert_eq!(guard.on_success(later), None);
    }

    #[test]
    fn a_probe_answer_and_a_reset_close_an_open_breaker() {
        let now = Instant::ZERO;
        let mut guard = tripped(now);
        assert_eq!(
            guard.on_probe_success(now),
            Some(Transition { from: BreakerState::Open, to: BreakerState::Closed })
        );
        assert_eq!(guard.on_probe_success(now), None);

        let mut guard = tripped(now);
        assert_eq!(guard.reset(now), Some(Transition { from: BreakerState::Open, to: BreakerState::Closed }));
        assert_eq!(guard.reset(now), None);
    }

    #[test]
    fn a_read_reports_the_end_of_the_cool_down() {
        let now = Instant::ZERO;
        let mut guard = tripped(now);
        let later = now + BreakerConfig::default().cool_down;
        assert_eq!(
            guard.state(later),
            (BreakerState::HalfOpen, Some(Transition { from: BreakerState::Open, to: BreakerState::HalfOpen }))
        );
        assert_eq!(guard.state(later), (BreakerState::HalfOpen, None));
    }

    #[test]
    fn the_budget_runs_out() {
        let now = Instant::ZERO;
        let mut guard = CallGuard::new(BreakerConfig::default(), RetryBudget::new(2, 1, now));
        assert!(guard.try_spend_retry(now));
        assert!(guard.try_spend_retry(now));
        assert!(!guard.try_spend_retry(now));
        assert!(guard.try_spend_retry(now + Duration::from_secs(1)));
    }
}
