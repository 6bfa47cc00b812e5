//! `POST /api/v1/images/generations`: validate, hold the price and store the task in one
//! transaction, hand it to the engine, answer with the task.

use axum::extract::State;
use axum::http::header::LOCATION;
use axum::response::IntoResponse;
use axum::Json;

use super::error::ApiError;
use super::extract::ApiJson;
use super::tasks::TaskView;
use crate::app::AppState;
use crate::auth::Caller;
use crate::catalog::CreateRequest;
use crate::tasks::{self, Created, NewTask, TaskErrorCode, TaskStatus};

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let valid = state.catalog.validate(request, &state.guard)?;
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
            deadline: std::time::Duration::from_secs(state.settings.tasks.deadline_secs),
            lease: fast_path.then(|| state.engine.lease()),
        },
    )
    .await?;
    let task = match created {
        Created::Task(task) => *task,
        Created::Insufficient { available } => {
            return Err(ApiError::InsufficientCredits { price: valid.price, available });
        }
    };
    tracing::info!(task_id = %task.id, model = %task.sub_model, price = task.price, "task created");

    let task = if fast_path {
        state.engine.dispatch(task.clone()).await;
        tasks::get(&state.pool, caller.account_id, &task.id).await?.unwrap_or(task)
    } else {
        task
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
