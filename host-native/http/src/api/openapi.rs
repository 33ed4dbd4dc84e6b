//! The OpenAPI 3.1 document of the HTTP API, built from the same schemars schemas as
//! `schemas/*.schema.json` (OpenAPI 3.1 uses JSON Schema 2020-12 directly).
//!
//! What the document promises, and why it is shaped so:
//! - every status a route sends is listed with its body; a `default` response says that any
//!   other status (404 for a path not listed here, 500) carries the error body too;
//! - each route's envelope is a component of its own (`HealthResponse`, `TestResponse`, …),
//!   since generators name their types after components;
//! - `success` is a constant, so a client can tell the two envelopes apart by it;
//! - the test request is a request body component: generators treat a property with a
//!   `default` as always present when it sits in `components/schemas` (openapi-typescript),
//!   which would make `params`, `max_rows` and `timeout_ms` required in clients.

use dbguard_core::api::{DatabaseStatus, ErrorBody, SuccessEnvelope};
use dbguard_core::schema::{render as render_schema, schema_for, titled};
use dbguard_core::{ConnectionInfo, HealthReport, PluginStatus, QueryAnalytics};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};

use super::{BODY_LIMIT_BYTES, LiveStatus, PluginReload, REQUEST_TIMEOUT, ReadyStatus};
use crate::readonly::{QueryRequest, QueryResult};

/// Where the components of the document live, as `$ref` prefixes.
const SCHEMAS: &str = "#/components/schemas/";
const RESPONSES: &str = "#/components/responses/";

/// The component name of the document's own schema (`GET /api/openapi.json`).
const OPENAPI_DOCUMENT: &str = "OpenApiDocument";

/// The document served at `GET /api/openapi.json` and written to `schemas/openapi.json`.
pub fn document() -> Value {
    let mut settings = dbguard_core::schema::settings();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    let mut components = Components { generator: &mut generator, renames: Vec::new() };
    let health = components.named::<SuccessEnvelope<HealthReport>>("HealthResponse");
    let info = components.named::<SuccessEnvelope<ConnectionInfo>>("InfoResponse");
    let status = components.named::<SuccessEnvelope<DatabaseStatus>>("StatusResponse");
    let queries = components.named::<SuccessEnvelope<QueryAnalytics>>("QueriesResponse");
    let test_response = components.named::<SuccessEnvelope<QueryResult>>("TestResponse");
    let live = components.named::<SuccessEnvelope<LiveStatus>>("LiveResponse");
    let ready = components.named::<SuccessEnvelope<ReadyStatus>>("ReadyResponse");
    let plugins = components.named::<SuccessEnvelope<Vec<PluginStatus>>>("PluginListResponse");
    let plugin_reload = components.named::<SuccessEnvelope<PluginReload>>("PluginReloadResponse");
    let error = components.named::<ErrorBody>("ErrorBody");
    components.named::<QueryRequest>("QueryRequest");
    let mut schemas = components.finish();
    // The request lives under requestBodies (see the module docs), not in components/schemas.
    let test_request = schemas.remove("QueryRequest").unwrap_or_default();
    schemas.insert(OPENAPI_DOCUMENT.to_owned(), openapi_document_schema());
    let openapi = json!({ "$ref": format!("{SCHEMAS}{OPENAPI_DOCUMENT}") });

    let json_body = |schema: &Value, description: &str| json!({ "description": description, "content": { "application/json": { "schema": schema } } });
    let err = |description: &str| json_body(&error, description);
    // A 401 names the scheme to use, as RFC 9110 asks.
    let unauthorized = |description: &str| {
        let mut response = err(description);
        response["headers"] = json!({ "WWW-Authenticate": { "description": "always `Bearer`", "schema": { "type": "string", "const": "Bearer" } } });
        response
    };
    let shared = |name: &str| json!({ "$ref": format!("{RESPONSES}{name}") });
    // What every route can answer, from the layers in front of all of them: a method it does
    // not list, a request past the timeout, a Content-Length over the body limit (checked
    // before routing, so also on GET), headers past their limits, and anything else (404 on a
    // path not listed, 500).
    let common = |mut responses: Value| {
        if let Some(map) = responses.as_object_mut() {
            map.insert("405".into(), shared("MethodNotAllowed"));
            map.insert("408".into(), shared("RequestTimeout"));
            map.insert("413".into(), shared("PayloadTooLarge"));
            map.insert("431".into(), shared("HeadersTooLarge"));
            map.insert("default".into(), shared("Error"));
        }
        responses
    };
    let secured = |responses: Value| {
        let mut responses = common(responses);
        if let Some(map) = responses.as_object_mut() {
            map.entry("401").or_insert_with(|| shared("Unauthorized"));
            map.entry("403").or_insert_with(|| shared("Forbidden"));
        }
        responses
    };
    let secured_read = json!([{ "bearer": ["db:read"] }]);
    let secured_admin = json!([{ "bearer": ["db:admin"] }]);
    let timeout_s = REQUEST_TIMEOUT.as_secs();
    let limit_kib = BODY_LIMIT_BYTES / 1024;

    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "dbguard",
            "version": env!("CARGO_PKG_VERSION"),
            "license": { "name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0" },
            "description": "Health, status and guarded diagnostics of one database. Every body is an envelope: `{success: true, data}` or `{success: false, error, message, retry_count, last_attempt}`, also for statuses a route does not list (the `default` response): 404 `not_found` for a path not in this document, 500 `internal_error`."
        },
        "servers": [{ "url": "/", "description": "the dbguard server that serves this document (DBGUARD_BIND, 127.0.0.1:8080 by default)" }],
        "components": {
            "schemas": schemas,
            "requestBodies": {
                "TestRequest": { "required": true, "description": "one read-only statement and its limits",
                    "content": { "application/json": { "schema": test_request } } }
            },
            "responses": {
                "Unauthorized": unauthorized("missing, malformed or invalid bearer token (`unauthorized`)"),
                "Forbidden": err("the token lacks the route's scope (`forbidden`)"),
                "MethodNotAllowed": err("the path does not take this method (`method_not_allowed`): every path answers 405 to the methods it does not list"),
                "RequestTimeout": err(&format!("the request took longer than the request timeout ({timeout_s} s by default) and was abandoned (`request_timeout`)")),
                "PayloadTooLarge": err(&format!("the request declares a body larger than {limit_kib} KiB (`payload_too_large`)")),
                "HeadersTooLarge": err(&format!("more than {} header fields or {} KiB of headers (`headers_too_large`)", super::MAX_HEADER_FIELDS, super::MAX_HEADER_BYTES / 1024)),
                "Error": err("any other error, in the same body: 404 `not_found` for a path this document does not list, 500 `internal_error`")
            },
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
                "responses": secured(json!({
                    "200": json_body(&health, "healthy or degraded"),
                    "400": err("invalid query string: a parameter other than `force`, or `force` not `true`/`false` (`invalid_request`)"),
                    "503": json_body(&health, "unhealthy: the report, in the success envelope")
                }))
            }},
            "/api/database/info": { "get": {
                "operationId": "getInfo",
                "summary": "Connection facts (never the password)",
                "security": secured_read,
                "responses": secured(json!({ "200": json_body(&info, "connection info") }))
            }},
            "/api/database/status": { "get": {
                "operationId": "getStatus",
                "summary": "Health, pool, metrics, breaker, plugins and the last error",
                "security": secured_read,
                "responses": secured(json!({ "200": json_body(&status, "status") }))
            }},
            "/api/database/queries": { "get": {
                "operationId": "getQueryAnalytics",
                "summary": "Top statements, sequential scans, unused indexes, cache hit ratio and long sessions, with suggestions",
                "description": "On PostgreSQL, from pg_stat_statements (when it is loaded; otherwise `top_statements` is null and `statements_note` says how to enable it) and the pg_stat views; on SQLite, the file's PRAGMA facts. Utility statements are left out and string literals replaced by '?'.",
                "security": secured_read,
                "responses": secured(json!({ "200": json_body(&queries, "query analytics") }))
            }},
            "/api/database/test": { "post": {
                "operationId": "runTestQuery",
                "summary": "Run one read-only statement with a row cap and a timeout",
                "security": secured_admin,
                "requestBody": { "$ref": "#/components/requestBodies/TestRequest" },
                "responses": secured(json!({
                    "200": json_body(&test_response, "the rows"),
                    "400": err("the body is not a JSON object of this shape, or has unknown fields (`invalid_request`); the SQL does not parse, is more than one statement, or its params or limits are bad (`invalid_query`); the result is over the byte limit (`result_too_large`)"),
                    "403": err("the token lacks db:admin (`forbidden`); the statement writes or needs a privilege the login lacks (`forbidden`, \"write refused\" / \"permission denied\"); the login is a superuser or may run server programs or write server files, or no least-privilege login is configured (`forbidden`); the login can read catalogs that hold secrets, e.g. through pg_read_all_data (`secret_catalog`)"),
                    "415": err("the body is not sent as application/json (`unsupported_media_type`)"),
                    "503": err("the database is unreachable or the runner is shutting down (`unavailable`)"),
                    "504": err("the statement ran past its timeout and was cancelled (`timeout`)")
                }))
            }},
            "/api/database/reconnect": { "post": {
                "operationId": "reconnect",
                "summary": "Rebuild the pool (single-flight) and return the new health",
                "security": secured_admin,
                "responses": secured(json!({
                    "200": json_body(&health, "rebuilt; healthy or degraded"),
                    "503": { "description": "rebuilt but unhealthy (the report, in the success envelope), or the rebuild failed (the error body, `error` is the error class)",
                        "content": { "application/json": { "schema": { "oneOf": [health, error] } } } },
                    "504": err("the rebuild timed out (`timeout`)")
                }))
            }},
            "/api/plugins": { "get": {
                "operationId": "listPlugins",
                "summary": "Loaded WebAssembly plugins: name, world, version, content hash, loaded at, calls, faults, state (empty without DBGUARD_PLUGIN_DIR)",
                "security": secured_read,
                "responses": secured(json!({ "200": json_body(&plugins, "the loaded plugins") }))
            }},
            "/api/plugins/reload": { "post": {
                "operationId": "reloadPlugins",
                "summary": "Re-read DBGUARD_PLUGIN_DIR and re-verify every plugin (lifts quarantines); refused files leave their previous version active",
                "security": secured_admin,
                "responses": secured(json!({
                    "200": json_body(&plugin_reload, "what is loaded and what was refused"),
                    "409": err("plugins are not enabled: DBGUARD_PLUGIN_DIR unset (`plugins_disabled`)")
                }))
            }},
            "/livez": { "get": {
                "operationId": "livez",
                "summary": "The process is alive (touches no database)",
                "security": [],
                "responses": common(json!({ "200": json_body(&live, "alive") }))
            }},
            "/readyz": { "get": {
                "operationId": "readyz",
                "summary": "Ready for traffic per the cached health",
                "security": [],
                "responses": common(json!({
                    "200": json_body(&ready, "ready"),
                    "503": err("the database is unhealthy (`not_ready`)")
                }))
            }},
            "/metrics": { "get": {
                "operationId": "metrics",
                "summary": "Prometheus text exposition (bearer db:read when DBGUARD_METRICS_AUTH=true)",
                // Open by default; with DBGUARD_METRICS_AUTH=true a db:read token is required.
                "security": [{}, { "bearer": ["db:read"] }],
                "responses": secured(json!({
                    "200": { "description": "metrics", "content": { "text/plain": { "schema": { "type": "string" } } } },
                    "401": unauthorized("a valid db:read token is required (DBGUARD_METRICS_AUTH=true) (`unauthorized`)"),
                    "403": err("the token lacks db:read (DBGUARD_METRICS_AUTH=true) (`forbidden`)")
                }))
            }},
            "/api/dashboard/events": { "get": {
                "operationId": "dashboardEvents",
                "summary": "The dashboard's live feed (Server-Sent Events)",
                "description": "`event: history` first, its data a JSON array of the samples kept (the last 15 minutes, one per second); then `event: sample` every second, its data one sample. Samples follow schemas/dashboard-sample.schema.json.",
                "security": secured_read,
                "responses": secured(json!({
                    "200": { "description": "the feed, open until the client or the server closes it", "content": { "text/event-stream": { "schema": { "type": "string" } } } }
                }))
            }},
            "/dashboard": { "get": {
                "operationId": "dashboard",
                "summary": "The live dashboard page (asks for a db:read token itself)",
                "security": [],
                "responses": common(json!({
                    "200": { "description": "the page", "content": { "text/html": { "schema": { "type": "string" } } } }
                }))
            }},
            "/api/openapi.json": { "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": common(json!({ "200": json_body(&openapi, "OpenAPI 3.1") }))
            }}
        }
    })
}

/// The schema generator with the component names it hands out.
struct Components<'a> {
    generator: &'a mut SchemaGenerator,
    /// `(name schemars gave, name wanted)`: schemars numbers the instances of a generic type
    /// (`SuccessEnvelope`, `SuccessEnvelope2`, …), which says nothing to a client.
    renames: Vec<(String, &'static str)>,
}

impl Components<'_> {
    /// Generates `T` as the component `name`; returns a `$ref` to it.
    fn named<T: JsonSchema>(&mut self, name: &'static str) -> Value {
        let reference = self.generator.subschema_for::<T>();
        let generated = reference.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix(SCHEMAS));
        if let Some(generated) = generated {
            self.renames.push((generated.to_owned(), name));
        }
        json!({ "$ref": format!("{SCHEMAS}{name}") })
    }

    /// Every component schema, under the names asked for.
    fn finish(self) -> Map<String, Value> {
        let mut schemas = self.generator.take_definitions(true);
        for (generated, wanted) in self.renames {
            if let Some(schema) = schemas.remove(&generated) {
                schemas.insert(wanted.to_owned(), schema);
            }
        }
        schemas
    }
}

/// What a client may rely on in the document itself: the OpenAPI version, `info` and `paths`;
/// the rest is open.
fn openapi_document_schema() -> Value {
    json!({
        "description": "An OpenAPI 3.1 document: this API's own description.",
        "type": "object",
        "properties": {
            "openapi": { "description": "The OpenAPI version, `3.1.0`.", "type": "string" },
            "info": {
                "type": "object",
                "properties": {
                    "title": { "type": "string" },
                    "version": { "description": "dbguard's version.", "type": "string" }
                },
                "required": ["title", "version"],
                "additionalProperties": true
            },
            "paths": {
                "description": "Every route, by path.",
                "type": "object",
                "additionalProperties": { "type": "object", "additionalProperties": true }
            },
            "components": { "type": "object", "additionalProperties": true }
        },
        "required": ["openapi", "info", "paths"],
        "additionalProperties": true
    })
}

/// The document as written to `schemas/openapi.json`: pretty JSON with a trailing newline.
pub fn render() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

/// The host's own schema files beside core's: `(file name, text)` for the test endpoint's
/// request and response, the probe and plugin bodies and the document itself. Each envelope's
/// title is its component name in [`document`].
pub fn extra_schemas() -> Vec<(String, String)> {
    let envelope = |schema: Schema, title: &str| render_schema(&titled(schema, title));
    let mut openapi = openapi_document_schema();
    if let Some(object) = openapi.as_object_mut() {
        object.insert("$schema".into(), "https://json-schema.org/draft/2020-12/schema".into());
        object.insert("title".into(), OPENAPI_DOCUMENT.into());
    }
    let openapi = serde_json::from_value::<Schema>(openapi).unwrap_or_default();
    vec![
        ("test-request.schema.json".to_owned(), render_schema(&schema_for::<QueryRequest>())),
        (
            "test-response.schema.json".to_owned(),
            envelope(schema_for::<SuccessEnvelope<QueryResult>>(), "TestResponse"),
        ),
        (
            "livez-response.schema.json".to_owned(),
            envelope(schema_for::<SuccessEnvelope<LiveStatus>>(), "LiveResponse"),
        ),
        (
            "readyz-response.schema.json".to_owned(),
            envelope(schema_for::<SuccessEnvelope<ReadyStatus>>(), "ReadyResponse"),
        ),
        (
            "plugin-list-response.schema.json".to_owned(),
            envelope(schema_for::<SuccessEnvelope<Vec<PluginStatus>>>(), "PluginListResponse"),
        ),
        (
            "plugin-reload-response.schema.json".to_owned(),
            envelope(schema_for::<SuccessEnvelope<PluginReload>>(), "PluginReloadResponse"),
        ),
        ("openapi-document.schema.json".to_owned(), render_schema(&openapi)),
    ]
}
