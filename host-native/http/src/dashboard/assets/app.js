// The dbguard dashboard. Reads GET /api/dashboard/events (Server-Sent Events) over fetch, so
// the token travels in the Authorization header and never in a URL. Everything that comes from
// the server is written with textContent or as SVG attributes: never parsed as HTML.
"use strict";

const TOKEN_KEY = "dbguard.dashboard.token";
const HISTORY_SAMPLES = 900;
const RECONNECT_MS = 2000;
// Query statistics change slowly and cost the database a few catalog reads: fetched on sign-in,
// then this often, and on the refresh button.
const QUERIES_EVERY_MS = 30000;
const SVG = "http://www.w3.org/2000/svg";

let samples = [];
let stream = null;
let queriesTimer = null;

const $ = (id) => document.getElementById(id);

function setText(id, text) {
  $(id).textContent = text;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

// The token from the URL fragment (`#token=…`), removed from the address bar at once.
function tokenFromFragment() {
  const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (!match) return null;
  window.history.replaceState(null, "", window.location.pathname + window.location.search);
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return null;
  }
}

function showLogin(message) {
  if (stream) stream.abort();
  window.clearInterval(queriesTimer);
  $("board").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  setText("login-error", message || "");
  $("status").dataset.status = "unknown";
  setText("status", "signed out");
  setText("status-message", "");
  $("token-input").focus();
}

function showBoard() {
  $("login").hidden = true;
  $("board").hidden = false;
  $("logout").hidden = false;
}

function start(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  connect(token);
  loadQueries();
  window.clearInterval(queriesTimer);
  queriesTimer = window.setInterval(loadQueries, QUERIES_EVERY_MS);
}

// GET /api/database/queries with the stored token; a refusal is left to the event stream,
// which shows the login form.
async function loadQueries() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return;
  try {
    const response = await fetch("/api/database/queries", {
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
      cache: "no-store",
    });
    const body = await response.json();
    if (body.success) {
      renderQueries(body.data);
    } else {
      setText("queries-summary", "query statistics unavailable: " + body.message);
    }
  } catch (error) {
    setText("queries-summary", "query statistics unavailable: " + error.message);
  }
}

function percent(ratio) {
  return typeof ratio === "number" ? (ratio * 100).toFixed(1) + " %" : "–";
}

function kib(bytes) {
  return (bytes / 1024).toFixed(0) + " KiB";
}

function renderQueries(report) {
  const facts = [report.database_type];
  if (report.cache_hit_ratio !== null && report.cache_hit_ratio !== undefined) {
    facts.push("cache hit ratio " + percent(report.cache_hit_ratio));
  }
  if (report.sqlite) {
    const s = report.sqlite;
    facts.push(s.page_count + " pages of " + s.page_size + " bytes", s.freelist_count + " free", "journal " + s.journal_mode);
  }
  facts.push("as of " + new Date().toLocaleTimeString());
  setText("queries-summary", facts.join(" · "));
  setText("queries-note", report.statements_note || "");

  // Every suggestion that is not about one statement, with what it is about.
  const advice = [];
  if (report.cache_suggestion) advice.push(report.cache_suggestion);
  for (const t of report.sequential_scans) {
    advice.push(t.table + " (" + kib(t.size_bytes) + ", " + t.sequential_scans + " sequential scans, " + t.index_scans + " index scans): " + (t.suggestion || "read mostly by sequential scans"));
  }
  for (const i of report.unused_indexes) advice.push(i.index + " on " + i.table + " (" + kib(i.size_bytes) + "): " + i.suggestion);
  for (const s of report.long_sessions) advice.push("session " + s.pid + " " + s.state + " for " + format(s.statement_ms / 1000, 0) + " s: " + s.suggestion);
  if (report.sqlite) advice.push(...report.sqlite.suggestions);
  const list = $("queries-advice");
  clear(list);
  for (const line of advice) {
    const item = document.createElement("li");
    item.textContent = line;
    list.appendChild(item);
  }

  const body = $("queries-statements");
  clear(body);
  for (const statement of report.top_statements || []) {
    const row = document.createElement("tr");
    cell(row, statement.query, "query");
    cell(row, String(statement.calls));
    cell(row, format(statement.total_time_ms, 1));
    cell(row, format(statement.mean_time_ms, 2));
    cell(row, String(statement.rows));
    cell(row, percent(statement.cache_hit_ratio));
    cell(row, statement.suggestion || "");
    body.appendChild(row);
  }
}

async function connect(token) {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  let response;
  try {
    response = await fetch("/api/dashboard/events", {
      headers: { Authorization: "Bearer " + token, Accept: "text/event-stream" },
      cache: "no-store",
      signal: controller.signal,
    });
  } catch (error) {
    if (!controller.signal.aborted) retryLater(token, "cannot reach dbguard (" + error.message + "); retrying");
    return;
  }
  if (response.status === 401 || response.status === 403) {
    sessionStorage.removeItem(TOKEN_KEY);
    let message = "The token was refused.";
    try {
      const body = await response.json();
      if (typeof body.message === "string") message = "The token was refused: " + body.message;
    } catch {
      // The status says enough.
    }
    showLogin(message);
    return;
  }
  if (!response.ok || !response.body) {
    retryLater(token, "dbguard answered " + response.status + "; retrying");
    return;
  }
  showBoard();
  setText("stream-error", "");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch {
      break;
    }
    if (chunk.done) break;
    buffer += chunk.value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      handle(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
    }
  }
  if (!controller.signal.aborted) retryLater(token, "the live feed ended; reconnecting");
}

function retryLater(token, message) {
  setText("stream-error", message);
  window.setTimeout(() => {
    if (sessionStorage.getItem(TOKEN_KEY) === token) connect(token);
  }, RECONNECT_MS);
}

// One Server-Sent Event: `event:` and `data:` lines; comments (keep-alives) are ignored.
function handle(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (data.length === 0) return;
  let value;
  try {
    value = JSON.parse(data.join("\n"));
  } catch {
    return;
  }
  if (event === "history" && Array.isArray(value)) {
    samples = value;
  } else if (event === "sample") {
    samples.push(value);
    if (samples.length > HISTORY_SAMPLES) samples.splice(0, samples.length - HISTORY_SAMPLES);
  } else {
    return;
  }
  render();
}

// Calls per second between consecutive samples.
function callRates() {
  const rates = [];
  for (let i = 1; i < samples.length; i++) {
    const seconds = (Date.parse(samples[i].at) - Date.parse(samples[i - 1].at)) / 1000;
    const calls = samples[i].metrics.calls_total - samples[i - 1].metrics.calls_total;
    rates.push(seconds > 0 ? Math.max(0, calls / seconds) : 0);
  }
  return rates;
}

function format(value, digits) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

function render() {
  const latest = samples[samples.length - 1];
  if (!latest) return;
  const health = latest.health;
  const status = health ? health.status : "unknown";
  $("status").dataset.status = status;
  setText("status", health ? status : "no probe yet");
  setText("status-message", health ? health.message : "");
  setText("updated", "updated " + new Date(latest.at).toLocaleTimeString());

  const rates = callRates();
  setText("calls-per-second", format(rates[rates.length - 1], 1));
  chart("chart-calls", rates);
  setText("latency-p50", format(latest.metrics.response_time_p50_ms, 2));
  setText("latency-p99", format(latest.metrics.response_time_p99_ms, 2));
  chart("chart-latency", samples.map((s) => s.metrics.response_time_p99_ms || 0));

  const pool = latest.pool;
  setText("pool-size", String(pool.pool_size));
  setText("pool-checked-out", String(pool.checked_out));
  setText("pool-idle", String(pool.checked_in));
  setText("pool-waiting", pool.waiting === null || pool.waiting === undefined ? "n/a" : String(pool.waiting));
  setText("pool-overflow", pool.overflow + " of " + pool.max_overflow);
  chart("chart-pool", samples.map((s) => s.pool.checked_out));

  $("breaker").dataset.state = latest.breaker;
  setText("breaker", latest.breaker.replace("_", " "));
  renderBreakerChanges();
  renderChecks(health);

  setText("retries", String(latest.metrics.retries_total));
  setText("failures", String(latest.metrics.failures_total));
  setText("reconnects", String(latest.metrics.reconnects_total));
  const errors = $("errors-by-class");
  clear(errors);
  for (const [name, count] of Object.entries(latest.metrics.failures_by_class)) {
    const item = document.createElement("li");
    item.textContent = name + ": " + count;
    errors.appendChild(item);
  }
  const last = latest.last_error;
  setText("last-error", last ? last.class + " at " + last.at + ": " + last.message : "none");
  renderPlugins(latest.plugins);
}

function renderBreakerChanges() {
  const list = $("breaker-changes");
  clear(list);
  const changes = [];
  for (let i = 1; i < samples.length; i++) {
    if (samples[i].breaker !== samples[i - 1].breaker) {
      changes.push(new Date(samples[i].at).toLocaleTimeString() + ": " + samples[i - 1].breaker + " → " + samples[i].breaker);
    }
  }
  for (const change of changes.slice(-8).reverse()) {
    const item = document.createElement("li");
    item.textContent = change;
    list.appendChild(item);
  }
}

function renderChecks(health) {
  const body = $("checks");
  clear(body);
  if (!health) return;
  const recent = samples.slice(-60);
  for (const check of health.checks) {
    const row = document.createElement("tr");
    cell(row, check.name, "name");
    cell(row, check.status).dataset.status = check.status;
    const timeline = document.createElementNS(SVG, "svg");
    timeline.setAttribute("class", "timeline");
    timeline.setAttribute("viewBox", "0 0 60 1");
    timeline.setAttribute("preserveAspectRatio", "none");
    recent.forEach((sample, index) => {
      const past = sample.health && sample.health.checks.find((c) => c.name === check.name);
      if (!past) return;
      const mark = document.createElementNS(SVG, "rect");
      mark.setAttribute("x", String(60 - recent.length + index));
      mark.setAttribute("y", "0");
      mark.setAttribute("width", "0.9");
      mark.setAttribute("height", "1");
      mark.setAttribute("class", past.status);
      timeline.appendChild(mark);
    });
    const td = document.createElement("td");
    td.appendChild(timeline);
    row.appendChild(td);
    cell(row, check.message || "");
    body.appendChild(row);
  }
}

function renderPlugins(plugins) {
  const body = $("plugins");
  clear(body);
  for (const plugin of plugins) {
    const row = document.createElement("tr");
    cell(row, plugin.name, "name");
    cell(row, plugin.world);
    cell(row, plugin.state);
    cell(row, String(plugin.calls));
    cell(row, String(plugin.faults));
    body.appendChild(row);
  }
}

// A line chart of `values` (oldest first) across the chart's 300 × 80 box, scaled to its peak.
function chart(id, values) {
  const svg = $(id);
  clear(svg);
  const base = document.createElementNS(SVG, "line");
  base.setAttribute("x1", "0");
  base.setAttribute("x2", "300");
  base.setAttribute("y1", "79");
  base.setAttribute("y2", "79");
  svg.appendChild(base);
  if (values.length < 2) return;
  const peak = Math.max(...values, 1e-9);
  const step = 300 / (values.length - 1);
  const points = values.map((v, i) => (i * step).toFixed(1) + "," + (78 - (v / peak) * 74).toFixed(1));
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.appendChild(line);
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", "2");
  label.setAttribute("y", "10");
  label.textContent = "peak " + format(peak, peak < 10 ? 2 : 0);
  svg.appendChild(label);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    $("token-input").value = "";
    if (token) start(token);
  });
  $("queries-refresh").addEventListener("click", loadQueries);
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });
  const token = tokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
  if (token) start(token);
  else showLogin("");
});
