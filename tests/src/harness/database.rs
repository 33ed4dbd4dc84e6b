//! Throwaway databases (and login roles) on a running PostgreSQL server.

use std::sync::Mutex;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use super::names::{redact_url, unique_name, with_credentials, with_database};
use super::require::skip;

/// The variable naming the admin URL of the shared test server.
pub const TEST_PG_URL_VAR: &str = "DBGUARD_TEST_PG_URL";

/// The shared server's admin URL when [`TEST_PG_URL_VAR`] is unset.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Prefix of every database and role the harness creates, so leftovers are easy to find.
pub const NAME_PREFIX: &str = "dbguard_t_";

/// How long connecting to the admin database may take before the server counts as missing.
const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long dropping the database and roles may take on `Drop`.
const DROP_TIMEOUT: Duration = Duration::from_secs(20);

/// The shared server's admin URL: [`TEST_PG_URL_VAR`] or [`DEFAULT_ADMIN_URL`].
pub fn shared_admin_url() -> String {
    std::env::var(TEST_PG_URL_VAR).ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| DEFAULT_ADMIN_URL.to_owned())
}

/// Why a [`TestDb`] could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestDbError {
    /// The admin database could not be reached: the server is missing (a skip, not a bug).
    #[error("postgresql at {url} is unreachable: {reason}")]
    Unreachable {
        /// The admin URL, password redacted.
        url: String,
        /// What connecting said.
        reason: String,
    },
    /// The server answered but an admin statement failed.
    #[error("{what} failed: {source}")]
    Sql {
        /// Which statement.
        what: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

/// A login role created for one test; dropped with the [`TestDb`] that made it.
#[derive(Clone)]
pub struct TestRole {
    name: String,
    password: String,
    url: String,
}

impl TestRole {
    /// The role name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role's password (random, URL-safe).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A postgres:// URL that logs into the test database as this role, password included.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl std::fmt::Debug for TestRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRole")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .finish_non_exhaustive()
    }
}

/// A fresh database on a running server, named `dbguard_t_<test>_<random>`, dropped
/// `WITH (FORCE)` (with the roles made through it) when this value drops.
///
/// ```no_run
/// # async fn demo() {
/// let Some(db) = dbguard_tests::TestDb::create_or_skip("my_test").await else { return };
/// let url = db.url(); // postgres://postgres@127.0.0.1:5432/dbguard_t_my_test_1a2b3c4d
/// # }
/// ```
pub struct TestDb {
    name: String,
    admin_url: String,
    url: String,
    roles: Mutex<Vec<String>>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb").field("name", &self.name).field("url", &redact_url(&self.url)).finish_non_exhaustive()
    }
}

async fn admin_connect(admin_url: &str) -> Result<PgConnection, TestDbError> {
    let unreachable = |reason: String| TestDbError::Unreachable { url: redact_url(admin_url), reason };
    match tokio::time::timeout(ADMIN_CONNECT_TIMEOUT, PgConnection::connect(admin_url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!("no connection within {ADMIN_CONNECT_TIMEOUT:?}"))),
    }
}

async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), TestDbError> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(|source| TestDbError::Sql { what: sql.to_owned(), source })
}

impl TestDb {
    /// Creates a database on the shared server ([`shared_admin_url`]).
    pub async fn create(test: &str) -> Result<Self, TestDbError> {
        Self::create_on(&shared_admin_url(), test).await
    }

    /// Creates a database on the server behind `admin_url` (a superuser's URL to any database,
    /// e.g. [`PgCluster::url`](crate::PgCluster::url)`("postgres")`).
    pub async fn create_on(admin_url: &str, test: &str) -> Result<Self, TestDbError> {
        let mut conn = admin_connect(admin_url).await?;
        let name = unique_name(NAME_PREFIX, test);
        exec(&mut conn, &format!("CREATE DATABASE \"{name}\"")).await?;
        let _ = conn.close().await;
        Ok(Self {
            url: with_database(admin_url, &name),
            admin_url: admin_url.to_owned(),
            name,
            roles: Mutex::new(Vec::new()),
        })
    }

    /// [`create`](Self::create), or `None` after reporting a skip when the shared server is
    /// unreachable.
    ///
    /// # Panics
    /// When the server is unreachable and `DBGUARD_REQUIRE_ALL=1`, or when it is reachable but
    /// creating the database fails (that is a bug, not a missing component).
    pub async fn create_or_skip(test: &str) -> Option<Self> {
        match Self::create(test).await {
            Ok(db) => Some(db),
            Err(e @ TestDbError::Unreachable { .. }) => {
                skip(test, &e.to_string());
                None
            }
            Err(e) => panic!("{test}: creating a test database failed: {e}"),
        }
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A postgres:// URL to this database, as the admin user.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin URL the database was created through.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The server's TCP address (resolved from the URL), e.g. to put a
    /// [`FaultProxy`](crate::FaultProxy) in front of it.
    pub async fn server_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        let hp = super::names::host_port(&self.url);
        tokio::net::lookup_host(hp.as_str())
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{hp} resolves to nothing")))
    }

    /// A new connection to this database, as the admin user.
    pub async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect(&self.url).await
    }

    /// Creates a login role with a random password that may connect to this database and
    /// create objects in its `public` schema. The password is real, but whether the server
    /// checks it depends on its `pg_hba.conf` (the test servers trust loopback).
    pub async fn create_role_with_password(&self, label: &str) -> Result<TestRole, TestDbError> {
        let role = self.new_role(label).await?;
        let mut conn = admin_connect(&self.admin_url).await?;
        exec(&mut conn, &format!("GRANT CONNECT, TEMPORARY ON DATABASE \"{}\" TO \"{}\"", self.name, role.name))
            .await?;
        let _ = conn.close().await;
        let mut conn = admin_connect(&self.url).await?;
        exec(&mut conn, &format!("GRANT ALL ON SCHEMA public TO \"{}\"", role.name)).await?;
        let _ = conn.close().await;
        Ok(role)
    }

    /// Creates a least-privilege login role, the one the README recommends for `DB_TEST_URL`:
    /// member of `pg_monitor`, with `SELECT` on the tables of `public` (those there now and
    /// those the admin creates later). It can read the application's tables but write none,
    /// and, unlike `pg_read_all_data`, cannot read the catalogs that hold secrets.
    pub async fn create_read_only_role(&self, label: &str) -> Result<TestRole, TestDbError> {
        let role = self.new_member_role(label, "pg_monitor").await?;
        let mut conn = admin_connect(&self.url).await?;
        for grant in [
            "GRANT USAGE ON SCHEMA public TO",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO",
        ] {
            exec(&mut conn, &format!("{grant} \"{}\"", role.name)).await?;
        }
        let _ = conn.close().await;
        Ok(role)
    }

    /// Creates a login role in `pg_read_all_data`, which can read every table and also the
    /// catalogs that hold secrets: what the test endpoint must refuse.
    pub async fn create_read_all_data_role(&self, label: &str) -> Result<TestRole, TestDbError> {
        self.new_member_role(label, "pg_read_all_data").await
    }

    /// A new login role in the predefined role `member_of`, allowed to connect here.
    async fn new_member_role(&self, label: &str, member_of: &str) -> Result<TestRole, TestDbError> {
        let role = self.new_role(label).await?;
        let mut conn = admin_connect(&self.admin_url).await?;
        exec(&mut conn, &format!("GRANT {member_of} TO \"{}\"", role.name)).await?;
        exec(&mut conn, &format!("GRANT CONNECT ON DATABASE \"{}\" TO \"{}\"", self.name, role.name)).await?;
        let _ = conn.close().await;
        Ok(role)
    }

    async fn new_role(&self, label: &str) -> Result<TestRole, TestDbError> {
        let name = unique_name(NAME_PREFIX, label);
        let password = format!("pw{:016x}{:016x}", super::names::random_u64(), super::names::random_u64());
        let mut conn = admin_connect(&self.admin_url).await?;
        // Remember the role before creating it, so a half-done setup is still cleaned up.
        self.roles.lock().unwrap_or_else(|p| p.into_inner()).push(name.clone());
        exec(&mut conn, &format!("CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")).await?;
        let _ = conn.close().await;
        Ok(TestRole { url: with_credentials(&self.url, &name, &password), name, password })
    }
}

/// Drops the database and roles; runs on its own thread and runtime (see `Drop`).
async fn drop_objects(admin_url: &str, db: &str, roles: &[String]) -> Result<(), TestDbError> {
    let mut conn = admin_connect(admin_url).await?;
    exec(&mut conn, &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")).await?;
    for role in roles {
        exec(&mut conn, &format!("DROP ROLE IF EXISTS \"{role}\"")).await?;
    }
    let _ = conn.close().await;
    Ok(())
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let db = self.name.clone();
        let roles = std::mem::take(&mut *self.roles.lock().unwrap_or_else(|p| p.into_inner()));
        // Drop cannot await, and the test's runtime may be gone or single-threaded (blocking on
        // it would deadlock), so the cleanup gets a thread and a runtime of its own.
        let worker = std::thread::Builder::new().name("testdb-drop".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            rt.block_on(async {
                match tokio::time::timeout(DROP_TIMEOUT, drop_objects(&admin_url, &db, &roles)).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("timed out after {DROP_TIMEOUT:?}")),
                }
            })
        });
        let outcome = match worker {
            Ok(handle) => handle.join().unwrap_or_else(|_| Err("cleanup thread panicked".into())),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = outcome {
            eprintln!("WARN dropping test database {}: {e}", self.name);
        }
    }
}
