//! Health-check plugins.

use std::sync::Arc;
use std::time::Instant;

use dbguard_core::health::CheckResult;

use crate::PluginError;
use crate::bindings::{self, health};
use crate::faults::Faults;
use crate::host::{ANSWER_MARGIN, PluginHandle, Shared};
use crate::log::LogBudget;
use crate::query::QueryFn;
use crate::retry::PluginStats;
use crate::store::{CheckBudget, StoreData};

/// Check names a plugin may not use: the host's own checks are named `database:*`.
pub const RESERVED_CHECK_PREFIX: &str = "database:";

/// A verified health-check plugin.
///
/// Every check runs on a fresh instance, on one of the host's guest threads: checks are
/// infrequent, a fresh instance costs tens of microseconds, and no state leaks from one check
/// to the next. Clones share the plugin's counters.
#[derive(Clone)]
pub struct HealthCheckPlugin {
    shared: Arc<Shared>,
    pre: health::HealthCheckPre<StoreData>,
    handle: PluginHandle,
    name: Arc<str>,
    faults: Arc<Faults>,
    log_budget: Arc<LogBudget>,
}

impl core::fmt::Debug for HealthCheckPlugin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HealthCheckPlugin").field("handle", &self.handle).finish_non_exhaustive()
    }
}

impl HealthCheckPlugin {
    pub(crate) fn new(shared: Arc<Shared>, pre: health::HealthCheckPre<StoreData>, handle: PluginHandle) -> Self {
        let name = Arc::from(handle.name.as_str());
        let faults = Arc::new(Faults::new(shared.config.quarantine_after));
        let log_budget = Arc::new(LogBudget::new(&shared.config.limits));
        Self { shared, pre, handle, name, faults, log_budget }
    }

    /// Which plugin this is.
    pub fn handle(&self) -> &PluginHandle {
        &self.handle
    }

    /// Runs the check once, within [`crate::HostConfig::check_timeout`], with `query` as the
    /// plugin's only way to reach the database. `database_type` is `postgres` or `sqlite`.
    /// Not counted: this is what the gate runs. Services call [`HealthCheckPlugin::run`].
    ///
    /// The check runs on a guest thread and the caller waits at most the check's time plus a
    /// small margin, whatever the plugin does. Its queries share the check's budget: the
    /// time left (each query's timeout is cut to it), [`crate::SandboxLimits`]'s queries and
    /// result bytes. A spent budget, a query cut at its timeout, an oversized answer, a
    /// reserved name (`database:*`) or a wait in WASI is a fault.
    pub fn check(&self, database_type: &str, query: Arc<dyn QueryFn>) -> Result<CheckResult, PluginError> {
        let config = &self.shared.config;
        let wait = config.instantiate_timeout + config.check_timeout + ANSWER_MARGIN;
        let (plugin, database_type) = (self.clone(), database_type.to_owned());
        self.shared
            .check_threads
            .run(wait, move || plugin.check_here(&database_type, query))
            .unwrap_or(Err(PluginError::Timeout(config.check_timeout)))
    }

    /// [`HealthCheckPlugin::check`], counted: a fault is counted and logged, and after
    /// [`crate::HostConfig::quarantine_after`] consecutive faults the plugin is quarantined
    /// ([`PluginError::Quarantined`] at once) until it is loaded again. The result is named
    /// `plugin:<plugin name>/<check name>`, so a report shows whose check it is.
    pub fn run(&self, database_type: &str, query: Arc<dyn QueryFn>) -> Result<CheckResult, PluginError> {
        self.faults.begin()?;
        match self.check(database_type, query) {
            Ok(mut result) => {
                self.faults.on_success();
                result.name = format!("plugin:{}/{}", self.name, result.name);
                Ok(result)
            }
            Err(error) => {
                let (consecutive, quarantined) = self.faults.on_fault(&error);
                tracing::warn!(plugin = %self.name, consecutive, quarantined, %error,
                    "health check plugin faulted; reporting the check as failed");
                Err(error)
            }
        }
    }

    /// Counters of this plugin (calls through [`HealthCheckPlugin::run`]).
    pub fn stats(&self) -> PluginStats {
        self.faults.stats(&self.handle, self.log_budget.dropped())
    }

    fn check_here(&self, database_type: &str, query: Arc<dyn QueryFn>) -> Result<CheckResult, PluginError> {
        let config = &self.shared.config;
        let timeout = config.check_timeout;
        let mut store = self.shared.new_store(&self.name, &self.log_budget)?;
        let bindings = self.pre.instantiate(&mut store).map_err(|error| {
            match self.shared.fault(error, &store, config.instantiate_timeout) {
                PluginError::Trap(message) => PluginError::Instantiation(message),
                fault => fault,
            }
        })?;
        self.shared.arm(&mut store, timeout)?;
        store.data_mut().check = Some(CheckBudget {
            query,
            deadline: Instant::now() + timeout,
            queries_left: config.limits.max_queries_per_check,
            bytes_left: config.limits.max_query_bytes_per_check,
        });
        let context = health::dbguard::plugin::types::CheckContext {
            database_type: database_type.to_owned(),
            now_ns: u64::try_from(self.shared.clock.elapsed().as_nanos()).unwrap_or(u64::MAX),
        };
        let result =
            bindings.call_check(&mut store, &context).map_err(|error| self.shared.fault(error, &store, timeout))?;
        validate(&result, &config.limits)?;
        Ok(bindings::check_result_from_wit(result))
    }
}

/// Refuses a result that does not fit the limits, or that claims a built-in name.
fn validate(
    result: &health::dbguard::plugin::types::CheckResult,
    limits: &crate::SandboxLimits,
) -> Result<(), PluginError> {
    let too_long = |what: &str, len: usize, max: usize| {
        Err(PluginError::LimitExceeded(format!("a check {what} of {len} bytes (at most {max})")))
    };
    if result.name.is_empty() {
        return Err(PluginError::InvalidDecision("an empty check name".to_owned()));
    }
    if result.name.len() > limits.max_name_bytes {
        return too_long("name", result.name.len(), limits.max_name_bytes);
    }
    if result.name.starts_with(RESERVED_CHECK_PREFIX) {
        return Err(PluginError::InvalidDecision(format!(
            "the check name {:?} is reserved: `{RESERVED_CHECK_PREFIX}*` names the host's own checks",
            crate::log::escape_controls(&result.name)
        )));
    }
    if let Some(message) = &result.message
        && message.len() > limits.max_message_bytes
    {
        return too_long("message", message.len(), limits.max_message_bytes);
    }
    if let Some(unit) = &result.observed_unit
        && unit.len() > limits.max_unit_bytes
    {
        return too_long("unit", unit.len(), limits.max_unit_bytes);
    }
    if result.observed_value.is_some_and(|v| !v.is_finite()) {
        return Err(PluginError::InvalidDecision("observed value is not a finite number".to_owned()));
    }
    Ok(())
}
