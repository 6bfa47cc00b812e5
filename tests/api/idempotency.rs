//! Idempotency keys (SPEC §2.1): one key, one task, one hold — also when requests race; another body
//! with the same key is a conflict; a key older than 24 hours starts a new task.

use reqwest::header::{AUTHORIZATION, LOCATION};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, assert_ledger_consistent, bearer, ledger_of, seed_request, spawn_app, TestApp};

async fn create_with_key(app: &TestApp, key: &str, idempotency_key: &str, body: &Value) -> Response {
    app.client
        .post(app.url("/api/v1/images/generations"))
        .header(AUTHORIZATION, bearer(key))
        .header("Idempotency-Key", idempotency_key)
        .json(body)
        .send()
        .await
        .expect("POST /api/v1/images/generations")
}

async fn holds(app: &TestApp, account_id: i64) -> usize {
    ledger_of(app.pool(), account_id).await.iter().filter(|(kind, _, _)| kind == "hold").count()
}

#[tokio::test]
async fn twenty_racing_creates_with_one_key_make_one_task_and_one_hold() {
    let app = TestApp::builder().driven().spawn().await;
    let (account_id, key) = app.new_account(1000).await;
    let body = seed_request();

    let responses = futures::future::join_all((0..20).map(|_| create_with_key(&app, &key, "race-1", &body))).await;
    let mut ids = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let task: Value = response.json().await.expect("task JSON");
        let id = task["task_id"].as_str().expect("task_id").to_owned();
        assert_eq!(location, Some(format!("/api/v1/tasks/{id}")));
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer is the same task: {ids:?}");
    assert_eq!(app.count_tasks().await, 1);
    assert_eq!(holds(&app, account_id).await, 1);
    assert_eq!(app.credits(&key).await["balance"], 988);

    // Later replays answer the task as it is now, and still hold nothing.
    let done = app.wait_terminal(&key, &ids[0]).await;
    let again = create_with_key(&app, &key, "race-1", &body).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await.expect("task JSON"), done);
    assert_eq!(holds(&app, account_id).await, 1);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn the_same_key_with_another_body_is_a_conflict() {
    let app = spawn_app().await;
    let (account_id, key) = app.new_account(1000).await;
    // A create without a key is not remembered.
    app.create_ok(&key, json!({"prompt": "a red fox"})).await;
    let response = create_with_key(&app, &key, "k-1", &json!({"prompt": "a red fox"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let task: Value = response.json().await.expect("task JSON");

    // The canonical request is compared: defaults spelled out and key order do not matter…
    let same = json!({"quality": "basic", "prompt": "a red fox", "aspect_ratio": "1:1", "model": "seedream-4-5"});
    let replay: Value = create_with_key(&app, &key, "k-1", &same).await.json().await.expect("task JSON");
    assert_eq!(replay["task_id"], task["task_id"]);
    // …a different request is refused, and nothing is held for it.
    let other = create_with_key(&app, &key, "k-1", &json!({"prompt": "a blue fox"})).await;
    let (_, message) = assert_error(other, StatusCode::CONFLICT, "conflict").await;
    assert!(message.contains("Idempotency-Key"), "{message}");
    assert_eq!(holds(&app, account_id).await, 2);

    // Keys are per account: another account's identical key is its own.
    let (other_account, other_key) = app.new_account(100).await;
    let theirs: Value =
        create_with_key(&app, &other_key, "k-1", &json!({"prompt": "a blue fox"})).await.json().await.expect("JSON");
    assert_ne!(theirs["task_id"], task["task_id"]);
    assert_eq!(holds(&app, other_account).await, 1);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn bad_keys_are_refused_and_refused_creates_do_not_burn_the_key() {
    let app = spawn_app().await;
    let (account_id, key) = app.new_account(10).await;
    let long = "k".repeat(256);
    let (_, message) = assert_error(
        create_with_key(&app, &key, &long, &seed_request()).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(message.contains("Idempotency-Key") && message.contains("255"), "{message}");
    let max = "k".repeat(255);
    // 12 credits do not fit in 10: refused, and the key stays unused …
    assert_error(
        create_with_key(&app, &key, &max, &seed_request()).await,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_credits",
    )
    .await;
    let (count,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM idempotency_keys").fetch_one(app.pool()).await.expect("count");
    assert_eq!(count, 0);
    // … so after a top-up the same key creates the task.
    let mut tx = app.db.begin().await.expect("tx");
    aio_gateway::ledger::grant(&mut tx, account_id, 100, "top-up").await.expect("grant");
    tx.commit().await.expect("commit");
    assert_eq!(create_with_key(&app, &key, &max, &seed_request()).await.status(), StatusCode::OK);
    assert_eq!(holds(&app, account_id).await, 1);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_key_older_than_24_hours_starts_a_new_task() {
    let app = spawn_app().await;
    let (account_id, key) = app.new_account(1000).await;
    let first: Value = create_with_key(&app, &key, "daily", &seed_request()).await.json().await.expect("JSON");
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(app.pool())
        .await
        .expect("backdate the key");

    // Even with another body: the old use no longer counts.
    let body = json!({"prompt": "something else"});
    let second: Value = create_with_key(&app, &key, "daily", &body).await.json().await.expect("JSON");
    assert_ne!(second["task_id"], first["task_id"], "{second}");
    assert_eq!(holds(&app, account_id).await, 2);
    // And the key now belongs to the new task.
    let replay: Value = create_with_key(&app, &key, "daily", &body).await.json().await.expect("JSON");
    assert_eq!(replay["task_id"], second["task_id"]);

    // The engine's purge removes expired rows.
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(app.pool())
        .await
        .expect("backdate");
    assert_eq!(aio_gateway::idempotency::purge(&app.db).await.expect("purge"), 1);
    assert_ledger_consistent(app.pool()).await;
}
