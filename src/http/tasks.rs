//! `GET /api/v1/tasks/{task_id}` and `GET /api/v1/tasks`.

use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
    params(
        ("task_id" = String, Path, description = "The task id, `task_…`."),
        ("If-None-Match" = Option<String>, Header, description = "An `ETag` of an earlier answer: 304 while the answer is still the same."),
    ),
    responses(
        (status = 200, description = "The task.", body = TaskView,
         headers(("ETag" = String, description = "A strong validator of this answer (it changes with the task and with its file links)."))),
        (status = 304, description = "Unchanged since the answer whose `ETag` was sent in `If-None-Match` (no body).",
         headers(("ETag" = String, description = "The answer's validator."))),
        (status = 404, description = "No such task of this account.", body = ErrorEnvelope),
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(task_id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(task) = state.finished.get(&state.pool, caller.account_id, &task_id).await? else {
        return Err(tasks::missing(&state.pool, caller.account_id, &task_id).await.into());
    };
    let view = TaskView::from(&*task).with_links(|url| state.files.link(url));
    Ok(tagged(&headers, &view))
}

/// The JSON answer with a strong `ETag` (a digest of the body itself, so it changes whenever the body
/// does, link refreshes included), or `304 Not Modified` when `If-None-Match` names it.
fn tagged(request: &HeaderMap, value: &impl Serialize) -> Response {
    let Ok(body) = serde_json::to_vec(value) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let digest = Sha256::digest(&body);
    let etag = format!("\"{}\"", hex::encode(&digest[..16]));
    let tag = HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    let matches = request.get_all(IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|list| {
        list.split(',').map(str::trim).any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == etag)
    });
    if matches {
        return (StatusCode::NOT_MODIFIED, [(ETAG, tag)]).into_response();
    }
    (StatusCode::OK, [(CONTENT_TYPE, HeaderValue::from_static("application/json")), (ETAG, tag)], body).into_response()
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
