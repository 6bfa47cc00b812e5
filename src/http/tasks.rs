//! `GET /api/v1/tasks/{task_id}` and `GET /api/v1/tasks`.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::openapi::{ErrorEnvelope, KeyErrors};
use super::AppState;
use crate::auth::Caller;
use crate::error::Error;
use crate::ledger::UsageFilter;
use crate::paging;
use crate::tasks::{self, TaskStatus, TaskView};

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
    let Some(task) = tasks::get(&state.pool, caller.account_id, &task_id).await? else {
        return Err(tasks::missing(&state.pool, caller.account_id, &task_id).await.into());
    };
    Ok(Json(TaskView::from(&task).with_links(|url| state.files.link(url))))
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
    /// Only tasks created at or after this RFC 3339 time.
    from: Option<DateTime<Utc>>,
    /// Only tasks created before this RFC 3339 time.
    to: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskPage {
    data: Vec<TaskView>,
    /// Pass as `?cursor=` for the next (older) page; `null` on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
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
    let limit = paging::limit(query.limit)?;
    let status = match query.status.as_deref() {
        None => None,
        Some(value) => Some(TaskStatus::parse(value).ok_or_else(|| {
            Error::Invalid(format!("`status`: `{value}` is not one of pending, running, succeeded, failed, cancelled."))
        })?),
    };
    let cursor = paging::cursor("cursor", query.cursor.as_deref(), tasks::cursor)?;
    let filter = UsageFilter::new(query.from, query.to, query.model.as_deref())?;
    let page = tasks::list(&state.pool, caller.account_id, limit, cursor, status, &filter).await?;
    let next_cursor = paging::next_cursor(&page, limit, |t| &t.id);
    Ok(Json(TaskPage {
        data: page.iter().map(|t| TaskView::from(t).with_links(|url| state.files.link(url))).collect(),
        next_cursor,
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/tasks/{task_id}/cancel",
    operation_id = "cancelTask",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id, `task_…`.")),
    responses(
        (status = 200, description = "The task, now `cancelled`; its hold is released and nothing is charged.", body = TaskView),
        (status = 404, description = "No such task of this account.", body = ErrorEnvelope),
        (status = 409, description = "The task has already ended (succeeded, failed or cancelled).", body = ErrorEnvelope),
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(task_id): ApiPath<String>,
) -> Result<Json<TaskView>, ApiError> {
    let task = state.engine.cancel(caller.account_id, &task_id).await?;
    Ok(Json(TaskView::from(&task).with_links(|url| state.files.link(url))))
}
