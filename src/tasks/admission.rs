//! The admission queue (issue 20): a task whose key's or account's `max_in_flight` is full, or whose
//! provider's submit window (`providers.<id>.max_submits`) is, waits `queued` with its credits held.
//! The queue is the `tasks` table itself, so every replica dispatches from it: each dispatch is one
//! transaction that locks the account (as the hold does), checks the in-flight limits and takes a
//! slot of the provider's window (under a lock per provider: `pg_advisory_xact_lock` on PostgreSQL,
//! the one writer on SQLite), then makes the task `pending`, due at once.
//!
//! Fairness: each pass takes the oldest queued task of every account with queued tasks, accounts in
//! the order of their last dispatch (`accounts.last_dispatched_at`, oldest first), so a burst of one
//! account does not starve the others.
//!
//! A window's slots live in `provider_submits`: one row per submit, reserved at admission and
//! stamped with the time the provider answered the submit, so the window counts from no earlier
//! than when the provider saw it. Rows older than the window are deleted as slots are taken.

use std::time::Duration;

use chrono::Utc;

use super::{Task, TaskStatus, COLUMNS};
use crate::config::SubmitWindow;
use crate::limits;
use crate::on_tx;
use crate::store::{Db, Dialect, Tx};

/// The current time, to the microsecond even inside a long PostgreSQL transaction.
fn clock(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "clock_timestamp()",
        Dialect::Sqlite => dialect.now(),
    }
}

/// `window` ago.
fn window_start(dialect: Dialect, window: Duration) -> String {
    match dialect {
        Dialect::Postgres => format!("clock_timestamp() - make_interval(secs => {})", window.as_secs_f64()),
        Dialect::Sqlite => dialect.now_plus_secs(&format!("-{}", window.as_secs_f64())),
    }
}

/// Serialises the provider's window among concurrent transactions (until the transaction ends).
async fn lock_window(tx: &mut Tx, provider: &str) -> sqlx::Result<()> {
    if let Tx::Pg(tx) = tx {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('aio_provider_window:' || $1))")
            .bind(provider)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Locks `provider`'s window until the transaction ends, drops the submits older than it and counts
/// its free slots.
pub async fn free_slots(tx: &mut Tx, provider: &str, window: SubmitWindow) -> sqlx::Result<i64> {
    lock_window(tx, provider).await?;
    let start = window_start(tx.dialect(), window.window);
    on_tx!(tx, conn => sqlx::query(&format!(
        "DELETE FROM provider_submits WHERE provider = $1 AND submitted_at <= {start}"
    ))
    .bind(provider)
    .execute(conn)
    .await
    .map(|done| done.rows_affected()))?;
    let taken: i64 = on_tx!(tx, conn => sqlx::query_scalar("SELECT count(*) FROM provider_submits WHERE provider = $1")
        .bind(provider)
        .fetch_one(conn)
        .await)?;
    Ok(i64::from(window.max).saturating_sub(taken))
}

/// Records a slot of `provider`'s window taken for the task (after [`free_slots`] said there is one).
/// `used`: the submit happens now (else the slot is reserved for its coming submit).
pub async fn reserve_slot(tx: &mut Tx, provider: &str, task_id: &str, used: bool) -> sqlx::Result<()> {
    let sql = format!(
        "INSERT INTO provider_submits (provider, task_id, used, submitted_at) VALUES ($1, $2, $3, {})",
        clock(tx.dialect())
    );
    on_tx!(tx, conn => sqlx::query(&sql)
        .bind(provider)
        .bind(task_id)
        .bind(used)
        .execute(conn)
        .await
        .map(|done| done.rows_affected()))?;
    Ok(())
}

/// Takes a slot of `provider`'s window for the task: `false` when the window is full (nothing taken).
/// `used`: the submit happens now (else the slot is reserved for its coming submit).
pub async fn take_slot(
    tx: &mut Tx,
    provider: &str,
    task_id: &str,
    window: SubmitWindow,
    used: bool,
) -> sqlx::Result<bool> {
    if free_slots(tx, provider, window).await? <= 0 {
        return Ok(false);
    }
    reserve_slot(tx, provider, task_id, used).await?;
    Ok(true)
}

/// Before a submit of the task to a provider with a window: uses the slot reserved at admission, or
/// takes a new one (a retry, another route). `false`: the window is full; try later.
pub async fn slot_for_submit(db: &Db, provider: &str, task_id: &str, window: SubmitWindow) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let d = tx.dialect();
    let reserved = on_tx!(&mut tx, conn => sqlx::query(&format!(
        "UPDATE provider_submits SET used = TRUE, submitted_at = {}
         WHERE provider = $1 AND task_id = $2 AND NOT used",
        clock(d)
    ))
    .bind(provider)
    .bind(task_id)
    .execute(conn)
    .await
    .map(|done| done.rows_affected()))?;
    let slot = reserved > 0 || take_slot(&mut tx, provider, task_id, window, true).await?;
    tx.commit().await?;
    Ok(slot)
}

/// After a submit: its slot counts from now, when the provider has certainly seen it.
pub async fn submitted(db: &Db, provider: &str, task_id: &str) -> sqlx::Result<()> {
    let sql = format!(
        "UPDATE provider_submits SET submitted_at = {} WHERE provider = $1 AND task_id = $2 AND used",
        clock(db.dialect())
    );
    crate::on_db!(db, pool => sqlx::query(&sql).bind(provider).bind(task_id).execute(pool).await.map(|_| ()))
}

/// Whether tasks for `provider` wait `queued` (a create for a provider with a window queues behind them).
pub async fn provider_queued(tx: &mut Tx, provider: &str) -> sqlx::Result<bool> {
    let queued: Option<i32> = on_tx!(tx, conn => sqlx::query_scalar(
        "SELECT 1 FROM tasks WHERE status = 'queued' AND provider = $1 LIMIT 1",
    )
    .bind(provider)
    .fetch_optional(conn)
    .await)?;
    Ok(queued.is_some())
}

/// 1-based place of each queued task among its account's queued tasks (oldest first, the order its
/// account's tasks are dispatched in); `None` for the others.
pub async fn fill_positions(db: &Db, tasks: &mut [Task]) -> sqlx::Result<()> {
    for task in tasks.iter_mut().filter(|task| task.status == TaskStatus::Queued) {
        let position: i64 = crate::on_db!(db, pool => sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE account_id = $1 AND status = 'queued' AND id <= $2",
        )
        .bind(task.account_id)
        .bind(&task.id)
        .fetch_one(pool)
        .await)?;
        task.queue_position = (position > 0).then_some(position);
    }
    Ok(())
}

/// The head of one account's queue.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Head {
    pub id: String,
    pub account_id: i64,
    pub key_id: Option<String>,
    pub provider: String,
}

/// The oldest queued task of each account (at most `limit` accounts), accounts in the order of their
/// last dispatch: one round of the round robin.
pub async fn heads(db: &Db, limit: i64) -> sqlx::Result<Vec<Head>> {
    crate::on_db!(db, pool => sqlx::query_as(
        "SELECT t.id, t.account_id, t.key_id, t.provider
         FROM tasks t JOIN accounts a ON a.id = t.account_id
         WHERE t.status = 'queued'
           AND t.id = (SELECT min(q.id) FROM tasks q WHERE q.account_id = t.account_id AND q.status = 'queued')
         ORDER BY a.last_dispatched_at IS NOT NULL, a.last_dispatched_at, t.id
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await)
}

/// What became of one dispatch attempt.
pub enum Dispatch {
    /// Now `pending`, due at once.
    Dispatched(Box<Task>),
    /// The key's or account's `max_in_flight` is still full.
    InFlightFull,
    /// The provider's window is full.
    WindowFull,
    /// No longer queued (cancelled, timed out, dispatched by another replica).
    Gone,
}

/// Tries to dispatch one queued task in one transaction (see the module's comment). `deadline`: the
/// task's deadline counts afresh from its dispatch.
pub async fn dispatch(
    db: &Db,
    head: &Head,
    window: Option<SubmitWindow>,
    deadline: Duration,
) -> sqlx::Result<Dispatch> {
    let mut tx = db.begin().await?;
    let d = tx.dialect();
    // The task's row, then the account's, in the order a settlement locks them.
    let lock = if d == Dialect::Postgres { " FOR UPDATE" } else { "" };
    let status: Option<String> = on_tx!(&mut tx, conn => sqlx::query_scalar(&format!(
        "SELECT status FROM tasks WHERE id = $1{lock}"
    ))
    .bind(&head.id)
    .fetch_optional(conn)
    .await)?;
    if status.as_deref() != Some("queued") {
        return Ok(Dispatch::Gone);
    }
    on_tx!(&mut tx, conn => sqlx::query_scalar::<_, i64>(&format!("SELECT id FROM accounts WHERE id = $1{lock}"))
        .bind(head.account_id)
        .fetch_optional(conn)
        .await)?;
    if let Some(key_id) = &head.key_id {
        let state = limits::load(&mut tx, head.account_id, key_id, Utc::now()).await?;
        if !state.has_room() {
            return Ok(Dispatch::InFlightFull);
        }
    }
    if let Some(window) = window {
        if !take_slot(&mut tx, &head.provider, &head.id, window, false).await? {
            return Ok(Dispatch::WindowFull);
        }
    }
    let sql = format!(
        "UPDATE tasks SET status = 'pending', next_poll_at = {now}, leased_by = NULL, updated_at = {now},
                          deadline_at = {deadline}
         WHERE id = $1 AND status = 'queued'
         RETURNING {COLUMNS}",
        now = d.now(),
        deadline = d.now_plus_secs("$2"),
    );
    let task: Option<Task> = on_tx!(&mut tx, conn => sqlx::query_as(&sql)
        .bind(&head.id)
        .bind(deadline.as_secs_f64())
        .fetch_optional(conn)
        .await)?;
    let Some(task) = task else {
        return Ok(Dispatch::Gone);
    };
    if let Some(key_id) = &head.key_id {
        limits::record_dispatch(&mut tx, head.account_id, key_id).await?;
    }
    on_tx!(&mut tx, conn => sqlx::query(&format!("UPDATE accounts SET last_dispatched_at = {} WHERE id = $1", clock(d)))
        .bind(head.account_id)
        .execute(conn)
        .await
        .map(|done| done.rows_affected()))?;
    tx.commit().await?;
    Ok(Dispatch::Dispatched(Box::new(task)))
}

/// Queued tasks waiting longer than `max_queue` (at most `limit`), to fail with `timeout`.
pub async fn expired(db: &Db, max_queue: Duration, limit: i64) -> sqlx::Result<Vec<Task>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks WHERE status = 'queued' AND created_at <= {} ORDER BY id LIMIT $1",
        db.dialect().now_plus_secs(&format!("-{}", max_queue.as_secs_f64()))
    );
    crate::on_db!(db, pool => sqlx::query_as(&sql).bind(limit).fetch_all(pool).await)
}

/// Queued tasks in the database (all accounts), for the `aio_tasks_queued` gauge.
pub async fn depth(db: &Db) -> sqlx::Result<i64> {
    crate::on_db!(db, pool => sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'queued'")
        .fetch_one(pool)
        .await)
}
