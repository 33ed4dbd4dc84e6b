//! Serde helpers shared by the public types.

use core::time::Duration;

use serde::Serializer;

/// Serializes a duration as whole milliseconds.
pub(crate) fn duration_ms<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// Serializes an optional duration as whole milliseconds or null.
pub(crate) fn opt_duration_ms<S: Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => duration_ms(duration, serializer),
        None => serializer.serialize_none(),
    }
}
