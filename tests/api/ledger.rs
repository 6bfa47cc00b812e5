//! Credits under concurrency (SPEC §2.3): holds never overspend, a 402 holds nothing, and a task is
//! settled exactly once however many settlements race.

use std::collections::HashMap;
use std::time::Duration;

use aio_gateway::config::Role;
use aio_gateway::tasks::{self, Outcome, OutputImage, TaskError, TaskErrorCode, TaskOutput, TaskStatus};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{self, assert_error, assert_ledger_consistent, ledger_of, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_never_spend_more_than_the_balance() {
    let app = spawn_app().await;
    let (account_id, key) = app.new_account(600).await; // exactly 50 tasks of 12 credits

    let requests = (0..200).map(|i| app.create(&key, json!({"prompt": format!("Concurrent cat number {i}")})));
    let responses = futures::future::join_all(requests).await;

    let mut accepted = Vec::new();
    let mut refused = 0;
    for response in responses {
        match response.status() {
            StatusCode::OK => {
                let task: Value = response.json().await.expect("task JSON");
                accepted.push(task["task_id"].as_str().expect("task_id").to_owned());
            }
            StatusCode::PAYMENT_REQUIRED => {
                let (_, message) = assert_error(response, StatusCode::PAYMENT_REQUIRED, "insufficient_credits").await;
                assert_eq!(message, "This request costs 12 credits; 0 are available.");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap_or_default()),
        }
    }
    assert_eq!((accepted.len(), refused), (50, 150), "exactly the 50 affordable creates are accepted");

    let credits = app.credits(&key).await;
    assert_eq!(credits["balance"], 0, "{credits}");
    assert_ledger_consistent(app.pool()).await;
    assert_eq!(app.count_tasks().await, 50, "refused creates leave no task");

    for id in &accepted {
        let done = app.wait_terminal(&key, id).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    app.assert_balance(&key, 0, 0).await;
    let ledger = ledger_of(app.pool(), account_id).await;
    let count = |kind: &str| ledger.iter().filter(|e| e.0 == kind).count();
    assert_eq!((count("grant"), count("hold"), count("capture"), count("release")), (1, 50, 50, 0));
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_create_the_balance_cannot_cover_holds_nothing() {
    let app = spawn_app().await;
    let (account_id, key) = app.new_account(11).await;
    let response = app.create(&key, json!({"prompt": "A cat"})).await;
    let (_, message) = assert_error(response, StatusCode::PAYMENT_REQUIRED, "insufficient_credits").await;
    assert_eq!(message, "This request costs 12 credits; 11 are available.");

    assert_eq!(app.count_tasks().await, 0, "no task row");
    assert_eq!(ledger_of(app.pool(), account_id).await, vec![("grant".to_string(), 11, None)], "no ledger row");
    app.assert_balance(&key, 11, 0).await;

    // An account with nothing at all gets the same answer.
    let (_, broke) = app.new_account(0).await;
    let response = app.create(&broke, json!({"prompt": "A cat"})).await;
    let (_, message) = assert_error(response, StatusCode::PAYMENT_REQUIRED, "insufficient_credits").await;
    assert_eq!(message, "This request costs 12 credits; 0 are available.");
    assert_eq!(app.count_tasks().await, 0);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_settlements_settle_each_task_once() {
    // An API-only gateway runs no engine: the tasks stay pending until this test settles them.
    let app = spawn_app_with(|settings| {
        settings.server.role = Role::Api;
        settings.database.max_connections = std::num::NonZeroU32::new(20).unwrap();
    })
    .await;
    let (account_id, key) = app.new_account(1000).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let task = app.create_ok(&key, json!({"prompt": format!("Settle me {i}")})).await;
        assert_eq!(task["status"], "pending", "no engine, no dispatch");
        ids.push(task["task_id"].as_str().expect("task_id").to_owned());
    }
    assert_ledger_consistent(app.pool()).await;

    let mut racers = Vec::new();
    for id in &ids {
        for attempt in 0..10 {
            let pool = app.db.clone();
            let id = id.clone();
            racers.push(tokio::spawn(async move {
                let outcome = if attempt % 2 == 0 {
                    Outcome::Succeeded(TaskOutput {
                        images: vec![OutputImage { url: format!("https://example.com/{attempt}.png") }],
                    })
                } else {
                    Outcome::Failed(TaskError { code: TaskErrorCode::UpstreamFailed, message: "raced".into() })
                };
                let settled =
                    tasks::settle(&pool, &id, outcome, Duration::ZERO, &helpers::test_files()).await.expect("settle");
                (id, settled.map(|task| task.status))
            }));
        }
    }
    let mut winners: HashMap<String, Vec<TaskStatus>> = HashMap::new();
    for racer in futures::future::join_all(racers).await {
        let (id, settled) = racer.expect("settle task");
        let entry = winners.entry(id).or_default();
        if let Some(status) = settled {
            entry.push(status);
        }
    }
    for id in &ids {
        let won = winners.get(id).cloned().unwrap_or_default();
        assert_eq!(won.len(), 1, "task {id}: {} settlements reported success", won.len());
        let (status, kind): (String, String) = sqlx::query_as(
            "SELECT t.status, l.kind FROM tasks t JOIN ledger l ON l.task_id = t.id
             WHERE t.id = $1 AND l.kind IN ('capture', 'release')",
        )
        .bind(id)
        .fetch_one(app.pool())
        .await
        .expect("one settlement row");
        let expected = match won[0] {
            TaskStatus::Succeeded => ("succeeded", "capture"),
            TaskStatus::Failed => ("failed", "release"),
            other => panic!("task {id} settled as {other:?}"),
        };
        assert_eq!((status.as_str(), kind.as_str()), expected, "task {id}");
    }

    // A settlement of a settled task changes nothing.
    let again = tasks::settle(
        &app.db,
        &ids[0],
        Outcome::Failed(TaskError { code: TaskErrorCode::Timeout, message: "late".into() }),
        Duration::ZERO,
        &helpers::test_files(),
    )
    .await
    .expect("settle");
    assert!(again.is_none(), "a second settlement returns None");

    let ledger = ledger_of(app.pool(), account_id).await;
    let settlements = ledger.iter().filter(|e| e.0 == "capture" || e.0 == "release").count();
    assert_eq!(settlements, 20);
    let captured = ledger.iter().filter(|e| e.0 == "capture").count() as i64;
    let credits = app.credits(&key).await;
    assert_eq!(credits["balance"].as_i64(), Some(1000 - 12 * captured), "{credits}");
    assert_eq!(credits["held"], 0, "{credits}");
    assert_ledger_consistent(app.pool()).await;
}
