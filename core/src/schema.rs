//! JSON Schemas of the public API types, for `schemas/` and client generation.
//!
//! Every schema comes from [`settings`]: draft 2020-12 with only standard `format`s, so that
//! client generators and linters do not meet schemars' Rust-flavoured ones (`uint32`, …).

use schemars::transform::{RecursiveTransform, Transform};
use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde_json::Value;

use crate::api::{DashboardSample, DatabaseStatus, ErrorBody, SuccessEnvelope};
use crate::config::ConnectionInfo;
use crate::health::HealthReport;
use crate::migrations::MigrationsReport;
use crate::queries::QueryAnalytics;

/// Every exported schema: `(file stem, schema)`. File names are `<stem>.schema.json`.
pub fn all_schemas() -> Vec<(&'static str, Schema)> {
    vec![
        ("health-report", schema_for::<HealthReport>()),
        ("connection-info", schema_for::<ConnectionInfo>()),
        ("database-status", schema_for::<DatabaseStatus>()),
        ("error-body", schema_for::<ErrorBody>()),
        ("migrations-report", schema_for::<MigrationsReport>()),
        ("query-analytics", schema_for::<QueryAnalytics>()),
        ("dashboard-sample", schema_for::<DashboardSample>()),
        ("health-response", titled(schema_for::<SuccessEnvelope<HealthReport>>(), "HealthResponse")),
        ("info-response", titled(schema_for::<SuccessEnvelope<ConnectionInfo>>(), "InfoResponse")),
        ("status-response", titled(schema_for::<SuccessEnvelope<DatabaseStatus>>(), "StatusResponse")),
        ("queries-response", titled(schema_for::<SuccessEnvelope<QueryAnalytics>>(), "QueriesResponse")),
    ]
}

/// The settings every schema of the API is generated with: draft 2020-12 and
/// [`StandardFormats`].
pub fn settings() -> SchemaSettings {
    SchemaSettings::draft2020_12().with_transform(RecursiveTransform(StandardFormats))
}

/// The JSON Schema (draft 2020-12) of `T`.
pub fn schema_for<T: JsonSchema>() -> Schema {
    SchemaGenerator::new(settings()).into_root_schema_for::<T>()
}

/// `schema` with another `title`: a route's envelope is named for the route
/// (`HealthResponse`), not for the generic type (`SuccessEnvelope`), because generators name
/// their types after it.
pub fn titled(mut schema: Schema, title: &str) -> Schema {
    schema.insert("title".to_owned(), title.into());
    schema
}

/// Renders a schema the way files in `schemas/` are written: pretty JSON, trailing newline.
pub fn render(schema: &Schema) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Replaces schemars' integer and float formats (`uint16`, `uint32`, `uint64`, `uint`,
/// `double`, …), which neither JSON Schema nor OpenAPI define, with OpenAPI's `int32` and
/// `int64` plus the bounds they lose, or with no format.
///
/// A `u32` becomes `int64` with `maximum: 4294967295`, as its values do not fit `int32`;
/// `u64` and `usize` become `int64` with `minimum: 0` (no counter of this API reaches
/// 2^63). Floats lose their format: a JSON number is already a double.
#[derive(Debug, Clone, Copy, Default)]
pub struct StandardFormats;

impl Transform for StandardFormats {
    fn transform(&mut self, schema: &mut Schema) {
        let Some(format) = schema.get("format").and_then(Value::as_str).map(str::to_owned) else { return };
        let (replacement, bounds): (Option<&str>, Option<(u64, Option<u64>)>) = match format.as_str() {
            "int8" | "int16" | "int32" => (Some("int32"), None),
            "uint8" | "uint16" => (Some("int32"), Some((0, None))),
            "uint32" => (Some("int64"), Some((0, Some(u64::from(u32::MAX))))),
            "int64" | "int" => (Some("int64"), None),
            "uint64" | "uint" => (Some("int64"), Some((0, None))),
            "uint128" => (None, Some((0, None))),
            "int128" | "float" | "double" => (None, None),
            _ => return,
        };
        match replacement {
            Some(standard) => {
                schema.insert("format".to_owned(), standard.into());
            }
            None => {
                schema.remove("format");
            }
        }
        // Bounds the type already carries (`range(min = 1)`, u16's maximum) are tighter; keep them.
        if let (Some((minimum, maximum)), Some(object)) = (bounds, schema.as_object_mut()) {
            object.entry("minimum").or_insert(minimum.into());
            if let Some(maximum) = maximum {
                object.entry("maximum").or_insert(maximum.into());
            }
        }
    }
}
