//! `POST /api/v1/images/generations`: the engine creates the task (validated, its price held) and
//! submits it; the answer is the task.

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::extract::{ApiJson, IdempotencyHeader};
use super::openapi::{BodyErrors, ErrorEnvelope, KeyErrors};
use super::AppState;
use crate::auth::Caller;
use crate::catalog::CreateRequest;
use crate::pricing::{PriceStep, Quote};
use crate::tasks::TaskView;

#[utoipa::path(
    post,
    path = "/api/v1/images/generations",
    operation_id = "createTask",
    tag = "tasks",
    request_body = CreateRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "1–255 characters. The same key and request within 24 h return the first task and hold nothing new; another request with it is 409.")),
    responses(
        (status = 200, description = "The task, queued, pending or running; its price is held.", body = TaskView,
         headers(("Location" = String, description = "/api/v1/tasks/{task_id}"))),
        (status = 402, description = "The price is above the available credits.", body = ErrorEnvelope),
        (status = 409, description = "The Idempotency-Key was used with another request.", body = ErrorEnvelope),
        (status = 502, description = "The provider refused the task; nothing is charged.", body = ErrorEnvelope),
        BodyErrors,
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    IdempotencyHeader(key): IdempotencyHeader,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let _slot = state.limits.create_permit()?;
    let task = state.engine.create(caller.account_id, &caller.key_id, request, key).await?;
    let location = format!("/api/v1/tasks/{}", task.id);
    Ok(([(LOCATION, location)], Json(TaskView::from(&task).with_links(|url| state.files.link(url)))))
}

/// `POST /api/v1/quotes`: what a create with this body would hold, and how the price comes about.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QuoteView {
    /// The credits a create holds: the per-image price × `n`. Only delivered images are charged.
    #[schema(example = 36)]
    credits: i64,
    /// In order: `base`, each matching price rule, `images` (× n); `credits` is the price after each.
    breakdown: Vec<PriceStep>,
    /// The price of one image.
    #[schema(example = 18)]
    per_image: i64,
    #[schema(example = 2)]
    n: u32,
    /// The sub-model the request resolves to.
    #[schema(example = "seedream/4.5-text-to-image")]
    sub_model: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/quotes",
    operation_id = "createQuote",
    tag = "tasks",
    request_body = CreateRequest,
    responses(
        (status = 200, description = "The price of this request; nothing is created or held.", body = QuoteView),
        BodyErrors,
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn quote(
    State(state): State<AppState>,
    _caller: Caller,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<Json<QuoteView>, ApiError> {
    let valid = state.catalog.validate(request, &state.guard)?;
    let Quote { credits, per_image, n, breakdown } = valid.quote;
    Ok(Json(QuoteView { credits, breakdown, per_image, n, sub_model: valid.sub_model.id.clone() }))
}
