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
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use dbguard_core::health::CheckResult;
use dbguard_core::{AttemptInfo, PluginStatus, PolicyVerdict};
pub use dbguard_plugin_host::{
    ActiveRetryPolicy, HealthCheckPlugin, HostConfig, PluginError, PluginHost, QueryFn, Rows, SqlValue,
};

use crate::clock::rfc3339;
use crate::health::ExtraCheck;
use crate::runner::RetryAdvisor;

/// Consecutive faults after which a health-check plugin is quarantined until a reload (the
/// same default as the host's for retry policies).
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

/// A loaded health-check plugin with its counters and quarantine.
pub struct PluginCheck {
    plugin: HealthCheckPlugin,
    database_type: &'static str,
    query: Arc<dyn QueryFn>,
    calls: AtomicU64,
    faults: AtomicU64,
    consecutive: AtomicU32,
    quarantined: AtomicBool,
}

impl PluginCheck {
    /// Wraps a loaded check that runs against `database_type` and queries through `query`.
    pub fn new(plugin: HealthCheckPlugin, database_type: &'static str, query: Arc<dyn QueryFn>) -> Self {
        Self {
            plugin,
            database_type,
            query,
            calls: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
        }
    }

    /// The plugin's row on the status page.
    pub fn status(&self) -> PluginStatus {
        let handle = self.plugin.handle();
        let quarantined = self.quarantined.load(Ordering::Relaxed);
        PluginStatus {
            name: handle.name.clone(),
            world: handle.world.as_str().to_owned(),
            version: None,
            content_hash: handle.content_hash.clone(),
            loaded_at: rfc3339(handle.loaded_at),
            calls: self.calls.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            state: if quarantined { "quarantined" } else { "active" }.to_owned(),
        }
    }
}

impl ExtraCheck for PluginCheck {
    fn name(&self) -> String {
        format!("plugin:{}", self.plugin.handle().name)
    }

    fn run(&self) -> Result<CheckResult, String> {
        let name = &self.plugin.handle().name;
        if self.quarantined.load(Ordering::Relaxed) {
            let faults = self.consecutive.load(Ordering::Relaxed);
            return Err(format!("plugin {name} is quarantined after {faults} consecutive faults; reload it"));
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        match self.plugin.check(self.database_type, self.query.clone()) {
            Ok(result) => {
                self.consecutive.store(0, Ordering::Relaxed);
                Ok(result)
            }
            Err(error) => {
                self.faults.fetch_add(1, Ordering::Relaxed);
                let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                let quarantine = consecutive >= CHECK_QUARANTINE_AFTER;
                if quarantine {
                    self.quarantined.store(true, Ordering::Relaxed);
                }
                tracing::warn!(plugin = %name, consecutive, quarantined = quarantine, %error,
                    "health check plugin faulted; reporting the check as failed");
                Err(format!("plugin {name} faulted: {error}"))
            }
        }
    }
}
