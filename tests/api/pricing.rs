//! Prices that follow the request (issue 20): price rules and `n`, the quote frozen into the task,
//! `POST /api/v1/quotes`, and a settlement that charges per image delivered.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, assert_ledger_consistent_on, bearer, Backend, TestApp};

async fn priced_app(backend: Backend) -> TestApp {
    TestApp::builder().backend(backend).catalog("priced.toml").spawn().await
}

impl TestApp {
    pub async fn quote(&self, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/api/v1/quotes"))
            .header(reqwest::header::AUTHORIZATION, bearer(key))
            .json(&body)
            .send()
            .await
            .expect("POST /api/v1/quotes")
    }

    /// The ledger rows of one task: (kind, amount, reason), oldest first.
    pub async fn task_entries(&self, task_id: &str) -> Vec<(String, i64, Option<String>)> {
        aio_gateway::on_db!(&self.db, pool => sqlx::query_as(
            "SELECT kind, amount, reason FROM ledger WHERE task_id = $1 ORDER BY id",
        )
        .bind(task_id)
        .fetch_all(pool)
        .await)
        .expect("read the ledger")
    }
}

fn high_two(prompt: &str) -> Value {
    json!({"model": "priced", "prompt": prompt, "quality": "high", "n": 2})
}

async fn holds_the_quote_and_captures_per_image_delivered(backend: Backend) {
    let app = priced_app(backend).await;
    let (_, key) = app.new_account(1000).await;

    // 10 × 1.5 = 15 per image, × 2.
    let response = app.quote(&key, high_two("a lake")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let quote: Value = response.json().await.expect("JSON");
    assert_eq!(quote["credits"], 30, "{quote}");
    assert_eq!(
        quote["breakdown"],
        json!([
            {"step": "base", "credits": 10},
            {"step": "rule", "when": {"quality": "high"}, "multiply": 1.5, "credits": 15},
            {"step": "images", "n": 2, "credits": 30},
        ])
    );
    assert_eq!(app.count_tasks().await, 0, "a quote creates nothing");
    app.assert_balance(&key, 1000, 0).await;

    // All images delivered: the hold is the quote, all of it captured.
    let task = app.create_ok(&key, high_two("a lake")).await;
    assert_eq!((task["credits"]["price"].as_i64(), task["input"]["n"].as_i64()), (Some(30), Some(2)), "{task}");
    assert_eq!(task["credits"]["breakdown"], quote["breakdown"]);
    app.assert_balance(&key, 970, 30).await;
    let id = task["task_id"].as_str().expect("task_id");
    let done = app.wait_terminal(&key, id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"].as_array().map(Vec::len), Some(2));
    assert_eq!(done["credits"]["charged"], 30, "{done}");
    assert_eq!(app.task_entries(id).await, [("hold".into(), -30, None), ("capture".into(), 0, None)]);
    app.assert_balance(&key, 970, 0).await;

    // One of two delivered: 15 captured, 15 released, in one settlement.
    let task = app.create_ok(&key, high_two("a lake [simulate:images=1]")).await;
    let id = task["task_id"].as_str().expect("task_id");
    let done = app.wait_terminal(&key, id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"].as_array().map(Vec::len), Some(1));
    assert_eq!((done["credits"]["price"].as_i64(), done["credits"]["charged"].as_i64()), (Some(30), Some(15)));
    assert_eq!(
        app.task_entries(id).await,
        [
            ("hold".into(), -30, None),
            ("capture".into(), 0, None),
            ("release".into(), 15, Some("1 of 2 images delivered".into()))
        ]
    );
    app.assert_balance(&key, 955, 0).await;

    // 3 of 4 at 16:9 (10 + 2 = 12 per image): 36 captured, 12 released.
    let body = json!({"model": "priced", "prompt": "a bay [simulate:images=3]", "aspect_ratio": "16:9", "n": 4});
    let task = app.create_ok(&key, body).await;
    assert_eq!(task["credits"]["price"], 48, "{task}");
    let done = app.wait_terminal(&key, task["task_id"].as_str().expect("task_id")).await;
    assert_eq!((done["credits"]["charged"].as_i64(), done["credits"]["state"].as_str()), (Some(36), Some("charged")));
    app.assert_balance(&key, 919, 0).await;

    // A failure charges nothing.
    let task = app.create_ok(&key, high_two("a lake [simulate:fail]")).await;
    let done = app.wait_terminal(&key, task["task_id"].as_str().expect("task_id")).await;
    assert_eq!((done["status"].as_str(), done["credits"]["charged"].as_i64()), (Some("failed"), Some(0)));
    app.assert_balance(&key, 919, 0).await;

    let usage = crate::helpers::json_of(
        app.client.get(app.url("/api/v1/billing/credits")).header(reqwest::header::AUTHORIZATION, bearer(&key)),
    )
    .await;
    assert_eq!(usage["balance"], 919, "{usage}");
    assert_ledger_consistent_on(&app.db).await;
}

#[tokio::test]
async fn holds_the_quote_and_captures_per_image_delivered_on_postgres() {
    holds_the_quote_and_captures_per_image_delivered(Backend::Postgres).await;
}

#[tokio::test]
async fn holds_the_quote_and_captures_per_image_delivered_on_sqlite() {
    holds_the_quote_and_captures_per_image_delivered(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_quote_is_refused_exactly_as_the_create_would_be() {
    let app = priced_app(Backend::Postgres).await;
    let (_, key) = app.new_account(1000).await;
    for body in [
        json!({"model": "priced", "prompt": "a lake", "n": 5}),
        json!({"model": "priced", "prompt": "a lake", "n": 0}),
        json!({"model": "priced", "prompt": "a lake", "quality": "ultra"}),
        json!({"model": "priced", "prompt": ""}),
        json!({"model": "priced", "prompt": "a lake", "colour": "red"}),
    ] {
        let (code, quoted) =
            assert_error(app.quote(&key, body.clone()).await, StatusCode::BAD_REQUEST, "invalid_request").await;
        let (_, created) = assert_error(app.create(&key, body).await, StatusCode::BAD_REQUEST, &code).await;
        assert_eq!(quoted, created);
    }
    let (_, message) = assert_error(
        app.quote(&key, json!({"model": "priced", "prompt": "a", "n": 5})).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_eq!(message, "`n`: priced makes 1 to 4 images per request; got 5.");
    assert_eq!(app.count_tasks().await, 0);
    let response = app.client.post(app.url("/api/v1/quotes")).json(&json!({"prompt": "a"})).send().await.expect("POST");
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn the_model_page_shows_its_rules_and_price_range() {
    let app = priced_app(Backend::Postgres).await;
    let (_, key) = app.new_account(0).await;
    let model = app.get_json(&key, "/api/v1/models/priced").await;
    assert_eq!(
        model["price_rules"],
        json!([{"when": {"quality": "high"}, "multiply": 1.5}, {"when": {"aspect_ratio": "16:9"}, "add": 2}])
    );
    // One basic 1:1 image at least; four high 16:9 ones (15 + 2 = 17 each) at most.
    assert_eq!(model["price_range"], json!({"min": 10, "max": 68}));
    assert_eq!(model["max_images"], 4);
    let n = model["parameters"].as_array().expect("parameters").iter().find(|p| p["name"] == "n").cloned();
    assert_eq!(n.map(|n| n["type"].clone()), Some(json!("integer")));
}

#[tokio::test]
async fn the_kie_route_receives_n_as_its_max_images() {
    let fake = crate::fakes::kie::FakeKie::start().await;
    fake.polls(0);
    let app = TestApp::builder().configure(|settings| fake.configure(settings)).driven().spawn().await;
    let (_, key) = app.new_account(1000).await;
    let body = json!({"model": "seedream-4", "prompt": "a lake", "aspect_ratio": "16:9", "n": 3});
    let task = app.create_ok(&key, body).await;
    assert_eq!(task["credits"]["price"], 30);
    let done = app.wait_terminal(&key, task["task_id"].as_str().expect("task_id")).await;
    assert_eq!(fake.creates()[0].json()["input"]["max_images"], 3);
    // The fake makes one image: one of three is charged.
    assert_eq!((done["status"].as_str(), done["credits"]["charged"].as_i64()), (Some("succeeded"), Some(10)), "{done}");
    assert_ledger_consistent_on(&app.db).await;
}
