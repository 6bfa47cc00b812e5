//! Tasks: the type, its state machine and its queries; [`view`] is the task object clients see.
//!
//! `[queued →] pending → running → succeeded | failed | cancelled` (a client may cancel while
//! unfinished; `queued` waits for room, see [`admission`]). Every transition is an `UPDATE … WHERE status IN (…)`,
//! so when two workers race, the row count tells exactly one of them that it won. Terminal
//! transitions settle the credits and enqueue the webhook in the same transaction.

pub mod admission;
pub mod batch;
mod finished;
pub mod group;
pub mod settle;
pub mod start;
mod view;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::types::Json;

use crate::config::{BodyVersion, SubmitWindow};
use crate::error::Error;
use crate::files::FileStore;
use crate::idempotency::IdempotencyKey;
use crate::ledger::UsageFilter;
use crate::limits;
use crate::pricing::PriceStep;
use crate::store::{self, Db, Dialect, WorkQueue};
use crate::webhooks::queue::{self, Delivery, Event};
use crate::{ids, on_db};

pub use batch::{AccountState, Batcher, Decision};
pub use finished::FinishedTasks;
pub use group::GroupSettings;
pub use settle::{Ending, Settler};
pub use start::{Start, Starter};
pub use view::{timestamp, CreditsState, CreditsView, TaskView};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting for room under a `max_in_flight` or a provider's submit window; credits held.
    Queued,
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn parse(value: &str) -> Option<TaskStatus> {
        match value {
            "queued" => Some(TaskStatus::Queued),
            "pending" => Some(TaskStatus::Pending),
            "running" => Some(TaskStatus::Running),
            "succeeded" => Some(TaskStatus::Succeeded),
            "failed" => Some(TaskStatus::Failed),
            "cancelled" => Some(TaskStatus::Cancelled),
            _ => None,
        }
    }

    /// As serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        !matches!(self, TaskStatus::Queued | TaskStatus::Pending | TaskStatus::Running)
    }
}

/// The events of a task its webhook receives (`callback_events`; default: `completed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallbackEvent {
    /// The task ended: succeeded, failed or cancelled.
    Completed,
    /// The provider accepted the task (`running`).
    Started,
}

impl CallbackEvent {
    /// The event's `type` in a version-2 body.
    fn type_name(self) -> &'static str {
        match self {
            CallbackEvent::Completed => "task.completed",
            CallbackEvent::Started => "task.started",
        }
    }
}

/// The validated request, as stored and as forwarded to the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskInput {
    pub prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub aspect_ratio: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub quality: Option<String>,
    pub image_urls: Vec<String>,
    /// How many images are asked for, on models whose `max_images` is above 1; absent means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
}

impl TaskInput {
    /// How many images the task asks for (at least 1).
    pub fn images(&self) -> u32 {
        self.n.unwrap_or(1).max(1)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskOutput {
    pub images: Vec<OutputImage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputImage {
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskErrorCode {
    UpstreamFailed,
    UpstreamRejected,
    Timeout,
    ContentPolicy,
}

impl TaskErrorCode {
    /// As serialised: the code clients see, and the outcome label of the settled-task metric.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskErrorCode::UpstreamFailed => "upstream_failed",
            TaskErrorCode::UpstreamRejected => "upstream_rejected",
            TaskErrorCode::Timeout => "timeout",
            TaskErrorCode::ContentPolicy => "content_policy",
        }
    }
}

/// Why a task failed, in words a client can act on: never credentials or raw provider internals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskError {
    pub code: TaskErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Task {
    pub id: String,
    pub account_id: i64,
    pub model: String,
    pub sub_model: String,
    pub status: TaskStatus,
    pub input: Json<TaskInput>,
    pub output: Option<Json<TaskOutput>>,
    pub error: Option<Json<TaskError>>,
    pub price: i64,
    pub callback_url: Option<String>,
    pub provider: String,
    pub upstream_model: String,
    /// What clients see for the route (`None` on tasks older than the column: the provider id).
    pub provider_label: Option<String>,
    /// The route is the simulated provider's.
    pub simulated: bool,
    pub upstream_id: Option<String>,
    pub attempts: i32,
    pub deadline_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// `None`: the default, `completed` only.
    pub callback_events: Option<Json<Vec<CallbackEvent>>>,
    /// The quote frozen at create (`None` on tasks created before quotes).
    pub price_breakdown: Option<Json<Vec<PriceStep>>>,
    /// What the settlement charged; `None` while unfinished (and on tasks settled before per-image
    /// capture: the price if succeeded, else 0).
    pub charged: Option<i64>,
    /// The key that created it (`None` before limits): its settlement updates that key's usage.
    pub key_id: Option<String>,
    /// Its place in its account's queue while `queued` (not a column: see
    /// [`admission::fill_positions`]).
    #[sqlx(default)]
    pub queue_position: Option<i64>,
}

impl Task {
    /// The credits a settlement with `delivered` images charges: the per-image price of the quote ×
    /// the images delivered, never above the hold.
    pub fn charge_for(&self, delivered: usize) -> i64 {
        let n = i64::from(self.input.images());
        let per_image = self.price / n;
        per_image.saturating_mul(i64::try_from(delivered).unwrap_or(i64::MAX)).min(self.price)
    }

    /// What it was charged: `charged`, or for a task settled before per-image capture its price if it
    /// succeeded; 0 while unfinished.
    pub fn charged(&self) -> i64 {
        match (self.charged, self.status) {
            (Some(charged), _) => charged,
            (None, TaskStatus::Succeeded) => self.price,
            (None, _) => 0,
        }
    }

    /// Whether the task's webhook receives `event`.
    pub fn wants(&self, event: CallbackEvent) -> bool {
        self.callback_url.is_some()
            && self
                .callback_events
                .as_ref()
                .map_or(event == CallbackEvent::Completed, |events| events.0.contains(&event))
    }
}

const COLUMNS: &str = "id, account_id, model, sub_model, status, input, output, error, price, callback_url, \
     provider, upstream_model, provider_label, simulated, upstream_id, attempts, deadline_at, created_at, updated_at, \
     completed_at, callback_events, price_breakdown, charged, key_id";

/// A task to insert; its id is minted by [`new_task_id`].
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub account_id: i64,
    pub model: String,
    pub sub_model: String,
    pub input: TaskInput,
    pub price: i64,
    /// How the price came about (the quote's steps), shown as `credits.breakdown`.
    pub breakdown: Option<Vec<PriceStep>>,
    /// The key creating it: its and its account's limits are enforced (see [`crate::limits`]).
    pub key_id: Option<String>,
    pub callback_url: Option<String>,
    /// `None`: the default (`completed`).
    pub callback_events: Option<Vec<CallbackEvent>>,
    pub provider: String,
    pub upstream_model: String,
    pub provider_label: String,
    pub simulated: bool,
    pub deadline: Duration,
    /// `Some(lease)`: the creating process works on the task itself (the create fast path), so it is
    /// born claimed; other workers take it only if the lease runs out. `None`: due at once.
    pub lease: Option<Duration>,
    /// The instance of the creating process: it holds the lease, when there is one.
    pub owner: String,
    /// The client's `Idempotency-Key`, recorded with the task.
    pub idempotency: Option<IdempotencyKey>,
    /// The callback token of the first submit, stored (its SHA-256) with the task when the creating
    /// process submits it itself: one write less than [`new_callback_token`] after the create.
    pub callback_token: Option<String>,
    /// The submit window of the task's provider, if it has one: full, the task is queued.
    pub window: Option<SubmitWindow>,
    /// `tasks.max_queued_per_account`: a create that would queue beyond it is refused.
    pub max_queued: i64,
}

/// What makes two creates with one `Idempotency-Key` the same request: the request after validation
/// and defaults, so `{"prompt": "x"}` and `{"prompt": "x", "aspect_ratio": "1:1"}` are the same,
/// whatever the JSON key order.
#[derive(Serialize)]
struct Canonical<'a> {
    sub_model: &'a str,
    input: &'a TaskInput,
    callback_url: Option<&'a str>,
    /// Left out when not given, so the hashes of requests without it are what they always were.
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_events: Option<&'a [CallbackEvent]>,
}

pub fn request_hash(
    sub_model: &str,
    input: &TaskInput,
    callback_url: Option<&str>,
    callback_events: Option<&[CallbackEvent]>,
) -> [u8; 32] {
    // Serialising a struct of strings cannot fail; an empty hash would only make every replay a conflict.
    let bytes = serde_json::to_vec(&Canonical { sub_model, input, callback_url, callback_events }).unwrap_or_default();
    Sha256::digest(&bytes).into()
}

/// `task_` + a ULID (see [`ids::new_id`]): tasks created in the same millisecond still list in order.
pub fn new_task_id() -> String {
    ids::new_id("task")
}

/// How a create ended: the task with its credits held, not enough credits (nothing written), or an
/// idempotency key already used: the first task again (nothing held), or a conflict (another request).
pub enum Created {
    Task(Box<Task>),
    Insufficient {
        available: i64,
    },
    /// A limit of the key or its account refused it (nothing written).
    Refused(limits::Refusal),
    Replayed(Box<Task>),
    Conflict,
}

/// Inserts the task, records its idempotency key and holds its price in one transaction (a batch of
/// one, see [`batch`]): all happen or none does. A key already in use answers its first task (same
/// request) or a conflict. The API creates through a [`Batcher`] instead.
pub async fn create(db: &Db, new: NewTask) -> sqlx::Result<Created> {
    batch::create_with(db, &new, || async { Ok(batch::commit(db, &[&new]).await?.pop().flatten()) }).await
}

/// One task of one account: another account's task is indistinguishable from a missing one.
pub async fn get(db: &Db, account_id: i64, task_id: &str) -> sqlx::Result<Option<Task>> {
    let sql = format!("SELECT {COLUMNS} FROM tasks WHERE id = $1 AND account_id = $2");
    let task: Option<Task> =
        on_db!(db, pool => sqlx::query_as(&sql).bind(task_id).bind(account_id).fetch_optional(pool).await)?;
    let mut found: Vec<Task> = task.into_iter().collect();
    admission::fill_positions(db, &mut found).await?;
    Ok(found.pop())
}

/// A page cursor is the id of the last task of the previous page (see [`crate::paging`]).
pub fn cursor(text: &str) -> Option<&str> {
    let id = text.strip_prefix("task_").unwrap_or_default();
    (!id.is_empty() && id.len() <= 59 && id.bytes().all(|b| b.is_ascii_alphanumeric())).then_some(text)
}

/// An account's tasks, newest first, strictly older than `before` (the cursor) when given, of one
/// status when given, within `filter` (creation time, model or sub-model id).
pub async fn list(
    db: &Db,
    account_id: i64,
    limit: i64,
    before: Option<&str>,
    status: Option<TaskStatus>,
    filter: &UsageFilter<'_>,
) -> sqlx::Result<Vec<Task>> {
    // No casts on the optional parameters: sqlx tells PostgreSQL their types, SQLite needs none.
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks
         WHERE account_id = $1 AND ($2 IS NULL OR id < $2) AND ($3 IS NULL OR status = $3)
           AND ($4 IS NULL OR created_at >= $4) AND ($5 IS NULL OR created_at < $5)
           AND ($6 IS NULL OR model = $6 OR sub_model = $6)
         ORDER BY id DESC LIMIT $7"
    );
    let mut page: Vec<Task> = on_db!(db, pool => filter.bind_to(sqlx::query_as(&sql).bind(account_id).bind(before).bind(status)).bind(limit).fetch_all(pool).await)?;
    admission::fill_positions(db, &mut page).await?;
    Ok(page)
}

/// An account's tasks matching `filter`, newest first, strictly older than `before` when given.
pub async fn usage_page(
    db: &Db,
    account_id: i64,
    filter: &UsageFilter<'_>,
    before: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<Task>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks
         WHERE account_id = $1 AND ($2 IS NULL OR id < $2)
           AND ($3 IS NULL OR created_at >= $3) AND ($4 IS NULL OR created_at < $4)
           AND ($5 IS NULL OR model = $5 OR sub_model = $5)
         ORDER BY id DESC LIMIT $6"
    );
    on_db!(db, pool => filter.bind_to(sqlx::query_as(&sql).bind(account_id).bind(before)).bind(limit).fetch_all(pool).await)
}

/// Totals over everything `filter` matches: `(tasks, succeeded, failed, unfinished, credits charged)`.
pub async fn usage_totals(
    db: &Db,
    account_id: i64,
    filter: &UsageFilter<'_>,
) -> sqlx::Result<(i64, i64, i64, i64, i64)> {
    const SQL: &str = "SELECT count(*), count(*) FILTER (WHERE status = 'succeeded'),
                count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status IN ('pending', 'running')),
                CAST(COALESCE(SUM(COALESCE(charged, price)) FILTER (WHERE status = 'succeeded'), 0) AS BIGINT)
         FROM tasks
         WHERE account_id = $1
           AND ($2 IS NULL OR created_at >= $2) AND ($3 IS NULL OR created_at < $3)
           AND ($4 IS NULL OR model = $4 OR sub_model = $4)";
    on_db!(db, pool => filter.bind_to(sqlx::query_as(SQL).bind(account_id)).fetch_one(pool).await)
}

/// The engine's work queue: unfinished tasks, due at `next_poll_at`.
const QUEUE: WorkQueue = WorkQueue {
    table: "tasks",
    pending: "status IN ('pending', 'running')",
    due_column: "next_poll_at",
    columns: COLUMNS,
};

/// Claims up to `limit` due unfinished tasks for `lease`, held by the instance `owner` (see
/// [`store::claim_due`]).
pub async fn claim_due(db: &Db, limit: i64, lease: Duration, owner: &str) -> sqlx::Result<Vec<Task>> {
    store::claim_due(db, &QUEUE, limit, lease, owner).await
}

/// Hands back the leases of claimed tasks (shutdown): unfinished ones are due again at once.
pub async fn release(db: &Db, task_ids: &[String]) -> sqlx::Result<u64> {
    // A list parameter: an array on PostgreSQL, a JSON array on SQLite.
    let done = match db {
        Db::Pg(pool) => {
            sqlx::query("UPDATE tasks SET next_poll_at = now(), leased_by = NULL WHERE id = ANY($1) AND status IN ('pending', 'running')")
                .bind(task_ids)
                .execute(pool)
                .await?
                .rows_affected()
        }
        Db::Sqlite(pool) => sqlx::query(&format!(
            "UPDATE tasks SET next_poll_at = {}, leased_by = NULL
             WHERE id IN (SELECT value FROM json_each($1)) AND status IN ('pending', 'running')",
            Dialect::Sqlite.now()
        ))
        .bind(sqlx::types::Json(task_ids))
        .execute(pool)
        .await?
        .rows_affected(),
    };
    Ok(done)
}

/// The provider accepted the task: remember its job id and when to look again, as a batch of one
/// (see [`start`]; the engine starts its tasks through a [`Starter`]). `None` when the task was no
/// longer pending (cancelled meanwhile).
pub async fn mark_running(
    db: &Db,
    task: &Task,
    upstream_id: &str,
    next_poll_in: Duration,
    body_version: BodyVersion,
    files: &FileStore,
) -> sqlx::Result<Option<Task>> {
    let start = Start::of(task, upstream_id, next_poll_in, body_version);
    Ok(start::commit(db, files, &[&start]).await?.pop().flatten())
}

/// Submit to another route (failover): only while the task is still pending. `label` and `simulated`
/// are what clients see of the route.
pub async fn switch_route(
    db: &Db,
    task_id: &str,
    provider: &str,
    upstream_model: &str,
    label: &str,
    simulated: bool,
) -> sqlx::Result<bool> {
    const SQL: &str = "UPDATE tasks SET provider = $2, upstream_model = $3, provider_label = $4, simulated = $5
                       WHERE id = $1 AND status = 'pending'";
    let done = on_db!(db, pool => sqlx::query(SQL)
        .bind(task_id)
        .bind(provider)
        .bind(upstream_model)
        .bind(label)
        .bind(simulated)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
    Ok(done == 1)
}

/// The callback token for the task's next submit: the provider's `stable` one where it derives one
/// from the task (see [`crate::providers::Provider::callback_token`]), else a fresh random one. Only
/// its SHA-256 is kept.
pub async fn new_callback_token(db: &Db, task_id: &str, stable: Option<String>) -> sqlx::Result<String> {
    let token = stable.unwrap_or_else(|| ids::new_secret(32));
    on_db!(db, pool => sqlx::query("UPDATE tasks SET callback_token_hash = $2, callback_at = NULL WHERE id = $1")
        .bind(task_id)
        .bind(Sha256::digest(token.as_bytes()).to_vec())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
    Ok(token)
}

/// The task a provider's callback token belongs to, if that provider serves it.
pub async fn by_callback_token(db: &Db, provider: &str, token: &str) -> sqlx::Result<Option<Task>> {
    let sql = format!("SELECT {COLUMNS} FROM tasks WHERE callback_token_hash = $1 AND provider = $2");
    on_db!(db, pool => sqlx::query_as(&sql)
        .bind(Sha256::digest(token.as_bytes()).to_vec())
        .bind(provider)
        .fetch_optional(pool)
        .await)
}

/// A callback arrived: an unfinished task is looked at now (a pending one right after its submit).
pub async fn callback_arrived(db: &Db, task_id: &str) -> sqlx::Result<()> {
    // A running task is polled at once; while callbacks keep coming (each one a provider call), at
    // most once per CALLBACK_POLL_SPACING: a callback soon after another brings the poll forward to
    // the end of that spacing, never to now.
    let d = db.dialect();
    let spacing = CALLBACK_POLL_SPACING.as_secs_f64();
    let sql = format!(
        "UPDATE tasks SET callback_at = {now},
                          next_poll_at = CASE WHEN status <> 'running' THEN next_poll_at
                                              WHEN callback_at IS NULL OR callback_at <= {before} THEN {now}
                                              ELSE {soon} END
         WHERE id = $1 AND status IN ('pending', 'running')",
        now = d.now(),
        before = d.now_plus_secs(&format!("-{spacing}")),
        soon = d.least("next_poll_at", &d.now_plus_secs(&spacing.to_string())),
    );
    on_db!(db, pool => sqlx::query(&sql).bind(task_id).execute(pool).await.map(|done| done.rows_affected()))?;
    Ok(())
}

/// The least time between two polls triggered by callbacks of one task.
const CALLBACK_POLL_SPACING: Duration = Duration::from_secs(2);

/// Not finished yet: look again after `next_poll_in` (never after the deadline).
pub async fn reschedule(db: &Db, task_id: &str, next_poll_in: Duration) -> sqlx::Result<()> {
    let d = db.dialect();
    let sql = format!(
        "UPDATE tasks SET attempts = attempts + 1, next_poll_at = {}, leased_by = NULL
         WHERE id = $1 AND status IN ('pending', 'running')",
        d.least(&d.now_plus_secs("$2"), "deadline_at")
    );
    on_db!(db, pool => sqlx::query(&sql)
        .bind(task_id)
        .bind(next_poll_in.as_secs_f64())
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
    Ok(())
}

pub enum Outcome {
    Succeeded(TaskOutput),
    Failed(TaskError),
    /// The client cancelled the task: released like a failure.
    Cancelled,
}

/// [`settle_as`] with webhook bodies of version 1.
pub async fn settle(
    db: &Db,
    task_id: &str,
    outcome: Outcome,
    webhook_delay: Duration,
    files: &FileStore,
) -> sqlx::Result<Option<Task>> {
    settle_as(db, task_id, outcome, webhook_delay, files, BodyVersion::V1).await
}

/// The terminal transition, its settlement and, for a task whose webhook wants `completed` (the
/// default), its webhook delivery (due after `webhook_delay`), in one transaction (a batch of one, see
/// [`settle`]; the engine settles through a [`Settler`]). Returns the settled task when this call made
/// the transition, `None` when the task was already terminal (someone else settled).
pub async fn settle_as(
    db: &Db,
    task_id: &str,
    outcome: Outcome,
    webhook_delay: Duration,
    files: &FileStore,
    body_version: BodyVersion,
) -> sqlx::Result<Option<Task>> {
    let ending = settle::Ending { task_id: task_id.to_owned(), outcome, webhook_delay, body_version };
    Ok(settle::commit(db, files, &[&ending]).await?.pop().flatten())
}

/// The event a task's webhook reports, if it wants `kind`: its task object as it is now (its file
/// links signed now), as is (version 1) or wrapped as `{"type", "timestamp", "data"}` (version 2), for
/// its `callback_url`.
pub fn webhook_event<'a>(
    task: &'a Task,
    kind: CallbackEvent,
    body_version: BodyVersion,
    files: &FileStore,
) -> Option<Event<'a>> {
    let url = task.callback_url.as_deref().filter(|_| task.wants(kind))?;
    let view = TaskView::from(task).with_links(|url| files.link(url));
    // A view of strings and numbers always serialises; an empty body would still be delivered and logged.
    let body = match body_version {
        BodyVersion::V1 => serde_json::to_vec(&view),
        BodyVersion::V2 => serde_json::to_vec(&serde_json::json!({
            "type": kind.type_name(),
            "timestamp": timestamp(task.updated_at),
            "data": view,
        })),
    }
    .unwrap_or_default();
    Some(Event { task_id: &task.id, account_id: task.account_id, url, body })
}

/// The answer for a task id that names no task of the account: a task the retention purge removed
/// still has its ledger rows, and then the 404 says it expired.
pub async fn missing(db: &Db, account_id: i64, task_id: &str) -> Error {
    let ledger: sqlx::Result<Option<i64>> = on_db!(db, pool => sqlx::query_scalar(
        "SELECT id FROM ledger WHERE account_id = $1 AND task_id = $2 LIMIT 1",
    )
    .bind(account_id)
    .bind(task_id)
    .fetch_optional(pool)
    .await);
    match ledger {
        Ok(Some(_)) => Error::NotFound(format!(
            "Task {task_id} has expired: finished tasks are removed after the retention period. Its credits are in the ledger."
        )),
        Ok(None) => Error::not_found("Task"),
        Err(error) => error.into(),
    }
}

/// [`resend_webhook_as`] with a version-1 body for a task that never had a delivery.
pub async fn resend_webhook(
    db: &Db,
    account_id: i64,
    task_id: &str,
    files: &FileStore,
    max_deliveries: u32,
) -> Result<Delivery, Error> {
    resend_webhook_as(db, account_id, task_id, files, max_deliveries, BodyVersion::V1).await
}

/// `POST /api/v1/tasks/{task_id}/deliveries/retry`: a new delivery, due now, of a finished task's event
/// (its first delivery's bytes; a task that never had one gets a `completed` event in `body_version`).
pub async fn resend_webhook_as(
    db: &Db,
    account_id: i64,
    task_id: &str,
    files: &FileStore,
    max_deliveries: u32,
    body_version: BodyVersion,
) -> Result<Delivery, Error> {
    let task = get(db, account_id, task_id).await?.ok_or_else(|| Error::not_found("Task"))?;
    if !task.status.is_terminal() {
        return Err(Error::Conflict(format!(
            "Task {} has not finished; its webhook is sent when it succeeds or fails.",
            task.id
        )));
    }
    // A manual re-send is of the task's end, whichever events its webhook asked for.
    let resend = Task { callback_events: None, ..task.clone() };
    let Some(event) = webhook_event(&resend, CallbackEvent::Completed, body_version, files) else {
        return Err(Error::Conflict(format!("Task {} has no callback_url; there is no webhook to send.", task.id)));
    };
    queue::enqueue_retry(db, &event, max_deliveries).await
}

/// Unfinished tasks: `(pending, running)`. Served by the partial index of the work queue.
pub async fn count_open(db: &Db) -> sqlx::Result<(i64, i64)> {
    on_db!(db, pool => sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'running')
         FROM tasks WHERE status IN ('pending', 'running')",
    )
    .fetch_one(pool)
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(prompt: &str) -> TaskInput {
        TaskInput {
            prompt: prompt.into(),
            aspect_ratio: Some("1:1".into()),
            quality: None,
            image_urls: vec![],
            n: None,
        }
    }

    #[test]
    fn the_request_hash_follows_the_request() {
        let a = request_hash("m", &input("x"), None, None);
        assert_eq!(a, request_hash("m", &input("x"), None, None));
        assert_ne!(a, request_hash("m", &input("y"), None, None));
        assert_ne!(a, request_hash("n", &input("x"), None, None));
        assert_ne!(a, request_hash("m", &input("x"), Some("https://example.com/"), None));
        assert_ne!(a, request_hash("m", &input("x"), None, Some(&[CallbackEvent::Started])));
    }

    #[test]
    fn error_codes_read_as_they_serialise() {
        use TaskErrorCode::*;
        for code in [UpstreamFailed, UpstreamRejected, Timeout, ContentPolicy] {
            assert_eq!(serde_json::to_value(code).ok(), Some(serde_json::Value::from(code.as_str())));
        }
    }

    #[test]
    fn cursors_are_task_ids() {
        assert_eq!(cursor("task_01ARZ3NDEKTSV4RRFFQ69G5FAV"), Some("task_01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        for bad in ["", "task_", "01ARZ3", "task_a-b", &format!("task_{}", "a".repeat(60))] {
            assert_eq!(cursor(bad), None, "{bad}");
        }
    }
}
