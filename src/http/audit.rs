//! `GET /api/v1/admin/audit`: the audit log ([`crate::audit`]), newest first, for admin sessions.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{Admin, ApiQuery};
use super::openapi::{AdminErrors, ErrorEnvelope};
use super::AppState;
use crate::audit::{self, Action, Entry, Filter};
use crate::error::Error;
use crate::paging;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this action.
    #[param(value_type = Option<Action>)]
    action: Option<String>,
    /// Only changes of this account.
    #[param(minimum = 1)]
    account_id: Option<i64>,
    /// Only this actor: a kind (`account`, `key`, `admin`, `cli`, `system`), or a kind and an id
    /// (`admin:1`, `key:key_…`, `system:stripe`).
    #[param(example = "admin:1")]
    actor: Option<String>,
    /// RFC 3339: entries from this time on.
    since: Option<DateTime<Utc>>,
    /// RFC 3339: entries before this time.
    until: Option<DateTime<Utc>>,
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Newest first.
    data: Vec<Entry>,
    next_cursor: Option<String>,
}

impl AuditQuery {
    fn filter(&self) -> Result<Filter, Error> {
        let action = match self.action.as_deref() {
            None => None,
            Some(text) => Some(Action::parse(text).ok_or_else(|| {
                let names = Action::ALL.map(Action::as_str).join(", ");
                Error::Invalid(format!("`action`: one of {names}."))
            })?),
        };
        if self.account_id.is_some_and(|id| id < 1) {
            return Err(Error::Invalid("`account_id`: an account id, 1 or more.".into()));
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since > until {
                return Err(Error::Invalid("`since`: must not be after `until`.".into()));
            }
        }
        let filter =
            Filter { action, account_id: self.account_id, since: self.since, until: self.until, ..Filter::default() };
        match self.actor.as_deref() {
            Some(actor) => filter.with_actor(actor),
            None => Ok(filter),
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/audit",
    operation_id = "listAudit",
    tag = "admin",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit log entries, newest first.", body = AuditPage),
        (status = 400, description = "A filter does not fit (the message names it).", body = ErrorEnvelope),
        AdminErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let filter = query.filter()?;
    let limit = paging::limit(query.limit)?;
    let before = paging::cursor("cursor", query.cursor.as_deref(), audit::cursor)?;
    let data = audit::page(&state.pool, &filter, before, limit).await?;
    let next_cursor = paging::next_cursor(&data, limit, |entry| &entry.id);
    Ok(Json(AuditPage { data, next_cursor }))
}
