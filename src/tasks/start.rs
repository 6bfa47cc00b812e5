//! The start of tasks in batches: the provider accepted a task, so it becomes `running` with the
//! provider's job id and the time to look at it again. Starts that wait while another batch commits
//! go together ([`super::group`]) in one guarded multi-row `UPDATE … FROM (rows) WHERE status =
//! 'pending'`: under load one durable commit serves many submits instead of one each.
//!
//! A batch in which no task wants a `started` webhook is that one statement, committed on its own;
//! otherwise the webhooks are enqueued in the same transaction. (The engine then publishes the change
//! to the task's waiters, see [`crate::task_events`].)

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::types::Json;

use super::group::{Group, GroupSettings};
use super::{webhook_event, CallbackEvent, Task, COLUMNS};
use crate::config::BodyVersion;
use crate::files::FileStore;
use crate::store::Db;
use crate::webhooks::queue;
use crate::{on_db, on_tx};

/// One task the provider accepted.
pub struct Start {
    pub task_id: String,
    pub upstream_id: String,
    /// When to look at the job first (sooner when its deadline comes first; at once when its callback
    /// already arrived).
    pub next_poll_in: Duration,
    /// The task wants a `started` webhook (as the submitter read it).
    pub wants_started: bool,
    pub body_version: BodyVersion,
}

impl Start {
    /// `task` (as its submitter read it) accepted by the provider as `upstream_id`.
    pub fn of(task: &Task, upstream_id: &str, next_poll_in: Duration, body_version: BodyVersion) -> Start {
        Start {
            task_id: task.id.clone(),
            upstream_id: upstream_id.to_owned(),
            next_poll_in,
            wants_started: task.wants(CallbackEvent::Started),
            body_version,
        }
    }
}

/// One start as the batch's update reads it (named apart from the `tasks` columns it sets).
#[derive(Serialize)]
struct StartRow<'a> {
    s_id: &'a str,
    s_upstream_id: &'a str,
    s_delay: f64,
}

const START_COLUMNS: &[(&str, &str)] = &[("s_id", "text"), ("s_upstream_id", "text"), ("s_delay", "float8")];

/// Starts the batch's tasks (see the module): per start, in order, the task as it left it, `None` when
/// the task was no longer `pending` (cancelled meanwhile) or an earlier start of the batch took it.
pub async fn commit(db: &Db, files: &FileStore, batch: &[&Start]) -> sqlx::Result<Vec<Option<Task>>> {
    let d = db.dialect();
    // In id order, so that concurrent batches meet the rows in one order.
    let mut rows: Vec<StartRow> = Vec::with_capacity(batch.len());
    let mut order: Vec<&Start> = batch.to_vec();
    order.sort_by(|a, b| a.task_id.cmp(&b.task_id));
    for start in order {
        if rows.last().is_none_or(|row| row.s_id != start.task_id) {
            rows.push(StartRow {
                s_id: &start.task_id,
                s_upstream_id: &start.upstream_id,
                s_delay: start.next_poll_in.as_secs_f64(),
            });
        }
    }
    let sql = format!(
        "UPDATE tasks SET status = 'running', upstream_id = r.s_upstream_id, attempts = 0, updated_at = {now},
                          leased_by = NULL,
                          next_poll_at = CASE WHEN callback_at IS NOT NULL THEN {now} ELSE {next} END
         FROM {rows}
         WHERE tasks.id = r.s_id AND tasks.status = 'pending'
         RETURNING {COLUMNS}",
        now = d.now(),
        next = d.least(&d.now_plus_secs("r.s_delay"), "deadline_at"),
        rows = d.json_rows("$1", START_COLUMNS, rows.len()),
    );
    let started: Vec<Task> = if batch.iter().any(|start| start.wants_started) {
        let mut tx = db.begin().await?;
        let started: Vec<Task> = on_tx!(&mut tx, conn => sqlx::query_as(&sql).bind(Json(&rows)).fetch_all(conn).await)?;
        let wanting: HashMap<&str, BodyVersion> = batch
            .iter()
            .filter(|start| start.wants_started)
            .map(|start| (start.task_id.as_str(), start.body_version))
            .collect();
        for task in &started {
            let Some(version) = wanting.get(task.id.as_str()) else { continue };
            if let Some(event) = webhook_event(task, CallbackEvent::Started, *version, files) {
                queue::enqueue_started(&mut tx, &event).await?;
            }
        }
        tx.commit().await?;
        started
    } else {
        on_db!(db, pool => sqlx::query_as(&sql).bind(Json(&rows)).fetch_all(pool).await)?
    };
    let mut started: HashMap<String, Task> = started.into_iter().map(|task| (task.id.clone(), task)).collect();
    Ok(batch.iter().map(|start| started.remove(&start.task_id)).collect())
}

/// The start queue and its committers ([`super::group`]); a full queue makes the caller wait (the
/// provider has the job: its start must be stored). Sized like the create queue (`tasks.create_*`).
pub struct Starter {
    group: Group<Start, Option<Task>>,
    /// The next start's queue (round robin).
    next: AtomicU64,
}

impl Starter {
    /// Starts the committers on the current runtime (one on SQLite, which has one writer).
    pub fn start(db: Db, files: FileStore, settings: GroupSettings) -> Starter {
        let group = Group::with_store(db, files, settings, |db, files, batch| Box::pin(commit(db, files, batch)));
        Starter { group, next: AtomicU64::new(0) }
    }

    /// Marks the task `running`: `Some(task)` as it left it, `None` when it was no longer `pending`.
    pub async fn start_task(&self, start: Start) -> sqlx::Result<Option<Task>> {
        // No row is shared between starts: any committer will do.
        let shard = self.next.fetch_add(1, Ordering::Relaxed);
        self.group.submit_waiting(shard, Arc::new(start)).await
    }
}
