//! The HTTP API (axum): health, info, status, query analytics, the read-only test query,
//! reconnect, probes, metrics and the OpenAPI document.
//!
//! | route | scope |
//! |---|---|
//! | `GET /api/database/health[?force=true]` | `db:read` |
//! | `GET /api/database/info` | `db:read` |
//! | `GET /api/database/status` | `db:read` |
//! | `GET /api/database/queries` | `db:read` |
//! | `POST /api/database/test` | `db:admin` |
//! | `POST /api/database/reconnect` | `db:admin` |
//! | `GET /api/plugins` | `db:read` |
//! | `POST /api/plugins/reload` | `db:admin` |
//! | `GET /livez`, `GET /readyz`, `GET /api/openapi.json` | none |
//! | `GET /metrics` | `db:read` when `DBGUARD_METRICS_AUTH=true` |
//! | `GET /api/dashboard/events` | `db:read` |
//! | `GET /dashboard` (and its script and style) | none: the page asks for a token |
//!
//! Every body is `{success: true, data}` or `{success: false, error, message, retry_count,
//! last_attempt}` — also for 404, 405, 408, 413 and malformed JSON: axum's plain-text
//! rejections are replaced by [`ApiError`]. Requests carry an `x-request-id` (generated when
//! absent, echoed back) and run in a `http` tracing span that records it; the
//! `Authorization` header is never logged.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = dbguard::env::load_config()?;
//! let auth = dbguard_http::auth::Authenticator::from_config(&config.service.auth, config.profile)?;
//! let manager = dbguard::DbManager::connect_lazy(config).await?;
//! let state = dbguard_http::api::AppState::new(manager, auth);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! dbguard_http::api::serve(listener, state, std::future::pending()).await?;
//! # Ok(()) }
//! ```

pub(crate) mod access;
mod error;
pub mod openapi;
mod plugins;
mod recorder;
mod serve;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderValue, Request, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dbguard_core::{HealthReport, SuccessEnvelope};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use access::{AdminAccess, ReadAccess};
pub use error::{ApiError, ApiJson, ApiQuery};
pub use plugins::{PluginControl, PluginReload, RefusedPlugin};
pub use recorder::MetricsHandle;
pub use serve::{ServeLimits, serve, serve_with_limits};

use crate::auth::{Authenticator, Scope};
use crate::readonly::{GuardedQueryError, QueryRequest, ReadOnlyQuery};
use access::authorize;
use dbguard::DbManager;

/// Largest request body accepted (larger → 413).
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// The most header fields a request may carry (more → 431 with the error envelope).
pub const MAX_HEADER_FIELDS: usize = 100;

/// The most bytes of header names and values a request may carry (more → 431 with the error
/// envelope).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Time a request may take end to end (longer → 408). Above the test query's 10 s cap.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a client may take to send a request's headers. Until they are in, no middleware
/// runs, so this is the only bound on a client that connects and stalls.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown waits for open connections to finish before closing them anyway, so that
/// a stalled or slow client cannot keep the process from exiting.
pub const SHUTDOWN_DRAIN_LIMIT: Duration = Duration::from_secs(20);

/// The request-id header.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Body of `GET /livez`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LiveStatus {
    /// Always `alive`.
    pub status: String,
}

/// Body of `GET /readyz` when ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReadyStatus {
    /// Always `ready`.
    pub status: String,
}

/// Shared state of the API. Cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    manager: DbManager,
    auth: Authenticator,
    readonly: ReadOnlyQuery,
    metrics: Option<MetricsHandle>,
    metrics_auth: bool,
    request_timeout: Duration,
    /// The last health report served and its serialized envelope, keyed by the report's `Arc`.
    health_body: ArcSwapOption<(Arc<HealthReport>, Bytes)>,
    /// The plugin runtime behind `/api/plugins`, if plugins are enabled.
    plugins: OnceLock<Arc<dyn PluginControl>>,
    /// The dashboard's sampled history.
    dashboard: crate::dashboard::History,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("manager", &self.inner.manager)
            .field("auth", &self.inner.auth)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State for `manager`, verifying tokens with `auth`; metrics come from the process-wide
    /// Prometheus recorder ([`metrics_handle`]).
    pub fn new(manager: DbManager, auth: Authenticator) -> Self {
        Self::with_options(manager, auth, REQUEST_TIMEOUT)
    }

    /// As [`new`](Self::new), with another request timeout.
    pub fn with_options(manager: DbManager, auth: Authenticator, request_timeout: Duration) -> Self {
        let config = manager.config();
        let readonly = ReadOnlyQuery::new(config);
        let metrics_auth = config.service.metrics_auth;
        Self {
            inner: Arc::new(StateInner {
                manager,
                auth,
                readonly,
                metrics: metrics_handle(),
                metrics_auth,
                request_timeout,
                health_body: ArcSwapOption::empty(),
                plugins: OnceLock::new(),
                dashboard: crate::dashboard::History::default(),
            }),
        }
    }

    /// Serves `/api/plugins` from `control` (a `dbguard_http::plugins::PluginRuntime`). Without it
    /// the plugin list is empty and reloads answer 409. The first runtime given stays.
    pub fn with_plugins(self, control: Arc<dyn PluginControl>) -> Self {
        if self.inner.plugins.set(control).is_err() {
            tracing::warn!("a plugin runtime is already attached to the API; keeping the first");
        }
        self
    }

    pub(crate) fn dashboard(&self) -> &crate::dashboard::History {
        &self.inner.dashboard
    }

    fn plugin_control(&self) -> Option<&Arc<dyn PluginControl>> {
        self.inner.plugins.get()
    }

    /// The database manager.
    pub fn manager(&self) -> &DbManager {
        &self.inner.manager
    }

    /// The token verifier.
    pub fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }

    fn health_response(&self, report: Arc<HealthReport>) -> Response {
        let cached = self.inner.health_body.load();
        let body = match cached.as_ref() {
            Some(entry) if Arc::ptr_eq(&entry.0, &report) => entry.1.clone(),
            _ => {
                let bytes = Bytes::from(serde_json::to_vec(&SuccessEnvelope::new(&*report)).unwrap_or_default());
                self.inner.health_body.store(Some(Arc::new((report.clone(), bytes.clone()))));
                bytes
            }
        };
        json_bytes(status_of(&report), body)
    }
}

/// The process-wide metrics recorder ([`recorder`]), installed on first use. `None` when
/// another metrics recorder was installed first.
pub fn metrics_handle() -> Option<MetricsHandle> {
    static HANDLE: OnceLock<Option<MetricsHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let (recorder, handle) = recorder::build();
            metrics::set_global_recorder(recorder).ok().map(|()| {
                handle.spawn_upkeep();
                handle
            })
        })
        .clone()
}

fn status_of(report: &HealthReport) -> StatusCode {
    StatusCode::from_u16(report.status.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn envelope<T: Serialize>(status: StatusCode, data: T) -> Response {
    match serde_json::to_vec(&SuccessEnvelope::new(data)) {
        Ok(bytes) => json_bytes(status, Bytes::from(bytes)),
        Err(err) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", err.to_string()).into_response(),
    }
}

/// Query string of the health route.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthQuery {
    /// Probe now instead of serving the cache.
    #[serde(default)]
    pub force: bool,
}

async fn health(
    State(state): State<AppState>,
    _access: ReadAccess,
    ApiQuery(query): ApiQuery<HealthQuery>,
) -> Response {
    let report = state.inner.manager.check_health(query.force).await;
    state.health_response(report)
}

async fn info(State(state): State<AppState>, _access: ReadAccess) -> Response {
    envelope(StatusCode::OK, state.inner.manager.info())
}

async fn status(State(state): State<AppState>, _access: ReadAccess) -> Response {
    envelope(StatusCode::OK, state.inner.manager.status().await)
}

async fn queries(State(state): State<AppState>, _access: ReadAccess) -> Response {
    match state.inner.manager.query_analytics().await {
        Ok(analytics) => envelope(StatusCode::OK, analytics),
        Err(err) => ApiError::from(&err).into_response(),
    }
}

async fn test_query(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
    ApiJson(request): ApiJson<QueryRequest>,
) -> Response {
    match state.inner.readonly.run_guarded(&state.inner.manager, &principal.subject, &request).await {
        Ok(result) => envelope(StatusCode::OK, result),
        Err(GuardedQueryError::Query(err)) => ApiError::from(err).into_response(),
        Err(GuardedQueryError::Database(err)) => ApiError::from(&err).into_response(),
    }
}

async fn reconnect(State(state): State<AppState>, AdminAccess(principal): AdminAccess) -> Response {
    tracing::info!(target: "dbguard::audit", subject = %principal.subject, "reconnect requested");
    match state.inner.manager.reconnect().await {
        Ok(report) => state.health_response(report),
        Err(err) => ApiError::from(&err).into_response(),
    }
}

async fn livez() -> Response {
    envelope(StatusCode::OK, LiveStatus { status: "alive".into() })
}

async fn readyz(State(state): State<AppState>) -> Response {
    let report = state.inner.manager.check_health(false).await;
    if report.status.allows_traffic() {
        envelope(StatusCode::OK, ReadyStatus { status: "ready".into() })
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the database is unhealthy").into_response()
    }
}

async fn metrics_text(State(state): State<AppState>, parts: Parts) -> Response {
    if state.inner.metrics_auth
        && let Err(err) = authorize(&parts, &state, Scope::Read)
    {
        return err.into_response();
    }
    state.inner.manager.record_pool_metrics();
    let text = state.inner.metrics.as_ref().map(MetricsHandle::render).unwrap_or_default();
    let mut response = Response::new(Body::from(text));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

async fn openapi_json() -> Response {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    let body = DOCUMENT.get_or_init(|| Bytes::from(openapi::render())).clone();
    json_bytes(StatusCode::OK, body)
}

async fn not_found() -> ApiError {
    ApiError::for_status(StatusCode::NOT_FOUND)
}

async fn method_not_allowed() -> ApiError {
    ApiError::for_status(StatusCode::METHOD_NOT_ALLOWED)
}

/// Replaces any error response that is not JSON (a layer's bare 408 or 413, a framework
/// rejection) with the error envelope, keeping its status and headers.
async fn ensure_envelope(response: Response) -> Response {
    let status = response.status();
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, _) = response.into_parts();
    let mut replaced = ApiError::for_status(status).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            replaced.headers_mut().insert(name.clone(), value.clone());
        }
    }
    replaced
}

/// Refuses requests past [`MAX_HEADER_FIELDS`] or [`MAX_HEADER_BYTES`] with 431 and the error
/// envelope. HTTP/1 parsing itself answers only past far larger bounds (see `serve`), and then
/// with a bare status line, because hyper writes its own parse errors without a body.
async fn limit_headers(request: Request<Body>, next: axum::middleware::Next) -> Response {
    let headers = request.headers();
    let bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if headers.len() > MAX_HEADER_FIELDS || bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("send at most {MAX_HEADER_FIELDS} header fields and {MAX_HEADER_BYTES} bytes of headers"),
        )
        .into_response();
    }
    next.run(request).await
}

fn make_span(request: &Request<Body>) -> tracing::Span {
    let request_id =
        request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("-");
    // The route's template, not the raw path: a bounded set of values to group logs by.
    let route = request.extensions().get::<MatchedPath>().map_or("-", MatchedPath::as_str);
    tracing::info_span!(
        "http",
        method = %request.method(),
        route,
        path = %request.uri().path(),
        request_id = %request_id,
    )
}

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let timeout = state.inner.request_timeout;
    Router::new()
        .route("/api/database/health", get(health))
        .route("/api/database/info", get(info))
        .route("/api/database/status", get(status))
        .route("/api/database/queries", get(queries))
        .route("/api/database/test", post(test_query))
        .route("/api/database/reconnect", post(reconnect))
        .route("/api/plugins", get(plugins::list))
        .route("/api/plugins/reload", post(plugins::reload))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/api/openapi.json", get(openapi_json))
        .route("/api/dashboard/events", get(crate::dashboard::events))
        .route("/dashboard", get(crate::dashboard::page))
        .route("/dashboard/app.js", get(crate::dashboard::script))
        .route("/dashboard/app.css", get(crate::dashboard::style))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // Router::layer wraps outward: the last layer added sees the request first.
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT_BYTES))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
        .layer(PropagateRequestIdLayer::new(header::HeaderName::from_static(REQUEST_ID_HEADER)))
        .layer(axum::middleware::from_fn(limit_headers))
        .layer(TraceLayer::new_for_http().make_span_with(make_span))
        .layer(SetRequestIdLayer::new(header::HeaderName::from_static(REQUEST_ID_HEADER), MakeRequestUuid))
        .layer(axum::middleware::map_response(ensure_envelope))
}
