//! Task changes as they happen, for whoever waits on a task (the live events stream, the OpenAI
//! route's synchronous wait). An event is only "task X changed": the task row stays the one truth,
//! and a waiter reads it again, so a lost or duplicated event costs one read, never a wrong answer.
//!
//! On PostgreSQL a change is a `NOTIFY` on [`CHANNEL`], sent after its commit (see [`notify`]), so a
//! waiter on one replica hears the engine of another; each process that serves the API `LISTEN`s once
//! and fans the ids out in process. On SQLite (one process) the change goes straight to the
//! in-process fan-out.

use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::monitoring;
use crate::store::Db;
use crate::tasks::{self, Task};

/// The PostgreSQL channel; the payload is the task id.
pub const CHANNEL: &str = "aio_task_events";

/// Ids buffered per waiter; one that falls further behind re-reads its task (see [`Waiter::changed`]).
const BUFFER: usize = 1024;

/// Events waiting to be sent, at most (beyond, they are dropped: waiters re-read their task).
const OUTBOX: usize = 8192;

/// Events sent in one statement, at most.
const NOTIFY_BATCH: usize = 256;

/// Wait before listening again after the listening connection failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// A waiter reads its task again at least this often, whatever it heard: the fallback for a
/// notification lost with a crashed process.
pub const RECHECK: Duration = Duration::from_secs(2);

pub struct TaskEvents {
    db: Db,
    sender: broadcast::Sender<String>,
    /// On PostgreSQL: ids to notify, sent by [`TaskEvents::run`] (bounded; see [`TaskEvents::publish`]).
    outbox: mpsc::Sender<String>,
    outbox_receiver: Mutex<Option<mpsc::Receiver<String>>>,
}

impl TaskEvents {
    pub fn new(db: Db) -> TaskEvents {
        let (outbox, receiver) = mpsc::channel(OUTBOX);
        TaskEvents { db, sender: broadcast::channel(BUFFER).0, outbox, outbox_receiver: Mutex::new(Some(receiver)) }
    }

    /// Task `task_id` changed (it was started, dispatched or settled; call it once the change is
    /// committed). Best effort and without waiting: a waiter also re-reads its task every [`RECHECK`],
    /// so an event lost in a crash, or dropped because [`OUTBOX`] events wait already, only delays it.
    /// On PostgreSQL the id goes to the outbox that [`TaskEvents::run`] sends (see [`notify`]).
    pub fn publish(&self, task_id: &str) {
        match &self.db {
            Db::Pg(_) => {
                if self.outbox.try_send(task_id.to_owned()).is_err() {
                    monitoring::task_event("dropped");
                    return;
                }
            }
            Db::Sqlite(_) => {
                // No receiver is not an error: nobody is waiting.
                let _ = self.sender.send(task_id.to_owned());
            }
        }
        monitoring::task_event("published");
    }

    /// Starts waiting for changes of `task_id`. Subscribe before reading the task, so that no change
    /// between the read and the wait is missed.
    pub fn waiter(&self, task_id: &str) -> Waiter {
        Waiter { task_id: task_id.to_owned(), receiver: self.sender.subscribe() }
    }

    /// The task once it has ended, or as it is at `until`; `None` if the account has no such task.
    pub async fn wait_until_ended(
        &self,
        account_id: i64,
        task_id: &str,
        until: tokio::time::Instant,
    ) -> sqlx::Result<Option<Task>> {
        let mut waiter = self.waiter(task_id);
        loop {
            let Some(task) = tasks::get(&self.db, account_id, task_id).await? else { return Ok(None) };
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if task.status.is_terminal() || left.is_zero() {
                return Ok(Some(task));
            }
            waiter.changed(left.min(RECHECK)).await;
        }
    }

    /// On PostgreSQL, until `shutdown`: sends the outbox's events ([`notify`], whatever waits at once
    /// in one statement), and when this process has waiters (`listen`: it serves the API), `LISTEN`s,
    /// passing every task id heard to them (a failed connection is opened again). On SQLite events go
    /// straight to the waiters.
    pub async fn run(&self, listen: bool, shutdown: CancellationToken) {
        let Db::Pg(pool) = &self.db else { return };
        let outbox = self.outbox_receiver.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        let Some(mut outbox) = outbox else { return };
        let send = async {
            let mut ids = Vec::new();
            while outbox.recv_many(&mut ids, NOTIFY_BATCH).await > 0 {
                let batch: Vec<&str> = ids.iter().map(String::as_str).collect();
                notify(pool, &batch).await;
                ids.clear();
            }
        };
        let listening = async {
            match listen {
                true => self.listen(pool, &shutdown).await,
                false => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = send => {}
            _ = listening => {}
        }
    }

    async fn listen(&self, pool: &PgPool, shutdown: &CancellationToken) {
        loop {
            let listened = async {
                let mut listener = PgListener::connect_with(pool).await?;
                listener.listen(CHANNEL).await?;
                tracing::info!(channel = CHANNEL, "listening for task events");
                loop {
                    // `None`: the connection was lost (and is re-opened by the next call); changes in
                    // between were not heard, so every waiter looks at its task again.
                    match listener.try_recv().await? {
                        Some(notification) => {
                            monitoring::task_event("received");
                            let _ = self.sender.send(notification.payload().to_owned());
                        }
                        None => {
                            monitoring::task_event("reconnected");
                            let _ = self.sender.send(String::new());
                        }
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = listened => {
                    if let Err(error) = result {
                        tracing::warn!(error = %error, "listening for task events failed; listening again");
                        monitoring::task_event("listen_failed");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            }
            // Changes while nobody listened: every waiter looks again.
            let _ = self.sender.send(String::new());
        }
    }
}

/// Waits for changes of one task.
pub struct Waiter {
    task_id: String,
    receiver: broadcast::Receiver<String>,
}

impl Waiter {
    /// Returns when the task may have changed (its event, or events were missed), or after `at_most`
    /// (then the caller re-reads anyway: the fallback when a notification was lost).
    pub async fn changed(&mut self, at_most: Duration) {
        let wait = async {
            loop {
                match self.receiver.recv().await {
                    // An empty id: changes may have been missed (the listener reconnected).
                    Ok(id) if id == self.task_id || id.is_empty() => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    // The hub is gone (shutdown): nothing more will come; let the caller's timer decide.
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        let _ = tokio::time::timeout(at_most, wait).await;
    }
}

/// Tells the waiters of every replica that `task_ids` changed: one `NOTIFY` per task, sent after the
/// change committed, in a transaction of its own that does not wait for the disk. A `NOTIFY` inside
/// the change's transaction would take PostgreSQL's notify lock through that commit's flush, so every
/// notifying transaction of the cluster would commit one after another (seen in the create bench:
/// starts and settlements waiting on `Lock:object`). Best effort, like every event: a failure is
/// logged, and waiters re-read their task every [`RECHECK`].
async fn notify(pool: &PgPool, task_ids: &[&str]) {
    if task_ids.is_empty() {
        return;
    }
    const SQL: &str = "SELECT pg_notify($1, id)
                       FROM (SELECT set_config('synchronous_commit', 'off', true)) AS durability, UNNEST($2::text[]) AS id";
    if let Err(error) = sqlx::query(SQL).bind(CHANNEL).bind(task_ids).execute(pool).await {
        tracing::warn!(error = %error, tasks = task_ids.len(), "task events not published");
    }
}
