//! Prometheus metrics: one process-wide recorder, the metric names, the recording functions, and the
//! rendering of everything when `/metrics` is scraped (its handler and the HTTP request counting are
//! in `http::metrics`).
//!
//! Labels stay few: routes are the router's patterns (`/api/v1/tasks/{task_id}`), never ids or keys.
//! Counters that move money are recorded after their transaction committed.

use std::sync::OnceLock;
use std::time::Instant;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::Db;

pub const HTTP_REQUESTS: &str = "aio_http_requests_total";
pub const HTTP_DURATION: &str = "aio_http_request_duration_seconds";
pub const TASKS_CREATED: &str = "aio_tasks_created_total";
pub const TASKS_SETTLED: &str = "aio_tasks_settled_total";
pub const TASKS_OPEN: &str = "aio_tasks";
pub const IDEMPOTENT_REPLAYS: &str = "aio_idempotent_replays_total";
pub const UPSTREAM_DURATION: &str = "aio_upstream_request_duration_seconds";
pub const UPSTREAM_ERRORS: &str = "aio_upstream_errors_total";
/// Upstreams refusing the gateway's own account (bad key, out of credits) or a route's model (404), by
/// provider and status: each takes the route out of service.
pub const UPSTREAM_ACCOUNT_PROBLEMS: &str = "aio_upstream_account_problems_total";
pub const CREDITS_HELD: &str = "aio_credits_held_total";
pub const CREDITS_CAPTURED: &str = "aio_credits_captured_total";
pub const CREDITS_RELEASED: &str = "aio_credits_released_total";
pub const RATE_LIMITED: &str = "aio_rate_limited_total";
pub const DB_POOL_CONNECTIONS: &str = "aio_db_pool_connections";
/// Outgoing webhook attempts, label `outcome` (`delivered`, `failed`, `dead`): incremented by the
/// webhook deliverer through [`webhook_attempt`]: `delivered`, `retry` or `dead`.
pub const WEBHOOK_ATTEMPTS: &str = "aio_webhook_attempts_total";
/// Credits bought (paid orders, redeemed codes) and taken back by refunds and disputes.
pub const CREDITS_TOPPED_UP: &str = "aio_credits_topped_up_total";
pub const CREDITS_REVERSED: &str = "aio_credits_reversed_total";
/// Stripe webhook deliveries, by `outcome` (`applied`, `duplicate`, `ignored`, `refused`).
pub const STRIPE_EVENTS: &str = "aio_stripe_events_total";
pub const RETENTION_PURGED: &str = "aio_retention_purged_total";
pub const RETENTION_RUNS: &str = "aio_retention_runs_total";
/// HTTP connections open now, and those closed at once because `server.max_connections` were open.
pub const HTTP_CONNECTIONS: &str = "aio_http_connections";
pub const HTTP_CONNECTIONS_REFUSED: &str = "aio_http_connections_refused_total";
/// Task-change notifications (`task_events`), label `kind`: published, received (PostgreSQL `LISTEN`),
/// reconnected, listen_failed.
pub const TASK_EVENTS: &str = "aio_task_events_total";
/// Open live-event streams (`GET /api/v1/tasks/{task_id}/events`) of this process.
pub const EVENT_STREAMS: &str = "aio_event_streams";
/// Tasks cancelled by their client, by whether the provider's cancel was asked and how it went.
pub const TASKS_CANCELLED: &str = "aio_tasks_cancelled_total";
/// Heartbeats of this instance, label `outcome` (`ok`, `failed`).
pub const INSTANCE_HEARTBEATS: &str = "aio_instance_heartbeats_total";
/// Leased rows of dead instances released by this process, by queue (`tasks`, `webhook_deliveries`).
pub const LEASES_TAKEN_OVER: &str = "aio_leases_taken_over_total";
/// Audit log entries written, by `action` (`credits.grant`, `key.create`, …; see `audit`).
pub const AUDIT_ENTRIES: &str = "aio_audit_entries_total";
/// Creates refused by a key's or account's limit, by code and scope.
pub const LIMIT_REFUSALS: &str = "aio_limit_refusals_total";
/// The admission queue: its depth, how long dispatched tasks waited, and the tasks that waited too long.
pub const TASKS_QUEUED: &str = "aio_tasks_queued";
pub const QUEUE_WAIT: &str = "aio_queue_wait_seconds";
pub const QUEUE_TIMEOUTS: &str = "aio_queue_timeouts_total";

/// Creates per batch (group commit, [`crate::tasks::batch`]), the batch's commit time and the creates
/// waiting for a batch; creates refused because the queue was full.
pub const BATCH_SIZE: &str = "aio_batch_size";
pub const BATCH_SECONDS: &str = "aio_batch_commit_seconds";
pub const BATCH_QUEUE: &str = "aio_batch_queue";
pub const BATCH_REFUSED: &str = "aio_batch_refused_total";
const BATCH_SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Seconds: from a fast cached poll to a slow provider call.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The recorder, installed once per process (tests build several applications in one process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .and_then(|builder| builder.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCH_SIZE_BUCKETS))
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may stay empty");
        }
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route pattern, method and status.");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request latency, by route pattern, method and status.");
    describe_counter!(TASKS_CREATED, "Tasks created (credits held), by model and provider.");
    describe_counter!(TASKS_SETTLED, "Tasks settled, by model, provider and outcome (succeeded or the error code).");
    describe_gauge!(TASKS_OPEN, "Unfinished tasks in the database, by status (pending, running).");
    describe_counter!(IDEMPOTENT_REPLAYS, "Creates answered with an earlier task of the same Idempotency-Key.");
    describe_counter!(LIMIT_REFUSALS, "Creates refused by a key's or account's limit, by code and scope.");
    describe_gauge!(TASKS_QUEUED, "Tasks queued in the database (all accounts), waiting for room.");
    describe_histogram!(QUEUE_WAIT, Unit::Seconds, "How long dispatched tasks waited queued.");
    describe_counter!(QUEUE_TIMEOUTS, "Queued tasks failed with timeout after tasks.max_queue_secs.");
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Provider call latency, by provider and call (submit, poll, cancel)."
    );
    describe_counter!(UPSTREAM_ERRORS, "Failed provider calls, by provider, call and kind (retriable, permanent).");
    describe_counter!(
        UPSTREAM_ACCOUNT_PROBLEMS,
        "Upstream answers that make a route unavailable: the gateway's own account refused or unable to pay (401, 402, 403, 429 insufficient_quota, …) or the route's model missing (404), by provider and status."
    );
    describe_counter!(CREDITS_HELD, "Credits held on create, by model.");
    describe_counter!(CREDITS_CAPTURED, "Held credits spent on success, by model.");
    describe_counter!(CREDITS_RELEASED, "Held credits returned on failure or timeout, by model.");
    describe_counter!(RATE_LIMITED, "Requests refused with 429, by reason (key, concurrency).");
    describe_gauge!(DB_POOL_CONNECTIONS, "Database pool connections of this process, by state (in_use, idle).");
    describe_counter!(WEBHOOK_ATTEMPTS, "Outgoing webhook delivery attempts, by outcome.");
    describe_counter!(CREDITS_TOPPED_UP, "Credits bought: paid orders and redeemed codes.");
    describe_counter!(CREDITS_REVERSED, "Credits taken back by refunds and disputes.");
    describe_counter!(STRIPE_EVENTS, "Stripe webhook deliveries, by outcome.");
    describe_counter!(RETENTION_PURGED, "What the retention purge removed, by kind (files, tasks, audit).");
    describe_counter!(
        RETENTION_RUNS,
        "Retention purge runs, by outcome (done, skipped: another replica holds the lease, failed)."
    );
    describe_gauge!(HTTP_CONNECTIONS, "HTTP connections open.");
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "HTTP connections closed at once because server.max_connections were open."
    );
    describe_counter!(
        TASK_EVENTS,
        "Task-change notifications, by kind (published, dropped, received, reconnected, listen_failed)."
    );
    describe_gauge!(EVENT_STREAMS, "Open live-event streams of this process.");
    describe_histogram!(
        BATCH_SIZE,
        Unit::Count,
        "Requests per committed batch (group commit), by work: create, settle."
    );
    describe_histogram!(BATCH_SECONDS, Unit::Seconds, "Time to commit one batch, by work.");
    describe_gauge!(BATCH_QUEUE, "Requests waiting for a batch when the last batch was taken, by work.");
    describe_counter!(BATCH_REFUSED, "Requests refused with 503 overloaded: the queue of that work was full.");
    describe_counter!(TASKS_CANCELLED, "Tasks cancelled by their client, by upstream cancel (none, ok, failed).");
    describe_counter!(INSTANCE_HEARTBEATS, "Heartbeats of this gateway instance, by outcome (ok, failed).");
    describe_counter!(LEASES_TAKEN_OVER, "Leases of dead instances taken over by this process, by queue.");
    describe_counter!(AUDIT_ENTRIES, "Audit log entries written, by action.");
}

/// One answered HTTP request, by its route pattern, method and status.
pub fn http_request(labels: &[(&'static str, String); 3], started: Instant) {
    counter!(HTTP_REQUESTS, labels).increment(1);
    histogram!(HTTP_DURATION, labels).record(started.elapsed().as_secs_f64());
}

/// One batch of `work` committed (group commit, see `tasks::group`).
pub fn group_batch(work: &'static str, size: usize, started: Instant) {
    histogram!(BATCH_SIZE, "work" => work).record(size as f64);
    histogram!(BATCH_SECONDS, "work" => work).record(started.elapsed().as_secs_f64());
}

/// Requests of `work` waiting for a batch, as a committer took its batch.
pub fn group_queue(work: &'static str, waiting: usize) {
    gauge!(BATCH_QUEUE, "work" => work).set(waiting as f64);
}

pub fn group_refused(work: &'static str) {
    counter!(BATCH_REFUSED, "work" => work).increment(1);
}

/// A task of `model` (its sub-model id) on `provider` and its hold of `price` were committed.
pub fn task_created(model: &str, provider: &str, price: i64) {
    let labels = [("model", model.to_owned()), ("provider", provider.to_owned())];
    counter!(TASKS_CREATED, &labels).increment(1);
    counter!(CREDITS_HELD, "model" => model.to_owned()).increment(credits(price));
}

/// A terminal transition and its settlement were committed: `charged` of its hold of `price` captured
/// (a success, `error_code` `None`: per image delivered), the rest released.
pub fn task_settled(model: &str, provider: &str, price: i64, charged: i64, error_code: Option<&'static str>) {
    let outcome = error_code.unwrap_or("succeeded").to_owned();
    let labels = [("model", model.to_owned()), ("provider", provider.to_owned()), ("outcome", outcome)];
    counter!(TASKS_SETTLED, &labels).increment(1);
    counter!(CREDITS_CAPTURED, "model" => model.to_owned()).increment(credits(charged));
    counter!(CREDITS_RELEASED, "model" => model.to_owned()).increment(credits(price - charged));
}

fn credits(price: i64) -> u64 {
    u64::try_from(price).unwrap_or(0)
}

pub fn idempotent_replay() {
    counter!(IDEMPOTENT_REPLAYS).increment(1);
}

/// A create refused by a limit: `code` (`model_not_allowed`, `credit_cap_reached`, `too_many_in_flight`, `queue_full`)
/// and `scope` (`key`, `account`).
pub fn limit_refused(code: &'static str, scope: &'static str) {
    counter!(LIMIT_REFUSALS, "code" => code, "scope" => scope).increment(1);
}

/// One provider call: its latency, and when it failed, whether the error was retriable.
pub fn upstream_call(provider: &str, call: &'static str, started: Instant, failed_retriable: Option<bool>) {
    let labels = [("provider", provider.to_owned()), ("call", call.to_owned())];
    histogram!(UPSTREAM_DURATION, &labels).record(started.elapsed().as_secs_f64());
    if let Some(retriable) = failed_retriable {
        let kind = if retriable { "retriable" } else { "permanent" };
        counter!(UPSTREAM_ERRORS, "provider" => provider.to_owned(), "call" => call, "kind" => kind).increment(1);
    }
}

/// An upstream refused the gateway's own account: an operator problem, never the client's.
pub fn upstream_account_problem(provider: &str, status: u16) {
    counter!(UPSTREAM_ACCOUNT_PROBLEMS, "provider" => provider.to_owned(), "status" => status.to_string()).increment(1);
}

pub fn rate_limited(reason: &'static str) {
    counter!(RATE_LIMITED, "reason" => reason).increment(1);
}

/// A connection opened (`1.0`) or closed (`-1.0`).
pub fn http_connection(change: f64) {
    gauge!(HTTP_CONNECTIONS).increment(change);
}

/// A connection closed at once: the server had `server.max_connections` open.
pub fn http_connection_refused() {
    counter!(HTTP_CONNECTIONS_REFUSED).increment(1);
}

/// For the webhook deliverer: one delivery attempt and how it ended.
pub fn webhook_attempt(outcome: &'static str) {
    counter!(WEBHOOK_ATTEMPTS, "outcome" => outcome).increment(1);
}

/// Credits bought (positive) or taken back (negative), after the change committed.
pub fn top_up(credits: i64) {
    if credits >= 0 {
        counter!(CREDITS_TOPPED_UP).increment(credits.unsigned_abs());
    } else {
        counter!(CREDITS_REVERSED).increment(credits.unsigned_abs());
    }
}

/// One Stripe webhook delivery and what became of it.
pub fn stripe_event(outcome: &'static str) {
    counter!(STRIPE_EVENTS, "outcome" => outcome).increment(1);
}

/// For the retention purge: `count` things of `kind` (files, tasks) removed.
pub fn retention_purged(kind: &'static str, count: u64) {
    counter!(RETENTION_PURGED, "kind" => kind).increment(count);
}

/// One audit log entry written (in its change's transaction, which commits unless the database fails).
pub fn audit_entry(action: &'static str) {
    counter!(AUDIT_ENTRIES, "action" => action).increment(1);
}

pub fn retention_run(outcome: &'static str) {
    counter!(RETENTION_RUNS, "outcome" => outcome).increment(1);
}

/// One task-change notification (see `task_events`).
pub fn task_event(kind: &'static str) {
    counter!(TASK_EVENTS, "kind" => kind).increment(1);
}

/// A live-event stream opened (`+1`) or closed (`-1`).
pub fn event_streams(change: f64) {
    gauge!(EVENT_STREAMS).increment(change);
}

/// A client cancelled a task; `upstream` says whether the provider's cancel was asked and how it went.
pub fn task_cancelled(upstream: &'static str) {
    counter!(TASKS_CANCELLED, "upstream" => upstream).increment(1);
}

/// One heartbeat of this instance, written or not.
pub fn instance_heartbeat(ok: bool) {
    counter!(INSTANCE_HEARTBEATS, "outcome" => if ok { "ok" } else { "failed" }).increment(1);
}

/// `rows` leased rows of `queue` whose instance died were released by this process.
pub fn leases_taken_over(queue: &'static str, rows: u64) {
    counter!(LEASES_TAKEN_OVER, "queue" => queue).increment(rows);
}

/// The unfinished tasks in the database, sampled when `/metrics` is scraped.
/// The admission queue's depth, sampled by `/metrics`.
pub fn queued_tasks(queued: i64) {
    gauge!(TASKS_QUEUED).set(queued as f64);
}

/// A queued task was dispatched after waiting `waited`.
pub fn queue_wait(waited: std::time::Duration) {
    histogram!(QUEUE_WAIT).record(waited.as_secs_f64());
}

/// A queued task failed with `timeout`.
pub fn queue_timeout() {
    counter!(QUEUE_TIMEOUTS).increment(1);
}

pub fn open_tasks(pending: i64, running: i64) {
    gauge!(TASKS_OPEN, "status" => "pending").set(pending as f64);
    gauge!(TASKS_OPEN, "status" => "running").set(running as f64);
}

/// Samples the pool's gauges, then renders everything in the Prometheus text format.
pub fn render(db: &Db) -> String {
    let size = db.size() as f64;
    let idle = db.num_idle() as f64;
    gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set(size - idle);
    gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(idle);
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}
