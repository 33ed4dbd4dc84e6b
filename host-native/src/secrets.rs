//! Keeping secrets out of messages.

use dbguard_core::DbConfig;
use dbguard_core::config::redact;

/// Scrubs known secrets (database passwords, the JWT secret) and URL-shaped passwords out of
/// text before it is logged or returned.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// Collects every secret in the configuration.
    pub fn from_config(config: &DbConfig) -> Self {
        let mut redactor = Self::default();
        for url in std::iter::once(&config.url).chain(config.test_url.as_ref()) {
            redactor.add(password_of(url.expose_secret()));
        }
        if let Some(secret) = &config.service.auth.secret {
            redactor.add(Some(secret.expose_secret().to_owned()));
        }
        redactor
    }

    /// Adds one more secret (ignored when empty or very short, which would mangle text).
    pub fn add(&mut self, secret: Option<String>) {
        if let Some(secret) = secret.filter(|s| s.len() >= 3) {
            let decoded = percent_decoded(&secret);
            self.secrets.push(secret);
            if let Some(decoded) = decoded {
                self.secrets.push(decoded);
            }
        }
    }

    /// The text with every secret replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = redact(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

fn password_of(url: &str) -> Option<String> {
    let after_scheme = url.split_once("://")?.1;
    let authority = after_scheme.split(['/', '?']).next()?;
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, password)| password.to_owned())
}

fn percent_decoded(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    percent_encoding::percent_decode_str(text).decode_utf8().ok().map(|decoded| decoded.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_configured_passwords_anywhere() {
        let config = DbConfig::from_vars([("DATABASE_URL", "postgres://app:p%40ss-word-1@db/x")]).expect("valid");
        let redactor = Redactor::from_config(&config);
        let text = "password authentication failed for p@ss-word-1 and p%40ss-word-1";
        let scrubbed = redactor.scrub(text);
        assert!(!scrubbed.contains("p@ss-word-1") && !scrubbed.contains("p%40ss-word-1"), "{scrubbed}");
    }
}
