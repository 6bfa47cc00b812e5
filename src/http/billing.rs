//! Billing: `GET /api/v1/billing/credits` (and `/billing/credits`): balance, holds, recent ledger;
//! top-up: packages, orders through Stripe Checkout, Stripe's webhook, redemption codes (the domain is
//! in [`crate::billing`]); the admin's views of orders and code batches.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{Admin, ApiJson, ApiQuery, Audit};
use super::openapi::{AdminErrors, BodyErrors, ErrorEnvelope, KeyErrors};
use super::AppState;
use crate::auth::Caller;
use crate::billing::orders::{self, Checkout, Order};
use crate::billing::{codes, events, stripe};
use crate::config::Package;
use crate::error::Error;
use crate::ledger::{self, Entry};
use crate::paging;

const RECENT_ENTRIES: i64 = 20;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Credits {
    /// What the account can spend now.
    balance: i64,
    /// What its unfinished tasks have reserved.
    held: i64,
    #[schema(value_type = String, pattern = "^credits$")]
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Packages {
    data: Vec<PackageView>,
}

/// A package of credits for sale.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PackageView {
    #[schema(example = "starter")]
    id: String,
    #[schema(example = 1000)]
    credits: i64,
    /// In the currency's smallest unit (cents).
    #[schema(example = 500)]
    amount: i64,
    #[schema(example = "usd")]
    currency: String,
    #[schema(example = "1,000 credits")]
    label: String,
}

impl From<&Package> for PackageView {
    fn from(p: &Package) -> Self {
        PackageView {
            id: p.id.clone(),
            credits: p.credits,
            amount: p.amount,
            currency: p.currency.clone(),
            label: p.label.clone(),
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/billing/packages",
    operation_id = "listPackages",
    tag = "billing",
    responses((status = 200, description = "The packages of `[[billing.packages]]`, as configured.", body = Packages), KeyErrors),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn packages(State(state): State<AppState>, _caller: Caller) -> Json<Packages> {
    Json(Packages { data: state.settings.billing.packages.iter().map(PackageView::from).collect() })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// The `id` of a package of `GET /api/v1/billing/packages`.
    #[schema(example = "starter", max_length = 64)]
    package_id: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/billing/orders",
    operation_id = "createOrder",
    tag = "billing",
    request_body = NewOrder,
    responses(
        (status = 201, description = "The order and the Stripe Checkout page to send the buyer to.", body = Checkout),
        (status = 409, description = "Online top-up is not configured, or the account has too many unpaid orders.", body = ErrorEnvelope),
        (status = 502, description = "Stripe refused or could not be reached; no order was kept.", body = ErrorEnvelope),
        BodyErrors,
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn create_order(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<NewOrder>,
) -> Result<(StatusCode, Json<Checkout>), ApiError> {
    let package = state
        .settings
        .billing
        .packages
        .iter()
        .find(|p| p.id == request.package_id)
        .ok_or_else(|| Error::Invalid("`package_id`: no such package; see GET /api/v1/billing/packages.".into()))?;
    let return_url = format!("{}/console", state.settings.server.public_base_url.trim_end_matches('/'));
    let checkout = orders::create(&state.pool, &state.stripe, caller.account_id, package, &return_url).await?;
    Ok((StatusCode::CREATED, Json(checkout)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = "^ord_[0-9A-Za-z]{1,36}$")]
    cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderPage {
    /// Newest first.
    data: Vec<Order>,
    #[schema(required = true)]
    next_cursor: Option<String>,
}

async fn order_page(state: &AppState, account_id: Option<i64>, query: OrdersQuery) -> Result<OrderPage, Error> {
    let limit = paging::limit(query.limit)?;
    let before = paging::cursor("cursor", query.cursor.as_deref(), orders::cursor)?;
    let data = orders::list(&state.pool, account_id, before.as_deref(), limit).await?;
    let next_cursor = paging::next_cursor(&data, limit, |o| &o.order_id);
    Ok(OrderPage { data, next_cursor })
}

#[utoipa::path(
    get,
    path = "/api/v1/billing/orders",
    operation_id = "listOrders",
    tag = "billing",
    params(OrdersQuery),
    responses(
        (status = 200, description = "The caller's orders with their states.", body = OrderPage),
        (status = 400, description = "A query parameter does not fit (the message names it).", body = ErrorEnvelope),
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn list_orders(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<OrdersQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    Ok(Json(order_page(&state, Some(caller.account_id), query).await?))
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/orders",
    operation_id = "listAllOrders",
    tag = "admin",
    params(OrdersQuery),
    responses(
        (status = 200, description = "Every account's orders.", body = OrderPage),
        (status = 400, description = "A query parameter does not fit (the message names it).", body = ErrorEnvelope),
        AdminErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn list_all_orders(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<OrdersQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    Ok(Json(order_page(&state, None, query).await?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Received {
    received: bool,
    /// `applied`, `duplicate` (applied before: nothing changed) or `ignored`.
    #[schema(example = "applied", value_type = String, pattern = "^(applied|duplicate|ignored)$")]
    outcome: &'static str,
}

/// Stripe's webhook endpoint: verified by `Stripe-Signature` (`STRIPE_WEBHOOK_SECRET`), applied once.
#[utoipa::path(
    post,
    path = "/api/v1/billing/stripe/webhook",
    operation_id = "stripeWebhook",
    tag = "billing",
    params(("Stripe-Signature" = String, Header, description = "`t=…,v1=…` as Stripe signs.")),
    request_body(content = Object, description = "A Stripe event, exactly as Stripe sent it.", content_type = "application/json"),
    responses(
        (status = 200, description = "Received (applied, a duplicate, or ignored).", body = Received),
        (status = 400, description = "Bad, stale or missing signature, or not an event: nothing changed.", body = ErrorEnvelope),
        (status = 503, description = "The database is unreachable; Stripe retries.", body = ErrorEnvelope),
    )
)]
pub async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Received>, ApiError> {
    let secrets = &state.settings.billing.stripe.webhook_secrets;
    let header = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    if let Err(refused) = stripe::verify(header, &body, secrets, Utc::now().timestamp()) {
        crate::monitoring::stripe_event("refused");
        if secrets.is_empty() {
            tracing::warn!("a Stripe webhook arrived but STRIPE_WEBHOOK_SECRET is unset");
        }
        tracing::warn!(reason = ?refused, "Stripe webhook refused");
        return Err(Error::Invalid(refused.message().into()).into());
    }
    let outcome = events::apply(&state.pool, &body).await?;
    crate::monitoring::stripe_event(outcome.as_str());
    Ok(Json(Received { received: true, outcome: outcome.as_str() }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redeem {
    #[schema(example = "AIO-7KQ2-M9XD-4TRP-B6WN-H3CE", max_length = 64)]
    code: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Redeemed {
    credits: i64,
    balance: i64,
    /// The ledger row of the grant.
    entry: Entry,
}

#[utoipa::path(
    post,
    path = "/api/v1/billing/redeem",
    operation_id = "redeemCode",
    tag = "billing",
    request_body = Redeem,
    responses(
        (status = 200, description = "The code's credits were granted.", body = Redeemed),
        (status = 404, description = "No such code.", body = ErrorEnvelope),
        (status = 409, description = "The code was redeemed already, or has expired.", body = ErrorEnvelope),
        BodyErrors,
        KeyErrors,
    ),
    security(("api_key" = []), ("session_cookie" = []))
)]
pub async fn redeem(
    State(state): State<AppState>,
    caller: Caller,
    audit: Audit,
    ApiJson(request): ApiJson<Redeem>,
) -> Result<Json<Redeemed>, ApiError> {
    let entry = codes::redeem(&state.pool, &audit.caller(&caller), caller.account_id, &request.code).await?;
    Ok(Json(Redeemed { credits: entry.amount, balance: entry.balance_after, entry }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBatch {
    /// Credits each code grants: 1 to 10^12.
    #[schema(minimum = 1, maximum = 1_000_000_000_000i64, example = 500)]
    credits: i64,
    /// How many codes: 1 to 1000.
    #[schema(minimum = 1, maximum = 1000, example = 10)]
    count: i64,
    /// When the codes stop working (RFC 3339); never when absent.
    expires_at: Option<DateTime<Utc>>,
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/redemption-codes",
    operation_id = "createRedemptionCodes",
    tag = "admin",
    request_body = NewBatch,
    responses(
        (status = 201, description = "The batch, with its codes shown this once.", body = codes::Batch),
        BodyErrors,
        AdminErrors,
    ),
    security(("session" = []), ("session_cookie" = []))
)]
pub async fn create_codes(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiJson(request): ApiJson<NewBatch>,
) -> Result<(StatusCode, Json<codes::Batch>), ApiError> {
    let batch =
        codes::create_batch(&state.pool, admin.account_id, request.credits, request.count, request.expires_at).await?;
    Ok((StatusCode::CREATED, Json(batch)))
}
