//! The one place that reads clocks and sleeps: a monotonic clock for core's `now`, the wall
//! clock for RFC 3339 timestamps, and the retry loop that drives core's [`RetryState`].
//!
//! Under WASI both clocks come from the runtime (`clock_time_get`), and `std::thread::sleep`
//! is `poll_oneoff` on a clock subscription, so this module is all the host needs from it.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbguard_core::{Decision, GiveUpReason, Idempotency, Instant, RetryPolicy, RetryState, SeededRng};
use sea_orm::DbErr;

use crate::error::{Classified, DbFailure};

/// The process's monotonic clock, as core's [`Instant`] (nanoseconds since process start).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: std::time::Instant,
}

impl Clock {
    /// Starts the clock; `now()` counts from here.
    pub(crate) fn start() -> Self {
        Self { origin: std::time::Instant::now() }
    }

    /// Monotonic time since [`Clock::start`], for core.
    pub(crate) fn now(&self) -> Instant {
        let nanos = self.origin.elapsed().as_nanos();
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Blocks until `now()` reaches `deadline`. The runtime may wake us early or late, so the
    /// deadline is compared against the clock after every wake rather than trusting the timer.
    pub(crate) fn sleep_until(&self, deadline: Instant) {
        loop {
            let remaining = deadline.saturating_duration_since(self.now());
            if remaining.is_zero() {
                return;
            }
            std::thread::sleep(remaining);
        }
    }
}

/// Measures one stretch of work on the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch(std::time::Instant);

impl Stopwatch {
    /// Starts measuring.
    pub(crate) fn start() -> Self {
        Self(std::time::Instant::now())
    }

    /// Time since [`Stopwatch::start`].
    pub(crate) fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }

    /// Time since [`Stopwatch::start`], in (fractional) milliseconds.
    pub(crate) fn elapsed_ms(&self) -> f64 {
        self.elapsed().as_secs_f64() * 1000.0
    }
}

/// The wall clock now, as RFC 3339 UTC with milliseconds (`2026-01-31T12:00:00.123Z`).
/// A clock set before 1970 reads as the epoch rather than failing.
pub(crate) fn wall_clock_rfc3339() -> String {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    dbguard_core::time::rfc3339_utc(since_epoch)
}

/// Runs database calls under core's retry policy, sleeping between attempts.
///
/// One `Retrier` serves one command: each call starts from a clean retry count (core's
/// `on_success` resets it), so every statement gets the policy's full allowance.
pub(crate) struct Retrier {
    clock: Clock,
    state: RetryState<SeededRng>,
}

impl Retrier {
    /// A retrier for idempotent reads (everything this host runs is a read).
    pub(crate) fn new(clock: Clock, policy: RetryPolicy) -> Self {
        let rng = SeededRng::new(random_seed());
        Self { clock, state: RetryState::with_rng(policy, Idempotency::Idempotent, rng) }
    }

    /// Runs `op` until it succeeds or core gives up. Between attempts it sleeps until core's
    /// deadline; only `SQLITE_BUSY` / `SQLITE_LOCKED` (and whatever else core deems transient)
    /// are retried.
    pub(crate) fn run<T>(&mut self, mut op: impl FnMut() -> Result<T, DbErr>) -> Result<T, DbFailure> {
        let mut retries = 0;
        loop {
            match op() {
                Ok(value) => {
                    self.state.on_success(self.clock.now());
                    return Ok(value);
                }
                Err(err) => {
                    let classified = Classified::from_db_err(&err);
                    match self.state.on_failure(self.clock.now(), classified.class) {
                        Decision::RetryAt(deadline) => {
                            retries += 1;
                            self.clock.sleep_until(deadline);
                        }
                        Decision::GiveUp(reason) => {
                            return Err(self.give_up(classified, reason, retries));
                        }
                    }
                }
            }
        }
    }

    fn give_up(&mut self, classified: Classified, reason: GiveUpReason, retries: u32) -> DbFailure {
        // Leave the state clean for the next statement of this command.
        self.state.on_success(self.clock.now());
        DbFailure { classified, retry_count: retries, reason, last_attempt: Some(wall_clock_rfc3339()) }
    }
}

/// A fresh seed for jitter, so that many instances started together do not retry in step.
/// `RandomState` is keyed from the runtime's `random_get`.
fn random_seed() -> u64 {
    RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_until_past_deadline_returns() {
        let clock = Clock::start();
        clock.sleep_until(Instant::ZERO);
        let later = clock.now() + Duration::from_millis(2);
        clock.sleep_until(later);
        assert!(clock.now() >= later);
    }
}
