//! The task engine: the one place that drives providers. It creates tasks (validated, their price
//! held) and submits them, polls `running` ones with backoff, and fails whatever passes its deadline,
//! settling each task exactly once.
//!
//! All of its state is in the `tasks` table (`next_poll_at` is both the schedule and the lease), so
//! it survives restarts and several gateways can share one database: each claims due tasks with
//! `FOR UPDATE SKIP LOCKED`, and terminal transitions are guarded so only one of them settles.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::Db;
use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::breakers::{Breakers, Gate};
use crate::catalog::{Catalog, CreateRequest};
use crate::config::{Settings, SubmitWindow, TaskSettings};
use crate::error::Error;
use crate::files::{FileStore, Rehost, RehostError};
use crate::idempotency::{self, IdempotencyKey};
use crate::providers::{JobState, Providers, SubmitRequest, Submitted, LOST, UNAVAILABLE};
use crate::task_events::TaskEvents;
use crate::tasks::admission::{self, Dispatch};
use crate::tasks::{
    self, Batcher, Created, Ending, GroupSettings, NewTask, Outcome, OutputImage, Settler, Start, Starter, Task,
    TaskError, TaskErrorCode, TaskInput, TaskOutput, TaskStatus,
};
use crate::url_guard::Guard;
use crate::webhooks::Webhooks;
use crate::work_queue::{Job, Runner};
use crate::{ids, monitoring};

/// How often the engine purges expired idempotency keys.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Downloads of a synchronous provider's result before the task fails.
const SYNC_DOWNLOAD_ATTEMPTS: u32 = 3;

/// The failure of a task whose image the client could never get: never charged.
fn undeliverable(why: &str) -> TaskError {
    tracing::warn!(reason = %why, "result image refused");
    TaskError {
        code: TaskErrorCode::UpstreamFailed,
        message: format!(
            "The provider's result image could not be delivered: {}. The credits were released.",
            why.trim_end_matches('.')
        ),
    }
}

pub struct Engine {
    pool: Db,
    providers: Providers,
    /// What a create is validated against, and the routes of each sub-model, for failover.
    catalog: Arc<Catalog>,
    /// The outbound URL guard, for the URLs in a create.
    guard: Arc<Guard>,
    /// This process runs the engine: it submits the tasks it creates at once (the fast path). An
    /// API-only process leaves them to the processes that run it.
    fast_path: bool,
    /// Per-route circuit breakers.
    breakers: Breakers,
    /// `results.rehost`: result images are copied into the file store before the task settles.
    rehost: Option<Rehost>,
    /// Signs the file links in webhook bodies.
    files: FileStore,
    settings: TaskSettings,
    /// Settling a task with a `callback_url` enqueues its webhook; the delivery loop is woken for it.
    webhooks: Arc<Webhooks>,
    /// Every change of a task is published here, for the waiters on it (live events, synchronous waits).
    events: Arc<TaskEvents>,
    /// Creates commit in batches (group commit).
    creates: Batcher,
    /// Terminal transitions, committed in batches.
    settles: Settler,
    /// Starts (the provider accepted a task), committed in batches.
    starts: Starter,
    /// Whether the last look at the admission queue found tasks, or this process queued one since.
    queue_seen: AtomicBool,
    /// When the engine's pass last looked at the admission queue.
    last_admission: Mutex<Instant>,
    /// The background loop; it bounds the provider calls in flight.
    runner: Runner,
    /// The fast path's submits, which outlive the request that created them; [`Engine::drain`] waits
    /// for them through `claimed`.
    dispatched: TaskTracker,
    /// Tasks this process is working on (fast path and loop): on shutdown it waits for them, then
    /// hands back the leases of those still unfinished.
    claimed: Mutex<HashSet<String>>,
    /// Notified whenever `claimed` becomes empty.
    idle: Notify,
    /// This process's instance: its claims name it (see [`crate::instances`]).
    instance: String,
    /// The providers with a submit window (`providers.<id>.max_submits`).
    windows: HashMap<String, SubmitWindow>,
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
    #[allow(clippy::too_many_arguments)] // the parts app.rs wires together, each once
    pub fn new(
        pool: Db,
        providers: Providers,
        catalog: Arc<Catalog>,
        guard: Arc<Guard>,
        settings: &Settings,
        webhooks: Arc<Webhooks>,
        rehost: Option<Rehost>,
        files: FileStore,
        instance: &str,
    ) -> Arc<Engine> {
        let events = Arc::new(TaskEvents::new(pool.clone()));
        let windows = settings
            .providers
            .iter()
            .filter_map(|(id, provider)| provider.max_submits.map(|window| (id.clone(), window)))
            .collect();
        let fast_path = settings.server.role.runs_engine();
        let settings = settings.tasks.clone();
        let batcher = GroupSettings {
            name: "create",
            max_batch: settings.create_batch_max.get(),
            queue: settings.create_queue_max.get(),
            committers: settings.create_committers.get(),
        };
        // Settlements wait for room instead: they must happen. As many as creates may wait.
        let settles = Settler::start(pool.clone(), files.clone(), GroupSettings { name: "settle", ..batcher });
        let starts = Starter::start(pool.clone(), files.clone(), GroupSettings { name: "start", ..batcher });
        let runner = Runner::new("engine", settings.tick, settings.batch_size.get(), settings.max_in_flight.get());
        let breakers = Breakers::new(settings.breaker_failures, settings.breaker_cooldown);
        let creates = Batcher::start(pool.clone(), batcher);
        Arc::new(Engine {
            creates,
            settles,
            starts,
            pool,
            providers,
            catalog,
            guard,
            fast_path,
            breakers,
            rehost,
            files,
            settings,
            webhooks,
            events,
            runner,
            dispatched: TaskTracker::new(),
            claimed: Mutex::new(HashSet::new()),
            idle: Notify::new(),
            queue_seen: AtomicBool::new(true),
            last_admission: Mutex::new(Instant::now()),
            instance: instance.to_owned(),
            windows,
        })
    }

    /// Creates a task of `account_id` from a client's request: validated against the catalog, its
    /// price held and the task stored in one transaction (with its `Idempotency-Key` when given), then
    /// submitted at once on the fast path. The same key with the same request answers its first task
    /// (nothing new held); with another request, a conflict.
    pub async fn create(
        self: &Arc<Self>,
        account_id: i64,
        key_id: &str,
        request: CreateRequest,
        idempotency_key: Option<String>,
    ) -> Result<Task, Error> {
        let valid = self.catalog.validate(request, &self.guard)?;
        let key = idempotency_key.map(|key| IdempotencyKey {
            request_hash: tasks::request_hash(
                &valid.sub_model.id,
                &valid.input,
                valid.callback_url.as_deref(),
                valid.callback_events.as_deref(),
            ),
            key,
        });
        let task_id = tasks::new_task_id();
        // The fast path submits the task itself: its first callback token is stored with it.
        let callback_token = match self.providers.get(&valid.route.provider) {
            Some(provider) if self.fast_path && self.providers.callback_poll(&valid.route.provider).is_some() => {
                Some(provider.callback_token(&task_id).unwrap_or_else(|| ids::new_secret(32)))
            }
            _ => None,
        };
        let new = NewTask {
            id: task_id,
            account_id,
            model: valid.model.id.clone(),
            sub_model: valid.sub_model.id.clone(),
            input: valid.input,
            price: valid.quote.credits,
            breakdown: Some(valid.quote.breakdown.clone()),
            key_id: Some(key_id.to_owned()),
            callback_url: valid.callback_url,
            callback_events: valid.callback_events,
            provider: valid.route.provider.clone(),
            upstream_model: valid.route.upstream_model.clone(),
            provider_label: self.catalog.route_label(valid.route).to_owned(),
            simulated: self.catalog.is_simulated(&valid.route.provider),
            deadline: self.settings.deadline,
            lease: self.fast_path.then(|| self.lease()),
            owner: self.instance.clone(),
            idempotency: key,
            callback_token: callback_token.clone(),
            window: self.windows.get(&valid.route.provider).copied(),
            max_queued: i64::try_from(self.settings.max_queued_per_account.get()).unwrap_or(i64::MAX),
        };
        let task = match self.creates.create(new).await? {
            Created::Task(task) => {
                tracing::info!(task_id = %task.id, model = %task.sub_model, price = task.price, "task created");
                monitoring::task_created(&task.sub_model, &task.provider, task.price);
                if task.status == TaskStatus::Queued {
                    self.queue_seen.store(true, Ordering::Relaxed);
                    tracing::info!(task_id = %task.id, "task queued");
                    return Ok(tasks::get(&self.pool, account_id, &task.id).await?.unwrap_or(*task));
                }
                if !self.fast_path {
                    return Ok(*task);
                }
                match self.dispatch((*task).clone(), callback_token).await {
                    Some(running) => running,
                    None => tasks::get(&self.pool, account_id, &task.id).await?.unwrap_or(*task),
                }
            }
            // The same key and request again: the first task, as it is now; nothing new is held.
            Created::Replayed(task) => {
                tracing::info!(task_id = %task.id, "idempotent replay");
                monitoring::idempotent_replay();
                *task
            }
            Created::Conflict => {
                return Err(Error::Conflict(
                    "This Idempotency-Key was already used with a different request in the last 24 hours; \
                     use a new key for a new request."
                        .into(),
                ));
            }
            Created::Refused(refusal) => {
                monitoring::limit_refused(refusal.code(), refusal.scope().as_str());
                return Err(Error::Limit(refusal));
            }
            Created::Insufficient { available } => {
                return Err(Error::InsufficientCredits { price: valid.quote.credits, available });
            }
        };
        // A provider that refuses the task outright is something the client must see now.
        if let Some(error) = task.error.as_ref().filter(|e| e.code == TaskErrorCode::UpstreamRejected) {
            if task.status == TaskStatus::Failed {
                let message = format!("{} Task {} failed and nothing was charged.", error.message, task.id);
                return Err(Error::Upstream(message));
            }
        }
        Ok(task)
    }

    /// The create fast path: submit a task this process just created (born claimed, see
    /// [`Engine::lease`]) instead of waiting for a tick, and wait a little for the provider to
    /// accept it. The work is spawned, so it completes even if the client hangs up; if this process
    /// dies first, the lease runs out and another process takes the task. Returns the task as the
    /// provider's acceptance left it, when that happened in time.
    async fn dispatch(self: &Arc<Self>, task: Task, callback_token: Option<String>) -> Option<Task> {
        let engine = Arc::clone(self);
        let work = self.dispatched.spawn(async move { engine.process_with(task, callback_token).await });
        tokio::time::timeout(self.settings.dispatch_wait, work).await.ok().and_then(Result::ok).flatten()
    }

    /// Runs until `shutdown`: every tick, claim what is due and work on it; now and then, purge
    /// expired idempotency keys.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let housekeeping = async {
            let mut every = tokio::time::interval(PURGE_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = every.tick() => self.housekeeping().await,
                }
            }
        };
        tokio::join!(self.runner.run(&self, shutdown.clone()), housekeeping);
    }

    /// Works off everything due now, one task after another, until nothing is due; returns how many
    /// steps ran. The loop's work without the loop: tests drive the engine with it deterministically.
    pub async fn run_pending(&self) -> sqlx::Result<usize> {
        let mut worked = 0;
        loop {
            self.admit_queued().await?;
            let batch = self.settings.batch_size.get() as i64;
            let due = tasks::claim_due(&self.pool, batch, self.lease(), &self.instance).await?;
            if due.is_empty() {
                return Ok(worked);
            }
            worked += due.len();
            for task in due {
                self.process(task).await;
            }
        }
    }

    /// On shutdown, after the loop stopped and the API drained: waits until `deadline` for the tasks
    /// this process is working on (fast path and loop), then makes those still unfinished due at once
    /// (their lease handed back), so another process takes them now rather than after `tasks.lease_secs`.
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
                Err(error) => {
                    tracing::error!(error = %error, "handing back leases failed; they expire after tasks.lease_secs")
                }
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

    /// Periodic chores that no request waits for: expired idempotency keys.
    async fn housekeeping(&self) {
        match idempotency::purge(&self.pool).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired idempotency keys purged"),
            Err(error) => tracing::warn!(error = %error, "purging idempotency keys failed"),
        }
    }

    /// How long a claimed task stays hidden from other workers.
    pub fn lease(&self) -> Duration {
        self.settings.lease
    }

    /// One step for one claimed task. Errors leave the task to its lease: it becomes due again.
    async fn process(&self, task: Task) {
        self.process_with(task, None).await;
    }

    /// [`Engine::process`], with the callback token stored at create for the task's first submit.
    /// Returns the task as a submit the provider accepted left it (`running`).
    async fn process_with(&self, task: Task, callback_token: Option<String>) -> Option<Task> {
        let _claim = self.track(&task.id);
        let span = tracing::info_span!("task", task_id = %task.id, provider = %task.provider, status = ?task.status);
        async {
            let result = match task.status {
                TaskStatus::Pending => self.submit(&task, callback_token).await,
                TaskStatus::Running => self.poll(&task).await.map(|()| None),
                TaskStatus::Queued | TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Cancelled => Ok(None),
            };
            result.unwrap_or_else(|error| {
                tracing::warn!(error = %error, "task step failed; it will be retried after its lease");
                None
            })
        }
        .instrument(span)
        .await
    }

    async fn submit(&self, task: &Task, mut stored_token: Option<String>) -> sqlx::Result<Option<Task>> {
        if Utc::now() >= task.deadline_at {
            return self.time_out(task).await.map(|()| None);
        }
        // The task's route first (while its breaker lets it through), then the sub-model's other
        // routes in order: a retriable failure moves on to the next one.
        let mut routes: Vec<(String, String)> = vec![(task.provider.clone(), task.upstream_model.clone())];
        if let Some(sub_model) = self.catalog.sub_model(&task.sub_model) {
            for route in sub_model.routes_in_order() {
                let route = (route.provider.clone(), route.upstream_model.clone());
                if !routes.contains(&route) {
                    routes.push(route);
                }
            }
        }
        // Whether a route may still work later (it failed retriably, or rests after such failures),
        // and whether one said it cannot serve (account, billing, missing model).
        let (mut waiting, mut unavailable) = (false, false);
        for (provider_id, upstream_model) in &routes {
            let Some(provider) = self.providers.get(provider_id) else { continue };
            match self.breakers.gate(provider_id, upstream_model, task.account_id) {
                Gate::Allow => {}
                Gate::Resting => {
                    waiting = true;
                    continue;
                }
                Gate::Unavailable => {
                    unavailable = true;
                    continue;
                }
            }
            // A provider with a submit window: the slot reserved at admission, or a new one.
            let window = self.windows.get(provider_id).copied();
            if let Some(window) = window {
                if !admission::slot_for_submit(&self.pool, provider_id, &task.id, window).await? {
                    waiting = true;
                    continue;
                }
            }
            if (provider_id, upstream_model) != (&task.provider, &task.upstream_model) {
                let label = match self.catalog.route(&task.sub_model, provider_id, upstream_model) {
                    Some(route) => self.catalog.route_label(route),
                    None => provider_id.as_str(),
                };
                let simulated = self.catalog.is_simulated(provider_id);
                if !tasks::switch_route(&self.pool, &task.id, provider_id, upstream_model, label, simulated).await? {
                    return Ok(None);
                }
            }
            // A new token per attempt (or the provider's stable one), stored before the provider can
            // use it: a callback may arrive before the submit answers. The create stored the first
            // one, for the task's own route.
            let own_route = (provider_id, upstream_model) == (&task.provider, &task.upstream_model);
            let callback_url = match self.providers.callback_poll(provider_id) {
                Some(_) => {
                    let token = match stored_token.take().filter(|_| own_route) {
                        Some(token) => token,
                        None => {
                            tasks::new_callback_token(&self.pool, &task.id, provider.callback_token(&task.id)).await?
                        }
                    };
                    Some(self.providers.callback_url(provider_id, &token))
                }
                None => None,
            };
            // The gateway's own files among the inputs (edit uploads) go out as links the provider can
            // fetch: signed now, like a client's (the stored URLs are unsigned).
            let image_urls = task.input.image_urls.iter().map(|url| self.files.link(url)).collect();
            let input = TaskInput { image_urls, ..task.input.0.clone() };
            let fields = self.catalog.provider_input(&task.sub_model, provider_id, upstream_model, &input);
            let request = SubmitRequest {
                task_id: &task.id,
                upstream_model,
                input: &input,
                fields,
                callback_url: callback_url.as_deref(),
            };
            let started = Instant::now();
            let result = provider.submit(request).await;
            if window.is_some() {
                if let Err(error) = admission::submitted(&self.pool, provider_id, &task.id).await {
                    tracing::warn!(error = %error, "recording the submit time failed");
                }
            }
            monitoring::upstream_call(provider_id, "submit", started, result.as_ref().err().map(|e| e.retriable));
            match &result {
                Err(error) if error.route_unavailable => self.breakers.unavailable(provider_id, upstream_model),
                Err(error) if error.counts_against_route() => self.breakers.failed(provider_id, upstream_model),
                Err(error) if error.retriable => self.breakers.neutral(provider_id, upstream_model),
                _ => self.breakers.succeeded(provider_id, upstream_model),
            }
            match result {
                Ok(Submitted::Accepted { upstream_id }) => {
                    tracing::info!(upstream_id = %upstream_id, provider = %provider_id, "accepted upstream");
                    let delay = self.poll_delay(&task.model, provider_id, Duration::ZERO, None);
                    let start = Start::of(task, &upstream_id, delay, self.webhooks.body_version());
                    let running = self.starts.start_task(start).await?;
                    if let Some(running) = &running {
                        if running.wants(tasks::CallbackEvent::Started) {
                            self.webhooks.wake();
                        }
                        self.events.publish(&task.id);
                        self.runner.wake_at(delay);
                        // Its callback may have come while the submit was in flight: then it is due now.
                        if callback_url.is_some() {
                            self.runner.wake();
                        }
                    } else {
                        // Cancelled while the provider accepted it: the job is no use to anyone.
                        self.cancel_upstream(provider_id, &upstream_id).await;
                    }
                    return Ok(running);
                }
                Ok(Submitted::Completed { images }) => return self.succeed_now(task, images).await.map(|()| None),
                Err(error) if error.route_unavailable => {
                    tracing::error!(error = %error, provider = %provider_id, "route unavailable; trying the next one");
                    unavailable = true;
                }
                Err(error) if error.retriable => {
                    tracing::warn!(error = %error, provider = %provider_id, attempt = task.attempts, "submit failed");
                    waiting = true;
                }
                Err(error) => return self.finish(task, Outcome::Failed(error.into_task_error())).await.map(|()| None),
            }
        }
        if !waiting {
            // No route can take the task, now or later: it ends now rather than at its deadline.
            let message = if unavailable { UNAVAILABLE } else { "No provider serves this model any more." };
            let error = TaskError { code: TaskErrorCode::UpstreamFailed, message: message.into() };
            return self.finish(task, Outcome::Failed(error)).await.map(|()| None);
        }
        // A route failed for now or is resting: try again later.
        tasks::reschedule(&self.pool, &task.id, self.retry_delay(task.attempts)).await.map(|()| None)
    }

    async fn poll(&self, task: &Task) -> sqlx::Result<()> {
        let (Some(provider), Some(upstream_id)) = (self.providers.get(&task.provider), task.upstream_id.as_deref())
        else {
            return self.time_out_or_wait(task, None).await;
        };
        let started = Instant::now();
        let polled = provider.poll(upstream_id).await;
        monitoring::upstream_call(&task.provider, "poll", started, polled.as_ref().err().map(|e| e.retriable));
        match polled {
            Ok(JobState::Succeeded { images }) => match self.deliverable(images).await {
                Ok(images) => self.finish(task, Outcome::Succeeded(TaskOutput { images })).await,
                Err(RehostError::Retry(why)) => {
                    tracing::warn!(reason = %why, "result download failed; retrying on the next poll");
                    self.time_out_or_wait(task, None).await
                }
                Err(RehostError::Refuse(why)) => self.finish(task, Outcome::Failed(undeliverable(&why))).await,
            },
            Ok(JobState::Failed(error)) => self.finish(task, Outcome::Failed(error)).await,
            Ok(JobState::Running { check_after }) => self.time_out_or_wait(task, check_after).await,
            Ok(JobState::Unknown) => {
                let age = (Utc::now() - task.created_at).to_std().unwrap_or_default();
                if age < self.providers.record_grace(&task.provider) {
                    tracing::info!(age_ms = age.as_millis() as u64, "the provider does not show the job yet");
                    self.time_out_or_wait(task, None).await
                } else {
                    let error = TaskError { code: TaskErrorCode::UpstreamFailed, message: LOST.into() };
                    self.finish(task, Outcome::Failed(error)).await
                }
            }
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
            if let Some(upstream_id) = &task.upstream_id {
                self.cancel_upstream(&task.provider, upstream_id).await;
            }
            return self.time_out(task).await;
        }
        // `updated_at` of a running task is when it started running (nothing else changes it before
        // it ends).
        let running_for = (Utc::now() - task.updated_at).to_std().unwrap_or_default();
        let delay = self.poll_delay(&task.model, &task.provider, running_for, check_after);
        tasks::reschedule(&self.pool, &task.id, delay).await?;
        self.runner.wake_at(delay);
        Ok(())
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
        self.settle(task, outcome).await.map(|_| ())
    }

    /// The terminal transition: `Some(task)` when this call made it, `None` when the task had already
    /// ended (someone else settled it, exactly once).
    async fn settle(&self, task: &Task, outcome: Outcome) -> sqlx::Result<Option<Task>> {
        let (delay, version) = (self.webhooks.first_delay(), self.webhooks.body_version());
        let ending = Ending { task_id: task.id.clone(), outcome, webhook_delay: delay, body_version: version };
        let Some(settled) = self.settles.settle(task.account_id, ending).await? else {
            return Ok(None);
        };
        let code = settled.error.as_ref().map(|e| e.code);
        let charged = settled.charged();
        tracing::info!(status = ?settled.status, error_code = ?code, price = settled.price, charged, "task settled");
        let outcome = match settled.status {
            TaskStatus::Cancelled => Some("cancelled"),
            _ => code.map(TaskErrorCode::as_str),
        };
        monitoring::task_settled(&settled.sub_model, &settled.provider, settled.price, charged, outcome);
        if settled.callback_url.is_some() {
            self.webhooks.wake();
        }
        self.events.publish(&settled.id);
        // Room in flight freed: queued tasks may go now (those this process saw; a queue it has not
        // seen is looked at on the next tick). Not otherwise: each wake is a claim statement.
        if self.queue_seen.load(Ordering::Relaxed) {
            self.runner.wake();
        }
        Ok(Some(settled))
    }

    /// `POST /api/v1/tasks/{task_id}/cancel`: an unfinished task of the account ends `cancelled` and its
    /// hold is released in one guarded transition, so a cancel racing the task's settlement ends with
    /// exactly one of capture and release; a result arriving later finds the task ended and is not
    /// charged. Then the provider's job is cancelled where the provider can (best effort). A task that
    /// already ended is a conflict.
    pub async fn cancel(&self, account_id: i64, task_id: &str) -> Result<Task, Error> {
        let task = tasks::get(&self.pool, account_id, task_id).await?.ok_or_else(|| Error::not_found("Task"))?;
        let span = tracing::info_span!("task", task_id = %task.id, provider = %task.provider, status = ?task.status);
        async {
            let ended = |task: &Task| {
                Error::Conflict(format!(
                    "Task {} has already ended ({}); only a queued, pending or running task can be cancelled.",
                    task.id,
                    task.status.as_str()
                ))
            };
            if task.status.is_terminal() {
                return Err(ended(&task));
            }
            let Some(cancelled) = self.settle(&task, Outcome::Cancelled).await? else {
                // Settled between our read and our cancel: it stays as it ended.
                let now = tasks::get(&self.pool, account_id, task_id).await?.unwrap_or(task);
                return Err(ended(&now));
            };
            let upstream = match &cancelled.upstream_id {
                Some(upstream_id) => self.cancel_upstream(&cancelled.provider, upstream_id).await,
                None => "none",
            };
            tracing::info!(upstream, "task cancelled by its client");
            monitoring::task_cancelled(upstream);
            Ok(cancelled)
        }
        .instrument(span)
        .await
    }

    /// Asks the provider to stop a job the gateway no longer wants (cancelled, past its deadline): best
    /// effort; providers without a cancel do nothing. Returns `ok` or `failed`, for the metrics.
    async fn cancel_upstream(&self, provider_id: &str, upstream_id: &str) -> &'static str {
        let Some(provider) = self.providers.get(provider_id) else { return "none" };
        let started = Instant::now();
        let cancelled = provider.cancel(upstream_id).await;
        monitoring::upstream_call(provider_id, "cancel", started, cancelled.as_ref().err().map(|e| e.retriable));
        match cancelled {
            Ok(()) => "ok",
            Err(error) => {
                tracing::info!(error = %error, "upstream cancel failed");
                "failed"
            }
        }
    }

    /// Next poll of a task of `model` running for `running_for`: the provider's hint when it gave one,
    /// else the model's poll schedule (see [`crate::catalog::PollSchedule`]), or for a model gone from
    /// the catalog `poll_initial_ms`; within [50 ms, poll_max]. For a provider that calls back,
    /// polling is the fallback: its slower interval is the floor.
    fn poll_delay(&self, model: &str, provider: &str, running_for: Duration, hint: Option<Duration>) -> Duration {
        let max = self.settings.poll_max;
        let scheduled = || match self.catalog.get(model) {
            Some(model) => model.poll_schedule().next(running_for, max),
            None => self.settings.poll_initial,
        };
        let delay = hint.unwrap_or_else(scheduled).clamp(Duration::from_millis(50), max.max(Duration::from_millis(50)));
        delay.max(self.providers.callback_poll(provider).unwrap_or_default())
    }

    /// Where the engine publishes task changes.
    pub fn events(&self) -> &Arc<TaskEvents> {
        &self.events
    }

    /// Something became due (e.g. leases taken over from a dead instance): look now.
    pub fn wake(&self) {
        self.runner.wake();
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// A callback for `task` arrived. Unless the provider's callback payloads are trusted (`state`
    /// is then what the callback says), the task is polled now and settles on what the provider's
    /// status API says. Settled tasks stay as they are.
    pub async fn callback(&self, task: &Task, state: Option<JobState>) -> sqlx::Result<()> {
        if task.status.is_terminal() {
            return Ok(());
        }
        if self.providers.trusts_callback_payload(&task.provider) && task.status == TaskStatus::Running {
            match state {
                // A download that fails for now is retried by the poll this callback triggers.
                Some(JobState::Succeeded { images }) => match self.deliverable(images).await {
                    Ok(images) => return self.finish(task, Outcome::Succeeded(TaskOutput { images })).await,
                    Err(RehostError::Refuse(why)) => {
                        return self.finish(task, Outcome::Failed(undeliverable(&why))).await
                    }
                    Err(RehostError::Retry(_)) => {}
                },
                Some(JobState::Failed(error)) => return self.finish(task, Outcome::Failed(error)).await,
                _ => {}
            }
        }
        tasks::callback_arrived(&self.pool, &task.id).await?;
        self.runner.wake();
        Ok(())
    }

    /// The images as the client gets them: with `results.rehost`, copies in the file store.
    async fn deliverable(&self, images: Vec<OutputImage>) -> Result<Vec<OutputImage>, RehostError> {
        match &self.rehost {
            Some(rehost) => rehost.images(images).await,
            None => Ok(images),
        }
    }

    /// A synchronous provider's result: there is no job to poll again, so a download that fails for
    /// now is tried a few more times here; if it never works, the task fails and costs nothing.
    async fn succeed_now(&self, task: &Task, images: Vec<OutputImage>) -> sqlx::Result<()> {
        let mut wait = Duration::from_millis(500);
        for attempt in 1..=SYNC_DOWNLOAD_ATTEMPTS {
            match self.deliverable(images.clone()).await {
                Ok(images) => return self.finish(task, Outcome::Succeeded(TaskOutput { images })).await,
                Err(RehostError::Retry(why)) if attempt < SYNC_DOWNLOAD_ATTEMPTS => {
                    tracing::warn!(reason = %why, attempt, "result download failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(RehostError::Retry(why) | RehostError::Refuse(why)) => {
                    return self.finish(task, Outcome::Failed(undeliverable(&why))).await
                }
            }
        }
        Ok(())
    }

    /// The admission queue's turn (on every tick, and woken by every settlement): queued tasks past
    /// `tasks.max_queue_secs` fail with `timeout`; then rounds of the round robin (the oldest queued
    /// task of each account, accounts by last dispatch) dispatch what the in-flight limits and the
    /// submit windows have room for, until a round dispatches nothing. At most a batch per call.
    /// Returns how many were dispatched.
    /// Whether the engine's pass should look at the queue now: always while the last look found queued
    /// tasks or this process queued one since; else once per tick (a replica's queued tasks are found
    /// within a tick), not at every wake — every settlement wakes the engine.
    fn admission_due(&self) -> bool {
        let mut last = self.last_admission.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.queue_seen.load(Ordering::Relaxed) || last.elapsed() >= self.settings.tick {
            *last = Instant::now();
            return true;
        }
        false
    }

    async fn admit_queued(&self) -> sqlx::Result<usize> {
        let batch = self.settings.batch_size.get();
        let expired = admission::expired(&self.pool, self.settings.max_queue, batch as i64).await?;
        let mut seen = !expired.is_empty();
        for task in expired {
            let error = TaskError {
                code: TaskErrorCode::Timeout,
                message: format!(
                    "The task waited in the queue longer than {} seconds; its credits were released.",
                    self.settings.max_queue.as_secs()
                ),
            };
            if self.settle(&task, Outcome::Failed(error)).await?.is_some() {
                monitoring::queue_timeout();
            }
        }
        let mut dispatched = 0;
        let mut full: HashSet<String> = HashSet::new();
        while dispatched < batch {
            let heads = admission::heads(&self.pool, batch as i64).await?;
            seen |= !heads.is_empty();
            let mut this_round = 0;
            for head in &heads {
                if full.contains(&head.provider) {
                    continue;
                }
                let window = self.windows.get(&head.provider).copied();
                match admission::dispatch(&self.pool, head, window, self.settings.deadline).await? {
                    Dispatch::Dispatched(task) => {
                        let waited = (Utc::now() - task.created_at).to_std().unwrap_or_default();
                        monitoring::queue_wait(waited);
                        tracing::info!(task_id = %task.id, waited_ms = waited.as_millis() as u64, "queued task dispatched");
                        self.events.publish(&task.id);
                        this_round += 1;
                    }
                    Dispatch::WindowFull => {
                        full.insert(head.provider.clone());
                    }
                    Dispatch::InFlightFull | Dispatch::Gone => {}
                }
            }
            if this_round == 0 {
                break;
            }
            dispatched += this_round;
        }
        self.queue_seen.store(seen, Ordering::Relaxed);
        if dispatched > 0 {
            self.runner.wake();
        }
        Ok(dispatched)
    }

    /// Next submit attempt after a retriable failure: doubling, up to poll_max.
    fn retry_delay(&self, attempts: i32) -> Duration {
        let delay = self.settings.retry_initial.mul_f64(2f64.powi(attempts.clamp(0, 30)));
        delay.min(self.settings.poll_max)
    }
}

impl Job for Engine {
    type Item = Task;

    async fn claim(&self, limit: usize) -> sqlx::Result<Vec<Task>> {
        if self.admission_due() {
            if let Err(error) = self.admit_queued().await {
                tracing::warn!(error = %error, "dispatching queued tasks failed");
            }
        }
        tasks::claim_due(&self.pool, limit as i64, self.lease(), &self.instance).await
    }

    async fn work(self: Arc<Self>, task: Task) {
        self.process(task).await;
    }
}
