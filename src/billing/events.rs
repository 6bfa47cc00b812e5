//! Stripe's webhook events, applied exactly once. Each applied event's id is inserted into
//! `stripe_events` in the same transaction as its effect (an order transition and its ledger row), so
//! a replay or a duplicate delivery, even a concurrent one, finds the id taken and changes nothing;
//! and the guarded order transitions make two different events about one payment grant once.
//!
//! - `checkout.session.completed` / `checkout.session.async_payment_succeeded` with `payment_status`
//!   `paid` (or `no_payment_required`): the order becomes `paid` and its credits are granted.
//! - `checkout.session.expired` / `checkout.session.async_payment_failed`: a `pending` order becomes
//!   `expired`; a paid one stays paid (events may arrive out of order).
//! - `charge.refunded` / `charge.dispute.created`: the share of the order's credits that was refunded
//!   or disputed is taken back from what is unspent (never below 0); the rest is recorded as owed and
//!   the account flagged. The order becomes `refunded`.
//! - Anything else: ignored.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{record_top_up, TopUp};
use crate::audit::{self, Action, Actor, Target};
use crate::error::Error;
use crate::ledger;
use crate::on_tx;
use crate::store::{Db, Dialect, Tx};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The event was recorded (and changed what it should).
    Applied,
    /// Its id was applied before: nothing changed.
    Duplicate,
    /// Not an event the gateway acts on, or about no order of this gateway.
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
        }
    }
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: Value,
}

/// Applies one verified event (the raw body Stripe signed).
pub async fn apply(db: &Db, payload: &[u8]) -> Result<Outcome, Error> {
    let event: Event = serde_json::from_slice(payload)
        .map_err(|_| Error::Invalid("The body is not a Stripe event (`id`, `type`, `data.object`).".into()))?;
    if event.id.is_empty() || event.id.len() > 255 {
        return Err(Error::Invalid("The event's `id` is empty or too long.".into()));
    }
    let object = &event.data.object;
    let outcome = match event.kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            match object["payment_status"].as_str() {
                Some("paid" | "no_payment_required") => pay(db, &event, object).await?,
                // Paid later by a delayed method: `async_payment_succeeded` follows.
                _ => Outcome::Ignored,
            }
        }
        "checkout.session.expired" | "checkout.session.async_payment_failed" => expire(db, &event, object).await?,
        "charge.refunded" => {
            let refunded = object["amount_refunded"].as_i64().unwrap_or(0);
            reverse(db, &event, object["payment_intent"].as_str(), refunded, "refund").await?
        }
        "charge.dispute.created" => {
            let disputed = object["amount"].as_i64().unwrap_or(0);
            reverse(db, &event, object["payment_intent"].as_str(), disputed, "dispute").await?
        }
        _ => Outcome::Ignored,
    };
    tracing::info!(event_id = %event.id, event_type = %event.kind, outcome = outcome.as_str(), "Stripe event");
    Ok(outcome)
}

/// The order a Checkout Session belongs to: named by its metadata (or `client_reference_id`) and
/// holding that very session.
async fn session_order(tx: &mut Tx, session: &Value) -> sqlx::Result<Option<String>> {
    let named = session["metadata"]["order_id"].as_str().or(session["client_reference_id"].as_str());
    let (Some(order_id), Some(session_id)) = (named, session["id"].as_str()) else {
        return Ok(None);
    };
    let sql = format!("SELECT id FROM orders WHERE id = $1 AND checkout_session_id = $2 {}", for_update(tx));
    let row: Option<(String,)> =
        on_tx!(tx, conn => sqlx::query_as(&sql).bind(order_id).bind(session_id).fetch_optional(conn).await)?;
    Ok(row.map(|(id,)| id))
}

fn for_update(tx: &Tx) -> &'static str {
    if tx.dialect() == Dialect::Postgres {
        "FOR UPDATE"
    } else {
        ""
    }
}

/// Records the event's id; false when it was recorded before (then nothing else may change).
async fn claim(tx: &mut Tx, event: &Event, order_id: &str) -> sqlx::Result<bool> {
    let inserted = on_tx!(tx, conn => sqlx::query(
        "INSERT INTO stripe_events (id, type, order_id) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(order_id)
    .execute(conn)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(inserted == 1)
}

async fn pay(db: &Db, event: &Event, session: &Value) -> Result<Outcome, Error> {
    let mut tx = db.begin().await?;
    let Some(order_id) = session_order(&mut tx, session).await? else {
        tracing::warn!(event_id = %event.id, "a paid Checkout Session of no order of this gateway");
        return Ok(Outcome::Ignored);
    };
    if !claim(&mut tx, event, &order_id).await? {
        return Ok(Outcome::Duplicate);
    }
    let now = tx.dialect().now();
    let sql = format!(
        "UPDATE orders SET status = 'paid', paid_at = {now}, updated_at = {now}, payment_intent = $2
         WHERE id = $1 AND status IN ('pending', 'expired') RETURNING account_id, credits"
    );
    let payment_intent = session["payment_intent"].as_str();
    let paid: Option<(i64, i64)> =
        on_tx!(&mut tx, conn => sqlx::query_as(&sql).bind(&order_id).bind(payment_intent).fetch_optional(conn).await)?;
    let source = format!("order {order_id}");
    if let Some((account_id, credits)) = paid {
        let entry = ledger::change_in(&mut tx, account_id, credits, &format!("top-up: {source}")).await?;
        let stripe = Actor::system("stripe");
        audit::credits_in(&mut tx, &stripe, Action::CreditsTopUp, Target::of(account_id, &order_id), &entry).await?;
        tx.commit().await?;
        record_top_up(&TopUp { account_id, credits, source: &source });
    } else {
        // Paid before, through another event about the same session: nothing more to grant.
        tx.commit().await?;
    }
    Ok(Outcome::Applied)
}

async fn expire(db: &Db, event: &Event, session: &Value) -> Result<Outcome, Error> {
    let mut tx = db.begin().await?;
    let Some(order_id) = session_order(&mut tx, session).await? else {
        return Ok(Outcome::Ignored);
    };
    if !claim(&mut tx, event, &order_id).await? {
        return Ok(Outcome::Duplicate);
    }
    let sql = format!(
        "UPDATE orders SET status = 'expired', updated_at = {} WHERE id = $1 AND status = 'pending'",
        tx.dialect().now()
    );
    on_tx!(&mut tx, conn => sqlx::query(&sql).bind(&order_id).execute(conn).await.map(|done| done.rows_affected()))?;
    tx.commit().await?;
    Ok(Outcome::Applied)
}

#[derive(sqlx::FromRow)]
struct PaidOrder {
    id: String,
    account_id: i64,
    credits: i64,
    amount: i64,
    status: String,
    reversed_credits: i64,
    owed_credits: i64,
}

/// A refund or dispute of `refunded` (of the order's amount, counted from the payment's start):
/// takes back that share of the order's credits, less what earlier events took or recorded as owed.
async fn reverse(
    db: &Db,
    event: &Event,
    payment_intent: Option<&str>,
    refunded: i64,
    why: &str,
) -> Result<Outcome, Error> {
    let Some(payment_intent) = payment_intent else {
        return Ok(Outcome::Ignored);
    };
    let mut tx = db.begin().await?;
    let sql = format!(
        "SELECT id, account_id, credits, amount, status, reversed_credits, owed_credits FROM orders
         WHERE payment_intent = $1 ORDER BY id LIMIT 1 {}",
        for_update(&tx)
    );
    let order: Option<PaidOrder> =
        on_tx!(&mut tx, conn => sqlx::query_as(&sql).bind(payment_intent).fetch_optional(conn).await)?;
    let Some(order) = order else {
        tracing::warn!(event_id = %event.id, "a {why} of a payment of no order of this gateway");
        return Ok(Outcome::Ignored);
    };
    if !claim(&mut tx, event, &order.id).await? {
        return Ok(Outcome::Duplicate);
    }
    let share = reversed_share(order.credits, order.amount, refunded);
    let due = share - order.reversed_credits - order.owed_credits;
    if !matches!(order.status.as_str(), "paid" | "refunded") || due <= 0 {
        tx.commit().await?;
        return Ok(Outcome::Applied);
    }
    let sql = format!("SELECT balance, credits_owed FROM accounts WHERE id = $1 {}", for_update(&tx));
    let (balance, owed_before): (i64, i64) =
        on_tx!(&mut tx, conn => sqlx::query_as(&sql).bind(order.account_id).fetch_one(conn).await)?;
    let taken = due.min(balance);
    let owed = due - taken;
    let source = format!("{why} of order {}", order.id);
    if taken > 0 {
        ledger::change_in(&mut tx, order.account_id, -taken, &source).await?;
    }
    let now = tx.dialect().now();
    if owed > 0 {
        let sql = format!(
            "UPDATE accounts SET credits_owed = credits_owed + $2, billing_flagged_at = COALESCE(billing_flagged_at, {now})
             WHERE id = $1"
        );
        on_tx!(&mut tx, conn => sqlx::query(&sql).bind(order.account_id).bind(owed).execute(conn).await.map(|d| d.rows_affected()))?;
    }
    let sql = format!(
        "UPDATE orders SET status = 'refunded', reversed_credits = reversed_credits + $2,
                owed_credits = owed_credits + $3, updated_at = {now}
         WHERE id = $1"
    );
    on_tx!(&mut tx, conn => sqlx::query(&sql).bind(&order.id).bind(taken).bind(owed).execute(conn).await.map(|d| d.rows_affected()))?;
    let before = json!({"balance": balance, "credits_owed": owed_before});
    let after =
        json!({"balance": balance - taken, "credits_owed": owed_before + owed, "amount": -taken, "reason": source});
    let target = Target::of(order.account_id, &order.id);
    audit::record_in(&mut tx, &Actor::system("stripe"), Action::CreditsRefund, target, Some(before), Some(after))
        .await?;
    tx.commit().await?;
    if taken > 0 {
        record_top_up(&TopUp { account_id: order.account_id, credits: -taken, source: &source });
    }
    if owed > 0 {
        tracing::warn!(account_id = order.account_id, order_id = %order.id, owed, "{why}: credits already spent are owed; account flagged");
    }
    Ok(Outcome::Applied)
}

/// The credits that `refunded` of `amount` stands for, rounded up (a refund of any part of a payment
/// takes back at least one credit), at most all of them.
fn reversed_share(credits: i64, amount: i64, refunded: i64) -> i64 {
    if amount <= 0 || refunded <= 0 {
        return 0;
    }
    let refunded = i128::from(refunded.min(amount));
    let (credits, amount) = (i128::from(credits), i128::from(amount));
    i64::try_from((credits * refunded + amount - 1) / amount).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::reversed_share;

    #[test]
    fn a_refund_takes_back_its_share_of_the_credits_rounded_up() {
        assert_eq!(reversed_share(1000, 500, 500), 1000);
        assert_eq!(reversed_share(1000, 500, 250), 500);
        assert_eq!(reversed_share(1000, 500, 1), 2);
        assert_eq!(reversed_share(1000, 500, 9999), 1000);
        assert_eq!(reversed_share(1000, 500, 0), 0);
        assert_eq!(reversed_share(3, 1000, 1), 1);
    }
}
