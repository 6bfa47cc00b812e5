//! `GET /api/v1/tasks/{task_id}/deliveries` (the webhook log of a task, paged) and
//! `POST /api/v1/tasks/{task_id}/deliveries/retry` (send its webhook once more, now: one pending
//! re-send at a time, `webhooks.max_deliveries_per_task` in all). Owner only: another account's task is
//! `404`, exactly like a missing one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::openapi::{ErrorEnvelope, KeyErrors};
use super::AppState;
use crate::auth::Caller;
use crate::error::Error;
use crate::paging;
use crate::tasks::{self, timestamp};
use crate::webhooks::queue::{self, Attempt, Delivery, DeliveryStatus, Trigger};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    delivery_id: String,
    task_id: String,
    /// The `webhook-id` header: the same on every attempt of the event, and on manual re-sends.
    webhook_id: String,
    url: String,
    trigger: Trigger,
    status: DeliveryStatus,
    /// When the next attempt is due; `null` once delivered or dead.
    #[schema(required = true, format = DateTime)]
    next_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    attempts: Vec<AttemptView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AttemptView {
    #[schema(format = DateTime)]
    attempted_at: String,
    /// `null` when no HTTP answer came (refused, connection error, timeout).
    #[schema(required = true)]
    status_code: Option<i32>,
    latency_ms: i32,
    #[schema(required = true)]
    error: Option<String>,
    /// The first 2 KiB of the answer.
    #[schema(required = true)]
    response_excerpt: Option<String>,
}

impl DeliveryView {
    fn new(delivery: Delivery, attempts: Vec<Attempt>) -> DeliveryView {
        DeliveryView {
            next_attempt_at: (delivery.status == DeliveryStatus::Pending).then(|| timestamp(delivery.next_attempt_at)),
            delivery_id: delivery.id,
            task_id: delivery.task_id,
            webhook_id: delivery.webhook_id,
            url: delivery.url,
            trigger: delivery.trigger,
            status: delivery.status,
            created_at: timestamp(delivery.created_at),
            updated_at: timestamp(delivery.updated_at),
            attempts: attempts
                .into_iter()
                .map(|a| AttemptView {
                    attempted_at: timestamp(a.attempted_at),
                    status_code: a.status_code,
                    latency_ms: a.latency_ms,
                    error: a.error,
                    response_excerpt: a.response_excerpt,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    data: Vec<DeliveryView>,
    /// Pass as `?cursor=` for the next (newer) page; `null` on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^dlv_[0-9A-Za-z]{1,59}$")]
    cursor: Option<String>,
}

/// The task's deliveries, oldest first, each with its attempts; paged.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{task_id}/deliveries",
    operation_id = "listDeliveries",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id, `task_…`."), DeliveryQuery),
    responses(
        (status = 200, description = "The task's webhook deliveries, oldest first.", body = DeliveryList),
        (status = 400, description = "A bad `limit` or `cursor`.", body = ErrorEnvelope),
        (status = 404, description = "No such task of this account.", body = ErrorEnvelope),
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(task_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let limit = paging::limit(query.limit)?;
    let cursor = paging::cursor("cursor", query.cursor.as_deref(), |c| {
        c.strip_prefix("dlv_")
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then_some(c)
    })?;
    let task = tasks::get(&state.pool, caller.account_id, &task_id).await?.ok_or_else(|| Error::not_found("Task"))?;
    let deliveries = queue::list_for_task(&state.pool, &task.id, cursor, limit).await?;
    let next_cursor = paging::next_cursor(&deliveries, limit, |(d, _)| &d.id);
    let data = deliveries.into_iter().map(|(d, a)| DeliveryView::new(d, a)).collect();
    Ok(Json(DeliveryList { data, next_cursor }))
}

/// A new delivery of the task's event, due now: `202` with it. `409 conflict` while the task is
/// unfinished, when it has no `callback_url`, while a re-send is pending, or at the per-task cap.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{task_id}/deliveries/retry",
    operation_id = "retryDelivery",
    tag = "tasks",
    params(("task_id" = String, Path, description = "The task id, `task_…`.")),
    responses(
        (status = 202, description = "A new delivery of the task's event, due now.", body = DeliveryView),
        (status = 404, description = "No such task of this account.", body = ErrorEnvelope),
        (status = 409, description = "The task has not finished, has no callback_url, has a re-send pending, or has had `webhooks.max_deliveries_per_task` deliveries.", body = ErrorEnvelope),
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(task_id): ApiPath<String>,
) -> Result<(StatusCode, Json<DeliveryView>), ApiError> {
    let (max, version) = (state.settings.webhooks.max_deliveries_per_task.get(), state.settings.webhooks.body_version);
    let delivery =
        tasks::resend_webhook_as(&state.pool, caller.account_id, &task_id, &state.files, max, version).await?;
    tracing::info!(task_id = %delivery.task_id, delivery_id = %delivery.id, "manual webhook retry");
    if state.settings.server.role.runs_engine() {
        state.webhooks.wake();
    }
    Ok((StatusCode::ACCEPTED, Json(DeliveryView::new(delivery, Vec::new()))))
}
