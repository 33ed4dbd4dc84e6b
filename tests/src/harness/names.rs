//! Unique names and small URL edits shared by the harness modules.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A random-enough `u64` for unique object names (not for cryptography).
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    h.write_u128(nanos);
    h.finish()
}

/// `prefix` + the sanitized `label` + `_` + 8 random hex digits, at most 63 bytes (PostgreSQL's
/// identifier limit), only `[a-z0-9_]`, so it never needs quoting.
pub(crate) fn unique_name(prefix: &str, label: &str) -> String {
    let mut clean: String =
        label.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let room = 63 - prefix.len() - 9;
    clean.truncate(room);
    format!("{prefix}{clean}_{:08x}", random_u64() as u32)
}

/// Splits `scheme://authority/rest` into (`scheme://`, authority, rest including its leading `/`
/// or `?`, possibly empty).
fn split_url(url: &str) -> (&str, &str, &str) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let (scheme, tail) = url.split_at(start);
    let end = tail.find(['/', '?']).unwrap_or(tail.len());
    let (authority, rest) = tail.split_at(end);
    (scheme, authority, rest)
}

/// The same URL pointing at database `db` (query parameters are kept).
pub fn with_database(url: &str, db: &str) -> String {
    let (scheme, authority, rest) = split_url(url);
    let query = rest.find('?').map_or("", |i| &rest[i..]);
    format!("{scheme}{authority}/{}{query}", encode(db))
}

/// The same URL logging in as `user` with `password` (both percent-encoded).
pub fn with_credentials(url: &str, user: &str, password: &str) -> String {
    let (scheme, authority, rest) = split_url(url);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}{}:{}@{host}{rest}", encode(user), encode(password))
}

/// The same URL with host and port replaced by `host_port` (credentials, path and query kept).
pub fn with_host_port(url: &str, host_port: &str) -> String {
    let (scheme, authority, rest) = split_url(url);
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => format!("{scheme}{userinfo}@{host_port}{rest}"),
        None => format!("{scheme}{host_port}{rest}"),
    }
}

/// The `host:port` part of a URL (port 5432 when absent).
pub fn host_port(url: &str) -> String {
    let (_, authority, _) = split_url(url);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

/// The URL with any password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let (scheme, authority, rest) = split_url(url);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:***@{host}{rest}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_bounded_and_plain() {
        let a = unique_name("dbguard_t_", "Some Test::name-with/odd chars and a very long tail indeed");
        let b = unique_name("dbguard_t_", "Some Test::name-with/odd chars and a very long tail indeed");
        assert_ne!(a, b);
        assert!(a.len() <= 63, "{a}");
        assert!(a.starts_with("dbguard_t_some_test__name"));
        assert!(a.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'));
    }

    #[test]
    fn url_edits() {
        let u = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";
        assert_eq!(with_database(u, "x"), "postgres://postgres@127.0.0.1:5432/x?sslmode=disable");
        assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
        let c = with_credentials(u, "bob", "p@ss");
        assert_eq!(c, "postgres://bob:p%40ss@127.0.0.1:5432/postgres?sslmode=disable");
        assert_eq!(redact_url(&c), "postgres://bob:***@127.0.0.1:5432/postgres?sslmode=disable");
        assert_eq!(redact_url(u), u);
        assert_eq!(host_port(u), "127.0.0.1:5432");
        assert_eq!(host_port("postgres://u@db/x"), "db:5432");
        assert_eq!(with_host_port(&c, "127.0.0.1:7"), "postgres://bob:p%40ss@127.0.0.1:7/postgres?sslmode=disable");
    }
}
