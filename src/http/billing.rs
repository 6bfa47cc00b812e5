//! `GET /api/v1/billing/credits` (and `/billing/credits`): balance, holds, recent ledger.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::openapi::KeyErrors;
use super::AppState;
use crate::auth::Caller;
use crate::error::Error;
use crate::ledger::{self, Entry};

const RECENT_ENTRIES: i64 = 20;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Credits {
    /// What the account can spend now.
    balance: i64,
    /// What its unfinished tasks have reserved.
    held: i64,
    currency: &'static str,
    usd_per_credit: f64,
    /// The newest entries first.
    ledger: Vec<Entry>,
}

#[utoipa::path(
    get,
    path = "/api/v1/billing/credits",
    operation_id = "getCredits",
    tag = "tasks",
    responses(
        (status = 200, description = "Balance, held credits and the last 20 ledger entries.", body = Credits),
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn credits(State(state): State<AppState>, caller: Caller) -> Result<Json<Credits>, ApiError> {
    let balance = ledger::balance(&state.pool, caller.account_id).await?.ok_or_else(|| Error::not_found("Account"))?;
    let ledger = ledger::recent(&state.pool, caller.account_id, RECENT_ENTRIES).await?;
    Ok(Json(Credits {
        balance: balance.balance,
        held: balance.held,
        currency: "credits",
        usd_per_credit: state.settings.billing.usd_per_credit,
        ledger,
    }))
}

/// `/billing/credits`: the same as `/api/v1/billing/credits`.
#[utoipa::path(
    get,
    path = "/billing/credits",
    operation_id = "getCreditsAlias",
    tag = "tasks",
    responses(
        (status = 200, description = "Balance, held credits and the last 20 ledger entries.", body = Credits),
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn credits_alias(state: State<AppState>, caller: Caller) -> Result<Json<Credits>, ApiError> {
    credits(state, caller).await
}
