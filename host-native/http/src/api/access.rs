//! Who may call a route: the bearer token checked against the route's scope, as extractors.

use axum::extract::FromRequestParts;
use axum::http::{HeaderValue, header, request::Parts};

use super::{ApiError, AppState};
use crate::auth::{AuthFailure, Principal, Scope};

/// A caller holding `db:read`.
#[derive(Debug, Clone)]
pub struct ReadAccess(pub Principal);

/// A caller holding `db:admin`.
#[derive(Debug, Clone)]
pub struct AdminAccess(pub Principal);

pub(super) fn authorize(parts: &Parts, state: &AppState, scope: Scope) -> Result<Principal, ApiError> {
    let mut headers = parts.headers.get_all(header::AUTHORIZATION).iter();
    let header = headers.next().map(HeaderValue::as_bytes);
    if headers.next().is_some() {
        // Which of two credentials counts is a question a proxy and this server could answer
        // differently; refuse both.
        tracing::info!(target: "dbguard::audit", "request refused: more than one Authorization header");
        return Err(ApiError::unauthorized("malformed Authorization header: more than one was sent"));
    }
    state.inner.auth.authorize(header, scope).map_err(|failure| {
        tracing::info!(target: "dbguard::audit", %failure, "request refused");
        match failure {
            AuthFailure::MissingScope(_) => ApiError::forbidden(failure.to_string()),
            _ => ApiError::unauthorized(failure.to_string()),
        }
    })
}

impl FromRequestParts<AppState> for ReadAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        authorize(parts, state, Scope::Read).map(Self)
    }
}

impl FromRequestParts<AppState> for AdminAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        authorize(parts, state, Scope::Admin).map(Self)
    }
}
