//! Private PostgreSQL clusters for tests that stop, kill, restart or fail over a server.
//!
//! Each [`PgCluster`] is its own `initdb` in a temporary directory, listening on a free port of
//! 127.0.0.1 and on a socket directory of its own, with trust authentication and durability
//! switched off for speed. When the tests run as root every server command goes through
//! `runuser -u postgres --` (PostgreSQL refuses to run as root). The server is stopped
//! (immediately) and the directory removed on `Drop`, also when the test panicked.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use super::process::{
    ServerUser, children_of, free_port, is_alive, owned_tempdir, server_command, sigkill, sweep_orphans, tail,
};
use super::require::skip;

/// Bound on every wait for the server (start, stop, promote, process exit).
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// Variable that points the harness at a PostgreSQL `bin` directory explicitly.
pub const BINDIR_VAR: &str = "DBGUARD_PG_BINDIR";

/// The database every fresh cluster has.
pub const DEFAULT_DB: &str = "postgres";

/// How [`PgCluster::stop`] shuts the server down (`pg_ctl stop -m ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Roll back open transactions, disconnect clients, checkpoint, exit.
    Fast,
    /// Exit at once without a checkpoint (crash recovery runs on the next start).
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// What went wrong managing a private cluster (or a [`PgBouncer`](crate::PgBouncer)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`) are not installed.
    #[error("postgresql server binaries not found: {0}")]
    MissingBinaries(String),
    /// Running as root, but there is no `postgres` user (or no `runuser`) to run the server as.
    #[error("running as root but cannot run the server as user postgres: {0}")]
    NoServerUser(String),
    /// The `pgbouncer` program is not installed.
    #[error("pgbouncer not found: {0}")]
    MissingPgBouncer(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A server command ran and failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its output and the tail of the server log.
        output: String,
    },
    /// Something did not happen within [`WAIT_LIMIT`].
    #[error("{what} did not happen within {after:?}\n{log}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        after: Duration,
        /// The tail of the server log.
        log: String,
    },
}

impl ClusterError {
    /// Whether this means a component is missing (skip) rather than a bug (fail).
    pub fn is_missing_component(&self) -> bool {
        matches!(
            self,
            ClusterError::MissingBinaries(_) | ClusterError::MissingPgBouncer(_) | ClusterError::NoServerUser(_)
        )
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| ClusterError::Io { what, source }
    }
}

/// A directory holding the PostgreSQL server programs.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    dir: PathBuf,
}

impl PgBinaries {
    const REQUIRED: [&'static str; 4] = ["initdb", "pg_ctl", "postgres", "pg_basebackup"];

    /// Finds the server binaries: `$DBGUARD_PG_BINDIR`, else `pg_config --bindir`, else the
    /// newest `/usr/lib/postgresql/*/bin`. (`initdb` on `PATH` may be a wrapper script, so the
    /// real directory is preferred.)
    pub fn locate() -> Result<Self, ClusterError> {
        let mut tried = Vec::new();
        let mut candidates = Vec::new();
        if let Some(dir) = std::env::var_os(BINDIR_VAR) {
            candidates.push(PathBuf::from(dir));
        }
        if let Ok(out) = std::process::Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output()
            && out.status.success()
        {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned()));
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
                Some((v, e.path().join("bin")))
            })
            .collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|(_, p)| p));
        for dir in candidates {
            if Self::REQUIRED.iter().all(|b| dir.join(b).is_file()) {
                return Ok(Self { dir });
            }
            tried.push(dir.display().to_string());
        }
        Err(ClusterError::MissingBinaries(format!(
            "need {:?}; looked in ${BINDIR_VAR}, `pg_config --bindir`, /usr/lib/postgresql/*/bin \
             ({}); install the `postgresql` package",
            Self::REQUIRED,
            if tried.is_empty() { "nothing found".to_owned() } else { tried.join(", ") }
        )))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one program in the directory.
    pub fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A private PostgreSQL server (see the module docs). All methods take `&self`, so a cluster can
/// be shared (`Arc`) between a fault-injecting task and checkers; lifecycle operations are
/// serialized internally.
///
/// ```no_run
/// # async fn demo() {
/// use dbguard_tests::{PgCluster, StopMode};
/// let Some(pg) = PgCluster::start_or_skip("restart_drill").await else { return };
/// let url = pg.url("postgres");
/// pg.restart().await.unwrap();
/// pg.kill9().await.unwrap();
/// pg.start().await.unwrap();
/// pg.stop(StopMode::Fast).await.unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct PgCluster {
    root: tempfile::TempDir,
    bin: PgBinaries,
    user: Option<ServerUser>,
    port: AtomicU16,
    settings: Mutex<BTreeMap<String, String>>,
    ops: tokio::sync::Mutex<()>,
}

impl PgCluster {
    /// `initdb`s a new cluster and starts it.
    pub async fn start_new() -> Result<Self, ClusterError> {
        let cluster = Self::init().await?;
        cluster.first_start().await?;
        Ok(cluster)
    }

    /// [`start_new`](Self::start_new), or `None` after reporting a skip when PostgreSQL's server
    /// binaries (or, as root, the `postgres` user) are missing.
    ///
    /// # Panics
    /// When a component is missing and `DBGUARD_REQUIRE_ALL=1`, or when everything is present
    /// but the cluster fails to come up (a bug, not a missing component).
    pub async fn start_or_skip(test: &str) -> Option<Self> {
        match Self::start_new().await {
            Ok(c) => Some(c),
            Err(e) if e.is_missing_component() => {
                skip(test, &e.to_string());
                None
            }
            Err(e) => panic!("{test}: private postgresql cluster failed: {e}"),
        }
    }

    /// `initdb`s a new cluster without starting it; [`start`](Self::start) starts it.
    pub async fn init() -> Result<Self, ClusterError> {
        let cluster = Self::empty()?;
        let data = cluster.data_dir();
        let mut cmd = cluster.command("initdb");
        cmd.arg("-D").arg(&data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"]).arg("--no-sync");
        cluster.run(cmd, "initdb").await?;
        cluster.append_include()?;
        cluster.write_conf()?;
        Ok(cluster)
    }

    /// A new cluster that is a streaming-replication standby of `primary` (`pg_basebackup -R`),
    /// started. The primary must be running; fresh clusters allow replication from 127.0.0.1.
    /// [`promote`](Self::promote) turns it into a primary for a failover drill.
    pub async fn standby_of(primary: &PgCluster) -> Result<Self, ClusterError> {
        let cluster = Self::empty()?;
        *cluster.lock_settings() = primary.lock_settings().clone();
        let mut cmd = cluster.command("pg_basebackup");
        cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(primary.port().to_string())
            .arg("-D")
            .arg(cluster.data_dir())
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        cluster.run(cmd, "pg_basebackup").await?;
        // The copied data directory carries the primary's port and socket directory: rewrite.
        cluster.write_conf()?;
        cluster.first_start().await?;
        Ok(cluster)
    }

    fn empty() -> Result<Self, ClusterError> {
        sweep_orphan_clusters();
        let bin = PgBinaries::locate()?;
        let user = ServerUser::detect()?;
        let root = owned_tempdir(DIR_PREFIX)?;
        std::fs::create_dir(root.path().join("sock")).map_err(ClusterError::io("creating the socket directory"))?;
        let cluster = Self {
            root,
            bin,
            user,
            port: AtomicU16::new(free_port()?),
            settings: Mutex::new(BTreeMap::new()),
            ops: tokio::sync::Mutex::new(()),
        };
        if let Some(u) = user {
            for p in [cluster.root.path().to_owned(), cluster.socket_dir()] {
                u.chown(&p)?;
            }
        }
        Ok(cluster)
    }

    /// Starts the server for the first time, moving to another free port if the chosen one was
    /// taken in the meantime.
    async fn first_start(&self) -> Result<(), ClusterError> {
        let mut attempt = 0;
        loop {
            match self.start().await {
                Err(e) if attempt < 3 && self.log_tail(20).contains("already in use") => {
                    attempt += 1;
                    let _ = e;
                    self.port.store(free_port()?, Ordering::Relaxed);
                    self.write_conf()?;
                }
                other => return other,
            }
        }
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }

    /// The server's TCP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()))
    }

    /// A postgres:// URL to database `db` as the superuser `postgres` (trust auth, over TCP).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port())
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The unix socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.path().join("sock")
    }

    /// The server log file.
    pub fn log_file(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    /// The last `lines` lines of the server log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_file(), lines)
    }

    /// The postmaster's PID from `postmaster.pid`, if the file exists.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
    }

    /// Starts the server and waits (bounded) until it accepts connections.
    pub async fn start(&self) -> Result<(), ClusterError> {
        let _op = self.ops.lock().await;
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t"])
            .arg(WAIT_LIMIT.as_secs().to_string());
        self.run(cmd, "pg_ctl start").await.map(|_| ())
    }

    /// Stops the server and waits (bounded) until it has exited. Stopping a stopped server is a
    /// no-op.
    pub async fn stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        let _op = self.ops.lock().await;
        self.stop_locked(mode).await
    }

    async fn stop_locked(&self, mode: StopMode) -> Result<(), ClusterError> {
        if self.postmaster_pid().is_none() {
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode.as_arg(), "-w", "-t"])
            .arg(WAIT_LIMIT.as_secs().to_string());
        self.run(cmd, "pg_ctl stop").await.map(|_| ())
    }

    /// Stops (fast) and starts the server.
    pub async fn restart(&self) -> Result<(), ClusterError> {
        self.stop(StopMode::Fast).await?;
        self.start().await
    }

    /// Kills the postmaster and all its children with SIGKILL, like an OOM kill of the whole
    /// server: clients see their connections die at once, nothing is flushed. Then clears the
    /// stale lock files, so [`start`](Self::start) works (and runs crash recovery).
    pub async fn kill9(&self) -> Result<(), ClusterError> {
        let _op = self.ops.lock().await;
        let Some(pid) = self.postmaster_pid() else {
            return Ok(());
        };
        let mut victims = vec![pid];
        victims.extend(children_of(pid));
        let cmd = tokio::process::Command::from(sigkill(&victims));
        // Some may already be gone; what matters is that none is left afterwards.
        let _ = self.run_plain(cmd, "kill -KILL").await;
        let deadline = Instant::now() + WAIT_LIMIT;
        while victims.iter().any(|&p| is_alive(p)) {
            if Instant::now() > deadline {
                return Err(self.timeout("killed server processes to exit"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.clear_stale_locks();
        Ok(())
    }

    fn clear_stale_locks(&self) {
        let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
        let port = self.port();
        for name in [format!(".s.PGSQL.{port}"), format!(".s.PGSQL.{port}.lock")] {
            let _ = std::fs::remove_file(self.socket_dir().join(name));
        }
    }

    /// Sets `max_connections` (and `superuser_reserved_connections` to at most `n - 1`), then
    /// restarts the server if it is running, since the setting needs a restart. A standby needs
    /// at least its primary's value.
    pub async fn set_max_connections(&self, n: u32) -> Result<(), ClusterError> {
        {
            let mut s = self.lock_settings();
            s.insert("max_connections".into(), n.to_string());
            s.insert("superuser_reserved_connections".into(), n.saturating_sub(1).min(3).to_string());
        }
        self.write_conf()?;
        if self.postmaster_pid().is_some() {
            self.restart().await?;
        }
        Ok(())
    }

    /// Sets a server setting in the cluster's configuration file. It takes effect at the next
    /// [`start`](Self::start) / [`restart`](Self::restart), or [`reload`](Self::reload) for
    /// settings that allow it. `value` is written verbatim (quote strings yourself: `"'5s'"`).
    pub fn set_setting(&self, name: &str, value: &str) -> Result<(), ClusterError> {
        self.lock_settings().insert(name.into(), value.into());
        self.write_conf()
    }

    /// Makes the running server re-read its configuration (`pg_ctl reload`).
    pub async fn reload(&self) -> Result<(), ClusterError> {
        let _op = self.ops.lock().await;
        let mut cmd = self.command("pg_ctl");
        cmd.arg("reload").arg("-D").arg(self.data_dir());
        self.run(cmd, "pg_ctl reload").await.map(|_| ())
    }

    /// Promotes a standby to primary and waits (bounded) until it accepts writes.
    pub async fn promote(&self) -> Result<(), ClusterError> {
        let _op = self.ops.lock().await;
        let mut cmd = self.command("pg_ctl");
        cmd.arg("promote").arg("-D").arg(self.data_dir()).args(["-w", "-t"]).arg(WAIT_LIMIT.as_secs().to_string());
        self.run(cmd, "pg_ctl promote").await.map(|_| ())
    }

    /// Whether the server completes a connection (as `postgres` to `postgres`) within 2 s.
    pub async fn is_accepting(&self) -> bool {
        let url = self.url(DEFAULT_DB);
        match tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(&url)).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                true
            }
            _ => false,
        }
    }

    /// Waits (bounded) until [`is_accepting`](Self::is_accepting) is true.
    pub async fn wait_accepting(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + WAIT_LIMIT;
        while !self.is_accepting().await {
            if Instant::now() > deadline {
                return Err(self.timeout("server accepting connections"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn lock_settings(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn timeout(&self, what: &str) -> ClusterError {
        ClusterError::Timeout { what: what.into(), after: WAIT_LIMIT, log: self.log_tail(20) }
    }

    fn append_include(&self) -> Result<(), ClusterError> {
        use std::io::Write;
        let path = self.data_dir().join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(ClusterError::io(format!("opening {}", path.display())))?;
        writeln!(f, "\ninclude '{CONF_FILE}'").map_err(ClusterError::io(format!("writing {}", path.display())))
    }

    /// Rewrites the included configuration file from the port, socket dir and settings.
    fn write_conf(&self) -> Result<(), ClusterError> {
        let mut conf = BTreeMap::from(
            [
                ("listen_addresses", "'127.0.0.1'".to_owned()),
                ("port", self.port().to_string()),
                ("unix_socket_directories", format!("'{}'", self.socket_dir().display())),
                ("fsync", "off".into()),
                ("synchronous_commit", "off".into()),
                ("full_page_writes", "off".into()),
                ("wal_level", "replica".into()),
                ("max_wal_senders", "5".into()),
                ("shared_buffers", "'32MB'".into()),
                ("logging_collector", "off".into()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        conf.extend(self.lock_settings().clone());
        let text: String = conf.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let path = self.data_dir().join(CONF_FILE);
        std::fs::write(&path, text).map_err(ClusterError::io(format!("writing {}", path.display())))?;
        if let Some(u) = self.user {
            u.chown(&path)?;
        }
        Ok(())
    }

    /// A server program, run as the `postgres` user when we are root.
    fn command(&self, program: &str) -> tokio::process::Command {
        server_command(self.user, &self.bin.program(program), self.root.path()).into()
    }

    /// Runs a server command (bounded), folding the server log into its error.
    async fn run(&self, cmd: tokio::process::Command, what: &str) -> Result<std::process::Output, ClusterError> {
        self.run_plain(cmd, what).await.map_err(|e| match e {
            ClusterError::Command { command, status, output } => {
                ClusterError::Command { command, status, output: format!("{output}\n{}", self.log_tail(20)) }
            }
            e @ ClusterError::Io { .. } if self.user.is_some() => {
                ClusterError::NoServerUser(format!("{what} via runuser: {e}"))
            }
            e => e,
        })
    }

    async fn run_plain(
        &self,
        mut cmd: tokio::process::Command,
        what: &str,
    ) -> Result<std::process::Output, ClusterError> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let limit = WAIT_LIMIT + Duration::from_secs(10);
        let out = tokio::time::timeout(limit, cmd.output())
            .await
            .map_err(|_| ClusterError::Timeout {
                what: format!("`{what}` to finish"),
                after: limit,
                log: self.log_tail(20),
            })?
            .map_err(ClusterError::io(format!("running {what}")))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(ClusterError::Command {
                command: what.to_owned(),
                status: out.status.to_string(),
                output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            })
        }
    }

    /// Synchronous best-effort teardown for `Drop`: immediate stop, then SIGKILL if needed.
    fn teardown(&self) {
        let Some(pid) = self.postmaster_pid() else {
            return;
        };
        let stopped = server_command(self.user, &self.bin.program("pg_ctl"), self.root.path())
            .arg("stop")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", "10"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !stopped && is_alive(pid) {
            let mut victims = vec![pid];
            victims.extend(children_of(pid));
            let _ = sigkill(&victims).stderr(Stdio::null()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while victims.iter().any(|&p| is_alive(p)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.teardown();
        // The TempDir field removes the directory after this.
    }
}

/// The included configuration file the harness owns inside the data directory.
const CONF_FILE: &str = "dbguard_test.conf";

/// Prefix of each cluster's temporary directory.
const DIR_PREFIX: &str = "dbguard-pg-";

/// Once per process, stops and removes clusters left behind by test processes that died
/// without running `Drop` (killed, or aborted on a timeout).
fn sweep_orphan_clusters() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| sweep_orphans(DIR_PREFIX, "data/postmaster.pid"));
}
