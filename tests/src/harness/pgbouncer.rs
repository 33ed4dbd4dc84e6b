//! PgBouncer in front of a PostgreSQL server, for tests that run dbguard behind a pooler.
//!
//! Each [`PgBouncer`] is Debian's `pgbouncer` program with a configuration of its own in a
//! temporary directory (configuration, auth file, log, unix socket), listening on a free port of
//! 127.0.0.1 and forwarding every database name to one server. Authentication is `trust`: the
//! server behind it must trust the same users (a [`PgCluster`](crate::PgCluster) and the
//! shared test server do). PgBouncer refuses to run as root, so when the tests run as root it runs
//! as the `postgres` user, like the clusters.
//!
//! PgBouncer runs under a small `sh` watchdog that holds the read end of a pipe from the test
//! process: when the pipe closes (on `Drop`, or because the test process died without running
//! `Drop`) the watchdog kills PgBouncer, so it does not outlive the test. Should the watchdog be
//! killed as well, the next test process that starts a PgBouncer kills the orphan (by its pid
//! file) and removes its directory, as the clusters do.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Column, Connection, PgConnection, Row, ValueRef};

use super::cluster::{ClusterError, PgCluster, WAIT_LIMIT};
use super::process::{ServerUser, free_port, is_alive, owned_tempdir, server_command, sigkill, sweep_orphans, tail};
use super::require::skip;

/// Variable naming the `pgbouncer` program explicitly.
pub const PGBOUNCER_VAR: &str = "DBGUARD_PGBOUNCER";

/// The database name of PgBouncer's admin console (`SHOW POOLS`, `SHOW SERVERS`, ...).
pub const ADMIN_DB: &str = "pgbouncer";

/// Startup parameters PgBouncer is told to ignore: sqlx sends `extra_float_digits`, which
/// PgBouncer does not track and otherwise refuses with 08P01 "unsupported startup parameter".
const IGNORED_STARTUP_PARAMETERS: &str = "extra_float_digits";

/// More client connections than any test opens, so the limit under test is the pool size.
const MAX_CLIENT_CONN: u32 = 500;

/// When PgBouncer hands a server connection back to its pool (`pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// When the client disconnects: a client keeps one server connection for its whole session.
    Session,
    /// When a transaction ends: consecutive transactions of one client may run on different
    /// server connections, so session state (prepared statements among it) does not follow.
    Transaction,
}

impl PoolMode {
    fn as_setting(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// What a [`PgBouncer`] is started with: the server it fronts, the pool mode, the pool size and
/// the users it lets in.
///
/// ```no_run
/// # async fn demo(pg: &dbguard_tests::PgCluster) {
/// use dbguard_tests::{PgBouncer, PgBouncerOptions, PoolMode};
/// let options = PgBouncerOptions::in_front_of(pg).pool_mode(PoolMode::Transaction).default_pool_size(2);
/// let bouncer = PgBouncer::start(options).await.unwrap();
/// let url = bouncer.url("postgres");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PgBouncerOptions {
    host: String,
    port: u16,
    pool_mode: PoolMode,
    default_pool_size: u32,
    users: Vec<String>,
}

impl PgBouncerOptions {
    /// In front of the server at `host:port`; session mode, PgBouncer's default pool size (20),
    /// user `postgres` only.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            pool_mode: PoolMode::Session,
            default_pool_size: 20,
            users: vec!["postgres".to_owned()],
        }
    }

    /// [`new`](Self::new) in front of a private cluster.
    pub fn in_front_of(cluster: &PgCluster) -> Self {
        Self::new(Ipv4Addr::LOCALHOST.to_string(), cluster.port())
    }

    /// The pool mode.
    pub fn pool_mode(mut self, mode: PoolMode) -> Self {
        self.pool_mode = mode;
        self
    }

    /// Server connections per (database, user) pair.
    ///
    /// # Panics
    /// When `n` is 0: PgBouncer would accept it and then never serve a query.
    pub fn default_pool_size(mut self, n: u32) -> Self {
        assert!(n > 0, "default_pool_size must be at least 1");
        self.default_pool_size = n;
        self
    }

    /// The users PgBouncer lets in (replacing the default `postgres`); all of them may use the
    /// admin console. With `auth_type = trust` PgBouncer still refuses a user missing from its
    /// auth file.
    ///
    /// # Panics
    /// When `users` is empty.
    pub fn users<I, S>(mut self, users: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.users = users.into_iter().map(Into::into).collect();
        assert!(!self.users.is_empty(), "PgBouncer needs at least one user");
        self
    }

    /// The `pgbouncer.ini` text for listening on `port` with its files in `root`.
    fn ini(&self, root: &Path, port: u16) -> String {
        format!(
            "[databases]\n\
             * = host={host} port={server_port}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir = {sock}\n\
             logfile = {log}\n\
             pidfile = {pid}\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             admin_users = {admins}\n\
             pool_mode = {mode}\n\
             default_pool_size = {size}\n\
             max_client_conn = {MAX_CLIENT_CONN}\n\
             ignore_startup_parameters = {IGNORED_STARTUP_PARAMETERS}\n",
            host = self.host,
            server_port = self.port,
            sock = root.join("sock").display(),
            log = root.join(LOG_FILE).display(),
            pid = root.join(PID_FILE).display(),
            auth = root.join(AUTH_FILE).display(),
            admins = self.users.join(","),
            mode = self.pool_mode.as_setting(),
            size = self.default_pool_size,
        )
    }

    /// The auth file: one `"user" ""` line per user (the password is unused under trust).
    fn auth_file(&self) -> String {
        self.users.iter().map(|u| format!("\"{}\" \"\"\n", u.replace('"', "\"\""))).collect()
    }
}

/// Prefix of each PgBouncer's temporary directory.
const DIR_PREFIX: &str = "dbguard-bouncer-";
const LOG_FILE: &str = "pgbouncer.log";
const PID_FILE: &str = "pgbouncer.pid";
const STDERR_FILE: &str = "pgbouncer.stderr";
const AUTH_FILE: &str = "userlist.txt";
const INI_FILE: &str = "pgbouncer.ini";

/// The watchdog: starts PgBouncer (`$0`, config `$1`, stderr to `$2`) in the background, prints
/// its PID, and kills it once stdin (the pipe from the test process) reaches end of file.
const WATCHDOG: &str = "\"$0\" \"$1\" >/dev/null 2>\"$2\" </dev/null & pid=$!\n\
                        echo \"$pid\"\n\
                        while read -r _; do :; done\n\
                        kill -9 \"$pid\" 2>/dev/null\n\
                        wait \"$pid\"\n";

/// Finds `pgbouncer`: `$DBGUARD_PGBOUNCER` when set (and then only there, so that a wrong
/// override is reported rather than passed over), else on `PATH`, else in `/usr/sbin` (where
/// Debian installs it, often not on a non-root `PATH`).
pub fn locate_pgbouncer() -> Result<PathBuf, ClusterError> {
    let candidates: Vec<PathBuf> = match std::env::var_os(PGBOUNCER_VAR) {
        Some(p) => vec![PathBuf::from(p)],
        None => std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).map(|d| d.join("pgbouncer")).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain([PathBuf::from("/usr/sbin/pgbouncer")])
            .collect(),
    };
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        ClusterError::MissingPgBouncer(format!(
            "looked at ${PGBOUNCER_VAR}, or else `PATH` and /usr/sbin; install the `pgbouncer` package"
        ))
    })
}

/// A running PgBouncer (see the module docs), stopped on `Drop`.
///
/// ```no_run
/// # async fn demo() {
/// use dbguard_tests::{PgBouncer, PgBouncerOptions, PgCluster, PoolMode};
/// let Some(pg) = PgCluster::start_or_skip("behind_a_pooler").await else { return };
/// let options = PgBouncerOptions::in_front_of(&pg).pool_mode(PoolMode::Transaction);
/// let Some(bouncer) = PgBouncer::start_or_skip("behind_a_pooler", options).await else { return };
/// let url = bouncer.url("postgres");
/// let pools = bouncer.show("POOLS").await.unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct PgBouncer {
    root: tempfile::TempDir,
    options: PgBouncerOptions,
    port: u16,
    pid: u32,
    watchdog: Option<Child>,
}

impl PgBouncer {
    /// Writes the configuration, starts PgBouncer and waits (bounded by [`WAIT_LIMIT`]) until it
    /// accepts TCP connections. A port taken in the meantime is retried on another.
    pub async fn start(options: PgBouncerOptions) -> Result<Self, ClusterError> {
        let exe = locate_pgbouncer()?;
        let user = ServerUser::detect()?;
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(|| sweep_orphans(DIR_PREFIX, PID_FILE));
        let root = owned_tempdir(DIR_PREFIX)?;
        std::fs::create_dir(root.path().join("sock")).map_err(ClusterError::io("creating the socket directory"))?;
        let auth = root.path().join(AUTH_FILE);
        std::fs::write(&auth, options.auth_file()).map_err(ClusterError::io("writing the auth file"))?;
        if let Some(u) = user {
            for p in [root.path().to_owned(), root.path().join("sock"), auth] {
                u.chown(&p)?;
            }
        }
        let mut attempt = 0;
        loop {
            let port = free_port()?;
            let ini = root.path().join(INI_FILE);
            std::fs::write(&ini, options.ini(root.path(), port)).map_err(ClusterError::io("writing pgbouncer.ini"))?;
            let (mut watchdog, pid) = spawn(user, &exe, root.path())?;
            match wait_accepting(port, pid, root.path()).await {
                Ok(()) => return Ok(Self { root, options, port, pid, watchdog: Some(watchdog) }),
                Err(e) => {
                    stop(&mut watchdog, pid);
                    if attempt < 3 && log_tail(root.path(), 20).contains("Address already in use") {
                        attempt += 1;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// [`start`](Self::start), or `None` after reporting a skip when `pgbouncer` (or, as root,
    /// the `postgres` user) is missing.
    ///
    /// # Panics
    /// When a component is missing and `DBGUARD_REQUIRE_ALL=1`, or when everything is present
    /// but PgBouncer fails to come up (a bug, not a missing component).
    pub async fn start_or_skip(test: &str, options: PgBouncerOptions) -> Option<Self> {
        match Self::start(options).await {
            Ok(b) => Some(b),
            Err(e) if e.is_missing_component() => {
                skip(test, &e.to_string());
                None
            }
            Err(e) => panic!("{test}: pgbouncer failed: {e}"),
        }
    }

    /// PgBouncer's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// PgBouncer's TCP address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The PID of the PgBouncer process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The users it lets in; the first one is used for [`admin_url`](Self::admin_url).
    pub fn users(&self) -> &[String] {
        &self.options.users
    }

    /// The pool mode.
    pub fn pool_mode(&self) -> PoolMode {
        self.options.pool_mode
    }

    /// The server connections per (database, user) pair.
    pub fn default_pool_size(&self) -> u32 {
        self.options.default_pool_size
    }

    /// A postgres:// URL to database `db` through PgBouncer as user `postgres`.
    pub fn url(&self, db: &str) -> String {
        self.url_as("postgres", db)
    }

    /// A postgres:// URL to database `db` through PgBouncer as `user` (who must be one of the
    /// [`users`](PgBouncerOptions::users)).
    pub fn url_as(&self, user: &str, db: &str) -> String {
        let (user, db) = (super::names::encode(user), super::names::encode(db));
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// A URL to the admin console, as the first of the users.
    pub fn admin_url(&self) -> String {
        self.url_as(&self.options.users[0], ADMIN_DB)
    }

    /// Runs `SHOW <what>` (`POOLS`, `CLIENTS`, `SERVERS`, ...) on the admin console and returns
    /// the rows as column name to text value (`NULL` as an empty string). The console speaks
    /// the simple query protocol only, which is what this uses.
    pub async fn show(&self, what: &str) -> Result<Vec<BTreeMap<String, String>>, sqlx::Error> {
        let mut conn = PgConnection::connect(&self.admin_url()).await?;
        let sql = format!("SHOW {what}");
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_all(&mut conn).await?;
        let _ = conn.close().await;
        rows.iter()
            .map(|row| {
                row.columns()
                    .iter()
                    .map(|c| {
                        let value = row.try_get_raw(c.ordinal())?;
                        let text = if value.is_null() {
                            String::new()
                        } else {
                            value.as_str().map_err(sqlx::Error::Decode)?.to_owned()
                        };
                        Ok((c.name().to_owned(), text))
                    })
                    .collect()
            })
            .collect()
    }

    /// The PgBouncer log file.
    pub fn log_file(&self) -> PathBuf {
        self.root.path().join(LOG_FILE)
    }

    /// The last `lines` lines of the PgBouncer log (and of its stderr, where it reports errors
    /// found before it opens the log), for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(self.root.path(), lines)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            stop(&mut watchdog, self.pid);
        }
        // The TempDir field removes the directory after this.
    }
}

/// The tails of the log and of stderr in PgBouncer's directory `root`.
fn log_tail(root: &Path, lines: usize) -> String {
    format!("{}\n{}", tail(&root.join(LOG_FILE), lines), tail(&root.join(STDERR_FILE), lines))
}

/// Waits (bounded by [`WAIT_LIMIT`]) until PgBouncer accepts a TCP connection on `port`; fails
/// early if process `pid` exited.
async fn wait_accepting(port: u16, pid: u32, root: &Path) -> Result<(), ClusterError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr));
        if let Ok(Ok(_)) = attempt.await {
            return Ok(());
        }
        if !is_alive(pid) {
            return Err(ClusterError::Command {
                command: "pgbouncer".into(),
                status: "exited while starting".into(),
                output: log_tail(root, 20),
            });
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout {
                what: format!("pgbouncer accepting connections on {addr}"),
                after: WAIT_LIMIT,
                log: log_tail(root, 20),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Closes the watchdog's pipe, so that it kills PgBouncer (`pid`), and reaps it (bounded);
/// SIGKILLs both if the watchdog does not finish in time.
fn stop(watchdog: &mut Child, pid: u32) {
    drop(watchdog.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(watchdog.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if matches!(watchdog.try_wait(), Ok(None)) {
        let _ = sigkill(&[pid, watchdog.id()]).stderr(Stdio::null()).status();
        let _ = watchdog.wait();
    }
}

/// Starts the watchdog (as the server user) and reads PgBouncer's PID from it.
fn spawn(user: Option<ServerUser>, exe: &Path, root: &Path) -> Result<(Child, u32), ClusterError> {
    let sh = Path::new("/bin/sh");
    let mut cmd = server_command(user, sh, root);
    cmd.args(["-c", WATCHDOG])
        .arg(exe)
        .arg(root.join(INI_FILE))
        .arg(root.join(STDERR_FILE))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(|e| match user {
        Some(_) => ClusterError::NoServerUser(format!("starting pgbouncer via runuser: {e}")),
        None => ClusterError::io("starting pgbouncer")(e),
    })?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout is piped");
    let read = BufReader::new(stdout).read_line(&mut line);
    match read.ok().and_then(|_| line.trim().parse::<u32>().ok()) {
        Some(pid) => Ok((child, pid)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(ClusterError::Command {
                command: "pgbouncer watchdog".into(),
                status: "printed no pid".into(),
                output: line,
            })
        }
    }
}
