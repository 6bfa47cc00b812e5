//! The credits ledger. Every change of an account's balance goes through here, in the caller's
//! transaction, as one `UPDATE accounts` plus one appended ledger row, so that for every account
//! `balance == sum(ledger.amount)` and `held == holds not yet settled`.
//!
//! A task is held once (on create) and then captured (success) or released (failure) once. The
//! callers guarantee "once" with guarded task transitions; the unique indexes on `ledger (task_id, …)`
//! make the database refuse a second settlement even if a caller got it wrong.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::types::Json;

use crate::audit::{self, Action, Actor, Target};
use crate::error::Error;
use crate::store::{Db, Tx};
use crate::{on_db, on_tx};

/// The largest manual change in one go, and the largest starting balance of a new account.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;
const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Held { balance_after: i64 },
    Insufficient { available: i64 },
}

/// Reserves `price` for `task_id`: the balance drops by the price, `held` grows by it. Never lets the
/// balance go below zero; concurrent holds on one account serialise on its row.
pub async fn hold(tx: &mut Tx, account_id: i64, task_id: &str, price: i64) -> sqlx::Result<Hold> {
    let updated: Option<(i64,)> = on_tx!(tx, conn => sqlx::query_as(
        "UPDATE accounts SET balance = balance - $2, held = held + $2
         WHERE id = $1 AND balance >= $2 RETURNING balance",
    )
    .bind(account_id)
    .bind(price)
    .fetch_optional(conn)
    .await)?;
    let Some((balance_after,)) = updated else {
        let (available,): (i64,) = on_tx!(tx, conn => sqlx::query_as("SELECT balance FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_one(conn)
            .await)?;
        return Ok(Hold::Insufficient { available });
    };
    append(tx, account_id, EntryKind::Hold, -price, Some(task_id), balance_after, None).await?;
    Ok(Hold::Held { balance_after })
}

/// One task's settlement: of its hold of `held` credits, `charged` (capped to `0..=held`) is captured
/// and the rest goes back to the balance.
#[derive(Debug, Clone)]
pub struct Settlement<'a> {
    pub account_id: i64,
    pub task_id: &'a str,
    pub held: i64,
    pub charged: i64,
    /// Why only a part was charged (e.g. "3 of 4 images delivered").
    pub reason: String,
}

/// A ledger row as a batch writes it.
#[derive(Debug, Serialize)]
struct Row<'a> {
    account_id: i64,
    kind: EntryKind,
    amount: i64,
    task_id: &'a str,
    balance_after: i64,
    reason: Option<&'a str>,
}

/// Settles tasks' holds once each, in the caller's transaction (the tasks' guarded terminal
/// transitions). All of a hold charged is one `capture`, nothing charged one `release`; a part is a
/// `capture` of that part plus a `release` of the rest with its reason. The accounts are locked last
/// and once each (in id order, like the create batches), so a busy account's row is held only for
/// the end of the transaction; the ledger rows go in one insert. The ledger's unique indexes refuse
/// any second settlement of a task.
pub async fn settle_all(tx: &mut Tx, settlements: &[Settlement<'_>]) -> sqlx::Result<()> {
    if settlements.is_empty() {
        return Ok(());
    }
    let mut account_ids: Vec<i64> = settlements.iter().map(|s| s.account_id).collect();
    account_ids.sort_unstable();
    account_ids.dedup();
    let mut balances: HashMap<i64, (i64, i64)> =
        lock_balances(tx, &account_ids).await?.into_iter().map(|(id, balance)| (id, (balance, 0))).collect();
    let mut rows = Vec::with_capacity(settlements.len());
    for s in settlements {
        let Some((balance, settled)) = balances.get_mut(&s.account_id) else {
            return Err(sqlx::Error::RowNotFound);
        };
        let charged = s.charged.clamp(0, s.held);
        *settled += s.held;
        if charged > 0 {
            rows.push(Row {
                account_id: s.account_id,
                kind: EntryKind::Capture,
                amount: 0,
                task_id: s.task_id,
                balance_after: *balance,
                reason: None,
            });
        }
        let rest = s.held - charged;
        if rest > 0 || charged == 0 {
            *balance += rest;
            let reason = (charged > 0).then_some(s.reason.as_str());
            rows.push(Row {
                account_id: s.account_id,
                kind: EntryKind::Release,
                amount: rest,
                task_id: s.task_id,
                balance_after: *balance,
                reason,
            });
        }
    }
    let d = tx.dialect();
    let changes: Vec<serde_json::Value> = balances
        .iter()
        .map(|(id, (balance, settled))| serde_json::json!({"id": id, "balance": balance, "settled": settled}))
        .collect();
    let update = format!(
        "UPDATE accounts SET balance = r.balance, held = accounts.held - r.settled FROM {} WHERE accounts.id = r.id",
        d.json_rows("$1", &[("id", "bigint"), ("balance", "bigint"), ("settled", "bigint")], changes.len())
    );
    on_tx!(tx, conn => sqlx::query(&update).bind(Json(&changes)).execute(conn).await.map(|done| done.rows_affected()))?;
    let columns = [
        ("account_id", "bigint"),
        ("kind", "text"),
        ("amount", "bigint"),
        ("task_id", "text"),
        ("balance_after", "bigint"),
        ("reason", "text"),
    ];
    let insert = format!(
        "INSERT INTO ledger (account_id, kind, amount, task_id, balance_after, reason)
         SELECT r.account_id, r.kind, r.amount, r.task_id, r.balance_after, r.reason FROM {}",
        d.json_rows("$1", &columns, rows.len())
    );
    on_tx!(tx, conn => sqlx::query(&insert).bind(Json(&rows)).execute(conn).await.map(|done| done.rows_affected()))?;
    Ok(())
}

/// Locks the rows of `account_ids` (sorted, no duplicates: every batch locks in id order, so two
/// batches never wait on each other in a circle) and returns their balances: `(id, balance)`. On SQLite
/// the transaction's write lock already serialises everything.
pub async fn lock_balances(tx: &mut Tx, account_ids: &[i64]) -> sqlx::Result<Vec<(i64, i64)>> {
    match tx {
        Tx::Pg(tx) => {
            sqlx::query_as("SELECT id, balance FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind(account_ids)
                .fetch_all(&mut **tx)
                .await
        }
        Tx::Sqlite(tx) => {
            sqlx::query_as("SELECT id, balance FROM accounts WHERE id IN (SELECT value FROM json_each($1))")
                .bind(Json(account_ids))
                .fetch_all(&mut **tx)
                .await
        }
    }
}

/// One hold of a batch of creates, decided in memory against the account's locked row
/// ([`crate::tasks::batch`]): the balance after it, in the order the batch decided.
#[derive(Debug, Serialize)]
pub struct BatchHold<'a> {
    pub account_id: i64,
    pub task_id: &'a str,
    pub price: i64,
    pub balance_after: i64,
}

/// Writes a batch's holds in the caller's transaction, whose account rows are locked and whose
/// decisions kept every balance ≥ 0: the ledger rows in one insert (in decision order), then one
/// update of all the batch's accounts, each by the sum of its holds.
pub async fn hold_all(tx: &mut Tx, holds: &[BatchHold<'_>]) -> sqlx::Result<()> {
    let d = tx.dialect();
    let columns = [("account_id", "bigint"), ("task_id", "text"), ("price", "bigint"), ("balance_after", "bigint")];
    let rows = d.json_rows("$1", &columns, holds.len());
    let insert = format!(
        "INSERT INTO ledger (account_id, kind, amount, task_id, balance_after)
         SELECT r.account_id, 'hold', -r.price, r.task_id, r.balance_after FROM {rows}"
    );
    on_tx!(tx, conn => sqlx::query(&insert).bind(Json(holds)).execute(conn).await.map(|done| done.rows_affected()))?;
    let update = format!(
        "UPDATE accounts SET balance = accounts.balance - s.total, held = accounts.held + s.total
         FROM (SELECT r.account_id, CAST(SUM(r.price) AS BIGINT) AS total FROM {rows} GROUP BY r.account_id) AS s
         WHERE accounts.id = s.account_id"
    );
    on_tx!(tx, conn => sqlx::query(&update).bind(Json(holds)).execute(conn).await.map(|done| done.rows_affected()))?;
    Ok(())
}

/// Adds credits to an account; returns the new balance.
pub async fn grant(tx: &mut Tx, account_id: i64, amount: i64, reason: &str) -> sqlx::Result<i64> {
    let (balance_after,): (i64,) = on_tx!(tx, conn => sqlx::query_as("UPDATE accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance")
            .bind(account_id)
            .bind(amount)
            .fetch_one(conn)
            .await)?;
    append(tx, account_id, EntryKind::Grant, amount, None, balance_after, Some(reason)).await?;
    Ok(balance_after)
}

/// An admin correction of ±`amount` with its reason. Never takes the balance below zero: `None` (and
/// nothing written) when it would.
pub async fn adjust(tx: &mut Tx, account_id: i64, amount: i64, reason: &str) -> sqlx::Result<Option<i64>> {
    let updated: Option<(i64,)> = on_tx!(tx, conn => sqlx::query_as(
        "UPDATE accounts SET balance = balance + $2 WHERE id = $1 AND balance + $2 >= 0 RETURNING balance",
    )
    .bind(account_id)
    .bind(amount)
    .fetch_optional(conn)
    .await)?;
    let Some((balance_after,)) = updated else {
        return Ok(None);
    };
    append(tx, account_id, EntryKind::Adjust, amount, None, balance_after, Some(reason)).await?;
    Ok(Some(balance_after))
}

/// A manual change by an operator (admin API or CLI): a grant when `amount` is positive, an adjustment
/// when negative (refused when it would take the balance below 0), with its reason, in one transaction
/// with its audit log entry (`credits.grant` or `credits.adjust` by `actor`). Returns its ledger row.
pub async fn change(db: &Db, actor: &Actor, account_id: i64, amount: i64, reason: &str) -> Result<Entry, Error> {
    let mut tx = db.begin().await?;
    // On an error the transaction is dropped: nothing was written, to the ledger or the audit log.
    let entry = change_in(&mut tx, account_id, amount, reason).await?;
    let action = if amount > 0 { Action::CreditsGrant } else { Action::CreditsAdjust };
    audit::credits_in(&mut tx, actor, action, Target::account(account_id), &entry).await?;
    tx.commit().await?;
    Ok(entry)
}

/// [`change`] inside the caller's transaction, for changes that must commit together with something
/// else (a paid order, a redeemed code, a refund). Returns its ledger row; the caller records it in
/// the audit log ([`audit::credits_in`]).
pub async fn change_in(tx: &mut Tx, account_id: i64, amount: i64, reason: &str) -> Result<Entry, Error> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        return Err(Error::Invalid(format!("`reason`: 1 to {MAX_REASON_CHARS} characters.")));
    }
    if amount == 0 || amount.unsigned_abs() > MAX_AMOUNT.unsigned_abs() {
        return Err(Error::Invalid(format!("`amount`: not 0, and at most {MAX_AMOUNT} either way.")));
    }
    let before: Option<(i64, i64)> = on_tx!(tx, conn => sqlx::query_as("SELECT balance, held FROM accounts WHERE id = $1")
        .bind(account_id)
        .fetch_optional(conn)
        .await)?;
    let Some((balance, held)) = before else {
        return Err(Error::not_found("Account"));
    };
    if amount > 0 {
        grant(tx, account_id, amount, reason).await?;
    } else if adjust(tx, account_id, amount, reason).await?.is_none() {
        return Err(Error::Conflict(format!(
            "Taking {} credits would leave a negative balance: the account has {balance} (and {held} on hold, \
             which cannot be taken).",
            amount.unsigned_abs(),
        )));
    }
    Ok(last(tx, account_id).await?)
}

async fn append(
    tx: &mut Tx,
    account_id: i64,
    kind: EntryKind,
    amount: i64,
    task_id: Option<&str>,
    balance_after: i64,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    on_tx!(tx, conn => sqlx::query(
        "INSERT INTO ledger (account_id, kind, amount, task_id, balance_after, reason) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(account_id)
    .bind(kind)
    .bind(amount)
    .bind(task_id)
    .bind(balance_after)
    .bind(reason)
    .execute(conn)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(())
}

/// What a ledger row records (the `kind` column's CHECK lists the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// Credits added (bootstrap, admin, purchase, redemption code).
    Grant,
    /// A task's price set aside when it was created (negative).
    Hold,
    /// The task succeeded: its hold is kept (0).
    Capture,
    /// The task failed or was cancelled: its hold comes back (positive).
    Release,
    /// An admin's correction.
    Adjust,
}

impl EntryKind {
    /// As stored and serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Hold => "hold",
            EntryKind::Capture => "capture",
            EntryKind::Release => "release",
            EntryKind::Adjust => "adjust",
        }
    }
}

/// One ledger row. `reason` is set on grants and adjustments.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Entry {
    pub id: i64,
    pub kind: EntryKind,
    pub amount: i64,
    #[schema(required = true)]
    pub task_id: Option<String>,
    pub balance_after: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<String>,
    /// On a `capture` row: the credits it spent (absent once its task is purged by retention). Its `amount` is 0 because the
    /// task's `hold` already took them from the balance; the capture only settles the hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    #[sqlx(default)]
    pub captured: Option<i64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy)]
pub struct Balance {
    pub balance: i64,
    pub held: i64,
}

pub async fn balance(db: &Db, account_id: i64) -> sqlx::Result<Option<Balance>> {
    let row: Option<(i64, i64)> = on_db!(db, pool => sqlx::query_as("SELECT balance, held FROM accounts WHERE id = $1")
        .bind(account_id)
        .fetch_optional(pool)
        .await)?;
    Ok(row.map(|(balance, held)| Balance { balance, held }))
}

/// The usage filters of the dashboard, over tasks and the ledger: a creation-time range `[from, to)`
/// and a model or sub-model id.
#[derive(Debug, Default, Clone, Copy)]
pub struct UsageFilter<'a> {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub model: Option<&'a str>,
}

impl<'a> UsageFilter<'a> {
    /// The filter of a request's `from`, `to` and `model`; `from` after `to` is refused.
    pub fn new(
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        model: Option<&'a str>,
    ) -> Result<UsageFilter<'a>, Error> {
        if let (Some(from), Some(to)) = (from, to) {
            if from > to {
                return Err(Error::Invalid("`from`: must not be after `to`.".into()));
            }
        }
        Ok(UsageFilter { from, to, model })
    }

    /// Binds `from`, `to` and `model`, in that order, as the query's next three parameters.
    pub fn bind_to<DB, O>(
        &self,
        query: sqlx::query::QueryAs<'a, DB, O, <DB as sqlx::Database>::Arguments<'a>>,
    ) -> sqlx::query::QueryAs<'a, DB, O, <DB as sqlx::Database>::Arguments<'a>>
    where
        DB: sqlx::Database,
        Option<DateTime<Utc>>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
        Option<&'a str>: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    {
        query.bind(self.from).bind(self.to).bind(self.model)
    }
}

/// A page cursor is the id of the last entry of the previous page (see [`crate::paging`]).
pub fn cursor(text: &str) -> Option<i64> {
    text.parse::<i64>().ok().filter(|id| *id > 0)
}

/// The columns of an [`Entry`] (a capture with what it spent: what its task was charged — its price on
/// tasks settled before per-image charging) and the tables they come from, `ledger l` and its task `t`.
const ENTRIES: &str = "l.id, l.kind, l.amount, l.task_id, l.balance_after, l.reason, l.created_at,
        CASE WHEN l.kind = 'capture' THEN COALESCE(t.charged, t.price) END AS captured
    FROM ledger l LEFT JOIN tasks t ON t.id = l.task_id";

/// An account's entries, newest first, optionally only older than `before` (an entry id), within
/// `[from, to)`, and only those of tasks of `model` (a model or sub-model id; other entries drop out).
pub async fn page(
    db: &Db,
    account_id: i64,
    filter: &UsageFilter<'_>,
    before: Option<i64>,
    limit: i64,
) -> sqlx::Result<Vec<Entry>> {
    // No casts on the optional parameters: sqlx tells PostgreSQL their types, SQLite needs none.
    let sql = format!(
        "SELECT {ENTRIES}
         WHERE l.account_id = $1 AND ($2 IS NULL OR l.id < $2)
           AND ($3 IS NULL OR l.created_at >= $3) AND ($4 IS NULL OR l.created_at < $4)
           AND ($5 IS NULL OR t.model = $5 OR t.sub_model = $5)
         ORDER BY l.id DESC LIMIT $6"
    );
    on_db!(db, pool => filter.bind_to(sqlx::query_as(&sql).bind(account_id).bind(before)).bind(limit).fetch_all(pool).await)
}

/// The newest entry of an account, in the caller's transaction (which holds the account's row).
pub async fn last(tx: &mut Tx, account_id: i64) -> sqlx::Result<Entry> {
    on_tx!(tx, conn => sqlx::query_as(
        "SELECT id, kind, amount, task_id, balance_after, reason, created_at
         FROM ledger WHERE account_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(account_id)
    .fetch_one(conn)
    .await)
}

/// The newest `limit` entries of an account.
pub async fn recent(db: &Db, account_id: i64, limit: i64) -> sqlx::Result<Vec<Entry>> {
    let sql = format!("SELECT {ENTRIES} WHERE l.account_id = $1 ORDER BY l.id DESC LIMIT $2");
    on_db!(db, pool => sqlx::query_as(&sql)
    .bind(account_id)
    .bind(limit)
    .fetch_all(pool)
    .await)
}
