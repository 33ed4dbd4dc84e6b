// The TypeScript client in use: every route of the dbguard API through openapi-fetch's typed
// client, reading typed fields of both envelopes. It must compile with `tsc --noEmit --strict`
// against the generated schema.d.ts, so a change of the document that breaks a client breaks
// this file; run against a live server it also checks what the routes answer.
//
// node build/ts/sample.js BASE_URL READ_TOKEN ADMIN_TOKEN
import createClient from "openapi-fetch";
import type { components, paths } from "./schema.js";

type ErrorBody = components["schemas"]["ErrorBody"];

const [baseUrl, readToken, adminToken] = process.argv.slice(2);
if (!baseUrl || !readToken || !adminToken) {
  console.error("usage: node build/ts/sample.js BASE_URL READ_TOKEN ADMIN_TOKEN");
  process.exit(2);
}

const anonymous = createClient<paths>({ baseUrl });
const reader = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${readToken}` } });
const admin = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${adminToken}` } });

let failures = 0;

/** Prints `[ts] ok STATUS METHOD PATH` when `passed`, a failure line (and counts it) when not. */
function report(method: string, path: string, status: number, passed: boolean, detail: string): void {
  if (passed) {
    console.log(`[ts] ok ${status} ${method} ${path}: ${detail}`);
  } else {
    failures += 1;
    console.log(`[ts] FAIL ${status} ${method} ${path}: ${detail}`);
  }
}

/** The error envelope's fields, the same for every error status. */
function isErrorBody(error: ErrorBody | undefined, code: string): boolean {
  return (
    error !== undefined &&
    error.success === false &&
    error.error === code &&
    typeof error.message === "string" &&
    typeof error.retry_count === "number" &&
    (error.last_attempt === null || error.last_attempt === undefined || typeof error.last_attempt === "string")
  );
}

async function main(): Promise<void> {
  {
    const { data, response } = await reader.GET("/api/database/health");
    const status = data?.data.status;
    report("GET", "/api/database/health", response.status, response.status === 200 && data?.success === true && (status === "healthy" || status === "degraded"), `status ${status}, ${data?.data.response_time_ms} ms`);
  }
  {
    const { data, response } = await reader.GET("/api/database/health", { params: { query: { force: true } } });
    report("GET", "/api/database/health?force=true", response.status, response.status === 200 && data?.data.database_type === "postgresql", `database_type ${data?.data.database_type}`);
  }
  {
    // A query string outside the document: the typed client cannot build it, so a cast does.
    const force = "maybe" as unknown as boolean;
    const { error, response } = await reader.GET("/api/database/health", { params: { query: { force } } });
    const body = error !== undefined && error.success === false ? error : undefined;
    report("GET", "/api/database/health?force=maybe", response.status, response.status === 400 && isErrorBody(body, "invalid_request"), `error ${body?.error}`);
  }
  {
    const { error, response } = await anonymous.GET("/api/database/info");
    report("GET", "/api/database/info (no token)", response.status, response.status === 401 && isErrorBody(error, "unauthorized") && response.headers.get("www-authenticate") === "Bearer", `error ${error?.error}`);
  }
  {
    const { data, response } = await reader.GET("/api/database/info");
    const info = data?.data;
    report("GET", "/api/database/info", response.status, response.status === 200 && info?.database_type === "postgresql" && typeof info.pool_size === "number", `${info?.user}@${info?.host}:${info?.port}/${info?.database}, pool ${info?.pool_size}`);
  }
  {
    const { data, response } = await reader.GET("/api/database/status");
    const status = data?.data;
    report("GET", "/api/database/status", response.status, response.status === 200 && typeof status?.metrics.calls_total === "number" && typeof status.pool.checked_out === "number", `breaker ${status?.breaker}, calls ${status?.metrics.calls_total}, plugins ${status?.plugins.length}`);
  }
  {
    const { data, response } = await reader.GET("/api/database/queries");
    const queries = data?.data;
    report("GET", "/api/database/queries", response.status, response.status === 200 && queries?.database_type === "postgresql" && Array.isArray(queries.sequential_scans), `statements ${queries?.top_statements?.length ?? "unavailable"}, cache hit ${queries?.cache_hit_ratio}`);
  }
  {
    // params, max_rows and timeout_ms are optional: this body compiles without them.
    const { data, response } = await admin.POST("/api/database/test", { body: { query: "SELECT 1 AS one" } });
    const row = data?.data.rows[0];
    report("POST", "/api/database/test", response.status, response.status === 200 && data?.data.row_count === 1 && row?.["one"] === 1 && data.data.truncated === false, `columns ${data?.data.columns.join(",")}, ${data?.data.elapsed_ms} ms`);
  }
  {
    const { data, response } = await admin.POST("/api/database/test", { body: { query: "SELECT $1::int AS n FROM generate_series(1, 5)", params: [7], max_rows: 2, timeout_ms: 5000 } });
    report("POST", "/api/database/test (params, max_rows)", response.status, response.status === 200 && data?.data.row_count === 2 && data.data.truncated === true, `rows ${data?.data.row_count}, truncated ${data?.data.truncated}`);
  }
  {
    const { error, response } = await admin.POST("/api/database/test", { body: { query: "SELEC 1" } });
    report("POST", "/api/database/test (bad SQL)", response.status, response.status === 400 && isErrorBody(error, "invalid_query"), `error ${error?.error}, retry_count ${error?.retry_count}`);
  }
  {
    const { error, response } = await admin.POST("/api/database/test", { body: { query: "CREATE TABLE typed_clients_refused (x int)" } });
    report("POST", "/api/database/test (write)", response.status, response.status === 403 && isErrorBody(error, "forbidden"), `error ${error?.error}: ${error?.message}`);
  }
  {
    const { error, response } = await reader.POST("/api/database/test", { body: { query: "SELECT 1" } });
    report("POST", "/api/database/test (db:read token)", response.status, response.status === 403 && isErrorBody(error, "forbidden"), `error ${error?.error}`);
  }
  {
    const { data, error, response } = await admin.POST("/api/database/reconnect");
    const failed = error !== undefined && error.success === false ? error : undefined;
    report("POST", "/api/database/reconnect", response.status, response.status === 200 && data?.data.status !== undefined, `status ${data?.data.status ?? failed?.error}`);
  }
  {
    const { data, response } = await reader.GET("/api/plugins");
    report("GET", "/api/plugins", response.status, response.status === 200 && Array.isArray(data?.data), `${data?.data.map((p) => `${p.name} ${p.state}`).join(", ") || "no plugins"}`);
  }
  {
    const { data, error, response } = await admin.POST("/api/plugins/reload");
    // 200 with plugins enabled, 409 without DBGUARD_PLUGIN_DIR.
    const passed = (response.status === 200 && Array.isArray(data?.data.refused)) || (response.status === 409 && isErrorBody(error, "plugins_disabled"));
    report("POST", "/api/plugins/reload", response.status, passed, data ? `${data.data.plugins.length} loaded, ${data.data.refused.length} refused` : `error ${error?.error}`);
  }
  {
    const { data, response } = await anonymous.GET("/livez");
    report("GET", "/livez", response.status, response.status === 200 && data?.data.status === "alive", `status ${data?.data.status}`);
  }
  {
    const { data, response } = await anonymous.GET("/readyz");
    report("GET", "/readyz", response.status, response.status === 200 && data?.data.status === "ready", `status ${data?.data.status}`);
  }
  {
    const { data, response } = await anonymous.GET("/api/openapi.json");
    const paths = Object.keys(data?.paths ?? {});
    report("GET", "/api/openapi.json", response.status, response.status === 200 && data?.openapi === "3.1.0" && paths.includes("/api/database/test"), `OpenAPI ${data?.openapi}, ${data?.info.title} ${data?.info.version}, ${paths.length} paths`);
  }
  {
    const { data, response } = await anonymous.GET("/metrics", { parseAs: "text" });
    const contentType = response.headers.get("content-type") ?? "";
    report("GET", "/metrics", response.status, response.status === 200 && contentType.startsWith("text/plain") && typeof data === "string" && data.includes("# TYPE"), `${data?.length} bytes of ${contentType}`);
  }
  // A path or a method outside the document cannot be called through the typed client; the
  // error envelope still types the body.
  for (const [method, path, status, code] of [
    ["GET", "/api/no-such-route", 404, "not_found"],
    ["DELETE", "/api/database/health", 405, "method_not_allowed"],
    ["POST", "/livez", 405, "method_not_allowed"],
  ] as const) {
    const response = await fetch(new URL(path, baseUrl), { method, headers: { Authorization: `Bearer ${readToken}` } });
    const body = (await response.json()) as ErrorBody;
    report(method, path, response.status, response.status === status && isErrorBody(body, code), `error ${body.error}`);
  }
}

main().then(
  () => {
    console.log(failures === 0 ? "[ts] all checks passed" : `[ts] ${failures} checks failed`);
    process.exitCode = failures === 0 ? 0 : 1;
  },
  (err: unknown) => {
    console.error("[ts] the sample failed:", err);
    process.exitCode = 1;
  },
);
