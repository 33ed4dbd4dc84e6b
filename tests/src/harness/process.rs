//! Process plumbing shared by the harnesses that run server programs (PostgreSQL clusters,
//! PgBouncer): who runs them, free ports, `/proc` inspection, SIGKILL, log tails.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;

use super::cluster::ClusterError;

/// Who runs a server program: us, or (when we are root) the `postgres` user, since neither
/// PostgreSQL nor PgBouncer agrees to run as root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerUser {
    uid: u32,
    gid: u32,
}

impl ServerUser {
    /// `None` when we are not root (programs run as us), else the `postgres` user.
    pub(crate) fn detect() -> Result<Option<Self>, ClusterError> {
        let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).map_err(ClusterError::io("reading /proc/self"))?;
        if euid != 0 {
            return Ok(None);
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let entry = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
            .ok_or_else(|| ClusterError::NoServerUser("no `postgres` entry in /etc/passwd".into()))?;
        let parse =
            |s: &str| s.parse::<u32>().map_err(|_| ClusterError::NoServerUser(format!("bad id {s:?} in /etc/passwd")));
        Ok(Some(Self { uid: parse(entry[2])?, gid: parse(entry[3])? }))
    }

    /// Hands `path` to the server user, so the server can write (or read) it.
    pub(crate) fn chown(self, path: &Path) -> Result<(), ClusterError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(ClusterError::io(format!("chown {} to postgres", path.display())))
    }
}

/// A command running `exe` as `user` (through `runuser -u postgres --` when we are root) in
/// `dir`, with the C locale.
pub(crate) fn server_command(user: Option<ServerUser>, exe: &Path, dir: &Path) -> std::process::Command {
    let mut cmd = if user.is_some() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        std::process::Command::new(exe)
    };
    // The server user may not be allowed into the test's working directory.
    cmd.current_dir(dir);
    cmd.env("LC_ALL", "C");
    cmd
}

/// A free TCP port on 127.0.0.1 (free when asked; the start retries if it is taken meanwhile).
pub(crate) fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(ClusterError::io("finding a free port"))
}

/// The parent PID of a process and whether it is a zombie, from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether process `pid` exists and has not exited.
pub(crate) fn is_alive(pid: u32) -> bool {
    // A zombie has exited; only its parent (which may never reap it in a container) keeps it.
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// A command sending SIGKILL to `pids`, through the shell's `kill` builtin so that it works
/// without procps (no signal API is reachable from safe std).
pub(crate) fn sigkill(pids: &[u32]) -> std::process::Command {
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "kill -9 \"$@\"", "sh"]).args(pids.iter().map(u32::to_string));
    cmd
}

/// The PIDs whose parent is `parent`.
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some((_, ppid)) if ppid == parent))
        .collect()
}

/// The last `lines` lines of a log file, headed by its path, for failure messages.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!("--- {} (last {lines} lines) ---\n{}", path.display(), all[start..].join("\n"))
}

/// Whether process `pid` has `dir` on its command line (a server started with a path in `dir`).
fn runs_in(pid: u32, dir: &Path) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy())
}

/// File in each server's temporary directory naming the PID of the test process that owns it.
const OWNER_FILE: &str = "owner.pid";

/// A new temporary directory `<prefix>...` holding an owner file with this process's PID, so
/// that [`sweep_orphans`] in a later test process can tell when it is left behind.
pub(crate) fn owned_tempdir(prefix: &str) -> Result<tempfile::TempDir, ClusterError> {
    let root = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(ClusterError::io("creating a temporary directory"))?;
    std::fs::write(root.path().join(OWNER_FILE), std::process::id().to_string())
        .map_err(ClusterError::io("writing the owner file"))?;
    Ok(root)
}

/// Stops and removes the directories `<prefix>...` of test processes that died without running
/// `Drop` (killed, or aborted on a timeout): SIGKILLs the server whose PID is the first line of
/// `pid_file` (relative to the directory) and its children, then removes the directory.
pub(crate) fn sweep_orphans(prefix: &str, pid_file: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = entry.file_name().to_str().is_some_and(|n| n.starts_with(prefix));
        let owner = std::fs::read_to_string(path.join(OWNER_FILE)).ok().and_then(|s| s.trim().parse::<u32>().ok());
        let Some(owner) = owner.filter(|_| is_ours) else {
            continue;
        };
        if is_alive(owner) {
            continue;
        }
        let pid = std::fs::read_to_string(path.join(pid_file))
            .ok()
            .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok());
        // The PID may have been reused since: only kill a server of that very directory.
        if let Some(pid) = pid.filter(|&p| is_alive(p) && runs_in(p, &path)) {
            let mut victims = vec![pid];
            victims.extend(children_of(pid));
            let _ = sigkill(&victims).stderr(Stdio::null()).status();
        }
        let _ = std::fs::remove_dir_all(&path);
    }
}
