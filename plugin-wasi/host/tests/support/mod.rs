//! Shared harness: the guest components (SDK examples, fixtures), built for `wasm32-wasip2`
//! once per test binary by the tests crate's harness.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use dbguard_core::ErrorClass;
use dbguard_core::retry::AttemptInfo;

/// Attempt info for a failure of `class` at `attempt`, idempotent, with an optional code.
pub fn info(class: ErrorClass, attempt: u32, code: Option<&str>) -> AttemptInfo {
    AttemptInfo {
        class,
        code: code.map(str::to_owned),
        attempt,
        elapsed: Duration::ZERO,
        previous_delay: Duration::ZERO,
        idempotent: true,
    }
}
