//! What each plugin store holds: an empty WASI context, the resource limiter, the RNG handed to
//! the plugin and, for health checks, the caller's query function.

use std::sync::Arc;

use dbguard_core::rng::{RandomSource, SeededRng};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{self, health, retry};
use crate::query::QueryFn;

/// Enforces the per-store limits; memory is capped in total across all of the instance's
/// memories, not only per memory, and a refusal is remembered so a trap can be reported as a
/// memory-limit fault.
pub(crate) struct Limiter {
    limits: StoreLimits,
    total_limit: usize,
    total: usize,
    pub(crate) exceeded: bool,
}

impl Limiter {
    pub(crate) fn new(config: &crate::HostConfig) -> Self {
        let limits = StoreLimitsBuilder::new()
            .memory_size(config.memory_limit)
            .memories(config.max_memories)
            .instances(config.max_instances)
            .tables(config.max_tables)
            .table_elements(100_000)
            .build();
        Self { limits, total_limit: config.memory_limit, total: 0, exceeded: false }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let within_memory = self.limits.memory_growing(current, desired, maximum)?;
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if within_memory && total <= self.total_limit {
            self.total = total;
            Ok(true)
        } else {
            self.exceeded = true;
            Ok(false)
        }
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The data of one plugin store.
pub(crate) struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    rng: SeededRng,
    pub(crate) plugin: Arc<str>,
    pub(crate) query: Option<Arc<dyn QueryFn>>,
    clock: std::time::Instant,
}

impl StoreData {
    pub(crate) fn new(config: &crate::HostConfig, plugin: Arc<str>, seed: u64, clock: std::time::Instant) -> Self {
        Self {
            // Grants nothing: no preopened directories, no environment, no arguments, no
            // stdio, no sockets. Rust guests import WASI through std even when they use none.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(config),
            rng: SeededRng::new(seed),
            plugin,
            query: None,
            clock,
        }
    }

    fn log(&self, level: tracing::Level, message: &str) {
        // Plugins do not get to flood the log.
        let message = truncate(message, 1024);
        let plugin = &*self.plugin;
        match level {
            tracing::Level::ERROR => tracing::error!(target: "dbguard::plugin", plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(target: "dbguard::plugin", plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(target: "dbguard::plugin", plugin, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(target: "dbguard::plugin", plugin, "{message}"),
            _ => tracing::trace!(target: "dbguard::plugin", plugin, "{message}"),
        }
    }
}

pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl retry::dbguard::plugin::types::Host for StoreData {}

impl retry::RetryPolicyImports for StoreData {
    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn log(&mut self, level: retry::dbguard::plugin::types::LogLevel, message: String) {
        StoreData::log(self, bindings::retry_level(level), &message);
    }
}

impl health::dbguard::plugin::types::Host for StoreData {}

impl health::HealthCheckImports for StoreData {
    fn query(
        &mut self,
        sql: String,
        params: Vec<String>,
        timeout_ms: u32,
    ) -> Result<health::dbguard::plugin::types::Rows, String> {
        let Some(query) = self.query.clone() else {
            return Err("no query function is available".to_owned());
        };
        let timeout = core::time::Duration::from_millis(u64::from(timeout_ms));
        query.query(&sql, &params, timeout).map(bindings::rows_to_wit)
    }

    fn now(&mut self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn log(&mut self, level: health::dbguard::plugin::types::LogLevel, message: String) {
        StoreData::log(self, bindings::health_level(level), &message);
    }
}
