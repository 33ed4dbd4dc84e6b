//! Waiting for a server that went away, on dbguard's cadence rather than the pool's.
//!
//! After a failure that says the server itself may be gone (refused, lost, shutting down,
//! starting), a retry would otherwise wait inside sqlx's acquire, which drops the pool's dead
//! connections and then retries refused connects with its own doubling backoff, up to a fifth
//! of the acquire timeout between tries: after a few seconds of outage the first success comes
//! up to seconds after the server is back. Instead the runner calls [`Reachability::wait`],
//! which connects directly every [`POLL_INTERVAL`] until the server answers or the acquire
//! timeout has passed, the same bound the pool would have applied. Waiters share one probe per
//! interval, so many retrying callers do not become a storm of connects against a server that
//! is starting; [`Reachability::check`] gives the same shared probe to a single question.

use std::sync::Arc;
use std::time::Duration;

use dbguard_core::{DbConfig, ErrorClass, Instant};
use sea_orm::{DbErr, RuntimeErr};

use crate::classify::{Classified, classify_sqlx};
use crate::clock::Clock;

/// How often a waiting retry checks whether the server is back.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Why a direct connect to the server failed.
#[derive(Debug, Clone)]
pub(crate) struct Unreachable {
    /// The failure's class, as the runner acts on it.
    pub(crate) classified: Classified,
    /// What the driver said, or that the connect timed out (not yet scrubbed of secrets).
    error: Arc<sqlx::Error>,
    /// The acquire timeout, for the message of a connect that timed out.
    timeout: Duration,
}

impl Unreachable {
    /// Classifies a failed direct connect. A timeout is reported as [`ErrorClass::Timeout`]:
    /// the server does not answer, whatever sqlx calls it.
    pub(crate) fn from_connect_error(error: sqlx::Error, timeout: Duration) -> Self {
        let mut classified = classify_sqlx(&error);
        if classified.class == ErrorClass::PoolExhausted {
            classified.class = ErrorClass::Timeout;
        }
        Self { classified, error: Arc::new(error), timeout }
    }

    /// The cause in words (scrub it before showing: driver messages may quote the URL).
    pub(crate) fn cause(&self) -> String {
        match *self.error {
            sqlx::Error::PoolTimedOut => format!("connecting timed out after {} ms", self.timeout.as_millis()),
            ref other => other.to_string(),
        }
    }

    /// The failure as the error type the runner records for an attempt.
    pub(crate) fn to_db_err(&self) -> DbErr {
        match *self.error {
            sqlx::Error::PoolTimedOut => DbErr::Conn(RuntimeErr::Internal(self.cause())),
            _ => DbErr::Conn(RuntimeErr::SqlxError(Arc::clone(&self.error))),
        }
    }
}

/// The last direct connect's outcome, shared by concurrent waiters.
struct Probe {
    at: Instant,
    server: usize,
    outcome: Result<(), Unreachable>,
}

/// One probe per [`POLL_INTERVAL`] for all callers waiting on the same manager.
#[derive(Default)]
pub(crate) struct Reachability {
    last: tokio::sync::Mutex<Option<Probe>>,
}

impl Reachability {
    /// Returns once the `server`-th host of the URL accepts a connection, or with the last
    /// failure once `config.pool.timeout` has passed.
    pub(crate) async fn wait(&self, config: &DbConfig, server: usize, clock: &Clock) -> Result<(), Unreachable> {
        let give_up_at = clock.now() + config.pool.timeout;
        loop {
            let unreachable = match self.probe(config, server, clock, give_up_at).await {
                Ok(()) => return Ok(()),
                Err(unreachable) => unreachable,
            };
            let next = clock.now() + POLL_INTERVAL;
            if next >= give_up_at {
                return Err(unreachable);
            }
            clock.sleep_until(next).await;
        }
    }

    /// Whether the `server`-th host accepts a connection now: the shared probe, bounded by the
    /// acquire timeout.
    pub(crate) async fn check(&self, config: &DbConfig, server: usize, clock: &Clock) -> Result<(), Unreachable> {
        self.probe(config, server, clock, clock.now() + config.pool.timeout).await
    }

    /// The outcome of a probe younger than the poll interval, or of a new one. A waiter never
    /// queues for the shared probe past its own deadline (a probe of a silent host can take
    /// the whole acquire timeout).
    async fn probe(
        &self,
        config: &DbConfig,
        server: usize,
        clock: &Clock,
        give_up_at: Instant,
    ) -> Result<(), Unreachable> {
        let timed_out = || Unreachable::from_connect_error(sqlx::Error::PoolTimedOut, config.pool.timeout);
        let mut last =
            tokio::time::timeout_at(clock.to_tokio(give_up_at), self.last.lock()).await.map_err(|_| timed_out())?;
        let now = clock.now();
        if let Some(probe) = last.as_ref()
            && probe.server == server
            && now.saturating_duration_since(probe.at) < POLL_INTERVAL
        {
            return probe.outcome.clone();
        }
        let outcome = crate::pool::verify_reachable(config, server)
            .await
            .map_err(|error| Unreachable::from_connect_error(error, config.pool.timeout));
        *last = Some(Probe { at: clock.now(), server, outcome: outcome.clone() });
        outcome
    }
}
