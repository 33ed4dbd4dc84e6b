//! `DBGUARD_PLUGIN_*` variables: the sandbox limits an operator may change, each validated
//! against a range so that a typo cannot switch a limit off.

use core::time::Duration;

use crate::{HostConfig, PluginError};

/// The prefix every sandbox variable shares.
pub const ENV_PREFIX: &str = "DBGUARD_PLUGIN_";

/// A variable's setter: parses and range-checks the value, then applies it.
type Apply = fn(&mut HostConfig, &str) -> Result<(), String>;

/// Every sandbox variable, its setter and what it accepts. `DBGUARD_PLUGIN_DIR` is not a
/// sandbox limit and is read by the service, not here.
const VARIABLES: &[(&str, Apply)] = &[
    ("DBGUARD_PLUGIN_MEMORY_LIMIT", |c, v| {
        c.memory_limit = bytes(v, 1 << 20, 1 << 30)?;
        Ok(())
    }),
    ("DBGUARD_PLUGIN_CALL_TIMEOUT", |c, v| {
        c.call_timeout = duration(v, Duration::from_millis(1), Duration::from_secs(10))?;
        Ok(())
    }),
    ("DBGUARD_PLUGIN_CHECK_TIMEOUT", |c, v| {
        c.check_timeout = duration(v, Duration::from_millis(1), Duration::from_secs(60))?;
        Ok(())
    }),
    ("DBGUARD_PLUGIN_QUARANTINE_AFTER", |c, v| {
        c.quarantine_after = count(v, 1, 1000)?;
        Ok(())
    }),
    ("DBGUARD_PLUGIN_MAX_MESSAGE_BYTES", |c, v| {
        c.limits.max_message_bytes = bytes(v, 64, 1 << 20)?;
        Ok(())
    }),
    ("DBGUARD_PLUGIN_MAX_LOG_LINE_BYTES", |c, v| {
        c.limits.max_log_line_bytes = bytes(v, 64, 64 << 10)?;
        Ok(())
    }),
    ("DBGUARD_PLUGIN_LOG_LINES_PER_SECOND", |c, v| {
        c.limits.log_lines_per_second = count(v, 0, 10_000)?;
        Ok(())
    }),
    ("DBGUARD_PLUGIN_LOG_BURST", |c, v| {
        c.limits.log_burst = count(v, 0, 100_000)?;
        Ok(())
    }),
    ("DBGUARD_PLUGIN_MAX_LOG_CALLS", |c, v| {
        c.limits.max_log_calls_per_call = count(v, 1, 1_000_000)?;
        Ok(())
    }),
    ("DBGUARD_PLUGIN_MAX_QUERIES", |c, v| {
        c.limits.max_queries_per_check = count(v, 1, 1000)?;
        Ok(())
    }),
    ("DBGUARD_PLUGIN_MAX_QUERY_BYTES", |c, v| {
        c.limits.max_query_bytes_per_check = bytes(v, 1 << 10, 64 << 20)?;
        Ok(())
    }),
    ("DBGUARD_PLUGIN_MIN_RETRY_DELAY", |c, v| {
        c.limits.min_retry_delay = duration(v, Duration::ZERO, Duration::from_secs(10))?;
        Ok(())
    }),
];

impl HostConfig {
    /// Applies the `DBGUARD_PLUGIN_*` sandbox variables found in `vars` on top of `self`.
    ///
    /// Unset variables keep their value; a set one must parse and lie in its range, or the
    /// whole call fails with [`PluginError::InvalidConfig`] naming the variable, the value and
    /// what is valid. Durations take `ms`, `s` or `m` (plain numbers are seconds); byte sizes
    /// take `KiB` or `MiB` (plain numbers are bytes). `DBGUARD_PLUGIN_DIR` is ignored here.
    ///
    /// ```
    /// use dbguard_plugin_host::HostConfig;
    ///
    /// let vars = [("DBGUARD_PLUGIN_CALL_TIMEOUT".to_owned(), "20ms".to_owned())];
    /// let config = HostConfig::default().with_env_vars(vars).expect("valid");
    /// assert_eq!(config.get_call_timeout().as_millis(), 20);
    /// let bad = [("DBGUARD_PLUGIN_MAX_QUERIES".to_owned(), "lots".to_owned())];
    /// assert!(HostConfig::default().with_env_vars(bad).is_err());
    /// ```
    pub fn with_env_vars<I, K, V>(mut self, vars: I) -> Result<Self, PluginError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        for (name, value) in vars {
            let (name, value) = (name.as_ref(), value.as_ref());
            if !name.starts_with(ENV_PREFIX) || name == "DBGUARD_PLUGIN_DIR" {
                continue;
            }
            let Some((_, apply)) = VARIABLES.iter().find(|(known, _)| *known == name) else {
                let known: Vec<&str> = VARIABLES.iter().map(|(known, _)| *known).collect();
                return Err(PluginError::InvalidConfig(format!(
                    "{name} is not a plugin sandbox variable; known: DBGUARD_PLUGIN_DIR, {}",
                    known.join(", ")
                )));
            };
            apply(&mut self, value.trim())
                .map_err(|valid| PluginError::InvalidConfig(format!("{name}={value:?}: {valid}")))?;
        }
        Ok(self)
    }

    /// [`HostConfig::with_env_vars`] over the process environment.
    pub fn with_process_env(self) -> Result<Self, PluginError> {
        self.with_env_vars(
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }
}

fn count(value: &str, min: u32, max: u32) -> Result<u32, String> {
    let valid = || format!("expected a whole number from {min} to {max}");
    let parsed: u32 = value.parse().map_err(|_| valid())?;
    if (min..=max).contains(&parsed) { Ok(parsed) } else { Err(valid()) }
}

/// `"500ms"` → `("500", "ms")`; the unit is trimmed and may be empty.
fn number_and_unit(value: &str) -> (&str, &str) {
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (digits, unit) = value.split_at(split);
    (digits, unit.trim())
}

fn bytes(value: &str, min: usize, max: usize) -> Result<usize, String> {
    let valid = || format!("expected a size from {min} to {max} bytes, as bytes or with KiB / MiB");
    let (digits, unit) = number_and_unit(value);
    let scale: usize = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        _ => return Err(valid()),
    };
    let parsed = digits.parse::<usize>().ok().and_then(|n| n.checked_mul(scale)).ok_or_else(valid)?;
    if (min..=max).contains(&parsed) { Ok(parsed) } else { Err(valid()) }
}

fn duration(value: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let valid = || format!("expected a duration from {min:?} to {max:?}, e.g. 500ms, 2s or 1m");
    let (digits, unit) = number_and_unit(value);
    let amount: u64 = digits.parse().map_err(|_| valid())?;
    let parsed = match unit {
        // A plain number is seconds, as everywhere in dbguard's configuration.
        "" | "s" => Duration::from_secs(amount),
        "ms" => Duration::from_millis(amount),
        "m" => Duration::from_secs(amount.checked_mul(60).ok_or_else(valid)?),
        _ => return Err(valid()),
    };
    if (min..=max).contains(&parsed) { Ok(parsed) } else { Err(valid()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(name: &str, value: &str) -> Result<HostConfig, PluginError> {
        HostConfig::default().with_env_vars([(name, value)])
    }

    #[test]
    fn values_parse_with_their_units() {
        let config = HostConfig::default()
            .with_env_vars([
                ("DBGUARD_PLUGIN_MEMORY_LIMIT", "32MiB"),
                ("DBGUARD_PLUGIN_CHECK_TIMEOUT", "2"),
                ("DBGUARD_PLUGIN_MAX_QUERY_BYTES", "64KiB"),
                ("DBGUARD_PLUGIN_MIN_RETRY_DELAY", "0ms"),
                ("DBGUARD_PLUGIN_LOG_LINES_PER_SECOND", "0"),
                ("DBGUARD_PLUGIN_DIR", "/anywhere"),
                ("PATH", "/bin"),
            ])
            .expect("valid");
        assert_eq!(config.memory_limit, 32 << 20);
        assert_eq!(config.check_timeout, Duration::from_secs(2));
        assert_eq!(config.limits.max_query_bytes_per_check, 64 << 10);
        assert_eq!(config.limits.min_retry_delay, Duration::ZERO);
        assert_eq!(config.limits.log_lines_per_second, 0);
    }

    #[test]
    fn bad_values_name_the_variable_and_what_is_valid() {
        for (name, value, valid) in [
            ("DBGUARD_PLUGIN_MAX_QUERIES", "0", "from 1 to 1000"),
            ("DBGUARD_PLUGIN_MAX_QUERIES", "-3", "whole number"),
            ("DBGUARD_PLUGIN_CALL_TIMEOUT", "fast", "e.g. 500ms"),
            ("DBGUARD_PLUGIN_CALL_TIMEOUT", "0ms", "from 1ms"),
            ("DBGUARD_PLUGIN_MEMORY_LIMIT", "16GB", "KiB / MiB"),
            ("DBGUARD_PLUGIN_MEMORY_LIMIT", "99999999999999999999MiB", "KiB / MiB"),
            ("DBGUARD_PLUGIN_LOG_BURST", "", "whole number"),
        ] {
            let error = apply(name, value).unwrap_err().to_string();
            assert!(error.contains(name) && error.contains(valid), "{name}={value}: {error}");
        }
        let error = apply("DBGUARD_PLUGIN_MEMORY", "16MiB").unwrap_err().to_string();
        assert!(error.contains("DBGUARD_PLUGIN_MEMORY_LIMIT"), "lists the known names: {error}");
    }
}
