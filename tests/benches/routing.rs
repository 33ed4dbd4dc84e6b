//! What routing a read to a standby costs per call (`DbManager::run_read`).
//!
//! A private primary and its streaming standby. Two managers reach the same standby: `direct`
//! names only the standby and calls `run`; `routed` names the primary and the standby with
//! `DB_READ_TARGET=standby` and `load_balance_hosts=random` and calls `run_read`, which chooses
//! the standby per call. Two
//! measurements, rounds interleaved, medians reported:
//!
//! - **no I/O:** the unit of work sends no statement (so no connection is checked out), timed
//!   over many calls in one task: the runner's own CPU cost with and without routing;
//! - **`SELECT 1`:** one task in a closed loop on the standby: a whole call, round trip included.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DBGUARD_BENCH_ROUTING_CALLS` | 200000 | calls per round without I/O |
//! | `DBGUARD_BENCH_SECONDS` | 2 | measured seconds per `SELECT 1` round |
//! | `DBGUARD_BENCH_ROUNDS` | 5 | rounds of each |

mod support;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use dbguard::{DbManager, Idempotency};
use dbguard_core::{DbConfig, ServerState};
use dbguard_tests::PgCluster;
use sea_orm::{ConnectionTrait, DbErr, Statement};
use support::{Report, Table, knob, knob_seconds, median};

fn main() -> ExitCode {
    support::run_main("routing", bench())
}

fn config(url: &str, extra: &[(&str, &str)]) -> Result<DbConfig, String> {
    let mut vars = vec![("DATABASE_URL", url), ("DB_POOL_SIZE", "2"), ("DB_MAX_OVERFLOW", "0"), ("DB_ECHO", "false")];
    vars.extend_from_slice(extra);
    DbConfig::from_vars(vars).map_err(|err| format!("configuration: {err}"))
}

/// A call that sends nothing: what the runner itself costs.
async fn no_io(manager: &DbManager, routed: bool) -> Result<(), String> {
    let op = |_db| async { Ok::<_, DbErr>(()) };
    if routed { manager.run_read(op).await } else { manager.run(Idempotency::Idempotent, op).await }
        .map_err(|err| err.to_string())
}

/// `SELECT 1` on the standby.
async fn select_one(manager: &DbManager, routed: bool) -> Result<(), String> {
    let op = |db: dbguard::DbConn| async move {
        db.query_one_raw(Statement::from_string(db.get_database_backend(), "SELECT 1")).await.map(drop)
    };
    if routed { manager.run_read(op).await } else { manager.run(Idempotency::Idempotent, op).await }
        .map_err(|err| err.to_string())
}

/// Nanoseconds per call over `calls` calls without I/O.
async fn time_no_io(manager: &DbManager, routed: bool, calls: u32) -> Result<f64, String> {
    let started = Instant::now();
    for _ in 0..calls {
        no_io(manager, routed).await?;
    }
    Ok(started.elapsed().as_nanos() as f64 / f64::from(calls))
}

/// `SELECT 1` calls per second, and the median call in microseconds, over `seconds`.
async fn time_select_one(manager: &DbManager, routed: bool, seconds: Duration) -> Result<(f64, f64), String> {
    let mut nanos = Vec::new();
    let started = Instant::now();
    while started.elapsed() < seconds {
        let call = Instant::now();
        select_one(manager, routed).await?;
        nanos.push(call.elapsed().as_nanos() as f64);
    }
    let per_second = nanos.len() as f64 / started.elapsed().as_secs_f64();
    nanos.sort_by(f64::total_cmp);
    Ok((per_second, nanos.get(nanos.len() / 2).copied().unwrap_or(0.0) / 1000.0))
}

async fn bench() -> Result<Report, String> {
    let calls: u32 = knob("DBGUARD_BENCH_ROUTING_CALLS", 200_000u32).max(1);
    let seconds = knob_seconds("DBGUARD_BENCH_SECONDS", 2.0);
    let rounds: usize = knob("DBGUARD_BENCH_ROUNDS", 5usize).max(1);

    let primary = PgCluster::start_new().await.map_err(|err| format!("primary: {err}"))?;
    let standby = PgCluster::standby_of(&primary).await.map_err(|err| format!("standby: {err}"))?;
    let direct_url = format!("postgres://postgres@127.0.0.1:{}/postgres", standby.port());
    let routed_url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=primary&load_balance_hosts=random",
        primary.port(),
        standby.port()
    );
    let direct = DbManager::connect(config(&direct_url, &[])?).await.map_err(|err| format!("direct: {err}"))?;
    let routed =
        DbManager::connect(config(&routed_url, &[("DB_READ_TARGET", "standby"), ("DB_HEALTH_CHECK_INTERVAL", "1s")])?)
            .await
            .map_err(|err| format!("routed: {err}"))?;
    let waited = Instant::now();
    loop {
        let servers = routed.status().await.servers.unwrap_or_default();
        if servers.iter().any(|server| server.port == standby.port() && server.state == ServerState::Up) {
            break;
        }
        if waited.elapsed() > Duration::from_secs(30) {
            return Err(format!("the standby never took reads: {servers:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Warm both paths: connections open, statements prepared, caches filled.
    for routed_call in [false, true] {
        let manager = if routed_call { &routed } else { &direct };
        time_no_io(manager, routed_call, calls / 10 + 1).await?;
        time_select_one(manager, routed_call, Duration::from_millis(300)).await?;
    }

    let (mut direct_ns, mut routed_ns) = (Vec::new(), Vec::new());
    let (mut direct_ops, mut routed_ops, mut direct_p50, mut routed_p50) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct_ns.push(time_no_io(&direct, false, calls).await?);
        routed_ns.push(time_no_io(&routed, true, calls).await?);
        let (ops, p50) = time_select_one(&direct, false, seconds).await?;
        direct_ops.push(ops);
        direct_p50.push(p50);
        let (ops, p50) = time_select_one(&routed, true, seconds).await?;
        routed_ops.push(ops);
        routed_p50.push(p50);
    }
    let med = |values: &[f64]| median(values).unwrap_or(f64::NAN);
    let spread = |values: &[f64]| {
        let (min, max) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        if min > 0.0 { format!("{:.0}%", (max / min - 1.0) * 100.0) } else { "–".to_owned() }
    };

    let mut report = Report::new("routing");
    report.line("## Routing a read to a standby (`tests/benches/routing.rs`)");
    report.line("");
    report.line(format!(
        "A private primary and its streaming standby on this machine. `run` on a manager that names only the \
         standby, against `run_read` on a manager that names both with `DB_READ_TARGET=standby` and \
         `load_balance_hosts=random` (the same standby answers both). One task; {rounds} interleaved rounds, \
         median reported."
    ));
    report.line("");
    let mut table =
        Table::new(&["measure", "`run` on the standby", "`run_read`, routed", "routed − direct", "round spread"]);
    table.row(&[
        format!("no I/O, ns per call ({calls} calls a round)"),
        format!("{:.0}", med(&direct_ns)),
        format!("{:.0}", med(&routed_ns)),
        format!("{:+.0} ns", med(&routed_ns) - med(&direct_ns)),
        format!("{} / {}", spread(&direct_ns), spread(&routed_ns)),
    ]);
    table.row(&[
        format!("`SELECT 1`, calls/s ({} s a round)", seconds.as_secs_f64()),
        format!("{:.0}", med(&direct_ops)),
        format!("{:.0}", med(&routed_ops)),
        format!("× {:.2}", med(&routed_ops) / med(&direct_ops)),
        format!("{} / {}", spread(&direct_ops), spread(&routed_ops)),
    ]);
    table.row(&[
        "`SELECT 1`, p50 µs".to_owned(),
        format!("{:.1}", med(&direct_p50)),
        format!("{:.1}", med(&routed_p50)),
        format!("{:+.1} µs", med(&routed_p50) - med(&direct_p50)),
        format!("{} / {}", spread(&direct_p50), spread(&routed_p50)),
    ]);
    report.line(table.render());
    report.line(
        "**What limits this number.** Choosing the standby reads each server's role and state (two atomic loads \
         per server) and draws one number from a per-thread generator; lag and roles are sampled by a \
         background task, never on the call. `run_read` on a standby also skips what `run` does for the \
         primary (the breaker's flag, the retry schedule's set-up), so without I/O it can come out cheaper. \
         With `SELECT 1` one task is latency-bound and the round trip dominates: read the difference against \
         the rounds' spread.",
    );
    report.line("");
    direct.close().await;
    routed.close().await;
    Ok(report)
}
