//! Bodies of the HTTP API: the envelopes and the status document.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::classify::ErrorClass;
use crate::health::{HealthReport, PoolStatus};
use crate::migrations::MigrationsReport;
use crate::retry::BreakerState;

/// Every successful response: `{ "success": true, "data": … }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SuccessEnvelope<T> {
    /// Always `true`.
    #[schemars(extend("const" = true))]
    pub success: bool,
    /// The payload.
    pub data: T,
}

impl<T> SuccessEnvelope<T> {
    /// Wraps a payload.
    pub fn new(data: T) -> Self {
        Self { success: true, data }
    }
}

/// Every error response: `{ "success": false, "error", "message", "retry_count", "last_attempt" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// Always `false`.
    #[schemars(extend("const" = false))]
    pub success: bool,
    /// A stable machine-readable code (`unauthorized`, `invalid_request`, an error class, …).
    pub error: String,
    /// What went wrong, for humans. Never contains a secret.
    pub message: String,
    /// Retries made before giving up (0 when none were attempted).
    pub retry_count: u32,
    /// When the last database attempt ended, RFC 3339, if there was one.
    #[schemars(extend("format" = "date-time"))]
    pub last_attempt: Option<String>,
}

impl ErrorBody {
    /// An error with no database attempt behind it.
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self { success: false, error: error.into(), message: message.into(), retry_count: 0, last_attempt: None }
    }
}

/// Counters and latencies since start-up.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct MetricsSummary {
    /// Guarded calls made.
    pub calls_total: u64,
    /// Calls that returned an error to the caller.
    pub failures_total: u64,
    /// Retries made.
    pub retries_total: u64,
    /// `(calls - failures) / calls`, 1.0 with no calls.
    pub success_rate: f64,
    /// Failures seen (including retried ones) by class.
    pub failures_by_class: BTreeMap<String, u64>,
    /// Median guarded-call latency, in milliseconds.
    pub response_time_p50_ms: Option<f64>,
    /// 99th percentile guarded-call latency, in milliseconds.
    pub response_time_p99_ms: Option<f64>,
    /// Pool rebuilds.
    pub reconnects_total: u64,
    /// Health probes run.
    pub health_probes_total: u64,
}

/// The most recent error a caller saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LastError {
    /// Its class.
    pub class: ErrorClass,
    /// Its message (redacted).
    pub message: String,
    /// When, RFC 3339.
    #[schemars(extend("format" = "date-time"))]
    pub at: String,
}

/// A loaded plugin, as listed by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PluginStatus {
    /// File or given name.
    pub name: String,
    /// `retry-policy` or `health-check`.
    pub world: String,
    /// Plugin version, if it declares one.
    pub version: Option<String>,
    /// SHA-256 of the component bytes, hex.
    pub content_hash: String,
    /// When it was activated, RFC 3339.
    #[schemars(extend("format" = "date-time"))]
    pub loaded_at: String,
    /// Calls made.
    pub calls: u64,
    /// Calls that trapped, timed out or returned an invalid answer.
    pub faults: u64,
    /// `active`, `quarantined`, or `refused` (a file the verification gate refused).
    pub state: String,
    /// The last fault, in words: why it is quarantined, when it is.
    #[serde(default)]
    pub last_fault: Option<String>,
    /// Log lines dropped over the plugin's rate limit.
    #[serde(default)]
    pub log_lines_dropped: u64,
}

/// Everything an operator wants on one page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DatabaseStatus {
    /// The latest health report.
    pub health: HealthReport,
    /// The pool now.
    pub pool: PoolStatus,
    /// Counters since start-up.
    pub metrics: MetricsSummary,
    /// The circuit breaker.
    pub breaker: BreakerState,
    /// Loaded plugins.
    pub plugins: Vec<PluginStatus>,
    /// The most recent error a caller saw.
    pub last_error: Option<LastError>,
    /// Applied and pending schema migrations, when the service has a migrations directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<MigrationsReport>,
    /// Every server of a multi-host URL with its role, state and reads served, when reads go
    /// to standbys (`DB_READ_TARGET` other than `primary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<ServerStatus>>,
}

/// What a server of a multi-host URL is, as last sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerRole {
    /// Accepts writes (`pg_is_in_recovery()` is false).
    Primary,
    /// A hot standby replaying the primary's WAL.
    Standby,
    /// Not sampled yet, or not answering.
    Unknown,
}

/// Whether a server takes reads now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Answering, and (a standby) within `DB_REPLICA_MAX_LAG`.
    Up,
    /// Not answering: its last sample or a read on it failed to reach it.
    Down,
    /// A standby whose replay is further behind than `DB_REPLICA_MAX_LAG`: it takes no reads
    /// until it catches up.
    Lagging,
}

/// One server of a multi-host URL (`GET /api/database/status`, `servers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerStatus {
    /// Host as written in the URL.
    pub host: String,
    /// Port (5432 when the URL gives none).
    pub port: u16,
    /// Primary or standby, as last sampled.
    pub role: ServerRole,
    /// Whether it takes reads now.
    pub state: ServerState,
    /// Replay lag in milliseconds as last sampled (0 for a primary, and for a standby that has
    /// replayed everything it received); `None` before the first answer.
    pub lag_ms: Option<u64>,
    /// Reads this server answered since start-up.
    pub reads: u64,
    /// Share of all reads answered since start-up (0 to 1), the primary's fallback reads included.
    pub read_share: f64,
    /// This server's own read pool.
    pub pool: PoolStatus,
}

/// One second of the dashboard's history (`GET /api/dashboard/events`): what an operator
/// watches, sampled by the server so that a page opened late still draws the last minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DashboardSample {
    /// Sample number since the server started; consecutive samples differ by one.
    pub seq: u64,
    /// When, RFC 3339.
    #[schemars(extend("format" = "date-time"))]
    pub at: String,
    /// The latest health report (as of the last probe), if any probe has run.
    pub health: Option<HealthReport>,
    /// The pool now.
    pub pool: PoolStatus,
    /// Counters since start-up: the page derives calls per second from consecutive samples.
    pub metrics: MetricsSummary,
    /// The circuit breaker now.
    pub breaker: BreakerState,
    /// Loaded plugins.
    pub plugins: Vec<PluginStatus>,
    /// The most recent error a caller saw.
    pub last_error: Option<LastError>,
}
