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
use serde::Serialize;
use serde_json::json;

use crate::error::Error;
use crate::limits::Refusal;

/// The `error.code` of the envelope: stable and machine-readable (the OpenAPI document's enum is this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    InsufficientCredits,
    Forbidden,
    ModelNotAllowed,
    CreditCapReached,
    TooManyInFlight,
    QueueFull,
    NotFound,
    Conflict,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    UpstreamError,
    Unavailable,
    Overloaded,
    InternalError,
}

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
                Error::Limit(refusal) if refusal.retry_after_secs().is_none() => StatusCode::FORBIDDEN,
                Error::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
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
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Domain(error) => match error {
                Error::Invalid(_) => ErrorCode::InvalidRequest,
                Error::Unauthorized => ErrorCode::Unauthorized,
                Error::Forbidden(_) => ErrorCode::Forbidden,
                Error::InsufficientCredits { .. } => ErrorCode::InsufficientCredits,
                Error::Limit(refusal) => match refusal {
                    Refusal::ModelNotAllowed { .. } => ErrorCode::ModelNotAllowed,
                    Refusal::CapReached { .. } => ErrorCode::CreditCapReached,
                    Refusal::InFlight { .. } => ErrorCode::TooManyInFlight,
                    Refusal::QueueFull { .. } => ErrorCode::QueueFull,
                },
                Error::NotFound(_) => ErrorCode::NotFound,
                Error::Conflict(_) => ErrorCode::Conflict,
                Error::RateLimited { .. } => ErrorCode::RateLimited,
                Error::Upstream(_) => ErrorCode::UpstreamError,
                Error::Unavailable(_) => ErrorCode::Unavailable,
                Error::Overloaded(_) => ErrorCode::Overloaded,
                Error::Internal(_) => ErrorCode::InternalError,
            },
            ApiError::InvalidToken => ErrorCode::Unauthorized,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
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
                Error::Limit(refusal) => refusal.message(),
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
    code: ErrorCode,
    message: String,
    /// More facts for the error object (a limit's cap, period and reset), merged into it.
    details: Option<serde_json::Value>,
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
            ApiError::Domain(Error::Limit(refusal)) => {
                if let Some(secs) = refusal.retry_after_secs() {
                    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
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
        let details = match &self {
            ApiError::Domain(Error::Limit(refusal)) => Some(refusal.details()),
            _ => None,
        };
        response.extensions_mut().insert(ErrorBody { code: self.code(), message: self.message(), details });
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
    let mut error = json!({"code": body.code, "message": body.message, "request_id": request_id});
    if let (Some(object), Some(serde_json::Value::Object(details))) = (error.as_object_mut(), body.details) {
        object.extend(details);
    }
    let json = Json(json!({ "error": error }));
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
