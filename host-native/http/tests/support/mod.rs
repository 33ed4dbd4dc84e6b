//! Shared helpers of the API tests: an in-process server on a random port, a real HTTP
//! client, token minting and JSON Schema validation against `schemas/`.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbguard::DbManager;
use dbguard_http::api::{self, AppState};
use dbguard_http::auth::Authenticator;
use dbguard_http::plugins::PluginRuntime;
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

/// How [`Server::start_with`] differs from [`Server::start`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The API's end-to-end request timeout (408 past it).
    pub request_timeout: Duration,
    /// Start a plugin runtime on this directory and serve it under `/api/plugins`.
    pub plugin_dir: Option<PathBuf>,
    /// Header-read timeout and shutdown drain limit.
    pub limits: api::ServeLimits,
}

impl Default for Options {
    fn default() -> Self {
        Self { request_timeout: Duration::from_secs(30), plugin_dir: None, limits: api::ServeLimits::default() }
    }
}

pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    pub admin: String,
    pub reader: String,
    pub manager: DbManager,
    /// The plugin runtime, when started with [`Options::plugin_dir`].
    pub plugins: Option<PluginRuntime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start(vars: &[(&str, &str)]) -> Self {
        Self::start_with(vars, Options::default()).await
    }

    /// [`Server::start`] with another request timeout and, optionally, a plugin runtime on a
    /// directory (the runtime lives as long as the server).
    pub async fn start_with(vars: &[(&str, &str)], options: Options) -> Self {
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
        let mut state = AppState::with_options(manager.clone(), auth, options.request_timeout);
        let plugins = match &options.plugin_dir {
            Some(dir) => {
                let runtime = PluginRuntime::start(manager.clone(), dir).await.expect("plugin runtime");
                state = state.with_plugins(Arc::new(runtime.clone()));
                Some(runtime)
            }
            None => None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let task = tokio::spawn(api::serve_with_limits(listener, state, shutdown, options.limits));
        Self {
            base,
            // Idle connections are dropped before the server's header-read timeout closes them.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .expect("client"),
            admin,
            reader,
            manager,
            plugins,
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
        // Unwires the plugins from the manager before its pools close.
        drop(self.plugins.take());
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
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join("schemas")
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

/// A token signed with `secret` under any HMAC algorithm (HS256, HS384, HS512).
pub fn hmac_token(algorithm: jsonwebtoken::Algorithm, secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), claims, &jsonwebtoken::EncodingKey::from_secret(secret))
        .expect("encode")
}

/// Unpadded base64url, to forge tokens (and look for encoded secrets) by hand.
pub fn base64url(bytes: &[u8]) -> String {
    base64_with(bytes, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", false)
}

/// Padded standard base64.
pub fn base64_standard(bytes: &[u8]) -> String {
    base64_with(bytes, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", true)
}

fn base64_with(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
        }
        if pad {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}

/// Sends `request` as raw bytes on a new connection (for what a well-behaved client cannot
/// send: unnormalised paths, duplicate headers, odd methods) and reads the response to EOF.
/// The request should say `Connection: close`. Returns the status and the body parsed as
/// JSON (`Value::Null` when the body is empty).
pub async fn raw_request(base: &str, request: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes))
        .await
        .expect("the server answers a raw request")
        .expect("read");
    parse_response(&bytes)
}

/// Status and JSON body of a raw HTTP/1.1 response with a `Content-Length` body.
pub fn parse_response(bytes: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|_| panic!("non-JSON body with status {status}: {body}"))
    };
    (status, value)
}
