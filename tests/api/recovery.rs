//! Crash recovery with the real binary (SPEC §9, §2.3): gateways killed with SIGKILL while tasks are
//! pending, running or claimed; a fresh gateway on the same database finishes every task, settles
//! each exactly once, and never submits a task upstream twice.

use std::time::Duration;

use aio_gateway::on_db;
use aio_gateway::store::Db;
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    assert_ledger_consistent_on, bearer, http_client, new_account_on, wait_all_terminal_on, Backend, Gateway, TestStore,
};

async fn statuses(db: &Db) -> Vec<(String, String)> {
    on_db!(db, pool => sqlx::query_as("SELECT id, status FROM tasks ORDER BY id").fetch_all(pool).await)
        .expect("read tasks")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_survive_sigkill_and_settle_once_after_restart() {
    tasks_survive_sigkill(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_survive_sigkill_and_settle_once_after_restart_on_sqlite() {
    tasks_survive_sigkill(Backend::Sqlite).await
}

async fn tasks_survive_sigkill(backend: Backend) {
    let database = TestStore::new(backend, 5).await;
    let db = database.db.clone();
    let dir = tempfile::tempdir().expect("temporary directory");
    let files = dir.path().join("files");
    let client = http_client();
    let (account_id, key) = new_account_on(&db, 1000).await;
    let prompt = |i: usize| {
        if i % 4 == 1 {
            format!("Recovered cat {i} [simulate:fail]")
        } else {
            format!("Recovered cat {i}")
        }
    };

    // 1. An API-only gateway stores tasks but runs no engine: they stay pending. Then it dies.
    let mut api = Gateway::start(&database.url, &files, &dir.path().join("api.log"), "api");
    api.ready(&client).await;
    let mut prompts = Vec::new();
    for i in 0..10 {
        let id = api.create(&client, &key, &prompt(i)).await;
        prompts.push((id, prompt(i)));
    }
    api.kill();
    let after_api = statuses(&db).await;
    assert_eq!(after_api.len(), 10);
    assert!(after_api.iter().all(|(_, status)| status == "pending"), "an API-only gateway ran tasks: {after_api:?}");

    // 2. A full gateway takes those over and accepts 10 more; it is killed as soon as a task runs.
    let mut full = Gateway::start(&database.url, &files, &dir.path().join("all-1.log"), "all");
    full.ready(&client).await;
    let creates = (10..20).map(|i| {
        let (client, full, key, text) = (&client, &full, &key, prompt(i));
        async move { (full.create(client, key, &text).await, text) }
    });
    prompts.extend(futures::future::join_all(creates).await);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while !statuses(&db).await.iter().any(|(_, status)| status == "running") {
        assert!(tokio::time::Instant::now() < give_up, "no task ever ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    full.kill();
    let at_kill = statuses(&db).await;
    assert_eq!(at_kill.len(), 20);
    let unfinished = at_kill.iter().filter(|(_, s)| s == "pending" || s == "running").count();
    assert!(unfinished > 0, "every task finished before the kill; nothing to recover: {at_kill:?}");
    assert_ledger_consistent_on(&db).await;

    // 3. A fresh gateway on the same database finishes everything.
    let mut restarted = Gateway::start(&database.url, &files, &dir.path().join("all-2.log"), "all");
    restarted.ready(&client).await;
    wait_all_terminal_on(&db).await;

    for (id, prompt) in &prompts {
        let response = client
            .get(format!("{}/api/v1/tasks/{id}", restarted.address))
            .header(AUTHORIZATION, bearer(&key))
            .send()
            .await
            .expect("GET task");
        assert_eq!(response.status(), StatusCode::OK);
        let task: Value = response.json().await.expect("task JSON");
        if prompt.contains("[simulate:fail]") {
            assert_eq!(task["status"], "failed", "{task}");
            assert_eq!(task["error"]["code"], "upstream_failed", "{task}");
            assert_eq!(task["credits"]["state"], "refunded", "{task}");
        } else {
            assert_eq!(task["status"], "succeeded", "{task}");
            assert_eq!(task["credits"]["state"], "charged", "{task}");
            let url = task["output"]["images"][0]["url"].as_str().expect("result url");
            let image = client.get(url).send().await.expect("GET result");
            assert_eq!(image.status(), StatusCode::OK, "result {url} of {id} is served");
        }
    }

    // Each task went upstream once: one simulated job, the one the task points at.
    let jobs: Vec<(String, i64, bool)> = on_db!(&db, pool => sqlx::query_as(
        "SELECT t.id,
                (SELECT count(*) FROM simulated_jobs j WHERE j.task_id = t.id),
                COALESCE(t.upstream_id = (SELECT min(j.id) FROM simulated_jobs j WHERE j.task_id = t.id), false)
         FROM tasks t ORDER BY t.id",
    )
    .fetch_all(pool)
    .await)
    .expect("read simulated jobs");
    for (id, count, same) in &jobs {
        assert_eq!(*count, 1, "task {id} has {count} upstream jobs");
        assert!(same, "task {id} points at its one upstream job");
    }
    let (total_jobs,): (i64,) =
        on_db!(&db, pool => sqlx::query_as("SELECT count(*) FROM simulated_jobs").fetch_one(pool).await)
            .expect("count jobs");
    assert_eq!(total_jobs, 20);

    assert_ledger_consistent_on(&db).await;
    let failing = prompts.iter().filter(|(_, p)| p.contains("[simulate:fail]")).count() as i64;
    let (balance, held): (i64, i64) =
        on_db!(&db, pool => sqlx::query_as("SELECT balance, held FROM accounts WHERE id = $1")
        .bind(account_id)
        .fetch_one(pool)
        .await)
        .expect("read the account");
    assert_eq!((balance, held), (1000 - 12 * (20 - failing), 0));
}
