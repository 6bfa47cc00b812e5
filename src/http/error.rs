//! The one error type of the HTTP API and its envelope:
//! `{"error": {"code", "message", "request_id"}}` with a matching status.
//!
//! A handler returns `ApiError` (domain errors convert into it); its response carries the code and message as an extension, and the
//! `render_errors` middleware writes the body, because only the middleware knows the request id.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::Error;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("unauthorized")]
    Unauthorized,
    /// A dashboard or admin route without a valid session token (every reason, one answer).
    #[error("invalid session token")]
    InvalidToken,
    #[error("{0}")]
    Forbidden(String),
    #[error("insufficient credits")]
    InsufficientCredits { price: i64, available: i64 },
    #[error("{0}")]
    NotFound(String),
    /// The request is fine but the resource's state does not allow it now.
    #[error("{0}")]
    Conflict(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("payload too large")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("{message}")]
    RateLimited { retry_after_secs: u64, message: String },
    #[error("{0}")]
    Upstream(String),
    #[error("{0}")]
    Unavailable(String),
    /// Anything the client cannot act on: logged with its cause, answered with a generic message.
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::InvalidToken => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::InsufficientCredits { .. } => StatusCode::PAYMENT_REQUIRED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, low-cardinality code clients and metrics see.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Unauthorized | ApiError::InvalidToken => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::InsufficientCredits { .. } => "insufficient_credits",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Upstream(_) => "upstream_error",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::InvalidRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Forbidden(m)
            | ApiError::Upstream(m)
            | ApiError::Unavailable(m)
            | ApiError::RateLimited { message: m, .. } => m.clone(),
            ApiError::Unauthorized => {
                "Missing or invalid API key. Send `Authorization: Bearer aio_…` with an active key.".into()
            }
            ApiError::InvalidToken => {
                "Missing, invalid or expired session. Send `Authorization: Bearer <JWT>`, or sign in to the console."
                    .into()
            }
            ApiError::InsufficientCredits { price, available } => {
                format!("This request costs {price} credits; {available} are available.")
            }
            ApiError::MethodNotAllowed => "This route does not accept that method.".into(),
            ApiError::PayloadTooLarge { limit } => format!("The request body is larger than {limit} bytes."),
            ApiError::UnsupportedMediaType => "The request body must be JSON (Content-Type: application/json).".into(),
            ApiError::Internal(_) => "Something went wrong on our side; the request can be retried.".into(),
        }
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::NotFound(format!("{what} not found."))
    }
}

/// The domain's error, as the API answers it.
impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(message) => ApiError::InvalidRequest(message),
            Error::Unauthorized => ApiError::Unauthorized,
            Error::Forbidden(message) => ApiError::Forbidden(message),
            Error::InsufficientCredits { price, available } => ApiError::InsufficientCredits { price, available },
            Error::NotFound(message) => ApiError::NotFound(message),
            Error::Conflict(message) => ApiError::Conflict(message),
            Error::RateLimited { retry_after_secs, message } => ApiError::RateLimited { retry_after_secs, message },
            Error::Upstream(message) => ApiError::Upstream(message),
            Error::Unavailable(message) => ApiError::Unavailable(message),
            Error::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

/// Database errors (also inside an `anyhow::Error`) are classified by the domain's error.
impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::from(Error::from(error))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::from(Error::from(error))
    }
}

/// Carried from `into_response` to `render_errors`.
#[derive(Clone)]
struct ErrorBody {
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = ?cause, "internal error");
        }
        let mut response = self.status().into_response();
        match &self {
            ApiError::RateLimited { retry_after_secs, .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unavailable(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::Unauthorized | ApiError::InvalidToken => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response.extensions_mut().insert(ErrorBody { code: self.code(), message: self.message() });
        response
    }
}

/// Writes the envelope for every `ApiError`, with the request id set by the request-id layer.
pub async fn render_errors(request: Request, next: Next) -> Response {
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut response = next.run(request).await;
    let Some(body) = response.extensions_mut().remove::<ErrorBody>() else {
        return response;
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let json = Json(json!({"error": {"code": body.code, "message": body.message, "request_id": request_id}}));
    let mut rendered = json.into_response();
    *rendered.status_mut() = parts.status;
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE {
            rendered.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rendered
}

/// A panic in a handler becomes a logged 500 with the envelope, never a dropped connection.
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}
