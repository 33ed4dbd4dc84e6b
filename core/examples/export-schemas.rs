//! Writes the JSON Schema of every public API type to `schemas/` (or the directory given as
//! the first argument). `cargo run -p dbguard-core --example export-schemas`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas"));
    std::fs::create_dir_all(&dir)?;
    for (stem, schema) in dbguard_core::schema::all_schemas() {
        let path = dir.join(format!("{stem}.schema.json"));
        std::fs::write(&path, dbguard_core::schema::render(&schema))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
