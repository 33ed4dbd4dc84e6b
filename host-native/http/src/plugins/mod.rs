//! WebAssembly plugins from `DBGUARD_PLUGIN_DIR`, wired into a [`DbManager`].
//!
//! A [`PluginRuntime`] owns a [`PluginHost`] and keeps it in step with one directory:
//!
//! - **Start.** Every `*.wasm` file is offered to the retry-policy world, then to the
//!   health-check world. A file the verification gate refuses is logged with its typed reason
//!   and skipped; it never stops the service.
//! - **Watch.** The directory is polled every [`POLL_INTERVAL`] (modification time and length,
//!   portable everywhere). A change is acted on once it has stayed the same for one more poll,
//!   so a file being copied in is not read half-written. Changed files are verified again and
//!   swapped in; a refused new version leaves the file's previous version active; a removed
//!   file is unloaded.
//! - **Reload.** [`PluginRuntime::reload`] (`POST /api/plugins/reload`) re-verifies every file,
//!   which also lifts a quarantine.
//!
//! The manager sees the runtime through three seams. The retry runner gets a
//! [`RetryAdvisor`] only while a retry-policy plugin is active, so without one the retry path
//! is exactly the built-in one. The health service gets [`ExtraChecks`]: each health-check
//! plugin runs on a blocking thread within the probe's timeout and its result joins the
//! report's checks and aggregation (a faulting plugin yields a failed, non-required check, and
//! is quarantined after repeated faults). The status page gets a [`PluginDirectory`].
//!
//! Health-check plugins reach the database only through [`ReadOnlyQuery`]: a read-only
//! connection of their own, a row cap ([`PLUGIN_MAX_ROWS`]), a byte cap (the sandbox's
//! per-check query bytes) and a timeout, with read-only enforced by the database. The sandbox
//! limits come from `DBGUARD_PLUGIN_*` (see `dbguard_plugin_host::HostConfig::with_env_vars`);
//! a bad value stops the runtime from starting, with the variable named.
//!
//! Only one retry policy can be active. With several retry-policy files, the one loaded last
//! answers (at start, the last in file-name order) and the others stand by: if the active
//! file is removed, the last remaining one takes over.
//!
//! ```no_run
//! # async fn demo(manager: dbguard::DbManager) -> Result<(), dbguard_http::plugins::PluginError> {
//! let runtime = dbguard_http::plugins::PluginRuntime::start(manager, "/etc/dbguard/plugins").await?;
//! for plugin in runtime.plugins() {
//!     println!("{} {} {}", plugin.name, plugin.world, plugin.content_hash);
//! }
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
pub use dbguard::plugins::{
    ActiveRetryPolicy, CHECK_QUARANTINE_AFTER, HealthCheckPlugin, HostConfig, PluginAdvisor, PluginCheck, PluginError,
    PluginHost, PluginStats, QueryFailure, QueryFn, Rows, SqlValue, plugin_status,
};
use dbguard_core::{DatabaseType, PluginStatus};

use dbguard::clock::rfc3339;
use dbguard::{DbManager, ExtraCheck, ExtraChecks, PluginDirectory};

mod query;
mod watch;

use crate::api::{PluginControl, PluginReload, RefusedPlugin};
use crate::readonly::{ReadOnlyQuery, TIMEOUT_MS_CAP};
use query::PluginQuery;
use watch::spawn_watcher;

/// How often the plugin directory is polled for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The most rows a health-check plugin's query returns.
pub const PLUGIN_MAX_ROWS: u32 = 100;

/// Loads plugins from a directory, keeps them in step with it, and wires them into a
/// [`DbManager`]. Cheap to clone; the plugins stay wired while any clone lives, and are
/// unwired (built-in retry policy, no extra checks) when the last one is dropped.
#[derive(Clone)]
pub struct PluginRuntime {
    inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

struct RuntimeInner {
    host: PluginHost,
    manager: DbManager,
    dir: PathBuf,
    catalog: Arc<Catalog>,
    query: Arc<dyn QueryFn>,
    database_type: &'static str,
    /// Per-file state; held for the whole of a scan, which serialises reloads.
    files: Mutex<Files>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        if let Ok(mut watcher) = self.watcher.lock()
            && let Some(task) = watcher.take()
        {
            task.abort();
        }
        self.manager.set_retry_advisor(None);
        self.manager.set_plugin_directory(None);
        self.manager.set_extra_checks(None);
    }
}

/// What the manager's seams read: the active retry policy and the health checks.
struct Catalog {
    retry: ActiveRetryPolicy,
    checks: ArcSwap<Vec<Arc<PluginCheck>>>,
}

#[derive(Default)]
struct Files {
    entries: BTreeMap<String, FileEntry>,
    /// The file whose retry policy is in the host's slot.
    active_retry: Option<String>,
}

/// Modification time and length: what the watcher compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

struct FileEntry {
    stamp: Stamp,
    /// SHA-256 of the contents last read.
    hash: [u8; 32],
    /// The last version of this file that passed the gate.
    loaded: Option<Loaded>,
    /// Why the contents last read were refused (`None` if they were loaded).
    refused: Option<RefusedPlugin>,
}

enum Loaded {
    Retry,
    Check(Arc<PluginCheck>),
}

impl PluginRuntime {
    /// Starts a runtime for `manager` on `dir`: loads every plugin there, starts watching, and
    /// wires the manager. The built-in retry policy is the fallback for a faulting plugin,
    /// health checks get the probe's timeout, and `DBGUARD_PLUGIN_*` variables of the process
    /// environment set the sandbox limits. Fails if one of those is invalid or the WebAssembly
    /// engine cannot be built; a missing directory counts as empty (and is watched for).
    pub async fn start(manager: DbManager, dir: impl Into<PathBuf>) -> Result<Self, PluginError> {
        let config = manager.config();
        let host_config = HostConfig::default()
            .fallback_policy(config.retry)
            .check_timeout(config.health.thresholds.timeout)
            .with_process_env()?;
        Self::start_with(manager, dir, host_config).await
    }

    /// [`PluginRuntime::start`] with explicit sandbox limits.
    pub async fn start_with(
        manager: DbManager,
        dir: impl Into<PathBuf>,
        host_config: HostConfig,
    ) -> Result<Self, PluginError> {
        let dir = dir.into();
        let host = PluginHost::new(host_config.clone())?;
        let catalog = Arc::new(Catalog { retry: host.retry_policy(), checks: ArcSwap::from_pointee(Vec::new()) });
        let query: Arc<dyn QueryFn> = Arc::new(PluginQuery {
            runner: ReadOnlyQuery::new(manager.config())
                .with_max_result_bytes(host_config.get_limits().max_query_bytes_per_check)
                .with_connection_reuse(),
            runtime: tokio::runtime::Handle::current(),
            max_timeout: query_timeout_cap(&manager),
        });
        let database_type = match manager.config().database_type() {
            DatabaseType::Postgresql => "postgres",
            DatabaseType::Sqlite => "sqlite",
        };
        let inner = Arc::new(RuntimeInner {
            host,
            manager: manager.clone(),
            dir,
            catalog: catalog.clone(),
            query,
            database_type,
            files: Mutex::new(Files::default()),
            watcher: Mutex::new(None),
        });
        let runtime = Self { inner };
        if !runtime.inner.dir.is_dir() {
            tracing::warn!(dir = %runtime.inner.dir.display(), "plugin directory does not exist (yet); watching for it");
        }
        let report = runtime.scan(true).await;
        tracing::info!(
            dir = %runtime.inner.dir.display(),
            loaded = report.plugins.len(),
            refused = report.refused.len(),
            "plugins loaded"
        );
        manager.set_plugin_directory(Some(Box::new(Directory(catalog.clone()))));
        manager.set_extra_checks(Some(catalog));
        let watcher = spawn_watcher(Arc::downgrade(&runtime.inner));
        if let Ok(mut slot) = runtime.inner.watcher.lock() {
            *slot = Some(watcher);
        }
        Ok(runtime)
    }

    /// The directory being watched.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The loaded plugins: the active retry policy, then the health checks by file name.
    pub fn plugins(&self) -> Vec<PluginStatus> {
        self.inner.catalog.statuses()
    }

    /// What `GET /api/plugins` lists: [`PluginRuntime::plugins`], then every refused file that
    /// has nothing loaded, as state `refused` with the reason in `last_fault` (its `loaded_at`
    /// is the file's modification time).
    pub fn plugins_and_refusals(&self) -> Vec<PluginStatus> {
        let mut rows = self.plugins();
        // A scan holds the files while it verifies plugins: do not wait for it (the caller may
        // be an async handler); the refusals show once it is done.
        let files = match self.inner.files.try_lock() {
            Ok(files) => files,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return rows,
        };
        rows.extend(files.entries.values().filter(|entry| entry.loaded.is_none()).filter_map(|entry| {
            let refusal = entry.refused.as_ref()?;
            Some(PluginStatus {
                name: refusal.file.clone(),
                world: "unknown".to_owned(),
                version: None,
                content_hash: entry.hash.iter().map(|b| format!("{b:02x}")).collect(),
                loaded_at: rfc3339(entry.stamp.modified.unwrap_or(SystemTime::UNIX_EPOCH)),
                calls: 0,
                faults: 0,
                state: "refused".to_owned(),
                last_fault: Some(format!("{}: {}", refusal.error, refusal.message)),
                log_lines_dropped: 0,
            })
        }));
        rows
    }

    /// Files currently refused, and why.
    pub fn refused(&self) -> Vec<RefusedPlugin> {
        match self.inner.files.lock() {
            Ok(files) => files.entries.values().filter_map(|entry| entry.refused.clone()).collect(),
            Err(poisoned) => poisoned.into_inner().entries.values().filter_map(|entry| entry.refused.clone()).collect(),
        }
    }

    /// The active retry-policy slot (answers with the built-in schedule when empty).
    pub fn retry_policy(&self) -> ActiveRetryPolicy {
        self.inner.catalog.retry.clone()
    }

    /// The query function health-check plugins get: read-only, row-capped, with a timeout.
    /// It blocks, so call it from a blocking thread (`tokio::task::spawn_blocking`).
    pub fn query_fn(&self) -> Arc<dyn QueryFn> {
        self.inner.query.clone()
    }

    /// Reads the directory again and re-verifies every file, changed or not (lifting any
    /// quarantine); returns what is loaded and what is refused.
    pub async fn reload(&self) -> PluginReload {
        self.scan(true).await
    }

    /// Applies the directory to the host on a blocking thread: every file when `force`, else
    /// only those whose stamp or contents changed.
    async fn scan(&self, force: bool) -> PluginReload {
        let inner = self.inner.clone();
        let scanned = tokio::task::spawn_blocking(move || inner.apply_dir(force)).await;
        if let Err(error) = scanned {
            tracing::error!(%error, "plugin directory scan did not finish");
        }
        PluginReload { plugins: self.plugins(), refused: self.refused() }
    }
}

/// A plugin's query may not outlast the probe (nor the read-only runner's own cap).
fn query_timeout_cap(manager: &DbManager) -> Duration {
    manager.config().health.thresholds.timeout.min(Duration::from_millis(TIMEOUT_MS_CAP))
}

impl PluginControl for PluginRuntime {
    fn plugins(&self) -> Vec<PluginStatus> {
        PluginRuntime::plugins_and_refusals(self)
    }

    fn reload(&self) -> Pin<Box<dyn Future<Output = PluginReload> + Send + '_>> {
        Box::pin(PluginRuntime::reload(self))
    }
}

impl Catalog {
    fn statuses(&self) -> Vec<PluginStatus> {
        let mut rows = Vec::new();
        if let Some(stats) = self.retry.stats() {
            rows.push(plugin_status(stats));
        }
        rows.extend(self.checks.load().iter().map(|check| check.status()));
        rows
    }
}

impl ExtraChecks for Catalog {
    fn checks(&self) -> Vec<Arc<dyn ExtraCheck>> {
        self.checks.load().iter().map(|check| check.clone() as Arc<dyn ExtraCheck>).collect()
    }
}

/// The status page's view of the catalog.
struct Directory(Arc<Catalog>);

impl PluginDirectory for Directory {
    fn plugins(&self) -> Vec<PluginStatus> {
        self.0.statuses()
    }
}
