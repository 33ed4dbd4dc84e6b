//! # dbguard-http
//!
//! The authenticated HTTP API beside the `dbguard` library: health, info, status, query
//! analytics, the read-only test query, reconnect, probes, Prometheus metrics and the OpenAPI
//! document ([`api`]), the live dashboard ([`dashboard`]), JWT authentication ([`auth`]), the read-only query service behind
//! `POST /api/database/test` and plugin queries ([`readonly`]), and, with the `plugins`
//! feature, WebAssembly plugins hot-swapped from a directory ([`plugins`]).
//!
//! A service that only wants guarded pools links `dbguard` alone.

pub mod api;
pub mod auth;
pub mod dashboard;
#[cfg(feature = "plugins")]
pub mod plugins;
pub mod readonly;
