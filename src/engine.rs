//! The task engine: the one place that drives providers. It submits `pending` tasks, polls `running`
//! ones with backoff, and fails whatever passes its deadline, settling each task exactly once.
//!
//! All of its state is in the `tasks` table (`next_poll_at` is both the schedule and the lease), so
//! it survives restarts and several gateways can share one database: each claims due tasks with
//! `FOR UPDATE SKIP LOCKED`, and terminal transitions are guarded so only one of them settles.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::TaskSettings;
use crate::{idempotency, monitoring};
use crate::providers::{JobState, Providers, SubmitRequest, Submitted};
use crate::tasks::{self, Outcome, Task, TaskError, TaskErrorCode, TaskOutput, TaskStatus};

/// How often the engine purges expired idempotency keys.
const PURGE_EVERY: Duration = Duration::from_secs(60);

pub struct Engine {
    pool: PgPool,
    providers: Providers,
    settings: TaskSettings,
    wake: Notify,
    /// Bounds the provider calls the background loop has in flight.
    in_flight: Arc<Semaphore>,
    /// Tasks this process claimed and is working on: on shutdown it waits for them, then hands back
    /// the leases of those still unfinished.
    claimed: Mutex<HashSet<String>>,
    /// Notified whenever `claimed` becomes empty.
    idle: Notify,
}

/// Marks a task as worked on by this process while it lives.
struct ClaimGuard<'a> {
    engine: &'a Engine,
    task_id: String,
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        let mut claimed = self.engine.claimed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        claimed.remove(&self.task_id);
        if claimed.is_empty() {
            self.engine.idle.notify_waiters();
        }
    }
}

impl Engine {
    pub fn new(pool: PgPool, providers: Providers, settings: TaskSettings) -> Arc<Engine> {
        let in_flight = Arc::new(Semaphore::new(settings.max_in_flight));
        Arc::new(Engine {
            pool,
            providers,
            settings,
            wake: Notify::new(),
            in_flight,
            claimed: Mutex::new(HashSet::new()),
            idle: Notify::new(),
        })
    }

    /// The create fast path: submit the new task right away instead of at the next tick, and wait a
    /// little for the provider to accept it. The work is spawned, so it completes even if the
    /// client hangs up; if this gateway dies first, the task is still due and another tick takes it.
    pub async fn dispatch(self: &Arc<Self>, task_id: &str) {
        let engine = Arc::clone(self);
        let id = task_id.to_owned();
        let work = tokio::spawn(async move {
            match tasks::claim(&engine.pool, &id, engine.lease()).await {
                Ok(Some(task)) => engine.process(task).await,
                Ok(None) => {}
                Err(error) => tracing::warn!(task_id = %id, error = %error, "fast-path claim failed"),
            }
        });
        let _ = tokio::time::timeout(Duration::from_millis(self.settings.dispatch_wait_ms), work).await;
    }

    /// Runs until `shutdown`: every tick, claim what is due and work on it.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tick = Duration::from_millis(self.settings.tick_ms);
        let mut next_purge = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            if tokio::time::Instant::now() >= next_purge {
                next_purge += PURGE_EVERY;
                self.housekeeping().await;
            }
            let claimed = match self.tick().await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::error!(error = %error, "engine tick failed");
                    0
                }
            };
            // A full batch means more may be due: go again at once.
            if claimed as i64 >= self.settings.batch_size {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
                _ = self.wake.notified() => {}
            }
        }
        tracing::info!("engine loop stopped");
    }

    /// On shutdown, after the loop stopped and the API drained: waits until `deadline` for the tasks
    /// this process is working on, then makes those still unfinished due at once (their lease handed
    /// back), so another process takes them now rather than after `tasks.lease_secs`.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        loop {
            let idle = self.idle.notified();
            if self.claimed_ids().is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                break;
            }
        }
        let left = self.claimed_ids();
        if !left.is_empty() {
            match tasks::release(&self.pool, &left).await {
                Ok(released) => tracing::warn!(released, "shutdown grace over: unfinished tasks handed back"),
                Err(error) => tracing::error!(error = %error, "handing back leases failed; they expire after tasks.lease_secs"),
            }
        }
        tracing::info!("engine stopped");
    }

    fn claimed_ids(&self) -> Vec<String> {
        self.claimed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect()
    }

    fn track(&self, task_id: &str) -> ClaimGuard<'_> {
        self.claimed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(task_id.to_owned());
        ClaimGuard { engine: self, task_id: task_id.to_owned() }
    }

    /// Claims up to a batch of due tasks (as many as there are free slots) and starts working on
    /// them. Returns how many it claimed.
    pub async fn tick(self: &Arc<Self>) -> sqlx::Result<usize> {
        let free = self.in_flight.available_permits().min(self.settings.batch_size as usize);
        if free == 0 {
            return Ok(0);
        }
        let due = tasks::claim_due(&self.pool, free as i64, self.lease()).await?;
        let claimed = due.len();
        for task in due {
            let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
                break;
            };
            let engine = Arc::clone(self);
            tokio::spawn(async move {
                engine.process(task).await;
                drop(permit);
            });
        }
        Ok(claimed)
    }

    /// Periodic chores that no request waits for: expired idempotency keys.
    async fn housekeeping(&self) {
        match idempotency::purge(&self.pool).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired idempotency keys purged"),
            Err(error) => tracing::warn!(error = %error, "purging idempotency keys failed"),
        }
    }

    fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.lease_secs)
    }

    /// One step for one claimed task. Errors leave the task to its lease: it becomes due again.
    async fn process(&self, task: Task) {
        let _claim = self.track(&task.id);
        let span = tracing::info_span!("task", task_id = %task.id, provider = %task.provider, status = ?task.status);
        async {
            let result = match task.status {
                TaskStatus::Pending => self.submit(&task).await,
                TaskStatus::Running => self.poll(&task).await,
                TaskStatus::Succeeded | TaskStatus::Failed => Ok(()),
            };
            if let Err(error) = result {
                tracing::warn!(error = %error, "task step failed; it will be retried after its lease");
            }
        }
        .instrument(span)
        .await
    }

    async fn submit(&self, task: &Task) -> sqlx::Result<()> {
        if Utc::now() >= task.deadline_at {
            return self.time_out(task).await;
        }
        let Some(provider) = self.providers.get(&task.provider) else {
            let error = TaskError {
                code: TaskErrorCode::UpstreamFailed,
                message: "No provider serves this model any more.".into(),
            };
            return self.finish(task, Outcome::Failed(error)).await;
        };
        let request =
            SubmitRequest { task_id: &task.id, upstream_model: &task.upstream_model, input: &task.input };
        let started = Instant::now();
        let submitted = provider.submit(request).await;
        monitoring::upstream_call(&task.provider, "submit", started, submitted.as_ref().err());
        match submitted {
            Ok(Submitted::Accepted { upstream_id }) => {
                tracing::info!(upstream_id = %upstream_id, "accepted upstream");
                tasks::mark_running(&self.pool, &task.id, &upstream_id, self.poll_delay(0, None)).await?;
                Ok(())
            }
            Ok(Submitted::Completed { images }) => self.finish(task, Outcome::Succeeded(TaskOutput { images })).await,
            Err(error) if error.retriable => {
                tracing::warn!(error = %error, attempt = task.attempts, "submit failed; retrying");
                tasks::reschedule(&self.pool, &task.id, self.retry_delay(task.attempts)).await
            }
            Err(error) => self.finish(task, Outcome::Failed(error.into_task_error())).await,
        }
    }

    async fn poll(&self, task: &Task) -> sqlx::Result<()> {
        let (Some(provider), Some(upstream_id)) = (self.providers.get(&task.provider), task.upstream_id.as_deref())
        else {
            return self.time_out_or_wait(task, None).await;
        };
        let started = Instant::now();
        let polled = provider.poll(upstream_id).await;
        monitoring::upstream_call(&task.provider, "poll", started, polled.as_ref().err());
        match polled {
            Ok(JobState::Succeeded { images }) => self.finish(task, Outcome::Succeeded(TaskOutput { images })).await,
            Ok(JobState::Failed(error)) => self.finish(task, Outcome::Failed(error)).await,
            Ok(JobState::Running { check_after }) => self.time_out_or_wait(task, check_after).await,
            Err(error) if error.retriable => {
                tracing::warn!(error = %error, "poll failed; retrying");
                self.time_out_or_wait(task, None).await
            }
            Err(error) => self.finish(task, Outcome::Failed(error.into_task_error())).await,
        }
    }

    /// Still running: fail it if its deadline passed, otherwise look again later.
    async fn time_out_or_wait(&self, task: &Task, check_after: Option<Duration>) -> sqlx::Result<()> {
        if Utc::now() >= task.deadline_at {
            if let (Some(provider), Some(upstream_id)) = (self.providers.get(&task.provider), &task.upstream_id) {
                let started = Instant::now();
                let cancelled = provider.cancel(upstream_id).await;
                monitoring::upstream_call(&task.provider, "cancel", started, cancelled.as_ref().err());
                if let Err(error) = cancelled {
                    tracing::info!(error = %error, "upstream cancel failed");
                }
            }
            return self.time_out(task).await;
        }
        tasks::reschedule(&self.pool, &task.id, self.poll_delay(task.attempts, check_after)).await
    }

    async fn time_out(&self, task: &Task) -> sqlx::Result<()> {
        let seconds = (task.deadline_at - task.created_at).num_seconds();
        let error = TaskError {
            code: TaskErrorCode::Timeout,
            message: format!("The task did not finish within {seconds} seconds; its credits were released."),
        };
        self.finish(task, Outcome::Failed(error)).await
    }

    async fn finish(&self, task: &Task, outcome: Outcome) -> sqlx::Result<()> {
        if let Some(settled) = tasks::settle(&self.pool, &task.id, outcome).await? {
            let code = settled.error.as_ref().map(|e| e.code);
            tracing::info!(status = ?settled.status, error_code = ?code, price = settled.price, "task settled");
            monitoring::task_settled(&settled);
        }
        Ok(())
    }

    /// Next poll: the provider's hint when it gave one, else 1.5× backoff; within [50 ms, poll_max].
    fn poll_delay(&self, attempts: i32, hint: Option<Duration>) -> Duration {
        let max = Duration::from_millis(self.settings.poll_max_ms);
        let backoff = || {
            let factor = 1.5f64.powi(attempts.clamp(0, 30));
            Duration::from_millis(self.settings.poll_initial_ms).mul_f64(factor)
        };
        hint.unwrap_or_else(backoff).clamp(Duration::from_millis(50), max.max(Duration::from_millis(50)))
    }

    /// Next submit attempt after a retriable failure: doubling, up to poll_max.
    fn retry_delay(&self, attempts: i32) -> Duration {
        let delay = Duration::from_millis(self.settings.retry_initial_ms).mul_f64(2f64.powi(attempts.clamp(0, 30)));
        delay.min(Duration::from_millis(self.settings.poll_max_ms))
    }
}
