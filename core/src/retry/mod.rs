//! Retrying: the policy, its schedules, the per-operation state machine, the shared budget
//! and the circuit breaker.

pub mod backoff;
mod breaker;
mod budget;
mod guard;
mod policy;
mod state;

pub use breaker::{Admission, BreakerConfig, BreakerState, CircuitBreaker};
pub use budget::RetryBudget;
pub use guard::{CallGuard, Transition};
pub use policy::{Jitter, RetryPolicy, RetryPolicyBuilder, RetryPolicyError};
pub use state::{AttemptInfo, Decision, GiveUpReason, Idempotency, PolicyVerdict, RetryState, builtin_verdict};
