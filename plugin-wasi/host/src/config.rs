//! Host configuration: sandbox limits and fault handling.

use core::time::Duration;

use dbguard_core::retry::RetryPolicy;

/// Limits and fault handling for every plugin a [`crate::PluginHost`] runs.
///
/// The defaults suit retry policies and health checks: 16 MiB of memory per instance, 50 ms per
/// `decide` call, 5 s per health check, quarantine after 3 consecutive faults. What a plugin
/// sends across the boundary is limited too (see [`SandboxLimits`]); every limit can be set
/// from `DBGUARD_PLUGIN_*` variables with [`HostConfig::with_env_vars`].
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub(crate) memory_limit: usize,
    pub(crate) max_memories: usize,
    pub(crate) max_instances: usize,
    pub(crate) max_tables: usize,
    pub(crate) max_live_instances: u32,
    pub(crate) call_timeout: Duration,
    pub(crate) instantiate_timeout: Duration,
    pub(crate) check_timeout: Duration,
    pub(crate) fuel: Option<u64>,
    pub(crate) quarantine_after: u32,
    pub(crate) max_retry_delay: Duration,
    pub(crate) max_idle_instances: usize,
    pub(crate) fallback_policy: RetryPolicy,
    pub(crate) rng_seed: u64,
    pub(crate) limits: SandboxLimits,
    pub(crate) guest_threads: usize,
}

/// What one plugin may send across the boundary, and how much of the host it may use per call.
///
/// Whatever exceeds a byte or count limit is refused with a fault
/// ([`crate::PluginError::LimitExceeded`]), never truncated silently; log lines over the rate
/// are dropped and counted instead, so a chatty plugin keeps working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Longest check name, in bytes (default 128).
    pub max_name_bytes: usize,
    /// Longest check message or give-up reason, in bytes (default 4 KiB).
    pub max_message_bytes: usize,
    /// Longest observed-value unit, in bytes (default 32).
    pub max_unit_bytes: usize,
    /// Longest log line, in bytes (default 1 KiB).
    pub max_log_line_bytes: usize,
    /// Log lines per second each plugin may write, sustained (default 10).
    pub log_lines_per_second: u32,
    /// Log lines a plugin may write in a burst above the rate (default 50).
    pub log_burst: u32,
    /// `log` calls one guest call may make, written or dropped (default 1000); one more is a
    /// fault. Dropping is cheap, but every call still copies its line into the host.
    pub max_log_calls_per_call: u32,
    /// Queries one health check may run (default 16).
    pub max_queries_per_check: u32,
    /// Bytes of query results one health check may receive, all queries together (default 1 MiB).
    pub max_query_bytes_per_check: usize,
    /// The shortest delay a retry policy's `retry-after` is held to (default 10 ms).
    pub min_retry_delay: Duration,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            max_name_bytes: 128,
            max_message_bytes: 4 << 10,
            max_unit_bytes: 32,
            max_log_line_bytes: 1 << 10,
            log_lines_per_second: 10,
            log_burst: 50,
            max_log_calls_per_call: 1000,
            max_queries_per_check: 16,
            max_query_bytes_per_check: 1 << 20,
            min_retry_delay: Duration::from_millis(10),
        }
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            memory_limit: 16 << 20,
            max_memories: 2,
            max_instances: 16,
            max_tables: 16,
            max_live_instances: 256,
            call_timeout: Duration::from_millis(50),
            instantiate_timeout: Duration::from_secs(1),
            check_timeout: Duration::from_secs(5),
            fuel: None,
            quarantine_after: 3,
            max_retry_delay: Duration::from_secs(600),
            max_idle_instances: std::thread::available_parallelism().map_or(4, |n| n.get().max(2)),
            fallback_policy: RetryPolicy::default(),
            rng_seed: 0x5EED_D1CE_0000_0001,
            limits: SandboxLimits::default(),
            guest_threads: std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)),
        }
    }
}

impl HostConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Total linear memory one plugin instance may use, in bytes (default 16 MiB).
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes.max(64 << 10);
        self
    }

    /// How long one `decide` call may run before it is interrupted (default 50 ms).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long instantiating a plugin (its start-up code) may take (default 1 s).
    pub fn instantiate_timeout(mut self, timeout: Duration) -> Self {
        self.instantiate_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long one health check may run, queries included (default 5 s).
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Fuel (roughly, WebAssembly instructions) per call, on top of the deadline; `None`
    /// (the default) meters nothing and costs nothing.
    pub fn fuel(mut self, fuel: Option<u64>) -> Self {
        self.fuel = fuel;
        self
    }

    /// Consecutive faults after which a plugin is quarantined (default 3, at least 1).
    pub fn quarantine_after(mut self, faults: u32) -> Self {
        self.quarantine_after = faults.max(1);
        self
    }

    /// The longest delay a retry policy may ask for; longer is an invalid decision
    /// (default 10 minutes).
    pub fn max_retry_delay(mut self, delay: Duration) -> Self {
        self.max_retry_delay = delay;
        self
    }

    /// Warm instances kept per plugin for reuse (default: the number of CPUs).
    pub fn max_idle_instances(mut self, count: usize) -> Self {
        self.max_idle_instances = count.max(1);
        self
    }

    /// Instances alive at once across all plugins; sizes the pooling allocator (default 256).
    pub fn max_live_instances(mut self, count: u32) -> Self {
        self.max_live_instances = count.max(4);
        self
    }

    /// The built-in schedule used when no plugin is active or a plugin faults.
    pub fn fallback_policy(mut self, policy: RetryPolicy) -> Self {
        self.fallback_policy = policy;
        self
    }

    /// Seed for the randomness handed to plugins and to the fallback schedule.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = seed;
        self
    }

    /// The boundary limits (defaults: [`SandboxLimits::default`]).
    pub fn limits(mut self, limits: SandboxLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Threads that run retry-policy calls (default: the number of CPUs, 2 to 8). Every guest
    /// call runs on a thread the host owns, outside any async runtime, so a caller can stop
    /// waiting for a guest without losing one of its own threads.
    pub fn guest_threads(mut self, count: usize) -> Self {
        self.guest_threads = count.clamp(1, 64);
        self
    }

    /// The boundary limits in force.
    pub fn get_limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// The health-check timeout.
    pub fn get_check_timeout(&self) -> Duration {
        self.check_timeout
    }

    /// The call timeout.
    pub fn get_call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The memory limit in bytes.
    pub fn get_memory_limit(&self) -> usize {
        self.memory_limit
    }
}
