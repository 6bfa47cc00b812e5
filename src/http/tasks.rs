//! `GET /api/v1/tasks/{task_id}` and `GET /api/v1/tasks`, and the task object clients see.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::openapi::{ErrorEnvelope, KeyErrors};
use super::extract::{ApiPath, ApiQuery};
use crate::app::AppState;
use crate::auth::Caller;
use crate::tasks::{self, Task, TaskError, TaskInput, TaskOutput, TaskStatus};

/// The task object of SPEC §2.2.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    pub task_id: String,
    pub model: String,
    pub sub_model: String,
    pub status: TaskStatus,
    pub input: TaskInput,
    pub output: Option<TaskOutput>,
    pub error: Option<TaskError>,
    pub credits: CreditsView,
    pub callback_url: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub completed_at: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreditsView {
    pub price: i64,
    pub charged: i64,
    /// `held` while unfinished, `charged` after success, `refunded` after failure.
    pub state: &'static str,
}

/// API timestamps: RFC 3339, UTC, milliseconds.
pub(super) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl From<&Task> for TaskView {
    fn from(task: &Task) -> Self {
        let (charged, state) = match task.status {
            TaskStatus::Pending | TaskStatus::Running => (0, "held"),
            TaskStatus::Succeeded => (task.price, "charged"),
            TaskStatus::Failed => (0, "refunded"),
        };
        TaskView {
            task_id: task.id.clone(),
            model: task.model.clone(),
            sub_model: task.sub_model.clone(),
            status: task.status,
            input: task.input.0.clone(),
            output: task.output.as_ref().map(|o| o.0.clone()),
            error: task.error.as_ref().map(|e| e.0.clone()),
            credits: CreditsView { price: task.price, charged, state },
            callback_url: task.callback_url.clone(),
            created_at: timestamp(task.created_at),
            updated_at: timestamp(task.updated_at),
            completed_at: task.completed_at.map(timestamp),
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/tasks/{task_id}",
    operation_id = "getTask",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id, `task_…`.")),
    responses(
        (status = 200, description = "The task.", body = TaskView),
        (status = 404, description = "No such task of this account.", body = ErrorEnvelope),
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(task_id): ApiPath<String>,
) -> Result<Json<TaskView>, ApiError> {
    let task = tasks::get(&state.pool, caller.account_id, &task_id).await?.ok_or_else(|| ApiError::not_found("Task"))?;
    Ok(Json(TaskView::from(&task)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^task_[0-9A-Za-z]{1,59}$")]
    cursor: Option<String>,
    /// Only tasks in this status.
    #[param(value_type = Option<TaskStatus>)]
    status: Option<String>,
    /// Only tasks of this model or sub-model id.
    model: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskPage {
    data: Vec<TaskView>,
    /// Pass as `?cursor=` for the next (older) page; `null` on the last page.
    next_cursor: Option<String>,
}

const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

/// A page size: 1–100, 20 when not given.
pub fn check_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!("`limit`: must be between 1 and {MAX_PAGE}.")));
    }
    Ok(limit)
}

#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    operation_id = "listTasks",
    tag = "tasks",
    params(ListQuery),
    responses(
        (status = 200, description = "The caller's tasks, newest first.", body = TaskPage),
        (status = 400, description = "A query parameter does not fit (the message names it).", body = ErrorEnvelope),
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<TaskPage>, ApiError> {
    let limit = check_limit(query.limit)?;
    let status = match query.status.as_deref() {
        None => None,
        Some(value) => Some(TaskStatus::parse(value).ok_or_else(|| {
            ApiError::InvalidRequest(format!("`status`: `{value}` is not one of pending, running, succeeded, failed."))
        })?),
    };
    let cursor = query.cursor.as_deref().map(|c| tasks::check_cursor("cursor", c)).transpose()?;
    let page = tasks::list(&state.pool, caller.account_id, limit, cursor, status, query.model.as_deref()).await?;
    let next_cursor = (page.len() as i64 == limit).then(|| page.last().map(|t| t.id.clone())).flatten();
    Ok(Json(TaskPage { data: page.iter().map(TaskView::from).collect(), next_cursor }))
}
