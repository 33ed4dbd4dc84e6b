//! Smoke test: open a SQLite file through sea_orm (sync) and print its version.
use sea_orm::{ConnectionTrait, Database, Statement};

fn main() {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".into());
    let db = Database::connect(&url).expect("connect");
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), "SELECT sqlite_version() AS v"))
        .expect("query")
        .expect("row");
    let v: String = row.try_get("", "v").expect("get");
    println!("{v}");
}
