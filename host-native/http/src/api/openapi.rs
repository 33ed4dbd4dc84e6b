//! The OpenAPI 3.1 document of the HTTP API, built from the same schemars schemas as
//! `schemas/*.schema.json` (OpenAPI 3.1 uses JSON Schema 2020-12 directly).

use dbguard_core::api::{DatabaseStatus, ErrorBody, SuccessEnvelope};
use dbguard_core::{ConnectionInfo, HealthReport, PluginStatus};
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use super::{LiveStatus, PluginReload, ReadyStatus};
use crate::readonly::{QueryRequest, QueryResult};

/// The document served at `GET /api/openapi.json` and written to `schemas/openapi.json`.
pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    let health = generator.subschema_for::<SuccessEnvelope<HealthReport>>().to_value();
    let info = generator.subschema_for::<SuccessEnvelope<ConnectionInfo>>().to_value();
    let status = generator.subschema_for::<SuccessEnvelope<DatabaseStatus>>().to_value();
    let test_request = generator.subschema_for::<QueryRequest>().to_value();
    let test_response = generator.subschema_for::<SuccessEnvelope<QueryResult>>().to_value();
    let live = generator.subschema_for::<SuccessEnvelope<LiveStatus>>().to_value();
    let ready = generator.subschema_for::<SuccessEnvelope<ReadyStatus>>().to_value();
    let plugins = generator.subschema_for::<SuccessEnvelope<Vec<PluginStatus>>>().to_value();
    let plugin_reload = generator.subschema_for::<SuccessEnvelope<PluginReload>>().to_value();
    let error = generator.subschema_for::<ErrorBody>().to_value();
    let schemas = Value::Object(generator.take_definitions(true));

    let json_body = |schema: &Value, description: &str| json!({ "description": description, "content": { "application/json": { "schema": schema } } });
    let err = |description: &str| json_body(&error, description);
    let auth_errors = |mut responses: Value| {
        if let Some(map) = responses.as_object_mut() {
            map.insert("401".into(), err("missing, malformed or invalid bearer token"));
            map.insert("403".into(), err("the token lacks the route's scope"));
            map.insert("408".into(), err("the request took too long"));
        }
        responses
    };
    let secured_read = json!([{ "bearer": ["db:read"] }]);
    let secured_admin = json!([{ "bearer": ["db:admin"] }]);

    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "dbguard",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Health, status and guarded diagnostics of one database. Every body is an envelope: `{success: true, data}` or `{success: false, error, message, retry_count, last_attempt}`."
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "scopes in the space-separated `scope` claim: db:read, db:admin" }
            }
        },
        "paths": {
            "/api/database/health": { "get": {
                "operationId": "getHealth",
                "summary": "Cached health report (probe now with force=true)",
                "security": secured_read,
                "parameters": [{ "name": "force", "in": "query", "required": false,
                    "schema": { "type": "boolean" }, "description": "bypass the cache and probe now" }],
                "responses": auth_errors(json!({
                    "200": json_body(&health, "healthy or degraded"),
                    "400": err("invalid query string"),
                    "503": json_body(&health, "unhealthy")
                }))
            }},
            "/api/database/info": { "get": {
                "operationId": "getInfo",
                "summary": "Connection facts (never the password)",
                "security": secured_read,
                "responses": auth_errors(json!({ "200": json_body(&info, "connection info") }))
            }},
            "/api/database/status": { "get": {
                "operationId": "getStatus",
                "summary": "Health, pool, metrics, breaker, plugins and the last error",
                "security": secured_read,
                "responses": auth_errors(json!({ "200": json_body(&status, "status") }))
            }},
            "/api/database/test": { "post": {
                "operationId": "runTestQuery",
                "summary": "Run one read-only statement with a row cap and a timeout",
                "security": secured_admin,
                "requestBody": { "required": true, "content": { "application/json": { "schema": test_request } } },
                "responses": auth_errors(json!({
                    "200": json_body(&test_response, "the rows"),
                    "400": err("malformed body, bad SQL or more than one statement"),
                    "413": err("body too large"),
                    "415": err("body is not application/json"),
                    "503": err("the database is unreachable"),
                    "504": err("the statement ran past its timeout")
                }))
            }},
            "/api/database/reconnect": { "post": {
                "operationId": "reconnect",
                "summary": "Rebuild the pool (single-flight) and return the new health",
                "security": secured_admin,
                "responses": auth_errors(json!({
                    "200": json_body(&health, "rebuilt; healthy or degraded"),
                    "503": json_body(&health, "rebuilt but unhealthy, or the rebuild failed (error body)")
                }))
            }},
            "/api/plugins": { "get": {
                "operationId": "listPlugins",
                "summary": "Loaded WebAssembly plugins: name, world, version, content hash, loaded at, calls, faults, state (empty without DBGUARD_PLUGIN_DIR)",
                "security": secured_read,
                "responses": auth_errors(json!({ "200": json_body(&plugins, "the loaded plugins") }))
            }},
            "/api/plugins/reload": { "post": {
                "operationId": "reloadPlugins",
                "summary": "Re-read DBGUARD_PLUGIN_DIR and re-verify every plugin (lifts quarantines); refused files leave their previous version active",
                "security": secured_admin,
                "responses": auth_errors(json!({
                    "200": json_body(&plugin_reload, "what is loaded and what was refused"),
                    "409": err("plugins are not enabled (DBGUARD_PLUGIN_DIR unset)")
                }))
            }},
            "/livez": { "get": {
                "operationId": "livez",
                "summary": "The process is alive (touches no database)",
                "security": [],
                "responses": { "200": json_body(&live, "alive") }
            }},
            "/readyz": { "get": {
                "operationId": "readyz",
                "summary": "Ready for traffic per the cached health",
                "security": [],
                "responses": { "200": json_body(&ready, "ready"), "503": err("not ready") }
            }},
            "/metrics": { "get": {
                "operationId": "metrics",
                "summary": "Prometheus text exposition (bearer db:read when DBGUARD_METRICS_AUTH=true)",
                "responses": {
                    "200": { "description": "metrics", "content": { "text/plain": { "schema": { "type": "string" } } } },
                    "401": err("a token is required (DBGUARD_METRICS_AUTH=true)")
                }
            }},
            "/api/openapi.json": { "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": { "200": { "description": "OpenAPI 3.1",
                    "content": { "application/json": { "schema": { "type": "object" } } } } }
            }}
        }
    })
}

/// The document as written to `schemas/openapi.json`: pretty JSON with a trailing newline.
pub fn render() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

/// The host's own schema files beside core's: `(file name, text)` for the test endpoint's
/// request and response and the probe bodies.
pub fn extra_schemas() -> Vec<(String, String)> {
    use dbguard_core::schema::{render as render_schema, schema_for};
    vec![
        ("test-request.schema.json".to_owned(), render_schema(&schema_for::<QueryRequest>())),
        ("test-response.schema.json".to_owned(), render_schema(&schema_for::<SuccessEnvelope<QueryResult>>())),
        ("livez-response.schema.json".to_owned(), render_schema(&schema_for::<SuccessEnvelope<LiveStatus>>())),
        ("readyz-response.schema.json".to_owned(), render_schema(&schema_for::<SuccessEnvelope<ReadyStatus>>())),
    ]
}
