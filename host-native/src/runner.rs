//! The retry runner: [`GuardedCall`] and its three steps are the only retry logic. It sleeps through the
//! manager's [`Clock`](crate::clock::Clock); classification happens in [`crate::classify`],
//! decisions (policy, breaker, budget, class rules) in core.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use dbguard_core::{
    Admission, AttemptInfo, DatabaseType, Decision, ErrorClass, GiveUpReason, Idempotency, Instant, PolicyVerdict,
    RetryPolicy, RetryState, SeededRng,
};
use sea_orm::DbErr;

use crate::classify::{Classified, classify_db_err};
use crate::clock::rfc3339_now;
use crate::conn::DbConn;
use crate::error::DbError;
use crate::manager::{DbManager, PoolSlot};
use crate::reachability::Unreachable;
use crate::transaction::TxnOptions;

/// A retry policy that replaces core's built-in schedule (for example a WebAssembly plugin).
///
/// The runner still enforces the hard limits (max retries, delay cap, non-idempotent safety,
/// commit-outcome-unknown), so an advisor only chooses whether and how long.
pub trait RetryAdvisor: Send + Sync {
    /// The verdict for one failure.
    fn decide(&self, info: &AttemptInfo) -> PolicyVerdict;
}

/// The boxed future a transaction body returns.
pub type TxnFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T, DbErr>> + Send + 'c>>;

/// A database step that failed: with the database's own error, or abandoned at the deadline.
enum StepError {
    /// The database (or the driver) answered with an error.
    Failed(DbErr),
    /// No answer came before the attempt deadline.
    TimedOut(DbErr),
}

/// What stops an attempt whose statement runs too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// The runner's attempt deadline, a runtime timer around the attempt: needed wherever no
    /// answer may ever come (a partitioned network) or where the backend cannot stop a statement
    /// itself.
    Deadline,
    /// The backend, on its own: SQLite on dbguard's pool interrupts a statement at
    /// `DB_STATEMENT_TIMEOUT`, waits on a lock for at most its busy timeout, and the checkout is
    /// bounded by `DB_POOL_TIMEOUT`; a timer per attempt would only add its cost.
    Backend,
}

impl Bound {
    /// How attempts on `slot`'s pools are bounded.
    fn of(slot: &PoolSlot) -> Self {
        if slot.pools.ends_long_statements_itself() { Self::Backend } else { Self::Deadline }
    }
}

/// How one attempt of a guarded call failed.
pub(crate) enum Failure {
    /// Nothing reached the database because a reconnect closed the pool: go again at once.
    RaceWithReconnect,
    /// Classified failure of an attempt.
    Attempt(DbErr, Classified),
}

/// One guarded call in progress: its retry schedule and what it has seen so far.
pub(crate) struct GuardedCall {
    state: RetryState<SeededRng>,
    idempotency: Idempotency,
    waits: Waits,
    started: Instant,
    /// Attempts handed a pool slot so far.
    attempts: u32,
    last_failure: Option<ErrorClass>,
}

/// Whether a retry first waits for a server that may be gone ([`crate::reachability`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waits {
    /// Calls on a pool: the pool cannot tell a restarted server from a dead one.
    ForServer,
    /// Attempts that are themselves direct connects: the first connect, [`DbManager::run_direct`].
    Never,
}

impl DbManager {
    /// Runs `op` against the pool, retrying per the policy.
    ///
    /// `op` receives a [`DbConn`] for each attempt: on PostgreSQL one connection of dbguard's
    /// pool, checked out at its first statement and returned when the handle is dropped. An
    /// [`Idempotency::NonIdempotent`] operation is repeated only after errors that prove
    /// nothing took effect; if its connection died mid-flight the error is reported as
    /// [`ErrorClass::CommitOutcomeUnknown`] and never replayed.
    ///
    /// ```no_run
    /// # async fn demo(manager: dbguard::DbManager) -> Result<(), dbguard::DbError> {
    /// use sea_orm::ConnectionTrait;
    /// let answer = manager
    ///     .run(dbguard::Idempotency::Idempotent, |db| async move {
    ///         db.execute_unprepared("SELECT 1").await.map(|r| r.rows_affected())
    ///     })
    ///     .await?;
    /// # let _ = answer; Ok(()) }
    /// ```
    pub async fn run<T, F, Fut>(&self, idempotency: Idempotency, op: F) -> Result<T, DbError>
    where
        F: FnMut(DbConn) -> Fut,
        Fut: Future<Output = Result<T, DbErr>>,
    {
        self.run_with_policy(self.config().retry, idempotency, op).await
    }

    /// [`DbManager::run`] with a retry policy other than the configured one.
    pub async fn run_with_policy<T, F, Fut>(
        &self,
        policy: RetryPolicy,
        idempotency: Idempotency,
        mut op: F,
    ) -> Result<T, DbError>
    where
        F: FnMut(DbConn) -> Fut,
        Fut: Future<Output = Result<T, DbErr>>,
    {
        self.run_attempts(policy, idempotency, Waits::ForServer, Bound::of, |slot| op(slot.pools.conn())).await
    }

    /// Runs `op`, a call that opens a connection of its own instead of using the pool (the HTTP
    /// API's read-only test query does, as a least-privilege login), under the configured
    /// retry policy, breaker and retry budget, like [`DbManager::run`]. Each attempt is itself
    /// a direct connect, so a retry never first waits for the server to answer; report a
    /// driver error as `DbErr::Conn(RuntimeErr::SqlxError(..))` so that it is classified.
    ///
    /// ```no_run
    /// # async fn demo(manager: dbguard::DbManager, url: String) -> Result<(), dbguard::DbError> {
    /// use std::sync::Arc;
    /// use sea_orm::{DbErr, RuntimeErr};
    /// use sqlx::Connection;
    /// let version: String = manager
    ///     .run_direct(dbguard::Idempotency::Idempotent, || async {
    ///         let as_db_err = |err| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err)));
    ///         let mut conn = sqlx::PgConnection::connect(&url).await.map_err(as_db_err)?;
    ///         sqlx::query_scalar("SELECT version()").fetch_one(&mut conn).await.map_err(as_db_err)
    ///     })
    ///     .await?;
    /// # let _ = version; Ok(()) }
    /// ```
    pub async fn run_direct<T, F, Fut>(&self, idempotency: Idempotency, mut op: F) -> Result<T, DbError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DbErr>>,
    {
        // Each attempt opens a connection of its own, which no statement timer of dbguard's
        // pool watches.
        self.run_attempts(self.config().retry, idempotency, Waits::Never, |_| Bound::Deadline, |_| op()).await
    }

    /// Runs `op`, a unit of work that only reads, on a standby when `DB_READ_TARGET` allows it
    /// (otherwise exactly like [`DbManager::run`] with [`Idempotency::Idempotent`]).
    ///
    /// The read goes to a standby that answers and is within `DB_REPLICA_MAX_LAG`, spread over
    /// them as the URL's `load_balance_hosts` says. A read that fails on a standby in a way
    /// worth retrying (the standby is unreachable, or a conflict with recovery cancelled it)
    /// goes at once to another qualifying standby; a standby that could not be reached takes no
    /// reads until the sampler sees it answer again. When no standby qualifies, the read runs on
    /// the primary under the configured retry policy (`prefer-standby`), or fails at once
    /// (`standby`). Do not write in `op`: a standby refuses writes (`read_only_server`).
    ///
    /// ```no_run
    /// # async fn demo(manager: dbguard::DbManager) -> Result<(), dbguard::DbError> {
    /// use sea_orm::{ConnectionTrait, DbBackend, Statement};
    /// let row = manager
    ///     .run_read(|db| async move {
    ///         db.query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT count(*) FROM orders")).await
    ///     })
    ///     .await?;
    /// # let _ = row; Ok(()) }
    /// ```
    pub async fn run_read<T, F, Fut>(&self, mut op: F) -> Result<T, DbError>
    where
        F: FnMut(DbConn) -> Fut,
        Fut: Future<Output = Result<T, DbErr>>,
    {
        let Some(replicas) = self.inner.replicas.as_deref() else {
            return self.run(Idempotency::Idempotent, op).await;
        };
        let config = &self.inner.config;
        let started = self.inner.clock.now();
        let mut tried = 0u64;
        let mut retries = 0u32;
        while let Some(server) = replicas.pick(tried) {
            let step = op(server.conn(config));
            let failure = match self.within_deadline(self.inner.clock.now(), Bound::Deadline, step).await {
                Ok(value) => {
                    server.count_read();
                    self.inner.stats.on_call(self.inner.clock.now().saturating_duration_since(started), true);
                    return Ok(value);
                }
                Err(StepError::Failed(err)) => {
                    let classified = classify_db_err(&err);
                    (err, classified)
                }
                Err(StepError::TimedOut(err)) => (err, Classified::timeout()),
            };
            let (err, classified) = failure;
            self.inner.stats.on_failed_attempt(classified.class);
            if !classified.class.is_retryable() {
                let error = DbError::from_db_err(
                    err,
                    None,
                    classified.class,
                    classified.code,
                    retries,
                    Some(rfc3339_now()),
                    Some(GiveUpReason::NotRetryable(classified.class)),
                    &self.inner.redactor,
                );
                self.on_read_surfaced(started, &error);
                return Err(error);
            }
            if classified.class.is_connectivity() {
                server.mark_down();
            }
            tracing::warn!(
                server = %server.label(),
                class = classified.class.as_str(),
                "read failed on a standby; trying another server"
            );
            tried |= 1u64.checked_shl(u32::try_from(server.index).unwrap_or(u32::MAX)).unwrap_or(0);
            retries += 1;
        }
        if config.replicas.read_target == dbguard_core::ReadTarget::Standby {
            let error = DbError::with_message(
                ErrorClass::ConnectionRefused,
                format!(
                    "connection_refused: no standby takes reads and DB_READ_TARGET=standby forbids the primary: {}",
                    replicas.why_no_standby()
                ),
                retries,
                Some(rfc3339_now()),
            );
            self.on_read_surfaced(started, &error);
            return Err(error);
        }
        let outcome = self.run(Idempotency::Idempotent, op).await;
        if outcome.is_ok() {
            replicas.count_primary_read(self.pool_slot().server);
        }
        outcome
    }

    /// Counts a read that gave up on the standbys, as a failed call with its error.
    fn on_read_surfaced(&self, started: Instant, error: &DbError) {
        self.inner.stats.on_call(self.inner.clock.now().saturating_duration_since(started), false);
        self.inner.stats.on_surfaced_error(error.class(), &error.to_string(), rfc3339_now());
    }

    /// The loop of [`DbManager::run_with_policy`] and [`DbManager::run_direct`]: one attempt of
    /// `op` per admitted slot until it succeeds or the call gives up, each attempt bounded as
    /// `bound` says for its slot.
    async fn run_attempts<T, F, Fut>(
        &self,
        policy: RetryPolicy,
        idempotency: Idempotency,
        waits: Waits,
        bound: fn(&PoolSlot) -> Bound,
        mut op: F,
    ) -> Result<T, DbError>
    where
        F: FnMut(&PoolSlot) -> Fut,
        Fut: Future<Output = Result<T, DbErr>>,
    {
        let mut call = self.begin_call(policy, idempotency, waits);
        loop {
            let slot = self.next_attempt(&mut call).await?;
            let outcome = self.step(&slot, self.attempt_started(&call), bound(&slot), op(&slot)).await;
            if let Some(value) = self.settle(&mut call, &slot, outcome).await? {
                return Ok(value);
            }
        }
    }

    /// Runs `body` in a transaction, retrying the whole transaction when it fails in a way
    /// that rolled it back (serialization failure, deadlock, lost connection before `COMMIT`).
    /// A connection lost after `COMMIT` was sent is reported as
    /// [`ErrorClass::CommitOutcomeUnknown`] and not replayed.
    ///
    /// ```no_run
    /// # async fn demo(manager: dbguard::DbManager) -> Result<(), dbguard::DbError> {
    /// use sea_orm::ConnectionTrait;
    /// manager
    ///     .transaction(|txn| Box::pin(async move {
    ///         txn.execute_unprepared("UPDATE accounts SET balance = balance - 10 WHERE id = 1").await?;
    ///         txn.execute_unprepared("UPDATE accounts SET balance = balance + 10 WHERE id = 2").await?;
    ///         Ok(())
    ///     }))
    ///     .await
    /// # }
    /// ```
    pub async fn transaction<T, F>(&self, body: F) -> Result<T, DbError>
    where
        F: for<'c> FnMut(&'c DbConn) -> TxnFuture<'c, T>,
    {
        self.transaction_with(TxnOptions::default(), body).await
    }

    /// [`DbManager::transaction`] with an isolation level, access mode or SQLite lock mode.
    pub async fn transaction_with<T, F>(&self, options: TxnOptions, mut body: F) -> Result<T, DbError>
    where
        F: for<'c> FnMut(&'c DbConn) -> TxnFuture<'c, T>,
    {
        // Until COMMIT is sent the server rolls back whatever happened, so the body is safe
        // to repeat as a whole.
        let mut call = self.begin_call(self.config().retry, Idempotency::Idempotent, Waits::ForServer);
        loop {
            let slot = self.next_attempt(&mut call).await?;
            let outcome = self.transaction_attempt(&slot, &options, &mut body).await;
            if let Some(value) = self.settle(&mut call, &slot, outcome).await? {
                return Ok(value);
            }
        }
    }

    /// One attempt of a transaction: begin, the body, commit.
    async fn transaction_attempt<T, F>(&self, slot: &PoolSlot, options: &TxnOptions, body: &mut F) -> Result<T, Failure>
    where
        F: for<'c> FnMut(&'c DbConn) -> TxnFuture<'c, T>,
    {
        let bound = Bound::of(slot);
        let txn = self.step(slot, self.inner.clock.now(), bound, slot.pools.conn().begin(options)).await?;
        let value = match self.step(slot, self.inner.clock.now(), bound, body(&txn)).await {
            Ok(value) => value,
            Err(failure) => {
                // A failed rollback means the connection is gone; the server rolls back. (An
                // abandoned transaction is rolled back once the server answers.)
                let _ = txn.rollback().await;
                return Err(failure);
            }
        };
        match self.within_deadline(self.inner.clock.now(), bound, txn.commit()).await {
            Ok(()) => Ok(value),
            Err(StepError::Failed(err)) => Err(self.classify_commit_failure(err)),
            // COMMIT was sent and nothing came back: it may have applied.
            Err(StepError::TimedOut(err)) => {
                Err(Failure::Attempt(err, Classified::of(ErrorClass::CommitOutcomeUnknown)))
            }
        }
    }

    /// Starts a guarded call. Every retrying caller (`run`, `transaction`, the first connect)
    /// drives the same three steps in its loop: [`DbManager::next_attempt`] for the pool slot to
    /// try, its own attempt on that slot, and [`DbManager::settle`] for the outcome.
    pub(crate) fn begin_call(&self, policy: RetryPolicy, idempotency: Idempotency, waits: Waits) -> GuardedCall {
        GuardedCall {
            state: RetryState::with_rng(policy, idempotency, SeededRng::new(self.inner.next_seed())),
            idempotency,
            waits,
            started: self.inner.clock.now(),
            attempts: 0,
            last_failure: None,
        }
    }

    /// The pool slot the next attempt of `call` runs on, once the breaker admits it and (after
    /// a failure that says the server may be gone) the server answers again. Fails with the
    /// error to surface when the call must give up first.
    pub(crate) async fn next_attempt(&self, call: &mut GuardedCall) -> Result<Arc<PoolSlot>, DbError> {
        loop {
            if !self.admit(call).await? {
                continue;
            }
            let slot = self.pool_slot();
            match self.wait_for_server(&slot, call.waits, call.last_failure).await {
                Ok(()) => {
                    call.attempts += 1;
                    return Ok(slot);
                }
                Err(unreachable) => {
                    let failure = Failure::Attempt(unreachable.to_db_err(), unreachable.classified);
                    self.settle::<()>(call, &slot, Err(failure)).await?;
                }
            }
        }
    }

    /// Records the outcome of an attempt on `slot`: the value to return, `None` to try again
    /// (after sleeping until the retry), or the error to surface.
    pub(crate) async fn settle<T>(
        &self,
        call: &mut GuardedCall,
        slot: &PoolSlot,
        outcome: Result<T, Failure>,
    ) -> Result<Option<T>, DbError> {
        match outcome {
            Ok(value) => {
                self.on_call_success(call.started);
                Ok(Some(value))
            }
            Err(Failure::RaceWithReconnect) => Ok(None),
            Err(Failure::Attempt(err, classified)) => {
                call.last_failure = Some(self.after_failure(call, err, classified, slot.generation).await?);
                Ok(None)
            }
        }
    }

    /// When the attempt `call` was just handed a slot for started: for the first attempt, the
    /// call's own start (read a moment before, with nothing in between that waits), else now.
    fn attempt_started(&self, call: &GuardedCall) -> Instant {
        if call.attempts == 1 { call.started } else { self.inner.clock.now() }
    }

    /// One database step of an attempt on `slot`, started at `started`, bounded as `bound`
    /// says, with its failure classified.
    async fn step<T>(
        &self,
        slot: &PoolSlot,
        started: Instant,
        bound: Bound,
        step: impl Future<Output = Result<T, DbErr>>,
    ) -> Result<T, Failure> {
        match self.within_deadline(started, bound, step).await {
            Ok(value) => Ok(value),
            Err(StepError::Failed(err)) => Err(self.classify_failure(err, slot.generation)),
            Err(StepError::TimedOut(err)) => Err(Failure::Attempt(err, Classified::timeout())),
        }
    }

    /// Before a retry after `last_failure`, waits for the server when that failure says it may be
    /// gone: see [`crate::reachability`]. The pool's own state cannot tell: after a restart it
    /// still holds idle connections to the old server process, which sqlx tests and drops at
    /// checkout before it starts its own connect backoff. Returns at once for other failures
    /// and always for SQLite (a file has no server to come back).
    async fn wait_for_server(
        &self,
        slot: &PoolSlot,
        waits: Waits,
        last_failure: Option<ErrorClass>,
    ) -> Result<(), Unreachable> {
        let config = &self.inner.config;
        if waits == Waits::Never
            || !last_failure.is_some_and(ErrorClass::says_server_may_be_gone)
            || config.database_type() != DatabaseType::Postgresql
        {
            return Ok(());
        }
        self.inner.reachability.wait(config, slot.server, &self.inner.clock).await
    }

    /// Awaits one database step of an attempt, giving it up once the attempt deadline passes
    /// ([`PoolConfig::attempt_deadline`](dbguard_core::PoolConfig::attempt_deadline)): the
    /// server cancels a long statement itself, so this fires only when no answer can come (a
    /// network partition), and the caller gets a timeout instead of a hang. With
    /// [`Bound::Backend`] the step is awaited as it is.
    async fn within_deadline<T>(
        &self,
        started: Instant,
        bound: Bound,
        step: impl Future<Output = Result<T, DbErr>>,
    ) -> Result<T, StepError> {
        if bound == Bound::Backend {
            return step.await.map_err(StepError::Failed);
        }
        let deadline = self.inner.config.pool.attempt_deadline();
        match self.inner.clock.timeout_at(started + deadline, step).await {
            Some(result) => result.map_err(StepError::Failed),
            None => Err(StepError::TimedOut(DbErr::Custom(format!(
                "no answer from the database within {} ms; the attempt was abandoned",
                deadline.as_millis()
            )))),
        }
    }

    /// Asks the breaker whether this attempt may reach the database. A new call is refused at
    /// once while the breaker is open (fail fast). A call already retrying instead waits out
    /// its own schedule without touching the database, and is refused only when the schedule
    /// is used up. Returns `Ok(false)` when the caller should ask again.
    async fn admit(&self, call: &mut GuardedCall) -> Result<bool, DbError> {
        if self.inner.guard_is_settled() {
            // Admitted with no lock and no clock read: see `Inner::guard_is_settled`.
            return Ok(true);
        }
        let (state, started) = (&mut call.state, call.started);
        let now = self.inner.clock.now();
        let admission = self.inner.guard_admit(now);
        let Admission::Rejected { retry_at } = admission else { return Ok(true) };
        metrics::counter!(crate::stats::names::BREAKER_REJECTIONS).increment(1);
        if state.retries() > 0
            && let Decision::RetryAt(deadline) = state.on_failure(now, ErrorClass::ConnectionRefused)
        {
            self.inner.clock.sleep_until(deadline).await;
            return Ok(false);
        }
        let error = DbError::circuit_open(
            self.inner.last_connectivity_class(),
            retry_at.saturating_duration_since(now).as_millis(),
            state.retries(),
            Some(rfc3339_now()),
        );
        self.inner.stats.on_call(now.saturating_duration_since(started), false);
        self.inner.stats.on_surfaced_error(error.class(), &error.to_string(), rfc3339_now());
        // Failing fast must not starve the runtime when a caller loops on it.
        tokio::task::consume_budget().await;
        Err(error)
    }

    fn on_call_success(&self, started: Instant) {
        let now = self.inner.clock.now();
        self.inner.guard_success(now);
        self.inner.stats.on_call(now.saturating_duration_since(started), true);
    }

    fn classify_failure(&self, err: DbErr, generation: u64) -> Failure {
        let classified = classify_db_err(&err);
        if classified.pool_closed && self.inner.generation() != generation {
            return Failure::RaceWithReconnect;
        }
        Failure::Attempt(err, classified)
    }

    fn classify_commit_failure(&self, err: DbErr) -> Failure {
        let mut classified = classify_db_err(&err);
        // The server may or may not have committed: only an answer from it settles that.
        if classified.class.may_have_applied() {
            classified.class = ErrorClass::CommitOutcomeUnknown;
        }
        Failure::Attempt(err, classified)
    }

    /// Records a failed attempt on pool `generation`, asks the policy, and either sleeps until
    /// the retry and returns the failure's class, or returns the error to surface. A failure
    /// that suggests the server is gone or read-only first makes a multi-host manager choose
    /// its server again.
    async fn after_failure(
        &self,
        call: &mut GuardedCall,
        err: DbErr,
        classified: Classified,
        generation: u64,
    ) -> Result<ErrorClass, DbError> {
        let (state, idempotency, started) = (&mut call.state, call.idempotency, call.started);
        let (classified, cause) = self.inner.explain_pool_timeout(classified).await;
        self.fail_over(classified.class, generation).await;
        let now = self.inner.clock.now();
        let class = classified.class;
        self.inner.stats.on_failed_attempt(class);
        // A failure on a pool that a rebuild has since replaced says nothing about the new one.
        if generation == self.inner.generation() {
            self.inner.on_attempt_failure(now, class);
        }
        let decision = self.decide(state, now, &classified);
        match decision {
            Decision::RetryAt(deadline) => {
                self.inner.stats.on_retry(class);
                tracing::warn!(
                    class = class.as_str(),
                    code = classified.code.as_deref().unwrap_or(""),
                    attempt = state.retries(),
                    delay_ms = deadline.saturating_duration_since(now).as_millis() as u64,
                    "database call failed; retrying"
                );
                self.inner.clock.sleep_until(deadline).await;
                Ok(class)
            }
            Decision::GiveUp(reason) => {
                let surfaced = class.surfaced(idempotency, &reason);
                let error = DbError::from_db_err(
                    err,
                    cause,
                    surfaced,
                    classified.code,
                    state.retries(),
                    Some(rfc3339_now()),
                    Some(reason),
                    &self.inner.redactor,
                );
                tracing::debug!(class = surfaced.as_str(), retries = state.retries(), error = %error, "giving up");
                self.inner.stats.on_call(now.saturating_duration_since(started), false);
                self.inner.stats.on_surfaced_error(surfaced, &error.to_string(), rfc3339_now());
                Err(error)
            }
        }
    }

    fn decide(&self, state: &mut RetryState<SeededRng>, now: Instant, classified: &Classified) -> Decision {
        let advisor = self.inner.advisor.load();
        let decision = match advisor.as_deref() {
            Some(slot) => {
                state.on_failure_with(now, classified.class, classified.code.as_deref(), |info| slot.0.decide(info))
            }
            None => state.on_failure(now, classified.class),
        };
        match decision {
            Decision::RetryAt(deadline) if !self.inner.guard_spend_retry(now) => {
                let _ = deadline;
                Decision::GiveUp(GiveUpReason::RetryBudgetExhausted)
            }
            other => other,
        }
    }
}
