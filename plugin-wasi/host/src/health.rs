//! Health-check plugins.

use std::sync::Arc;

use dbguard_core::health::CheckResult;

use crate::PluginError;
use crate::bindings::{self, health};
use crate::host::{PluginHandle, Shared};
use crate::query::QueryFn;
use crate::store::StoreData;

/// A verified health-check plugin.
///
/// Every [`HealthCheckPlugin::check`] runs on a fresh instance: checks are infrequent, a fresh
/// instance costs tens of microseconds, and no state leaks from one check to the next.
#[derive(Clone)]
pub struct HealthCheckPlugin {
    shared: Arc<Shared>,
    pre: health::HealthCheckPre<StoreData>,
    handle: PluginHandle,
    name: Arc<str>,
}

impl core::fmt::Debug for HealthCheckPlugin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HealthCheckPlugin").field("handle", &self.handle).finish_non_exhaustive()
    }
}

impl HealthCheckPlugin {
    pub(crate) fn new(shared: Arc<Shared>, pre: health::HealthCheckPre<StoreData>, handle: PluginHandle) -> Self {
        let name = Arc::from(handle.name.as_str());
        Self { shared, pre, handle, name }
    }

    /// Which plugin this is.
    pub fn handle(&self) -> &PluginHandle {
        &self.handle
    }

    /// Runs the check once, within [`crate::HostConfig::check_timeout`], with `query` as the
    /// plugin's only way to reach the database. `database_type` is `postgres` or `sqlite`.
    ///
    /// The deadline covers the whole check, but a plugin blocked inside `query` cannot be
    /// interrupted: `query` must honour the timeout it is given.
    pub fn check(&self, database_type: &str, query: Arc<dyn QueryFn>) -> Result<CheckResult, PluginError> {
        let timeout = self.shared.config.check_timeout;
        let mut store = self.shared.new_store(&self.name)?;
        store.data_mut().query = Some(query);
        let bindings = self.pre.instantiate(&mut store).map_err(|error| {
            match self.shared.fault(&error, &store, self.shared.config.instantiate_timeout) {
                PluginError::Trap(message) => PluginError::Instantiation(message),
                fault => fault,
            }
        })?;
        self.shared.arm(&mut store, timeout)?;
        let context = health::dbguard::plugin::types::CheckContext {
            database_type: database_type.to_owned(),
            now_ns: u64::try_from(self.shared.clock.elapsed().as_nanos()).unwrap_or(u64::MAX),
        };
        let result =
            bindings.call_check(&mut store, &context).map_err(|error| self.shared.fault(&error, &store, timeout))?;
        if result.name.is_empty() || result.name.len() > 256 {
            return Err(PluginError::InvalidDecision(format!("check name of {} bytes (1 to 256)", result.name.len())));
        }
        if result.observed_value.is_some_and(|v| !v.is_finite()) {
            return Err(PluginError::InvalidDecision("observed value is not a finite number".to_owned()));
        }
        Ok(bindings::check_result_from_wit(result))
    }
}
