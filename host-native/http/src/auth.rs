//! API authentication: bearer JWTs checked with one algorithm fixed by configuration.
//!
//! - `JWT_SECRET` (or `JWT_SECRET_FILE`): HS256.
//! - `JWT_PUBLIC_KEY_FILE`: a PEM public key; Ed25519 keys verify EdDSA tokens, RSA keys RS256.
//! - Neither, in development: a random 256-bit secret is generated at start-up, and
//!   [`Authenticator::mint`] issues tokens for it (printed by `dbguard serve`). Production
//!   refuses to start without a key (core's configuration check).
//!
//! Every token needs `exp`; `nbf` is honoured; `iss` and `aud` are checked when
//! `JWT_ISSUER` / `JWT_AUDIENCE` are set. A token signed with any other algorithm — including
//! `none`, or HS256 keyed with the RSA public key — is rejected. Scopes come from the
//! space-separated `scope` claim: `db:read` for reading routes, `db:admin` for `/test` and
//! `/reconnect` (admin does not imply read: grant both).

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbguard_core::Profile;
use dbguard_core::config::AuthConfig;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(5);

/// Bytes of the secret generated in development.
pub const GENERATED_SECRET_BYTES: usize = 32;

/// A permission carried in the `scope` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `db:read`: health, info, status, metrics.
    Read,
    /// `db:admin`: the test query and reconnect.
    Admin,
}

impl Scope {
    /// The claim spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Read => "db:read",
            Self::Admin => "db:admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims dbguard reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Who the token is for (shown in audit events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, seconds since the epoch (required).
    pub exp: u64,
    /// Not valid before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`, or `anonymous` when it has none.
    pub subject: String,
    scopes: HashSet<String>,
}

impl Principal {
    /// Whether the token grants `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope.as_str())
    }
}

/// Why a request is not authorized. The messages are safe to return to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// No `Authorization` header.
    #[error("missing Authorization header; send `Authorization: Bearer <token>`")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("malformed Authorization header; expected `Bearer <token>`")]
    Malformed,
    /// The token failed verification.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The token is valid but lacks the scope.
    #[error("the token lacks the {0} scope")]
    MissingScope(Scope),
}

impl AuthFailure {
    /// 401 for credential problems, 403 for a missing scope.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::MissingScope(_))
    }
}

/// Why the authenticator could not be built, or a token not minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The public key file cannot be read.
    #[error("JWT_PUBLIC_KEY_FILE: cannot read {path:?}: {cause}")]
    UnreadableKey {
        /// The path.
        path: String,
        /// The I/O error.
        cause: String,
    },
    /// The public key file holds no Ed25519 or RSA public key in PEM.
    #[error("JWT_PUBLIC_KEY_FILE: {path:?} is not a PEM Ed25519 or RSA public key")]
    BadKey {
        /// The path.
        path: String,
    },
    /// No key configured outside development.
    #[error("JWT_SECRET or JWT_PUBLIC_KEY_FILE is required in the {0} profile")]
    NoKey(Profile),
    /// The operating system's random source failed.
    #[error("cannot generate a JWT secret: {0}")]
    Random(String),
    /// Minting needs a secret, and only a public key is configured.
    #[error(
        "cannot mint tokens: only JWT_PUBLIC_KEY_FILE is configured (the private key stays with the issuer); set JWT_SECRET to mint HS256 tokens"
    )]
    CannotMint,
    /// Encoding failed.
    #[error("cannot encode the token: {0}")]
    Encode(String),
}

/// Verifies (and, with a secret, mints) API tokens.
pub struct Authenticator {
    algorithm: Algorithm,
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    generated: bool,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Builds the verifier from the configuration; in development with no key, generates a
    /// random secret.
    pub fn from_config(auth: &AuthConfig, profile: Profile) -> Result<Self, AuthError> {
        if let Some(path) = &auth.public_key_file {
            let pem = std::fs::read(path)
                .map_err(|err| AuthError::UnreadableKey { path: path.clone(), cause: err.to_string() })?;
            let (algorithm, decoding) = if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                (Algorithm::EdDSA, key)
            } else if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, key)
            } else {
                return Err(AuthError::BadKey { path: path.clone() });
            };
            return Ok(Self::assemble(algorithm, decoding, None, auth, false));
        }
        if let Some(secret) = &auth.secret {
            let bytes = secret.expose_secret().as_bytes();
            return Ok(Self::with_secret(bytes, auth, false));
        }
        if profile == Profile::Production {
            return Err(AuthError::NoKey(profile));
        }
        let mut secret = [0u8; GENERATED_SECRET_BYTES];
        getrandom::fill(&mut secret).map_err(|err| AuthError::Random(err.to_string()))?;
        Ok(Self::with_secret(&secret, auth, true))
    }

    fn with_secret(secret: &[u8], auth: &AuthConfig, generated: bool) -> Self {
        Self::assemble(
            Algorithm::HS256,
            DecodingKey::from_secret(secret),
            Some(EncodingKey::from_secret(secret)),
            auth,
            generated,
        )
    }

    fn assemble(
        algorithm: Algorithm,
        decoding: DecodingKey,
        encoding: Option<EncodingKey>,
        auth: &AuthConfig,
        generated: bool,
    ) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = LEEWAY.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &auth.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &auth.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Self {
            algorithm,
            decoding,
            encoding,
            validation,
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            generated,
        }
    }

    /// The algorithm every token must use.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether the secret was generated at start-up (development without a key).
    pub fn is_generated(&self) -> bool {
        self.generated
    }

    /// Whether [`mint`](Self::mint) can issue tokens (a secret is known).
    pub fn can_mint(&self) -> bool {
        self.encoding.is_some()
    }

    /// Checks an `Authorization` header value and the scope a route needs.
    pub fn authorize(&self, header: Option<&[u8]>, needed: Scope) -> Result<Principal, AuthFailure> {
        let principal = self.authenticate(header)?;
        if principal.has(needed) { Ok(principal) } else { Err(AuthFailure::MissingScope(needed)) }
    }

    /// Checks an `Authorization` header value and returns the caller.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Principal, AuthFailure> {
        let header = header.ok_or(AuthFailure::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthFailure::Malformed)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthFailure::Malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
            return Err(AuthFailure::Malformed);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|err| AuthFailure::Invalid(describe(err.kind())))?;
        let claims = data.claims;
        Ok(Principal {
            subject: claims.sub.unwrap_or_else(|| "anonymous".to_owned()),
            scopes: claims.scope.split_ascii_whitespace().map(str::to_owned).collect(),
        })
    }

    /// Issues a token for `subject` with `scopes`, valid for `ttl` from now (HS256 only: a
    /// public-key configuration holds no private key).
    pub fn mint(&self, subject: &str, scopes: &str, ttl: Duration) -> Result<String, AuthError> {
        let encoding = self.encoding.as_ref().ok_or(AuthError::CannotMint)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let claims = Claims {
            sub: Some(subject.to_owned()),
            exp: now.saturating_add(ttl.as_secs()),
            nbf: None,
            iat: Some(now),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            scope: scopes.split_ascii_whitespace().collect::<Vec<_>>().join(" "),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, encoding)
            .map_err(|err| AuthError::Encode(err.to_string()))
    }
}

/// A short, client-safe reason (never echoes the token).
fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not yet valid (nbf)",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(_) => "a required claim (exp) is missing",
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            "not a well-formed JWT"
        }
        _ => "rejected",
    }
}

/// Parses a token lifetime: plain seconds or a number with `s`, `m`, `h` or `d`.
pub fn parse_ttl(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let value: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => value,
        "m" => value.checked_mul(60)?,
        "h" => value.checked_mul(3600)?,
        "d" => value.checked_mul(86_400)?,
        _ => return None,
    };
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbguard_core::Secret;

    fn config(secret: Option<&str>) -> AuthConfig {
        AuthConfig { secret: secret.map(Secret::new), public_key_file: None, issuer: None, audience: None }
    }

    #[test]
    fn minted_tokens_verify_with_their_scopes() {
        let auth = Authenticator::from_config(&config(Some("a-test-secret-of-some-length")), Profile::Development)
            .expect("auth");
        let token = auth.mint("ops", "db:read", Duration::from_secs(60)).expect("mint");
        let header = format!("Bearer {token}");
        let principal = auth.authorize(Some(header.as_bytes()), Scope::Read).expect("read");
        assert_eq!(principal.subject, "ops");
        assert_eq!(auth.authorize(Some(header.as_bytes()), Scope::Admin), Err(AuthFailure::MissingScope(Scope::Admin)));
    }

    #[test]
    fn development_without_key_generates_a_secret_and_production_refuses() {
        let auth = Authenticator::from_config(&config(None), Profile::Development).expect("auth");
        assert!(auth.is_generated() && auth.can_mint());
        assert!(matches!(
            Authenticator::from_config(&config(None), Profile::Production),
            Err(AuthError::NoKey(Profile::Production))
        ));
    }

    #[test]
    fn malformed_headers() {
        let auth = Authenticator::from_config(&config(Some("another-secret")), Profile::Development).expect("auth");
        assert_eq!(auth.authenticate(None), Err(AuthFailure::Missing));
        assert_eq!(auth.authenticate(Some(b"Basic abc")), Err(AuthFailure::Malformed));
        assert_eq!(auth.authenticate(Some(b"Bearer")), Err(AuthFailure::Malformed));
        assert!(matches!(auth.authenticate(Some(b"Bearer not.a.jwt")), Err(AuthFailure::Invalid(_))));
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_ttl("0"), None);
        assert_eq!(parse_ttl("1w"), None);
        assert_eq!(parse_ttl(""), None);
    }
}
