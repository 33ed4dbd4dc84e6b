//! Host configuration: sandbox limits and fault handling.

use core::time::Duration;

use dbguard_core::retry::RetryPolicy;

/// Limits and fault handling for every plugin a [`crate::PluginHost`] runs.
///
/// The defaults suit retry policies and health checks: 16 MiB of memory per instance, 50 ms per
/// `decide` call, 5 s per health check, quarantine after 3 consecutive faults.
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

    /// The call timeout.
    pub fn get_call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// The memory limit in bytes.
    pub fn get_memory_limit(&self) -> usize {
        self.memory_limit
    }
}
