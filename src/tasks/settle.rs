//! Terminal transitions in batches. A settlement ends a task (succeeded, failed, cancelled), settles
//! its hold and enqueues its webhook; settlements that wait while another batch commits go together
//! in one transaction ([`super::group`]):
//!
//! 1. the batch's tasks are read and locked once, in id order;
//! 2. one guarded `UPDATE … FROM (rows) WHERE status IN (unfinished)` ends them all, each with its
//!    outcome and what it is charged (a task already ended, or ended by an earlier request of the
//!    batch, is left alone: `None`); then each one's webhook;
//! 3. the holds are settled together ([`ledger::settle_all`]): the accounts are locked last, once
//!    each, so a busy account's row is held only for the end of one transaction instead of once per
//!    task; then the limit counters, one update per (account, key, period) — after the accounts, the
//!    order the creates lock them in; then the commit (the engine then publishes the change to the
//!    task's waiters, see [`crate::task_events`]).
//!
//! Each settlement still happens exactly once: the guarded update decides, and the ledger's unique
//! indexes refuse a second settlement of a task (a batch that fails is settled again one by one).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::types::Json;

use super::group::{Group, GroupSettings};
use super::{webhook_event, CallbackEvent, Outcome, Task, TaskError, TaskOutput, TaskStatus, COLUMNS};
use crate::config::BodyVersion;
use crate::files::FileStore;
use crate::ledger::{self, Settlement};
use crate::limits;
use crate::on_tx;
use crate::store::{Db, Dialect};
use crate::webhooks::queue;

/// One task to end.
pub struct Ending {
    pub task_id: String,
    pub outcome: Outcome,
    /// When its `completed` webhook is first due.
    pub webhook_delay: Duration,
    pub body_version: BodyVersion,
}

/// One task's end as the batch's update reads it (named apart from the `tasks` columns it sets).
#[derive(Serialize)]
struct EndRow<'a> {
    s_id: &'a str,
    s_status: TaskStatus,
    s_output: Option<&'a TaskOutput>,
    s_error: Option<&'a TaskError>,
    s_charged: i64,
}

const END_COLUMNS: &[(&str, &str)] =
    &[("s_id", "text"), ("s_status", "text"), ("s_output", "jsonb"), ("s_error", "jsonb"), ("s_charged", "bigint")];

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
        d.json_rows("$1", &[("id", "text")], ids.len())
    );
    let rows: Vec<serde_json::Value> = ids.iter().map(|id| serde_json::json!({ "id": id })).collect();
    let found: Vec<Task> = on_tx!(&mut tx, conn => sqlx::query_as(&read).bind(Json(&rows)).fetch_all(conn).await)?;
    let tasks: HashMap<&str, &Task> = found.iter().map(|task| (task.id.as_str(), task)).collect();
    // Each unfinished task ends by the first of the batch's endings for it; the others find it ended.
    let mut rows = Vec::new();
    let mut firsts: Vec<Option<&str>> = Vec::with_capacity(batch.len());
    for ending in batch {
        let id = ending.task_id.as_str();
        let Some(before) = tasks.get(id).filter(|task| !task.status.is_terminal()) else {
            firsts.push(None);
            continue;
        };
        if rows.iter().any(|row: &EndRow| row.s_id == id) {
            firsts.push(None);
            continue;
        }
        let (status, output, error) = match &ending.outcome {
            Outcome::Succeeded(output) => (TaskStatus::Succeeded, Some(output), None),
            Outcome::Failed(error) => (TaskStatus::Failed, None, Some(error)),
            Outcome::Cancelled => (TaskStatus::Cancelled, None, None),
        };
        // A success is charged per image delivered (see [`Task::charge_for`]), anything else nothing.
        let charged = output.map_or(0, |output| before.charge_for(output.images.len()));
        rows.push(EndRow { s_id: id, s_status: status, s_output: output, s_error: error, s_charged: charged });
        firsts.push(Some(id));
    }
    // One guarded update for all of them.
    let update = format!(
        "UPDATE tasks SET status = r.s_status, output = r.s_output, error = r.s_error, charged = r.s_charged,
                          updated_at = {now}, completed_at = {now}, leased_by = NULL
         FROM {rows}
         WHERE tasks.id = r.s_id AND tasks.status IN ('queued', 'pending', 'running')
         RETURNING {COLUMNS}",
        now = d.now(),
        rows = d.json_rows("$1", END_COLUMNS, rows.len()),
    );
    let mut ended: HashMap<String, Task> = if rows.is_empty() {
        HashMap::new()
    } else {
        let ended: Vec<Task> =
            on_tx!(&mut tx, conn => sqlx::query_as(&update).bind(Json(&rows)).fetch_all(conn).await)?;
        ended.into_iter().map(|task| (task.id.clone(), task)).collect()
    };
    let mut answers = Vec::with_capacity(batch.len());
    let mut settled: Vec<Task> = Vec::new();
    // Per (account, key, day and month created): (a creation time, released, ended in flight).
    let mut ended_keys = BTreeMap::new();
    for (ending, first) in batch.iter().zip(firsts) {
        let Some(task) = first.and_then(|id| ended.remove(id)) else {
            answers.push(None);
            continue;
        };
        if let Some(key_id) = &task.key_id {
            // A `queued` task was not in flight.
            let in_flight = tasks.get(task.id.as_str()).is_none_or(|before| before.status != TaskStatus::Queued);
            let counted = ended_keys
                .entry((
                    task.account_id,
                    key_id.clone(),
                    limits::day_of(task.created_at),
                    limits::month_of(task.created_at),
                ))
                .or_insert((task.created_at, 0, 0));
            counted.1 += task.price - task.charged();
            counted.2 += i64::from(in_flight);
        }
        if let Some(event) = webhook_event(&task, CallbackEvent::Completed, ending.body_version, files) {
            queue::enqueue(&mut tx, &event, ending.webhook_delay).await?;
        }
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
    pub fn start(db: Db, files: FileStore, settings: GroupSettings) -> Settler {
        let group = Group::with_store(db, files, settings, |db, files, batch| Box::pin(commit(db, files, batch)));
        Settler { group }
    }

    /// Ends the task of `account_id` (its account's settlements go to one committer, see
    /// [`super::group`]): `Some(task)` when this call ended it, `None` when it had already ended.
    pub async fn settle(&self, account_id: i64, ending: Ending) -> sqlx::Result<Option<Task>> {
        self.group.submit_waiting(account_id as u64, Arc::new(ending)).await
    }
}
