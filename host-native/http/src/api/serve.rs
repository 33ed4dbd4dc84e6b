//! Serving the router over HTTP/1 with a header-read timeout and a bounded graceful shutdown.

use std::future::Future;
use std::time::Duration;

use super::{AppState, HEADER_READ_TIMEOUT, MAX_HEADER_FIELDS, SHUTDOWN_DRAIN_LIMIT, router};

/// Header fields HTTP/1 parsing accepts before it answers a bare 431 itself: well above
/// [`MAX_HEADER_FIELDS`], so that the router's own check answers first, with the envelope.
const PARSER_MAX_HEADER_FIELDS: usize = 5 * MAX_HEADER_FIELDS;

/// Bounds on what a client can hold open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for open connections before closing them.
    pub shutdown_drain_limit: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self { header_read_timeout: HEADER_READ_TIMEOUT, shutdown_drain_limit: SHUTDOWN_DRAIN_LIMIT }
    }
}

/// Serves the API on `listener` until `shutdown` completes, then stops accepting and waits for
/// in-flight requests to finish, at most [`SHUTDOWN_DRAIN_LIMIT`]. Each connection must send
/// its request headers within [`HEADER_READ_TIMEOUT`]. Closing the pools is the caller's (see
/// `dbguard serve`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(listener, state, shutdown, ServeLimits::default()).await
}

/// [`serve`] with other [`ServeLimits`].
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let sampler = tokio::spawn(crate::dashboard::sample_forever(state.clone()));
    let app = router(state.clone());
    let mut http = hyper::server::conn::http1::Builder::new();
    // Without a timer hyper cannot time anything, and its header timeout stays off.
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).max_headers(PARSER_MAX_HEADER_FIELDS);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
        });
    }
    drop(listener);
    // Open dashboard streams would otherwise hold their connections until the drain limit.
    state.dashboard().close();
    sampler.abort();
    if tokio::time::timeout(limits.shutdown_drain_limit, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            limit_ms = limits.shutdown_drain_limit.as_millis() as u64,
            "connections still open at shutdown; closing them"
        );
    }
    Ok(())
}
