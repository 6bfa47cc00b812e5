//! `POST /api/v1/images/generations`: validate, hold the price and store the task in one
//! transaction, hand it to the engine, answer with the task.

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use axum::Json;

use super::error::ApiError;
use super::openapi::{BodyErrors, ErrorEnvelope, KeyErrors};
use super::extract::{ApiJson, IdempotencyHeader};
use super::tasks::TaskView;
use crate::app::AppState;
use crate::auth::Caller;
use crate::catalog::CreateRequest;
use crate::idempotency::{self, IdempotencyKey};
use crate::monitoring;
use crate::tasks::{self, Created, NewTask, TaskErrorCode, TaskStatus};

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
    let valid = state.catalog.validate(request, &state.guard)?;
    let key = key.map(|key| IdempotencyKey {
        request_hash: idempotency::request_hash(&valid.sub_model.id, &valid.input, valid.callback_url.as_deref()),
        key,
    });
    let task_id = tasks::new_task_id();
    // An API-only process leaves new tasks to the processes that run the engine.
    let fast_path = state.settings.server.role.runs_engine();
    let created = tasks::create(
        &state.pool,
        NewTask {
            id: &task_id,
            account_id: caller.account_id,
            model: &valid.model.id,
            sub_model: &valid.sub_model.id,
            input: &valid.input,
            price: valid.price,
            callback_url: valid.callback_url.as_deref(),
            provider: &valid.route.provider,
            upstream_model: &valid.route.upstream_model,
            deadline: state.settings.tasks.deadline,
            lease: fast_path.then(|| state.engine.lease()),
            idempotency: key.as_ref(),
        },
    )
    .await?;
    let task = match created {
        Created::Task(task) => {
            tracing::info!(task_id = %task.id, model = %task.sub_model, price = task.price, "task created");
            monitoring::task_created(&task);
            if fast_path {
                state.engine.dispatch((*task).clone()).await;
                tasks::get(&state.pool, caller.account_id, &task.id).await?.unwrap_or(*task)
            } else {
                *task
            }
        }
        // The same key and request again: the first task, as it is now; nothing new is held.
        Created::Replayed(task) => {
            tracing::info!(task_id = %task.id, "idempotent replay");
            monitoring::idempotent_replay();
            *task
        }
        Created::Conflict => {
            return Err(ApiError::Conflict(
                "This Idempotency-Key was already used with a different request in the last 24 hours; \
                 use a new key for a new request."
                    .into(),
            ));
        }
        Created::Insufficient { available } => {
            return Err(ApiError::InsufficientCredits { price: valid.price, available });
        }
    };
    // A provider that refuses the task outright is something the client must see now.
    if task.status == TaskStatus::Failed {
        if let Some(error) = task.error.as_ref().filter(|e| e.code == TaskErrorCode::UpstreamRejected) {
            return Err(ApiError::Upstream(format!(
                "{} Task {} failed and nothing was charged.",
                error.message, task.id
            )));
        }
    }
    let location = format!("/api/v1/tasks/{}", task.id);
    Ok(([(LOCATION, location)], Json(TaskView::from(&task))))
}
