//! API keys (SPEC §3, §7): every bad key gets the same 401, and accounts never see each other's tasks.

use std::time::Duration;

use aio_gateway::accounts;
use aio_gateway::audit::Actor;
use chrono::Utc;
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, bearer, spawn_app, TestApp};

/// `(code, message)` of a 401 from `GET path` with this `Authorization` header (or none).
async fn unauthorized(app: &TestApp, path: &str, authorization: Option<String>) -> (String, String) {
    let mut request = app.client.get(app.url(path));
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    let response = request.send().await.expect("GET");
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await
}

#[tokio::test]
async fn every_bad_key_gets_the_same_401() {
    let app = spawn_app().await;
    let (account_id, good) = app.new_account(100).await;

    let revoked =
        accounts::create_key(&app.db, &Actor::cli(), account_id, Some("revoked"), None).await.expect("create key");
    assert!(accounts::revoke_key(&app.db, &Actor::cli(), &revoked.key_id).await.expect("revoke"), "revoked");
    let expired = accounts::create_key(
        &app.db,
        &Actor::cli(),
        account_id,
        Some("expired"),
        Some(Utc::now() - chrono::Duration::hours(1)),
    )
    .await
    .expect("create key");
    // Well-formed (`aio_` + 40 alphanumerics) but never issued; built at run time, not a literal.
    let unknown = format!("aio_{}", "Zq9".repeat(14).chars().take(40).collect::<String>());

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing header", None),
        ("empty bearer", Some("Bearer ".into())),
        ("garbage bearer", Some("Bearer garbage".into())),
        ("wrong scheme", Some(format!("Basic {good}"))),
        ("bare key", Some(good.clone())),
        ("too short", Some(bearer(&format!("aio_{}", "a".repeat(10))))),
        ("unknown key", Some(bearer(&unknown))),
        ("revoked key", Some(bearer(&revoked.api_key))),
        ("expired key", Some(bearer(&expired.api_key))),
    ];
    let mut answers = Vec::new();
    for path in ["/api/v1/billing/credits", "/billing/credits", "/api/v1/tasks", "/api/v1/tasks/task_x"] {
        for (case, authorization) in &cases {
            let answer = unauthorized(&app, path, authorization.clone()).await;
            answers.push((format!("{case} on {path}"), answer));
        }
    }
    let post = app.client.post(app.url("/api/v1/images/generations")).json(&json!({"prompt": "A cat"})).send().await;
    answers.push((
        "missing header on create".into(),
        assert_error(post.expect("POST"), StatusCode::UNAUTHORIZED, "unauthorized").await,
    ));
    let post = app
        .client
        .post(app.url("/api/v1/images/generations"))
        .header(AUTHORIZATION, bearer(&revoked.api_key))
        .json(&json!({"prompt": "A cat"}))
        .send()
        .await;
    answers.push((
        "revoked key on create".into(),
        assert_error(post.expect("POST"), StatusCode::UNAUTHORIZED, "unauthorized").await,
    ));

    let (first_case, first) = &answers[0];
    for (case, answer) in &answers {
        assert_eq!(answer, first, "`{case}` answers differently from `{first_case}`");
    }
    assert_eq!(app.count_tasks().await, 0, "no task was created without a valid key");

    // The good key works (the 401s above are not a broken server).
    assert_eq!(app.credits(&good).await["balance"], 100);
}

#[tokio::test]
async fn a_key_stops_working_when_it_expires_even_when_cached() {
    let app = spawn_app().await;
    let (account_id, _) = app.new_account(100).await;
    let expires_at = Utc::now() + chrono::Duration::milliseconds(1500);
    let key =
        accounts::create_key(&app.db, &Actor::cli(), account_id, None, Some(expires_at)).await.expect("create key");
    assert_eq!(app.credits(&key.api_key).await["balance"], 100, "valid before it expires");

    let wait = (expires_at - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(100);
    tokio::time::sleep(wait).await;
    unauthorized(&app, "/api/v1/billing/credits", Some(bearer(&key.api_key))).await;
}

#[tokio::test]
async fn another_accounts_task_is_not_found_exactly_like_a_missing_one() {
    let app = spawn_app().await;
    let (_, alice) = app.new_account(100).await;
    let (_, bob) = app.new_account(100).await;

    let task = app.create_ok(&alice, json!({"prompt": "Alice's cat"})).await;
    let id = task["task_id"].as_str().expect("task_id").to_owned();
    app.wait_terminal(&alice, &id).await;

    let foreign = app.get(&bob, &format!("/api/v1/tasks/{id}")).await;
    let foreign = assert_error(foreign, StatusCode::NOT_FOUND, "not_found").await;
    let missing_id = format!("task_{}", ulid::Ulid::new());
    let missing = app.get(&bob, &format!("/api/v1/tasks/{missing_id}")).await;
    let missing = assert_error(missing, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(foreign, missing, "another account's task answers exactly like a missing one");

    let bobs_list = app.get_json(&bob, "/api/v1/tasks").await;
    assert_eq!(bobs_list["data"], json!([]), "Bob sees none of Alice's tasks: {bobs_list}");
    let bob_task = app.create_ok(&bob, json!({"prompt": "Bob's dog"})).await;
    let bobs_list = app.get_json(&bob, "/api/v1/tasks").await;
    let listed: Vec<&Value> = bobs_list["data"].as_array().expect("data").iter().collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["task_id"], bob_task["task_id"]);
    let alices_list = app.get_json(&alice, "/api/v1/tasks").await;
    let alice_ids: Vec<&Value> = alices_list["data"].as_array().expect("data").iter().map(|t| &t["task_id"]).collect();
    assert_eq!(alice_ids, vec![&json!(id)]);

    // Bob's billing shows Bob's account only.
    let bobs_credits = app.credits(&bob).await;
    assert_eq!(bobs_credits["balance"], 88);
    assert!(bobs_credits["ledger"].as_array().expect("ledger").iter().all(|e| e["task_id"] != json!(id)));
}
