//! The storage conformance suite: every operation of the storage interface, the ledger invariants,
//! concurrency and crash recovery, run the same way on PostgreSQL and on SQLite (`both!` makes one
//! test of each backend from one body).

use std::time::Duration;

use aio_gateway::accounts::{self, OwnRevoke};
use aio_gateway::audit::Actor;
use aio_gateway::auth::KeyAuth;
use aio_gateway::config::BodyVersion;
use aio_gateway::files::FileStore;
use aio_gateway::idempotency::{self, IdempotencyKey};
use aio_gateway::ledger::{self, Hold, UsageFilter};
use aio_gateway::on_db;
use aio_gateway::providers::simulated::Simulated;
use aio_gateway::providers::{JobState, Provider, SubmitRequest, Submitted};
use aio_gateway::store::{self, Db};
use aio_gateway::tasks::{
    self, CallbackEvent, Created, NewTask, Outcome, OutputImage, Start, TaskError, TaskErrorCode, TaskInput,
    TaskOutput, TaskStatus,
};
use aio_gateway::webhooks::queue::{self, Attempt, DeliveryStatus, Next, Trigger};
use aio_gateway::webhooks::secrets;
use chrono::{Duration as Age, Utc};

use crate::helpers::{self, assert_ledger_consistent_on, Backend, TestStore};

/// One `#[tokio::test]` per backend for each `async fn(Backend)` named.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::helpers::Backend;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await
            }
        }
    )*};
}
// Other suites that run on both backends use it too (`use crate::storage::both;`).
pub(crate) use both;

both!(
    accounts_and_keys,
    ledger_operations,
    task_lifecycle_and_webhooks,
    idempotency_keys,
    webhook_secrets,
    concurrent_creates_never_overspend,
    crash_recovery,
    bootstrap_once,
    starts_in_one_batch,
);

const PRICE: i64 = 12;

fn input(prompt: &str) -> TaskInput {
    TaskInput { prompt: prompt.into(), aspect_ratio: Some("1:1".into()), quality: None, image_urls: vec![], n: None }
}

/// A task of the seed model on the simulated provider, due at once unless `lease` is given.
fn new_task(
    id: &str,
    account_id: i64,
    input: &TaskInput,
    callback_url: Option<&str>,
    idempotency: Option<&IdempotencyKey>,
) -> NewTask {
    NewTask {
        id: id.into(),
        account_id,
        model: "seedream-4-5".into(),
        sub_model: "seedream/4.5-text-to-image".into(),
        input: input.clone(),
        price: PRICE,
        breakdown: None,
        key_id: None,
        callback_url: callback_url.map(Into::into),
        callback_events: None,
        provider: "simulated".into(),
        upstream_model: "sim".into(),
        provider_label: "Simulated".into(),
        simulated: true,
        deadline: Duration::from_secs(900),
        lease: None,
        owner: "inst_test".into(),
        idempotency: idempotency.cloned(),
        callback_token: None,
        window: None,
        max_queued: 1000,
    }
}

async fn create_task(db: &Db, account_id: i64, callback_url: Option<&str>) -> tasks::Task {
    let id = tasks::new_task_id();
    let input = input("a lake");
    match tasks::create(db, new_task(&id, account_id, &input, callback_url, None)).await.expect("create a task") {
        Created::Task(task) => *task,
        _ => panic!("the task was not created"),
    }
}

fn succeeded() -> Outcome {
    Outcome::Succeeded(TaskOutput { images: vec![OutputImage { url: "https://example.com/a.png".into() }] })
}

fn failed() -> Outcome {
    Outcome::Failed(TaskError { code: TaskErrorCode::UpstreamFailed, message: "no".into() })
}

/// Moves every due time of `table` into the past: what the passing of time does to leases.
async fn make_all_due(db: &Db, table: &str, column: &str) {
    let sql = format!("UPDATE {table} SET {column} = $1");
    let past = Utc::now() - Age::hours(1);
    on_db!(db, pool => sqlx::query(&sql).bind(past).execute(pool).await.map(drop)).expect("move due times");
}

async fn balance(db: &Db, account_id: i64) -> (i64, i64) {
    let found = ledger::balance(db, account_id).await.expect("balance").expect("the account exists");
    (found.balance, found.held)
}

async fn accounts_and_keys(backend: Backend) {
    let store = TestStore::new(backend, 5).await;
    let db = &store.db;
    let first = accounts::create(db, &Actor::cli(), "first", 100).await.expect("create");
    let second = accounts::create(db, &Actor::cli(), "second", 0).await.expect("create");
    let account = accounts::get(db, first).await.expect("get").expect("found");
    assert_eq!((account.name.as_str(), account.balance, account.held), ("first", 100, 0));
    assert!(accounts::get(db, 999).await.expect("get").is_none());
    assert!(accounts::exists(db, second).await.expect("exists"));
    let listed: Vec<i64> = accounts::list(db, None, 10).await.expect("list").iter().map(|a| a.account_id).collect();
    assert_eq!(listed, vec![first, second]);
    let after: Vec<i64> =
        accounts::list(db, Some(first), 10).await.expect("list").iter().map(|a| a.account_id).collect();
    assert_eq!(after, vec![second]);
    assert!(accounts::create_key(db, &Actor::cli(), 999, None, None).await.is_err(), "a key for a missing account");

    let key = accounts::create_key(db, &Actor::cli(), first, Some("main"), None).await.expect("key");
    let expired =
        accounts::create_key(db, &Actor::cli(), first, None, Some(Utc::now() - Age::minutes(1))).await.expect("key");
    let later =
        accounts::create_key(db, &Actor::cli(), first, None, Some(Utc::now() + Age::hours(1))).await.expect("key");
    let keys = accounts::list_keys(db, first).await.expect("list keys");
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k.revoked_at.is_none() && key.api_key.starts_with("aio_") && k.prefix.len() == 12));

    // No cache: every lookup reads the database.
    let auth = KeyAuth::new(db.clone(), Duration::ZERO);
    let bearer = |key: &str| format!("Bearer {key}");
    let caller = auth.authenticate(Some(&bearer(&key.api_key))).await.expect("a valid key");
    assert_eq!((caller.account_id, caller.key_id.as_str()), (first, key.key_id.as_str()));
    assert!(auth.authenticate(Some(&bearer(&later.api_key))).await.is_ok(), "a key that expires later");
    assert!(auth.authenticate(Some(&bearer(&expired.api_key))).await.is_err(), "an expired key");
    let used = accounts::list_keys(db, first).await.expect("list keys");
    assert!(used.iter().find(|k| k.key_id == key.key_id).expect("the key").last_used_at.is_some());

    assert!(matches!(
        accounts::revoke_own_key(db, &Actor::cli(), second, &key.key_id).await.expect("revoke"),
        OwnRevoke::NotFound
    ));
    assert!(matches!(
        accounts::revoke_own_key(db, &Actor::cli(), first, &key.key_id).await.expect("revoke"),
        OwnRevoke::Revoked { .. }
    ));
    assert!(matches!(
        accounts::revoke_own_key(db, &Actor::cli(), first, &key.key_id).await.expect("revoke"),
        OwnRevoke::AlreadyRevoked
    ));
    assert!(auth.authenticate(Some(&bearer(&key.api_key))).await.is_err(), "a revoked key");
    assert!(accounts::revoke_key(db, &Actor::cli(), &later.key_id).await.expect("revoke"));
    assert!(!accounts::revoke_key(db, &Actor::cli(), &later.key_id).await.expect("revoke"), "revoked before");
    assert!(auth.authenticate(Some(&bearer(&later.api_key))).await.is_err());
}

async fn ledger_operations(backend: Backend) {
    let store = TestStore::new(backend, 5).await;
    let db = &store.db;
    let account = accounts::create(db, &Actor::cli(), "a", 20).await.expect("create");
    let mut tx = db.begin().await.expect("begin");
    assert_eq!(ledger::grant(&mut tx, account, 5, "top-up").await.expect("grant"), 25);
    assert_eq!(ledger::adjust(&mut tx, account, -26, "too much").await.expect("adjust"), None);
    assert_eq!(ledger::adjust(&mut tx, account, -3, "fix").await.expect("adjust"), Some(22));
    let last = ledger::last(&mut tx, account).await.expect("last");
    assert_eq!(
        (last.kind.as_str(), last.amount, last.balance_after, last.reason.as_deref()),
        ("adjust", -3, 22, Some("fix"))
    );
    tx.commit().await.expect("commit");

    // Holds go through task creation: 22 credits hold one task of 12, not two.
    let held = create_task(db, account, None).await;
    let id = tasks::new_task_id();
    let prompt = input("x");
    assert!(matches!(
        tasks::create(db, new_task(&id, account, &prompt, None, None)).await.expect("create"),
        Created::Insufficient { available: 10 }
    ));
    assert_eq!(balance(db, account).await, (10, 12));
    let mut tx = db.begin().await.expect("begin");
    assert_eq!(
        ledger::hold(&mut tx, account, &held.id, 1000).await.expect("hold"),
        Hold::Insufficient { available: 10 }
    );
    tx.rollback().await.expect("rollback");

    // A second settlement of one task is refused by the database itself.
    tasks::settle(db, &held.id, succeeded(), Duration::ZERO, &helpers::test_files())
        .await
        .expect("settle")
        .expect("settled now");
    assert_eq!(balance(db, account).await, (10, 0));
    let mut tx = db.begin().await.expect("begin");
    let again =
        ledger::Settlement { account_id: account, task_id: &held.id, held: PRICE, charged: 0, reason: String::new() };
    assert!(ledger::settle_all(&mut tx, &[again]).await.is_err(), "released after a capture");
    drop(tx);
    assert_eq!(balance(db, account).await, (10, 0));

    let mut tx = db.begin().await.expect("begin");
    ledger::grant(&mut tx, account, 2, "exactly one more").await.expect("grant");
    tx.commit().await.expect("commit");
    let other = create_task(db, account, None).await;
    assert!(matches!(
        tasks::create(db, new_task(&tasks::new_task_id(), account, &prompt, None, None)).await.expect("create"),
        Created::Insufficient { available: 0 }
    ));
    tasks::settle(db, &other.id, failed(), Duration::ZERO, &helpers::test_files())
        .await
        .expect("settle")
        .expect("settled now");
    assert_eq!(balance(db, account).await, (12, 0));

    let kinds: Vec<(String, i64)> = ledger::recent(db, account, 100)
        .await
        .expect("recent")
        .into_iter()
        .map(|e| (e.kind.as_str().to_owned(), e.amount))
        .collect();
    let expected = [
        ("release", 12),
        ("hold", -12),
        ("grant", 2),
        ("capture", 0),
        ("hold", -12),
        ("adjust", -3),
        ("grant", 5),
        ("grant", 20),
    ];
    assert_eq!(kinds, expected.map(|(k, a)| (k.to_string(), a)).to_vec());
    let newest = ledger::recent(db, account, 1).await.expect("recent");
    let page = ledger::page(db, account, &UsageFilter::default(), Some(newest[0].id), 2).await.expect("page");
    assert_eq!(page.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["hold", "grant"]);
    let model = UsageFilter { model: Some("seedream-4-5"), ..UsageFilter::default() };
    assert_eq!(ledger::page(db, account, &model, None, 100).await.expect("page").len(), 4, "task entries only");
    let future = UsageFilter { from: Some(Utc::now() + Age::hours(1)), ..UsageFilter::default() };
    assert!(ledger::page(db, account, &future, None, 100).await.expect("page").is_empty());
    let past =
        UsageFilter { from: Some(Utc::now() - Age::hours(1)), to: Some(Utc::now() + Age::hours(1)), model: None };
    assert_eq!(ledger::page(db, account, &past, None, 100).await.expect("page").len(), 8);
    assert_ledger_consistent_on(db).await;
}

async fn task_lifecycle_and_webhooks(backend: Backend) {
    let store = TestStore::new(backend, 5).await;
    let db = &store.db;
    let account = accounts::create(db, &Actor::cli(), "a", 100).await.expect("create");
    let url = "https://receiver.example.com/hook";
    let task = create_task(db, account, Some(url)).await;
    assert_eq!((task.status, task.price, task.attempts), (TaskStatus::Pending, PRICE, 0));
    assert!(task.deadline_at > Utc::now() + Age::minutes(14));
    assert!(tasks::get(db, account + 1, &task.id).await.expect("get").is_none(), "another account's task");
    assert_eq!(tasks::count_open(db).await.expect("count"), (1, 0));

    // Claimed once: leased, not claimable again until the lease passes.
    let claimed = tasks::claim_due(db, 10, Duration::from_secs(3600), "inst_test").await.expect("claim");
    assert_eq!(claimed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), [task.id.as_str()]);
    assert!(tasks::claim_due(db, 10, Duration::from_secs(3600), "inst_test").await.expect("claim").is_empty());

    assert!(tasks::switch_route(db, &task.id, "simulated", "sim-2", "Simulated 2", true).await.expect("switch"));
    let token = tasks::new_callback_token(db, &task.id, None).await.expect("token");
    let found = tasks::by_callback_token(db, "simulated", &token).await.expect("by token").expect("found");
    assert_eq!((found.id.as_str(), found.upstream_model.as_str()), (task.id.as_str(), "sim-2"));
    assert_eq!(
        (found.provider_label.as_deref(), found.simulated),
        (Some("Simulated 2"), true),
        "the route's label moves with it"
    );
    assert!(tasks::by_callback_token(db, "kie", &token).await.expect("by token").is_none(), "another provider");
    let files = helpers::test_files();
    assert!(tasks::mark_running(db, &task, "up-1", Duration::from_secs(3600), BodyVersion::V1, &files)
        .await
        .expect("running")
        .is_some());
    assert!(
        tasks::mark_running(db, &task, "up-2", Duration::ZERO, BodyVersion::V1, &files)
            .await
            .expect("running")
            .is_none(),
        "running already"
    );
    assert!(!tasks::switch_route(db, &task.id, "kie", "x", "KIE", false).await.expect("switch"), "only while pending");
    assert_eq!(tasks::count_open(db).await.expect("count"), (0, 1));
    assert!(
        tasks::claim_due(db, 10, Duration::from_secs(60), "inst_test").await.expect("claim").is_empty(),
        "polled in an hour"
    );
    // A callback makes it due now; a reschedule counts an attempt and never passes the deadline.
    tasks::callback_arrived(db, &task.id).await.expect("callback");
    let due = tasks::claim_due(db, 10, Duration::from_secs(60), "inst_test").await.expect("claim");
    assert_eq!(due.len(), 1);
    tasks::reschedule(db, &task.id, Duration::from_secs(100_000)).await.expect("reschedule");
    let rescheduled = tasks::get(db, account, &task.id).await.expect("get").expect("found");
    assert_eq!((rescheduled.attempts, rescheduled.upstream_id.as_deref()), (1, Some("up-1")));

    let settled = tasks::settle(db, &task.id, succeeded(), Duration::ZERO, &helpers::test_files())
        .await
        .expect("settle")
        .expect("settled now");
    assert_eq!(settled.status, TaskStatus::Succeeded);
    assert!(settled.completed_at.is_some());
    assert!(
        tasks::settle(db, &task.id, failed(), Duration::ZERO, &helpers::test_files()).await.expect("settle").is_none(),
        "settled once"
    );
    assert_eq!(balance(db, account).await, (88, 0));
    assert_eq!(tasks::count_open(db).await.expect("count"), (0, 0));

    let second = create_task(db, account, None).await;
    let listed = tasks::list(db, account, 10, None, None, &UsageFilter::default()).await.expect("list");
    assert_eq!(listed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), [second.id.as_str(), task.id.as_str()]);
    let older = tasks::list(db, account, 10, Some(&second.id), None, &UsageFilter::default()).await.expect("list");
    assert_eq!(older.len(), 1);
    let done =
        tasks::list(db, account, 10, None, Some(TaskStatus::Succeeded), &UsageFilter::default()).await.expect("list");
    assert_eq!(done.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), [task.id.as_str()]);
    let everything = UsageFilter { from: Some(Utc::now() - Age::hours(1)), to: None, model: Some("seedream-4-5") };
    assert_eq!(tasks::usage_page(db, account, &everything, None, 10).await.expect("usage").len(), 2);
    assert_eq!(tasks::usage_totals(db, account, &everything).await.expect("totals"), (2, 1, 0, 1, PRICE));
    let none = UsageFilter { model: Some("other"), ..UsageFilter::default() };
    assert_eq!(tasks::usage_totals(db, account, &none).await.expect("totals"), (0, 0, 0, 0, 0));
    assert_eq!(tasks::release(db, std::slice::from_ref(&second.id)).await.expect("release"), 1);

    // The settlement enqueued the task's webhook: claimed, attempted, retried, delivered.
    let deliveries = queue::claim_due(db, 10, Duration::from_secs(60), "inst_test").await.expect("claim deliveries");
    assert_eq!(deliveries.len(), 1);
    let delivery = &deliveries[0];
    assert_eq!(
        (delivery.url.as_str(), delivery.trigger, delivery.status),
        (url, Trigger::Settled, DeliveryStatus::Pending)
    );
    let body: serde_json::Value = serde_json::from_slice(&delivery.body).expect("a JSON body");
    assert_eq!(body["status"], "succeeded");
    assert!(queue::claim_due(db, 10, Duration::from_secs(60), "inst_test").await.expect("claim").is_empty(), "leased");
    let attempt = |code: Option<i32>| Attempt {
        delivery_id: delivery.id.clone(),
        attempted_at: Utc::now(),
        status_code: code,
        latency_ms: 5,
        error: code.is_none().then(|| "connection refused".to_string()),
        response_excerpt: None,
    };
    queue::record(db, &attempt(None), Next::RetryIn(Duration::ZERO)).await.expect("record");
    let retried = queue::claim_due(db, 10, Duration::from_secs(60), "inst_test").await.expect("claim");
    assert_eq!((retried.len(), retried[0].attempts), (1, 1));
    queue::record(db, &attempt(Some(204)), Next::Delivered).await.expect("record");
    let manual = tasks::resend_webhook(db, settled.account_id, &settled.id, &helpers::test_files(), 10)
        .await
        .expect("manual retry");
    assert_eq!((manual.trigger, manual.webhook_id.as_str()), (Trigger::Manual, delivery.webhook_id.as_str()));
    assert_eq!(manual.body, delivery.body, "the same event, byte for byte");
    let history = queue::list_for_task(db, &task.id, None, 100).await.expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].0.status, DeliveryStatus::Delivered);
    assert_eq!(history[0].1.iter().map(|a| a.status_code).collect::<Vec<_>>(), [None, Some(204)]);
    assert!(history[1].1.is_empty());
    assert_ledger_consistent_on(db).await;
}

async fn idempotency_keys(backend: Backend) {
    let store = TestStore::new(backend, 5).await;
    let db = &store.db;
    let account = accounts::create(db, &Actor::cli(), "a", 100).await.expect("create");
    let prompt = input("a lake");
    let key = IdempotencyKey { key: "k-1".into(), request_hash: tasks::request_hash("m", &prompt, None, None) };
    let first_id = tasks::new_task_id();
    let Created::Task(first) =
        tasks::create(db, new_task(&first_id, account, &prompt, None, Some(&key))).await.expect("create")
    else {
        panic!("the first use creates the task");
    };
    let again = tasks::new_task_id();
    match tasks::create(db, new_task(&again, account, &prompt, None, Some(&key))).await.expect("create") {
        Created::Replayed(task) => assert_eq!(task.id, first.id),
        _ => panic!("the same key and request replay the first task"),
    }
    let other = IdempotencyKey { key: "k-1".into(), request_hash: tasks::request_hash("n", &prompt, None, None) };
    assert!(matches!(
        tasks::create(db, new_task(&tasks::new_task_id(), account, &prompt, None, Some(&other))).await.expect("create"),
        Created::Conflict
    ));
    assert_eq!(idempotency::find(db, account, "k-1").await.expect("find").map(|(_, id)| id), Some(first.id.clone()));
    assert_eq!(balance(db, account).await, (88, 12), "one hold");
    assert_eq!(idempotency::purge(db).await.expect("purge"), 0, "nothing expired");

    // After 24 hours the key is free again, and purged.
    let past = Utc::now() - Age::hours(25);
    on_db!(db, pool => sqlx::query("UPDATE idempotency_keys SET created_at = $1").bind(past).execute(pool).await.map(drop))
        .expect("age");
    assert!(idempotency::find(db, account, "k-1").await.expect("find").is_none());
    assert_eq!(idempotency::purge(db).await.expect("purge"), 1);
    let reused = tasks::new_task_id();
    assert!(matches!(
        tasks::create(db, new_task(&reused, account, &prompt, None, Some(&other))).await.expect("create"),
        Created::Task(_)
    ));
    assert_ledger_consistent_on(db).await;
}

async fn webhook_secrets(backend: Backend) {
    let store = TestStore::new(backend, 5).await;
    let db = &store.db;
    let account = accounts::create(db, &Actor::cli(), "a", 0).await.expect("create");
    let first = secrets::signing(db, account).await.expect("signing");
    assert!(first.current.starts_with("whsec_") && first.previous.is_none());
    assert_eq!(secrets::signing(db, account).await.expect("signing").current, first.current, "created once");
    let rotated = secrets::rotate(db, &Actor::cli(), account, Duration::from_secs(3600)).await.expect("rotate");
    let now = secrets::signing(db, account).await.expect("signing");
    assert_eq!((now.current.as_str(), now.previous.as_deref()), (rotated.as_str(), Some(first.current.as_str())));
    secrets::rotate(db, &Actor::cli(), account, Duration::ZERO).await.expect("rotate");
    assert!(secrets::signing(db, account).await.expect("signing").previous.is_none(), "no overlap");
}

/// 200 creates at once on an account that can pay for 50: exactly 50 tasks, 150 refusals, nothing
/// overspent, every hold in the ledger.
async fn concurrent_creates_never_overspend(backend: Backend) {
    let store = TestStore::new(backend, 10).await;
    let db = &store.db;
    let account = accounts::create(db, &Actor::cli(), "a", 50 * PRICE).await.expect("create");
    let creates = (0..200).map(|i| {
        let db = db.clone();
        tokio::spawn(async move {
            let id = tasks::new_task_id();
            let prompt = input(&format!("lake {i}"));
            tasks::create(&db, new_task(&id, account, &prompt, None, None)).await.expect("create")
        })
    });
    let results = futures::future::join_all(creates).await;
    let created = results.iter().filter(|r| matches!(r, Ok(Created::Task(_)))).count();
    let refused = results.iter().filter(|r| matches!(r, Ok(Created::Insufficient { .. }))).count();
    assert_eq!((created, refused), (50, 150));
    assert_eq!(balance(db, account).await, (0, 50 * PRICE));
    assert_eq!(tasks::count_open(db).await.expect("count"), (50, 0));
    assert_ledger_consistent_on(db).await;
}

/// A worker that dies holding claims: its leases run out and another worker takes the tasks over;
/// a resubmit to the provider finds the first job; each task settles once.
async fn crash_recovery(backend: Backend) {
    let store = TestStore::new(backend, 5).await;
    let db = &store.db;
    let account = accounts::create(db, &Actor::cli(), "a", 100).await.expect("create");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create_task(db, account, None).await.id);
    }
    let files = tempfile::tempdir().expect("files folder");
    let provider = Simulated::new(
        db.clone(),
        FileStore::new(files.path().to_path_buf(), "http://127.0.0.1:1").expect("files"),
        Duration::ZERO,
    );
    // The first worker claims everything and submits one task, then dies.
    assert_eq!(tasks::claim_due(db, 10, Duration::from_secs(3600), "inst_test").await.expect("claim").len(), 3);
    let first_job = submit(&provider, &ids[0]).await;
    assert!(
        tasks::claim_due(db, 10, Duration::from_secs(3600), "inst_test").await.expect("claim").is_empty(),
        "leased"
    );

    // The leases pass: the next worker claims all three, resubmits, and settles each once.
    make_all_due(db, "tasks", "next_poll_at").await;
    let mut taken = tasks::claim_due(db, 10, Duration::from_secs(3600), "inst_test").await.expect("claim");
    taken.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(taken.iter().map(|t| t.id.clone()).collect::<Vec<_>>(), ids);
    for task in &taken {
        let upstream_id = submit(&provider, &task.id).await;
        if task.id == ids[0] {
            assert_eq!(upstream_id, first_job, "a resubmit finds the first job");
        }
        assert!(tasks::mark_running(db, task, &upstream_id, Duration::ZERO, BodyVersion::V1, &helpers::test_files())
            .await
            .expect("running")
            .is_some());
        let JobState::Succeeded { images } = provider.poll(&upstream_id).await.expect("poll") else {
            panic!("a job without delay is done");
        };
        let outcome = Outcome::Succeeded(TaskOutput { images });
        assert!(tasks::settle(db, &task.id, outcome, Duration::ZERO, &helpers::test_files())
            .await
            .expect("settle")
            .is_some());
    }
    // A graceful stop hands leases back at once; settled tasks are not claimed again.
    assert_eq!(tasks::release(db, &ids).await.expect("release"), 0);
    make_all_due(db, "tasks", "next_poll_at").await;
    assert!(tasks::claim_due(db, 10, Duration::from_secs(60), "inst_test").await.expect("claim").is_empty());
    assert_eq!(balance(db, account).await, (64, 0));
    assert_ledger_consistent_on(db).await;
}

/// Submits a task to the simulated provider; returns its job id.
async fn submit(provider: &Simulated, task_id: &str) -> String {
    let prompt = input("a lake");
    let fields = serde_json::Map::from_iter([("prompt".to_owned(), serde_json::json!("a lake"))]);
    let request = SubmitRequest { task_id, upstream_model: "sim", input: &prompt, callback_url: None, fields };
    match provider.submit(request).await.expect("submit") {
        Submitted::Accepted { upstream_id } => upstream_id,
        Submitted::Completed { .. } => panic!("the simulated provider is asynchronous"),
    }
}

async fn bootstrap_once(backend: Backend) {
    let store = TestStore::new(backend, 5).await;
    let db = &store.db;
    assert!(store::is_ready(db).await);
    let key = accounts::bootstrap(db, 1000).await.expect("bootstrap").expect("a key on an empty database");
    assert!(key.api_key.starts_with("aio_"));
    assert!(accounts::bootstrap(db, 1000).await.expect("bootstrap").is_none(), "only once");
    let all = accounts::list(db, None, 10).await.expect("list");
    assert_eq!(all.iter().map(|a| (a.name.as_str(), a.balance)).collect::<Vec<_>>(), [("default", 1000)]);
    assert_ledger_consistent_on(db).await;
}

/// A batch of starts ([`tasks::start`]): each pending task becomes `running` with its own job id and
/// schedule; a task no longer pending, or started twice in the batch, is left alone (`None`); only the
/// task whose webhook wants it gets a `started` delivery.
async fn starts_in_one_batch(backend: Backend) {
    let store = TestStore::new(backend, 5).await;
    let db = &store.db;
    let account = accounts::create(db, &Actor::cli(), "starts", 100).await.expect("create");
    let input = input("a lake");
    let mut wanting = new_task(&tasks::new_task_id(), account, &input, Some("https://example.com/hook"), None);
    wanting.callback_events = Some(vec![CallbackEvent::Started, CallbackEvent::Completed]);
    let wanting = match tasks::create(db, wanting).await.expect("create") {
        Created::Task(task) => *task,
        _ => panic!("the task was not created"),
    };
    let plain = create_task(db, account, Some("https://example.com/hook")).await;
    let cancelled = create_task(db, account, None).await;
    tasks::settle(db, &cancelled.id, Outcome::Cancelled, Duration::ZERO, &helpers::test_files())
        .await
        .expect("cancel")
        .expect("cancelled now");
    let start = |task: &tasks::Task, upstream_id: &str, next_poll_in: Duration| {
        Start::of(task, upstream_id, next_poll_in, BodyVersion::V1)
    };
    let batch = [
        start(&plain, "up-plain", Duration::from_secs(3600)),
        start(&cancelled, "up-cancelled", Duration::ZERO),
        start(&wanting, "up-wanting", Duration::ZERO),
        start(&plain, "up-again", Duration::ZERO),
    ];
    let refs: Vec<&Start> = batch.iter().collect();
    let started = tasks::start::commit(db, &helpers::test_files(), &refs).await.expect("start");
    let ids: Vec<Option<(&str, TaskStatus, Option<&str>)>> =
        started.iter().map(|task| task.as_ref().map(|t| (t.id.as_str(), t.status, t.upstream_id.as_deref()))).collect();
    assert_eq!(
        ids,
        [
            Some((plain.id.as_str(), TaskStatus::Running, Some("up-plain"))),
            None,
            Some((wanting.id.as_str(), TaskStatus::Running, Some("up-wanting"))),
            None,
        ]
    );
    // Each kept its own schedule: the one due at once is claimed, the other waits an hour.
    let due = tasks::claim_due(db, 10, Duration::from_secs(60), "inst_test").await.expect("claim");
    assert_eq!(due.iter().map(|task| task.id.as_str()).collect::<Vec<_>>(), [wanting.id.as_str()]);
    let triggers: Vec<(String, String)> = on_db!(db, pool => sqlx::query_as(
        "SELECT task_id, trigger FROM webhook_deliveries ORDER BY task_id, trigger",
    )
    .fetch_all(pool)
    .await)
    .expect("deliveries");
    assert_eq!(triggers, [(wanting.id.clone(), "started".to_owned())], "one started delivery, none for the others");
    let cancelled_now = tasks::get(db, account, &cancelled.id).await.expect("get").expect("found");
    assert_eq!((cancelled_now.status, cancelled_now.upstream_id), (TaskStatus::Cancelled, None));
}
