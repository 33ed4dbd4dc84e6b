//! `schemas/openapi.json` and the host's schema files match what the code generates
//! (regenerate with `cargo run -p dbguard-cli -- schemas`).

use std::path::PathBuf;

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join("schemas")
}

#[test]
fn openapi_json_is_current() {
    let path = schemas_dir().join("openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == dbguard_http::api::openapi::render(),
        "{} is stale: run `cargo run -p dbguard-cli -- schemas`",
        path.display()
    );
}

#[test]
fn host_schemas_are_current() {
    for (name, text) in dbguard_http::api::openapi::extra_schemas() {
        let path = schemas_dir().join(&name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(committed == text, "{} is stale: run `cargo run -p dbguard-cli -- schemas`", path.display());
    }
}

#[test]
fn openapi_is_3_1_and_names_every_route() {
    let document = dbguard_http::api::openapi::document();
    assert_eq!(document["openapi"], "3.1.0");
    for route in [
        "/api/database/health",
        "/api/database/info",
        "/api/database/status",
        "/api/database/queries",
        "/api/database/test",
        "/api/database/reconnect",
        "/livez",
        "/readyz",
        "/metrics",
        "/api/plugins",
        "/api/plugins/reload",
        "/api/openapi.json",
        "/api/dashboard/events",
        "/dashboard",
    ] {
        assert!(document["paths"].get(route).is_some(), "{route} missing");
    }
    // Every $ref resolves inside the document.
    let text = document.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap_or_default();
        assert!(document["components"]["schemas"].get(name).is_some(), "dangling $ref {name}");
    }
}

/// Every JSON body in `schemas/`, with its file name.
fn committed_json() -> Vec<(String, serde_json::Value)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(schemas_dir()).expect("schemas/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read");
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            files.push((name, serde_json::from_str(&text).expect("JSON")));
        }
    }
    files
}

/// Every value of `key` anywhere in `value`.
fn values_of<'a>(value: &'a serde_json::Value, key: &str, found: &mut Vec<&'a serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == key {
                    found.push(v);
                }
                values_of(v, key, found);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| values_of(v, key, found)),
        _ => {}
    }
}

#[test]
fn only_standard_formats() {
    // JSON Schema's formats plus OpenAPI's integer ones; schemars' uint32, double, … are neither.
    let standard = ["date-time", "date", "time", "duration", "email", "uri", "uuid", "int32", "int64"];
    for (name, value) in committed_json() {
        let mut formats = Vec::new();
        values_of(&value, "format", &mut formats);
        for format in formats {
            let format = format.as_str().unwrap_or_default();
            assert!(standard.contains(&format), "{name}: non-standard format {format}");
        }
    }
}

#[test]
fn envelopes_are_named_per_route_and_success_is_a_constant() {
    let document = dbguard_http::api::openapi::document();
    let schemas = &document["components"]["schemas"];
    let names: Vec<&String> = schemas.as_object().expect("schemas").keys().collect();
    assert!(!names.iter().any(|n| n.starts_with("SuccessEnvelope")), "generic envelope names: {names:?}");
    for (name, success) in [
        ("HealthResponse", true),
        ("InfoResponse", true),
        ("StatusResponse", true),
        ("TestResponse", true),
        ("LiveResponse", true),
        ("ReadyResponse", true),
        ("PluginListResponse", true),
        ("PluginReloadResponse", true),
        ("ErrorBody", false),
    ] {
        assert_eq!(schemas[name]["properties"]["success"]["const"], success, "{name}");
    }
    // Each envelope file is titled with its component's name and says the same.
    for (file, value) in committed_json() {
        if !file.ends_with("-response.schema.json") && file != "error-body.schema.json" {
            continue;
        }
        let title = value["title"].as_str().unwrap_or_default();
        let component = &schemas[title];
        assert!(component.is_object(), "{file}: title {title} is not a component of openapi.json");
        assert_eq!(value["properties"]["success"], component["properties"]["success"], "{file}");
    }
    assert_eq!(schemas["OpenApiDocument"]["type"], "object");
    let openapi_body =
        &document["paths"]["/api/openapi.json"]["get"]["responses"]["200"]["content"]["application/json"];
    assert_eq!(openapi_body["schema"]["$ref"], "#/components/schemas/OpenApiDocument");
}

#[test]
fn the_test_request_defaults_leave_its_fields_optional() {
    let document = dbguard_http::api::openapi::document();
    // Not in components/schemas, where openapi-typescript makes a property with a default
    // required; under requestBodies it does not.
    assert!(document["components"]["schemas"].get("QueryRequest").is_none());
    let schema = &document["components"]["requestBodies"]["TestRequest"]["content"]["application/json"]["schema"];
    assert_eq!(schema["required"], serde_json::json!(["query"]));
    assert_eq!(schema["properties"]["params"]["type"], "array", "params is a list, never null");
    let body = &document["paths"]["/api/database/test"]["post"]["requestBody"];
    assert_eq!(body["$ref"], "#/components/requestBodies/TestRequest");
}

#[test]
fn every_route_documents_the_errors_it_sends() {
    let document = dbguard_http::api::openapi::document();
    let paths = document["paths"].as_object().expect("paths");
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().expect("operations") {
            let responses = &operation["responses"];
            for status in ["405", "408", "413", "default"] {
                assert!(responses.get(status).is_some(), "{method} {path} lacks {status}");
            }
            let secured = operation["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
            if secured {
                for status in ["401", "403"] {
                    assert!(responses.get(status).is_some(), "{method} {path} lacks {status}");
                }
            }
        }
    }
    let test = &paths["/api/database/test"]["post"]["responses"];
    for status in ["200", "400", "403", "415", "503", "504"] {
        assert!(test.get(status).is_some(), "POST /api/database/test lacks {status}");
    }
    let reconnect_503 = &paths["/api/database/reconnect"]["post"]["responses"]["503"];
    let branches = &reconnect_503["content"]["application/json"]["schema"]["oneOf"];
    assert_eq!(
        branches,
        &serde_json::json!([{ "$ref": "#/components/schemas/HealthResponse" }, { "$ref": "#/components/schemas/ErrorBody" }])
    );
    assert_eq!(paths["/metrics"]["get"]["security"], serde_json::json!([{}, { "bearer": ["db:read"] }]));
}
