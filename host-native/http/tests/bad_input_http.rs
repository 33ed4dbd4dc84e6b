//! The bad-input catalogue for the HTTP API, on SQLite: one table of requests a client should
//! not send — broken or forged credentials, bodies of the wrong shape or size, writes through
//! the read-only test endpoint, wrong methods, unknown or unnormalised paths, bad query strings
//! — and one of plugin files that must be refused on reload.
//!
//! Every row states the exact status and the error envelope's `error` code (and a phrase of
//! its message). After every row the service must be as it was: `/api/database/status`
//! answers 200 with the same breaker state, pool settings, health and plugins, the manager's
//! configuration is the same, and the seeded table still holds its three rows.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dbguard_http::api;
use reqwest::Method;
use serde_json::{Value, json};
use support::{Options, SECRET, Server, base64url, hmac_token, now_secs, raw_request};

/// How a row reaches the server.
enum Send {
    /// Through the HTTP client.
    Client { method: Method, path: String, auth: Auth, body: Body },
    /// As raw bytes on a new connection (for what the client normalises or refuses).
    Raw(Vec<u8>),
}

enum Auth {
    None,
    Admin,
    Reader,
    /// The `Authorization` header's exact bytes.
    Header(Vec<u8>),
}

enum Body {
    None,
    Json(Value),
    /// Bytes with an optional `Content-Type`.
    Raw(Option<&'static str>, Vec<u8>),
}

#[derive(Clone)]
enum Expect {
    /// An error envelope with this status, `error` code and a phrase of the message.
    Error(u16, &'static str, &'static str),
    /// A success envelope with this status whose value at a JSON pointer is as given.
    Success(u16, &'static str, Value),
}

struct Case {
    case: &'static str,
    send: Send,
    expect: Expect,
}

fn client(case: &'static str, method: Method, path: &str, auth: Auth, body: Body, expect: Expect) -> Case {
    Case { case, send: Send::Client { method, path: path.to_owned(), auth, body }, expect }
}

fn raw(case: &'static str, request: String, expect: Expect) -> Case {
    Case { case, send: Send::Raw(request.into_bytes()), expect }
}

fn header(value: impl Into<Vec<u8>>) -> Auth {
    Auth::Header(value.into())
}

fn bearer(token: &str) -> Auth {
    header(format!("Bearer {token}"))
}

/// Claims valid for ten minutes with both scopes, with `changes` applied (`null` removes).
fn claims(changes: Value) -> Value {
    let mut claims = json!({ "sub": "bad-input", "exp": now_secs() + 600, "scope": "db:read db:admin" });
    if let (Some(claims), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
        for (key, value) in changes {
            if value.is_null() {
                claims.remove(key);
            } else {
                claims.insert(key.clone(), value.clone());
            }
        }
    }
    claims
}

fn signed(changes: Value) -> String {
    hmac_token(jsonwebtoken::Algorithm::HS256, SECRET.as_bytes(), &claims(changes))
}

/// A valid HS256 token whose header segment is replaced by `header` (the signature then no
/// longer matches, but the algorithm check comes first).
fn with_header(header: &Value) -> String {
    let token = signed(json!({}));
    let rest = token.split_once('.').map(|(_, rest)| rest.to_owned()).unwrap_or_default();
    format!("{}.{rest}", base64url(header.to_string().as_bytes()))
}

fn raw_get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n")
}

fn test_body(body: Value) -> Body {
    Body::Json(body)
}

fn query(sql: &str) -> Body {
    Body::Json(json!({ "query": sql }))
}

fn json_bytes(text: &str) -> Body {
    Body::Raw(Some("application/json"), text.as_bytes().to_vec())
}

const TEST: &str = "/api/database/test";
const INFO: &str = "/api/database/info";

fn cases(server: &Server) -> Vec<Case> {
    use Expect::{Error, Success};
    let admin = server.admin.clone();
    let get = Method::GET;
    let post = Method::POST;
    let unauthorized = |says| Error(401, "unauthorized", says);
    let malformed = unauthorized("malformed Authorization header");
    let not_a_jwt = "invalid token: not a well-formed JWT";
    let bad_request = |says| Error(400, "invalid_request", says);
    let invalid_query = |says| Error(400, "invalid_query", says);
    let write_refused = Error(403, "forbidden", "write refused");
    let method_not_allowed = || Error(405, "method_not_allowed", "this route does not accept that method");
    let not_found = || Error(404, "not_found", "no such route");
    let bad_query_string = || Error(400, "invalid_request", "invalid query string");
    let alg_none = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(claims(json!({})).to_string().as_bytes())
    );
    let chunked_oversize = {
        let chunk = format!("{{\"query\": \"SELECT '{}'\"}}", "y".repeat(70 * 1024));
        format!(
            "POST {TEST} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        )
    };
    vec![
        // Authorization headers.
        client(
            "no Authorization header",
            get.clone(),
            INFO,
            Auth::None,
            Body::None,
            unauthorized("missing Authorization header"),
        ),
        client("Basic credentials", get.clone(), INFO, header("Basic dXNlcjpwYXNz"), Body::None, malformed.clone()),
        client("Bearer and nothing else", get.clone(), INFO, header("Bearer "), Body::None, malformed.clone()),
        client(
            "a word after the token",
            get.clone(),
            INFO,
            header(format!("Bearer {admin} extra")),
            Body::None,
            malformed.clone(),
        ),
        client(
            "a tab after Bearer",
            get.clone(),
            INFO,
            header(format!("Bearer\t{admin}")),
            Body::None,
            malformed.clone(),
        ),
        client(
            "another scheme name",
            get.clone(),
            INFO,
            header(format!("Token {admin}")),
            Body::None,
            malformed.clone(),
        ),
        client(
            "header bytes not UTF-8",
            get.clone(),
            INFO,
            header(b"Bearer \xff\xfe".to_vec()),
            Body::None,
            malformed.clone(),
        ),
        raw(
            "two Authorization headers, garbage first",
            raw_get(INFO, &format!("Authorization: Bearer garbage\r\nAuthorization: Bearer {admin}\r\n")),
            unauthorized("more than one was sent"),
        ),
        raw(
            "two Authorization headers, the good one first",
            raw_get(INFO, &format!("Authorization: Bearer {admin}\r\nAuthorization: Bearer garbage\r\n")),
            unauthorized("more than one was sent"),
        ),
        // Tokens.
        client("three segments of garbage", get.clone(), INFO, bearer("a.b.c"), Body::None, unauthorized(not_a_jwt)),
        client(
            "base64 that does not decode",
            get.clone(),
            INFO,
            bearer("e!y.e!y.s!g"),
            Body::None,
            unauthorized(not_a_jwt),
        ),
        client(
            "two segments",
            get.clone(),
            INFO,
            bearer(&admin[..admin.rfind('.').unwrap_or(0)]),
            Body::None,
            unauthorized(not_a_jwt),
        ),
        client(
            "a 16 KiB token",
            get.clone(),
            INFO,
            bearer(&"A".repeat(16 * 1024)),
            Body::None,
            unauthorized(not_a_jwt),
        ),
        client(
            "expired a minute ago",
            get.clone(),
            INFO,
            bearer(&signed(json!({ "exp": now_secs() - 60 }))),
            Body::None,
            unauthorized("invalid token: expired"),
        ),
        client(
            "not valid for an hour",
            get.clone(),
            INFO,
            bearer(&signed(json!({ "nbf": now_secs() + 3600 }))),
            Body::None,
            unauthorized("invalid token: not yet valid (nbf)"),
        ),
        client(
            "signed with another secret",
            get.clone(),
            INFO,
            bearer(&hmac_token(
                jsonwebtoken::Algorithm::HS256,
                b"another-secret-of-32-bytes-or-more!",
                &claims(json!({})),
            )),
            Body::None,
            unauthorized("invalid token: bad signature"),
        ),
        client("alg none", get.clone(), INFO, bearer(&alg_none), Body::None, unauthorized("invalid token:")),
        client(
            "HS384 with the right secret",
            get.clone(),
            INFO,
            bearer(&hmac_token(jsonwebtoken::Algorithm::HS384, SECRET.as_bytes(), &claims(json!({})))),
            Body::None,
            unauthorized("invalid token: algorithm not accepted"),
        ),
        client(
            "HS512 with the right secret",
            get.clone(),
            INFO,
            bearer(&hmac_token(jsonwebtoken::Algorithm::HS512, SECRET.as_bytes(), &claims(json!({})))),
            Body::None,
            unauthorized("invalid token: algorithm not accepted"),
        ),
        client(
            "header claims RS256",
            get.clone(),
            INFO,
            bearer(&with_header(&json!({ "alg": "RS256", "typ": "JWT" }))),
            Body::None,
            unauthorized("invalid token: algorithm not accepted"),
        ),
        // The claims type requires `exp`, so a token without one fails to decode and is
        // described as not well-formed rather than as missing a claim; the status is right.
        client(
            "no exp claim",
            get.clone(),
            INFO,
            bearer(&signed(json!({ "exp": null }))),
            Body::None,
            unauthorized("invalid token:"),
        ),
        client(
            "exp as a string",
            get.clone(),
            INFO,
            bearer(&signed(json!({ "exp": "tomorrow" }))),
            Body::None,
            unauthorized("invalid token:"),
        ),
        client(
            "exp negative",
            get.clone(),
            INFO,
            bearer(&signed(json!({ "exp": -1 }))),
            Body::None,
            unauthorized("invalid token:"),
        ),
        client(
            "scope as an array",
            get.clone(),
            INFO,
            bearer(&signed(json!({ "scope": ["db:read", "db:admin"] }))),
            Body::None,
            unauthorized("invalid token:"),
        ),
        client(
            "no scope claim",
            get.clone(),
            INFO,
            bearer(&signed(json!({ "scope": null }))),
            Body::None,
            Error(403, "forbidden", "the token lacks the db:read scope"),
        ),
        client(
            "scope in capitals",
            get.clone(),
            "/api/database/status",
            bearer(&signed(json!({ "scope": "DB:READ" }))),
            Body::None,
            Error(403, "forbidden", "the token lacks the db:read scope"),
        ),
        client(
            "admin scope only on a reading route",
            get.clone(),
            "/api/plugins",
            bearer(&signed(json!({ "scope": "db:admin" }))),
            Body::None,
            Error(403, "forbidden", "the token lacks the db:read scope"),
        ),
        client(
            "comma-separated scopes",
            post.clone(),
            "/api/database/reconnect",
            bearer(&signed(json!({ "scope": "db:read,db:admin" }))),
            Body::None,
            Error(403, "forbidden", "the token lacks the db:admin scope"),
        ),
        client(
            "reader on the test endpoint",
            post.clone(),
            TEST,
            Auth::Reader,
            query("SELECT 1"),
            Error(403, "forbidden", "the token lacks the db:admin scope"),
        ),
        client(
            "reader on reconnect",
            post.clone(),
            "/api/database/reconnect",
            Auth::Reader,
            Body::None,
            Error(403, "forbidden", "the token lacks the db:admin scope"),
        ),
        client(
            "reader on plugin reload",
            post.clone(),
            "/api/plugins/reload",
            Auth::Reader,
            Body::None,
            Error(403, "forbidden", "the token lacks the db:admin scope"),
        ),
        client(
            "no token on the plugin list",
            get.clone(),
            "/api/plugins",
            Auth::None,
            Body::None,
            unauthorized("missing Authorization header"),
        ),
        client(
            "plugin reload without a plugin runtime",
            post.clone(),
            "/api/plugins/reload",
            Auth::Admin,
            Body::None,
            Error(409, "plugins_disabled", "plugins are not enabled"),
        ),
        // Bodies of the test endpoint.
        client(
            "SQL as a JSON body",
            post.clone(),
            TEST,
            Auth::Admin,
            json_bytes("SELECT 1"),
            bad_request("invalid JSON body"),
        ),
        client(
            "JSON without a content type",
            post.clone(),
            TEST,
            Auth::Admin,
            Body::Raw(None, br#"{"query":"SELECT 1"}"#.to_vec()),
            Error(415, "unsupported_media_type", "send the body as application/json"),
        ),
        client(
            "JSON labelled text/plain",
            post.clone(),
            TEST,
            Auth::Admin,
            Body::Raw(Some("text/plain"), br#"{"query":"SELECT 1"}"#.to_vec()),
            Error(415, "unsupported_media_type", "send the body as application/json"),
        ),
        client("an empty body", post.clone(), TEST, Auth::Admin, json_bytes(""), bad_request("invalid JSON body")),
        client(
            "an empty JSON array",
            post.clone(),
            TEST,
            Auth::Admin,
            json_bytes("[]"),
            bad_request("invalid JSON body"),
        ),
        client(
            "the fields as an array",
            post.clone(),
            TEST,
            Auth::Admin,
            json_bytes(r#"["SELECT 1"]"#),
            bad_request("invalid JSON body"),
        ),
        client("JSON null", post.clone(), TEST, Auth::Admin, json_bytes("null"), bad_request("invalid JSON body")),
        client(
            "the query given twice",
            post.clone(),
            TEST,
            Auth::Admin,
            json_bytes(r#"{"query": "SELECT 1", "query": "SELECT 2"}"#),
            bad_request("duplicate field `query`"),
        ),
        client(
            "params null",
            post.clone(),
            TEST,
            Auth::Admin,
            json_bytes(r#"{"query": "SELECT 1", "params": null}"#),
            bad_request("params: invalid type: null"),
        ),
        client(
            "an empty object",
            post.clone(),
            TEST,
            Auth::Admin,
            json_bytes("{}"),
            bad_request("missing field `query`"),
        ),
        client(
            "an unknown field",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT 1", "sql": "SELECT 2" })),
            bad_request("unknown field `sql`"),
        ),
        client(
            "query as an array",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": ["SELECT 1"] })),
            bad_request("invalid JSON body"),
        ),
        client(
            "max_rows zero",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT 1", "max_rows": 0 })),
            invalid_query("max_rows must be at least 1"),
        ),
        client(
            "max_rows negative",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT 1", "max_rows": -5 })),
            bad_request("max_rows"),
        ),
        client(
            "max_rows a string",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT 1", "max_rows": "10" })),
            bad_request("max_rows"),
        ),
        client(
            "max_rows fractional",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT 1", "max_rows": 1.5 })),
            bad_request("max_rows"),
        ),
        client(
            "max_rows past u32",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT 1", "max_rows": 4_294_967_296_u64 })),
            bad_request("max_rows"),
        ),
        client(
            "max_rows over the cap is lowered to it",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({
                "query": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2000) SELECT x FROM n",
                "max_rows": 5000
            })),
            Success(200, "/data/row_count", json!(1000)),
        ),
        client(
            "timeout_ms zero",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT 1", "timeout_ms": 0 })),
            invalid_query("timeout_ms must be at least 1"),
        ),
        client(
            "timeout_ms negative",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT 1", "timeout_ms": -1 })),
            bad_request("timeout_ms"),
        ),
        client(
            "timeout_ms past u64",
            post.clone(),
            TEST,
            Auth::Admin,
            json_bytes(r#"{"query": "SELECT 1", "timeout_ms": 18446744073709551616}"#),
            bad_request("timeout_ms"),
        ),
        client(
            "timeout_ms over the cap is lowered to it",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT 1 AS one", "timeout_ms": 600_000 })),
            Success(200, "/data/rows/0/one", json!(1)),
        ),
        client("an empty query", post.clone(), TEST, Auth::Admin, query(""), invalid_query("query is empty")),
        client("a blank query", post.clone(), TEST, Auth::Admin, query(" \n\t "), invalid_query("query is empty")),
        client(
            "a query over 16 KiB",
            post.clone(),
            TEST,
            Auth::Admin,
            query(&format!("SELECT '{}'", "z".repeat(17 * 1024))),
            invalid_query("query is longer than 16384 bytes"),
        ),
        client(
            "two SELECTs",
            post.clone(),
            TEST,
            Auth::Admin,
            query("SELECT 1; SELECT 2"),
            invalid_query("one statement only"),
        ),
        client(
            "INSERT",
            post.clone(),
            TEST,
            Auth::Admin,
            query("INSERT INTO items (name) VALUES ('x')"),
            write_refused.clone(),
        ),
        client(
            "UPDATE",
            post.clone(),
            TEST,
            Auth::Admin,
            query("UPDATE items SET name = 'x' WHERE id = 1"),
            write_refused.clone(),
        ),
        client(
            "DELETE",
            post.clone(),
            TEST,
            Auth::Admin,
            query("DELETE FROM items WHERE id = 1"),
            write_refused.clone(),
        ),
        client(
            "CREATE TABLE",
            post.clone(),
            TEST,
            Auth::Admin,
            query("CREATE TABLE evil (x INTEGER)"),
            write_refused.clone(),
        ),
        client(
            "loading an extension",
            post.clone(),
            TEST,
            Auth::Admin,
            query("SELECT load_extension('/lib/x86_64-linux-gnu/libc.so.6')"),
            Error(403, "forbidden", "not authorized"),
        ),
        client(
            "a gigabyte value (SQLite refuses it as it is built)",
            post.clone(),
            TEST,
            Auth::Admin,
            query("SELECT randomblob(1000000000)"),
            invalid_query("exceed the test endpoint's limit"),
        ),
        client(
            "INSERT behind a CTE",
            post.clone(),
            TEST,
            Auth::Admin,
            query("WITH n AS (SELECT 'x' AS name) INSERT INTO items (name) SELECT name FROM n"),
            write_refused.clone(),
        ),
        client(
            "REPLACE",
            post.clone(),
            TEST,
            Auth::Admin,
            query("REPLACE INTO items (id, name) VALUES (1, 'x')"),
            write_refused.clone(),
        ),
        client(
            "CREATE TEMP TABLE",
            post.clone(),
            TEST,
            Auth::Admin,
            query("CREATE TEMP TABLE t (x INTEGER)"),
            write_refused.clone(),
        ),
        client("VACUUM", post.clone(), TEST, Auth::Admin, query("VACUUM"), write_refused.clone()),
        client(
            "PRAGMA that writes",
            post.clone(),
            TEST,
            Auth::Admin,
            query("PRAGMA user_version = 7"),
            write_refused.clone(),
        ),
        client(
            "PRAGMA journal_mode",
            post.clone(),
            TEST,
            Auth::Admin,
            query("PRAGMA journal_mode = DELETE"),
            write_refused.clone(),
        ),
        client(
            "PRAGMA wal_checkpoint",
            post.clone(),
            TEST,
            Auth::Admin,
            query("PRAGMA wal_checkpoint(TRUNCATE)"),
            write_refused.clone(),
        ),
        client("PRAGMA optimize", post.clone(), TEST, Auth::Admin, query("PRAGMA optimize"), write_refused.clone()),
        client("ANALYZE", post.clone(), TEST, Auth::Admin, query("ANALYZE"), write_refused.clone()),
        client("REINDEX", post.clone(), TEST, Auth::Admin, query("REINDEX items_name"), write_refused.clone()),
        client(
            "ATTACH an in-memory database",
            post.clone(),
            TEST,
            Auth::Admin,
            query("ATTACH DATABASE ':memory:' AS scratch"),
            Error(403, "forbidden", "ATTACH is refused"),
        ),
        client("a syntax error", post.clone(), TEST, Auth::Admin, query("SELEC 1"), invalid_query("syntax error")),
        client(
            "an unknown table",
            post.clone(),
            TEST,
            Auth::Admin,
            query("SELECT * FROM missing"),
            invalid_query("no such table"),
        ),
        client(
            "a body over 64 KiB",
            post.clone(),
            TEST,
            Auth::Admin,
            query(&format!("SELECT '{}'", "x".repeat(65 * 1024))),
            Error(413, "payload_too_large", "the request body is too large"),
        ),
        raw(
            "a chunked body over 64 KiB",
            chunked_oversize,
            Error(413, "payload_too_large", "the request body is too large"),
        ),
        client(
            "params an object",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT ?1", "params": { "1": "a" } })),
            bad_request("params"),
        ),
        client(
            "params a string",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT ?1", "params": "a" })),
            bad_request("params"),
        ),
        client(
            "fewer params than placeholders",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT ?1, ?2", "params": ["a"] })),
            invalid_query("the statement has 2 parameters but 1 were given"),
        ),
        client(
            "params without placeholders",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT 1", "params": [1] })),
            invalid_query("the statement has 0 parameters but 1 were given"),
        ),
        client(
            "more than 100 params",
            post.clone(),
            TEST,
            Auth::Admin,
            test_body(json!({ "query": "SELECT 1", "params": vec![1; 101] })),
            invalid_query("at most 100 params"),
        ),
        client(
            "a param number out of range",
            post.clone(),
            TEST,
            Auth::Admin,
            json_bytes(r#"{"query": "SELECT ?1", "params": [1e400]}"#),
            bad_request("invalid JSON body"),
        ),
        // Methods.
        client("GET on the test endpoint", get.clone(), TEST, Auth::Admin, Body::None, method_not_allowed()),
        client(
            "GET on reconnect",
            get.clone(),
            "/api/database/reconnect",
            Auth::Admin,
            Body::None,
            method_not_allowed(),
        ),
        client("PUT on health", Method::PUT, "/api/database/health", Auth::Admin, Body::None, method_not_allowed()),
        client("DELETE on info", Method::DELETE, INFO, Auth::Admin, Body::None, method_not_allowed()),
        client("PATCH on status", Method::PATCH, "/api/database/status", Auth::Admin, Body::None, method_not_allowed()),
        client(
            "OPTIONS on health",
            Method::OPTIONS,
            "/api/database/health",
            Auth::Admin,
            Body::None,
            method_not_allowed(),
        ),
        client("POST on livez", post.clone(), "/livez", Auth::None, Body::None, method_not_allowed()),
        client("POST on the plugin list", post.clone(), "/api/plugins", Auth::Admin, Body::None, method_not_allowed()),
        client(
            "GET on plugin reload",
            get.clone(),
            "/api/plugins/reload",
            Auth::Admin,
            Body::None,
            method_not_allowed(),
        ),
        client(
            "PUT on the OpenAPI document",
            Method::PUT,
            "/api/openapi.json",
            Auth::None,
            Body::None,
            method_not_allowed(),
        ),
        raw(
            "an invented method",
            format!(
                "BREW /api/database/health HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n"
            ),
            method_not_allowed(),
        ),
        // Paths.
        client("an unknown route", get.clone(), "/api/database/unknown", Auth::Admin, Body::None, not_found()),
        client("a trailing slash", get.clone(), "/api/database/health/", Auth::Admin, Body::None, not_found()),
        client("the route in capitals", get.clone(), "/API/DATABASE/INFO", Auth::Admin, Body::None, not_found()),
        client("the prefix alone", get.clone(), "/api/database", Auth::Admin, Body::None, not_found()),
        client("the root", get.clone(), "/", Auth::Admin, Body::None, not_found()),
        client("a NUL byte in the path", get.clone(), "/api/database/info%00", Auth::Admin, Body::None, not_found()),
        client(
            "an 8 KiB path",
            get.clone(),
            &format!("/api/{}", "p".repeat(8 * 1024)),
            Auth::Admin,
            Body::None,
            not_found(),
        ),
        raw(
            "a dot-dot segment",
            raw_get("/api/database/../database/info", &format!("Authorization: Bearer {admin}\r\n")),
            not_found(),
        ),
        raw(
            "a doubled slash",
            raw_get("/api//database/info", &format!("Authorization: Bearer {admin}\r\n")),
            not_found(),
        ),
        raw(
            "an encoded dot-dot",
            raw_get("/api/database/%2e%2e/database/info", &format!("Authorization: Bearer {admin}\r\n")),
            not_found(),
        ),
        // Headers past the limits: the envelope, not the parser's bare status line.
        raw(
            "150 header fields",
            raw_get(
                "/api/database/info",
                &format!("Authorization: Bearer {admin}\r\n{}", "X-Filler: 1\r\n".repeat(150)),
            ),
            Error(431, "headers_too_large", "header fields"),
        ),
        raw(
            "a 40 KiB header",
            raw_get(
                "/api/database/info",
                &format!("Authorization: Bearer {admin}\r\nX-Filler: {}\r\n", "f".repeat(40 * 1024)),
            ),
            Error(431, "headers_too_large", "bytes of headers"),
        ),
        // Query strings.
        client("force=1", get.clone(), "/api/database/health?force=1", Auth::Reader, Body::None, bad_query_string()),
        client(
            "force=TRUE",
            get.clone(),
            "/api/database/health?force=TRUE",
            Auth::Reader,
            Body::None,
            bad_query_string(),
        ),
        client("force empty", get.clone(), "/api/database/health?force=", Auth::Reader, Body::None, bad_query_string()),
        client(
            "force given twice",
            get.clone(),
            "/api/database/health?force=true&force=false",
            Auth::Reader,
            Body::None,
            bad_query_string(),
        ),
        client(
            "an unknown parameter",
            get.clone(),
            "/api/database/health?verbose=true",
            Auth::Reader,
            Body::None,
            bad_query_string(),
        ),
        client(
            "bad percent-encoding",
            get.clone(),
            "/api/database/health?force=%ZZ",
            Auth::Reader,
            Body::None,
            bad_query_string(),
        ),
    ]
}

/// Sends a row's request; returns the status and the body text.
async fn send(server: &Server, send: &Send) -> (u16, String) {
    match send {
        Send::Raw(bytes) => {
            let (status, body) = raw_request(&server.base, bytes).await;
            (status, if body.is_null() { String::new() } else { body.to_string() })
        }
        Send::Client { method, path, auth, body } => {
            let mut request = server.client.request(method.clone(), server.url(path));
            request = match auth {
                Auth::None => request,
                Auth::Admin => request.bearer_auth(&server.admin),
                Auth::Reader => request.bearer_auth(&server.reader),
                Auth::Header(bytes) => request.header(
                    reqwest::header::AUTHORIZATION,
                    reqwest::header::HeaderValue::from_bytes(bytes).expect("a header value the client can send"),
                ),
            };
            request = match body {
                Body::None => request,
                Body::Json(value) => request.json(value),
                Body::Raw(content_type, bytes) => {
                    let request = match content_type {
                        Some(content_type) => request.header(reqwest::header::CONTENT_TYPE, *content_type),
                        None => request,
                    };
                    request.body(bytes.clone())
                }
            };
            let response = request.send().await.expect("response");
            let status = response.status().as_u16();
            (status, response.text().await.expect("body"))
        }
    }
}

/// What must not change: status 200, breaker, pool settings, health, plugins, the rows.
async fn state(server: &Server) -> Value {
    let (status, body) = server.get("/api/database/status", Some(&server.reader)).await;
    assert_eq!(status, 200, "{body:#}");
    let data = &body["data"];
    let plugins: Vec<Value> = data["plugins"]
        .as_array()
        .map(|plugins| plugins.iter().map(|p| json!([p["name"], p["world"], p["content_hash"], p["state"]])).collect())
        .unwrap_or_default();
    let (count_status, count) = server.query("SELECT count(*) AS n FROM items", json!([])).await;
    assert_eq!(count_status, 200, "{count:#}");
    json!({
        "breaker": data["breaker"],
        "pool_size": data["pool"]["pool_size"],
        "max_overflow": data["pool"]["max_overflow"],
        "health": data["health"]["status"],
        "plugins": plugins,
        "items": count["data"]["rows"][0]["n"],
    })
}

fn error_body_validator() -> jsonschema::Validator {
    let path = support::schemas_dir().join("error-body.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("schema JSON");
    jsonschema::validator_for(&schema).expect("valid schema")
}

/// Checks one answer against its expectation; returns what is wrong.
fn check(expect: &Expect, status: u16, text: &str, validator: &jsonschema::Validator) -> Vec<String> {
    let mut problems = Vec::new();
    let Ok(body) = serde_json::from_str::<Value>(text) else {
        return vec![format!("status {status} with a body that is not JSON: {text:?}")];
    };
    match expect {
        Expect::Error(want_status, code, says) => {
            if status != *want_status {
                problems.push(format!("status {status}, expected {want_status}"));
            }
            if !validator.is_valid(&body) {
                problems.push("the body is not the error envelope".to_owned());
            }
            if body["success"] != false {
                problems.push("success is not false".to_owned());
            }
            if body["error"] != *code {
                problems.push(format!("error {}, expected {code}", body["error"]));
            }
            if !body["message"].as_str().is_some_and(|m| m.contains(says)) {
                problems.push(format!("the message does not say {says:?}"));
            }
        }
        Expect::Success(want_status, pointer, value) => {
            if status != *want_status || body["success"] != true {
                problems.push(format!("status {status}, expected {want_status} and success"));
            }
            if body.pointer(pointer) != Some(value) {
                problems.push(format!("{pointer} is {:?}, expected {value}", body.pointer(pointer)));
            }
        }
    }
    problems
}

async fn sqlite_server(dir: &Path, options: Options) -> Server {
    let url = format!("sqlite://{}", dir.join("app.db").display());
    let server = Server::start_with(&[("DATABASE_URL", url.as_str())], options).await;
    use sea_orm::ConnectionTrait;
    server
        .manager
        .connection()
        .execute_unprepared(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); CREATE INDEX items_name ON items (name); INSERT INTO items (name) VALUES ('a'), ('b'), ('c');",
        )
        .await
        .expect("seed");
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_status_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = sqlite_server(dir.path(), Options::default()).await;
    let config = server.manager.config().clone();
    let before = state(&server).await;
    assert_eq!(before["items"], 3, "{before:#}");
    let validator = error_body_validator();
    let cases = cases(&server);
    let mut failures = Vec::new();
    for case in &cases {
        let (status, text) = send(&server, &case.send).await;
        let mut problems = check(&case.expect, status, &text, &validator);
        let after = state(&server).await;
        if after != before {
            problems.push(format!("the state changed: {after:#}"));
        }
        if *server.manager.config() != config {
            problems.push("the manager's configuration changed".to_owned());
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {} — {status} {text}", case.case, problems.join("; ")));
        }
    }
    println!("bad_input_http: {} cases", cases.len());
    server.stop().await;
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// A client that sends complete headers announcing a body, then stalls, is answered 408 with
/// the envelope when the request timeout passes. (A client that stalls inside the headers is
/// the next test's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_answered_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("temp dir");
    let options = Options { request_timeout: Duration::from_millis(500), ..Options::default() };
    let server = sqlite_server(dir.path(), options).await;
    let before = state(&server).await;
    let validator = error_body_validator();
    let mut stream = tokio::net::TcpStream::connect(server.base.trim_start_matches("http://")).await.expect("connect");
    let head = format!(
        "POST {TEST} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\nConnection: close\r\n\r\n{{\"query\":",
        server.admin
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    // The rest of the body never comes; the connection stays open while the server decides.
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut bytes))
        .await
        .expect("the server answers a stalled request")
        .expect("read");
    let (status, body) = support::parse_response(&bytes);
    let problems = check(
        &Expect::Error(408, "request_timeout", "the request took too long"),
        status,
        &body.to_string(),
        &validator,
    );
    assert!(problems.is_empty(), "{problems:?}: {status} {body}");
    assert_eq!(state(&server).await, before);
    server.stop().await;
}

/// What a plugin file holds in a row.
enum PluginBytes {
    Bytes(Vec<u8>),
    Guest(&'static str),
    /// The first half of a guest component.
    Truncated(&'static str),
}

struct PluginCase {
    case: &'static str,
    /// The file in the plugin directory (`retry.wasm` replaces the active plugin's file).
    file: &'static str,
    bytes: PluginBytes,
    /// The refusal's code in the reload answer.
    code: &'static str,
}

fn plugin_cases() -> Vec<PluginCase> {
    use PluginBytes::{Bytes, Guest, Truncated};
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1).collect();
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    let mut component_then_garbage = empty_component.clone();
    component_then_garbage.extend_from_slice(&garbage);
    let case = |case, file, bytes, code| PluginCase { case, file, bytes, code };
    vec![
        case("garbage bytes over the active plugin", "retry.wasm", Bytes(garbage.clone()), "not_wasm"),
        case("garbage bytes in a new file", "other.wasm", Bytes(garbage.clone()), "not_wasm"),
        case("an empty file over the active plugin", "retry.wasm", Bytes(Vec::new()), "not_wasm"),
        case("an empty file in a new file", "empty.wasm", Bytes(Vec::new()), "not_wasm"),
        case("WebAssembly text", "text.wasm", Bytes(b"(component)".to_vec()), "not_wasm"),
        case("a core module over the active plugin", "retry.wasm", Bytes(core_module.clone()), "core_module"),
        case("a core module in a new file", "core.wasm", Bytes(core_module), "core_module"),
        // A component of neither world. (A valid health check is not bad input here: the
        // directory takes both worlds, so the fixture built as the "wrong world" for a retry
        // policy simply loads as a health check.)
        case("a component of neither world", "empty-component.wasm", Bytes(empty_component), "wrong_world"),
        case("a component header, then garbage", "broken.wasm", Bytes(component_then_garbage), "compile"),
        case("half of a good plugin over it", "retry.wasm", Truncated("fixture-fixed-delay-a"), "compile"),
        case(
            "a component importing more than the contract",
            "imports.wasm",
            Guest("fixture-extra-import"),
            "unsupported_import",
        ),
        case("a plugin that never returns", "spin.wasm", Guest("fixture-spin-forever"), "timeout"),
        case("a plugin that grows its memory", "grow.wasm", Guest("fixture-grow-memory"), "memory_limit"),
    ]
}

fn install(dir: &Path, name: &str, bytes: &[u8]) {
    let staging = dir.join(format!(".{name}.part"));
    std::fs::write(&staging, bytes).expect("write plugin");
    std::fs::rename(&staging, dir.join(name)).expect("rename plugin");
}

/// Bad plugin files are refused on reload, named with their typed reason, and the active plugin
/// stays the one that was active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugin_files_are_refused_and_the_active_plugin_stays() {
    let dir = tempfile::tempdir().expect("temp dir");
    let plugin_dir: PathBuf = dir.path().join("plugins");
    std::fs::create_dir(&plugin_dir).expect("plugin dir");
    let good = dbguard_tests::guest!("fixture-fixed-delay-a");
    install(&plugin_dir, "retry.wasm", &good);
    let options = Options { plugin_dir: Some(plugin_dir.clone()), ..Options::default() };
    let server = sqlite_server(dir.path(), options).await;
    let before = state(&server).await;
    assert_eq!(before["plugins"].as_array().map(Vec::len), Some(1), "one plugin is active: {before:#}");
    let config = server.manager.config().clone();
    let cases = plugin_cases();
    let mut failures = Vec::new();
    for case in &cases {
        let bytes = match &case.bytes {
            PluginBytes::Bytes(bytes) => bytes.clone(),
            PluginBytes::Guest(name) => dbguard_tests::guest!(name),
            PluginBytes::Truncated(name) => {
                let bytes = dbguard_tests::guest!(name);
                bytes[..bytes.len() / 2].to_vec()
            }
        };
        install(&plugin_dir, case.file, &bytes);
        let (status, body) = server.post("/api/plugins/reload", &server.admin, json!({})).await;
        let mut problems = Vec::new();
        if status != 200 || body["success"] != true {
            problems.push(format!("status {status}, expected 200 and success"));
        }
        let refused = body["data"]["refused"].as_array().cloned().unwrap_or_default();
        if refused.len() != 1 || refused[0]["file"] != case.file || refused[0]["error"] != case.code {
            problems.push(format!("expected exactly {} refused as {}", case.file, case.code));
        }
        let after = state(&server).await;
        if after != before {
            problems.push(format!("the state changed: {after:#}"));
        }
        if *server.manager.config() != config {
            problems.push("the manager's configuration changed".to_owned());
        }
        // Put the directory back as it was, and check the reload agrees.
        if case.file == "retry.wasm" {
            install(&plugin_dir, "retry.wasm", &good);
        } else {
            std::fs::remove_file(plugin_dir.join(case.file)).expect("remove the bad file");
        }
        let (_, clean) = server.post("/api/plugins/reload", &server.admin, json!({})).await;
        if clean["data"]["refused"] != json!([]) {
            problems.push(format!("the restored directory still refuses: {clean}"));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {} — {status} {body}", case.case, problems.join("; ")));
        }
    }
    println!("bad_input_http (plugin files): {} cases", cases.len());
    server.stop().await;
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// A client that stalls inside its headers is disconnected at the header-read timeout (no
/// middleware has run yet, so there is no envelope to send), and a client still connected at
/// shutdown does not keep the server from stopping past the drain limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_are_cut_off_and_do_not_block_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("temp dir");
    let limits = api::ServeLimits {
        header_read_timeout: Duration::from_millis(500),
        shutdown_drain_limit: Duration::from_secs(1),
    };
    let mut server = sqlite_server(dir.path(), Options { limits, ..Options::default() }).await;
    // The header timeout also ends idle keep-alive connections (hyper times the wait for the next
    // request's headers), so this test's client does not keep any.
    server.client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let before = state(&server).await;
    let address = server.base.trim_start_matches("http://").to_owned();

    let mut stalled = tokio::net::TcpStream::connect(&address).await.expect("connect");
    stalled.write_all(b"GET /livez HTTP/1.1\r\nHost: local").await.expect("send half a header");
    let mut bytes = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), stalled.read_to_end(&mut bytes)).await;
    assert!(closed.is_ok(), "a client stalled inside its headers must be disconnected");
    assert_eq!(state(&server).await, before);

    // Another stalled client, this time connected when shutdown begins: the server still stops.
    let mut holder = tokio::net::TcpStream::connect(&address).await.expect("connect");
    holder.write_all(b"GET /livez HTTP/1.1\r\n").await.expect("send a request line");
    let stopping = server.begin_shutdown();
    let stopped = tokio::time::timeout(Duration::from_secs(30), stopping).await;
    assert!(stopped.is_ok(), "shutdown waited on a stalled client past its drain limit");
    drop(holder);
    server.stop().await;
}
