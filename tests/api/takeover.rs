//! Crash takeover (issue 22): every gateway running the engine registers an instance and heartbeats;
//! leased tasks and webhook deliveries name their instance; the leases of a SIGKILLed gateway pass to
//! a live one as soon as its heartbeat is stale, not after the lease time. The leases here are 600 s
//! (tasks) and 630 s (deliveries), far beyond the bounds the waits below allow, so only the takeover
//! can finish the work within them; those bounds only stop a hang, they are no timing assertion.

use std::time::Duration;

use aio_gateway::instances;
use aio_gateway::on_db;
use aio_gateway::store::Db;
use aio_gateway::tasks::{self, NewTask, TaskInput};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fakes::kie::{FakeKie, KEY};
use crate::fakes::Step;
use crate::helpers::{
    assert_ledger_consistent_on, bearer, catalog, http_client, new_account_on, wait_all_terminal_on, Backend, Gateway,
    TestStore,
};
use crate::receiver::{Receiver, Reply};

const TASKS: usize = 4;
/// Seedream 4.5's price in the catalog.
const PRICE: i64 = 12;
const FOREVER: Duration = Duration::from_secs(600);

/// Waits until `done` holds; the 30 s bound only stops a hang.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(tokio::time::Instant::now() < give_up, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(db: &Db, sql: &str) -> i64 {
    let (n,): (i64,) = on_db!(db, pool => sqlx::query_as(sql).fetch_one(pool).await).expect(sql);
    n
}

/// The instances holding leases in `table` (of unfinished rows).
async fn lease_holders(db: &Db, table: &str) -> Vec<Option<String>> {
    let sql = format!("SELECT DISTINCT leased_by FROM {table} ORDER BY leased_by");
    on_db!(db, pool => sqlx::query_scalar(&sql).fetch_all(pool).await).expect("read leases")
}

/// The instance id of the gateway process `pid`.
async fn instance_of(db: &Db, pid: u32) -> String {
    on_db!(db, pool => sqlx::query_scalar("SELECT id FROM instances WHERE pid = $1")
        .bind(i64::from(pid))
        .fetch_one(pool)
        .await)
    .expect("the gateway registered its instance")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_gateway_takes_over_the_leases_of_a_sigkilled_one() {
    leases_pass_on(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_takes_over_the_leases_at_once_on_sqlite() {
    leases_pass_on(Backend::Sqlite).await
}

/// PostgreSQL: gateways A and B run together; A leases tasks (its submits hang upstream) and is
/// killed; B takes them over, settles them, and its webhook deliveries hang at the receiver; C
/// starts, B is killed, C takes the deliveries over. SQLite serves one process: B and C are restarts.
async fn leases_pass_on(backend: Backend) {
    let store = TestStore::new(backend, 5).await;
    let db = store.db.clone();
    let dir = tempfile::tempdir().expect("temporary directory");
    let client = http_client();
    let (account_id, key) = new_account_on(&db, 1000).await;
    let kie = FakeKie::start().await;
    kie.script("create", (0..TASKS).map(|_| Step::Hang(FOREVER)));
    let receiver = Receiver::start("127.0.0.1").await;
    receiver.script((0..TASKS).map(|_| Reply::Hang(FOREVER)));
    let env = [
        ("AIO__CATALOG__MODELS_PATH", catalog("kie_only.toml").display().to_string()),
        ("KIE_API_KEY", KEY.to_owned()),
        ("AIO__PROVIDERS__KIE__BASE_URL", kie.base_url().to_owned()),
        ("AIO__PROVIDERS__KIE__CALLBACKS", "false".to_owned()),
        ("AIO__RESULTS__REHOST", "false".to_owned()),
        ("AIO__TASKS__LEASE_SECS", FOREVER.as_secs().to_string()),
        ("AIO__TASKS__DISPATCH_WAIT_MS", "0".to_owned()),
        ("AIO__TASKS__HEARTBEAT_MS", "200".to_owned()),
        ("AIO__TASKS__INSTANCE_STALE_MS", "1500".to_owned()),
        ("AIO__WEBHOOKS__ALLOW_HTTP", "true".to_owned()),
        ("AIO__WEBHOOKS__ALLOWED_PRIVATE_CIDRS", "127.0.0.0/8".to_owned()),
        ("AIO__WEBHOOKS__TIMEOUT_SECS", FOREVER.as_secs().to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let start = |name: &str| {
        let log = dir.path().join(format!("{name}.log"));
        Gateway::start_with(&store.url, &dir.path().join("files"), &log, "all", &env)
    };
    let parallel = backend == Backend::Postgres;

    // 1. A creates the tasks; its submits hang upstream, so it holds their leases when it dies.
    let mut a = start("a");
    a.ready(&client).await;
    let mut b = parallel.then(|| start("b"));
    if let Some(b) = b.as_mut() {
        b.ready(&client).await;
    }
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let response = client
            .post(format!("{}/api/v1/images/generations", a.address))
            .header(AUTHORIZATION, bearer(&key))
            .json(&json!({"prompt": format!("taken over {i}"), "callback_url": receiver.url}))
            .send()
            .await
            .expect("create");
        assert_eq!(response.status(), StatusCode::OK);
        let task: Value = response.json().await.expect("task JSON");
        ids.push(task["task_id"].as_str().expect("task_id").to_owned());
    }
    eventually("A submitted every task", || async { kie.creates().len() == TASKS }).await;
    let a_instance = instance_of(&db, a.child.id()).await;
    assert_eq!(lease_holders(&db, "tasks").await, vec![Some(a_instance.clone())]);
    a.kill();

    // 2. B (running all along, or restarted) takes the tasks over and settles them; its webhook
    // deliveries hang at the receiver.
    let mut b = match b {
        Some(b) => b,
        None => {
            let mut b = start("b");
            b.ready(&client).await;
            b
        }
    };
    wait_all_terminal_on(&db).await;
    receiver.wait_for(TASKS).await;
    let b_instance = instance_of(&db, b.child.id()).await;
    eventually("B leases every delivery", || async {
        lease_holders(&db, "webhook_deliveries").await == vec![Some(b_instance.clone())]
    })
    .await;

    // 3. C takes the deliveries over from the killed B.
    let mut c = parallel.then(|| start("c"));
    if let Some(c) = c.as_mut() {
        c.ready(&client).await;
    }
    b.kill();
    let mut c = match c {
        Some(c) => c,
        None => {
            let mut c = start("c");
            c.ready(&client).await;
            c
        }
    };
    receiver.wait_for(2 * TASKS).await;
    eventually("every delivery is delivered", || async {
        count(&db, "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'").await == TASKS as i64
    })
    .await;

    // Each task settled once, succeeded and was charged once; the dead instances are gone.
    for id in &ids {
        let response = client
            .get(format!("{}/api/v1/tasks/{id}", c.address))
            .header(AUTHORIZATION, bearer(&key))
            .send()
            .await
            .expect("GET task");
        let task: Value = response.json().await.expect("task JSON");
        assert_eq!(task["status"], "succeeded", "{task}");
        assert_eq!(task["credits"]["state"], "charged", "{task}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM webhook_deliveries").await, TASKS as i64, "one delivery per task");
    assert_eq!(kie.creates().len(), 2 * TASKS, "A's hung submits, then B's");
    assert_eq!(lease_holders(&db, "tasks").await, vec![None]);
    let c_instance = instance_of(&db, c.child.id()).await;
    let alive: Vec<String> =
        on_db!(&db, pool => sqlx::query_scalar("SELECT id FROM instances").fetch_all(pool).await).expect("instances");
    assert_eq!(alive, vec![c_instance]);
    assert_ledger_consistent_on(&db).await;
    let (balance, held): (i64, i64) =
        on_db!(&db, pool => sqlx::query_as("SELECT balance, held FROM accounts WHERE id = $1")
        .bind(account_id)
        .fetch_one(pool)
        .await)
        .expect("read the account");
    assert_eq!((balance, held), (1000 - PRICE * TASKS as i64, 0));
    c.kill();
}

/// `instances::take_over` releases the leases of instances whose heartbeat is stale (or that are not
/// registered at all), and only those; the released rows are due at once.
#[tokio::test]
async fn only_the_leases_of_dead_instances_are_released() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let store = TestStore::new(backend, 5).await;
        let db = &store.db;
        let (account_id, _) = new_account_on(db, 1000).await;
        let input =
            TaskInput { prompt: "a lake".into(), aspect_ratio: None, quality: None, image_urls: vec![], n: None };
        let mut ids = Vec::new();
        for owner in ["inst_dead", "inst_live", "inst_unknown"] {
            let id = tasks::new_task_id();
            let new = NewTask {
                id: id.clone(),
                account_id,
                model: "seedream-4-5".into(),
                sub_model: "seedream/4.5-text-to-image".into(),
                input: input.clone(),
                price: PRICE,
                breakdown: None,
                key_id: None,
                callback_url: None,
                callback_events: None,
                provider: "simulated".into(),
                upstream_model: "sim".into(),
                provider_label: "Simulated".into(),
                simulated: true,
                deadline: Duration::from_secs(900),
                lease: Some(Duration::from_secs(3600)),
                owner: owner.into(),
                idempotency: None,
                callback_token: None,
                window: None,
                max_queued: 1000,
            };
            assert!(matches!(tasks::create(db, new).await.expect("create"), tasks::Created::Task(_)));
            ids.push(id);
        }
        let old = match backend {
            Backend::Postgres => "now() - interval '1 hour'",
            Backend::Sqlite => "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-1 hour')",
        };
        let sql = format!(
            "INSERT INTO instances (id, host, pid, heartbeat_at) VALUES ('inst_dead', 'h', 1, {old}), ('inst_live', 'h', 2, {})",
            db.dialect().now()
        );
        on_db!(db, pool => sqlx::query(&sql).execute(pool).await.map(|done| done.rows_affected())).expect("instances");
        assert!(tasks::claim_due(db, 10, Duration::from_secs(60), "inst_me").await.expect("claim").is_empty());

        let released = instances::take_over(db, "inst_me", Some(Duration::from_secs(60))).await.expect("take over");
        assert_eq!(released, 2, "{backend:?}");
        let mut taken: Vec<String> = tasks::claim_due(db, 10, Duration::from_secs(60), "inst_me")
            .await
            .expect("claim")
            .into_iter()
            .map(|task| task.id)
            .collect();
        taken.sort();
        let mut expected = vec![ids[0].clone(), ids[2].clone()];
        expected.sort();
        assert_eq!(taken, expected, "{backend:?}: the dead and the unknown instance's tasks");
        let holders = lease_holders(db, "tasks").await;
        assert_eq!(holders, vec![Some("inst_live".to_owned()), Some("inst_me".to_owned())], "{backend:?}");
        let alive: Vec<String> =
            on_db!(db, pool => sqlx::query_scalar("SELECT id FROM instances ORDER BY id").fetch_all(pool).await)
                .expect("instances");
        assert_eq!(alive, vec!["inst_live".to_owned()], "{backend:?}");
    }
}
