//! The one error shape of the API, and the extractors that turn axum's rejections into it.

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use dbguard_core::ErrorBody;
use serde::de::DeserializeOwned;

use crate::readonly::QueryError;
use dbguard::DbError;

/// An error response: an HTTP status and `{ success: false, error, message, retry_count,
/// last_attempt }`.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    /// An error with a status, a stable code and a human message.
    pub fn new(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Self { status, body: ErrorBody::new(error, message) }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401: no valid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: valid credentials, not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The error's HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error's body.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }

    /// The canonical error for a bare status (used when a layer answers without a body).
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status.as_u16() {
            400 => ("invalid_request", "the request is malformed"),
            401 => ("unauthorized", "a valid bearer token is required"),
            403 => ("forbidden", "not allowed"),
            404 => ("not_found", "no such route"),
            405 => ("method_not_allowed", "this route does not accept that method"),
            408 => ("request_timeout", "the request took too long and was abandoned"),
            413 => ("payload_too_large", "the request body is too large"),
            415 => ("unsupported_media_type", "send the body as application/json"),
            431 => ("headers_too_large", "the request headers are too large"),
            429 => ("too_many_requests", "too many requests"),
            503 => ("unavailable", "the service is unavailable"),
            504 => ("timeout", "the database did not answer in time"),
            s if s >= 500 => ("internal_error", "the server failed to handle the request"),
            _ => ("error", "the request failed"),
        };
        Self::new(status, code, message)
    }
}

impl From<&DbError> for ApiError {
    fn from(err: &DbError) -> Self {
        let status = if err.class() == dbguard_core::ErrorClass::Timeout {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        Self {
            status,
            body: ErrorBody {
                success: false,
                error: err.class().as_str().to_owned(),
                // DbError's message is scrubbed of secrets when it is built.
                message: err.to_string(),
                retry_count: err.retry_count(),
                last_attempt: err.last_attempt().map(str::to_owned),
            },
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(err: QueryError) -> Self {
        let status = match err {
            QueryError::Invalid(_) => StatusCode::BAD_REQUEST,
            QueryError::Forbidden(_) => StatusCode::FORBIDDEN,
            QueryError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            QueryError::TooLarge(_) => StatusCode::BAD_REQUEST,
            QueryError::SecretCatalog(_) => StatusCode::FORBIDDEN,
            QueryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, err.code(), err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let bytes = serde_json::to_vec(&self.body).unwrap_or_else(|_| b"{\"success\":false}".to_vec());
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON body whose rejections (syntax, wrong types, unknown fields, too large, wrong content
/// type) answer with the error envelope instead of axum's plain text.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::for_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(bytes) => bytes,
            Err(rejection) => return Err(ApiError::for_status(rejection.status())),
        };
        // Every body of this API is a JSON object. serde would also fill a struct from an array
        // of its fields in order (`["SELECT 1"]`), which is not a documented form.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|first| *first != b'{') {
            return Err(ApiError::bad_request("invalid JSON body: expected a JSON object"));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

/// `application/json` or any `application/*+json`, as axum's own JSON extractor accepts.
fn is_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence.strip_prefix("application/").is_some_and(|subtype| subtype == "json" || subtype.ends_with("+json"))
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    let status = rejection.status();
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::for_status(status),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::for_status(status),
        // axum answers 422 for well-formed JSON of the wrong shape; the API says 400 for both.
        _ => ApiError::bad_request(format!("invalid JSON body: {}", rejection.body_text())),
    }
}

/// Query-string parameters whose rejection answers with the error envelope.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    ApiError::bad_request(format!("invalid query string: {}", rejection.body_text()))
}
