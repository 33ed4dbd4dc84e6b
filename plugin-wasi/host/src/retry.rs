//! Retry-policy plugins: warm instances, the verification gate, and the active slot with its
//! fallback and quarantine.

use core::time::Duration;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use dbguard_core::ErrorClass;
use dbguard_core::retry::{AttemptInfo, GiveUpReason, PolicyVerdict, RetryPolicy, builtin_verdict};
use dbguard_core::rng::SeededRng;
use wasmtime::Store;

use crate::bindings::{self, retry};
use crate::faults::Faults;
use crate::host::{ANSWER_MARGIN, PluginHandle, Shared};
use crate::log::LogBudget;
use crate::store::StoreData;
use crate::{HostConfig, PluginError};

/// Whether a plugin is answering calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginState {
    /// Answering calls.
    Active,
    /// Faulted too often in a row; every call gets the built-in answer until a reload.
    Quarantined,
}

impl PluginState {
    /// `active` or `quarantined`, as the status API spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Quarantined => "quarantined",
        }
    }
}

/// Counters for one loaded plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStats {
    /// The plugin these counters belong to.
    pub handle: PluginHandle,
    /// Calls made into the plugin (the verification gate not included).
    pub calls: u64,
    /// Calls that trapped, timed out, ran out of memory or fuel, or returned an invalid answer.
    pub faults: u64,
    /// Faults since the last good answer.
    pub consecutive_faults: u32,
    /// Whether it is still answering.
    pub state: PluginState,
    /// The last fault, in words (why it is quarantined, when it is).
    pub last_fault: Option<String>,
    /// Log lines dropped over the plugin's rate limit.
    pub log_lines_dropped: u64,
}

struct WarmInstance {
    store: Store<StoreData>,
    bindings: retry::RetryPolicy,
}

/// A verified retry-policy plugin with its pool of warm instances and counters.
pub(crate) struct LoadedRetryPolicy {
    shared: Arc<Shared>,
    pre: retry::RetryPolicyPre<StoreData>,
    handle: PluginHandle,
    name: Arc<str>,
    idle: Mutex<Vec<WarmInstance>>,
    pub(crate) faults: Faults,
    log_budget: Arc<LogBudget>,
}

impl LoadedRetryPolicy {
    pub(crate) fn new(shared: Arc<Shared>, pre: retry::RetryPolicyPre<StoreData>, handle: PluginHandle) -> Self {
        let name: Arc<str> = Arc::from(handle.name.as_str());
        let faults = Faults::new(shared.config.quarantine_after);
        let log_budget = Arc::new(LogBudget::new(&shared.config.limits));
        Self { shared, pre, handle, name, idle: Mutex::new(Vec::new()), faults, log_budget }
    }

    pub(crate) fn handle(&self) -> &PluginHandle {
        &self.handle
    }

    fn instantiate(&self) -> Result<WarmInstance, PluginError> {
        let mut store = self.shared.new_store(&self.name, &self.log_budget)?;
        match self.pre.instantiate(&mut store) {
            Ok(bindings) => Ok(WarmInstance { store, bindings }),
            Err(error) => Err(match self.shared.fault(error, &store, self.shared.config.instantiate_timeout) {
                PluginError::Trap(message) => PluginError::Instantiation(message),
                fault => fault,
            }),
        }
    }

    /// A fresh instance and one call, not touching the warm pool (benchmarks, diagnostics).
    pub(crate) fn call_fresh(self: &Arc<Self>, info: &AttemptInfo) -> Result<PolicyVerdict, PluginError> {
        self.on_guest_thread(info, |plugin, info| {
            let mut instance = plugin.instantiate()?;
            plugin.call_on(&mut instance, info)
        })
    }

    /// Runs `call` on a guest thread and waits for it within its deadlines plus a margin; no
    /// answer in time is a timeout, whatever the guest is doing.
    fn on_guest_thread(
        self: &Arc<Self>,
        info: &AttemptInfo,
        call: fn(&Self, &AttemptInfo) -> Result<PolicyVerdict, PluginError>,
    ) -> Result<PolicyVerdict, PluginError> {
        let config = &self.shared.config;
        let wait = config.instantiate_timeout + config.call_timeout + ANSWER_MARGIN;
        let (plugin, info) = (self.clone(), info.clone());
        self.shared
            .retry_threads
            .run(wait, move || call(&plugin, &info))
            .unwrap_or(Err(PluginError::Timeout(config.call_timeout)))
    }

    fn call_on(&self, instance: &mut WarmInstance, info: &AttemptInfo) -> Result<PolicyVerdict, PluginError> {
        let timeout = self.shared.config.call_timeout;
        self.shared.arm(&mut instance.store, timeout)?;
        let wit = bindings::attempt_to_wit(info);
        match instance.bindings.call_decide(&mut instance.store, &wit) {
            Ok(decision) => Ok(bindings::verdict_from_wit(decision)),
            Err(error) => Err(self.shared.fault(error, &instance.store, timeout)),
        }
    }

    /// One call on a warm instance, on a guest thread. A faulted instance is dropped, never
    /// reused.
    pub(crate) fn call(self: &Arc<Self>, info: &AttemptInfo) -> Result<PolicyVerdict, PluginError> {
        self.on_guest_thread(info, Self::call_here)
    }

    fn call_here(&self, info: &AttemptInfo) -> Result<PolicyVerdict, PluginError> {
        let warm = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut instance = match warm {
            Some(instance) => instance,
            None => self.instantiate()?,
        };
        let verdict = self.call_on(&mut instance, info)?;
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.shared.config.max_idle_instances
        {
            idle.push(instance);
        }
        validate(&verdict, &self.shared.config)?;
        Ok(verdict)
    }

    /// The verification gate: every class at attempts 1, 2 and 5, idempotent or not. A vector
    /// that times out is run once more before the plugin is refused.
    pub(crate) fn verify(self: &Arc<Self>) -> Result<(), PluginError> {
        for class in ErrorClass::ALL {
            for attempt in [1u32, 2, 5] {
                for idempotent in [true, false] {
                    let previous = if attempt == 1 { Duration::ZERO } else { Duration::from_millis(100 << attempt) };
                    let info = AttemptInfo {
                        class,
                        code: None,
                        attempt,
                        elapsed: previous.saturating_mul(2),
                        previous_delay: previous,
                        idempotent,
                    };
                    let outcome = match self.call(&info) {
                        // The deadline is wall-clock time, so a host thread descheduled on a
                        // loaded machine can overrun it with a well-behaved plugin. A vector
                        // that overruns twice in a row is the plugin's doing.
                        Err(PluginError::Timeout(_)) => self.call(&info),
                        other => other,
                    };
                    outcome.map_err(|error| {
                        tracing::warn!(plugin = %self.name, %class, attempt, idempotent, %error,
                            "retry policy plugin failed verification");
                        error
                    })?;
                }
            }
        }
        Ok(())
    }

    fn stats(&self) -> PluginStats {
        self.faults.stats(&self.handle, self.log_budget.dropped())
    }
}

fn validate(verdict: &PolicyVerdict, config: &HostConfig) -> Result<(), PluginError> {
    let max_reason = config.limits.max_message_bytes;
    match verdict {
        PolicyVerdict::RetryAfter(delay) if *delay > config.max_retry_delay => Err(PluginError::InvalidDecision(
            format!("retry-after {delay:?} is above the limit of {:?}", config.max_retry_delay),
        )),
        PolicyVerdict::GiveUp(reason) if reason.len() > max_reason => Err(PluginError::LimitExceeded(format!(
            "a give-up reason of {} bytes (at most {max_reason})",
            reason.len()
        ))),
        _ => Ok(()),
    }
}

/// Holds a valid verdict to what the host allows whatever the policy says: a class the
/// classification knows to be permanent is never retried (only `unknown`, where codes the
/// classification cannot place land, is the policy's call), and no retry comes sooner than
/// the minimum spacing.
fn hold_to_class(verdict: PolicyVerdict, info: &AttemptInfo, min_delay: Duration) -> PolicyVerdict {
    match verdict {
        PolicyVerdict::RetryAfter(_) if !info.class.is_retryable() && info.class != ErrorClass::Unknown => {
            PolicyVerdict::GiveUp(GiveUpReason::NotRetryable(info.class).to_string())
        }
        PolicyVerdict::RetryAfter(delay) => PolicyVerdict::RetryAfter(delay.max(min_delay)),
        give_up => give_up,
    }
}

/// The active retry policy: a plugin if one is loaded and healthy, the built-in schedule
/// otherwise.
///
/// Cheap to clone; all clones share one slot. [`ActiveRetryPolicy::decide`] never fails: when
/// the plugin traps, overruns its deadline, memory or fuel, or answers something invalid, that
/// call gets the built-in verdict, the fault is counted and logged, and after
/// [`HostConfig::quarantine_after`] consecutive faults the plugin is quarantined until a new
/// one is loaded. Pass `decide` to `RetryState::on_failure_with`:
///
/// ```no_run
/// # use dbguard_core::{ErrorClass, Instant};
/// # use dbguard_core::retry::{Idempotency, RetryPolicy, RetryState};
/// # let host = dbguard_plugin_host::PluginHost::new(Default::default()).unwrap();
/// let policy = host.retry_policy();
/// let mut state = RetryState::new(RetryPolicy::default(), Idempotency::Idempotent);
/// let decision = state.on_failure_with(Instant::ZERO, ErrorClass::Busy, None, |info| policy.decide(info));
/// # let _ = decision;
/// ```
#[derive(Clone)]
pub struct ActiveRetryPolicy {
    inner: Arc<SlotInner>,
}

impl core::fmt::Debug for ActiveRetryPolicy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ActiveRetryPolicy").field("plugin", &self.stats()).finish_non_exhaustive()
    }
}

struct SlotInner {
    slot: RwLock<Option<Arc<LoadedRetryPolicy>>>,
    fallback_policy: RetryPolicy,
    fallback_rng: Mutex<SeededRng>,
    fallback_answers: AtomicU64,
    min_retry_delay: Duration,
}

impl ActiveRetryPolicy {
    pub(crate) fn new(config: &HostConfig) -> Self {
        Self {
            inner: Arc::new(SlotInner {
                slot: RwLock::new(None),
                fallback_policy: config.fallback_policy,
                fallback_rng: Mutex::new(SeededRng::new(config.rng_seed)),
                fallback_answers: AtomicU64::new(0),
                min_retry_delay: config.limits.min_retry_delay,
            }),
        }
    }

    pub(crate) fn install(&self, plugin: Arc<LoadedRetryPolicy>) {
        let previous = match self.inner.slot.write() {
            Ok(mut slot) => slot.replace(plugin),
            Err(poisoned) => poisoned.into_inner().replace(plugin),
        };
        // In-flight calls hold their own `Arc`; the old plugin is freed when the last finishes.
        drop(previous);
    }

    fn current(&self) -> Option<Arc<LoadedRetryPolicy>> {
        match self.inner.slot.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Removes the active plugin; calls get the built-in verdict from now on.
    pub fn unload(&self) -> Option<PluginHandle> {
        let previous = match self.inner.slot.write() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        previous.map(|plugin| plugin.handle.clone())
    }

    /// The plugin's verdict for this failure, or the built-in one if there is no healthy
    /// plugin or the plugin faults on this call.
    pub fn decide(&self, info: &AttemptInfo) -> PolicyVerdict {
        match self.try_decide(info) {
            Ok(Some(verdict)) => verdict,
            Ok(None) => self.builtin_uncounted(info),
            Err(_) => self.builtin(info),
        }
    }

    /// Like [`ActiveRetryPolicy::decide`], but says why the plugin did not answer instead of
    /// falling back (faults still count towards quarantine). `Ok(None)`: no plugin is loaded.
    pub fn try_decide(&self, info: &AttemptInfo) -> Result<Option<PolicyVerdict>, PluginError> {
        let Some(plugin) = self.current() else {
            return Ok(None);
        };
        plugin.faults.begin()?;
        match plugin.call(info) {
            Ok(verdict) => {
                plugin.faults.on_success();
                Ok(Some(hold_to_class(verdict, info, self.inner.min_retry_delay)))
            }
            Err(error) => {
                let (consecutive, quarantine) = plugin.faults.on_fault(&error);
                tracing::warn!(
                    plugin = %plugin.name,
                    class = %info.class,
                    attempt = info.attempt,
                    consecutive,
                    quarantined = quarantine,
                    %error,
                    "retry policy plugin faulted; using the built-in verdict for this call"
                );
                Err(error)
            }
        }
    }

    /// The built-in verdict: core's default rule (retry retryable classes on the configured
    /// schedule), used whenever the plugin cannot answer.
    pub fn builtin(&self, info: &AttemptInfo) -> PolicyVerdict {
        self.inner.fallback_answers.fetch_add(1, Ordering::Relaxed);
        self.builtin_uncounted(info)
    }

    fn builtin_uncounted(&self, info: &AttemptInfo) -> PolicyVerdict {
        // A poisoned lock only means a panic mid-draw; the generator's state is still valid.
        let mut rng = self.inner.fallback_rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        builtin_verdict(&self.inner.fallback_policy, info, &mut *rng)
    }

    /// How many calls got the built-in verdict because the plugin faulted or was quarantined.
    pub fn fallback_answers(&self) -> u64 {
        self.inner.fallback_answers.load(Ordering::Relaxed)
    }

    /// Counters of the active plugin, if any.
    pub fn stats(&self) -> Option<PluginStats> {
        self.current().map(|plugin| plugin.stats())
    }

    /// Runs one call on a freshly instantiated copy of the active plugin, bypassing the warm
    /// pool and the counters. For benchmarks and diagnostics.
    pub fn decide_on_fresh_instance(&self, info: &AttemptInfo) -> Option<Result<PolicyVerdict, PluginError>> {
        self.current().map(|plugin| plugin.call_fresh(info))
    }
}
