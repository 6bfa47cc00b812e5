//! The retention purge (issue 18), on both backends: result files and finished tasks past their
//! limits are removed in bounded batches, by one replica at a time; unfinished and recent tasks, their
//! files and the whole ledger stay; a purged task answers 404 saying it expired.

use std::time::{Duration, SystemTime};

use aio_gateway::config::RetentionSettings;
use aio_gateway::on_db;
use aio_gateway::retention::{Purged, Retention};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{assert_error, assert_ledger_consistent_on, bearer, seed_request, Backend, TestApp};

const DAYS: u64 = 86_400;

/// A finished task with a webhook (its deliveries and attempts) and an idempotency key: every row
/// that points at a task.
async fn finished_task(app: &TestApp, key: &str, idempotency_key: &str) -> Value {
    let mut body = seed_request();
    body["callback_url"] = "http://127.0.0.1:9/hook".into();
    let response = app
        .client
        .post(app.url("/api/v1/images/generations"))
        .header(AUTHORIZATION, bearer(key))
        .header("Idempotency-Key", idempotency_key)
        .json(&body)
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 200);
    let task: Value = response.json().await.expect("task");
    app.settle_all().await;
    let done = app.get_task(key, task["task_id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    done
}

/// An account's ledger: kind and task id of each row, in order.
async fn ledger(app: &TestApp, account: i64) -> Vec<(String, Option<String>)> {
    on_db!(&app.db, pool => sqlx::query_as("SELECT kind, task_id FROM ledger WHERE account_id = $1 ORDER BY id")
        .bind(account)
        .fetch_all(pool)
        .await)
    .expect("the ledger")
}

fn file_name(task: &Value) -> String {
    let url = reqwest::Url::parse(task["output"]["images"][0]["url"].as_str().expect("url")).expect("a URL");
    url.path().strip_prefix("/files/").expect("a /files/ link").to_owned()
}

/// Makes a task look finished `days` ago, and its file written then.
async fn age(app: &TestApp, task: &Value, days: u64) {
    let sql = format!("UPDATE tasks SET completed_at = {} WHERE id = $1", app.db.dialect().now_plus_secs("$2"));
    on_db!(&app.db, pool => sqlx::query(&sql)
        .bind(task["task_id"].as_str().expect("id"))
        .bind(-((days * DAYS) as f64))
        .execute(pool)
        .await
        .map(|_| ()))
    .expect("age the task");
    let file = std::fs::File::options().write(true).open(app.files_dir().join(file_name(task))).expect("the file");
    file.set_modified(SystemTime::now() - Duration::from_secs(days * DAYS)).expect("age the file");
}

async fn purge_removes_what_is_past_its_limit_and_nothing_else(backend: Backend) {
    let app = TestApp::builder()
        .backend(backend)
        .configure(|settings| {
            settings.webhooks.allow_http = true;
            settings.webhooks.allowed_private_cidrs = vec!["127.0.0.0/8".parse().expect("cidr")];
            settings.webhooks.retry_schedule = vec![Duration::ZERO];
        })
        .driven()
        .spawn()
        .await;
    let (account, key) = app.new_account(1000).await;
    let old = [finished_task(&app, &key, "old-1").await, finished_task(&app, &key, "old-2").await];
    let recent = finished_task(&app, &key, "recent").await;
    for task in &old {
        age(&app, task, 3).await;
    }
    // Unfinished, however old: never purged.
    let pending = app.create_ok(&key, seed_request()).await;
    let ledger_before = ledger(&app, account).await;
    // Two audit entries (the account and its key were created) made 3 days old; the rest are new.
    let sql = format!(
        "UPDATE audit_log SET created_at = {} WHERE id IN (SELECT id FROM audit_log ORDER BY id LIMIT 2)",
        app.db.dialect().now_plus_secs("$1")
    );
    on_db!(&app.db, pool => sqlx::query(&sql).bind(-((3 * DAYS) as f64)).execute(pool).await.map(|_| ()))
        .expect("age audit entries");
    let audit_count = || async {
        on_db!(&app.db, pool => sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_log").fetch_one(pool).await)
            .expect("count")
    };
    let audit_before = audit_count().await;

    // Batches of one: the run goes on until nothing is left.
    let settings = RetentionSettings {
        results_days: 1,
        tasks_days: 2,
        audit_days: 2,
        batch_size: 1.try_into().expect("1"),
        ..Default::default()
    };
    let retention = Retention::new(app.db.clone(), app.file_store().await, settings.clone());
    let other_replica = Retention::new(app.db.clone(), app.file_store().await, settings);
    assert_eq!(retention.purge_once().await.expect("purge"), Some(Purged { files: 2, tasks: 2, audit: 2 }));
    assert_eq!(other_replica.purge_once().await.expect("purge"), None, "one replica at a time: the lease is held");
    assert_eq!(retention.purge_once().await.expect("again"), Some(Purged::default()));
    assert_eq!(audit_count().await, audit_before - 2, "the recent audit entries are kept");

    for task in &old {
        let id = task["task_id"].as_str().expect("id");
        let (_, message) =
            assert_error(app.get(&key, &format!("/api/v1/tasks/{id}")).await, StatusCode::NOT_FOUND, "not_found").await;
        assert!(message.contains("expired"), "{message}");
        assert!(!app.files_dir().join(file_name(task)).exists());
    }
    let (_, message) = assert_error(
        app.get(&key, "/api/v1/tasks/task_01ARZ3NDEKTSV4RRFFQ69G5FAV").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_eq!(message, "Task not found.", "a task that never existed did not expire");
    let kept = app.get_task(&key, recent["task_id"].as_str().expect("id")).await;
    let link = kept["output"]["images"][0]["url"].as_str().expect("url");
    assert_eq!(app.client.get(link).send().await.expect("GET").status(), 200, "a recent result is kept");
    assert_eq!(app.get_task(&key, pending["task_id"].as_str().expect("id")).await["status"], "pending");
    // The ledger keeps every row, purged tasks' included, and still adds up.
    assert_eq!(ledger(&app, account).await, ledger_before);
    assert_eq!(ledger_before.iter().filter(|(_, task)| task.is_some()).count(), 4 * 2 - 1, "holds, captures");
    assert_ledger_consistent_on(&app.db).await;
}

#[tokio::test]
async fn purge_removes_what_is_past_its_limit_and_nothing_else_on_postgres() {
    purge_removes_what_is_past_its_limit_and_nothing_else(Backend::Postgres).await;
}

#[tokio::test]
async fn purge_removes_what_is_past_its_limit_and_nothing_else_on_sqlite() {
    purge_removes_what_is_past_its_limit_and_nothing_else(Backend::Sqlite).await;
}

#[tokio::test]
async fn with_every_limit_at_zero_nothing_is_purged() {
    let app = TestApp::builder().driven().spawn().await;
    let (_, key) = app.new_account(100).await;
    let done = app.run_seed(&key).await;
    age(&app, &done, 3650).await;
    let settings = RetentionSettings { audit_days: 0, ..Default::default() };
    assert!(
        Retention::new(app.db.clone(), app.file_store().await, RetentionSettings::default()).enabled(),
        "audit_days"
    );
    let retention = Retention::new(app.db.clone(), app.file_store().await, settings);
    assert!(!retention.enabled());
    assert_eq!(retention.purge_once().await.expect("purge"), Some(Purged::default()));
    assert_eq!(app.get_task(&key, done["task_id"].as_str().expect("id")).await["status"], "succeeded");
}
