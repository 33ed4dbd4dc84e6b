//! Shared helpers of the API tests: an in-process server on a random port, a real HTTP
//! client, token minting and JSON Schema validation against `schemas/`.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbguard::DbManager;
use dbguard::api::{self, AppState};
use dbguard::auth::Authenticator;
use serde_json::{Value, json};

pub const SECRET: &str = "api-test-secret-7f3c9a1e5b2d4c6e8a0b";

/// Every log line of this test binary, for the secrets check.
pub fn log_buffer() -> Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let writer_buffer = buffer.clone();
            let subscriber = tracing_subscriber_fmt(move || BufWriter(writer_buffer.clone()));
            let _ = tracing::subscriber::set_global_default(subscriber);
            buffer
        })
        .clone()
}

struct BufWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for BufWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn tracing_subscriber_fmt<W>(make: W) -> impl tracing::Subscriber + Send + Sync
where
    W: Fn() -> BufWriter + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_ansi(false)
        .with_writer(make)
        .finish()
}

pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    pub admin: String,
    pub reader: String,
    pub manager: DbManager,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start(vars: &[(&str, &str)]) -> Self {
        let _ = log_buffer();
        let mut pairs: Vec<(String, String)> = vec![
            ("JWT_SECRET".into(), SECRET.into()),
            ("DB_ECHO".into(), "false".into()),
            ("DB_RETRY_MAX_ATTEMPTS".into(), "1".into()),
            ("DB_RETRY_BASE_DELAY".into(), "100ms".into()),
        ];
        for (k, v) in vars {
            pairs.retain(|(name, _)| name != k);
            // An empty value removes a default (e.g. JWT_SECRET when a public key is used).
            if !v.is_empty() {
                pairs.push(((*k).into(), (*v).into()));
            }
        }
        let config = dbguard::env::config_from_vars(pairs).expect("valid test configuration");
        let auth = Authenticator::from_config(&config.service.auth, config.profile).expect("authenticator");
        // A public-key configuration cannot mint: such tests sign their own tokens.
        let admin = auth.mint("tester", "db:read db:admin", Duration::from_secs(600)).unwrap_or_default();
        let reader = auth.mint("reader", "db:read", Duration::from_secs(600)).unwrap_or_default();
        let manager = DbManager::connect_lazy(config).await.expect("manager");
        let state = AppState::with_options(manager.clone(), auth, Duration::from_secs(30));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(api::serve(listener, state, async move {
            let _ = rx.await;
        }));
        Self {
            base,
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client"),
            admin,
            reader,
            manager,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        decode(request.send().await.expect("response")).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let response = self.client.post(self.url(path)).bearer_auth(token).json(&body).send().await.expect("response");
        decode(response).await
    }

    pub async fn query(&self, sql: &str, params: Value) -> (u16, Value) {
        self.post("/api/database/test", &self.admin.clone(), json!({ "query": sql, "params": params })).await
    }

    /// Stops accepting and waits for in-flight requests; then closes the pools.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.manager.close().await;
    }

    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("running")
    }
}

pub async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON body with status {status}: {text}"));
    (status, value)
}

pub fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("schemas")
}

/// Asserts `instance` is valid against `schemas/<stem>.schema.json`.
pub fn assert_schema(stem: &str, instance: &Value) {
    let path = schemas_dir().join(format!("{stem}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{stem}: {errors:?}\n{instance:#}");
}

/// Asserts an error envelope with `status`.
pub fn assert_error(got: &(u16, Value), status: u16) {
    assert_eq!(got.0, status, "{:#}", got.1);
    assert_schema("error-body", &got.1);
    assert_eq!(got.1["success"], false);
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An HS256 token with arbitrary claims, signed with `secret`.
pub fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("encode")
}
