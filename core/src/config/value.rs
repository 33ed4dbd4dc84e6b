//! Parsers for single environment values.

use core::time::Duration;

use super::error::ConfigError;

/// Parses a duration: plain seconds (`30`) or a number with `ms`, `s` or `m` (`500ms`, `2s`, `1m`),
/// then checks it lies in `min..=max`.
pub(crate) fn duration(
    variable: &'static str,
    raw: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let expected = || {
        format!(
            "a duration between {} and {}: whole seconds (\"30\") or with a unit (\"500ms\", \"2s\", \"1m\")",
            human(min),
            human(max)
        )
    };
    let invalid = || ConfigError::Invalid { variable, value: raw.to_owned(), expected: expected() };
    let text = raw.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(invalid());
    }
    let amount: u64 = digits.parse().map_err(|_| invalid())?;
    let parsed = match unit {
        "" | "s" => Duration::from_secs(amount),
        "ms" => Duration::from_millis(amount),
        "m" => amount.checked_mul(60).map(Duration::from_secs).ok_or_else(invalid)?,
        _ => return Err(invalid()),
    };
    if parsed < min || parsed > max {
        return Err(invalid());
    }
    Ok(parsed)
}

/// Parses `true/false/1/0/yes/no` (case-insensitive).
pub(crate) fn boolean(variable: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError::Invalid {
            variable,
            value: raw.to_owned(),
            expected: "one of true, false, 1, 0, yes, no".to_owned(),
        }),
    }
}

/// Parses a whole number in `min..=max`.
pub(crate) fn integer(variable: &'static str, raw: &str, min: u32, max: u32) -> Result<u32, ConfigError> {
    let digits = raw.trim();
    // `u32::from_str` also takes a leading `+`; a configuration value is plain digits.
    let parsed = digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse::<u32>().ok()).flatten();
    parsed.filter(|n| (min..=max).contains(n)).ok_or_else(|| ConfigError::Invalid {
        variable,
        value: raw.to_owned(),
        expected: format!("a whole number from {min} to {max}"),
    })
}

fn human(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms.is_multiple_of(60_000) && ms >= 60_000 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::from_secs(3600);

    #[test]
    fn durations() {
        let ok = |raw| duration("V", raw, MIN, MAX);
        assert_eq!(ok("30"), Ok(Duration::from_secs(30)));
        assert_eq!(ok("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(ok("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(ok(" 1m "), Ok(Duration::from_secs(60)));
        for bad in ["", "ms", "-1", "1.5", "10x", "5 sec", "0", "61m", "99999999999999999999", "18446744073709551615m"]
        {
            let err = ok(bad).expect_err(bad);
            assert_eq!(err.variable(), "V");
            assert!(err.to_string().contains("a duration between 1ms and 60m"), "{err}");
        }
    }

    #[test]
    fn booleans() {
        for (raw, want) in [("TRUE", true), ("1", true), ("yes", true), ("false", false), ("0", false), ("No", false)] {
            assert_eq!(boolean("V", raw), Ok(want));
        }
        assert!(boolean("V", "on").is_err());
        assert!(boolean("V", "").is_err());
    }

    #[test]
    fn integers() {
        assert_eq!(integer("V", "5", 1, 10), Ok(5));
        for bad in ["0", "11", "-1", "x", "", "4294967296"] {
            assert!(integer("V", bad, 1, 10).is_err(), "{bad}");
        }
    }
}
