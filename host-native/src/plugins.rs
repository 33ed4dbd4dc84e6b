//! WebAssembly retry policies and health checks (feature `plugins`) as the manager's seams:
//! an [`ActiveRetryPolicy`] becomes a [`RetryAdvisor`], a [`HealthCheckPlugin`] an
//! [`ExtraCheck`] with fault counting and quarantine.
//!
//! Loading, verifying and swapping components is `dbguard-plugin-host`'s job; watching a
//! directory and serving `/api/plugins` is `dbguard-http`'s. This module only connects a
//! loaded plugin to a [`DbManager`](crate::DbManager), so a service can use plugins without
//! the HTTP server.
//!
//! ```no_run
//! # fn demo(manager: dbguard::DbManager, bytes: &[u8]) -> Result<(), dbguard::plugins::PluginError> {
//! use std::sync::Arc;
//! use dbguard::plugins::{HostConfig, PluginAdvisor, PluginHost};
//! let host = PluginHost::new(HostConfig::default())?;
//! host.load_retry_policy(bytes)?;
//! manager.set_retry_advisor(Some(Arc::new(PluginAdvisor::new(host.retry_policy()))));
//! # Ok(()) }
//! ```

use std::sync::Arc;

use dbguard_core::health::CheckResult;
use dbguard_core::{AttemptInfo, PluginStatus, PolicyVerdict};
pub use dbguard_plugin_host::{
    ActiveRetryPolicy, HealthCheckPlugin, HostConfig, PluginError, PluginHost, PluginStats, QueryFailure, QueryFn,
    Rows, SqlValue,
};

use crate::clock::rfc3339;
use crate::health::ExtraCheck;
use crate::runner::RetryAdvisor;

/// Consecutive faults after which a plugin is quarantined until a reload, unless
/// `DBGUARD_PLUGIN_QUARANTINE_AFTER` says otherwise (the host counts them).
pub const CHECK_QUARANTINE_AFTER: u32 = 3;

/// The retry runner's view of the active retry-policy plugin.
pub struct PluginAdvisor(ActiveRetryPolicy);

impl PluginAdvisor {
    /// Advises the runner with `policy` (whatever plugin it holds at each call).
    pub fn new(policy: ActiveRetryPolicy) -> Self {
        Self(policy)
    }
}

impl RetryAdvisor for PluginAdvisor {
    fn decide(&self, info: &AttemptInfo) -> PolicyVerdict {
        // Never fails: a faulting or quarantined plugin gets the built-in verdict.
        self.0.decide(info)
    }
}

/// The status page's row for a plugin.
pub fn plugin_status(stats: PluginStats) -> PluginStatus {
    PluginStatus {
        name: stats.handle.name.clone(),
        world: stats.handle.world.as_str().to_owned(),
        version: None,
        content_hash: stats.handle.content_hash.clone(),
        loaded_at: rfc3339(stats.handle.loaded_at),
        calls: stats.calls,
        faults: stats.faults,
        state: stats.state.as_str().to_owned(),
        last_fault: stats.last_fault,
        log_lines_dropped: stats.log_lines_dropped,
    }
}

/// A loaded health-check plugin as one of the manager's extra checks; the plugin host counts
/// its faults and quarantines it.
pub struct PluginCheck {
    plugin: HealthCheckPlugin,
    database_type: &'static str,
    query: Arc<dyn QueryFn>,
}

impl PluginCheck {
    /// Wraps a loaded check that runs against `database_type` and queries through `query`.
    pub fn new(plugin: HealthCheckPlugin, database_type: &'static str, query: Arc<dyn QueryFn>) -> Self {
        Self { plugin, database_type, query }
    }

    /// The plugin's row on the status page.
    pub fn status(&self) -> PluginStatus {
        plugin_status(self.plugin.stats())
    }
}

impl ExtraCheck for PluginCheck {
    fn name(&self) -> String {
        format!("plugin:{}", self.plugin.handle().name)
    }

    fn run(&self) -> Result<CheckResult, String> {
        let name = &self.plugin.handle().name;
        match self.plugin.run(self.database_type, self.query.clone()) {
            Ok(result) => Ok(result),
            Err(PluginError::Quarantined(faults)) => {
                Err(format!("plugin {name} is quarantined after {faults} consecutive faults; reload it"))
            }
            Err(error) => Err(format!("plugin {name} faulted: {error}")),
        }
    }
}
