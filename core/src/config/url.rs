//! Database URLs that never show their password.

use core::fmt;

use percent_encoding::percent_decode_str;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The database engines dbguard speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseType {
    /// PostgreSQL (`postgres://`, `postgresql://`).
    Postgresql,
    /// SQLite (`sqlite://path`, `sqlite::memory:`).
    Sqlite,
}

impl DatabaseType {
    /// The lowercase name used in reports and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Postgresql => "postgresql",
            Self::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for DatabaseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `host[:port]` of a (possibly multi-host) PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port, if given.
    pub port: Option<u16>,
}

/// Which server of a multi-host URL a pool may use: the URL's `target_session_attrs`, with
/// libpq's meaning. libpq's standby-seeking values are not accepted here: this pool is for
/// writes, and reads go to standbys with `DB_READ_TARGET` ([`crate::ReadTarget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// The first server that accepts a connection (libpq's default).
    #[default]
    Any,
    /// The first server whose sessions accept writes (`SHOW transaction_read_only` is `off`).
    ReadWrite,
    /// The first server that is not in recovery (`pg_is_in_recovery()` is false).
    Primary,
}

impl TargetSessionAttrs {
    /// The URL parameter's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
            Self::Primary => "primary",
        }
    }

    fn parse(value: &str) -> Result<Self, UrlError> {
        match value {
            "any" => Ok(Self::Any),
            "read-write" => Ok(Self::ReadWrite),
            "primary" => Ok(Self::Primary),
            _ => Err(UrlError::Malformed(
                "target_session_attrs must be any, read-write or primary (to send reads to standbys, set DB_READ_TARGET)",
            )),
        }
    }
}

/// The URL parameter naming which server of the host list to use.
const TARGET_SESSION_ATTRS: &str = "target_session_attrs";

/// The URL parameter saying whether reads are spread over the standbys (libpq 16's spelling).
const LOAD_BALANCE_HOSTS: &str = "load_balance_hosts";

/// How reads are spread over the standbys of a multi-host URL: the URL's `load_balance_hosts`,
/// with libpq 16's values. (libpq shuffles the host list for each connection; dbguard keeps
/// one pool per server and applies the same choice to each read routed to a standby.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalanceHosts {
    /// The first qualifying standby in the URL's order takes every read (libpq's default).
    #[default]
    Disable,
    /// Each read goes to a qualifying standby chosen at random.
    Random,
}

impl LoadBalanceHosts {
    /// The URL parameter's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Random => "random",
        }
    }

    fn parse(value: &str) -> Result<Self, UrlError> {
        match value {
            "disable" => Ok(Self::Disable),
            "random" => Ok(Self::Random),
            _ => Err(UrlError::Malformed("load_balance_hosts must be disable or random")),
        }
    }
}

/// Why a URL could not be parsed (the caller adds the variable name and redacted value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UrlError {
    UnsupportedScheme(String),
    Malformed(&'static str),
    /// A query parameter that is unknown, repeated or has no effect, explained.
    Parameter(String),
}

/// Query parameters the PostgreSQL driver acts on, in libpq's spelling (sqlx's hyphenated
/// aliases are left out so that dbguard's own `sslmode` checks see every TLS setting), plus
/// `target_session_attrs` and `load_balance_hosts`. Anything else would be ignored silently.
const POSTGRES_PARAMS: &[&str] = &[
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
    TARGET_SESSION_ATTRS,
    LOAD_BALANCE_HOSTS,
];

/// Query parameters the SQLite driver acts on.
const SQLITE_PARAMS: &[&str] = &["mode", "cache", "immutable", "vfs"];

/// Refuses a parameter the driver would ignore, and one given twice (which one wins is the
/// driver's accident, and `sslmode=disable&sslmode=require` must not be a guess).
fn check_params(params: &[(String, String)], known: &[&str]) -> Result<(), UrlError> {
    for (index, (key, _)) in params.iter().enumerate() {
        if !known.contains(&key.as_str()) {
            return Err(UrlError::Parameter(format!("unknown query parameter `{key}`; known: {}", known.join(", "))));
        }
        if params[..index].iter().any(|(earlier, _)| earlier == key) {
            return Err(UrlError::Parameter(format!("query parameter `{key}` is given more than once")));
        }
    }
    Ok(())
}

/// A parsed database URL. `Debug` and `Display` show it with the password replaced by `***`;
/// only [`DatabaseUrl::expose_secret`] returns the original text, for handing to a driver.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    raw: String,
    database_type: DatabaseType,
    user: Option<String>,
    has_password: bool,
    hosts: Vec<HostPort>,
    database: Option<String>,
    params: Vec<(String, String)>,
    target_session_attrs: TargetSessionAttrs,
    load_balance_hosts: LoadBalanceHosts,
    sqlite_path: Option<String>,
}

impl DatabaseUrl {
    /// Parses `postgres://user:pass@host:port,host2/db?k=v`, `sqlite://path?k=v`,
    /// `sqlite:///absolute/path` or `sqlite::memory:`.
    pub(crate) fn parse(raw: &str) -> Result<Self, UrlError> {
        let raw = raw.trim();
        let scheme_end = raw.find(':').ok_or(UrlError::Malformed("no scheme (expected e.g. postgres://…)"))?;
        let scheme = raw[..scheme_end].to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Self::parse_postgres(raw, scheme_end),
            "sqlite" => Self::parse_sqlite(raw, scheme_end),
            _ => Err(UrlError::UnsupportedScheme(raw[..scheme_end].to_owned())),
        }
    }

    fn parse_postgres(raw: &str, scheme_end: usize) -> Result<Self, UrlError> {
        let rest = raw[scheme_end..].strip_prefix("://").ok_or(UrlError::Malformed("expected :// after the scheme"))?;
        let (before_query, query) = split_once_or_all(rest, '?');
        let (authority, path) = split_once_or_all(before_query, '/');
        let (userinfo, hostlist) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (user, has_password) = match userinfo {
            None => (None, false),
            Some(info) => {
                let (user, password) = split_once_or_all(info, ':');
                (Some(decode(user)?).filter(|u| !u.is_empty()), password.is_some())
            }
        };
        let mut hosts = Vec::new();
        for part in hostlist.split(',').filter(|p| !p.is_empty()) {
            hosts.push(parse_host_port(part)?);
        }
        let params = parse_params(query)?;
        check_params(&params, POSTGRES_PARAMS)?;
        if hosts.is_empty() && !params.iter().any(|(k, _)| k == "host" || k == "hostaddr") {
            return Err(UrlError::Malformed(
                "no host (write postgres://user@host/db, or name a socket directory with ?host=/run/postgresql)",
            ));
        }
        let target_session_attrs = match params.iter().find(|(k, _)| k == TARGET_SESSION_ATTRS) {
            Some((_, value)) => TargetSessionAttrs::parse(value)?,
            None => TargetSessionAttrs::Any,
        };
        let load_balance_hosts = match params.iter().find(|(k, _)| k == LOAD_BALANCE_HOSTS) {
            Some((_, value)) => LoadBalanceHosts::parse(value)?,
            None => LoadBalanceHosts::Disable,
        };
        let database = match path {
            Some(p) if !p.is_empty() => Some(decode(p)?),
            _ => None,
        };
        Ok(Self {
            raw: raw.to_owned(),
            database_type: DatabaseType::Postgresql,
            user,
            has_password: has_password || params.iter().any(|(k, _)| k == "password"),
            hosts,
            database,
            params,
            target_session_attrs,
            load_balance_hosts,
            sqlite_path: None,
        })
    }

    fn parse_sqlite(raw: &str, scheme_end: usize) -> Result<Self, UrlError> {
        let after = &raw[scheme_end + 1..];
        let body = after.strip_prefix("//").unwrap_or(after);
        let (path, query) = split_once_or_all(body, '?');
        let path = decode(path)?;
        if path.is_empty() {
            return Err(UrlError::Malformed("no database file (expected sqlite://path/to/file.db or sqlite::memory:)"));
        }
        let params = parse_params(query)?;
        check_params(&params, SQLITE_PARAMS)?;
        Ok(Self {
            raw: raw.to_owned(),
            database_type: DatabaseType::Sqlite,
            user: None,
            has_password: false,
            hosts: Vec::new(),
            database: Some(path.clone()),
            params,
            target_session_attrs: TargetSessionAttrs::Any,
            load_balance_hosts: LoadBalanceHosts::Disable,
            sqlite_path: Some(path),
        })
    }

    /// The URL exactly as configured, password included. Hand it to a driver; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.raw
    }

    /// PostgreSQL or SQLite.
    pub fn database_type(&self) -> DatabaseType {
        self.database_type
    }

    /// The login user, if the URL names one.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether the URL carries a password.
    pub fn has_password(&self) -> bool {
        self.has_password
    }

    /// PostgreSQL hosts in order (several for failover); empty for SQLite.
    pub fn hosts(&self) -> &[HostPort] {
        &self.hosts
    }

    /// Which of the [`hosts`](Self::hosts) a pool may use (`target_session_attrs`).
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    /// How reads are spread over the standbys (`load_balance_hosts`).
    pub fn load_balance_hosts(&self) -> LoadBalanceHosts {
        self.load_balance_hosts
    }

    /// The URL for the `index`-th of the [`hosts`](Self::hosts), for a driver that takes one
    /// host: the other hosts, `target_session_attrs` and `load_balance_hosts` are removed, everything else (user,
    /// password, database, parameters) is kept as written. A URL without a host list (a
    /// socket given by parameter) answers for index 0 only. `None` for SQLite or an index out
    /// of range. Contains the password: hand it to a driver, never log it.
    pub fn server_url(&self, index: usize) -> Option<String> {
        if self.database_type != DatabaseType::Postgresql {
            return None;
        }
        let (prefix, rest) = self.raw.split_at(self.raw.find("://")? + 3);
        let (before_query, query) = split_once_or_all(rest, '?');
        let (authority, path) = split_once_or_all(before_query, '/');
        let (userinfo, hostlist) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        let host = match hostlist.split(',').filter(|part| !part.is_empty()).nth(index) {
            Some(host) => host,
            None if index == 0 && self.hosts.is_empty() => "",
            None => return None,
        };
        let mut url = format!("{prefix}{userinfo}{host}");
        if let Some(path) = path {
            url.push('/');
            url.push_str(path);
        }
        let kept: Vec<&str> = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|pair| {
                let key = split_once_or_all(pair, '=').0;
                !pair.is_empty() && key != TARGET_SESSION_ATTRS && key != LOAD_BALANCE_HOSTS
            })
            .collect();
        if !kept.is_empty() {
            url.push('?');
            url.push_str(&kept.join("&"));
        }
        Some(url)
    }

    /// The database name (PostgreSQL) or file path (SQLite).
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// A query parameter's value (`sslmode`, `mode`, …).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The SQLite file path, `None` for PostgreSQL.
    pub fn sqlite_path(&self) -> Option<&str> {
        self.sqlite_path.as_deref()
    }

    /// Whether this is an in-memory SQLite database.
    pub fn is_sqlite_memory(&self) -> bool {
        self.sqlite_path.as_deref().is_some_and(|p| p == ":memory:" || self.param("mode") == Some("memory"))
    }

    /// The URL with the password replaced by `***`: safe for logs and errors.
    pub fn redacted(&self) -> String {
        redact(&self.raw)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password in any URL-like text with `***`: the `user:password@` part and any
/// `password=` query or keyword parameter. Works on text that does not parse (a scheme without
/// `//`, a `/` or `?` left unencoded in the password), so error messages about a malformed URL
/// stay safe. When unsure it hides more, never less.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| !is_token_boundary(c)) {
        out.push_str(&rest[..start]);
        let token = &rest[start..];
        let len = token.find(is_token_boundary).unwrap_or(token.len());
        redact_userinfo(&token[..len], &mut out);
        rest = &token[len..];
    }
    out.push_str(rest);
    redact_password_params(&out)
}

/// Where a URL-like token ends in free text: whitespace and quotes.
fn is_token_boundary(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`')
}

/// Writes `token` with everything between the first `:` of its user information and its last
/// `@` replaced by `***`. The user information starts after `scheme://`, or after `scheme:`
/// when a `:` follows (so `user:secret@host` keeps `user`), and after any leading `/`.
fn redact_userinfo(token: &str, out: &mut String) {
    let Some(at) = token.rfind('@') else {
        out.push_str(token);
        return;
    };
    let before = &token[..at];
    let scheme_len = before
        .find(':')
        .filter(|&colon| colon > 0 && before[..colon].chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)));
    let mut userinfo_start = match scheme_len {
        Some(colon) if before[colon..].starts_with("://") => colon + 3,
        Some(colon) if before[colon + 1..].contains(':') => colon + 1,
        _ => 0,
    };
    userinfo_start += before[userinfo_start..].len() - before[userinfo_start..].trim_start_matches('/').len();
    match before[userinfo_start..].find(':') {
        Some(colon) => {
            out.push_str(&token[..userinfo_start + colon + 1]);
            out.push_str("***");
            out.push_str(&token[at..]);
        }
        None => out.push_str(token),
    }
}

fn redact_password_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = find_ascii_case_insensitive(rest, "password=") {
        let value_start = found + "password=".len();
        out.push_str(&rest[..value_start]);
        out.push_str("***");
        let value_len = rest[value_start..].find(['&', ' ']).unwrap_or(rest.len() - value_start);
        rest = &rest[value_start + value_len..];
    }
    out.push_str(rest);
    out
}

fn find_ascii_case_insensitive(haystack: &str, needle: &str) -> Option<usize> {
    haystack.as_bytes().windows(needle.len()).position(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

fn split_once_or_all(text: &str, separator: char) -> (&str, Option<&str>) {
    match text.split_once(separator) {
        Some((head, tail)) => (head, Some(tail)),
        None => (text, None),
    }
}

fn decode(text: &str) -> Result<String, UrlError> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| UrlError::Malformed("percent-encoding does not decode to UTF-8"))
}

fn parse_host_port(part: &str) -> Result<HostPort, UrlError> {
    let (host, port) = if let Some(bracketed) = part.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(UrlError::Malformed("unclosed [ in IPv6 host"))?;
        (host, after.strip_prefix(':'))
    } else {
        split_once_or_all(part, ':')
    };
    if host.is_empty() {
        return Err(UrlError::Malformed("empty host"));
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or(UrlError::Malformed("port must be 1-65535"))?),
    };
    Ok(HostPort { host: decode(host)?, port })
}

fn parse_params(query: Option<&str>) -> Result<Vec<(String, String)>, UrlError> {
    let Some(query) = query else { return Ok(Vec::new()) };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = split_once_or_all(pair, '=');
            Ok((decode(key)?, decode(value.unwrap_or(""))?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_parts() {
        let url = DatabaseUrl::parse("postgresql://app:s3cr%40t@db1:5433,db2/orders?sslmode=require").expect("parses");
        assert_eq!(url.database_type(), DatabaseType::Postgresql);
        assert_eq!(url.user(), Some("app"));
        assert!(url.has_password());
        assert_eq!(url.hosts().len(), 2);
        assert_eq!(url.hosts()[0], HostPort { host: "db1".into(), port: Some(5433) });
        assert_eq!(url.hosts()[1], HostPort { host: "db2".into(), port: None });
        assert_eq!(url.database(), Some("orders"));
        assert_eq!(url.param("sslmode"), Some("require"));
    }

    #[test]
    fn one_server_url_per_host() {
        let url = DatabaseUrl::parse(
            "postgres://app:p%40ss@a:5433,[::1]:5434,c/orders?sslmode=disable&target_session_attrs=read-write&application_name=svc",
        )
        .expect("parses");
        assert_eq!(url.target_session_attrs(), TargetSessionAttrs::ReadWrite);
        assert_eq!(
            url.server_url(0).as_deref(),
            Some("postgres://app:p%40ss@a:5433/orders?sslmode=disable&application_name=svc")
        );
        assert_eq!(
            url.server_url(1).as_deref(),
            Some("postgres://app:p%40ss@[::1]:5434/orders?sslmode=disable&application_name=svc")
        );
        assert_eq!(
            url.server_url(2).as_deref(),
            Some("postgres://app:p%40ss@c/orders?sslmode=disable&application_name=svc")
        );
        assert_eq!(url.server_url(3), None);

        let plain = DatabaseUrl::parse("postgresql://h/db").expect("parses");
        assert_eq!(plain.target_session_attrs(), TargetSessionAttrs::Any);
        assert_eq!(plain.server_url(0).as_deref(), Some("postgresql://h/db"));
        let socket = DatabaseUrl::parse("postgres:///db?host=/run/postgresql").expect("parses");
        assert_eq!(socket.server_url(0).as_deref(), Some("postgres:///db?host=/run/postgresql"));
        assert_eq!(socket.server_url(1), None);
        assert_eq!(DatabaseUrl::parse("sqlite://a.db").expect("parses").server_url(0), None);
    }

    #[test]
    fn load_balance_hosts_is_read_and_kept_from_the_driver() {
        let url = DatabaseUrl::parse("postgres://app@a,b:5433/orders?load_balance_hosts=random&sslmode=disable")
            .expect("parses");
        assert_eq!(url.load_balance_hosts(), LoadBalanceHosts::Random);
        assert_eq!(url.server_url(1).as_deref(), Some("postgres://app@b:5433/orders?sslmode=disable"));
        let default = DatabaseUrl::parse("postgres://app@a,b/orders").expect("parses");
        assert_eq!(default.load_balance_hosts(), LoadBalanceHosts::Disable);
        assert!(DatabaseUrl::parse("postgres://app@a,b/orders?load_balance_hosts=yes").is_err());
    }

    #[test]
    fn refuses_parameters_that_would_do_nothing() {
        for raw in [
            "postgres:///db",
            "postgres://app@/db",
            "postgres://h/db?sslmode=disable&sslmode=require",
            "postgres://h/db?connect_timeout=5",
            "postgres://h/db?sslmod=require",
            "sqlite://a.db?journal=wal",
            "sqlite://a.db?mode=ro&mode=rw",
        ] {
            assert!(DatabaseUrl::parse(raw).is_err(), "{raw} must be refused");
        }
        assert!(DatabaseUrl::parse("sqlite://a.db?mode=ro").is_ok());
        assert!(DatabaseUrl::parse("postgres:///db?host=/run/postgresql").is_ok());
    }

    #[test]
    fn target_session_attrs_values() {
        for (value, want) in [("any", TargetSessionAttrs::Any), ("primary", TargetSessionAttrs::Primary)] {
            let url = DatabaseUrl::parse(&format!("postgres://a,b/db?target_session_attrs={value}")).expect("parses");
            assert_eq!(url.target_session_attrs(), want);
        }
        for value in ["standby", "read-only", "prefer-standby", "", "READ-WRITE"] {
            let raw = format!("postgres://a,b/db?target_session_attrs={value}");
            assert!(DatabaseUrl::parse(&raw).is_err(), "{value:?} must be refused");
        }
    }

    #[test]
    fn ipv6_and_bad_ports() {
        let url = DatabaseUrl::parse("postgres://[::1]:5432/x").expect("parses");
        assert_eq!(url.hosts()[0], HostPort { host: "::1".into(), port: Some(5432) });
        assert!(DatabaseUrl::parse("postgres://h:0/x").is_err());
        assert!(DatabaseUrl::parse("postgres://h:99999/x").is_err());
        assert!(DatabaseUrl::parse("postgres://h:abc/x").is_err());
    }

    #[test]
    fn sqlite_forms() {
        let file = DatabaseUrl::parse("sqlite://data/app.db?mode=rwc").expect("parses");
        assert_eq!(file.sqlite_path(), Some("data/app.db"));
        assert_eq!(file.param("mode"), Some("rwc"));
        let absolute = DatabaseUrl::parse("sqlite:///var/lib/app.db").expect("parses");
        assert_eq!(absolute.sqlite_path(), Some("/var/lib/app.db"));
        assert!(DatabaseUrl::parse("sqlite::memory:").expect("parses").is_sqlite_memory());
        assert!(DatabaseUrl::parse("sqlite://:memory:").expect("parses").is_sqlite_memory());
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }

    #[test]
    fn schemes() {
        assert_eq!(DatabaseUrl::parse("mysql://u@h/d"), Err(UrlError::UnsupportedScheme("mysql".into())));
        assert!(matches!(DatabaseUrl::parse("no-scheme-here"), Err(UrlError::Malformed(_))));
        assert!(DatabaseUrl::parse("POSTGRES://h/d").is_ok());
    }

    #[test]
    fn password_never_shown() {
        let secret = "hunter2-Very-Secret";
        for text in [
            format!("postgres://app:{secret}@db/x"),
            format!("postgres://app:{secret}@db1,db2:5433/x?sslmode=require"),
            format!("postgres://db/x?user=app&password={secret}"),
            format!("postgres://db/x?sslmode=disable&password={secret}"),
        ] {
            let url = DatabaseUrl::parse(&text).expect("parses");
            for shown in [format!("{url}"), format!("{url:?}"), url.redacted(), redact(&text)] {
                assert!(!shown.contains(secret), "{shown}");
                assert!(shown.contains("***"), "{shown}");
            }
        }
        assert_eq!(redact("postgres://app:pw@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(redact("garbage://u:pw@@h"), "garbage://u:***@h");
        assert_eq!(redact("host=db password=pw user=x"), "host=db password=*** user=x");
        // Refused as an unknown parameter, and still not shown in the refusal.
        let upper = format!("postgres://db/x?PASSWORD={secret}&sslmode=disable");
        assert!(DatabaseUrl::parse(&upper).is_err());
        assert!(!redact(&upper).contains(secret), "{}", redact(&upper));
    }

    #[test]
    fn malformed_urls_hide_their_password_too() {
        for (text, shown) in [
            ("postgres//user:PW@host/db", "postgres//user:***@host/db"),
            ("postgres:/user:PW@host/db", "postgres:/user:***@host/db"),
            ("postgres:user:PW@host/db", "postgres:user:***@host/db"),
            ("mysql:user:PW@host", "mysql:user:***@host"),
            ("postgres://user:pa/PW@host/db", "postgres://user:***@host/db"),
            ("postgres://user:pa?PW@host/db", "postgres://user:***@host/db"),
            ("postgres://user:p:PW@host/db", "postgres://user:***@host/db"),
            ("user:PW@host", "user:***@host"),
            ("bad value \"postgres://u:PW@h/x\" for X", "bad value \"postgres://u:***@h/x\" for X"),
            ("postgres://app@db/x?application_name=a@b", "postgres://app@db/x?application_name=a@b"),
            ("write to admin@example.com at 10:30", "write to admin@example.com at 10:30"),
        ] {
            assert_eq!(redact(text), shown, "{text}");
        }
    }
}
