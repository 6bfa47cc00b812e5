//! Terminal transitions in batches. A settlement ends a task (succeeded, failed, cancelled), settles
//! its hold and enqueues its webhook; settlements that wait while another batch commits go together
//! in one transaction ([`super::group`]):
//!
//! 1. the batch's tasks are read and locked once, in id order;
//! 2. each settlement, in order, is a guarded `UPDATE … WHERE status IN (unfinished)` of its task with
//!    its outcome and what it is charged (a task already ended, or ended earlier in the batch, is
//!    left alone: `None`), then its webhook;
//! 3. the holds are settled together ([`ledger::settle_all`]): the accounts are locked last, once
//!    each, so a busy account's row is held only for the end of one transaction instead of once per
//!    task; then the limit counters, one update per (account, key, period) — after the accounts, the
//!    order the creates lock them in; then, on PostgreSQL, one `NOTIFY` per settled task; the commit.
//!
//! Each settlement still happens exactly once: the guarded update decides, and the ledger's unique
//! indexes refuse a second settlement of a task (a batch that fails is settled again one by one).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sqlx::types::Json;

use super::group::{Group, GroupSettings};
use super::{webhook_event, CallbackEvent, Outcome, Task, TaskStatus, COLUMNS};
use crate::config::BodyVersion;
use crate::files::FileStore;
use crate::ledger::{self, Settlement};
use crate::limits;
use crate::on_tx;
use crate::store::{Db, Dialect, Tx};
use crate::webhooks::queue;

/// One task to end.
pub struct Ending {
    pub task_id: String,
    pub outcome: Outcome,
    /// When its `completed` webhook is first due.
    pub webhook_delay: Duration,
    pub body_version: BodyVersion,
}

/// Ends the batch's tasks in one transaction (see the module): per ending, in order, the settled task
/// when this batch ended it, `None` when it had already ended.
pub async fn commit(db: &Db, files: &FileStore, batch: &[&Ending]) -> sqlx::Result<Vec<Option<Task>>> {
    let mut tx = db.begin().await?;
    let d = tx.dialect();
    let mut ids: Vec<&str> = batch.iter().map(|ending| ending.task_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let lock = if d == Dialect::Postgres { " FOR UPDATE" } else { "" };
    let read = format!(
        "SELECT {COLUMNS} FROM tasks WHERE id IN (SELECT r.id FROM {}) ORDER BY id{lock}",
        d.json_rows("$1", &[("id", "text")])
    );
    let rows: Vec<serde_json::Value> = ids.iter().map(|id| serde_json::json!({ "id": id })).collect();
    let found: Vec<Task> = on_tx!(&mut tx, conn => sqlx::query_as(&read).bind(Json(&rows)).fetch_all(conn).await)?;
    // What each task was before this batch: a `queued` task was not in flight.
    let mut was: HashMap<String, TaskStatus> = found.iter().map(|task| (task.id.clone(), task.status)).collect();
    let mut tasks: HashMap<String, Task> = found.into_iter().map(|task| (task.id.clone(), task)).collect();
    let update = format!(
        "UPDATE tasks SET status = $2, output = $3, error = $4, charged = $5, updated_at = {now}, completed_at = {now},
                          leased_by = NULL
         WHERE id = $1 AND status IN ('queued', 'pending', 'running')
         RETURNING {COLUMNS}",
        now = d.now()
    );
    let mut answers = Vec::with_capacity(batch.len());
    let mut settled: Vec<Task> = Vec::new();
    // Per (account, key, day and month created): (a creation time, released, ended in flight).
    let mut ended_keys = BTreeMap::new();
    for ending in batch {
        let Some(before) = tasks.get(&ending.task_id).filter(|task| !task.status.is_terminal()) else {
            answers.push(None);
            continue;
        };
        let (status, output, error) = match &ending.outcome {
            Outcome::Succeeded(output) => (TaskStatus::Succeeded, Some(Json(output)), None),
            Outcome::Failed(error) => (TaskStatus::Failed, None, Some(Json(error))),
            Outcome::Cancelled => (TaskStatus::Cancelled, None, None),
        };
        // A success is charged per image delivered (see [`Task::charge_for`]), anything else nothing.
        let charged = match &ending.outcome {
            Outcome::Succeeded(output) => before.charge_for(output.images.len()),
            _ => 0,
        };
        let ended: Option<Task> = on_tx!(&mut tx, conn => sqlx::query_as(&update)
            .bind(&ending.task_id)
            .bind(status)
            .bind(output)
            .bind(error)
            .bind(charged)
            .fetch_optional(conn)
            .await)?;
        let Some(task) = ended else {
            answers.push(None);
            continue;
        };
        if let Some(key_id) = &task.key_id {
            let in_flight = was.remove(&task.id) != Some(TaskStatus::Queued);
            let counted = ended_keys
                .entry((
                    task.account_id,
                    key_id.clone(),
                    limits::day_of(task.created_at),
                    limits::month_of(task.created_at),
                ))
                .or_insert((task.created_at, 0, 0));
            counted.1 += task.price - charged;
            counted.2 += i64::from(in_flight);
        }
        if let Some(event) = webhook_event(&task, CallbackEvent::Completed, ending.body_version, files) {
            queue::enqueue(&mut tx, &event, ending.webhook_delay).await?;
        }
        tasks.insert(task.id.clone(), task.clone());
        answers.push(Some(settled.len()));
        settled.push(task);
    }
    let settlements: Vec<Settlement> = settled
        .iter()
        .map(|task| {
            let delivered = task.output.as_ref().map_or(0, |output| output.images.len());
            Settlement {
                account_id: task.account_id,
                task_id: &task.id,
                held: task.price,
                charged: task.charged(),
                reason: format!("{delivered} of {} images delivered", task.input.images()),
            }
        })
        .collect();
    ledger::settle_all(&mut tx, &settlements).await?;
    // After the accounts, like the creates: rows are always locked account first, then its counters.
    for ((account_id, key_id, _, _), (created_at, released, in_flight)) in &ended_keys {
        limits::record_settle(&mut tx, *account_id, key_id, *created_at, *released, *in_flight).await?;
    }
    if d == Dialect::Postgres && !settled.is_empty() {
        // Waiters on any replica hear of the change once it is committed (see `task_events`).
        let ids: Vec<&str> = settled.iter().map(|task| task.id.as_str()).collect();
        if let Tx::Pg(tx) = &mut tx {
            sqlx::query("SELECT pg_notify($1, id) FROM UNNEST($2::text[]) AS id")
                .bind(crate::task_events::CHANNEL)
                .bind(&ids)
                .execute(&mut **tx)
                .await?;
        }
    }
    tx.commit().await?;
    let mut settled: Vec<Option<Task>> = settled.into_iter().map(Some).collect();
    Ok(answers.into_iter().map(|index| index.and_then(|i| settled[i].take())).collect())
}

/// The settlement queue and its committers ([`super::group`]); a full queue makes the caller wait.
/// Sized like the create queue (`tasks.create_*`).
pub struct Settler {
    group: Group<Ending, Option<Task>>,
}

impl Settler {
    /// Starts the committers on the current runtime (one on SQLite, which has one writer).
    pub fn start(db: Db, files: FileStore, mut settings: GroupSettings) -> Settler {
        if matches!(db, Db::Sqlite(_)) {
            settings.committers = 1;
        }
        let group = Group::start(
            settings,
            Arc::new(move |batch: Vec<Arc<Ending>>| {
                let (db, files) = (db.clone(), files.clone());
                Box::pin(async move {
                    let batch: Vec<&Ending> = batch.iter().map(|ending| &**ending).collect();
                    commit(&db, &files, &batch).await
                })
            }),
        );
        Settler { group }
    }

    /// Ends the task: `Some(task)` when this call ended it, `None` when it had already ended.
    pub async fn settle(&self, ending: Ending) -> sqlx::Result<Option<Task>> {
        self.group.submit_waiting(Arc::new(ending)).await
    }
}
