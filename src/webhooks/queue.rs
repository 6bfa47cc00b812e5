//! The delivery queue: `webhook_deliveries` rows and their `webhook_attempts`.
//!
//! A delivery is enqueued in the transaction that settles its task, so a settled task with a
//! `callback_url` always has one, and claimed like the engine claims tasks: `FOR UPDATE SKIP LOCKED`
//! with `next_attempt_at` as both the schedule and the lease. Each attempt and the delivery's new
//! state are written together.
//!
//! Bounded per task: a manual re-send stores neither URL nor body (an empty `url` and `body` mean "those
//! of the task's first delivery"), at most one manual re-send is pending at a time (a partial unique
//! index), and a task has at most `webhooks.max_deliveries_per_task` deliveries.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::error::Error;
use crate::store::{self, Db, Tx, WorkQueue};
use crate::{ids, on_db, on_tx};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or in one).
    Pending,
    /// A 2xx answer.
    Delivered,
    /// Given up: a 410 answer, or the last scheduled attempt failed.
    Dead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The task reached a terminal state.
    Settled,
    /// `POST /api/v1/tasks/{task_id}/deliveries/retry`.
    Manual,
    /// The task started (`callback_events` with `started`).
    Started,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Delivery {
    pub id: String,
    pub task_id: String,
    pub account_id: i64,
    pub url: String,
    pub webhook_id: String,
    pub body: Vec<u8>,
    pub trigger: Trigger,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, task_id, account_id, url, webhook_id, body, trigger, status, attempts, next_attempt_at, created_at, updated_at";

/// One attempt, as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Attempt {
    pub delivery_id: String,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub latency_ms: i32,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

/// What an attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Delivered,
    RetryIn(Duration),
    Dead,
}

/// A task's event, for its callback URL: the body is the task object (SPEC §2.2), frozen when the
/// event is enqueued.
pub struct Event<'a> {
    pub task_id: &'a str,
    pub account_id: i64,
    pub url: &'a str,
    pub body: Vec<u8>,
}

async fn insert(
    tx: &mut Tx,
    event: &Event<'_>,
    webhook_id: &str,
    body: &[u8],
    trigger: Trigger,
    delay: Duration,
) -> sqlx::Result<Delivery> {
    let sql = format!(
        "INSERT INTO webhook_deliveries (id, task_id, account_id, url, webhook_id, body, trigger, status,
                                         next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', {})
         RETURNING {COLUMNS}",
        tx.dialect().now_plus_secs("$8")
    );
    on_tx!(tx, conn => sqlx::query_as(&sql)
    .bind(ids::new_id("dlv"))
    .bind(event.task_id)
    .bind(event.account_id)
    .bind(event.url)
    .bind(webhook_id)
    .bind(body)
    .bind(trigger)
    .bind(delay.as_secs_f64())
    .fetch_one(conn)
    .await)
}

/// In the settling transaction: the event's first delivery, due after `delay`, with a new `webhook-id`.
pub async fn enqueue(tx: &mut Tx, event: &Event<'_>, delay: Duration) -> sqlx::Result<()> {
    insert(tx, event, &ids::new_id("msg"), &event.body, Trigger::Settled, delay).await?;
    Ok(())
}

/// In the starting transaction: the task's `started` event, due now, with a new `webhook-id`.
pub async fn enqueue_started(tx: &mut Tx, event: &Event<'_>) -> sqlx::Result<()> {
    insert(tx, event, &ids::new_id("msg"), &event.body, Trigger::Started, Duration::ZERO).await?;
    Ok(())
}

/// A manual re-send, due now, of the task's event: the same `webhook-id` and the same bytes as its
/// first delivery, which it refers to instead of copying them (a task without one, e.g. settled before
/// webhooks existed, gets a new event with `event.body`, stored on this delivery). The caller checked
/// that the task is terminal and has a `callback_url`. `409` while another manual re-send of the task
/// is pending, or once the task has `max_deliveries` deliveries. Returns the delivery with its URL and
/// body filled in.
pub async fn enqueue_retry(db: &Db, event: &Event<'_>, max_deliveries: u32) -> Result<Delivery, Error> {
    let mut tx = db.begin().await?;
    // A task's `started` delivery is another event: neither a delivery of its end nor counted in its bound.
    let (total, pending): (i64, i64) = on_tx!(&mut tx, conn => sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE trigger = 'manual' AND status = 'pending')
         FROM webhook_deliveries WHERE task_id = $1 AND trigger <> 'started'",
    )
    .bind(event.task_id)
    .fetch_one(conn)
    .await)?;
    if pending > 0 {
        return Err(pending_conflict(event.task_id));
    }
    if total >= i64::from(max_deliveries) {
        return Err(Error::Conflict(format!(
            "Task {} has had its webhook sent {max_deliveries} times, the most a task may have.",
            event.task_id
        )));
    }
    let first = first_of(&mut tx, event.task_id).await?;
    let (webhook_id, url, body) = match &first {
        Some((webhook_id, _, _)) => (webhook_id.clone(), "", &[][..]),
        None => (ids::new_id("msg"), event.url, &event.body[..]),
    };
    let stored = Event { task_id: event.task_id, account_id: event.account_id, url, body: Vec::new() };
    let mut delivery = match insert(&mut tx, &stored, &webhook_id, body, Trigger::Manual, Duration::ZERO).await {
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            return Err(pending_conflict(event.task_id))
        }
        other => other?,
    };
    tx.commit().await?;
    if let Some((_, url, body)) = first {
        (delivery.url, delivery.body) = (url, body);
    }
    Ok(delivery)
}

fn pending_conflict(task_id: &str) -> Error {
    Error::Conflict(format!("A manual re-send of task {task_id}'s webhook is already pending; wait for it to finish."))
}

/// The task's first delivery of its end that holds its URL and body: `(webhook_id, url, body)` (not
/// its `started` event).
async fn first_of(tx: &mut Tx, task_id: &str) -> sqlx::Result<Option<(String, String, Vec<u8>)>> {
    on_tx!(tx, conn => sqlx::query_as(
        "SELECT webhook_id, url, body FROM webhook_deliveries
         WHERE task_id = $1 AND length(body) > 0 AND trigger <> 'started'
         ORDER BY id LIMIT 1",
    )
    .bind(task_id)
    .fetch_optional(conn)
    .await)
}

/// Fills in the URL and body of manual re-sends from their task's first delivery.
async fn resolve(db: &Db, deliveries: &mut [Delivery]) -> sqlx::Result<()> {
    let mut firsts: HashMap<String, Option<(String, Vec<u8>)>> = HashMap::new();
    for delivery in deliveries.iter_mut().filter(|d| d.body.is_empty()) {
        if !firsts.contains_key(&delivery.task_id) {
            let first: Option<(String, Vec<u8>)> = on_db!(db, pool => sqlx::query_as(
                "SELECT url, body FROM webhook_deliveries
                 WHERE task_id = $1 AND length(body) > 0 AND trigger <> 'started' ORDER BY id LIMIT 1",
            )
            .bind(&delivery.task_id)
            .fetch_optional(pool)
            .await)?;
            firsts.insert(delivery.task_id.clone(), first);
        }
        if let Some(Some((url, body))) = firsts.get(&delivery.task_id) {
            (delivery.url, delivery.body) = (url.clone(), body.clone());
        }
    }
    Ok(())
}

/// The delivery loop's work queue: pending deliveries, due at `next_attempt_at`.
const QUEUE: WorkQueue = WorkQueue {
    table: "webhook_deliveries",
    pending: "status = 'pending'",
    due_column: "next_attempt_at",
    columns: COLUMNS,
};

/// Claims up to `limit` due deliveries for `lease`, held by the instance `owner` (see
/// [`store::claim_due`]). Manual re-sends come with the URL and body of their task's first delivery.
pub async fn claim_due(db: &Db, limit: i64, lease: Duration, owner: &str) -> sqlx::Result<Vec<Delivery>> {
    let mut claimed = store::claim_due(db, &QUEUE, limit, lease, owner).await?;
    resolve(db, &mut claimed).await?;
    Ok(claimed)
}

/// Records an attempt and moves its delivery on, in one transaction.
pub async fn record(db: &Db, attempt: &Attempt, next: Next) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    on_tx!(&mut tx, conn => sqlx::query(
        "INSERT INTO webhook_attempts (delivery_id, attempted_at, status_code, latency_ms, error, response_excerpt)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&attempt.delivery_id)
    .bind(attempt.attempted_at)
    .bind(attempt.status_code)
    .bind(attempt.latency_ms)
    .bind(&attempt.error)
    .bind(&attempt.response_excerpt)
    .execute(conn)
    .await
    .map(|done| done.rows_affected()))?;
    let (status, retry_in) = match next {
        Next::Delivered => (DeliveryStatus::Delivered, None),
        Next::RetryIn(delay) => (DeliveryStatus::Pending, Some(delay.as_secs_f64())),
        Next::Dead => (DeliveryStatus::Dead, None),
    };
    let d = tx.dialect();
    let sql = format!(
        "UPDATE webhook_deliveries
         SET status = $2, attempts = attempts + 1, updated_at = {}, next_attempt_at = COALESCE({}, next_attempt_at),
             leased_by = NULL
         WHERE id = $1 AND status = 'pending'",
        d.now(),
        d.now_plus_secs("$3")
    );
    on_tx!(&mut tx, conn => sqlx::query(&sql)
        .bind(&attempt.delivery_id)
        .bind(status)
        .bind(retry_in)
        .execute(conn)
        .await
        .map(|done| done.rows_affected()))?;
    tx.commit().await
}

/// A page of a task's deliveries, oldest first, after the delivery `after` (a cursor), each with its
/// attempts in order (one query, grouped in one pass).
pub async fn list_for_task(
    db: &Db,
    task_id: &str,
    after: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<(Delivery, Vec<Attempt>)>> {
    let page = "SELECT id FROM webhook_deliveries WHERE task_id = $1 AND id > $2 ORDER BY id LIMIT $3";
    let sql = format!("SELECT {COLUMNS} FROM webhook_deliveries WHERE id IN ({page}) ORDER BY id");
    let after = after.unwrap_or("");
    let mut deliveries: Vec<Delivery> =
        on_db!(db, pool => sqlx::query_as(&sql).bind(task_id).bind(after).bind(limit).fetch_all(pool).await)?;
    resolve(db, &mut deliveries).await?;
    let sql = format!(
        "SELECT delivery_id, attempted_at, status_code, latency_ms, error, response_excerpt
         FROM webhook_attempts WHERE delivery_id IN ({page}) ORDER BY id"
    );
    let attempts: Vec<Attempt> =
        on_db!(db, pool => sqlx::query_as(&sql).bind(task_id).bind(after).bind(limit).fetch_all(pool).await)?;
    let mut by_delivery: HashMap<String, Vec<Attempt>> = HashMap::new();
    for attempt in attempts {
        by_delivery.entry(attempt.delivery_id.clone()).or_default().push(attempt);
    }
    Ok(deliveries
        .into_iter()
        .map(|delivery| {
            let attempts = by_delivery.remove(&delivery.id).unwrap_or_default();
            (delivery, attempts)
        })
        .collect())
}
