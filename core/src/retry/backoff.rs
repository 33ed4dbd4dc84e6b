//! Delay schedules: pure functions of the policy, the retry count and the RNG.
//!
//! Exposed so that retry-policy plugins can reuse exactly the schedule the built-in policy uses.

use core::time::Duration;

use super::policy::{Jitter, RetryPolicy};
use crate::rng::RandomSource;
use crate::time::duration_to_nanos;

/// `min(cap, base · multiplierⁿ)` for `retries_so_far = n`, without jitter.
pub fn nominal_delay(policy: &RetryPolicy, retries_so_far: u32) -> Duration {
    let base = duration_to_nanos(policy.base_delay()) as f64;
    let cap = duration_to_nanos(policy.max_delay());
    // powi saturates to infinity for large exponents; min() below brings it back to the cap.
    let exponent = i32::try_from(retries_so_far).unwrap_or(i32::MAX);
    let nominal = base * policy.multiplier().powi(exponent);
    Duration::from_nanos(clamp_nanos(nominal, cap))
}

/// The delay before retry number `retries_so_far + 1`, with the policy's jitter applied.
///
/// `previous` is the delay used before the last retry (zero before the first); only the
/// decorrelated mode reads it. The result is always within `[0, max_delay]`.
pub fn delay_for<R: RandomSource + ?Sized>(
    policy: &RetryPolicy,
    retries_so_far: u32,
    previous: Duration,
    rng: &mut R,
) -> Duration {
    let cap = duration_to_nanos(policy.max_delay());
    let nominal = duration_to_nanos(nominal_delay(policy, retries_so_far));
    let nanos = match policy.jitter() {
        Jitter::None => nominal,
        Jitter::Full => uniform(rng, 0, nominal),
        Jitter::Equal => {
            let half = nominal / 2;
            half + uniform(rng, 0, nominal - half)
        }
        Jitter::Decorrelated => {
            let base = duration_to_nanos(policy.base_delay());
            let previous = duration_to_nanos(previous).max(base);
            uniform(rng, base, previous.saturating_mul(3)).min(cap)
        }
    };
    Duration::from_nanos(nanos.min(cap))
}

/// A value uniformly distributed in `[low, high]` (returns `low` when `high <= low`).
fn uniform<R: RandomSource + ?Sized>(rng: &mut R, low: u64, high: u64) -> u64 {
    if high <= low {
        return low;
    }
    let span = (high - low) as f64;
    low + clamp_nanos(rng.next_unit() * span, high - low)
}

fn clamp_nanos(value: f64, cap: u64) -> u64 {
    if value.is_nan() || value <= 0.0 {
        0
    } else if value >= cap as f64 {
        cap
    } else {
        value as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    #[test]
    fn default_schedule_is_one_two_four_seconds() {
        let policy = RetryPolicy::default();
        let mut rng = SeededRng::new(1);
        let delays: Vec<_> = (0..3).map(|n| delay_for(&policy, n, Duration::ZERO, &mut rng)).collect();
        assert_eq!(delays, [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(4)]);
    }

    #[test]
    fn nominal_delay_is_capped_even_for_huge_exponents() {
        let policy = RetryPolicy::default();
        assert_eq!(nominal_delay(&policy, 5), Duration::from_secs(30));
        assert_eq!(nominal_delay(&policy, u32::MAX), Duration::from_secs(30));
    }
}
