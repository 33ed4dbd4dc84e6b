//! Why a plugin was refused or a call failed.

/// Why a plugin could not be loaded, or why one call into it failed.
///
/// Load errors are grouped by who is at fault: the bytes (not a component, does not compile),
/// the contract (wrong world, imports the host does not provide), or the plugin's behaviour
/// at the verification gate (trap, timeout, memory, bad answer). The previously active
/// plugin stays active whenever a load fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly binary: {0}")]
    NotWasm(String),
    /// The bytes are a core WebAssembly module; plugins must be components.
    #[error("this is a core WebAssembly module, not a component; build the plugin for wasm32-wasip2")]
    CoreModule,
    /// The component is malformed or uses features the host does not enable.
    #[error("the component does not compile: {0}")]
    Compile(String),
    /// The component imports something the host does not provide (a filesystem, a socket, a
    /// function outside the contract).
    #[error("the component imports something the host does not provide: {0}")]
    UnsupportedImport(String),
    /// The component does not export what the world requires (for instance, a health check
    /// offered as a retry policy).
    #[error("the component does not implement the {expected} world: {detail}")]
    WrongWorld {
        /// The world the host expected.
        expected: &'static str,
        /// What wasmtime found missing or mistyped.
        detail: String,
    },
    /// Instantiation failed for another reason (start function, resource limits).
    #[error("the component could not be instantiated: {0}")]
    Instantiation(String),
    /// The plugin trapped (panic, `unreachable`, out-of-bounds access).
    #[error("the plugin trapped: {0}")]
    Trap(String),
    /// The plugin ran past its deadline and was interrupted.
    #[error("the plugin did not return within {0:?}")]
    Timeout(core::time::Duration),
    /// The plugin used up its fuel.
    #[error("the plugin used up its fuel")]
    OutOfFuel,
    /// The plugin tried to grow its memory past the limit.
    #[error("the plugin tried to use more than {limit} bytes of memory")]
    MemoryLimit {
        /// The limit in bytes.
        limit: usize,
    },
    /// The plugin returned an answer the host does not accept.
    #[error("the plugin returned an invalid answer: {0}")]
    InvalidDecision(String),
    /// The plugin is quarantined after repeated faults; reload it to try again.
    #[error("the plugin is quarantined after {0} consecutive faults")]
    Quarantined(u32),
    /// The plugin called a WASI function that waits (sleep, poll, block). Epoch interruption
    /// cannot stop a host call, so the sandbox refuses every wait instead of honouring it.
    #[error("the plugin tried to wait in `{0}`; plugins may not sleep, poll or block")]
    Blocking(String),
    /// The plugin sent more than a limit allows across the boundary (bytes of a string or a
    /// list, queries per check, bytes of query results).
    #[error("the plugin exceeded a sandbox limit: {0}")]
    LimitExceeded(String),
    /// A query of a health-check plugin ran past its timeout or the check's time budget.
    #[error("a query of the plugin ran past its time: {0}")]
    SlowQuery(String),
    /// A sandbox setting (a `DBGUARD_PLUGIN_*` variable) has a value the host does not accept.
    #[error("invalid plugin sandbox setting: {0}")]
    InvalidConfig(String),
}

impl PluginError {
    /// Whether this error describes something the plugin did while running (as opposed to the
    /// bytes or the contract being wrong).
    pub fn is_runtime_fault(&self) -> bool {
        matches!(
            self,
            Self::Trap(_)
                | Self::Timeout(_)
                | Self::OutOfFuel
                | Self::MemoryLimit { .. }
                | Self::InvalidDecision(_)
                | Self::Blocking(_)
                | Self::LimitExceeded(_)
                | Self::SlowQuery(_)
        )
    }
}
