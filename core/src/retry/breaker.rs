//! The circuit breaker: fail fast while the database is unreachable.

use core::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::classify::ErrorClass;
use crate::time::Instant;

/// Breaker tuning. Only failures to reach the database ([`ErrorClass::trips_breaker`]) count;
/// a syntax error proves the database is up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Open after this many consecutive connectivity failures.
    pub consecutive_failures: u32,
    /// Or open when this share of the last `window` calls failed (0 < ratio ≤ 1)…
    pub failure_ratio: f64,
    /// …over a window of this many calls (at most 64)…
    pub window: u32,
    /// …once at least this many calls are in the window.
    pub min_calls: u32,
    /// Stay open this long before letting one probe call through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            window: 20,
            min_calls: 10,
            cool_down: Duration::from_secs(5),
        }
    }
}

/// The breaker's state as reported by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls fail fast until the cool-down ends.
    Open,
    /// One probe call is allowed; its outcome closes or reopens the breaker.
    HalfOpen,
}

/// Whether a call may proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead as the single half-open probe; report its outcome.
    Probe,
    /// Fail fast; the breaker lets a probe through at this instant.
    Rejected {
        /// When the cool-down ends.
        retry_at: Instant,
    },
}

/// A circuit breaker driven by `now`.
///
/// ```text
///            N consecutive failures to connect,
///            or failure ratio ≥ r over the window
///   Closed ───────────────────────────────────────► Open
///     ▲                                              │  cool-down elapses
///     │ probe succeeds                               ▼
///     └──────────────────────────────────────────  HalfOpen ──► Open (probe fails)
/// ```
///
/// Call order for the host: [`CircuitBreaker::admit`] before a call, then
/// [`CircuitBreaker::on_success`] or [`CircuitBreaker::on_failure`] with its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    phase: Phase,
    consecutive: u32,
    /// The last `window` outcomes as bits, newest in bit 0; 1 = connectivity failure.
    outcomes: u64,
    recorded: u32,
    opened_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

impl CircuitBreaker {
    /// A closed breaker. `window` is clamped to 1..=64 and `failure_ratio` to (0, 1].
    pub fn new(config: BreakerConfig) -> Self {
        let config = BreakerConfig {
            window: config.window.clamp(1, 64),
            min_calls: config.min_calls.max(1),
            consecutive_failures: config.consecutive_failures.max(1),
            failure_ratio: if config.failure_ratio.is_finite() { config.failure_ratio.clamp(0.01, 1.0) } else { 1.0 },
            ..config
        };
        Self { config, phase: Phase::Closed, consecutive: 0, outcomes: 0, recorded: 0, opened_total: 0 }
    }

    /// Asks whether a call may start at `now`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.phase {
            Phase::Closed => Admission::Allowed,
            Phase::Open { until } if now >= until => {
                self.phase = Phase::HalfOpen { probe_in_flight: true };
                Admission::Probe
            }
            Phase::Open { until } => Admission::Rejected { retry_at: until },
            Phase::HalfOpen { probe_in_flight: false } => {
                self.phase = Phase::HalfOpen { probe_in_flight: true };
                Admission::Probe
            }
            // One probe at a time: everyone else waits for its verdict a little longer.
            Phase::HalfOpen { probe_in_flight: true } => {
                Admission::Rejected { retry_at: now + self.config.cool_down.min(Duration::from_millis(100)) }
            }
        }
    }

    /// Records a call that reached the database (even if the statement failed for a
    /// non-connectivity reason).
    pub fn on_success(&mut self, _now: Instant) {
        self.consecutive = 0;
        self.record(false);
        if matches!(self.phase, Phase::HalfOpen { .. }) {
            self.close();
        }
    }

    /// Records a failed call. Classes that do not trip the breaker count as successes, except
    /// a connection lost mid-call, which counts as neither.
    pub fn on_failure(&mut self, now: Instant, class: ErrorClass) {
        if !class.trips_breaker() {
            if !class.is_connectivity() {
                self.on_success(now);
            }
            return;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        self.record(true);
        match self.phase {
            Phase::HalfOpen { .. } => self.open(now),
            Phase::Closed if self.should_open() => self.open(now),
            _ => {}
        }
    }

    /// The state at `now` (an open breaker whose cool-down has ended reports half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now >= until => BreakerState::HalfOpen,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether the breaker is settled: closed, with a full window of calls and no failure in it
    /// or in the consecutive count. Then [`CircuitBreaker::admit`] allows and
    /// [`CircuitBreaker::on_success`] changes nothing, so a host that shares the breaker between
    /// threads may skip both on a busy, healthy database (see the property test
    /// `a_settled_breaker_ignores_successes_and_admissions`).
    pub fn is_settled(&self) -> bool {
        self.phase == Phase::Closed
            && self.consecutive == 0
            && self.outcomes == 0
            && self.recorded == self.config.window
    }

    /// How many times the breaker has opened.
    pub fn opened_total(&self) -> u64 {
        self.opened_total
    }

    /// Forces the breaker closed, e.g. after an operator-requested reconnect succeeded.
    pub fn reset(&mut self) {
        self.close();
    }

    fn should_open(&self) -> bool {
        if self.consecutive >= self.config.consecutive_failures {
            return true;
        }
        if self.recorded < self.config.min_calls {
            return false;
        }
        let failures = self.outcomes.count_ones();
        f64::from(failures) / f64::from(self.recorded) >= self.config.failure_ratio
    }

    fn record(&mut self, failed: bool) {
        let mask = if self.config.window == 64 { u64::MAX } else { (1u64 << self.config.window) - 1 };
        self.outcomes = ((self.outcomes << 1) | u64::from(failed)) & mask;
        self.recorded = (self.recorded + 1).min(self.config.window);
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open { until: now + self.config.cool_down };
        self.opened_total += 1;
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.consecutive = 0;
        self.outcomes = 0;
        self.recorded = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig { cool_down: Duration::from_millis(1000), ..BreakerConfig::default() })
    }

    #[test]
    fn opens_after_consecutive_connectivity_failures() {
        let mut b = breaker();
        for i in 0..4 {
            b.on_failure(ms(i), ErrorClass::ConnectionRefused);
            assert_eq!(b.state(ms(i)), BreakerState::Closed);
        }
        b.on_failure(ms(4), ErrorClass::ConnectionRefused);
        assert_eq!(b.state(ms(4)), BreakerState::Open);
        assert_eq!(b.admit(ms(5)), Admission::Rejected { retry_at: ms(1004) });
        assert_eq!(b.opened_total(), 1);
    }

    #[test]
    fn killed_connections_alone_do_not_open_it() {
        let mut b = breaker();
        for i in 0..100 {
            b.on_failure(ms(i), ErrorClass::ConnectionLost);
            b.on_failure(ms(i), ErrorClass::ServerShuttingDown);
        }
        assert_eq!(b.state(ms(100)), BreakerState::Closed);
    }

    #[test]
    fn query_errors_do_not_open_it() {
        let mut b = breaker();
        for i in 0..100 {
            b.on_failure(ms(i), ErrorClass::Syntax);
        }
        assert_eq!(b.state(ms(100)), BreakerState::Closed);
    }

    #[test]
    fn opens_on_failure_ratio_without_a_consecutive_run() {
        let mut b = breaker();
        // Failures at even steps: the 11th call (a failure) makes 6 of the last 11 fail.
        for i in 0..11 {
            if i % 2 == 0 {
                b.on_failure(ms(i), ErrorClass::Timeout);
            } else {
                b.on_success(ms(i));
            }
        }
        assert_eq!(b.state(ms(11)), BreakerState::Open);
        assert!(b.opened_total() == 1);
    }

    #[test]
    fn half_open_probe_closes_or_reopens() {
        let mut b = breaker();
        for i in 0..5 {
            b.on_failure(ms(i), ErrorClass::ConnectionRefused);
        }
        assert_eq!(b.state(ms(1004)), BreakerState::HalfOpen);
        assert_eq!(b.admit(ms(1004)), Admission::Probe);
        // A second caller while the probe is out is still rejected.
        assert!(matches!(b.admit(ms(1005)), Admission::Rejected { .. }));
        b.on_failure(ms(1010), ErrorClass::Timeout);
        assert_eq!(b.state(ms(1010)), BreakerState::Open);
        assert_eq!(b.admit(ms(2010)), Admission::Probe);
        b.on_success(ms(2011));
        assert_eq!(b.state(ms(2011)), BreakerState::Closed);
        assert_eq!(b.admit(ms(2012)), Admission::Allowed);
        assert_eq!(b.opened_total(), 2);
    }
}
