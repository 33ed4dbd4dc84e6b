//! The cached health endpoint under load: dbguard's HTTP API started in-process on a throwaway
//! PostgreSQL database, `GET /api/database/health` driven over many keep-alive connections on
//! loopback for a fixed time, and the database probes made meanwhile counted; then the same
//! again while dashboard viewers hold `GET /api/dashboard/events` streams open, and alone once
//! more, to show what the dashboard costs the service.
//!
//! The server is assembled as `dbguard serve` assembles it: lazy manager, background monitor,
//! `AppState::new` (which installs the Prometheus recorder) and a log subscriber at
//! `DBGUARD_LOG` (default `info`) on stderr. The load generator is a plain HTTP/1.1 client
//! (hyper), one connection per task, on the same runtime: it shares the machine's cores with
//! the server, so the number is what both together sustain.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `DBGUARD_BENCH_HEALTH_SECONDS` | 5 | measured seconds |
//! | `DBGUARD_BENCH_HEALTH_WARMUP` | 0.5 | unmeasured seconds before |
//! | `DBGUARD_BENCH_HTTP_CONNECTIONS` | 64 | concurrent keep-alive connections (one task each) |
//! | `DBGUARD_BENCH_HEALTH_INTERVAL` | 1 | `DB_HEALTH_CHECK_INTERVAL` (and so the cache TTL), seconds |
//! | `DBGUARD_BENCH_DASHBOARD_VIEWERS` | 50 | dashboard streams open during the second run |
//! | `DBGUARD_TEST_PG_URL` | postgres://postgres@127.0.0.1:5432/postgres | the server |

mod support;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use dbguard::DbManager;
use dbguard_http::api::{self, AppState};
use dbguard_http::auth::Authenticator;
use dbguard_tests::TestDb;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use support::{Percentiles, Report, Table, knob, knob_seconds, micros};
use tokio::sync::watch;

const HEALTH_PATH: &str = "/api/database/health";
const EVENTS_PATH: &str = "/api/dashboard/events";

/// A fixed signing secret: the benchmark mints its own token and nothing else ever sees it.
const SECRET: &str = "health-bench-secret-5d1f0a7c93e24b68a1c0";

/// The throughput the endpoint is expected to reach (set on a 2-core machine; the report shows
/// the cores of the run it comes from).
const TARGET_REQUESTS_PER_SEC: f64 = 20_000.0;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

struct Knobs {
    seconds: Duration,
    warmup: Duration,
    connections: usize,
    interval: Duration,
    viewers: usize,
}

impl Knobs {
    fn from_env() -> Self {
        Self {
            seconds: knob_seconds("DBGUARD_BENCH_HEALTH_SECONDS", 5.0),
            warmup: knob_seconds("DBGUARD_BENCH_HEALTH_WARMUP", 0.5),
            connections: knob("DBGUARD_BENCH_HTTP_CONNECTIONS", 64usize).max(1),
            interval: knob_seconds("DBGUARD_BENCH_HEALTH_INTERVAL", 1.0),
            viewers: knob("DBGUARD_BENCH_DASHBOARD_VIEWERS", 50usize),
        }
    }
}

/// What one client connection saw.
#[derive(Default)]
struct Tally {
    nanos: Vec<u64>,
    failures: u64,
    first_failure: Option<String>,
}

/// One keep-alive connection sending requests back to back until the phase is `STOP`.
async fn client(addr: SocketAddr, authorization: Arc<str>, phase: Arc<AtomicU8>) -> Tally {
    let mut tally = Tally::default();
    let fail = |tally: &mut Tally, what: String| {
        tally.failures += 1;
        tally.first_failure.get_or_insert(what);
    };
    let stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(stream) => stream,
        Err(err) => {
            fail(&mut tally, format!("connect: {err}"));
            return tally;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(pair) => pair,
        Err(err) => {
            fail(&mut tally, format!("handshake: {err}"));
            return tally;
        }
    };
    tokio::spawn(connection);
    let host = addr.to_string();
    loop {
        let now_in = phase.load(Ordering::Relaxed);
        if now_in == STOP {
            break;
        }
        let request = Request::get(HEALTH_PATH)
            .header(header::HOST, host.as_str())
            .header(header::AUTHORIZATION, &*authorization)
            .body(Empty::<Bytes>::new());
        let Ok(request) = request else {
            fail(&mut tally, "cannot build the request".to_owned());
            break;
        };
        let started = Instant::now();
        // The connection takes the next request only once the previous exchange is finished.
        if let Err(err) = sender.ready().await {
            fail(&mut tally, format!("connection: {err}"));
            break;
        }
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(err) => {
                fail(&mut tally, format!("request: {err}"));
                break;
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await;
        let elapsed = started.elapsed();
        match body {
            Ok(_) if status.is_success() => {
                if now_in == MEASURE {
                    tally.nanos.push(elapsed.as_nanos() as u64);
                }
            }
            Ok(body) => {
                let text = String::from_utf8_lossy(&body.to_bytes()).chars().take(200).collect::<String>();
                fail(&mut tally, format!("status {status}: {text}"));
            }
            Err(err) => {
                fail(&mut tally, format!("body: {err}"));
                break;
            }
        }
    }
    tally
}

/// What one dashboard viewer received while the phase was `MEASURE`.
#[derive(Default)]
struct ViewerTally {
    samples: u64,
    bytes: u64,
    failure: Option<String>,
}

/// One dashboard viewer: opens the event stream and reads it until `phase` says `STOP`. It
/// sleeps on the stream and on `phase` together, so it wakes only for what the server sends,
/// as a browser would; its count starts when `phase` says `MEASURE`.
async fn viewer(addr: SocketAddr, authorization: Arc<str>, mut phase: watch::Receiver<u8>) -> ViewerTally {
    let mut tally = ViewerTally::default();
    let opened = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        let request = Request::get(EVENTS_PATH)
            .header(header::HOST, addr.to_string())
            .header(header::AUTHORIZATION, &*authorization)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        Ok(response.into_body())
    };
    let mut body = match opened.await {
        Ok(body) => body,
        Err(failure) => {
            tally.failure = Some(failure);
            return tally;
        }
    };
    loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() == STOP {
                    break;
                }
            }
            frame = body.frame() => match frame {
                Some(Ok(frame)) => {
                    if *phase.borrow() == MEASURE
                        && let Some(data) = frame.data_ref()
                    {
                        tally.bytes += data.len() as u64;
                        tally.samples += data.windows(13).filter(|w| w == b"event: sample").count() as u64;
                    }
                }
                Some(Err(err)) => {
                    tally.failure = Some(format!("stream: {err}"));
                    break;
                }
                None => {
                    tally.failure = Some("the stream ended".to_owned());
                    break;
                }
            },
        }
    }
    tally
}

/// One measured run of the health clients.
struct Run {
    per_sec: f64,
    latency: Percentiles,
    failures: u64,
    first_failure: Option<String>,
    probes: u64,
    measured: Duration,
}

/// Drives `knobs.connections` health clients through warm-up and the measured window.
async fn measure(
    knobs: &Knobs,
    addr: SocketAddr,
    authorization: &Arc<str>,
    manager: &DbManager,
    phase: &Arc<AtomicU8>,
) -> Result<Run, String> {
    phase.store(WARMUP, Ordering::Relaxed);
    let clients: Vec<_> =
        (0..knobs.connections).map(|_| tokio::spawn(client(addr, authorization.clone(), phase.clone()))).collect();
    tokio::time::sleep(knobs.warmup).await;
    let probes_before = manager.probe_count();
    phase.store(MEASURE, Ordering::Relaxed);
    let measuring = Instant::now();
    tokio::time::sleep(knobs.seconds).await;
    phase.store(STOP, Ordering::Relaxed);
    let measured = measuring.elapsed();
    let probes = manager.probe_count() - probes_before;
    let mut nanos = Vec::new();
    let (mut failures, mut first_failure) = (0, None);
    for handle in clients {
        let tally = handle.await.map_err(|e| format!("a client task failed: {e}"))?;
        nanos.extend_from_slice(&tally.nanos);
        failures += tally.failures;
        first_failure = first_failure.or(tally.first_failure);
    }
    let per_sec = nanos.len() as f64 / measured.as_secs_f64();
    Ok(Run { per_sec, latency: Percentiles::of(&mut nanos), failures, first_failure, probes, measured })
}

/// The log subscriber `dbguard serve` installs, so request spans cost what they cost there.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DBGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

async fn bench() -> Result<Report, String> {
    let knobs = Knobs::from_env();
    init_logging();
    let db = TestDb::create("bench_health").await.map_err(|e| format!("cannot create the benchmark database: {e}"))?;
    let interval_ms = knobs.interval.as_millis().max(1);
    let vars = [
        ("DATABASE_URL", db.url().to_owned()),
        ("JWT_SECRET", SECRET.to_owned()),
        ("DB_ECHO", "false".to_owned()),
        ("DB_HEALTH_CHECK_INTERVAL", format!("{interval_ms}ms")),
    ];
    let config = dbguard::env::config_from_vars(vars.map(|(k, v)| (k.to_owned(), v)))
        .map_err(|e| format!("dbguard configuration: {e}"))?;
    let ttl = config.health.cache_ttl;
    let auth = Authenticator::from_config(&config.service.auth, config.profile).map_err(|e| e.to_string())?;
    let token = auth.mint("health-bench", "db:read", Duration::from_secs(3600)).map_err(|e| e.to_string())?;
    let manager = DbManager::connect_lazy(config).await.map_err(|e| e.to_string())?;
    let monitor = manager.spawn_monitor();
    let state = AppState::new(manager.clone(), auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, state, async move {
        let _ = stopped.await;
    }));

    let authorization: Arc<str> = Arc::from(format!("Bearer {token}"));
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let alone = measure(&knobs, addr, &authorization, &manager, &phase).await?;

    // The same again with dashboard viewers connected: they get the history, then a sample a
    // second each, for the whole run.
    let (viewer_phase, viewer_phase_rx) = watch::channel(WARMUP);
    let viewers: Vec<_> = (0..knobs.viewers)
        .map(|_| tokio::spawn(viewer(addr, authorization.clone(), viewer_phase_rx.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    viewer_phase.send_replace(MEASURE);
    let watched_from = Instant::now();
    let watched = measure(&knobs, addr, &authorization, &manager, &phase).await?;
    let watched_for = watched_from.elapsed();
    viewer_phase.send_replace(STOP);
    let (mut samples, mut bytes, mut viewer_failure) = (0u64, 0u64, None);
    for handle in viewers {
        let tally = handle.await.map_err(|e| format!("a viewer task failed: {e}"))?;
        samples += tally.samples;
        bytes += tally.bytes;
        viewer_failure = viewer_failure.or(tally.failure);
    }

    // And alone once more, so that drift on the machine during the three runs shows instead of
    // being charged to the viewers.
    let alone_again = measure(&knobs, addr, &authorization, &manager, &phase).await?;

    let health = manager.cached_health().map(|h| format!("{:?}", h.status)).unwrap_or_else(|| "none".into());
    let _ = stop_server.send(());
    let _ = server.await;
    monitor.abort();
    manager.close().await;
    drop(db);

    let cores = support::cores();
    let bound = |run: &Run| (run.measured.as_secs_f64() / knobs.interval.as_secs_f64()).floor() as u64 + 1;
    let viewer_seconds = watched_for.as_secs_f64() * knobs.viewers.max(1) as f64;

    let mut report = Report::new("health_endpoint");
    report.line("## Cached health endpoint (`tests/benches/health_endpoint.rs`)");
    report.line("");
    report.line(format!(
        "`GET {HEALTH_PATH}` with a `db:read` token, {} keep-alive HTTP/1.1 connections on loopback, {:.1} s \
         measured after {:.1} s warm-up. `DB_HEALTH_CHECK_INTERVAL` = {:.1} s (cache TTL {:.1} s), monitor \
         running. The load generator runs in the same process and on the same {cores} cores as the server.",
        knobs.connections,
        alone.measured.as_secs_f64(),
        knobs.warmup.as_secs_f64(),
        knobs.interval.as_secs_f64(),
        ttl.as_secs_f64(),
    ));
    report.line("");
    let mut table = Table::new(&[
        "dashboard viewers",
        "requests/s",
        "p50 µs",
        "p99 µs",
        "failures",
        "probes",
        "probe bound",
        "≥ 20,000 req/s",
    ]);
    let runs = [
        ("0 (first)".to_owned(), &alone),
        (knobs.viewers.to_string(), &watched),
        ("0 (last)".to_owned(), &alone_again),
    ];
    for (viewers, run) in runs {
        table.row(&[
            viewers,
            format!("{:.0}", run.per_sec),
            micros(run.latency.p50),
            micros(run.latency.p99),
            match &run.first_failure {
                Some(first) => format!("{} ({first})", run.failures),
                None => run.failures.to_string(),
            },
            run.probes.to_string(),
            format!("≤ {} ({})", bound(run), if run.probes <= bound(run) { "met" } else { "**exceeded**" }),
            if run.per_sec >= TARGET_REQUESTS_PER_SEC { "yes".to_owned() } else { "**no**".to_owned() },
        ]);
    }
    report.line(table.render().trim_end());
    report.line("");
    report.line(format!(
        "With {} viewers the endpoint served {:.2} × the mean requests/s of the runs alone before and after \
         (which differ by {:.0} %). The viewers received {:.2} samples per viewer per second ({:.0} bytes/s \
         each) while the clients ran{}.",
        knobs.viewers,
        watched.per_sec / ((alone.per_sec + alone_again.per_sec) / 2.0).max(1.0),
        (alone.per_sec - alone_again.per_sec).abs() / alone.per_sec.max(alone_again.per_sec).max(1.0) * 100.0,
        samples as f64 / viewer_seconds.max(1e-9),
        bytes as f64 / viewer_seconds.max(1e-9),
        match &viewer_failure {
            Some(failure) => format!("; a viewer failed: {failure}"),
            None => String::new(),
        },
    ));
    report.line("");
    report.line(format!(
        "Probes are `DbManager::probe_count()` (the `dbguard_health_probes_total` counter) over the measured \
         window; the bound is duration / interval + 1. Health at the end: {health}."
    ));
    report.line("");
    report.line(
        "**What limits this number.** A cached read does no database work: it is HTTP/1.1 parsing, the \
         router's layers (request id, an info-level span, timeout, envelope check), HS256 verification of \
         the bearer token, one atomic load of the cached report and a clone of its pre-serialized bytes. \
         The load generator takes part of the same cores, so this is what client and server sustain \
         together. Probes stay at about one per interval: the monitor refreshes the cache every interval, \
         and readers that find it stale share one single-flight probe. A viewer costs one sample a second: \
         the server serializes each sample once and every stream sends the same bytes.",
    );
    report.line("");
    Ok(report)
}

fn main() -> ExitCode {
    support::run_main("health endpoint", bench())
}
