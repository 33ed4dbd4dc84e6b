//! The validated retry policy configuration.

use core::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How randomness spreads the delay between retries (n = retries so far, from 0;
/// `t = min(cap, base · multiplierⁿ)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// Exactly `t`: 1 s, 2 s, 4 s with the defaults.
    #[default]
    None,
    /// Uniform in `[0, t]`.
    Full,
    /// `t/2 + U(0, t/2)`.
    Equal,
    /// `min(cap, U(base, previous · 3))`, independent of n.
    Decorrelated,
}

impl Jitter {
    /// The accepted spellings, for error messages.
    pub const ACCEPTED: &'static str = "none, full, equal, decorrelated";

    /// Parses a configuration value (case-insensitive).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "none" | "off" => Some(Self::None),
            "full" => Some(Self::Full),
            "equal" => Some(Self::Equal),
            "decorrelated" => Some(Self::Decorrelated),
            _ => None,
        }
    }
}

/// Why a [`RetryPolicy`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryPolicyError {
    /// `max_retries` above [`RetryPolicy::MAX_RETRIES_LIMIT`].
    #[error("max retries {0} is above the limit of {limit}", limit = RetryPolicy::MAX_RETRIES_LIMIT)]
    TooManyRetries(u32),
    /// A zero base delay would turn backoff into a busy loop.
    #[error("base delay must be greater than zero")]
    ZeroBaseDelay,
    /// The cap is below the base delay.
    #[error("max delay ({max_ms} ms) must be at least the base delay ({base_ms} ms)")]
    MaxBelowBase {
        /// The base delay, in milliseconds.
        base_ms: u128,
        /// The cap, in milliseconds.
        max_ms: u128,
    },
    /// The multiplier is below 1, not finite, or absurdly large.
    #[error("multiplier must be a finite number between 1 and 100")]
    BadMultiplier,
    /// A zero total budget would give up before the first retry.
    #[error("total time budget must be greater than zero")]
    ZeroBudget,
}

/// A validated retry policy. Build with [`RetryPolicy::builder`] or use [`RetryPolicy::default`]
/// (3 retries, 1 s base, 30 s cap, ×2, no jitter, no total budget: 1 s, 2 s, 4 s, give up).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, JsonSchema)]
pub struct RetryPolicy {
    max_retries: u32,
    #[schemars(with = "u64")]
    #[serde(serialize_with = "crate::serde_util::duration_ms")]
    base_delay: Duration,
    #[schemars(with = "u64")]
    #[serde(serialize_with = "crate::serde_util::duration_ms")]
    max_delay: Duration,
    multiplier: f64,
    jitter: Jitter,
    #[schemars(with = "Option<u64>")]
    #[serde(serialize_with = "crate::serde_util::opt_duration_ms")]
    total_budget: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: Jitter::None,
            total_budget: None,
        }
    }
}

impl RetryPolicy {
    /// The largest accepted number of retries.
    pub const MAX_RETRIES_LIMIT: u32 = 100;

    /// A builder starting from the defaults.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder { policy: Self::default() }
    }

    /// Retries after the first try. `DB_RETRY_MAX_ATTEMPTS` sets this: the classic "3 attempts"
    /// are three retries (1 s, 2 s, 4 s).
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// The first delay.
    pub fn base_delay(&self) -> Duration {
        self.base_delay
    }

    /// No delay is ever longer than this.
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// Growth factor per retry.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The jitter mode.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// Give up once a retry would start later than this after the first failure.
    pub fn total_budget(&self) -> Option<Duration> {
        self.total_budget
    }

    /// A copy with another number of retries (validated).
    pub fn with_max_retries(self, max_retries: u32) -> Result<Self, RetryPolicyError> {
        Self { max_retries, ..self }.validated()
    }

    fn validated(self) -> Result<Self, RetryPolicyError> {
        if self.max_retries > Self::MAX_RETRIES_LIMIT {
            return Err(RetryPolicyError::TooManyRetries(self.max_retries));
        }
        if self.base_delay.is_zero() {
            return Err(RetryPolicyError::ZeroBaseDelay);
        }
        if self.max_delay < self.base_delay {
            return Err(RetryPolicyError::MaxBelowBase {
                base_ms: self.base_delay.as_millis(),
                max_ms: self.max_delay.as_millis(),
            });
        }
        if !self.multiplier.is_finite() || !(1.0..=100.0).contains(&self.multiplier) {
            return Err(RetryPolicyError::BadMultiplier);
        }
        if self.total_budget.is_some_and(|budget| budget.is_zero()) {
            return Err(RetryPolicyError::ZeroBudget);
        }
        Ok(self)
    }
}

/// Builds a [`RetryPolicy`]; [`RetryPolicyBuilder::build`] validates every field.
#[derive(Debug, Clone)]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
}

impl RetryPolicyBuilder {
    /// Retries after the first try (at most 100).
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.policy.max_retries = max_retries;
        self
    }

    /// The first delay (greater than zero).
    pub fn base_delay(mut self, base_delay: Duration) -> Self {
        self.policy.base_delay = base_delay;
        self
    }

    /// The cap on any delay (at least the base delay).
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.policy.max_delay = max_delay;
        self
    }

    /// Growth factor per retry (1 to 100).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.policy.multiplier = multiplier;
        self
    }

    /// The jitter mode.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.policy.jitter = jitter;
        self
    }

    /// An optional cap on the time from the first failure to the start of the last retry.
    pub fn total_budget(mut self, total_budget: Option<Duration>) -> Self {
        self.policy.total_budget = total_budget;
        self
    }

    /// Validates and returns the policy.
    pub fn build(self) -> Result<RetryPolicy, RetryPolicyError> {
        self.policy.validated()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_rejects_bad_values() {
        let ms = Duration::from_millis;
        assert_eq!(RetryPolicy::builder().max_retries(101).build(), Err(RetryPolicyError::TooManyRetries(101)));
        assert_eq!(RetryPolicy::builder().base_delay(Duration::ZERO).build(), Err(RetryPolicyError::ZeroBaseDelay));
        assert_eq!(
            RetryPolicy::builder().base_delay(ms(500)).max_delay(ms(100)).build(),
            Err(RetryPolicyError::MaxBelowBase { base_ms: 500, max_ms: 100 })
        );
        for bad in [0.5, f64::NAN, f64::INFINITY, 1000.0] {
            assert_eq!(RetryPolicy::builder().multiplier(bad).build(), Err(RetryPolicyError::BadMultiplier));
        }
        assert_eq!(
            RetryPolicy::builder().total_budget(Some(Duration::ZERO)).build(),
            Err(RetryPolicyError::ZeroBudget)
        );
        assert!(RetryPolicy::builder().max_retries(100).build().is_ok());
    }

    #[test]
    fn jitter_parses_case_insensitively() {
        assert_eq!(Jitter::parse("FULL"), Some(Jitter::Full));
        assert_eq!(Jitter::parse(" decorrelated "), Some(Jitter::Decorrelated));
        assert_eq!(Jitter::parse("fulll"), None);
    }
}
