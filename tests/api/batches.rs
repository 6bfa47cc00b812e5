//! Group commit of creates (`tasks::batch`), on both backends (the last test on PostgreSQL): concurrent creates on one account are
//! decided one by one inside their batches (exactly what the balance pays for, the rest 402), an
//! idempotency key used several times in one batch still makes one task, and a request the database
//! refuses fails alone, not its batch.

use std::collections::{HashMap, HashSet};

use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_ledger_consistent_on, bearer, seed_request, Backend, TestApp};

/// The seed model's price in the catalog.
const PRICE: i64 = 12;

async fn app_on(backend: Backend) -> TestApp {
    TestApp::builder().backend(backend).driven().spawn().await
}

/// A create with an optional `Idempotency-Key`: `(status, body)`.
async fn create(app: &TestApp, key: &str, body: &Value, idempotency_key: Option<&str>) -> (StatusCode, Value) {
    let mut request =
        app.client.post(app.url("/api/v1/images/generations")).header(AUTHORIZATION, bearer(key)).json(body);
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("Idempotency-Key", idempotency_key);
    }
    let response = request.send().await.expect("POST /api/v1/images/generations");
    let status = response.status();
    (status, response.json().await.unwrap_or_default())
}

async fn count(app: &TestApp, sql: &str, account_id: i64) -> i64 {
    aio_gateway::on_db!(&app.db, pool => sqlx::query_scalar::<_, i64>(sql).bind(account_id).fetch_one(pool).await)
        .expect("count")
}

#[tokio::test]
async fn two_hundred_racing_creates_on_one_account_take_exactly_what_it_can_pay() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let app = app_on(backend).await;
        let (account_id, key) = app.new_account(150 * PRICE).await;
        let body = seed_request();
        let answers = futures::future::join_all((0..200).map(|_| create(&app, &key, &body, None))).await;
        let ok = answers.iter().filter(|(status, _)| *status == StatusCode::OK).count();
        let refused: Vec<&Value> = answers
            .iter()
            .filter(|(status, _)| *status == StatusCode::PAYMENT_REQUIRED)
            .map(|(_, body)| body)
            .collect();
        assert_eq!((ok, refused.len()), (150, 50), "{backend:?}: {answers:?}");
        assert!(refused.iter().all(|body| body["error"]["code"] == "insufficient_credits"), "{refused:?}");
        let ids: HashSet<&str> = answers.iter().filter_map(|(_, body)| body["task_id"].as_str()).collect();
        assert_eq!(ids.len(), 150, "{backend:?}: every 200 names its own task");
        let stored = count(&app, "SELECT count(*) FROM tasks WHERE account_id = $1", account_id).await;
        assert_eq!(stored, 150, "{backend:?}");
        app.assert_balance(&key, 0, 150 * PRICE).await;
        assert_ledger_consistent_on(&app.db).await;
    }
}

#[tokio::test]
async fn keys_used_several_times_in_one_batch_make_one_task_each() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let app = app_on(backend).await;
        let (account_id, key) = app.new_account(100_000).await;
        let other = json!({"model": "seedream/4.5-text-to-image", "prompt": "another request"});
        // Ten keys four times with one body each, and five keys with two different bodies, all at once.
        let mut requests = Vec::new();
        for round in 0..4 {
            for k in 0..10 {
                requests.push((format!("same-{k}"), seed_request()));
            }
            for k in 0..5 {
                requests.push((format!("mixed-{k}"), if round % 2 == 0 { seed_request() } else { other.clone() }));
            }
        }
        let answers = futures::future::join_all(
            requests.iter().map(|(idempotency_key, body)| create(&app, &key, body, Some(idempotency_key))),
        )
        .await;
        let mut tasks_of: HashMap<&str, HashSet<String>> = HashMap::new();
        for ((idempotency_key, _), (status, body)) in requests.iter().zip(&answers) {
            match *status {
                StatusCode::OK => {
                    let id = body["task_id"].as_str().expect("task_id").to_owned();
                    tasks_of.entry(idempotency_key).or_default().insert(id);
                }
                StatusCode::CONFLICT => {
                    assert!(idempotency_key.starts_with("mixed-"), "{backend:?}: {idempotency_key} conflicted: {body}");
                    assert_eq!(body["error"]["code"], "conflict");
                }
                other => panic!("{backend:?}: {idempotency_key} answered {other}: {body}"),
            }
        }
        assert_eq!(tasks_of.len(), 15, "{backend:?}: every key made a task: {tasks_of:?}");
        assert!(tasks_of.values().all(|ids| ids.len() == 1), "{backend:?}: one task per key: {tasks_of:?}");
        let stored = count(&app, "SELECT count(*) FROM tasks WHERE account_id = $1", account_id).await;
        let holds =
            count(&app, "SELECT count(*) FROM ledger WHERE account_id = $1 AND kind = 'hold'", account_id).await;
        assert_eq!((stored, holds), (15, 15), "{backend:?}");
        assert_ledger_consistent_on(&app.db).await;
    }
}

/// PostgreSQL cannot store a NUL character: the batch holding one fails, and is retried one by one.
#[tokio::test]
async fn a_request_the_database_refuses_fails_alone() {
    for backend in [Backend::Postgres] {
        let app = app_on(backend).await;
        let (account_id, key) = app.new_account(100_000).await;
        let bad = json!({"model": "seedream/4.5-text-to-image", "prompt": "a NUL \u{0} in the prompt"});
        let mut bodies = vec![seed_request(); 30];
        bodies.insert(15, bad);
        let answers = futures::future::join_all(bodies.iter().map(|body| create(&app, &key, body, None))).await;
        for (index, (status, body)) in answers.iter().enumerate() {
            let expected = if index == 15 { StatusCode::BAD_REQUEST } else { StatusCode::OK };
            assert_eq!(*status, expected, "{backend:?}: request {index}: {body}");
        }
        let stored = count(&app, "SELECT count(*) FROM tasks WHERE account_id = $1", account_id).await;
        assert_eq!(stored, 30, "{backend:?}");
        assert_ledger_consistent_on(&app.db).await;
    }
}
