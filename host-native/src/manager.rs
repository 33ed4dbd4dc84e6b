//! [`DbManager`]: the pool, the guard state and the health service behind one cheap handle.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use dbguard_core::{
    Admission, BreakerState, CallGuard, ConnectionInfo, DatabaseStatus, DbConfig, Decision, ErrorClass, GiveUpReason,
    HealthReport, Idempotency, Instant, PluginStatus, PoolStatus, RetryBudget, RetryState, SeededRng, Transition,
};
use sea_orm::DatabaseConnection;

use crate::classify::{Classified, classify_db_err};
use crate::clock::Clock;
use crate::health::HealthState;
use crate::pool;
use crate::reachability::Reachability;
use crate::replicas::Replicas;
use crate::runner::{Failure, RetryAdvisor, Waits};
use crate::secrets::Redactor;
use crate::stats::Stats;

/// Retries the shared budget allows in a burst, and how fast it refills (per second).
const RETRY_BUDGET_CAPACITY: u32 = 100;
const RETRY_BUDGET_REFILL_PER_SEC: u32 = 20;

/// Guarded database access: pools, retries, breaker, health, reconnect, metrics.
///
/// Cloning is cheap and every clone shares the same state.
#[derive(Clone)]
pub struct DbManager {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for DbManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbManager").field("url", &self.inner.config.url).finish_non_exhaustive()
    }
}

/// One generation of the pool. A reconnect installs a new slot; the old one closes once the
/// calls holding it are done.
pub(crate) struct PoolSlot {
    pub(crate) pools: pool::Pools,
    pub(crate) generation: u64,
    /// Which host of the URL this pool connects to (always 0 for a single-host URL).
    pub(crate) server: usize,
}

pub(crate) struct AdvisorSlot(pub(crate) Arc<dyn RetryAdvisor>);

/// Supplies plugin rows for the status page (implemented by the plugin host integration).
pub trait PluginDirectory: Send + Sync {
    /// The loaded plugins.
    fn plugins(&self) -> Vec<PluginStatus>;
}

pub(crate) struct Inner {
    pub(crate) config: DbConfig,
    pub(crate) redactor: Redactor,
    pub(crate) clock: Clock,
    pool: ArcSwap<PoolSlot>,
    generation: AtomicU64,
    /// The breaker and the shared retry budget: changed only through the `guard_*` methods,
    /// which report every state change to the log and the gauge.
    guard: Mutex<CallGuard>,
    /// Whether the guard is settled ([`CallGuard::is_settled`]), as of its last change: then
    /// admitting a call and recording its success change nothing, and the hot path reads this
    /// flag instead of taking the lock (a lock taken by every call on every core moves its
    /// cache line between cores on every call).
    guard_settled: AtomicBool,
    pub(crate) advisor: ArcSwapOption<AdvisorSlot>,
    plugin_directory: ArcSwapOption<Box<dyn PluginDirectory>>,
    pub(crate) stats: Stats,
    pub(crate) health: HealthState,
    reconnect_lock: tokio::sync::Mutex<()>,
    /// Direct connects shared by retries waiting for a server that went away.
    pub(crate) reachability: Reachability,
    /// Rebuilds attempted (successful or not), so callers that saw a failure can tell whether a
    /// rebuild has been tried since.
    rebuild_attempts: AtomicU64,
    /// The error of the last reconnect that gave up, with `rebuild_attempts` as it left it: a
    /// reconnect that waited for that one shares its outcome instead of running its own
    /// schedule against the same unreachable server.
    last_reconnect_failure: Mutex<Option<(u64, crate::DbError)>>,
    seed: AtomicU64,
    last_connectivity_class: AtomicU8,
    /// A pool per server for reads, when `DB_READ_TARGET` sends reads to standbys.
    pub(crate) replicas: Option<Arc<Replicas>>,
}

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The database did not accept a connection within the retry policy.
    #[error("could not connect to {target} after {attempts} attempts: {class}: {cause}")]
    Unreachable {
        /// `postgresql at host:port` or `sqlite at path` (never a password).
        target: String,
        /// Connection attempts made.
        attempts: u32,
        /// The last failure's class.
        class: ErrorClass,
        /// The last failure, scrubbed of secrets.
        cause: String,
    },
    /// The URL names SQLite, but this build has no SQLite driver.
    #[error("{}", crate::pool::SQLITE_NOT_BUILT)]
    SqliteNotBuilt,
    /// The SQLite database's directory could not be created.
    #[error("cannot prepare the SQLite database directory for {path}: {cause}")]
    SqliteDirectory {
        /// The database path.
        path: String,
        /// The I/O error.
        cause: String,
    },
}

impl Inner {
    /// Applies one input to the guard under its short lock, then reports a state change.
    fn guard<R>(&self, input: impl FnOnce(&mut CallGuard) -> (R, Option<Transition>)) -> R {
        // A poisoned lock only means another thread panicked mid-update; the breaker and budget
        // remain structurally valid, so keep using them.
        let (output, transition) = {
            let mut guard = self.guard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let output = input(&mut guard);
            // Written under the lock, so the flag follows the guard's changes in their order.
            self.guard_settled.store(guard.is_settled(), Ordering::Release);
            output
        };
        if let Some(transition) = transition {
            record_breaker_state(transition.to);
            tracing::warn!(from = ?transition.from, to = ?transition.to, "circuit breaker changed state");
        }
        output
    }

    /// Whether an attempt may reach the database now.
    pub(crate) fn guard_admit(&self, now: Instant) -> Admission {
        self.guard(|guard| guard.admit(now))
    }

    /// Whether admitting a call and recording its success would change nothing now
    /// ([`CallGuard::is_settled`]). A call that reads the flag just before another thread
    /// clears it is ordered before that thread's failure, as if it had taken the lock first.
    pub(crate) fn guard_is_settled(&self) -> bool {
        self.guard_settled.load(Ordering::Acquire)
    }

    /// An attempt reached the database.
    pub(crate) fn guard_success(&self, now: Instant) {
        if self.guard_is_settled() {
            return;
        }
        self.guard(|guard| ((), guard.on_success(now)));
    }

    /// A health probe was answered by the database.
    pub(crate) fn guard_probe_success(&self, now: Instant) {
        self.guard(|guard| ((), guard.on_probe_success(now)));
    }

    /// Closes the breaker (a new pool starts with a clean record).
    pub(crate) fn guard_reset(&self, now: Instant) {
        self.guard(|guard| ((), guard.reset(now)));
    }

    /// Takes one retry from the shared budget.
    pub(crate) fn guard_spend_retry(&self, now: Instant) -> bool {
        self.guard(|guard| (guard.try_spend_retry(now), None))
    }

    /// The breaker's state now.
    pub(crate) fn breaker_state(&self, now: Instant) -> BreakerState {
        self.guard(|guard| guard.state(now))
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn next_seed(&self) -> u64 {
        self.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
    }

    pub(crate) fn last_connectivity_class(&self) -> ErrorClass {
        let index = usize::from(self.last_connectivity_class.load(Ordering::Relaxed));
        ErrorClass::ALL.get(index).copied().unwrap_or(ErrorClass::ConnectionRefused)
    }

    /// Feeds a failed attempt or probe to the breaker and, for connectivity failures, marks the
    /// health cache stale so the next reader sees the outage without waiting for the monitor.
    pub(crate) fn on_attempt_failure(&self, now: Instant, class: ErrorClass) {
        self.guard(|guard| ((), guard.on_failure(now, class)));
        if class.is_connectivity() {
            if let Some(index) = ErrorClass::ALL.iter().position(|c| *c == class) {
                self.last_connectivity_class.store(u8::try_from(index).unwrap_or(0), Ordering::Relaxed);
            }
            self.health.mark_stale_if_healthy();
        }
    }
}

impl Inner {
    /// A pool that cannot open a connection reports only "timed out waiting for a connection",
    /// which reads like the application's own concurrency. When the pool has no connection
    /// open at all, one direct connect finds the real cause (refused, 53300, auth, …). A pool
    /// whose connections are all busy is genuinely exhausted and is left as it is.
    pub(crate) async fn explain_pool_timeout(&self, classified: Classified) -> (Classified, Option<String>) {
        if classified.class != ErrorClass::PoolExhausted {
            return (classified, None);
        }
        match self.refusal_while_pool_empty().await {
            Some((refused, cause)) => (refused, Some(cause)),
            None => (classified, None),
        }
    }

    /// When the pool has no connection open at all, why the server refuses a direct connect:
    /// its class and cause (scrubbed). `None` when the pool has connections or the server
    /// accepts one. The shared probe: a storm of callers makes one direct connect, not one each.
    pub(crate) async fn refusal_while_pool_empty(&self) -> Option<(Classified, String)> {
        let slot = self.pool.load_full();
        let status = pool::status(&slot.pools, &self.config);
        if status.checked_in + status.checked_out > 0 {
            return None;
        }
        match self.reachability.check(&self.config, slot.server, &self.clock).await {
            Ok(()) => None,
            Err(unreachable) => Some((unreachable.classified.clone(), self.redactor.scrub(&unreachable.cause()))),
        }
    }
}

pub(crate) fn record_breaker_state(state: BreakerState) {
    let value = match state {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    };
    metrics::gauge!(crate::stats::names::BREAKER_STATE).set(value);
}

/// Whether a rebuild happens even when the chosen server is the one the pool already uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rebuild {
    /// An operator asked for a fresh pool.
    Always,
    /// A failure suggested a failover: only a different server is worth a new pool.
    IfServerChanged,
}

/// Chooses the server and opens a pool on it (see [`pool::select_server`]).
async fn open_selected(config: &DbConfig) -> Result<(pool::Pools, usize), (Classified, String)> {
    let server = pool::select_server(config).await.map_err(|none| (none.classified, none.cause))?;
    let db = pool::open(config, server, false).await.map_err(|err| (classify_db_err(&err), err.to_string()))?;
    Ok((db, server))
}

fn target_of(config: &DbConfig) -> String {
    let info = config.connection_info();
    match (info.host, info.port) {
        (Some(host), Some(port)) => format!("{} at {host}:{port}", info.database_type),
        _ => format!("{} at {}", info.database_type, info.database.unwrap_or_default()),
    }
}

impl DbManager {
    /// Connects now, retrying per the configured policy; fails with which host, how many
    /// attempts and the last cause if the database does not answer.
    ///
    /// The attempts go through the same loop, breaker, budget and counters as every guarded
    /// call: each one chooses the server (multi-host URLs) and opens the pool on it.
    pub async fn connect(config: DbConfig) -> Result<Self, ConnectError> {
        let manager = Self::connect_lazy(config).await?;
        let policy = manager.inner.config.retry;
        // The last cause the server gave, for the error (the surfaced error wraps it in its class
        // and the reason for giving up).
        let mut last_cause = None;
        let connected = async {
            let mut call = manager.begin_call(policy, Idempotency::Idempotent, Waits::Never);
            loop {
                let slot = manager.next_attempt(&mut call).await?;
                let outcome = manager.connect_attempt().await;
                if let Err(Failure::Attempt(sea_orm::DbErr::Custom(cause), _)) = &outcome {
                    last_cause = Some(manager.redact(cause));
                }
                if let Some(()) = manager.settle(&mut call, &slot, outcome).await? {
                    return Ok::<(), crate::DbError>(());
                }
            }
        }
        .await;
        match connected {
            Ok(()) => Ok(manager),
            Err(error) => Err(ConnectError::Unreachable {
                target: target_of(&manager.inner.config),
                attempts: error.retry_count() + 1,
                class: error.class(),
                cause: last_cause.unwrap_or_else(|| error.to_string()),
            }),
        }
    }

    /// One attempt of [`DbManager::connect`]: choose the server and open the pool on it.
    async fn connect_attempt(&self) -> Result<(), Failure> {
        use tracing::Instrument as _;
        let config = &self.inner.config;
        let span = tracing::info_span!("connect", target = %target_of(config));
        span.in_scope(|| tracing::info!(url = %config.url, "connecting"));
        let (db, server) = open_selected(config)
            .instrument(span)
            .await
            .map_err(|(classified, cause)| Failure::Attempt(sea_orm::DbErr::Custom(cause), classified))?;
        self.install_pool(db, server);
        Ok(())
    }

    /// Starts without waiting for the database: connections open on first use, so a service
    /// can come up (and report unhealthy) while its database is down, and become ready when
    /// the database appears, without a restart.
    pub async fn connect_lazy(config: DbConfig) -> Result<Self, ConnectError> {
        let redactor = Redactor::from_config(&config);
        Self::prepare(&config)?;
        // Nothing is known about the servers yet: start on the first; the first call that finds it
        // gone or read-only makes the manager choose again (multi-host URLs).
        let db = pool::open(&config, 0, true).await.map_err(|err| ConnectError::Unreachable {
            target: target_of(&config),
            attempts: 1,
            class: classify_db_err(&err).class,
            cause: redactor.scrub(&err.to_string()),
        })?;
        Ok(Self::assemble(config, redactor, Clock::new(), db, 0))
    }

    fn prepare(config: &DbConfig) -> Result<(), ConnectError> {
        if cfg!(not(feature = "sqlite")) && config.database_type() == dbguard_core::DatabaseType::Sqlite {
            return Err(ConnectError::SqliteNotBuilt);
        }
        pool::prepare_sqlite_file(config).map_err(|err| ConnectError::SqliteDirectory {
            path: config.url.sqlite_path().unwrap_or_default().to_owned(),
            cause: err.to_string(),
        })
    }

    fn assemble(config: DbConfig, redactor: Redactor, clock: Clock, pools: pool::Pools, server: usize) -> Self {
        let now = clock.now();
        let guard =
            CallGuard::new(config.breaker, RetryBudget::new(RETRY_BUDGET_CAPACITY, RETRY_BUDGET_REFILL_PER_SEC, now));
        record_breaker_state(BreakerState::Closed);
        let replicas =
            match config.replicas.routes_reads() && config.database_type() == dbguard_core::DatabaseType::Postgresql {
                false => None,
                true => match Replicas::open(&config, redactor.clone(), clock) {
                    Ok(replicas) => Some(Arc::new(replicas)),
                    // Each server's URL is the primary's with one host kept, so this cannot fail
                    // once the primary's pool opened; if it did, reads stay on the primary.
                    Err(err) => {
                        tracing::error!(error = %err, "cannot open the standbys' pools; reads stay on the primary");
                        None
                    }
                },
            };
        let inner = Inner {
            health: HealthState::new(&config),
            config,
            redactor,
            clock,
            pool: ArcSwap::from_pointee(PoolSlot { pools, generation: 0, server }),
            generation: AtomicU64::new(0),
            guard: Mutex::new(guard),
            guard_settled: AtomicBool::new(false),
            advisor: ArcSwapOption::empty(),
            plugin_directory: ArcSwapOption::empty(),
            stats: Stats::default(),
            reconnect_lock: tokio::sync::Mutex::new(()),
            reachability: Reachability::default(),
            rebuild_attempts: AtomicU64::new(0),
            last_reconnect_failure: Mutex::new(None),
            seed: AtomicU64::new(0x00DB_6A4D),
            last_connectivity_class: AtomicU8::new(0),
            replicas,
        };
        if let Some(replicas) = &inner.replicas {
            replicas.spawn_sampler(&inner.config);
        }
        Self { inner: Arc::new(inner) }
    }

    /// The configuration in force.
    pub fn config(&self) -> &DbConfig {
        &self.inner.config
    }

    /// A plain SeaORM connection to the current server, for code that needs one (for example
    /// sea-orm-migration) and manages its own errors; prefer [`DbManager::run`], which retries.
    ///
    /// On PostgreSQL this is SeaORM's own (sqlx) pool beside dbguard's: it opens connections
    /// only when used, up to `DB_POOL_SIZE + DB_MAX_OVERFLOW`, and closes them when idle; its
    /// connections are not in [`DbManager::pool_status`]. On SQLite it is the pool itself.
    pub fn connection(&self) -> DatabaseConnection {
        self.pool_slot().pools.db.clone()
    }

    pub(crate) fn pool_slot(&self) -> Arc<PoolSlot> {
        self.inner.pool.load_full()
    }

    /// What the API may show about the connection (never the password).
    pub fn info(&self) -> ConnectionInfo {
        self.inner.config.connection_info()
    }

    /// The pool's occupancy now.
    pub fn pool_status(&self) -> PoolStatus {
        pool::status(&self.pool_slot().pools, &self.inner.config)
    }

    /// Sets the `dbguard_pool_connections_*` gauges to the pool's occupancy now (health probes
    /// do it too; call it before a scrape for a fresh reading).
    pub fn record_pool_metrics(&self) {
        self.inner.stats.record_pool(&self.pool_status());
    }

    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker_state(self.inner.clock.now())
    }

    /// Health, pool, counters, breaker, plugins and the last error on one page.
    pub async fn status(&self) -> DatabaseStatus {
        let health = self.check_health(false).await;
        DatabaseStatus {
            health: (*health).clone(),
            pool: self.pool_status(),
            metrics: self.inner.stats.summary(),
            breaker: self.breaker_state(),
            plugins: self.plugins(),
            last_error: self.inner.stats.last_error(),
            migrations: self.watched_migrations().await,
            servers: self.inner.replicas.as_ref().map(|replicas| replicas.status(&self.inner.config)),
        }
    }

    /// The plugins of the installed directory (none without one).
    pub fn plugins(&self) -> Vec<PluginStatus> {
        self.inner.plugin_directory.load().as_ref().map(|d| d.plugins()).unwrap_or_default()
    }

    /// A dashboard sample of this moment, numbered `seq`, from what is already known: the
    /// cached health report (no probe), the pool, the counters, the breaker and the plugins.
    pub fn dashboard_sample(&self, seq: u64) -> dbguard_core::DashboardSample {
        dbguard_core::DashboardSample {
            seq,
            at: crate::clock::rfc3339_now(),
            health: self.cached_health().map(|report| (*report).clone()),
            pool: self.pool_status(),
            metrics: self.inner.stats.summary(),
            breaker: self.breaker_state(),
            plugins: self.plugins(),
            last_error: self.inner.stats.last_error(),
        }
    }

    /// Counters since start-up.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Installs (or with `None` removes) a retry policy that replaces the built-in schedule.
    pub fn set_retry_advisor(&self, advisor: Option<Arc<dyn RetryAdvisor>>) {
        self.inner.advisor.store(advisor.map(|a| Arc::new(AdvisorSlot(a))));
    }

    /// Installs the source of plugin rows for [`DbManager::status`].
    pub fn set_plugin_directory(&self, directory: Option<Box<dyn PluginDirectory>>) {
        self.inner.plugin_directory.store(directory.map(Arc::new));
    }

    /// Scrubs secrets from text (for callers building their own messages).
    pub fn redact(&self, text: &str) -> String {
        self.inner.redactor.scrub(text)
    }

    /// Builds a new pool, swaps it in atomically, and closes the old one once in-flight work on
    /// it has finished. Concurrent requests collapse into one rebuild and share its outcome.
    /// Returns the health after the rebuild.
    ///
    /// A server that cannot be reached is tried again on the configured retry schedule; the
    /// circuit breaker does not hold a reconnect back (rebuilding is how an operator answers an
    /// open breaker), and the error reports the retries made.
    pub async fn reconnect(&self) -> Result<Arc<HealthReport>, crate::DbError> {
        let generation_seen = self.inner.generation();
        let attempts_seen = self.inner.rebuild_attempts.load(Ordering::Acquire);
        let _rebuilding = self.inner.reconnect_lock.lock().await;
        if self.inner.generation() != generation_seen {
            // Another caller rebuilt the pool while we waited: share its result.
            return Ok(self.check_health(false).await);
        }
        let attempts_now = self.inner.rebuild_attempts.load(Ordering::Acquire);
        if attempts_now != attempts_seen
            && let Some((stamp, error)) =
                self.inner.last_reconnect_failure.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && *stamp == attempts_now
        {
            // Another caller's reconnect gave up while we waited: share its error.
            return Err(error.clone());
        }
        let mut schedule =
            RetryState::with_rng(self.config().retry, Idempotency::Idempotent, SeededRng::new(self.inner.next_seed()));
        loop {
            let (classified, message) = match self.rebuild_locked(Rebuild::Always).await {
                Ok(()) => return Ok(self.check_health(true).await),
                Err(failed) => failed,
            };
            let now = self.inner.clock.now();
            match schedule.on_failure(now, classified.class) {
                Decision::RetryAt(deadline) => {
                    tracing::warn!(
                        class = classified.class.as_str(),
                        attempt = schedule.retries(),
                        delay_ms = deadline.saturating_duration_since(now).as_millis() as u64,
                        "reconnect failed; retrying"
                    );
                    self.inner.clock.sleep_until(deadline).await;
                }
                Decision::GiveUp(reason) => {
                    let message = match reason {
                        GiveUpReason::RetriesExhausted(_) => format!("{message} ({reason})"),
                        _ => message,
                    };
                    let error = crate::DbError::with_message(
                        classified.class,
                        message,
                        schedule.retries(),
                        Some(crate::clock::rfc3339_now()),
                    );
                    let stamp = self.inner.rebuild_attempts.load(Ordering::Acquire);
                    *self.inner.last_reconnect_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((stamp, error.clone()));
                    return Err(error);
                }
            }
        }
    }

    /// After a call on pool `failed_generation` failed in a way that suggests its server is
    /// gone or read-only, chooses the server again and rebuilds the pool (multi-host URLs
    /// only). Callers that failed together share one attempt: nothing is done when the pool
    /// was replaced, or a rebuild was attempted, since this caller saw its failure.
    pub(crate) async fn fail_over(&self, class: ErrorClass, failed_generation: u64) {
        if self.inner.config.url.hosts().len() < 2 || !class.suggests_failover() {
            return;
        }
        let attempts_seen = self.inner.rebuild_attempts.load(Ordering::Acquire);
        let _rebuilding = self.inner.reconnect_lock.lock().await;
        if self.inner.generation() != failed_generation
            || self.inner.rebuild_attempts.load(Ordering::Acquire) != attempts_seen
        {
            return;
        }
        tracing::warn!(class = class.as_str(), "choosing the database server again");
        // A busy pool or a restarting server that is still the right one keeps its pool: sqlx
        // replaces broken connections itself.
        let _ = self.rebuild_locked(Rebuild::IfServerChanged).await;
    }

    /// Chooses the server now and, unless `when` says the current pool's server is still the
    /// one, builds a new pool on it, swaps it in atomically, and closes the old one once
    /// in-flight work on it has finished. The caller holds `reconnect_lock`.
    async fn rebuild_locked(&self, when: Rebuild) -> Result<(), (Classified, String)> {
        self.inner.rebuild_attempts.fetch_add(1, Ordering::AcqRel);
        let span = tracing::info_span!("reconnect", target = %target_of(&self.inner.config));
        let _entered = span.enter();
        let started = self.inner.clock.now();
        let current = self.pool_slot().server;
        let opened = match pool::select_server(&self.inner.config).await {
            Ok(server) if when == Rebuild::IfServerChanged && server == current => return Ok(()),
            Ok(server) => pool::open(&self.inner.config, server, false)
                .await
                .map(|pools| (pools, server))
                .map_err(|err| (classify_db_err(&err), err.to_string())),
            Err(none) => Err((none.classified, none.cause)),
        };
        let (pools, server) = match opened {
            Ok(selected) => selected,
            Err((classified, cause)) => {
                self.inner.stats.on_reconnect(false);
                let message = format!("reconnect failed: {}", self.inner.redactor.scrub(&cause));
                tracing::warn!(class = classified.class.as_str(), %message);
                return Err((classified, message));
            }
        };
        let generation = self.install_pool(pools, server);
        self.inner.stats.on_reconnect(true);
        tracing::info!(
            generation,
            server = %pool::server_label(&self.inner.config, server),
            elapsed_ms = self.inner.clock.now().saturating_duration_since(started).as_millis() as u64,
            "pool rebuilt"
        );
        Ok(())
    }

    /// Swaps in a pool on `server` as the next generation, closes the breaker (the new pool
    /// starts with a clean record) and retires the old pool. Returns the new generation.
    fn install_pool(&self, pools: pool::Pools, server: usize) -> u64 {
        let generation = self.inner.generation() + 1;
        let old = self.inner.pool.swap(Arc::new(PoolSlot { pools, generation, server }));
        self.inner.generation.store(generation, Ordering::Release);
        self.inner.guard_reset(self.inner.clock.now());
        // Calls that already hold the old pool finish on it; sqlx closes each connection as it
        // comes back, and new acquires there fail fast as PoolClosed, which the runner retries
        // on the new pool.
        tokio::spawn(async move { pool::close(&old.pools).await });
        self.inner.health.mark_stale();
        generation
    }

    /// Closes the pool (waiting for checked-out connections) and stops the monitor.
    pub async fn close(&self) {
        self.inner.health.stop_monitor();
        if let Some(replicas) = &self.inner.replicas {
            replicas.close();
        }
        pool::close(&self.pool_slot().pools).await;
    }

    /// Waits up to `timeout` for the pool to be idle; used by graceful shutdown.
    pub async fn drain(&self, timeout: Duration) {
        let clock = &self.inner.clock;
        let deadline = clock.now() + timeout;
        while clock.now() < deadline && self.pool_status().checked_out > 0 {
            clock.sleep_until(clock.now() + Duration::from_millis(20)).await;
        }
    }
}
