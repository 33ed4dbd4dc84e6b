//! `GET /api/plugins` and `POST /api/plugins/reload`.
//!
//! The routes talk to a [`PluginControl`] rather than to the plugin runtime itself, so the API
//! builds the same (and documents the same routes) with or without the `plugins` feature:
//! without a runtime the list is empty and a reload answers 409 `plugins_disabled`.

use std::future::Future;
use std::pin::Pin;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use dbguard_core::PluginStatus;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AdminAccess, ApiError, AppState, ReadAccess, envelope};

/// What the plugin routes need from a plugin runtime (implemented by
/// `dbguard_http::plugins::PluginRuntime`).
pub trait PluginControl: Send + Sync {
    /// The loaded plugins: the active retry policy and every health check.
    fn plugins(&self) -> Vec<PluginStatus>;

    /// Reads the plugin directory again, re-verifies every file (which also lifts a
    /// quarantine) and reports what is loaded and what was refused.
    fn reload(&self) -> Pin<Box<dyn Future<Output = PluginReload> + Send + '_>>;
}

/// The answer of `POST /api/plugins/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PluginReload {
    /// The plugins loaded after the reload.
    pub plugins: Vec<PluginStatus>,
    /// Files in the plugin directory that are not loaded, and why. A refused file that
    /// replaced a good one leaves the good one loaded.
    pub refused: Vec<RefusedPlugin>,
}

/// A plugin file the verification gate refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RefusedPlugin {
    /// The file name in the plugin directory.
    pub file: String,
    /// A stable code: `unreadable`, `not_wasm`, `core_module`, `compile`,
    /// `unsupported_import`, `wrong_world`, `instantiation`, `trap`, `timeout`, `out_of_fuel`,
    /// `memory_limit`, `invalid_decision`, `blocking` (it tried to sleep or wait),
    /// `limit_exceeded` (bytes, queries), `slow_query` or `quarantined`.
    pub error: String,
    /// What is wrong, in the plugin author's terms.
    pub message: String,
}

pub(super) async fn list(State(state): State<AppState>, _access: ReadAccess) -> Response {
    let plugins = state.plugin_control().map(|control| control.plugins()).unwrap_or_default();
    envelope(StatusCode::OK, plugins)
}

pub(super) async fn reload(State(state): State<AppState>, AdminAccess(principal): AdminAccess) -> Response {
    tracing::info!(target: "dbguard::audit", subject = %principal.subject, "plugin reload requested");
    match state.plugin_control() {
        Some(control) => envelope(StatusCode::OK, control.reload().await),
        None => ApiError::new(
            StatusCode::CONFLICT,
            "plugins_disabled",
            "plugins are not enabled: set DBGUARD_PLUGIN_DIR (and build with the `plugins` feature)",
        )
        .into_response(),
    }
}
