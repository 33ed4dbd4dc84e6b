//! A users service in the style dbguard replaces: a SeaORM `User` entity and a `create_user`
//! guarded by the retry runner. Run against the SQLite default or any DATABASE_URL:
//!
//! ```sh
//! cargo run -p dbguard --features sqlite --example users_service
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run -p dbguard --features sqlite --example users_service
//! ```

use dbguard::{DbError, DbManager, Idempotency};
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
        .run(Idempotency::Idempotent, move |db| {
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = dbguard::env::load_config()?;
    let manager = DbManager::connect(config).await?;
    let schema = Schema::new(manager.connection().get_database_backend());
    let create_table = schema.create_table_from_entity(user::Entity).if_not_exists().to_owned();
    manager
        .run(Idempotency::Idempotent, |db| {
            let statement = create_table.clone();
            async move { db.execute(&statement).await.map(|_| ()) }
        })
        .await?;

    let created = create_user(&manager, "ada@example.com", "Ada Lovelace").await?;
    println!("created {created:?}");
    let count = manager.run(Idempotency::Idempotent, |db| async move { user::Entity::find().count(&db).await }).await?;
    println!("{count} user(s); health: {:?}", manager.check_health(false).await.status);
    manager.close().await;
    Ok(())
}
