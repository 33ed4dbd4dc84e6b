//! SeaORM on dbguard's own pool, on PostgreSQL in both statement modes and on a SQLite file:
//! the handle `run` and
//! `transaction` give implements `ConnectionTrait` and `StreamTrait`, so entities (collected or
//! streamed), ActiveModel inserts, updates and deletes, raw `Statement`s and
//! `execute_unprepared` work on it, and values of each column
//! type come back as they went in (the simple mode reads rows in text format, the prepared
//! mode in binary).

mod common;

use dbguard::{DbManager, Idempotency};
use dbguard_tests::TestDb;
use futures::TryStreamExt as _;
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbBackend, QueryOrder, Schema, Statement};

mod gadget {
    use sea_orm::entity::prelude::*;

    /// One row of every column type the test round-trips.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "gadgets")]
    pub(crate) struct Model {
        #[sea_orm(primary_key)]
        pub(crate) id: i32,
        pub(crate) name: String,
        pub(crate) note: Option<String>,
        pub(crate) count: i64,
        pub(crate) ratio: f64,
        pub(crate) active: bool,
        pub(crate) payload: Vec<u8>,
        pub(crate) attributes: Json,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A name no literal escaping may get wrong: quotes, a backslash, a newline, non-ASCII text and
/// something that reads like SQL.
const AWKWARD: &str = "O'Brien \\ \"quoted\"\nnaïve 😀 '); DROP TABLE gadgets; --";

fn new_gadget(name: &str, count: i64) -> gadget::ActiveModel {
    gadget::ActiveModel {
        name: Set(name.to_owned()),
        note: Set(None),
        count: Set(count),
        ratio: Set(0.125),
        active: Set(true),
        payload: Set(vec![0, 1, 0xfe, 0xff, b'\'']),
        attributes: Set(serde_json::json!({ "colour": "red", "quote": "it's" })),
        ..Default::default()
    }
}

async fn exercise(manager: &DbManager, backend: DbBackend) {
    let schema = Schema::new(backend);
    let create = schema.create_table_from_entity(gadget::Entity).if_not_exists().to_owned();
    manager
        .run(Idempotency::Idempotent, |db| {
            let create = create.clone();
            async move { db.execute(&create).await.map(drop) }
        })
        .await
        .expect("create table");

    let inserted = manager
        .run(Idempotency::NonIdempotent, |db| async move { new_gadget(AWKWARD, i64::MAX).insert(&db).await })
        .await
        .expect("ActiveModel insert");
    assert_eq!(inserted.name, AWKWARD);
    assert_eq!(inserted.count, i64::MAX);
    assert_eq!(inserted.payload, vec![0, 1, 0xfe, 0xff, b'\'']);
    assert_eq!(inserted.attributes["quote"], "it's");

    let id = inserted.id;
    let updated = manager
        .transaction(move |txn| {
            Box::pin(async move {
                let found = gadget::Entity::find_by_id(id).one(txn).await?.expect("the row just inserted");
                let mut changed: gadget::ActiveModel = found.into();
                changed.note = Set(Some("second 'note'".to_owned()));
                changed.active = Set(false);
                changed.update(txn).await
            })
        })
        .await
        .expect("ActiveModel update in a transaction");
    assert_eq!(updated.note.as_deref(), Some("second 'note'"));
    assert!(!updated.active);

    manager
        .run(Idempotency::NonIdempotent, |db| async move { new_gadget("plain", -3).insert(&db).await.map(drop) })
        .await
        .expect("second insert");
    let all = manager
        .run(Idempotency::Idempotent, |db| async move {
            gadget::Entity::find().order_by_asc(gadget::Column::Id).all(&db).await
        })
        .await
        .expect("Entity::find().all");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0], updated, "every column reads back as written");
    assert_eq!(all[1].count, -3);
    let streamed = manager
        .run(Idempotency::Idempotent, |db| async move {
            let rows = gadget::Entity::find().order_by_asc(gadget::Column::Id).stream(&db).await?;
            rows.try_collect::<Vec<_>>().await
        })
        .await
        .expect("Entity::find().stream");
    assert_eq!(streamed, all, "streamed rows read back as the collected ones");

    let filtered = manager
        .run(Idempotency::Idempotent, |db| async move {
            gadget::Entity::find().filter(gadget::Column::Name.eq(AWKWARD)).count(&db).await
        })
        .await
        .expect("a filter bound to the awkward name");
    assert_eq!(filtered, 1, "the awkward name matched itself only");

    let raw = manager
        .run(Idempotency::Idempotent, |db| async move {
            let row = db
                .query_one_raw(Statement::from_sql_and_values(
                    backend,
                    match backend {
                        DbBackend::Sqlite => "SELECT count(*) AS n, max(ratio) AS ratio FROM gadgets WHERE count > ?",
                        _ => "SELECT count(*) AS n, max(ratio) AS ratio FROM gadgets WHERE count > $1",
                    },
                    [(-10i64).into()],
                ))
                .await?
                .expect("one row");
            Ok((row.try_get::<i64>("", "n")?, row.try_get::<f64>("", "ratio")?))
        })
        .await
        .expect("raw statement");
    assert_eq!(raw, (2, 0.125));

    let deleted = manager
        .run(Idempotency::Idempotent, |db| async move {
            let gone = gadget::Entity::delete_by_id(id).exec(&db).await?.rows_affected;
            db.execute_unprepared("DELETE FROM gadgets WHERE name = 'plain'").await?;
            Ok(gone)
        })
        .await
        .expect("delete");
    assert_eq!(deleted, 1);
    let left = manager
        .run(Idempotency::Idempotent, |db| async move { gadget::Entity::find().count(&db).await })
        .await
        .expect("count");
    assert_eq!(left, 0, "the table still exists (nothing dropped it) and is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaorm_works_on_dbguards_pool_with_prepared_statements() {
    let Some(db) = TestDb::create_or_skip("seaorm_prepared").await else { return };
    let manager = common::manager(db.url(), &[("DB_STATEMENT_MODE", "prepared")]).await;
    exercise(&manager, DbBackend::Postgres).await;
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaorm_works_on_dbguards_pool_with_simple_statements() {
    let Some(db) = TestDb::create_or_skip("seaorm_simple").await else { return };
    let manager = common::manager(db.url(), &[("DB_STATEMENT_MODE", "simple")]).await;
    exercise(&manager, DbBackend::Postgres).await;
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaorm_works_on_dbguards_pool_on_a_sqlite_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let manager = common::manager(&format!("sqlite://{}/seaorm.db", dir.path().display()), &[]).await;
    exercise(&manager, DbBackend::Sqlite).await;
    manager.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_database_connection_is_still_available() {
    let Some(db) = TestDb::create_or_skip("seaorm_plain_connection").await else { return };
    let manager = common::manager(db.url(), &[]).await;
    let plain: sea_orm::DatabaseConnection = manager.connection();
    let row = plain
        .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT 41 + 1 AS answer"))
        .await
        .expect("query on the plain connection")
        .expect("one row");
    assert_eq!(row.try_get::<i32>("", "answer").expect("answer"), 42);
    manager.close().await;
}
