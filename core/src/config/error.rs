//! Configuration errors: each names the variable, shows the offending value (redacted when it
//! may hold a secret) and says what is accepted.

use super::Profile;

/// A configuration value that cannot be used. Every variant names its variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The value does not parse or is outside its limits.
    #[error("{variable}: {value:?} is not valid: expected {expected}")]
    Invalid {
        /// The environment variable.
        variable: &'static str,
        /// The offending value, with any password redacted.
        value: String,
        /// What would be accepted.
        expected: String,
    },
    /// A variable the profile requires is not set.
    #[error("{variable} is required in the {profile} profile: {hint}")]
    Missing {
        /// The environment variable.
        variable: &'static str,
        /// The profile in force.
        profile: Profile,
        /// How to fix it.
        hint: &'static str,
    },
    /// The database URL's scheme is not one dbguard speaks.
    #[error(
        "{variable}: unsupported scheme {scheme:?} in {value:?}: accepted schemes are postgres, postgresql and sqlite"
    )]
    UnsupportedScheme {
        /// The environment variable.
        variable: &'static str,
        /// The scheme found.
        scheme: String,
        /// The URL, with any password redacted.
        value: String,
    },
    /// Two settings contradict each other, or the profile forbids a combination.
    #[error("{variable}: {reason}")]
    Conflict {
        /// The environment variable to change.
        variable: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
}

impl ConfigError {
    /// The variable the error is about.
    pub fn variable(&self) -> &'static str {
        match self {
            Self::Invalid { variable, .. }
            | Self::Missing { variable, .. }
            | Self::UnsupportedScheme { variable, .. }
            | Self::Conflict { variable, .. } => variable,
        }
    }
}
