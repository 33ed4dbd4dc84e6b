//! The dashboard in headless Chromium, driven over WebDriver (chromedriver), against a real
//! server on a private PostgreSQL cluster: a wrong token shows an error and a right one the
//! board; status and pool numbers appear; a health check named like an HTML tag shows as text
//! and no alert fires; the query analytics list a scanned statement, its HTML alias as text;
//! calls per second move under load; stopping the cluster shows unhealthy and an open breaker,
//! and restarting it healthy again. Screenshots of each state are written
//! to `target/tmp/dashboard-screenshots/`.

mod support;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dbguard::{ExtraCheck, ExtraChecks, Idempotency};
use dbguard_core::{CheckResult, CheckStatus};
use dbguard_tests::{DEFAULT_DB, PgCluster, StopMode, skip};
use fantoccini::{Client, ClientBuilder, Locator};
use sea_orm::ConnectionTrait;
use serde_json::json;
use sqlx::Connection;
use support::Server;

const TEST: &str = "dashboard_in_a_real_browser";
/// A plugin check's name that is also HTML which would run script if the page parsed it.
const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)>";
const HOSTILE_MESSAGE: &str = "<script>alert(2)</script>";
/// How soon after the cluster stops the page must show it unhealthy with its breaker open:
/// two monitor intervals (1 s) and a sample (1 s), with room for a loaded CI machine.
const OUTAGE_SHOWN_WITHIN: Duration = Duration::from_secs(5);
/// A column alias that is also HTML: pg_stat_statements keeps identifiers as written.
const HOSTILE_ALIAS: &str = "<img src=y onerror=alert(3)>";

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

impl Driver {
    async fn start_or_skip() -> Option<(Self, PathBuf)> {
        let (Some(driver), Some(browser)) = (on_path("chromedriver"), on_path("chromium")) else {
            skip(TEST, "chromium and chromedriver are not installed (Debian: chromium chromium-driver)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).ok()?;
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Self { child, port };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "chromedriver did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some((driver, browser))
    }

    async fn browser(&self, binary: &std::path::Path) -> Client {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1200"]
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else { unreachable!() };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a browser session")
    }
}

/// A health check standing in for a plugin whose name and message are HTML.
struct Hostile;

impl ExtraCheck for Hostile {
    fn name(&self) -> String {
        HOSTILE_NAME.to_owned()
    }

    fn run(&self) -> Result<CheckResult, String> {
        Ok(CheckResult::new(HOSTILE_NAME, CheckStatus::Pass, false).with_message(HOSTILE_MESSAGE))
    }
}

impl ExtraChecks for Hostile {
    fn checks(&self) -> Vec<Arc<dyn ExtraCheck>> {
        vec![Arc::new(Hostile)]
    }
}

/// Polls the text of `css` until `ready` accepts it; panics with the last text after `limit`.
async fn wait_text(browser: &Client, css: &str, limit: Duration, ready: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if ready(&text) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} still shows {last:?} after {limit:?}");
}

async fn screenshot(browser: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
}

/// Loads pg_stat_statements on `pg` and runs a scan of an unindexed table under an HTML alias
/// often enough for the analytics to list both the statement and the table.
async fn scanned_statements(pg: &PgCluster, url: &str) {
    pg.set_setting("shared_preload_libraries", "'pg_stat_statements'").expect("preload");
    pg.restart().await.expect("restart with the extension's library");
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    for statement in [
        "CREATE EXTENSION pg_stat_statements",
        "CREATE TABLE hostile_scan (v INTEGER)",
        "INSERT INTO hostile_scan SELECT g % 1000 FROM generate_series(1, 20000) g",
        "ANALYZE hostile_scan",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.expect(statement);
    }
    let scan = format!("SELECT count(*) AS \"{HOSTILE_ALIAS}\" FROM hostile_scan WHERE v = $1");
    for n in 0..20 {
        sqlx::query(sqlx::AssertSqlSafe(scan.as_str())).bind(n).execute(&mut conn).await.expect("scan");
    }
    conn.close().await.expect("close");
}

/// Runs `SELECT 1` through the guarded path until `stop`, as a service under load would.
fn load(server: &Server, stop: Arc<AtomicBool>) -> impl Future<Output = ()> + use<> {
    let manager = server.manager.clone();
    async move {
        while !stop.load(Ordering::Relaxed) {
            let _ =
                manager.run(Idempotency::Idempotent, |db| async move { db.execute_unprepared("SELECT 1").await }).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_the_database_in_a_real_browser() {
    let Some(pg) = PgCluster::start_or_skip(TEST).await else { return };
    let Some((driver, chromium)) = Driver::start_or_skip().await else { return };
    let url = pg.url(DEFAULT_DB);
    scanned_statements(&pg, &url).await;
    let server = Server::start(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_HEALTH_CHECK_INTERVAL", "1s"),
        ("DB_BREAKER_FAILURES", "3"),
        ("DB_BREAKER_COOLDOWN", "2s"),
    ])
    .await;
    server.manager.set_extra_checks(Some(Arc::new(Hostile)));
    let monitor = server.manager.spawn_monitor();
    let browser = driver.browser(&chromium).await;

    // A wrong token in the fragment: the login form comes back with the refusal.
    browser.goto(&server.url("/dashboard#token=not-a-token")).await.expect("open the page");
    let refused = wait_text(&browser, "#login-error", Duration::from_secs(10), |t| !t.is_empty()).await;
    assert!(refused.contains("refused"), "{refused}");
    let address = browser.current_url().await.expect("url");
    assert!(!address.as_str().contains("token"), "the token left the address bar: {address}");

    // The right one through the form.
    browser
        .find(Locator::Css("#token-input"))
        .await
        .expect("token input")
        .send_keys(&server.reader)
        .await
        .expect("type");
    browser.find(Locator::Css("#login-form button")).await.expect("button").click().await.expect("sign in");
    wait_text(&browser, "#status", Duration::from_secs(15), |t| t == "healthy").await;
    let size = wait_text(&browser, "#pool-size", Duration::from_secs(5), |t| t.parse::<u32>().is_ok()).await;
    assert_eq!(size, "5", "DB_POOL_SIZE's default");
    wait_text(&browser, "#pool-checked-out", Duration::from_secs(5), |t| t.parse::<u32>().is_ok()).await;

    // The hostile check is text: its name and message as written, no image, no alert.
    let names = wait_text(&browser, "#checks", Duration::from_secs(10), |t| t.contains(HOSTILE_NAME)).await;
    assert!(names.contains(HOSTILE_MESSAGE), "{names}");
    assert!(browser.find_all(Locator::Css("#checks img, #checks script")).await.expect("query").is_empty());
    assert!(browser.get_alert_text().await.is_err(), "an alert fired");

    // The query analytics: the scanned statement with its alias as text, and the table's advice.
    let statements =
        wait_text(&browser, "#queries-statements", Duration::from_secs(10), |t| t.contains("hostile_scan")).await;
    assert!(statements.contains(HOSTILE_ALIAS), "{statements}");
    // Table statistics may reach the views after the first fetch; the page fetches again every 30 s.
    let advice = wait_text(&browser, "#queries-advice", Duration::from_secs(40), |t| t.contains("hostile_scan")).await;
    assert!(advice.contains("sequential scans"), "{advice}");
    assert!(browser.find_all(Locator::Css("#queries-statements img")).await.expect("query").is_empty());
    assert!(browser.get_alert_text().await.is_err(), "an alert fired");
    screenshot(&browser, "healthy").await;

    // Under load the calls-per-second figure moves within 3 s.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(&server, stop.clone()));
    wait_text(&browser, "#calls-per-second", Duration::from_secs(3), |t| t.parse::<f64>().is_ok_and(|v| v > 0.0)).await;
    screenshot(&browser, "under-load").await;

    // The cluster stops: unhealthy, and the failing calls open the breaker.
    // The page learns of it from the monitor's next probe (every second here) through the next
    // sample (every second): about two seconds; the bound leaves room for a busy machine.
    pg.stop(StopMode::Fast).await.expect("stop the cluster");
    let stopped = Instant::now();
    wait_text(&browser, "#status", OUTAGE_SHOWN_WITHIN, |t| t == "unhealthy").await;
    let unhealthy_after = stopped.elapsed();
    wait_text(&browser, "#breaker", OUTAGE_SHOWN_WITHIN.saturating_sub(stopped.elapsed()), |t| t == "open").await;
    eprintln!(
        "dashboard: unhealthy shown {} ms and the open breaker {} ms after the cluster stopped",
        unhealthy_after.as_millis(),
        stopped.elapsed().as_millis()
    );
    screenshot(&browser, "outage").await;

    // Back up: healthy again.
    pg.start().await.expect("restart the cluster");
    wait_text(&browser, "#status", Duration::from_secs(30), |t| t == "healthy").await;
    wait_text(&browser, "#breaker", Duration::from_secs(15), |t| t == "closed").await;
    screenshot(&browser, "recovered").await;
    assert!(browser.get_alert_text().await.is_err(), "an alert fired");
    let last_error = browser.find(Locator::Css("#last-error")).await.expect("last error").text().await.expect("text");
    assert!(!last_error.contains(&url), "the URL is not shown: {last_error}");

    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");
    monitor.abort();
    browser.close().await.expect("close the browser");
    server.stop().await;
}
