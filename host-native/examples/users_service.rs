//! A users service in the style dbguard replaces: a SeaORM `User` entity and a `create_user`
//! guarded by the retry runner. The handle each attempt gets is a [`DbConn`]: on PostgreSQL one
//! connection of dbguard's own pool, and for SeaORM any `&impl ConnectionTrait`, so entities,
//! ActiveModels and raw statements take it as they take a `DatabaseConnection`. Run against the
//! SQLite default or any DATABASE_URL:
//!
//! ```sh
//! cargo run -p dbguard --features sqlite --example users_service
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run -p dbguard --features sqlite --example users_service
//! ```

use dbguard::{DbConn, DbError, DbManager, Idempotency};
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, ConnectionTrait, Schema};

mod user {
    use sea_orm::entity::prelude::*;

    /// A user, keyed by e-mail so that creating one is naturally idempotent.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "example_users")]
    pub(crate) struct Model {
        /// The e-mail address.
        #[sea_orm(primary_key, auto_increment = false)]
        pub(crate) email: String,
        /// Display name.
        pub(crate) name: String,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub(crate) enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Inserts a user, retrying transient failures. Keyed by e-mail, so a retry after an
/// ambiguous failure cannot create a second row.
async fn create_user(manager: &DbManager, email: &str, name: &str) -> Result<user::Model, DbError> {
    let (email, name) = (email.to_owned(), name.to_owned());
    manager
        .run(Idempotency::Idempotent, move |db: DbConn| {
            let model = user::ActiveModel { email: Set(email.clone()), name: Set(name.clone()) };
            async move {
                user::Entity::insert(model)
                    .on_conflict(
                        sea_orm::sea_query::OnConflict::column(user::Column::Email)
                            .update_column(user::Column::Name)
                            .to_owned(),
                    )
                    .exec_with_returning(&db)
                    .await
            }
        })
        .await
}

/// Renames a user inside a guarded transaction: read, change the ActiveModel, write back. The
/// whole transaction is retried after a serialization failure or a connection lost before
/// `COMMIT`.
async fn rename_user(manager: &DbManager, email: &str, name: &str) -> Result<Option<user::Model>, DbError> {
    let (email, name) = (email.to_owned(), name.to_owned());
    manager
        .transaction(move |txn| {
            let (email, name) = (email.clone(), name.clone());
            Box::pin(async move {
                let Some(found) = user::Entity::find_by_id(email).one(txn).await? else { return Ok(None) };
                let mut changed: user::ActiveModel = found.into();
                changed.name = Set(name);
                changed.update(txn).await.map(Some)
            })
        })
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = dbguard::env::load_config()?;
    let manager = DbManager::connect(config).await?;
    // Code that needs a plain `DatabaseConnection` (sea-orm-migration, for one) still gets one.
    let plain: sea_orm::DatabaseConnection = manager.connection();
    let schema = Schema::new(plain.get_database_backend());
    let create_table = schema.create_table_from_entity(user::Entity).if_not_exists().to_owned();
    manager
        .run(Idempotency::Idempotent, |db| {
            let statement = create_table.clone();
            async move { db.execute(&statement).await.map(|_| ()) }
        })
        .await?;

    let created = create_user(&manager, "ada@example.com", "Ada Lovelace").await?;
    println!("created {created:?}");
    let renamed = rename_user(&manager, "ada@example.com", "Ada King").await?;
    println!("renamed {renamed:?}");
    let count = manager.run(Idempotency::Idempotent, |db| async move { user::Entity::find().count(&db).await }).await?;
    println!("{count} user(s); health: {:?}", manager.check_health(false).await.status);
    let deleted = manager
        .run(Idempotency::Idempotent, |db| async move {
            user::Entity::delete_by_id("ada@example.com").exec(&db).await.map(|done| done.rows_affected)
        })
        .await?;
    println!("deleted {deleted} user(s)");
    manager.close().await;
    Ok(())
}
