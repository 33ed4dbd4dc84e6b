//! Fault counting and quarantine, the same for both worlds.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::PluginError;
use crate::host::PluginHandle;
use crate::retry::{PluginState, PluginStats};

/// The calls, faults and quarantine of one loaded plugin.
pub(crate) struct Faults {
    quarantine_after: u32,
    calls: AtomicU64,
    faults: AtomicU64,
    consecutive: AtomicU32,
    quarantined: AtomicBool,
    last_fault: Mutex<Option<String>>,
}

impl Faults {
    pub(crate) fn new(quarantine_after: u32) -> Self {
        Self {
            quarantine_after: quarantine_after.max(1),
            calls: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            consecutive: AtomicU32::new(0),
            quarantined: AtomicBool::new(false),
            last_fault: Mutex::new(None),
        }
    }

    /// Counts a call, or refuses it when the plugin is quarantined.
    pub(crate) fn begin(&self) -> Result<(), PluginError> {
        if self.quarantined.load(Ordering::Relaxed) {
            return Err(PluginError::Quarantined(self.consecutive.load(Ordering::Relaxed)));
        }
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn on_success(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
    }

    /// Counts a fault; returns the consecutive count and whether the plugin is now quarantined.
    pub(crate) fn on_fault(&self, error: &PluginError) -> (u32, bool) {
        self.faults.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_fault.lock() {
            *last = Some(error.to_string());
        }
        let consecutive = self.consecutive.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let quarantine = consecutive >= self.quarantine_after;
        if quarantine {
            self.quarantined.store(true, Ordering::Relaxed);
        }
        (consecutive, quarantine)
    }

    /// The counters as the public stats of `handle`'s plugin.
    pub(crate) fn stats(&self, handle: &PluginHandle, log_lines_dropped: u64) -> PluginStats {
        PluginStats {
            handle: handle.clone(),
            calls: self.calls.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            consecutive_faults: self.consecutive.load(Ordering::Relaxed),
            state: if self.quarantined.load(Ordering::Relaxed) {
                PluginState::Quarantined
            } else {
                PluginState::Active
            },
            last_fault: self.last_fault.lock().ok().and_then(|last| last.clone()),
            log_lines_dropped,
        }
    }
}
