//! Orders: a package an account set out to buy, with its Stripe Checkout Session. `pending` until
//! Stripe reports the session paid (`paid`, credits granted) or expired (`expired`); a refund or
//! dispute of a paid order makes it `refunded`.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::stripe::{self, NewSession};
use crate::config::Package;
use crate::error::Error;
use crate::ids::new_id;
use crate::on_db;
use crate::store::Db;

/// Pending orders one account may have made in the last day: a bound on sessions opened at Stripe.
const MAX_PENDING_PER_DAY: i64 = 20;

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Order {
    #[schema(example = "ord_01JD3Z7YB4W4D0Q8WQK9N4V2XH")]
    pub order_id: String,
    pub account_id: i64,
    pub package_id: String,
    pub credits: i64,
    /// In the currency's smallest unit (cents).
    pub amount: i64,
    pub currency: String,
    /// `pending`, `paid`, `expired` or `refunded`.
    #[schema(example = "paid")]
    pub status: String,
    #[schema(required = true)]
    pub checkout_url: Option<String>,
    /// Credits a refund or dispute took back, and those it could not (already spent).
    pub reversed_credits: i64,
    pub owed_credits: i64,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub paid_at: Option<DateTime<Utc>>,
}

const ORDER_COLUMNS: &str = "id AS order_id, account_id, package_id, credits, amount, currency, status, checkout_url,
     reversed_credits, owed_credits, created_at, paid_at";

/// A new order's id, checkout URL and status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Checkout {
    pub order_id: String,
    /// Send the buyer here (Stripe's hosted checkout page).
    pub checkout_url: String,
    #[schema(example = "pending")]
    pub status: String,
}

/// Opens an order of `package` for `account_id` and its Checkout Session; the buyer comes back to
/// `return_url` with `order=<id>&result=paid|cancelled` in its hash. A session Stripe refuses leaves
/// no order behind.
pub async fn create(
    db: &Db,
    stripe: &stripe::Client,
    account_id: i64,
    package: &Package,
    return_url: &str,
) -> Result<Checkout, Error> {
    if !stripe.is_configured() {
        return Err(stripe::not_configured());
    }
    let since = db.dialect().now_plus_secs("-86400");
    let sql =
        format!("SELECT count(*) FROM orders WHERE account_id = $1 AND status = 'pending' AND created_at > {since}");
    let (pending,): (i64,) = on_db!(db, pool => sqlx::query_as(&sql).bind(account_id).fetch_one(pool).await)?;
    if pending >= MAX_PENDING_PER_DAY {
        return Err(Error::Conflict(format!(
            "This account has {pending} unpaid orders from the last day; pay or let them expire first."
        )));
    }
    let order_id = new_id("ord");
    on_db!(db, pool => sqlx::query(
        "INSERT INTO orders (id, account_id, package_id, credits, amount, currency, status)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending')",
    )
    .bind(&order_id)
    .bind(account_id)
    .bind(&package.id)
    .bind(package.credits)
    .bind(package.amount)
    .bind(&package.currency)
    .execute(pool)
    .await
    .map(|done| done.rows_affected()))?;
    let success_url = format!("{return_url}#/billing?order={order_id}&result=paid");
    let cancel_url = format!("{return_url}#/billing?order={order_id}&result=cancelled");
    let new = NewSession {
        order_id: &order_id,
        account_id,
        label: &package.label,
        amount: package.amount,
        currency: &package.currency,
        success_url: &success_url,
        cancel_url: &cancel_url,
    };
    let session = match stripe.create_session(&new).await {
        Ok(session) => session,
        Err(error) => {
            on_db!(db, pool => sqlx::query("DELETE FROM orders WHERE id = $1 AND checkout_session_id IS NULL")
                .bind(&order_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected()))?;
            return Err(error);
        }
    };
    let Some(checkout_url) = session.url.filter(|url| url.starts_with("https://") || url.starts_with("http://")) else {
        tracing::error!(order_id = %order_id, "Stripe's Checkout Session has no URL");
        return Err(Error::Upstream("The payment provider answered without a checkout page.".into()));
    };
    let sql = format!(
        "UPDATE orders SET checkout_session_id = $2, checkout_url = $3, updated_at = {} WHERE id = $1",
        db.dialect().now()
    );
    on_db!(db, pool => sqlx::query(&sql)
        .bind(&order_id)
        .bind(&session.id)
        .bind(&checkout_url)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
    tracing::info!(order_id = %order_id, account_id, package_id = %package.id, "order opened");
    Ok(Checkout { order_id, checkout_url, status: "pending".into() })
}

/// A page cursor is the id of the last order of the previous page.
pub fn cursor(text: &str) -> Option<String> {
    (text.starts_with("ord_") && text.len() <= 40 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .then(|| text.to_owned())
}

/// Orders newest first, of one account or (`None`) of all, older than `before` when given.
pub async fn list(db: &Db, account_id: Option<i64>, before: Option<&str>, limit: i64) -> sqlx::Result<Vec<Order>> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders
         WHERE ($1 IS NULL OR account_id = $1) AND ($2 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3"
    );
    on_db!(db, pool => sqlx::query_as(&sql).bind(account_id).bind(before).bind(limit).fetch_all(pool).await)
}
