//! Time in the native host.
//!
//! Every monotonic time read, sleep, timeout and ticker of the library is tokio's
//! (`tokio::time`), never `std::time::Instant` or `std::thread::sleep`, so one seam drives all
//! of it: tests on tokio's paused clock (`start_paused`) move every deadline the library has.
//! Core works on [`dbguard_core::Instant`] (monotonic nanoseconds); [`Clock`] maps tokio's
//! clock onto it, and the retry loop, the breaker and the budget read time only through a
//! [`Clock`]. Wall-clock time is read in one place, [`rfc3339_now`], for timestamps in reports
//! and error bodies.

use std::time::{Duration, SystemTime};

use dbguard_core::Instant;

/// Monotonic time for core, measured from when the clock was created.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self { origin: tokio::time::Instant::now() }
    }

    /// Now, for core.
    pub fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Sleeps until `deadline`. Wakes early are re-checked against the clock rather than trusted.
    pub async fn sleep_until(&self, deadline: Instant) {
        loop {
            let now = self.now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(deadline.saturating_duration_since(now)).await;
        }
    }

    /// Awaits `future` for at most `limit`; `None` when the time ran out first.
    pub async fn timeout<T>(&self, limit: Duration, future: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(limit, future).await.ok()
    }

    /// Awaits `future` until `deadline` at most; `None` when the time ran out first. Reads no
    /// clock unless the future has to wait.
    pub async fn timeout_at<T>(&self, deadline: Instant, future: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout_at(self.to_tokio(deadline), future).await.ok()
    }

    /// Core's instant as a tokio instant (for timeouts).
    pub fn to_tokio(&self, instant: Instant) -> tokio::time::Instant {
        self.origin + Duration::from_nanos(instant.as_nanos())
    }
}

/// Wall-clock time as RFC 3339 (UTC, millisecond precision), for reports and error bodies.
/// A time before 1970 reads as the epoch rather than failing.
pub fn rfc3339(at: SystemTime) -> String {
    dbguard_core::time::rfc3339_utc(at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

/// Now as RFC 3339.
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn sleeps_until_the_deadline_on_paused_time() {
        let clock = Clock::new();
        let deadline = clock.now() + Duration::from_secs(4);
        clock.sleep_until(deadline).await;
        assert!(clock.now() >= deadline);
    }
}
