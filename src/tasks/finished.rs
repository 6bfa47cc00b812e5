//! The status poll's fast path: a finished task (succeeded, failed, cancelled) never changes again, so
//! this process keeps it in a bounded in-memory cache (size- and time-bounded) and answers its polls
//! without the database. Unfinished tasks are never cached: they are read with one statement each
//! time, so a task that has just finished is seen at once. Being terminal is terminal on every
//! replica, so no replica can serve a stale state; the one change a finished task still sees is its
//! removal by the retention purge: a purge forgets the tasks it removed from this process's cache
//! ([`FinishedTasks::shared`]: one cache per process), and another replica's cached copy outlives it
//! by at most the time to live.
//!
//! The cache holds the task's row, not its answer: the answer carries file links signed for a limited
//! time, which are signed afresh for every response (see [`super::TaskView::with_links`]).

use std::sync::Arc;
use std::time::Duration;

use super::{get, Task};
use crate::store::Db;

/// What the cache may hold at most, in (estimated) bytes.
const CAPACITY_BYTES: u64 = 32 * 1024 * 1024;
/// How long a finished task stays cached (also how long a purged task may still be answered).
const TIME_TO_LIVE: Duration = Duration::from_secs(300);

pub struct FinishedTasks {
    /// Keyed by task id; a hit is answered only to the task's own account (checked on every hit), so
    /// another account's id stays a 404 as without the cache.
    cache: moka::sync::Cache<String, Arc<Task>>,
}

static SHARED: std::sync::LazyLock<Arc<FinishedTasks>> =
    std::sync::LazyLock::new(|| Arc::new(FinishedTasks::new(CAPACITY_BYTES, TIME_TO_LIVE)));

impl FinishedTasks {
    /// The process's cache: what the API serves from and what the retention purge forgets from.
    /// Task ids are unique across databases (ULIDs), and a hit is checked against the account.
    pub fn shared() -> Arc<FinishedTasks> {
        Arc::clone(&SHARED)
    }

    pub fn new(capacity_bytes: u64, time_to_live: Duration) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|id: &String, task: &Arc<Task>| u32::try_from(id.len() + weight(task)).unwrap_or(u32::MAX))
            .time_to_live(time_to_live)
            .build();
        FinishedTasks { cache }
    }

    /// [`get`] through the cache: the task of `account_id`, `None` when it has no task of that id.
    pub async fn get(&self, db: &Db, account_id: i64, task_id: &str) -> sqlx::Result<Option<Arc<Task>>> {
        if let Some(task) = self.cache.get(task_id) {
            if task.account_id == account_id {
                return Ok(Some(task));
            }
            return Ok(None);
        }
        let Some(task) = get(db, account_id, task_id).await? else {
            return Ok(None);
        };
        let task = Arc::new(task);
        if task.status.is_terminal() {
            self.cache.insert(task.id.clone(), Arc::clone(&task));
        }
        Ok(Some(task))
    }

    /// Forgets a task (after it was removed).
    pub fn forget(&self, task_id: &str) {
        self.cache.invalidate(task_id);
    }

    /// Tasks cached now (after pending maintenance).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The task's size in memory, roughly: the struct and its larger strings.
fn weight(task: &Task) -> usize {
    let input = &task.input.0;
    let output: usize = task.output.as_ref().map_or(0, |o| o.0.images.iter().map(|i| i.url.len() + 32).sum::<usize>());
    let error = task.error.as_ref().map_or(0, |e| e.0.message.len());
    std::mem::size_of::<Task>()
        + input.prompt.len()
        + input.image_urls.iter().map(|u| u.len() + 24).sum::<usize>()
        + output
        + error
        + task.callback_url.as_ref().map_or(0, String::len)
        + 256
}
