//! Fault drills for SQLite: writers contending for the file lock, a database that cannot be
//! written, and the database file replaced on disk while it is open. Every failure must be a
//! typed error (no panic, no hang) and no acknowledged write may be lost.

mod common;

use std::path::Path;

use dbguard::{DbManager, ErrorClass, Idempotency};
use dbguard_tests::LedgerReport;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS ledger (idempotency_key TEXT PRIMARY KEY, worker INT, seq INT)";

/// One idempotent ledger write; returns the rows it inserted (0: a retry found its key).
async fn write(manager: &DbManager, worker: i32, seq: i32) -> Result<u64, dbguard::DbError> {
    // A read then a write in one deferred transaction: the lock upgrade that produces
    // SQLITE_BUSY past busy_timeout when another connection writes.
    manager
        .transaction(move |txn| {
            Box::pin(async move {
                txn.query_one_raw(Statement::from_string(DbBackend::Sqlite, "SELECT count(*) FROM ledger")).await?;
                txn.execute_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    "INSERT INTO ledger (idempotency_key, worker, seq) VALUES (?, ?, ?) \
                     ON CONFLICT (idempotency_key) DO NOTHING",
                    [dbguard_tests::ledger_key(worker, seq).into(), worker.into(), seq.into()],
                ))
                .await
                .map(|done| done.rows_affected())
            })
        })
        .await
}

/// Keys in the table, and how many acknowledged keys are missing.
async fn audit(manager: &DbManager, acked: &[String]) -> (u64, u64) {
    let keys: Vec<String> = manager
        .run(Idempotency::Idempotent, |db| async move {
            let rows = db
                .query_all_raw(Statement::from_string(DbBackend::Sqlite, "SELECT idempotency_key FROM ledger"))
                .await?;
            rows.iter().map(|r| r.try_get::<String>("", "idempotency_key")).collect()
        })
        .await
        .expect("read the ledger");
    let present: std::collections::HashSet<&String> = keys.iter().collect();
    let lost = acked.iter().filter(|k| !present.contains(k)).count() as u64;
    (acked.len() as u64 - lost, lost)
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A directory (and the files in it) made read-only for the drill, undone on drop: by permission
/// bits, or, as root (which ignores them), by a read-only bind mount of the directory onto itself.
struct ReadOnlyDir {
    path: std::path::PathBuf,
    mounted: bool,
}

impl ReadOnlyDir {
    fn make(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        if !running_as_root() {
            for entry in std::fs::read_dir(path).map_err(|e| e.to_string())? {
                let file = entry.map_err(|e| e.to_string())?.path();
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o444)).map_err(|e| e.to_string())?;
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555)).map_err(|e| e.to_string())?;
            return Ok(Self { path: path.to_owned(), mounted: false });
        }
        let path_arg = path.as_os_str();
        run_mount(&["--bind".as_ref(), path_arg, path_arg])?;
        let guard = Self { path: path.to_owned(), mounted: true };
        run_mount(&["-o".as_ref(), "remount,ro,bind".as_ref(), path_arg])?;
        Ok(guard)
    }
}

/// Runs mount(8); its stderr is the error.
fn run_mount(args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = std::process::Command::new("mount").args(args).output().map_err(|e| format!("cannot run mount: {e}"))?;
    out.status.success().then_some(()).ok_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned())
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.mounted {
            let _ = std::process::Command::new("umount").arg(&self.path).status();
        } else {
            let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o755));
        }
    }
}

fn rename_db(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let (a, b) = (format!("{}{suffix}", from.display()), format!("{}{suffix}", to.display()));
        if Path::new(&a).exists() {
            std::fs::rename(&a, &b).expect("rename database file");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_read_only_and_replaced_file() {
    let test = "drill_sqlite";
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.db");
    let url = format!("sqlite://{}", path.display());
    let vars = [("DB_POOL_SIZE", "2"), ("DB_MAX_OVERFLOW", "2"), ("DB_RETRY_MAX_ATTEMPTS", "50")];
    let managers = [common::manager(&url, &vars).await, common::manager(&url, &vars).await];
    managers[0]
        .run(Idempotency::Idempotent, |db| async move { db.execute_unprepared(SCHEMA).await })
        .await
        .expect("schema");
    let mut report = LedgerReport::default();
    let mut acked = Vec::new();

    // 1. Busy: two pools on one file, eight writers.
    let writers: Vec<_> = (0..8)
        .map(|worker| {
            let manager = managers[worker as usize % 2].clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for seq in 0..40 {
                    seen.push((seq, write(&manager, worker, seq).await));
                }
                seen
            })
        })
        .collect();
    for (worker, writer) in (0..).zip(writers) {
        let seen = tokio::time::timeout(common::HANG_LIMIT, writer).await.expect("a writer hung").expect("task");
        for (seq, result) in seen {
            match result {
                Ok(rows_affected) => {
                    report.record_ack(rows_affected);
                    acked.push(dbguard_tests::ledger_key(worker, seq));
                }
                Err(err) => report.record(&common::outcome_of(&err)),
            }
        }
    }
    let busy_errors = report.errors_total();
    let busy_retries: u64 = managers.iter().map(|m| m.stats().retries()).sum();
    let busy_failures = managers[0].stats().summary().failures_by_class;
    report.faults += 1;

    // 2. A database that cannot be written: opened read-only (`mode=ro`), and in a directory
    // made read-only (permission bits, or as root a read-only bind mount).
    let ro = common::manager(&format!("{url}?mode=ro"), &[("DB_RETRY_MAX_ATTEMPTS", "2")]).await;
    let read_only = write(&ro, 100, 0).await.expect_err("a read-only database refuses writes");
    report.record(&common::outcome_of(&read_only));
    ro.close().await;
    report.faults += 1;
    let ro_dir = tempfile::tempdir().expect("temp dir");
    let ro_path = ro_dir.path().join("ro.db");
    let ro_url = format!("sqlite://{}", ro_path.display());
    let m = common::manager(&ro_url, &[]).await;
    m.run(Idempotency::Idempotent, |db| async move { db.execute_unprepared(SCHEMA).await }).await.expect("schema");
    m.close().await;
    let permission_case = match ReadOnlyDir::make(ro_dir.path()) {
        Err(reason) => {
            dbguard_tests::skip(test, &format!("cannot make a directory read-only: {reason}"));
            "skipped".to_owned()
        }
        Ok(read_only_dir) => {
            let outcome = match DbManager::connect(common::config(&ro_url, &[("DB_RETRY_MAX_ATTEMPTS", "1")])).await {
                Ok(m) => {
                    let written = write(&m, 101, 0).await.map_err(|e| e.class().to_string());
                    m.close().await;
                    written
                }
                Err(e) => Err(e.to_string()),
            };
            drop(read_only_dir);
            assert!(outcome.is_err(), "a read-only directory refuses writes: {outcome:?}");
            let how = if running_as_root() { "bind mount" } else { "chmod" };
            format!("{how}:{}", outcome.err().unwrap_or_default())
        }
    };

    // 3. The file replaced on disk while open: moved aside (with its WAL) and garbage put in
    // its place, as a botched restore would.
    let aside = dir.path().join("ledger.aside.db");
    rename_db(&path, &aside);
    std::fs::write(&path, vec![0x5a_u8; 8192]).expect("write garbage");
    report.faults += 1;
    let rebuild = tokio::time::timeout(common::HANG_LIMIT, managers[0].reconnect()).await.expect("reconnect hung");
    let rebuild_class = rebuild.as_ref().err().map(dbguard::DbError::class);
    let fresh = DbManager::connect(common::config(&url, &[("DB_RETRY_MAX_ATTEMPTS", "1")])).await;
    let fresh_outcome = match &fresh {
        Ok(m) => write(m, 102, 0).await.err().map(|e| e.class().to_string()),
        Err(e) => Some(e.to_string()),
    };
    // Writes on the connections opened before the swap land in the moved file (same inode).
    let mut during_replace = Vec::new();
    for seq in 0..5 {
        let result =
            tokio::time::timeout(common::HANG_LIMIT, write(&managers[1], 200, seq)).await.expect("a write hung");
        match &result {
            Ok(rows_affected) => {
                acked.push(dbguard_tests::ledger_key(200, seq));
                report.record_ack(*rows_affected);
            }
            Err(err) => {
                during_replace.push(err.class());
                report.record(&common::outcome_of(err));
            }
        }
    }
    for manager in &managers {
        manager.close().await;
    }
    if let Ok(m) = fresh {
        m.close().await;
    }
    // Restore the real file; every acknowledged write must be in it.
    std::fs::remove_file(&path).expect("remove garbage");
    rename_db(&aside, &path);
    let reader = common::manager(&url, &[]).await;
    let (found, lost) = audit(&reader, &acked).await;
    reader.close().await;
    report.found = found;
    report.lost = lost;
    report.retries = busy_retries;
    common::print_summary(
        test,
        &report,
        &format!(
            "busy_retries={busy_retries} busy_failures={busy_failures:?} read_only={} permission_case={permission_case} \
             replaced: reconnect={rebuild_class:?} fresh_manager={fresh_outcome:?} old_pool_writes_failed={during_replace:?}",
            read_only.class()
        ),
    );

    assert_eq!(busy_errors, 0, "contending writers are retried until they succeed");
    assert_eq!(read_only.class(), ErrorClass::StorageReadOnly, "{read_only}");
    assert!(
        matches!(rebuild_class, Some(ErrorClass::StorageCorrupt)),
        "reconnecting to a file that is not a database fails typed: {rebuild:?}"
    );
    assert!(fresh_outcome.is_some(), "a new manager cannot use a file that is not a database");
    assert_eq!(lost, 0, "acknowledged writes lost");
}
