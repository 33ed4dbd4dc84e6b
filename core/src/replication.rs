//! How far behind a standby is, in time, from WAL positions alone.
//!
//! A standby's own "age of the last replayed transaction" reads as caught up whenever it has
//! replayed all it received, so a standby whose primary went away (killed, or replaced by a
//! promoted sibling) looks fresh forever. Comparing its replay position with the primary's
//! current position does not have that blind spot: the host samples the primary's position
//! each interval, and a standby's lag is the time since the primary passed the position the
//! standby has replayed.

use core::time::Duration;
use std::collections::VecDeque;

use crate::time::Instant;

/// The most samples kept, whatever the window: a bound on memory for tiny intervals.
const MAX_SAMPLES: usize = 4096;

/// The primary's WAL position over recent time, for [`PrimaryWalHistory::lag`].
#[derive(Debug, Clone)]
pub struct PrimaryWalHistory {
    /// `(sampled at, position in bytes)`, oldest first, positions never decreasing.
    samples: VecDeque<(Instant, u64)>,
    window: Duration,
}

impl PrimaryWalHistory {
    /// An empty history that keeps samples for `window` (at least two are always kept).
    pub fn new(window: Duration) -> Self {
        Self { samples: VecDeque::new(), window }
    }

    /// Records the primary's current WAL position (`pg_current_wal_lsn()`, in bytes) sampled
    /// at `at`. A position lower than the last one means another primary took over from an
    /// earlier point: the history starts again from it.
    pub fn record(&mut self, at: Instant, position: u64) {
        if self.samples.back().is_some_and(|&(_, last)| position < last) {
            self.samples.clear();
        }
        self.samples.push_back((at, position));
        while self.samples.len() > 2
            && (self.samples.len() > MAX_SAMPLES
                || self.samples.front().is_some_and(|&(first, _)| at.saturating_duration_since(first) > self.window))
        {
            self.samples.pop_front();
        }
    }

    /// How far behind, at `now`, a standby is that has replayed up to `replayed`: zero when it
    /// has replayed everything the primary had written at the last sample; otherwise the time
    /// since the primary passed `replayed`, interpolated between the samples around it, or at
    /// least the age of the oldest sample kept when `replayed` is older than all of them.
    /// `None` when the history cannot tell (no sample, or only one, newer than `replayed`).
    pub fn lag(&self, now: Instant, replayed: u64) -> Option<Duration> {
        let &(_, newest) = self.samples.back()?;
        if replayed >= newest {
            return Some(Duration::ZERO);
        }
        let after = self.samples.iter().position(|&(_, position)| position > replayed)?;
        if after == 0 {
            let (oldest, _) = self.samples[0];
            return (self.samples.len() >= 2).then(|| now.saturating_duration_since(oldest));
        }
        let (t1, p1) = self.samples[after - 1];
        let (t2, p2) = self.samples[after];
        // p1 <= replayed < p2, so the fraction is in [0, 1).
        let fraction = (replayed - p1) as f64 / (p2 - p1) as f64;
        let passed_at = t1.saturating_add(t2.saturating_duration_since(t1).mul_f64(fraction));
        Some(now.saturating_duration_since(passed_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_nanos(n * 1_000_000)
    }

    #[test]
    fn a_standby_at_the_primary_position_is_not_behind() {
        let mut history = PrimaryWalHistory::new(Duration::from_secs(10));
        history.record(ms(0), 1000);
        assert_eq!(history.lag(ms(0), 1000), Some(Duration::ZERO));
        assert_eq!(history.lag(ms(5000), 1200), Some(Duration::ZERO), "an idle primary leaves nothing to replay");
    }

    #[test]
    fn a_paused_standby_falls_behind_by_the_time_since_the_primary_passed_it() {
        let mut history = PrimaryWalHistory::new(Duration::from_secs(10));
        for step in 0..=10 {
            history.record(ms(step * 100), 1000 + step * 100);
        }
        // Replayed up to 1450: the primary passed it halfway between 400 ms and 500 ms.
        assert_eq!(history.lag(ms(1000), 1450), Some(Duration::from_millis(550)));
        // Still there two seconds later.
        history.record(ms(3000), 5000);
        assert_eq!(history.lag(ms(3000), 1450), Some(Duration::from_millis(2550)));
    }

    #[test]
    fn a_standby_older_than_the_window_is_at_least_the_window_behind() {
        let mut history = PrimaryWalHistory::new(Duration::from_secs(1));
        for step in 0..=30 {
            history.record(ms(step * 100), 1000 + step * 100);
        }
        let lag = history.lag(ms(3000), 10).expect("known to be far behind");
        assert!(lag >= Duration::from_secs(1), "{lag:?}");
    }

    #[test]
    fn one_sample_cannot_tell_how_far_behind() {
        let mut history = PrimaryWalHistory::new(Duration::from_secs(10));
        assert_eq!(history.lag(ms(0), 0), None);
        history.record(ms(0), 1000);
        assert_eq!(history.lag(ms(10), 900), None);
    }

    #[test]
    fn a_new_primary_from_an_earlier_position_restarts_the_history() {
        let mut history = PrimaryWalHistory::new(Duration::from_secs(10));
        history.record(ms(0), 5000);
        history.record(ms(100), 6000);
        history.record(ms(200), 4000);
        assert_eq!(history.lag(ms(200), 4000), Some(Duration::ZERO));
        history.record(ms(300), 4100);
        assert_eq!(history.lag(ms(300), 4050), Some(Duration::from_millis(50)));
    }
}
