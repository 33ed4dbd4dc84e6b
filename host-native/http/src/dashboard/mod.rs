//! The live dashboard: `GET /dashboard` (a page embedded in the binary, plain HTML, CSS and
//! JavaScript with charts drawn by its own code) and `GET /api/dashboard/events`, a
//! Server-Sent-Events stream that starts with the last 15 minutes at one sample per second and
//! then sends each new sample.
//!
//! The page reads its `db:read` token from a login form or the URL fragment
//! (`/dashboard#token=…`, which browsers never send) and keeps it in `sessionStorage`; it sends
//! it as an `Authorization` header on a `fetch` stream, so it never appears in a URL query, a
//! cookie or a log. The page's own files need no token and carry a Content-Security-Policy
//! that allows no inline script or style; the script writes what comes from the database or a
//! plugin only as text.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::{broadcast, watch};

use crate::api::AppState;
use crate::api::access::ReadAccess;

/// How often the server samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept: 15 minutes at one per second.
pub const HISTORY_SAMPLES: usize = 900;

/// The page's policy: its own script and style files only, requests only back to this server,
/// no framing, no plugins, no forms posting anywhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const PAGE: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/app.css");

/// The sampled history and the live feed of new samples. Samples are kept serialized: every
/// subscriber gets the same bytes without serializing again.
pub(crate) struct History {
    samples: Mutex<VecDeque<Arc<str>>>,
    next_seq: AtomicU64,
    live: broadcast::Sender<Arc<str>>,
    closed: watch::Sender<bool>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            samples: Mutex::new(VecDeque::with_capacity(HISTORY_SAMPLES)),
            next_seq: AtomicU64::new(0),
            live: broadcast::channel(64).0,
            closed: watch::channel(false).0,
        }
    }
}

impl History {
    /// Takes a sample of `state`'s manager now and sends it to every open stream.
    fn record(&self, state: &AppState) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let sample = state.manager().dashboard_sample(seq);
        let Ok(json) = serde_json::to_string(&sample) else { return };
        let json: Arc<str> = json.into();
        let mut samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if samples.len() == HISTORY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(json.clone());
        // Sent under the lock, so a subscriber sees each sample once: in its backlog or live.
        let _ = self.live.send(json);
    }

    /// The backlog and a receiver for what comes after it.
    fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>, watch::Receiver<bool>) {
        let samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (samples.iter().cloned().collect(), self.live.subscribe(), self.closed.subscribe())
    }

    /// Ends every open stream (at shutdown, so that draining connections does not wait on them).
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }
}

/// Samples `state` every [`SAMPLE_EVERY`] until aborted.
pub(crate) async fn sample_forever(state: AppState) {
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        state.dashboard().record(&state);
    }
}

/// `GET /api/dashboard/events`: `event: history` with the kept samples as a JSON array, then
/// `event: sample` with each new one (`schemas/dashboard-sample.schema.json`).
pub(crate) async fn events(State(state): State<AppState>, _access: ReadAccess) -> Response {
    let (backlog, live, closed) = state.dashboard().subscribe();
    let history = Event::default().event("history").data(format!("[{}]", backlog.join(",")));
    let updates = futures::stream::unfold(live, move |mut live| {
        let mut closed = closed.clone();
        async move {
            loop {
                tokio::select! {
                    received = live.recv() => match received {
                        Ok(json) => return Some((Ok(Event::default().event("sample").data(&*json)), live)),
                        // A reader too slow for the feed skips what it missed; the next sample
                        // carries the counters, so nothing is lost but points on a chart.
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = closed.wait_for(|closed| *closed) => return None,
                }
            }
        }
    });
    // `wait_for` looks at the current value first: a stream opened after shutdown began ends
    // right after its history.
    let stream = futures::stream::once(async move { Ok::<_, Infallible>(history) }).chain(updates);
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// `GET /dashboard`.
pub(crate) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard/app.js`.
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/app.css`.
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
