//! The requirement gate: a test that cannot find a component it needs says so loudly and skips,
//! unless `DBGUARD_REQUIRE_ALL=1`, where a missing component is a failure (CI never skips).

use std::io::Write;

/// The variable that turns a missing component from a skip into a failure.
pub const REQUIRE_ALL_VAR: &str = "DBGUARD_REQUIRE_ALL";

/// Whether every component is required (`DBGUARD_REQUIRE_ALL=1`, `true` or `yes`).
pub fn require_all() -> bool {
    std::env::var(REQUIRE_ALL_VAR)
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

/// Reports that `test` cannot run because a component is missing.
///
/// Prints `SKIP <test>: <reason>` to stderr (even when the test harness captures output) and
/// returns, so the caller can return early; when
/// [`require_all`] is true it panics with the same text instead.
///
/// # Panics
/// When `DBGUARD_REQUIRE_ALL=1`.
#[track_caller]
pub fn skip(test: &str, reason: &str) {
    if require_all() {
        panic!("{test}: required component missing ({REQUIRE_ALL_VAR}=1): {reason}");
    }
    // Written to the stderr handle directly, not through `eprintln!`: the test harness captures
    // the macros' output of passing tests, and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// Unwraps a `Result`, or reports a missing component through [`skip`] and returns from the
/// enclosing function (which must return `()`).
///
/// Only for results whose error means "component missing"; a bug must still fail the test.
///
/// ```no_run
/// fn my_test() {
///     let bins = dbguard_tests::skip_unless!("my_test", dbguard_tests::PgBinaries::locate());
///     println!("using {}", bins.dir().display());
/// }
/// ```
#[macro_export]
macro_rules! skip_unless {
    ($test:expr, $result:expr $(,)?) => {
        match $result {
            ::std::result::Result::Ok(value) => value,
            ::std::result::Result::Err(reason) => {
                $crate::skip($test, &reason.to_string());
                return;
            }
        }
    };
}
