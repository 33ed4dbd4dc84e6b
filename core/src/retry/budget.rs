//! A retry budget shared by many callers, so an outage does not become a retry storm.

use core::time::Duration;

use crate::time::Instant;

const MILLI: u64 = 1000;

/// A token bucket: every retry spends one token; tokens refill at a steady rate up to a cap.
///
/// Driven by `now` like everything in core. Tokens are kept in thousandths so refills are
/// exact without floating point; the count can never go below zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryBudget {
    capacity_milli: u64,
    tokens_milli: u64,
    refill_milli_per_sec: u64,
    last_refill: Instant,
}

impl RetryBudget {
    /// A full bucket of `capacity` retries refilling at `refill_per_sec`, observed first at `now`.
    pub fn new(capacity: u32, refill_per_sec: u32, now: Instant) -> Self {
        let capacity_milli = u64::from(capacity) * MILLI;
        Self {
            capacity_milli,
            tokens_milli: capacity_milli,
            refill_milli_per_sec: u64::from(refill_per_sec) * MILLI,
            last_refill: now,
        }
    }

    /// Takes one retry token if there is one. Returns whether the retry may go ahead.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens_milli >= MILLI {
            self.tokens_milli -= MILLI;
            true
        } else {
            false
        }
    }

    /// Whole retries available at `now`.
    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        u32::try_from(self.tokens_milli / MILLI).unwrap_or(u32::MAX)
    }

    /// The bucket's size in retries.
    pub fn capacity(&self) -> u32 {
        u32::try_from(self.capacity_milli / MILLI).unwrap_or(u32::MAX)
    }

    fn refill(&mut self, now: Instant) {
        // A `now` earlier than the last refill adds nothing and does not move the mark back.
        let elapsed = now.saturating_duration_since(self.last_refill);
        if elapsed.is_zero() {
            return;
        }
        let added = refill_amount(self.refill_milli_per_sec, elapsed);
        self.tokens_milli = self.tokens_milli.saturating_add(added).min(self.capacity_milli);
        self.last_refill = now;
    }
}

fn refill_amount(milli_per_sec: u64, elapsed: Duration) -> u64 {
    let nanos = u128::from(milli_per_sec) * elapsed.as_nanos() / 1_000_000_000;
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_then_refills() {
        let t0 = Instant::ZERO;
        let mut budget = RetryBudget::new(2, 1, t0);
        assert!(budget.try_withdraw(t0));
        assert!(budget.try_withdraw(t0));
        assert!(!budget.try_withdraw(t0));
        let half = t0 + Duration::from_millis(500);
        assert!(!budget.try_withdraw(half));
        assert!(budget.try_withdraw(t0 + Duration::from_secs(1)));
        assert_eq!(budget.available(t0 + Duration::from_secs(100)), 2);
    }

    #[test]
    fn backwards_time_adds_nothing() {
        let mut budget = RetryBudget::new(1, 10, Instant::from_nanos(5_000_000_000));
        assert!(budget.try_withdraw(Instant::from_nanos(5_000_000_000)));
        assert!(!budget.try_withdraw(Instant::ZERO));
    }
}
