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
    /// What the domain answered (invalid, not found, no credits, rate limited, …): its kind decides the
    /// status and the code.
    #[error(transparent)]
    Domain(#[from] Error),
    /// A dashboard or admin route without a valid session token (every reason, one answer).
    #[error("invalid session token")]
    InvalidToken,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("payload too large")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported media type")]
    UnsupportedMediaType,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Domain(error) => match error {
                Error::Invalid(_) => StatusCode::BAD_REQUEST,
                Error::Unauthorized => StatusCode::UNAUTHORIZED,
                Error::Forbidden(_) => StatusCode::FORBIDDEN,
                Error::InsufficientCredits { .. } => StatusCode::PAYMENT_REQUIRED,
                Error::NotFound(_) => StatusCode::NOT_FOUND,
                Error::Conflict(_) => StatusCode::CONFLICT,
                Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                Error::Upstream(_) => StatusCode::BAD_GATEWAY,
                Error::Unavailable(_) | Error::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
                Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::InvalidToken => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The stable, low-cardinality code clients and metrics see.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Domain(error) => match error {
                Error::Invalid(_) => "invalid_request",
                Error::Unauthorized => "unauthorized",
                Error::Forbidden(_) => "forbidden",
                Error::InsufficientCredits { .. } => "insufficient_credits",
                Error::NotFound(_) => "not_found",
                Error::Conflict(_) => "conflict",
                Error::RateLimited { .. } => "rate_limited",
                Error::Upstream(_) => "upstream_error",
                Error::Unavailable(_) => "unavailable",
                Error::Overloaded(_) => "overloaded",
                Error::Internal(_) => "internal_error",
            },
            ApiError::InvalidToken => "unauthorized",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::Domain(error) => match error {
                Error::Invalid(m)
                | Error::NotFound(m)
                | Error::Conflict(m)
                | Error::Forbidden(m)
                | Error::Upstream(m)
                | Error::Unavailable(m)
                | Error::Overloaded(m)
                | Error::RateLimited { message: m, .. } => m.clone(),
                Error::Unauthorized => {
                    "Missing or invalid API key. Send `Authorization: Bearer aio_…` with an active key.".into()
                }
                Error::InsufficientCredits { price, available } => {
                    format!("This request costs {price} credits; {available} are available.")
                }
                Error::Internal(_) => "Something went wrong on our side; the request can be retried.".into(),
            },
            ApiError::InvalidToken => {
                "Missing, invalid or expired session. Send `Authorization: Bearer <JWT>`, or sign in to the console."
                    .into()
            }
            ApiError::MethodNotAllowed => "This route does not accept that method.".into(),
            ApiError::PayloadTooLarge { limit } => format!("The request body is larger than {limit} bytes."),
            ApiError::UnsupportedMediaType => "The request body must be JSON (Content-Type: application/json).".into(),
        }
    }
}

/// Database errors (also inside an `anyhow::Error`) are classified by the domain's error.
impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        ApiError::Domain(Error::from(error))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::Domain(Error::from(error))
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
        if let ApiError::Domain(Error::Internal(cause)) = &self {
            tracing::error!(error = ?cause, "internal error");
        }
        let mut response = self.status().into_response();
        match &self {
            ApiError::Domain(Error::RateLimited { retry_after_secs, .. }) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Domain(Error::Unavailable(_)) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::Domain(Error::Overloaded(_)) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Domain(Error::Unauthorized) | ApiError::InvalidToken => {
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
    ApiError::Domain(Error::Internal(anyhow::anyhow!("handler panicked"))).into_response()
}
