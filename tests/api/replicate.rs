//! The Replicate adapter against the fake Replicate (`fakes::replicate`): the exact requests, 200 and
//! 201 creates, how each answer settles the task, cancel at the deadline, and Standard Webhooks
//! callbacks.

use std::time::Duration;

use serde_json::json;

use crate::fakes::replicate::{self, FakeReplicate, Outcome};
use crate::fakes::Step;
use crate::helpers::{assert_error, assert_ledger_consistent, seed_request, spawn_app_only_on, TestApp};

async fn app(fake: &FakeReplicate) -> TestApp {
    TestApp::builder()
        .configure(|settings| fake.configure(settings))
        .catalog("replicate_only.toml")
        .driven()
        .spawn()
        .await
}

#[tokio::test]
async fn a_replicate_task_succeeds_with_201_or_200_creates_and_the_fake_saw_exact_requests() {
    let fake = FakeReplicate::start().await;
    fake.polls(2);
    let app = app(&fake).await;
    let (account, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"], json!([{"url": fake.result_url("rep1")}]), "{done}");
    assert!(!done.to_string().contains(replicate::KEY));

    let creates = fake.creates();
    assert_eq!(creates.len(), 1);
    let create = &creates[0];
    assert_eq!(create.method, "POST");
    assert_eq!(create.path, "/v1/models/bytedance/seedream-4.5/predictions");
    assert_eq!(create.header("authorization"), Some(format!("Bearer {}", replicate::KEY).as_str()));
    assert_eq!(
        create.json(),
        json!({"input": {
            "prompt": "A serene mountain lake at sunrise with reflections, photorealistic",
            "aspect_ratio": "16:9",
            "size": "4K"
        }}),
        "no webhook while callbacks are off"
    );
    let polls = fake.polls_received();
    assert_eq!(polls.len(), 3, "two processing answers, then succeeded");
    assert!(polls.iter().all(|p| p.path == "/v1/predictions/rep1"
        && p.header("authorization") == Some(&format!("Bearer {}", replicate::KEY))));

    // Replicate's create status is not pinned down: 200 serves as well as 201.
    fake.create_status(200).polls(0);
    let done = app.run_seed(&key).await;
    assert_eq!(done["output"]["images"], json!([{"url": fake.result_url("rep2")}]), "{done}");
    app.assert_balance(&key, 76, 0).await;
    assert_eq!(app.ledger_kinds(account).await, ["grant", "hold", "capture", "hold", "capture"]);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_replicate_failure_gives_its_reason_and_releases_the_credits() {
    let fake = FakeReplicate::start().await;
    fake.polls(1).outcome(Outcome::Fail("CUDA out of memory"));
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "upstream_failed");
    assert!(done["error"]["message"].as_str().unwrap_or_default().contains("CUDA out of memory"), "{done}");
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn replicate_throttling_5xx_and_malformed_answers_are_retried_and_rejections_are_not() {
    let fake = FakeReplicate::start().await;
    fake.polls(0);
    fake.script(
        "create",
        [
            replicate::error(429, "Request was throttled. Your rate limit resets in ~30s."),
            Step::Text(503, "<html>unavailable</html>"),
            Step::Text(201, "{\"id\":"),
        ],
    );
    fake.script("poll", [replicate::error(500, "internal"), Step::Json(200, json!({"status": 42}))]);
    let app = spawn_app_only_on("replicate_only.toml", |settings| {
        fake.configure(settings);
        // Three failed creates in a row would open the only route's circuit for its cool-down.
        settings.tasks.breaker_failures = 10;
    })
    .await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.creates().len(), 4);
    assert_eq!(fake.polls_received().len(), 3);

    fake.script("create", [replicate::error(422, "aspect_ratio: invalid choice")]);
    let response = app.create(&key, seed_request()).await;
    let (_, message) = assert_error(response, reqwest::StatusCode::BAD_GATEWAY, "upstream_error").await;
    assert!(message.contains("aspect_ratio: invalid choice"), "{message}");

    fake.script(
        "create",
        [replicate::error(402, "You have insufficient credit, token r8_replicate-test-token-5ecr3t")],
    );
    let done = app.run_seed(&key).await;
    assert_eq!(done["error"], json!({"code": "upstream_failed", "message": "The provider is unavailable."}));
    assert_eq!(fake.creates().len(), 6, "rejections and account problems are not retried");
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_replicate_job_past_the_deadline_is_canceled_upstream() {
    let fake = FakeReplicate::start().await;
    fake.polls(100_000);
    let app = spawn_app_only_on("replicate_only.toml", |settings| {
        fake.configure(settings);
        settings.tasks.deadline = Duration::from_secs(1);
    })
    .await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "timeout", "{done}");
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.cancels().is_empty() {
        assert!(tokio::time::Instant::now() < give_up, "the gateway never canceled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancels = fake.cancels();
    assert_eq!(cancels[0].method, "POST");
    assert_eq!(cancels[0].path, "/v1/predictions/rep1/cancel");
    assert_eq!(cancels[0].header("authorization"), Some(format!("Bearer {}", replicate::KEY).as_str()));
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_standard_webhooks_signed_replicate_callback_settles_and_forgeries_are_refused() {
    let fake = FakeReplicate::start().await;
    fake.polls(1000);
    let app = spawn_app_only_on("replicate_only.toml", |settings| {
        fake.configure_callbacks(settings, Some(replicate::SECRET));
    })
    .await;
    let (_, key) = app.new_account(100).await;
    let task_id = app.running_seed_task(&key).await;

    let body = fake.creates()[0].json();
    let webhook = body["webhook"].as_str().expect("webhook").to_owned();
    assert!(webhook.starts_with(&format!("{}/api/v1/callbacks/replicate/", app.address)), "{webhook}");
    assert_eq!(body["webhook_events_filter"], json!(["completed"]));

    let forged = json!({"id": "rep1", "status": "succeeded", "output": ["https://evil.example/x.png"]}).to_string();
    assert_eq!(fake.send("rep1", forged.clone(), None).await, 401);
    let other_secret = "whsec_c2VjcmV0LW9mLXNvbWVvbmUtZWxzZQ==";
    assert_eq!(fake.send("rep1", forged, Some(other_secret)).await, 401);
    assert_eq!(app.get_task(&key, &task_id).await["status"], "running");

    assert_eq!(fake.finish_and_call_back("rep1", Some(replicate::SECRET)).await, 200);
    let done = app.wait_terminal(&key, &task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"], json!([{"url": fake.result_url("rep1")}]), "{done}");

    // A duplicate delivery is taken and changes nothing.
    assert_eq!(fake.finish_and_call_back("rep1", Some(replicate::SECRET)).await, 200);
    assert_eq!(app.get_task(&key, &task_id).await, done);
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_replicate_upstream_that_hangs_past_the_timeout_is_retried() {
    let fake = FakeReplicate::start().await;
    fake.polls(0);
    fake.script("create", [Step::Hang(Duration::from_millis(1500))]);
    fake.script("poll", [Step::Hang(Duration::from_millis(1500))]);
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.creates().len(), 2, "the first create timed out");
    // Which job serves depends on whether the timed-out request got as far as creating one upstream.
    let url = done["output"]["images"][0]["url"].as_str().expect("url");
    assert!(url.starts_with(fake.result_url("rep").trim_end_matches(".png")), "{url}");
    assert_ledger_consistent(app.pool()).await;
}
