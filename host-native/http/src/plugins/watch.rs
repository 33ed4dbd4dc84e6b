//! Keeping the runtime in step with its directory: listing, verifying and swapping files,
//! refusals, and the polling watcher.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Weak};

use dbguard::RetryAdvisor;
use sha2::{Digest, Sha256};

use super::{
    FileEntry, Files, Loaded, POLL_INTERVAL, PluginAdvisor, PluginCheck, PluginError, PluginRuntime, RuntimeInner,
    Stamp,
};
use crate::api::RefusedPlugin;

/// The `*.wasm` files of `dir` with their stamps, by file name. `None` if the directory
/// cannot be listed.
pub(super) fn list_dir(dir: &Path) -> Option<BTreeMap<String, Stamp>> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut files = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wasm") {
            continue;
        }
        let Ok(metadata) = std::fs::metadata(&path) else { continue };
        if !metadata.is_file() {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        files.insert(name.to_owned(), Stamp { modified: metadata.modified().ok(), len: metadata.len() });
    }
    Some(files)
}

impl RuntimeInner {
    pub(super) fn lock_files(&self) -> std::sync::MutexGuard<'_, Files> {
        // A panic mid-scan leaves per-file state that is still valid on its own.
        self.files.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stamps as last applied, for the watcher's comparison.
    pub(super) fn applied_stamps(&self) -> BTreeMap<String, Stamp> {
        self.lock_files().entries.iter().map(|(name, entry)| (name.clone(), entry.stamp)).collect()
    }

    pub(super) fn apply_dir(&self, force: bool) {
        let mut files = self.lock_files();
        let Some(listing) = list_dir(&self.dir) else {
            // A directory that disappears for a moment (a remount, a redeploy) should not
            // unload everything: keep what is loaded until it can be read again.
            if !files.entries.is_empty() {
                tracing::warn!(dir = %self.dir.display(), "cannot read the plugin directory; keeping the loaded plugins");
            }
            return;
        };
        let mut checks_changed = false;
        let removed: Vec<String> = files.entries.keys().filter(|name| !listing.contains_key(*name)).cloned().collect();
        for name in removed {
            if let Some(entry) = files.entries.remove(&name) {
                tracing::info!(file = %name, "plugin file removed; unloading it");
                checks_changed |= matches!(entry.loaded, Some(Loaded::Check(_)));
            }
        }
        for (name, stamp) in &listing {
            let previous = files.entries.get(name);
            if !force && previous.is_some_and(|entry| entry.stamp == *stamp) {
                continue;
            }
            let path = self.dir.join(name);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(error) => {
                    let refusal = RefusedPlugin {
                        file: name.clone(),
                        error: "unreadable".to_owned(),
                        message: format!("cannot read the file: {error}"),
                    };
                    log_refusal(&refusal);
                    let entry = files.entries.entry(name.clone()).or_insert_with(|| FileEntry {
                        stamp: *stamp,
                        hash: [0; 32],
                        loaded: None,
                        refused: None,
                    });
                    entry.stamp = *stamp;
                    entry.refused = Some(refusal);
                    continue;
                }
            };
            let hash: [u8; 32] = Sha256::digest(&bytes).into();
            if !force
                && let Some(entry) = files.entries.get_mut(name)
                && entry.hash == hash
            {
                // Touched, not changed.
                entry.stamp = *stamp;
                continue;
            }
            let outcome = self.load(name, &bytes);
            let entry = files.entries.entry(name.clone()).or_insert_with(|| FileEntry {
                stamp: *stamp,
                hash,
                loaded: None,
                refused: None,
            });
            entry.stamp = *stamp;
            entry.hash = hash;
            match outcome {
                Ok(loaded) => {
                    let was_check = matches!(entry.loaded, Some(Loaded::Check(_)));
                    let is_retry = matches!(loaded, Loaded::Retry);
                    checks_changed |= was_check || !is_retry;
                    entry.loaded = Some(loaded);
                    entry.refused = None;
                    if is_retry {
                        files.active_retry = Some(name.clone());
                    }
                }
                Err(refusal) => {
                    log_refusal(&refusal);
                    entry.refused = Some(refusal);
                }
            }
        }
        self.settle_retry_slot(&mut files);
        if checks_changed || force {
            let checks: Vec<Arc<PluginCheck>> = files
                .entries
                .values()
                .filter_map(|entry| match &entry.loaded {
                    Some(Loaded::Check(check)) => Some(check.clone()),
                    _ => None,
                })
                .collect();
            self.catalog.checks.store(Arc::new(checks));
            // Re-installing marks the health cache stale, so the next read shows the new set.
            self.manager.set_extra_checks(Some(self.catalog.clone()));
        }
    }

    /// Makes sure the host's retry slot holds a plugin of a file that still holds one, and that
    /// the manager consults the slot exactly when it holds a plugin.
    pub(super) fn settle_retry_slot(&self, files: &mut Files) {
        let active_ok = files
            .active_retry
            .as_ref()
            .and_then(|name| files.entries.get(name))
            .is_some_and(|entry| matches!(entry.loaded, Some(Loaded::Retry)));
        if !active_ok {
            files.active_retry = None;
            // Another file that passed as a retry policy takes over, newest name first.
            let standby: Vec<String> = files
                .entries
                .iter()
                .rev()
                .filter(|(_, entry)| matches!(entry.loaded, Some(Loaded::Retry)))
                .map(|(name, _)| name.clone())
                .collect();
            for name in standby {
                let reloaded =
                    std::fs::read(self.dir.join(&name)).map_err(|error| error.to_string()).and_then(|bytes| {
                        self.host.load_retry_policy_named(Some(&name), &bytes).map_err(|error| error.to_string())
                    });
                match reloaded {
                    Ok(_) => {
                        files.active_retry = Some(name);
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(file = %name, %error, "standby retry policy could not take over");
                        if let Some(entry) = files.entries.get_mut(&name) {
                            entry.loaded = None;
                        }
                    }
                }
            }
            if files.active_retry.is_none()
                && let Some(handle) = self.catalog.retry.unload()
            {
                tracing::info!(plugin = %handle.name, "retry policy plugin unloaded; using the built-in policy");
            }
        }
        let advisor: Option<Arc<dyn RetryAdvisor>> = match self.catalog.retry.stats() {
            Some(_) => Some(Arc::new(PluginAdvisor::new(self.catalog.retry.clone()))),
            None => None,
        };
        self.manager.set_retry_advisor(advisor);
    }

    /// Offers `bytes` to the retry-policy world, then to the health-check world.
    pub(super) fn load(&self, name: &str, bytes: &[u8]) -> Result<Loaded, RefusedPlugin> {
        let retry_error = match self.host.load_retry_policy_named(Some(name), bytes) {
            Ok(handle) => {
                tracing::info!(file = %name, hash = %handle.content_hash, "retry policy plugin loaded");
                return Ok(Loaded::Retry);
            }
            Err(error) if is_world_mismatch(&error) => error,
            Err(error) => return Err(refusal(name, &error, error.to_string())),
        };
        match self.host.load_health_check(Some(name), bytes, self.database_type, self.query.clone()) {
            Ok(plugin) => {
                tracing::info!(file = %name, hash = %plugin.handle().content_hash, "health check plugin loaded");
                Ok(Loaded::Check(Arc::new(PluginCheck::new(plugin, self.database_type, self.query.clone()))))
            }
            Err(health_error) if is_world_mismatch(&health_error) => {
                // Imports that fit the health-check world but exports that do not: the health
                // side's complaint is the telling one; otherwise the retry side's.
                let primary =
                    if matches!(health_error, PluginError::WrongWorld { .. }) { &health_error } else { &retry_error };
                let message = format!(
                    "neither a retry-policy nor a health-check plugin: as retry-policy: {retry_error}; as health-check: {health_error}"
                );
                Err(refusal(name, primary, message))
            }
            Err(health_error) => Err(refusal(name, &health_error, health_error.to_string())),
        }
    }
}

fn is_world_mismatch(error: &PluginError) -> bool {
    matches!(error, PluginError::WrongWorld { .. } | PluginError::UnsupportedImport(_))
}

/// The stable code of a refusal reason.
fn error_code(error: &PluginError) -> &'static str {
    match error {
        PluginError::NotWasm(_) => "not_wasm",
        PluginError::CoreModule => "core_module",
        PluginError::Compile(_) => "compile",
        PluginError::UnsupportedImport(_) => "unsupported_import",
        PluginError::WrongWorld { .. } => "wrong_world",
        PluginError::Instantiation(_) => "instantiation",
        PluginError::Trap(_) => "trap",
        PluginError::Timeout(_) => "timeout",
        PluginError::OutOfFuel => "out_of_fuel",
        PluginError::MemoryLimit { .. } => "memory_limit",
        PluginError::InvalidDecision(_) => "invalid_decision",
        PluginError::Quarantined(_) => "quarantined",
        PluginError::Blocking(_) => "blocking",
        PluginError::LimitExceeded(_) => "limit_exceeded",
        PluginError::SlowQuery(_) => "slow_query",
        PluginError::InvalidConfig(_) => "invalid_config",
        _ => "refused",
    }
}

fn refusal(name: &str, error: &PluginError, message: String) -> RefusedPlugin {
    RefusedPlugin { file: name.to_owned(), error: error_code(error).to_owned(), message }
}

fn log_refusal(refusal: &RefusedPlugin) {
    tracing::warn!(
        file = %refusal.file,
        reason = %refusal.error,
        message = %refusal.message,
        "plugin refused; skipped (a previously loaded version of this file stays active)"
    );
}

/// Polls the directory; acts on a change once it has been stable for one more poll. Stops
/// when the runtime is dropped.
pub(super) fn spawn_watcher(runtime: Weak<RuntimeInner>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: Option<BTreeMap<String, Stamp>> = None;
        loop {
            ticker.tick().await;
            let Some(inner) = runtime.upgrade() else { return };
            let looked = {
                let inner = inner.clone();
                tokio::task::spawn_blocking(move || (list_dir(&inner.dir), inner.applied_stamps())).await
            };
            let Ok((Some(listing), applied)) = looked else { continue };
            if listing == applied {
                pending = None;
                continue;
            }
            if pending.as_ref() != Some(&listing) {
                // Changed since the last poll: wait until it settles.
                pending = Some(listing);
                continue;
            }
            pending = None;
            tracing::info!(dir = %inner.dir.display(), "plugin directory changed; reloading the changed files");
            let runtime = PluginRuntime { inner };
            runtime.scan(false).await;
        }
    })
}
