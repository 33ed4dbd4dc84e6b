//! The committed `schemas/` must match what the code generates and carry the documented fields.

use std::path::PathBuf;

use dbguard_core::schema::{all_schemas, render};

#[test]
fn committed_schemas_match_the_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let mut stale = Vec::new();
    for (stem, schema) in all_schemas() {
        let path = dir.join(format!("{stem}.schema.json"));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != render(&schema) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "schemas out of date: {stale:?}; regenerate with `cargo run -p dbguard-core --example export-schemas`"
    );
}

#[test]
fn schemas_name_the_seed_fields() {
    let schemas = all_schemas();
    let health = &schemas.iter().find(|(stem, _)| *stem == "health-report").expect("health schema").1;
    let text = serde_json::to_string(health).expect("serializes");
    for field in [
        "status",
        "database_type",
        "version",
        "timestamp",
        "response_time_ms",
        "pool_status",
        "checked_in",
        "checked_out",
        "overflow",
        "max_overflow",
        "waiting",
        "message",
        "checks",
    ] {
        assert!(text.contains(&format!("\"{field}\"")), "health schema lacks {field}");
    }
    let error = &schemas.iter().find(|(stem, _)| *stem == "error-body").expect("error schema").1;
    let text = serde_json::to_string(error).expect("serializes");
    for field in ["success", "error", "message", "retry_count", "last_attempt"] {
        assert!(text.contains(&format!("\"{field}\"")), "error schema lacks {field}");
    }
}
