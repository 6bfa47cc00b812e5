//! `POST /api/v1/tasks/{task_id}/cancel`: a pending or running task ends `cancelled` with its hold
//! released, at once; a result arriving later is not charged; a finished task is a 409; the
//! provider's job is cancelled upstream where it can be; and a cancel racing the task's settlement
//! ends with exactly one of capture and release. On both backends.

use reqwest::StatusCode;
use serde_json::Value;

use crate::fakes::replicate::{self, FakeReplicate};
use crate::helpers::{assert_error, assert_ledger_consistent_on, bearer, seed_request, Backend, TestApp};
use aio_gateway::on_db;

async fn driven(backend: Backend) -> TestApp {
    TestApp::builder().backend(backend).driven().spawn().await
}

impl TestApp {
    pub async fn cancel(&self, key: &str, task_id: &str) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/v1/tasks/{task_id}/cancel")))
            .header(reqwest::header::AUTHORIZATION, bearer(key))
            .send()
            .await
            .expect("POST …/cancel")
    }

    /// The ledger kinds of one task, oldest first (either backend).
    pub async fn task_ledger(&self, task_id: &str) -> Vec<String> {
        let kinds: Vec<(String,)> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT kind FROM ledger WHERE task_id = $1 ORDER BY id",
        )
        .bind(task_id)
        .fetch_all(pool)
        .await)
        .expect("read the ledger");
        kinds.into_iter().map(|(kind,)| kind).collect()
    }
}

async fn cancelled(app: &TestApp, key: &str, task_id: &str) -> Value {
    let response = app.cancel(key, task_id).await;
    let status = response.status();
    let task: Value = response.json().await.expect("JSON");
    assert_eq!(status, StatusCode::OK, "{task}");
    task
}

async fn a_pending_task_is_cancelled_and_released_at_once(backend: Backend) {
    let app = driven(backend).await;
    let (_, key) = app.new_account(100).await;
    let task = app.create_ok(&key, seed_request()).await;
    let task_id = task["task_id"].as_str().unwrap();
    assert_eq!(task["status"], "pending");
    app.assert_balance(&key, 88, 12).await;

    let task = cancelled(&app, &key, task_id).await;
    assert_eq!(task["status"], "cancelled", "{task}");
    assert_eq!(task["credits"], crate::helpers::plain_credits(12, 0, "refunded"));
    assert!(task["completed_at"].is_string(), "{task}");
    app.assert_balance(&key, 100, 0).await;
    assert_eq!(app.task_ledger(task_id).await, ["hold", "release"]);

    // Nothing more happens to it: the engine skips it, and a second cancel is a conflict.
    app.settle_all().await;
    assert_eq!(app.get_task(&key, task_id).await["status"], "cancelled");
    let (_, message) = assert_error(app.cancel(&key, task_id).await, StatusCode::CONFLICT, "conflict").await;
    assert!(message.contains("cancelled"), "{message}");
    let listed = app.get_json(&key, "/api/v1/tasks?status=cancelled").await;
    assert_eq!(listed["data"][0]["task_id"], task_id);
    assert_ledger_consistent_on(&app.db).await;
}

#[tokio::test]
async fn a_pending_task_is_cancelled_and_released_at_once_on_postgres() {
    a_pending_task_is_cancelled_and_released_at_once(Backend::Postgres).await;
}

#[tokio::test]
async fn a_pending_task_is_cancelled_and_released_at_once_on_sqlite() {
    a_pending_task_is_cancelled_and_released_at_once(Backend::Sqlite).await;
}

async fn a_result_arriving_after_the_cancel_is_not_charged(backend: Backend) {
    let app = driven(backend).await;
    let (_, key) = app.new_account(100).await;
    let task_id = app.running_seed_task(&key).await;
    let task = cancelled(&app, &key, &task_id).await;
    assert_eq!(task["status"], "cancelled");
    // The simulated job finishes anyway; the engine finds the task ended and charges nothing.
    app.advance().await;
    app.settle_all().await;
    let task = app.get_task(&key, &task_id).await;
    assert_eq!((task["status"].as_str(), &task["output"]), (Some("cancelled"), &Value::Null), "{task}");
    app.assert_balance(&key, 100, 0).await;
    assert_eq!(app.task_ledger(&task_id).await, ["hold", "release"]);
    assert_ledger_consistent_on(&app.db).await;
}

#[tokio::test]
async fn a_result_arriving_after_the_cancel_is_not_charged_on_postgres() {
    a_result_arriving_after_the_cancel_is_not_charged(Backend::Postgres).await;
}

#[tokio::test]
async fn a_result_arriving_after_the_cancel_is_not_charged_on_sqlite() {
    a_result_arriving_after_the_cancel_is_not_charged(Backend::Sqlite).await;
}

#[tokio::test]
async fn finished_foreign_and_unknown_tasks_cannot_be_cancelled() {
    let app = driven(Backend::Postgres).await;
    let (_, key) = app.new_account(100).await;
    let (_, stranger) = app.new_account(100).await;
    let task = app.run_seed(&key).await;
    let task_id = task["task_id"].as_str().unwrap();
    assert_eq!(task["status"], "succeeded");
    let (_, message) = assert_error(app.cancel(&key, task_id).await, StatusCode::CONFLICT, "conflict").await;
    assert!(message.contains("succeeded"), "{message}");
    app.assert_balance(&key, 88, 0).await;
    let running = app.running_seed_task(&key).await;
    assert_error(app.cancel(&stranger, &running).await, StatusCode::NOT_FOUND, "not_found").await;
    assert_error(app.cancel(&key, "task_nope").await, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(app.get_task(&key, &running).await["status"], "running");
}

/// Cancel against settlement, many times: the task ends either `succeeded` (charged, the cancel a
/// 409) or `cancelled` (released, the cancel a 200) — never both, never neither.
async fn cancel_racing_settlement_ends_with_exactly_one_of_capture_and_release(backend: Backend) {
    const ROUNDS: usize = 40;
    let app = driven(backend).await;
    let (_, key) = app.new_account(1_000).await;
    let mut outcomes = (0, 0);
    for _ in 0..ROUNDS {
        let task_id = app.create_ok(&key, seed_request()).await["task_id"].as_str().unwrap().to_owned();
        app.run_pending().await;
        let task = app.get_task(&key, &task_id).await;
        assert_eq!(task["status"], "running", "{task}");
        // The simulated job is done: the next engine step settles the task, while the cancel arrives.
        app.advance().await;
        let (response, ()) = tokio::join!(app.cancel(&key, &task_id), app.run_pending());
        let status = response.status();
        let task = app.get_task(&key, &task_id).await;
        let ledger = app.task_ledger(&task_id).await;
        match task["status"].as_str() {
            Some("succeeded") => {
                assert_eq!(status, StatusCode::CONFLICT, "{task}");
                assert_eq!(ledger, ["hold", "capture"]);
                outcomes.0 += 1;
            }
            Some("cancelled") => {
                assert_eq!(status, StatusCode::OK, "{task}");
                assert_eq!(ledger, ["hold", "release"]);
                outcomes.1 += 1;
            }
            other => panic!("the task ended {other:?}: {task}"),
        }
    }
    let (succeeded, cancelled) = outcomes;
    app.assert_balance(&key, 1_000 - 12 * succeeded, 0).await;
    assert_eq!(succeeded + cancelled, ROUNDS as i64);
    assert_ledger_consistent_on(&app.db).await;
}

#[tokio::test]
async fn cancel_racing_settlement_ends_with_exactly_one_of_capture_and_release_on_postgres() {
    cancel_racing_settlement_ends_with_exactly_one_of_capture_and_release(Backend::Postgres).await;
}

#[tokio::test]
async fn cancel_racing_settlement_ends_with_exactly_one_of_capture_and_release_on_sqlite() {
    cancel_racing_settlement_ends_with_exactly_one_of_capture_and_release(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_running_replicate_prediction_is_cancelled_upstream() {
    let fake = FakeReplicate::start().await;
    fake.polls(100_000);
    let app = TestApp::builder()
        .configure(|settings| fake.configure(settings))
        .catalog("replicate_only.toml")
        .driven()
        .spawn()
        .await;
    let (_, key) = app.new_account(100).await;
    let task_id = app.running_seed_task(&key).await;
    let task = cancelled(&app, &key, &task_id).await;
    assert_eq!(task["status"], "cancelled");
    let cancels = fake.cancels();
    assert_eq!(cancels.len(), 1, "one upstream cancel, within the request");
    assert_eq!((cancels[0].method.as_str(), cancels[0].path.as_str()), ("POST", "/v1/predictions/rep1/cancel"));
    assert_eq!(cancels[0].header("authorization"), Some(format!("Bearer {}", replicate::KEY).as_str()));
    app.assert_balance(&key, 100, 0).await;
}
