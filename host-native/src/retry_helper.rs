//! The classic `with_db_retry(max_retries, base_delay)` form, for code ported from services
//! that wrap a database call in a retry decorator.

use std::future::Future;
use std::time::Duration;

use dbguard_core::{Idempotency, RetryPolicy};
use sea_orm::DbErr;

use crate::{DbError, DbManager};

/// Runs an idempotent `op` with its own retry count and base delay (other limits as configured).
///
/// ```no_run
/// # async fn demo(manager: dbguard::DbManager) -> Result<(), dbguard::DbError> {
/// use std::time::Duration;
/// use sea_orm::ConnectionTrait;
/// dbguard::with_db_retry(&manager, 3, Duration::from_secs(1), |db| async move {
///     db.execute_unprepared("SELECT 1").await
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn with_db_retry<T, F, Fut>(
    manager: &DbManager,
    max_retries: u32,
    base_delay: Duration,
    op: F,
) -> Result<T, DbError>
where
    F: FnMut(crate::DbConn) -> Fut,
    Fut: Future<Output = Result<T, DbErr>>,
{
    let configured = manager.config().retry;
    let policy = RetryPolicy::builder()
        .max_retries(max_retries.min(RetryPolicy::MAX_RETRIES_LIMIT))
        .base_delay(base_delay.max(Duration::from_millis(1)))
        .max_delay(configured.max_delay().max(base_delay))
        .jitter(configured.jitter())
        .build()
        .unwrap_or(configured);
    manager.run_with_policy(policy, Idempotency::Idempotent, op).await
}
