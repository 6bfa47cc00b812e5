//! Limits per key and per account (issue 20): allowed models, daily and monthly credit caps, tasks in
//! flight; set through the API, and enforced in the create transaction so that no race exceeds them.

use aio_gateway::accounts;
use aio_gateway::audit::Actor;
use aio_gateway::jwt::Role;
use aio_gateway::limits::{self, Limits};
use aio_gateway::on_db;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::num::NonZeroUsize;

use crate::helpers::{
    assert_error, assert_ledger_consistent_on, session_token, spawn_dashboard_app_with, Backend, TestApp,
};
use crate::storage::both;

both!(caps_hold_under_200_concurrent_creates);

/// An account with `credits` and one key, with these limits on the key and the account.
async fn limited(app: &TestApp, credits: i64, key: Limits, account: Limits) -> (i64, String) {
    let account_id = accounts::create(&app.db, &Actor::cli(), "limited", credits).await.expect("account");
    let created = accounts::create_key(&app.db, &Actor::cli(), account_id, Some("k"), None).await.expect("key");
    assert!(limits::set_key(&app.db, &Actor::cli(), Some(account_id), &created.key_id, &Limits::default(), &key)
        .await
        .expect("key limits"));
    assert!(limits::set_account(&app.db, &Actor::cli(), account_id, &Limits::default(), &account)
        .await
        .expect("account limits"));
    (account_id, created.api_key)
}

/// 200 creates at once; returns (accepted, refused with `code`).
async fn race(app: &TestApp, key: &str, prompt: &str, status: StatusCode, code: &str) -> (usize, usize) {
    let requests = (0..200).map(|i| app.create(key, json!({"prompt": format!("{prompt} {i}")})));
    let mut accepted = 0;
    let mut refused = 0;
    for response in futures::future::join_all(requests).await {
        match response.status() {
            StatusCode::OK => accepted += 1,
            s if s == status => {
                let body: Value = response.json().await.expect("JSON");
                assert_eq!(body["error"]["code"], code, "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap_or_default()),
        }
    }
    (accepted, refused)
}

async fn caps_hold_under_200_concurrent_creates(backend: Backend) {
    let app = TestApp::builder()
        .backend(backend)
        .configure(|settings| settings.tasks.max_queued_per_account = NonZeroUsize::new(100).expect("100"))
        .spawn()
        .await;

    // A key's daily cap of 120: ten seed tasks of 12, however the creates race.
    let daily = Limits { daily_credit_cap: Some(120), ..Limits::default() };
    let (_, key) = limited(&app, 100_000, daily, Limits::default()).await;
    assert_eq!(race(&app, &key, "daily", StatusCode::TOO_MANY_REQUESTS, "credit_cap_reached").await, (10, 190));

    // An account's monthly cap of 60 over its key: five.
    let monthly = Limits { monthly_credit_cap: Some(60), ..Limits::default() };
    let (_, key) = limited(&app, 100_000, Limits::default(), monthly).await;
    assert_eq!(race(&app, &key, "monthly", StatusCode::TOO_MANY_REQUESTS, "credit_cap_reached").await, (5, 195));

    // At most 7 unfinished at once (the tasks take a minute): the rest queue, up to
    // tasks.max_queued_per_account (100 here); beyond, `queue_full`.
    let in_flight = Limits { max_in_flight: Some(7), ..Limits::default() };
    let (account_id, key) = limited(&app, 100_000, in_flight, Limits::default()).await;
    let slow = "[simulate:delay=60000] slow";
    assert_eq!(race(&app, &key, slow, StatusCode::TOO_MANY_REQUESTS, "queue_full").await, (107, 93));
    let statuses: Vec<(String, i64)> = on_db!(&app.db, pool => sqlx::query_as(
        "SELECT CASE WHEN status = 'queued' THEN 'queued' ELSE 'in flight' END AS s, count(*) FROM tasks
         WHERE account_id = $1 GROUP BY s ORDER BY s",
    )
    .bind(account_id)
    .fetch_all(pool)
    .await)
    .expect("count statuses");
    assert_eq!(statuses, [("in flight".to_owned(), 7), ("queued".to_owned(), 100)]);
    assert_ledger_consistent_on(&app.db).await;
}

#[tokio::test]
async fn released_credits_and_ended_tasks_free_the_limits_again() {
    let app = TestApp::builder().spawn().await;
    let key_limits = Limits { daily_credit_cap: Some(24), max_in_flight: Some(1), ..Limits::default() };
    let (_, key) = limited(&app, 1000, key_limits, Limits::default()).await;
    // A failure releases its credits: they count no more against the day's cap.
    let failed = app.create_ok(&key, json!({"prompt": "a lake [simulate:fail] [simulate:delay=500]"})).await;
    // max_in_flight is full: the next one waits, queued, and goes when the first has ended.
    let queued = app.create_ok(&key, json!({"prompt": "another"})).await;
    assert_eq!((&queued["status"], &queued["queue_position"]), (&json!("queued"), &json!(1)), "{queued}");
    assert_eq!(app.wait_terminal(&key, failed["task_id"].as_str().expect("id")).await["status"], "failed");
    assert_eq!(app.wait_terminal(&key, queued["task_id"].as_str().expect("id")).await["status"], "succeeded");
    for prompt in ["second"] {
        let task = app.create_ok(&key, json!({"prompt": prompt})).await;
        app.wait_terminal(&key, task["task_id"].as_str().expect("id")).await;
    }
    // 24 charged today: the cap, with when it resets.
    let response = app.create(&key, json!({"prompt": "third"})).await;
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "credit_cap_reached", "{body}");
    assert_eq!((&body["error"]["cap"], &body["error"]["period"]), (&json!(24), &json!("day")), "{body}");
    let resets_at = body["error"]["resets_at"].as_str().expect("resets_at");
    assert!(resets_at.ends_with("T00:00:00.000Z"), "{resets_at}");
    assert_ledger_consistent_on(&app.db).await;
}

#[tokio::test]
async fn keys_and_accounts_get_limits_through_the_api() {
    let app = spawn_dashboard_app_with(|_| {}).await;
    let (account_id, key) = app.new_account(1000).await;
    let session = session_token(account_id, Role::User);
    let keys = crate::helpers::json_of(app.with_bearer(Method::GET, "/api/v1/keys", &session)).await;
    let key_id = keys["data"][0]["key_id"].as_str().expect("key_id").to_owned();
    assert_eq!(keys["data"][0]["allowed_models"], Value::Null);

    let path = format!("/api/v1/keys/{key_id}");
    let patch = json!({"allowed_models": ["flux-dev"], "daily_credit_cap": 100});
    let response = app.with_bearer(Method::PATCH, &path, &session).json(&patch).send().await.expect("PATCH");
    assert_eq!(response.status(), StatusCode::OK);
    let updated: Value = response.json().await.expect("JSON");
    assert_eq!(
        (&updated["allowed_models"], &updated["daily_credit_cap"], &updated["max_in_flight"]),
        (&json!(["flux-dev"]), &json!(100), &Value::Null),
        "{updated}"
    );
    let (_, message) =
        assert_error(app.create(&key, json!({"prompt": "a cat"})).await, StatusCode::FORBIDDEN, "model_not_allowed")
            .await;
    assert!(message.contains("seedream/4.5-text-to-image"), "{message}");
    app.create_ok(&key, json!({"model": "flux-dev", "prompt": "a cat"})).await;

    // Unknown models, negative caps and unknown fields are refused; another account's key is not found.
    for bad in [json!({"allowed_models": ["nope"]}), json!({"max_in_flight": -1}), json!({"colour": 1})] {
        let response = app.with_bearer(Method::PATCH, &path, &session).json(&bad).send().await.expect("PATCH");
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let (other, _) = app.new_account(0).await;
    let stranger = session_token(other, Role::User);
    let response = app.with_bearer(Method::PATCH, &path, &stranger).json(&patch).send().await.expect("PATCH");
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;

    // `null` clears a limit; fields not sent stay.
    let response = app
        .with_bearer(Method::PATCH, &path, &session)
        .json(&json!({"allowed_models": null}))
        .send()
        .await
        .expect("PATCH");
    let updated: Value = response.json().await.expect("JSON");
    assert_eq!((&updated["allowed_models"], &updated["daily_credit_cap"]), (&Value::Null, &json!(100)));

    // An admin sets the account's limits.
    let admin = session_token(account_id, Role::Admin);
    let account_path = format!("/api/v1/admin/accounts/{account_id}");
    let response = app
        .with_bearer(Method::PATCH, &account_path, &admin)
        .json(&json!({"max_in_flight": 0}))
        .send()
        .await
        .expect("PATCH");
    assert_eq!(response.status(), StatusCode::OK);
    let account: Value = response.json().await.expect("JSON");
    assert_eq!(account["max_in_flight"], 0, "{account}");
    let (_, message) = assert_error(
        app.create(&key, json!({"prompt": "a cat"})).await,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_in_flight",
    )
    .await;
    assert!(message.starts_with("The account"), "{message}");
    let response =
        app.with_bearer(Method::PATCH, &account_path, &session).json(&json!({})).send().await.expect("PATCH");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // The audit log has each change that went through once (the refused ones wrote nothing), before → after.
    let audit = |action: &str| {
        let path = format!("/api/v1/admin/audit?action={action}&account_id={account_id}");
        crate::helpers::json_of(app.with_bearer(Method::GET, &path, &admin))
    };
    let keys_changed = audit("key.limits").await;
    let entries = keys_changed["data"].as_array().expect("data");
    assert_eq!(entries.len(), 2, "{keys_changed}");
    assert_eq!(
        (&entries[0]["before"]["allowed_models"], &entries[0]["after"]["allowed_models"]),
        (&json!(["flux-dev"]), &Value::Null)
    );
    assert_eq!((&entries[1]["actor"]["kind"], &entries[1]["target"]["id"]), (&json!("account"), &json!(key_id)));
    let account_changed = audit("account.limits").await;
    let entries = account_changed["data"].as_array().expect("data");
    assert_eq!(entries.len(), 1, "{account_changed}");
    assert_eq!((&entries[0]["actor"]["kind"], &entries[0]["after"]["max_in_flight"]), (&json!("admin"), &json!(0)));
}
