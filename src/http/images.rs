//! `POST /api/v1/images/generations`: the engine creates the task (validated, its price held) and
//! submits it; the answer is the task.

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use axum::Json;

use super::error::ApiError;
use super::extract::{ApiJson, IdempotencyHeader};
use super::openapi::{BodyErrors, ErrorEnvelope, KeyErrors};
use super::AppState;
use crate::auth::Caller;
use crate::catalog::CreateRequest;
use crate::tasks::TaskView;

#[utoipa::path(
    post,
    path = "/api/v1/images/generations",
    operation_id = "createTask",
    tag = "tasks",
    request_body = CreateRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, description = "1–255 characters. The same key and request within 24 h return the first task and hold nothing new; another request with it is 409.")),
    responses(
        (status = 200, description = "The task, pending or running; its price is held.", body = TaskView,
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
    let task = state.engine.create(caller.account_id, request, key).await?;
    let location = format!("/api/v1/tasks/{}", task.id);
    Ok(([(LOCATION, location)], Json(TaskView::from(&task).with_links(|url| state.files.link(url)))))
}
