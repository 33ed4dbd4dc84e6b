//! Self-tests of the harness: each piece does what drills will rely on, against a real server.

use std::time::{Duration, Instant};

use dbguard_tests::{
    APPEND_SQL, FaultProxy, Ledger, LedgerKind, LedgerReport, PgCluster, ProxyMode, StopMode, TestDb, UPSERT_SQL,
    ledger_key,
};
use sqlx::{Connection, PgConnection};

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

async fn select_one(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT 1").fetch_one(conn).await
}

#[tokio::test]
async fn cluster_starts_restarts_survives_kill9_and_stops() {
    let Some(pg) = PgCluster::start_or_skip("cluster_lifecycle").await else {
        return;
    };
    assert!(pg.is_accepting().await);

    let url = pg.url("postgres");
    let mut conn = PgConnection::connect(&url).await.unwrap();
    assert_eq!(select_one(&mut conn).await.unwrap(), 1);

    pg.restart().await.unwrap();
    assert!(pg.is_accepting().await);
    assert!(select_one(&mut conn).await.is_err(), "a connection from before the restart must be dead");
    let mut conn = PgConnection::connect(&url).await.unwrap();
    select_one(&mut conn).await.unwrap();

    pg.kill9().await.unwrap();
    assert!(pg.postmaster_pid().is_none());
    assert!(!pg.is_accepting().await);
    assert!(select_one(&mut conn).await.is_err());
    pg.start().await.unwrap();
    assert!(pg.is_accepting().await);

    pg.stop(StopMode::Fast).await.unwrap();
    assert!(!pg.is_accepting().await);
    pg.stop(StopMode::Fast).await.unwrap(); // stopping a stopped server is a no-op
    pg.start().await.unwrap();
    pg.stop(StopMode::Immediate).await.unwrap();
    assert!(!pg.is_accepting().await);
}

#[tokio::test]
async fn cluster_max_connections_refuses_the_sixth_with_53300() {
    let Some(pg) = PgCluster::start_or_skip("cluster_max_connections").await else {
        return;
    };
    pg.set_max_connections(5).await.unwrap();
    let url = pg.url("postgres");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(PgConnection::connect(&url).await.unwrap());
    }
    let err = PgConnection::connect(&url).await.expect_err("the 6th connection must be refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
}

#[tokio::test]
async fn standby_replicates_and_promotes() {
    let Some(primary) = PgCluster::start_or_skip("standby_promote").await else {
        return;
    };
    let standby = PgCluster::standby_of(&primary).await.unwrap();
    let mut p = PgConnection::connect(&primary.url("postgres")).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (x int); INSERT INTO t VALUES (42)").execute(&mut p).await.unwrap();

    let mut s = PgConnection::connect(&standby.url("postgres")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen: Result<i32, _> = sqlx::query_scalar("SELECT x FROM t").fetch_one(&mut s).await;
        if seen.as_ref().ok() == Some(&42) {
            break;
        }
        assert!(Instant::now() < deadline, "row never replicated: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = sqlx::raw_sql("INSERT INTO t VALUES (1)").execute(&mut s).await.expect_err("a standby is read-only");
    assert_eq!(sqlstate(&err).as_deref(), Some("25006"), "{err}");

    primary.stop(StopMode::Immediate).await.unwrap();
    standby.promote().await.unwrap();
    let mut s = PgConnection::connect(&standby.url("postgres")).await.unwrap();
    sqlx::raw_sql("INSERT INTO t VALUES (43)").execute(&mut s).await.unwrap();
}

/// A proxy in front of the shared server, and a URL to a fresh database through it.
async fn proxied(test: &str) -> Option<(TestDb, FaultProxy, String)> {
    let db = TestDb::create_or_skip(test).await?;
    let proxy = FaultProxy::start(db.server_addr().await.unwrap()).await.unwrap();
    let url = proxy.rewrite_url(db.url());
    Some((db, proxy, url))
}

#[tokio::test]
async fn proxy_passes_queries() {
    let Some((_db, proxy, url)) = proxied("proxy_pass").await else {
        return;
    };
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let v: i64 = sqlx::query_scalar("SELECT $1::int8 * 2").bind(21_i64).fetch_one(&mut conn).await.unwrap();
    assert_eq!(v, 42);
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.active, 1);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn proxy_latency_delays_queries() {
    let Some((_db, proxy, url)) = proxied("proxy_latency").await else {
        return;
    };
    let mut conn = PgConnection::connect(&url).await.unwrap();
    select_one(&mut conn).await.unwrap();
    proxy.set_mode(ProxyMode::Latency(Duration::from_secs(2)));
    // A query cannot answer before its delayed bytes arrive. The bound is a floor, so a slow
    // machine can only make it hold more surely.
    let early = tokio::time::timeout(Duration::from_millis(500), select_one(&mut conn)).await;
    assert!(early.is_err(), "a query answered through 2 s of added latency within 500 ms");
    proxy.set_mode(ProxyMode::Pass);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    assert_eq!(select_one(&mut conn).await.unwrap(), 1, "queries pass again");
}

#[tokio::test]
async fn proxy_blackhole_times_out_connects_and_stalls_live_flows() {
    let Some((_db, proxy, url)) = proxied("proxy_blackhole").await else {
        return;
    };
    let mut live = PgConnection::connect(&url).await.unwrap();
    proxy.set_mode(ProxyMode::Blackhole);
    let connect = tokio::time::timeout(Duration::from_millis(700), PgConnection::connect(&url)).await;
    assert!(connect.is_err(), "connect must time out, got {connect:?}");
    let stalled = tokio::time::timeout(Duration::from_millis(300), select_one(&mut live)).await;
    assert!(stalled.is_err(), "a live query must stall, got {stalled:?}");
    assert_eq!(proxy.stats().blackholed, 1);

    proxy.set_mode(ProxyMode::Pass);
    let mut fresh = PgConnection::connect(&url).await.unwrap();
    select_one(&mut fresh).await.unwrap();
}

#[tokio::test]
async fn proxy_refuse_refuses_new_connections() {
    let Some((_db, proxy, url)) = proxied("proxy_refuse").await else {
        return;
    };
    let mut live = PgConnection::connect(&url).await.unwrap();
    proxy.set_mode(ProxyMode::Refuse);
    // The mode reaches the accept loop asynchronously: the listener is closed within a few ms
    // (a connect racing with the close may see a reset instead).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::net::TcpStream::connect(proxy.addr()).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => assert!(Instant::now() < deadline, "not refusing: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = PgConnection::connect(&url).await.expect_err("refused");
    assert!(matches!(err, sqlx::Error::Io(_)), "{err}");
    select_one(&mut live).await.unwrap();

    proxy.set_mode(ProxyMode::Pass);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match PgConnection::connect(&url).await {
            Ok(mut c) => {
                select_one(&mut c).await.unwrap();
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "never listened again: {e}"),
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn proxy_reset_all_breaks_open_connections() {
    let Some((_db, proxy, url)) = proxied("proxy_reset").await else {
        return;
    };
    let mut a = PgConnection::connect(&url).await.unwrap();
    let mut b = PgConnection::connect(&url).await.unwrap();
    select_one(&mut a).await.unwrap();
    proxy.reset_all();
    let deadline = Instant::now() + Duration::from_secs(2);
    while proxy.stats().resets < 2 {
        assert!(Instant::now() < deadline, "{:?}", proxy.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = select_one(&mut a).await.expect_err("reset connection");
    assert!(matches!(err, sqlx::Error::Io(_)), "{err}");
    assert!(select_one(&mut b).await.is_err());
    // New connections are unaffected.
    let mut c = PgConnection::connect(&url).await.unwrap();
    select_one(&mut c).await.unwrap();
    assert_eq!(proxy.stats().active, 1);
}

async fn exists(admin_url: &str, sql: &'static str, name: &str) -> bool {
    let mut admin = PgConnection::connect(admin_url).await.unwrap();
    sqlx::query_scalar::<_, bool>(sql).bind(name).fetch_one(&mut admin).await.unwrap()
}

const DB_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)";
const ROLE_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)";

#[tokio::test]
async fn testdb_creates_and_drops_database_and_roles() {
    let Some(db) = TestDb::create_or_skip("testdb_lifecycle").await else {
        return;
    };
    let admin = db.admin_url().to_owned();
    let name = db.name().to_owned();
    assert!(name.starts_with("dbguard_t_testdb_lifecycle_"), "{name}");
    assert!(exists(&admin, DB_EXISTS, &name).await);

    // Open a connection and keep it: the drop must force it out.
    let mut conn = db.connect().await.unwrap();
    select_one(&mut conn).await.unwrap();

    let writer = db.create_role_with_password("writer").await.unwrap();
    assert!(!format!("{writer:?}").contains(writer.password()));
    let mut w = PgConnection::connect(writer.url()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE notes (x int); INSERT INTO notes VALUES (1)").execute(&mut w).await.unwrap();
    w.close().await.unwrap();

    let reader = db.create_read_only_role("reader").await.unwrap();
    let mut r = PgConnection::connect(reader.url()).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notes").fetch_one(&mut r).await.unwrap();
    assert_eq!(n, 1);
    let err =
        sqlx::raw_sql("INSERT INTO notes VALUES (2)").execute(&mut r).await.expect_err("read-only role must not write");
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err}");
    r.close().await.unwrap();

    let roles = [writer.name().to_owned(), reader.name().to_owned()];
    drop(db);
    assert!(!exists(&admin, DB_EXISTS, &name).await, "database {name} left behind");
    for role in roles {
        assert!(!exists(&admin, ROLE_EXISTS, &role).await, "role {role} left behind");
    }
}

#[tokio::test]
async fn ledger_audit_finds_lost_and_unacknowledged_rows() {
    let Some(db) = TestDb::create_or_skip("ledger_audit").await else {
        return;
    };
    let ledger = Ledger::connect(db.url()).await.unwrap();
    ledger.create_table(LedgerKind::Keyed).await.unwrap();
    ledger.create_table(LedgerKind::Keyed).await.unwrap(); // creating twice is harmless
    assert_eq!(ledger.kind().await.unwrap(), LedgerKind::Keyed);
    assert_eq!(ledger.write(UPSERT_SQL, 0, 0).await.unwrap(), 1);
    assert_eq!(ledger.write(UPSERT_SQL, 0, 0).await.unwrap(), 0, "a retried upsert is absorbed: no row affected");
    assert_eq!(ledger.write(UPSERT_SQL, 0, 1).await.unwrap(), 1);
    let acked = vec![ledger_key(0, 0), ledger_key(1, 0)];
    let audit = ledger.audit(&acked).await.unwrap();
    assert_eq!(audit.rows, 2);
    assert_eq!(audit.found, 1);
    assert_eq!(audit.lost, vec![ledger_key(1, 0)]);
    assert_eq!(audit.duplicates(), None, "a keyed table cannot show a replay, so it reports no figure");
    assert_eq!(audit.unacked_present, 1);
    ledger.pool().close().await;
}

#[tokio::test]
async fn ledger_audit_sees_one_replayed_write() {
    let Some(db) = TestDb::create_or_skip("ledger_replay").await else {
        return;
    };
    let ledger = Ledger::connect(db.url()).await.unwrap();
    ledger.create_table(LedgerKind::Append).await.unwrap();
    assert_eq!(ledger.kind().await.unwrap(), LedgerKind::Append);
    let mut acked = Vec::new();
    for seq in 0..10 {
        assert_eq!(ledger.write(APPEND_SQL, 0, seq).await.unwrap(), 1);
        acked.push(ledger_key(0, seq));
    }
    let clean = ledger.audit(&acked).await.unwrap();
    assert_eq!((clean.found, clean.duplicates()), (10, Some(0)));
    // The replay a faulty retry would make: the same write executed a second time.
    assert_eq!(ledger.write(APPEND_SQL, 0, 3).await.unwrap(), 1, "the append table takes the replay");
    let audit = ledger.audit(&acked).await.unwrap();
    assert_eq!(audit.rows, 11);
    assert_eq!(audit.found, 10);
    assert!(audit.lost.is_empty());
    assert_eq!(audit.duplicated, vec![(ledger_key(0, 3), 2)], "the audit names the replayed key");
    assert_eq!(audit.duplicates(), Some(1));
    let mut report = LedgerReport::default();
    report.apply_audit(&audit);
    assert!(!report.is_consistent());
    assert!(report.summary().contains("duplicates=1"), "{report}");
    ledger.pool().close().await;
}
