//! JSON Schemas of the public API types, for `schemas/` and client generation.

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};

use crate::api::{DatabaseStatus, ErrorBody, SuccessEnvelope};
use crate::config::ConnectionInfo;
use crate::health::HealthReport;

/// Every exported schema: `(file stem, schema)`. File names are `<stem>.schema.json`.
pub fn all_schemas() -> Vec<(&'static str, Schema)> {
    vec![
        ("health-report", schema_for::<HealthReport>()),
        ("connection-info", schema_for::<ConnectionInfo>()),
        ("database-status", schema_for::<DatabaseStatus>()),
        ("error-body", schema_for::<ErrorBody>()),
        ("health-response", schema_for::<SuccessEnvelope<HealthReport>>()),
        ("info-response", schema_for::<SuccessEnvelope<ConnectionInfo>>()),
        ("status-response", schema_for::<SuccessEnvelope<DatabaseStatus>>()),
    ]
}

/// The JSON Schema (draft 2020-12) of `T`.
pub fn schema_for<T: JsonSchema>() -> Schema {
    SchemaGenerator::new(SchemaSettings::draft2020_12()).into_root_schema_for::<T>()
}

/// Renders a schema the way files in `schemas/` are written: pretty JSON, trailing newline.
pub fn render(schema: &Schema) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}
