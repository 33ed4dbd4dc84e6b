//! The engine, the compiled-component cache and the linkers shared by every plugin.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use crate::bindings::{health, retry};
use crate::health::HealthCheckPlugin;
use crate::log::LogBudget;
use crate::query::QueryFn;
use crate::retry::{ActiveRetryPolicy, LoadedRetryPolicy};
use crate::sandbox::{self, Violation};
use crate::store::StoreData;
use crate::threads::GuestThreads;
use crate::{HostConfig, PluginError};

/// How much longer than a guest's own deadline a caller waits for its answer: the deadline is
/// enforced inside the call; this only covers scheduling on a loaded machine.
pub(crate) const ANSWER_MARGIN: Duration = Duration::from_millis(250);

/// How often the ticker advances the engine's epoch; deadlines are whole ticks.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// Which contract a plugin implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginWorld {
    /// `dbguard:plugin/retry-policy`.
    RetryPolicy,
    /// `dbguard:plugin/health-check`.
    HealthCheck,
}

impl PluginWorld {
    /// The world's name in the WIT package.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RetryPolicy => "retry-policy",
            Self::HealthCheck => "health-check",
        }
    }
}

/// A plugin that passed the verification gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginHandle {
    /// The name given at load time (or the first 12 hex digits of its hash).
    pub name: String,
    /// The world it implements.
    pub world: PluginWorld,
    /// SHA-256 of the component bytes, lowercase hex.
    pub content_hash: String,
    /// When it was activated.
    pub loaded_at: SystemTime,
}

/// Loads, verifies and runs WebAssembly plugins.
///
/// One engine (epoch interruption, pooling allocator, concurrency support off) serves every
/// plugin; a ticker thread advances its epoch every millisecond and stops when the last clone
/// of the host is dropped. Compiled components are cached in memory by (SHA-256 of the bytes,
/// engine compatibility hash), so reloading the same plugin does not compile it again.
///
/// ```no_run
/// # fn main() -> Result<(), dbguard_plugin_host::PluginError> {
/// use dbguard_plugin_host::{HostConfig, PluginHost};
///
/// let host = PluginHost::new(HostConfig::default()).expect("engine");
/// let policy = host.retry_policy(); // falls back to the built-in schedule until a plugin loads
/// let bytes = std::fs::read("decorrelated_retry.wasm").expect("plugin file");
/// let handle = host.load_retry_policy(&bytes)?; // verified, then swapped in atomically
/// println!("active: {} ({})", handle.name, handle.content_hash);
/// # let _ = policy;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<HostInner>,
}

impl core::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PluginHost").field("config", &self.inner.shared.config).finish_non_exhaustive()
    }
}

struct HostInner {
    shared: Arc<Shared>,
    retry_linker: Linker<StoreData>,
    health_linker: Linker<StoreData>,
    cache: Mutex<HashMap<([u8; 32], u64), Component>>,
    compat_hash: u64,
    active_retry: ActiveRetryPolicy,
    ticker: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
}

impl Drop for HostInner {
    fn drop(&mut self) {
        if let Ok(mut ticker) = self.ticker.lock()
            && let Some((stop, handle)) = ticker.take()
        {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

/// What every plugin instance needs from the host, shared with the loaded plugins.
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) config: HostConfig,
    pub(crate) clock: std::time::Instant,
    seeds: AtomicU64,
    /// Where retry-policy calls run.
    pub(crate) retry_threads: GuestThreads,
    /// Where health checks run (apart, so slow checks never delay a retry decision).
    pub(crate) check_threads: GuestThreads,
}

impl Shared {
    /// A fresh store for `plugin` with its limits and start-up deadline in place.
    pub(crate) fn new_store(
        &self,
        plugin: &Arc<str>,
        log_budget: &Arc<LogBudget>,
    ) -> Result<Store<StoreData>, PluginError> {
        let seed = self.config.rng_seed ^ self.seeds.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let state = StoreData::new(&self.config, plugin.clone(), log_budget.clone(), seed, self.clock);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // Guest start-up code runs during instantiation: the deadline must already be set.
        store.set_epoch_deadline(ticks(self.config.instantiate_timeout));
        self.refuel(&mut store)?;
        Ok(store)
    }

    /// Arms the store for one call: deadline and fuel.
    pub(crate) fn arm(&self, store: &mut Store<StoreData>, timeout: Duration) -> Result<(), PluginError> {
        store.set_epoch_deadline(ticks(timeout));
        store.data_mut().limiter.exceeded = false;
        store.data_mut().log_calls = 0;
        self.refuel(store)
    }

    fn refuel(&self, store: &mut Store<StoreData>) -> Result<(), PluginError> {
        if let Some(fuel) = self.config.fuel {
            store.set_fuel(fuel).map_err(|e| PluginError::Instantiation(e.to_string()))?;
        }
        Ok(())
    }

    /// Turns a wasmtime error from a call into the fault it represents.
    pub(crate) fn fault(&self, error: wasmtime::Error, store: &Store<StoreData>, timeout: Duration) -> PluginError {
        let error = match error.downcast::<Violation>() {
            Ok(violation) => return violation.into_plugin_error(),
            Err(error) => error,
        };
        if store.data().limiter.exceeded {
            return PluginError::MemoryLimit { limit: self.config.memory_limit };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::Timeout(timeout),
            Some(Trap::OutOfFuel) => PluginError::OutOfFuel,
            // A trap's text carries the guest's own function names: bounded and escaped like
            // anything else the guest controls, since it reaches logs and the health report.
            _ => PluginError::Trap(bounded_text(&format!("{error:#}"), MAX_TRAP_TEXT_BYTES)),
        }
    }
}

/// The most bytes of a trap's description kept in a [`PluginError::Trap`].
const MAX_TRAP_TEXT_BYTES: usize = 1024;

/// `text` with control characters escaped, cut at a character boundary to at most `max`
/// bytes, with a marker saying so when cut.
fn bounded_text(text: &str, max: usize) -> String {
    let escaped = crate::log::escape_controls(text);
    if escaped.len() <= max {
        return escaped.into_owned();
    }
    let mut end = max;
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &escaped[..end], escaped.len())
}

/// Whole ticks covering `timeout`, plus one because the current tick is already under way.
fn ticks(timeout: Duration) -> u64 {
    let tick = TICK.as_nanos();
    u64::try_from(timeout.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX / 2) + 1
}

impl PluginHost {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(config: HostConfig) -> Result<Self, PluginError> {
        let engine = build_engine(&config).map_err(|e| PluginError::Instantiation(format!("engine: {e:#}")))?;
        let mut retry_linker = Linker::new(&engine);
        let mut health_linker = Linker::new(&engine);
        let linker_error = |e: wasmtime::Error| PluginError::Instantiation(format!("linker: {e:#}"));
        sandbox::add_wasi(&mut retry_linker)?;
        sandbox::add_wasi(&mut health_linker)?;
        retry::RetryPolicy::add_to_linker::<_, HasSelf<_>>(&mut retry_linker, |state| state).map_err(linker_error)?;
        health::HealthCheck::add_to_linker::<_, HasSelf<_>>(&mut health_linker, |state| state).map_err(linker_error)?;

        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compat_hash = hasher.finish();

        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("dbguard-plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Instantiation(format!("epoch ticker thread: {e}")))?
        };

        let shared = Arc::new(Shared {
            engine,
            config: config.clone(),
            clock: std::time::Instant::now(),
            seeds: AtomicU64::new(0),
            retry_threads: GuestThreads::start("dbguard-plugin-retry", config.guest_threads)?,
            // Probes run their checks concurrently; a few threads keep one slow check from
            // delaying the others.
            check_threads: GuestThreads::start("dbguard-plugin-check", 4)?,
        });
        let active_retry = ActiveRetryPolicy::new(&config);
        Ok(Self {
            inner: Arc::new(HostInner {
                shared,
                retry_linker,
                health_linker,
                cache: Mutex::new(HashMap::new()),
                compat_hash,
                active_retry,
                ticker: Mutex::new(Some((stop, ticker))),
            }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &HostConfig {
        &self.inner.shared.config
    }

    /// The active retry-policy slot: cheap to clone, shared with the host, and safe to call
    /// from many threads. It answers with the built-in schedule until a plugin is loaded.
    pub fn retry_policy(&self) -> ActiveRetryPolicy {
        self.inner.active_retry.clone()
    }

    /// Verifies a retry-policy component and, only if it passes, makes it the active policy.
    /// Named after the first 12 hex digits of its SHA-256.
    pub fn load_retry_policy(&self, bytes: &[u8]) -> Result<PluginHandle, PluginError> {
        self.load_retry_policy_named(None, bytes)
    }

    /// [`PluginHost::load_retry_policy`] with a name for logs and status pages.
    ///
    /// Compiles (or reuses the cached compilation), links against the retry-policy world,
    /// instantiates, then runs the golden vectors: every error class at attempts 1, 2 and 5,
    /// idempotent and not, each within the call deadline (a vector that overruns it is run once
    /// more, since the deadline is wall-clock time) and with any delay at most
    /// [`HostConfig::max_retry_delay`]. Then swaps it in atomically; calls already running
    /// finish on the previous plugin. On any failure the previous plugin stays active.
    pub fn load_retry_policy_named(&self, name: Option<&str>, bytes: &[u8]) -> Result<PluginHandle, PluginError> {
        let plugin = self.verify_retry_policy(name, bytes)?;
        let handle = plugin.handle().clone();
        self.inner.active_retry.install(plugin);
        tracing::info!(plugin = %handle.name, hash = %handle.content_hash, "retry policy plugin activated");
        Ok(handle)
    }

    /// Compiles, links, instantiates and runs the golden vectors without activating anything.
    pub(crate) fn verify_retry_policy(
        &self,
        name: Option<&str>,
        bytes: &[u8],
    ) -> Result<Arc<LoadedRetryPolicy>, PluginError> {
        let (component, hash) = self.compile(bytes)?;
        let pre = self
            .inner
            .retry_linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::UnsupportedImport(format!("{e:#}")))?;
        let pre = retry::RetryPolicyPre::new(pre)
            .map_err(|e| PluginError::WrongWorld { expected: "retry-policy", detail: format!("{e:#}") })?;
        let handle = handle(name, PluginWorld::RetryPolicy, &hash);
        let plugin = Arc::new(LoadedRetryPolicy::new(self.inner.shared.clone(), pre, handle));
        plugin.verify()?;
        Ok(plugin)
    }

    /// Verifies a health-check component by running its `check` once against `query`, within
    /// [`HostConfig::check_timeout`]. The check's verdict does not matter (a failing database
    /// is not the plugin's fault); returning a well-formed result in time does.
    pub fn load_health_check(
        &self,
        name: Option<&str>,
        bytes: &[u8],
        database_type: &str,
        query: Arc<dyn QueryFn>,
    ) -> Result<HealthCheckPlugin, PluginError> {
        let (component, hash) = self.compile(bytes)?;
        let pre = self
            .inner
            .health_linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::UnsupportedImport(format!("{e:#}")))?;
        let pre = health::HealthCheckPre::new(pre)
            .map_err(|e| PluginError::WrongWorld { expected: "health-check", detail: format!("{e:#}") })?;
        let plugin =
            HealthCheckPlugin::new(self.inner.shared.clone(), pre, handle(name, PluginWorld::HealthCheck, &hash));
        plugin.check(database_type, query)?;
        Ok(plugin)
    }

    /// Compiles `bytes`, or returns the cached compilation of identical bytes.
    fn compile(&self, bytes: &[u8]) -> Result<(Component, [u8; 32]), PluginError> {
        sniff(bytes)?;
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        let key = (hash, self.inner.compat_hash);
        if let Some(component) = self.inner.cache.lock().ok().and_then(|cache| cache.get(&key).cloned()) {
            return Ok((component, hash));
        }
        let component =
            Component::new(&self.inner.shared.engine, bytes).map_err(|e| PluginError::Compile(format!("{e:#}")))?;
        if let Ok(mut cache) = self.inner.cache.lock() {
            cache.insert(key, component.clone());
        }
        Ok((component, hash))
    }

    /// Number of compiled components held in the in-memory cache.
    pub fn cached_components(&self) -> usize {
        self.inner.cache.lock().map_or(0, |cache| cache.len())
    }
}

fn handle(name: Option<&str>, world: PluginWorld, hash: &[u8; 32]) -> PluginHandle {
    let content_hash: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    PluginHandle {
        name: name.map_or_else(|| content_hash[..12].to_owned(), str::to_owned),
        world,
        content_hash,
        loaded_at: SystemTime::now(),
    }
}

/// Rejects bytes that are not a component before handing them to the compiler, so the error
/// says what is wrong in the plugin author's terms.
fn sniff(bytes: &[u8]) -> Result<(), PluginError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(PluginError::NotWasm(format!(
            "{} bytes without the \\0asm header (is this a .wasm file?)",
            bytes.len()
        )));
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Err(PluginError::CoreModule),
        [_, _, 1, 0] => Ok(()),
        _ => Err(PluginError::NotWasm("unknown WebAssembly binary version or layer".to_owned())),
    }
}

fn build_engine(config: &HostConfig) -> wasmtime::Result<Engine> {
    let mut pooling = PoolingAllocationConfig::new();
    let live = config.max_live_instances;
    pooling
        .total_component_instances(live)
        .total_core_instances(live.saturating_mul(4))
        .total_memories(live.saturating_mul(2))
        .total_tables(live.saturating_mul(4))
        .max_memory_size(config.memory_limit)
        .max_memories_per_component(u32::try_from(config.max_memories).unwrap_or(u32::MAX))
        .max_core_instances_per_component(u32::try_from(config.max_instances).unwrap_or(u32::MAX))
        .max_tables_per_component(u32::try_from(config.max_tables).unwrap_or(u32::MAX));
    let mut wasm = Config::new();
    wasm.epoch_interruption(true)
        .consume_fuel(config.fuel.is_some())
        .concurrency_support(false)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    Engine::new(&wasm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trap_text_is_escaped_and_bounded() {
        assert_eq!(bounded_text("short\nline", 64), "short\\nline");
        let long = "é".repeat(1000);
        let cut = bounded_text(&long, 101);
        assert!(cut.starts_with(&"é".repeat(50)) && cut.ends_with("(2000 bytes in all)"), "{cut}");
    }
}
