//! Reads on standbys (`DB_READ_TARGET`): one pool per server of a multi-host URL, each
//! server's role and replay lag sampled by a background task, and the reads a caller marks as
//! such ([`DbManager::run_read`](crate::DbManager::run_read)) routed to a standby that answers
//! and is within `DB_REPLICA_MAX_LAG`.
//!
//! Writes never come here: they stay on the manager's primary pool and its failover. A read
//! costs one atomic load per server to choose where it goes; everything that decides those
//! states (connects, `pg_is_in_recovery()`, the lag query) runs in the sampler, off the
//! caller's path.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dbguard_core::replication::PrimaryWalHistory;
use dbguard_core::{
    CheckResult, CheckStatus, DbConfig, LoadBalanceHosts, RandomSource, ReadTarget, SeededRng, ServerRole, ServerState,
    ServerStatus,
};
use sea_orm::DbErr;

use crate::clock::Clock;
use crate::conn::DbConn;
use crate::owned_pool::OwnedPgPool;
use crate::secrets::Redactor;

/// Role, WAL position and replay age, in one round trip. The position is the primary's current
/// one, or how far a standby has replayed (bytes since `0/0`); a standby's lag is measured
/// against the primary's position ([`PrimaryWalHistory`]). The replay age is the fallback when the
/// primary did not answer: zero for a standby that has replayed everything it received (an idle
/// primary sends nothing to replay), else the age of the last transaction it did replay.
const SAMPLE_SQL: &str = "SELECT pg_is_in_recovery(), \
     ((CASE WHEN pg_is_in_recovery() THEN COALESCE(pg_last_wal_replay_lsn(), '0/0'::pg_lsn) \
            ELSE pg_current_wal_lsn() END) - '0/0'::pg_lsn)::float8, \
     CASE WHEN NOT pg_is_in_recovery() THEN 0::float8 \
          WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0::float8 \
          ELSE COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000, 0)::float8 \
     END";

/// What one sample of a server said.
struct Sample {
    in_recovery: bool,
    /// Current WAL position (primary) or replay position (standby), bytes.
    position: u64,
    /// The standby's own estimate of its lag, milliseconds.
    replay_age_ms: f64,
}

/// One server of the URL and what the sampler last saw of it.
pub(crate) struct Server {
    /// Position in the URL's host list.
    pub(crate) index: usize,
    host: String,
    port: u16,
    pool: OwnedPgPool,
    role: AtomicU8,
    state: AtomicU8,
    /// Milliseconds; `u64::MAX` before the first answer.
    lag_ms: AtomicU64,
    reads: AtomicU64,
}

impl Server {
    fn role(&self) -> ServerRole {
        match self.role.load(Ordering::Relaxed) {
            ROLE_PRIMARY => ServerRole::Primary,
            ROLE_STANDBY => ServerRole::Standby,
            _ => ServerRole::Unknown,
        }
    }

    fn state(&self) -> ServerState {
        match self.state.load(Ordering::Relaxed) {
            STATE_UP => ServerState::Up,
            STATE_LAGGING => ServerState::Lagging,
            _ => ServerState::Down,
        }
    }

    /// Whether a read may go here now: a standby that answers and is fresh enough.
    fn takes_reads(&self) -> bool {
        self.role.load(Ordering::Relaxed) == ROLE_STANDBY && self.state.load(Ordering::Relaxed) == STATE_UP
    }

    /// A handle for one read on this server's pool.
    pub(crate) fn conn(&self, config: &DbConfig) -> DbConn {
        DbConn::owned_postgres(self.pool.clone(), config.pool.statement_mode)
    }

    /// A read on this server could not reach it: no more reads until the sampler sees it answer.
    pub(crate) fn mark_down(&self) {
        if self.state.swap(STATE_DOWN, Ordering::Relaxed) != STATE_DOWN {
            tracing::warn!(server = %self.label(), "standby stopped answering; its reads go elsewhere");
        }
    }

    /// A read on this server succeeded.
    pub(crate) fn count_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// `host:port`, for logs.
    pub(crate) fn label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Records one sample: the role and lag the server reported, or that it did not answer.
    fn record(&self, sample: Result<(bool, f64), String>, max_lag: Duration) {
        let label = self.label();
        let (role, state, lag_ms) = match sample {
            Err(cause) => {
                if self.state.load(Ordering::Relaxed) != STATE_DOWN {
                    tracing::warn!(server = %label, cause = %cause, "server did not answer its sample");
                }
                (self.role.load(Ordering::Relaxed), STATE_DOWN, self.lag_ms.load(Ordering::Relaxed))
            }
            Ok((in_recovery, lag_ms)) => {
                let lag_ms = if lag_ms.is_finite() && lag_ms > 0.0 { lag_ms as u64 } else { 0 };
                let role = if in_recovery { ROLE_STANDBY } else { ROLE_PRIMARY };
                let lagging = in_recovery && u128::from(lag_ms) > max_lag.as_millis();
                (role, if lagging { STATE_LAGGING } else { STATE_UP }, lag_ms)
            }
        };
        let previous = self.state.swap(state, Ordering::Relaxed);
        self.role.store(role, Ordering::Relaxed);
        self.lag_ms.store(lag_ms, Ordering::Relaxed);
        if previous != state {
            match state {
                STATE_UP => tracing::info!(server = %label, lag_ms, "server takes reads"),
                STATE_LAGGING => tracing::warn!(server = %label, lag_ms, "standby lags; it takes no reads"),
                _ => {}
            }
        }
    }
}

const ROLE_UNKNOWN: u8 = 0;
const ROLE_PRIMARY: u8 = 1;
const ROLE_STANDBY: u8 = 2;
const STATE_DOWN: u8 = 0;
const STATE_UP: u8 = 1;
const STATE_LAGGING: u8 = 2;

/// Every server of the URL, for reads.
pub(crate) struct Replicas {
    servers: Vec<Server>,
    load_balance: LoadBalanceHosts,
    max_lag: Duration,
    closed: AtomicBool,
    /// Scrubs driver messages (they may quote the URL) before they are logged.
    redactor: Redactor,
    clock: Clock,
    /// The primary's WAL position over the last few lag limits, sampled with the servers.
    primary_wal: Mutex<PrimaryWalHistory>,
}

impl Replicas {
    /// A lazily opened pool per server of `config`'s URL (each warms up to `DB_POOL_SIZE` in its
    /// own maintenance), with every server unknown until its first sample. Needs a Tokio runtime.
    pub(crate) fn open(config: &DbConfig, redactor: Redactor, clock: Clock) -> Result<Self, DbErr> {
        let mut servers = Vec::with_capacity(config.url.hosts().len());
        for (index, host) in config.url.hosts().iter().enumerate() {
            let options = crate::pool::pg_connect_options(config, index)?;
            servers.push(Server {
                index,
                host: host.host.clone(),
                port: host.port.unwrap_or(5432),
                pool: OwnedPgPool::new(options, crate::pool::session_setup_sql(config), &config.pool),
                role: AtomicU8::new(ROLE_UNKNOWN),
                state: AtomicU8::new(STATE_DOWN),
                lag_ms: AtomicU64::new(u64::MAX),
                reads: AtomicU64::new(0),
            });
        }
        Ok(Self {
            servers,
            load_balance: config.replicas.load_balance,
            max_lag: config.replicas.max_lag,
            closed: AtomicBool::new(false),
            redactor,
            clock,
            // Long enough to tell how far past the limit a lagging standby is, and to span at
            // least two samples.
            primary_wal: Mutex::new(PrimaryWalHistory::new(
                (config.replicas.max_lag * 4).max(config.health.interval * 2),
            )),
        })
    }

    /// The server the next read goes to, skipping the servers in `tried` (a bit per index):
    /// with `load_balance_hosts=random` any qualifying standby at random, else the first in the
    /// URL's order. `None` when no standby qualifies.
    pub(crate) fn pick(&self, tried: u64) -> Option<&Server> {
        let eligible = |server: &&Server| server.index >= 64 || tried & (1 << server.index) == 0;
        let mut candidates = self.servers.iter().filter(eligible).filter(|server| server.takes_reads());
        match self.load_balance {
            LoadBalanceHosts::Disable => candidates.next(),
            LoadBalanceHosts::Random => {
                // Reservoir sampling of one: a uniform choice in one pass, with no allocation.
                let mut chosen = None;
                for (seen, server) in candidates.enumerate() {
                    if random_below(seen as u64 + 1) == 0 {
                        chosen = Some(server);
                    }
                }
                chosen
            }
        }
    }

    /// A read ran on the primary, the `server`-th host, because no standby qualified.
    pub(crate) fn count_primary_read(&self, server: usize) {
        if let Some(server) = self.servers.get(server) {
            server.count_read();
        }
    }

    /// Why no standby takes reads now, server by server, for an error or a health check.
    pub(crate) fn why_no_standby(&self) -> String {
        let described: Vec<String> = self
            .servers
            .iter()
            .filter(|server| server.role() != ServerRole::Primary)
            .map(|server| match server.state() {
                ServerState::Lagging => format!(
                    "{}: lagging {} ms > DB_REPLICA_MAX_LAG {} ms",
                    server.label(),
                    server.lag_ms.load(Ordering::Relaxed),
                    self.max_lag.as_millis()
                ),
                ServerState::Down => format!("{}: not answering", server.label()),
                ServerState::Up => format!("{}: not a standby", server.label()),
            })
            .collect();
        if described.is_empty() { "every server is a primary".to_owned() } else { described.join("; ") }
    }

    /// Whether some standby takes reads now.
    pub(crate) fn any_standby_up(&self) -> bool {
        self.servers.iter().any(Server::takes_reads)
    }

    /// Every server with its role, state, lag, reads and pool.
    pub(crate) fn status(&self, config: &DbConfig) -> Vec<ServerStatus> {
        let total: u64 = self.servers.iter().map(|server| server.reads.load(Ordering::Relaxed)).sum();
        self.servers
            .iter()
            .map(|server| {
                let reads = server.reads.load(Ordering::Relaxed);
                let pool = server.pool.status(&config.pool);
                let lag = server.lag_ms.load(Ordering::Relaxed);
                ServerStatus {
                    host: server.host.clone(),
                    port: server.port,
                    role: server.role(),
                    state: server.state(),
                    lag_ms: (lag != u64::MAX).then_some(lag),
                    reads,
                    read_share: if total == 0 { 0.0 } else { reads as f64 / total as f64 },
                    pool,
                }
            })
            .collect()
    }

    /// A health check per server (`database:server:host:port`), and `database:reads` when no
    /// standby takes reads. None of them is required: a standby that is down or lagging, or
    /// reads falling back to the primary, make health `degraded`, never `unhealthy`.
    pub(crate) fn checks(&self, read_target: ReadTarget) -> Vec<CheckResult> {
        let mut checks: Vec<CheckResult> = self
            .servers
            .iter()
            .map(|server| {
                let lag = server.lag_ms.load(Ordering::Relaxed);
                let (status, message) = match (server.role(), server.state()) {
                    (_, ServerState::Down) => (CheckStatus::Fail, "not answering".to_owned()),
                    (ServerRole::Primary, _) => (CheckStatus::Pass, "primary".to_owned()),
                    (_, ServerState::Lagging) => (
                        CheckStatus::Warn,
                        format!(
                            "standby lagging {lag} ms > DB_REPLICA_MAX_LAG {} ms; takes no reads",
                            self.max_lag.as_millis()
                        ),
                    ),
                    (_, ServerState::Up) => (CheckStatus::Pass, "standby, takes reads".to_owned()),
                };
                let mut check = CheckResult::new(format!("database:server:{}", server.label()), status, false);
                if lag != u64::MAX {
                    check = check.observed(lag as f64, "ms");
                }
                check.message = Some(message);
                check
            })
            .collect();
        if !self.any_standby_up() {
            let outcome = match read_target {
                ReadTarget::Standby => "reads fail (DB_READ_TARGET=standby)",
                _ => "reads go to the primary",
            };
            let mut check = CheckResult::new("database:reads", CheckStatus::Fail, false);
            check.message = Some(format!("no standby takes reads; {outcome}: {}", self.why_no_standby()));
            checks.push(check);
        }
        checks
    }

    /// Samples every server once, concurrently, each bounded by `DB_HEALTH_TIMEOUT`, and records
    /// each one's role and lag. A standby's lag is the time since the primary passed its replay
    /// position; when the primary did not answer, the standby's own replay age stands in.
    pub(crate) async fn sample_all(&self, config: &DbConfig) {
        let timeout = config.health.thresholds.timeout;
        let samples = self.servers.iter().map(|server| async move {
            match tokio::time::timeout(timeout, sample(server.conn(config))).await {
                Ok(result) => result.map_err(|cause| self.redactor.scrub(&cause)),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            }
        });
        let samples = futures::future::join_all(samples).await;
        let now = self.clock.now();
        let primary_position =
            samples.iter().flatten().find(|sample| !sample.in_recovery).map(|sample| sample.position);
        let mut history = self.primary_wal.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(position) = primary_position {
            history.record(now, position);
        }
        for (server, sample) in self.servers.iter().zip(samples) {
            let observed = sample.map(|sample| {
                let lag_ms = match primary_position.and_then(|_| history.lag(now, sample.position)) {
                    _ if !sample.in_recovery => 0.0,
                    Some(lag) => lag.as_secs_f64() * 1000.0,
                    None => sample.replay_age_ms,
                };
                (sample.in_recovery, lag_ms)
            });
            server.record(observed, self.max_lag);
        }
        drop(history);
        self.publish_metrics();
    }

    /// Mirrors each server's reads, state and lag to the `dbguard_server_*` series, labelled by
    /// `server`: done by the sampler, so a read pays no metric lookup.
    fn publish_metrics(&self) {
        use crate::stats::names;
        for server in &self.servers {
            let label = server.label();
            let reads = server.reads.load(Ordering::Relaxed);
            metrics::counter!(names::SERVER_READS, "server" => label.clone()).absolute(reads);
            metrics::gauge!(names::SERVER_TAKES_READS, "server" => label.clone()).set(if server.takes_reads() {
                1.0
            } else {
                0.0
            });
            let lag = server.lag_ms.load(Ordering::Relaxed);
            if lag != u64::MAX {
                metrics::gauge!(names::SERVER_LAG_SECONDS, "server" => label).set(lag as f64 / 1000.0);
            }
        }
    }

    /// Samples every server every `DB_HEALTH_CHECK_INTERVAL` until the replicas are closed or
    /// dropped.
    pub(crate) fn spawn_sampler(self: &Arc<Self>, config: &DbConfig) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let config = config.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(config.health.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(replicas) = weak.upgrade() else { return };
                if replicas.closed.load(Ordering::Relaxed) {
                    return;
                }
                replicas.sample_all(&config).await;
            }
        });
    }

    /// Closes every server's pool and stops the sampler.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        for server in &self.servers {
            server.pool.close();
        }
    }
}

/// One sample of a server. On a [`DbConn`], so that a sample cut off by its timeout
/// mid-statement closes its connection instead of returning it to the pool with an answer
/// still unread.
async fn sample(conn: DbConn) -> Result<Sample, String> {
    use sea_orm::ConnectionTrait as _;
    let statement = sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, SAMPLE_SQL);
    let row = conn.query_one_raw(statement).await.map_err(|err| err.to_string())?;
    let row = row.ok_or_else(|| "the sample returned no row".to_owned())?;
    let in_recovery: bool = row.try_get_by_index(0).map_err(|err| err.to_string())?;
    let position: f64 = row.try_get_by_index(1).map_err(|err| err.to_string())?;
    let replay_age_ms: f64 = row.try_get_by_index(2).map_err(|err| err.to_string())?;
    Ok(Sample { in_recovery, position: position.max(0.0) as u64, replay_age_ms })
}

/// A number in `0..bound` from a per-thread [`SeededRng`] (core's generator, as the retry
/// jitter uses): spreading reads needs no shared state between threads.
fn random_below(bound: u64) -> u64 {
    /// Distinct seeds per thread.
    static NEXT_SEED: AtomicU64 = AtomicU64::new(0x6A09_E667_F3BC_C909);
    thread_local! {
        static RNG: RefCell<SeededRng> =
            RefCell::new(SeededRng::new(NEXT_SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)));
    }
    RNG.with(|rng| rng.borrow_mut().next_u64()) % bound.max(1)
}
