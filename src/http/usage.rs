//! `GET /api/v1/usage`: a session's tasks and ledger, filtered by creation time and model, with
//! totals over everything the filter matches. Both lists are pages, newest first, with their own
//! cursors.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::ApiQuery;
use super::openapi::{ErrorEnvelope, SessionErrors};
use super::AppState;
use crate::jwt::Session;
use crate::ledger::{self, Entry, UsageFilter};
use crate::paging;
use crate::tasks::{self, TaskView};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Only what was created at or after this RFC 3339 time.
    from: Option<DateTime<Utc>>,
    /// Only what was created before this RFC 3339 time.
    to: Option<DateTime<Utc>>,
    /// A model or sub-model id; ledger entries without a task (grants, adjustments) then drop out.
    model: Option<String>,
    /// Page size of each list, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `tasks.next_cursor` of the previous page.
    #[param(pattern = "^task_[0-9A-Za-z]{1,59}$")]
    tasks_cursor: Option<String>,
    /// `ledger.next_cursor` of the previous page.
    #[param(pattern = "^[1-9][0-9]{0,17}$")]
    ledger_cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    summary: UsageSummary,
    tasks: UsageTasks,
    ledger: UsageLedger,
}

/// Totals over every task the filter matches (not only this page).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageSummary {
    tasks: i64,
    succeeded: i64,
    failed: i64,
    /// Pending or running.
    unfinished: i64,
    /// Credits spent: what the succeeded tasks were charged (per image delivered).
    credits_charged: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageTasks {
    data: Vec<TaskView>,
    #[schema(required = true)]
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageLedger {
    data: Vec<Entry>,
    #[schema(required = true)]
    next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/usage",
    operation_id = "getUsage",
    tag = "dashboard",
    params(UsageQuery),
    responses(
        (status = 200, description = "Totals, tasks and ledger entries of the caller's account.", body = Usage),
        (status = 400, description = "A query parameter does not fit (the message names it).", body = ErrorEnvelope),
        SessionErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn usage(
    State(state): State<AppState>,
    session: Session,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<Usage>, ApiError> {
    let limit = paging::limit(query.limit)?;
    let tasks_cursor = paging::cursor("tasks_cursor", query.tasks_cursor.as_deref(), tasks::cursor)?;
    let ledger_cursor = paging::cursor("ledger_cursor", query.ledger_cursor.as_deref(), ledger::cursor)?;
    let filter = UsageFilter::new(query.from, query.to, query.model.as_deref())?;
    let account = session.account_id;
    let (total, succeeded, failed, unfinished, credits_charged) =
        tasks::usage_totals(&state.pool, account, &filter).await?;
    let task_rows = tasks::usage_page(&state.pool, account, &filter, tasks_cursor, limit).await?;
    let entries = ledger::page(&state.pool, account, &filter, ledger_cursor, limit).await?;
    Ok(Json(Usage {
        summary: UsageSummary { tasks: total, succeeded, failed, unfinished, credits_charged },
        tasks: UsageTasks {
            next_cursor: paging::next_cursor(&task_rows, limit, |t| &t.id),
            data: task_rows.iter().map(|t| TaskView::from(t).with_links(|url| state.files.link(url))).collect(),
        },
        ledger: UsageLedger { next_cursor: paging::next_cursor(&entries, limit, |e| &e.id), data: entries },
    }))
}
