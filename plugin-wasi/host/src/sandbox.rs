//! The WASI a plugin sees: linked because Rust guests import it through std, but with nothing
//! ambient behind it and nothing that waits.
//!
//! - **No clocks.** `wasi:clocks` reads a virtual clock that stays at zero (the Unix epoch for
//!   the wall clock); the contract's only clock is the health-check world's `now`.
//! - **No real randomness.** `wasi:random` returns bytes from a generator seeded per store,
//!   and at most [`MAX_WASI_RANDOM_BYTES`] per call.
//! - **No waiting.** Epoch interruption cannot reach a guest blocked inside a host call, so
//!   the functions that wait (`wasi:io/poll`'s `poll` and `pollable.block`, which is what
//!   `std::thread::sleep` ends in) are replaced by ones that trap at once with a [`Violation`].
//!
//! Everything else keeps wasmtime-wasi's empty context: no files, sockets, environment,
//! arguments or stdio.

use core::time::Duration;

use rand::SeedableRng;
use wasmtime::component::Linker;
use wasmtime_wasi::clocks::{HostMonotonicClock, HostWallClock};
use wasmtime_wasi::{WasiCtx, WasiView};

use crate::PluginError;

/// The `wasi:io` version wasmtime-wasi 48 links; the shadowing below must name the same one.
const WASI_IO_POLL: &str = "wasi:io/poll@0.2.12";

/// The most bytes one `wasi:random` call may ask for (wasmtime-wasi allows 64 MiB).
pub(crate) const MAX_WASI_RANDOM_BYTES: u64 = 64 << 10;

/// Why the host trapped a guest on purpose. Carried inside the `wasmtime::Error` of the trap
/// and turned into a [`PluginError`] by [`Violation::into_plugin_error`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum Violation {
    /// A WASI function that waits.
    #[error("the plugin called `{0}`, which waits")]
    Blocking(&'static str),
    /// A byte or count limit.
    #[error("{0}")]
    Limit(String),
    /// A query that ran past its timeout, or past the check's remaining time.
    #[error("{0}")]
    SlowQuery(String),
}

impl Violation {
    pub(crate) fn into_plugin_error(self) -> PluginError {
        match self {
            Self::Blocking(function) => PluginError::Blocking(function.to_owned()),
            Self::Limit(message) => PluginError::LimitExceeded(message),
            Self::SlowQuery(message) => PluginError::SlowQuery(message),
        }
    }

    /// The violation as the error a host function returns to trap the guest.
    pub(crate) fn trap(self) -> wasmtime::Error {
        wasmtime::Error::new(self)
    }
}

/// A clock that never moves: guests get no time source besides the contract's `now`.
struct StoppedClock;

impl HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// The WASI context of one store: stopped clocks, seeded randomness, nothing else.
pub(crate) fn wasi_ctx(seed: u64) -> WasiCtx {
    let mut builder = WasiCtx::builder();
    builder
        .wall_clock(StoppedClock)
        .monotonic_clock(StoppedClock)
        .secure_random(rand::rngs::StdRng::seed_from_u64(seed))
        .insecure_random(rand::rngs::StdRng::seed_from_u64(seed.rotate_left(17)))
        .insecure_random_seed(u128::from(seed))
        .max_random_size(MAX_WASI_RANDOM_BYTES);
    builder.build()
}

/// Links WASI (synchronous) into `linker`, then replaces every function that waits with one
/// that traps.
pub(crate) fn add_wasi<T: WasiView + 'static>(linker: &mut Linker<T>) -> Result<(), PluginError> {
    let error = |e: wasmtime::Error| PluginError::Instantiation(format!("linker: {e:#}"));
    wasmtime_wasi::p2::add_to_linker_sync(linker).map_err(error)?;
    linker.allow_shadowing(true);
    let mut poll = linker.instance(WASI_IO_POLL).map_err(error)?;
    for (function, shown) in [("poll", "wasi:io/poll.poll"), ("[method]pollable.block", "wasi:io/poll.pollable.block")]
    {
        poll.func_new(function, move |_, _, _, _| Err(Violation::Blocking(shown).trap())).map_err(error)?;
    }
    linker.allow_shadowing(false);
    Ok(())
}
