//! The `log` import: a rate limit per plugin and escaping, so a plugin can neither flood the
//! host's log nor forge lines in it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::SandboxLimits;

/// A token bucket shared by every instance of one plugin: `rate` lines per second sustained,
/// `burst` above it. Lines over the budget are dropped and counted.
pub(crate) struct LogBudget {
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
    dropped: AtomicU64,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Whether a line was dropped since the last one that passed (the next pass says so).
    dropping: bool,
}

/// What to do with one line.
pub(crate) enum Admit {
    /// Write it.
    Write,
    /// Write it, and say how many lines were dropped before it.
    WriteAfterDrops(u64),
    /// Drop it.
    Drop,
}

impl LogBudget {
    pub(crate) fn new(limits: &SandboxLimits) -> Self {
        let burst = f64::from(limits.log_burst.max(1));
        Self {
            rate: f64::from(limits.log_lines_per_second),
            burst,
            bucket: Mutex::new(Bucket { tokens: burst, refilled: Instant::now(), dropping: false }),
            dropped: AtomicU64::new(0),
        }
    }

    /// Takes one line's token, if there is one.
    pub(crate) fn admit(&self) -> Admit {
        let Ok(mut bucket) = self.bucket.lock() else { return Admit::Drop };
        let now = Instant::now();
        let earned = now.saturating_duration_since(bucket.refilled).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + earned).min(self.burst);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            if std::mem::take(&mut bucket.dropping) {
                return Admit::WriteAfterDrops(self.dropped.load(Ordering::Relaxed));
            }
            return Admit::Write;
        }
        bucket.dropping = true;
        self.dropped.fetch_add(1, Ordering::Relaxed);
        Admit::Drop
    }

    /// Lines dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// `text` with every control character (CR, LF, tab, ESC, DEL, C1) written as a visible
/// escape, so one call is always one line and cannot move the cursor or forge a new line.
pub(crate) fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain text"), "plain text");
        assert_eq!(
            escape_controls("ok\r\n2026-01-01T00:00:00Z  INFO dbguard: forged\x1b[2J\u{85}\x7f"),
            "ok\\r\\n2026-01-01T00:00:00Z  INFO dbguard: forged\\u{1b}[2J\\u{85}\\u{7f}"
        );
    }

    #[test]
    fn lines_over_the_burst_are_dropped_and_counted() {
        let limits = SandboxLimits { log_lines_per_second: 0, log_burst: 3, ..SandboxLimits::default() };
        let budget = LogBudget::new(&limits);
        let admitted = (0..10).filter(|_| !matches!(budget.admit(), Admit::Drop)).count();
        assert_eq!(admitted, 3);
        assert_eq!(budget.dropped(), 7);
    }
}
