//! What each plugin store holds: a WASI context with nothing behind it, the resource limiter,
//! the RNG handed to the plugin, its log budget and, for health checks, the caller's query
//! function with the check's budget of queries, bytes and time.

use std::sync::Arc;
use std::time::Instant;

use dbguard_core::rng::{RandomSource, SeededRng};
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use crate::SandboxLimits;
use crate::bindings::{self, health, retry};
use crate::log::{Admit, LogBudget, escape_controls};
use crate::query::{QueryFailure, QueryFn};
use crate::sandbox::{Violation, wasi_ctx};

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

/// What one health check may still use: queries, result bytes and time.
pub(crate) struct CheckBudget {
    pub(crate) query: Arc<dyn QueryFn>,
    pub(crate) deadline: Instant,
    pub(crate) queries_left: u32,
    pub(crate) bytes_left: usize,
}

/// The data of one plugin store.
pub(crate) struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    rng: SeededRng,
    pub(crate) plugin: Arc<str>,
    pub(crate) check: Option<CheckBudget>,
    log_budget: Arc<LogBudget>,
    /// `log` calls in the current guest call (reset when the store is armed for a call).
    pub(crate) log_calls: u32,
    limits: SandboxLimits,
    clock: std::time::Instant,
}

impl StoreData {
    pub(crate) fn new(
        config: &crate::HostConfig,
        plugin: Arc<str>,
        log_budget: Arc<LogBudget>,
        seed: u64,
        clock: std::time::Instant,
    ) -> Self {
        Self {
            wasi: wasi_ctx(seed),
            table: ResourceTable::new(),
            limiter: Limiter::new(config),
            rng: SeededRng::new(seed),
            plugin,
            check: None,
            log_budget,
            log_calls: 0,
            limits: config.limits,
            clock,
        }
    }

    /// Writes one plugin line: over-long lines and too many calls trap, lines over the rate are dropped and
    /// counted, control characters are escaped, and the plugin is named in every line.
    fn log(&mut self, level: tracing::Level, message: &str) -> wasmtime::Result<()> {
        self.log_calls = self.log_calls.saturating_add(1);
        if self.log_calls > self.limits.max_log_calls_per_call {
            return Err(Violation::Limit(format!(
                "more than {} log calls in one call",
                self.limits.max_log_calls_per_call
            ))
            .trap());
        }
        let max = self.limits.max_log_line_bytes;
        if message.len() > max {
            return Err(Violation::Limit(format!("a log line of {} bytes (at most {max})", message.len())).trap());
        }
        let dropped_before = match self.log_budget.admit() {
            Admit::Drop => return Ok(()),
            Admit::Write => None,
            Admit::WriteAfterDrops(dropped) => Some(dropped),
        };
        let message = escape_controls(message);
        let plugin = &*self.plugin;
        if let Some(dropped) = dropped_before {
            tracing::warn!(target: "dbguard::plugin", plugin, dropped, "plugin log lines dropped over the rate limit so far");
        }
        match level {
            tracing::Level::ERROR => tracing::error!(target: "dbguard::plugin", plugin, "{message}"),
            tracing::Level::WARN => tracing::warn!(target: "dbguard::plugin", plugin, "{message}"),
            tracing::Level::INFO => tracing::info!(target: "dbguard::plugin", plugin, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(target: "dbguard::plugin", plugin, "{message}"),
            _ => tracing::trace!(target: "dbguard::plugin", plugin, "{message}"),
        }
        Ok(())
    }

    /// Runs one query within the check's budget. Errors the plugin may handle (bad SQL, a
    /// refusal) come back as `Err(message)`; a spent budget, an oversized result or a query
    /// that ran past its time traps the guest, so it counts as a fault.
    fn query(
        &mut self,
        sql: &str,
        params: &[String],
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<health::dbguard::plugin::types::Rows, String>> {
        let limits = self.limits;
        let Some(budget) = self.check.as_mut() else {
            return Ok(Err("no query function is available".to_owned()));
        };
        if budget.queries_left == 0 {
            return Err(
                Violation::Limit(format!("more than {} queries in one check", limits.max_queries_per_check)).trap()
            );
        }
        budget.queries_left -= 1;
        let left = budget.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Violation::SlowQuery("the check's time ran out before the query".to_owned()).trap());
        }
        let asked = core::time::Duration::from_millis(u64::from(timeout_ms.max(1)));
        let timeout = asked.min(left);
        let rows = match budget.query.query(sql, params, timeout) {
            Ok(rows) => rows,
            Err(QueryFailure::TimedOut(message)) => {
                return Err(Violation::SlowQuery(format!(
                    "cut at {} ms: {}",
                    timeout.as_millis(),
                    escape_controls(&message)
                ))
                .trap());
            }
            Err(QueryFailure::TooLarge(message)) => return Err(Violation::Limit(message).trap()),
            Err(QueryFailure::Failed(message)) => return Ok(Err(message)),
        };
        let size = rows.byte_size();
        if size > budget.bytes_left {
            return Err(Violation::Limit(format!(
                "query results of more than {} bytes in one check",
                limits.max_query_bytes_per_check
            ))
            .trap());
        }
        budget.bytes_left -= size;
        Ok(Ok(bindings::rows_to_wit(rows)))
    }
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl retry::dbguard::plugin::types::Host for StoreData {}

impl retry::RetryPolicyImports for StoreData {
    fn random(&mut self) -> wasmtime::Result<u64> {
        Ok(self.rng.next_u64())
    }

    fn log(&mut self, level: retry::dbguard::plugin::types::LogLevel, message: String) -> wasmtime::Result<()> {
        StoreData::log(self, bindings::retry_level(level), &message)
    }
}

impl health::dbguard::plugin::types::Host for StoreData {}

impl health::HealthCheckImports for StoreData {
    fn query(
        &mut self,
        sql: String,
        params: Vec<String>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<health::dbguard::plugin::types::Rows, String>> {
        StoreData::query(self, &sql, &params, timeout_ms)
    }

    fn now(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn log(&mut self, level: health::dbguard::plugin::types::LogLevel, message: String) -> wasmtime::Result<()> {
        StoreData::log(self, bindings::health_level(level), &message)
    }
}
