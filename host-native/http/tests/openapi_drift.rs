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
        "/api/database/test",
        "/api/database/reconnect",
        "/livez",
        "/readyz",
        "/metrics",
        "/api/plugins",
        "/api/plugins/reload",
        "/api/openapi.json",
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
