//! `/api/v1/admin/accounts…`: accounts and their credits, for admin sessions. Every credit change is
//! one ledger row with its reason ([`ledger::change`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{Admin, ApiJson, ApiPath, ApiQuery, Audit};
use super::openapi::{AdminErrors, BodyErrors, ErrorEnvelope};
use super::AppState;
use crate::accounts::{self, Account};
use crate::error::Error;
use crate::ledger::{self, Entry, MAX_AMOUNT};
use crate::limits::{self, LimitsPatch};
use crate::paging;

const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// 1–200 characters.
    #[schema(min_length = 1, max_length = 200, example = "acme")]
    name: String,
    /// Starting credits, granted through the ledger (default 0).
    #[schema(minimum = 0, maximum = 1_000_000_000_000i64)]
    credits: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/accounts",
    operation_id = "createAccount",
    tag = "admin",
    request_body = NewAccount,
    responses(
        (status = 201, description = "The new account.", body = Account),
        BodyErrors,
        AdminErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Admin(admin): Admin,
    audit: Audit,
    ApiJson(request): ApiJson<NewAccount>,
) -> Result<(StatusCode, Json<Account>), ApiError> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(Error::Invalid(format!("`name`: 1 to {MAX_NAME_CHARS} characters.")).into());
    }
    let credits = request.credits.unwrap_or(0);
    if !(0..=MAX_AMOUNT).contains(&credits) {
        return Err(Error::Invalid(format!("`credits`: 0 to {MAX_AMOUNT}.")).into());
    }
    let account_id = accounts::create(&state.pool, &audit.session(&admin), name, credits).await?;
    tracing::info!(admin = admin.account_id, new_account = account_id, credits, "account created");
    let account = accounts::get(&state.pool, account_id).await?.ok_or_else(|| Error::not_found("Account"))?;
    Ok((StatusCode::CREATED, Json(account)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AccountsQuery {
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^-?[0-9]{1,18}$")]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountPage {
    /// Oldest first.
    data: Vec<Account>,
    #[schema(required = true)]
    next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/accounts",
    operation_id = "listAccounts",
    tag = "admin",
    params(AccountsQuery),
    responses(
        (status = 200, description = "Accounts by id.", body = AccountPage),
        (status = 400, description = "A query parameter does not fit (the message names it).", body = ErrorEnvelope),
        AdminErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<AccountsQuery>,
) -> Result<Json<AccountPage>, ApiError> {
    let limit = paging::limit(query.limit)?;
    let after = paging::cursor("cursor", query.cursor.as_deref(), accounts::cursor)?;
    let data = accounts::list(&state.pool, after, limit).await?;
    let next_cursor = paging::next_cursor(&data, limit, |a| &a.account_id);
    Ok(Json(AccountPage { data, next_cursor }))
}

/// An account id from the path; anything else is as unknown as a missing account.
fn account_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| Error::not_found("Account").into())
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/accounts/{account_id}",
    operation_id = "getAccount",
    tag = "admin",
    params(("account_id" = String, Path, description = "The account id.", example = "1")),
    responses(
        (status = 200, description = "The account.", body = Account),
        (status = 404, description = "No such account.", body = ErrorEnvelope),
        AdminErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Account>, ApiError> {
    let account = accounts::get(&state.pool, account_id(&id)?).await?.ok_or_else(|| Error::not_found("Account"))?;
    Ok(Json(account))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditChange {
    /// Positive: a grant. Negative: an adjustment, refused (409) if it would take the balance below 0.
    /// Not 0; at most 10^12 either way.
    #[schema(minimum = -1_000_000_000_000i64, maximum = 1_000_000_000_000i64, example = 100)]
    amount: i64,
    /// Why, recorded in the ledger: 1–500 characters.
    #[schema(min_length = 1, max_length = 500, example = "invoice 42")]
    reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreditChanged {
    account: Account,
    /// The ledger row of this change.
    entry: Entry,
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/accounts/{account_id}/credits",
    operation_id = "changeCredits",
    tag = "admin",
    params(("account_id" = String, Path, description = "The account id.", example = "1")),
    request_body = CreditChange,
    responses(
        (status = 200, description = "The account after the change, and its ledger row.", body = CreditChanged),
        (status = 404, description = "No such account.", body = ErrorEnvelope),
        (status = 409, description = "The adjustment would take the balance below 0.", body = ErrorEnvelope),
        BodyErrors,
        AdminErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn change_credits(
    State(state): State<AppState>,
    Admin(admin): Admin,
    audit: Audit,
    ApiPath(id): ApiPath<String>,
    ApiJson(request): ApiJson<CreditChange>,
) -> Result<Json<CreditChanged>, ApiError> {
    let account_id = account_id(&id)?;
    let entry =
        ledger::change(&state.pool, &audit.session(&admin), account_id, request.amount, &request.reason).await?;
    tracing::info!(admin = admin.account_id, account_id, amount = request.amount, "credits changed");
    let account = accounts::get(&state.pool, account_id).await?.ok_or_else(|| Error::not_found("Account"))?;
    Ok(Json(CreditChanged { account, entry }))
}

#[utoipa::path(
    patch,
    path = "/api/v1/admin/accounts/{account_id}",
    operation_id = "updateAccountLimits",
    tag = "admin",
    params(("account_id" = String, Path, description = "The account id.", example = "1")),
    request_body = LimitsPatch,
    responses(
        (status = 200, description = "The account with its limits. Fields not sent stay as they were; `null` clears a limit.", body = Account),
        (status = 404, description = "No such account.", body = ErrorEnvelope),
        BodyErrors,
        AdminErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
/// Sets an account's limits, over all its keys: `allowed_models`, `max_in_flight`, `daily_credit_cap`,
/// `monthly_credit_cap`.
pub async fn update(
    State(state): State<AppState>,
    admin: Admin,
    audit: Audit,
    ApiPath(id): ApiPath<String>,
    ApiJson(patch): ApiJson<LimitsPatch>,
) -> Result<Json<Account>, ApiError> {
    let account_id = account_id(&id)?;
    let current = limits::of_account(&state.pool, account_id).await?.ok_or_else(|| Error::not_found("Account"))?;
    let next = patch.apply(current.clone(), |id| state.catalog.resolve(Some(id)).is_ok())?;
    if !limits::set_account(&state.pool, &audit.session(&admin.0), account_id, &current, &next).await? {
        return Err(Error::not_found("Account").into());
    }
    tracing::info!(admin = admin.0.account_id, account_id, "account limits changed");
    let account = accounts::get(&state.pool, account_id).await?.ok_or_else(|| Error::not_found("Account"))?;
    Ok(Json(account))
}
