//! The KIE adapter against the fake KIE (`fakes::kie`): what it sends, how each answer settles the
//! task, and that the provider's key and account messages never reach the client.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fakes::kie::{self, FakeKie, Outcome};
use crate::fakes::Step;
use crate::helpers::{
    assert_error, assert_ledger_consistent, seed_request, spawn_app_only_on, spawn_app_with, TestApp,
};

/// A gateway whose Seedream 4.5 runs on the fake KIE only (no fallback route).
async fn app(fake: &FakeKie) -> TestApp {
    TestApp::builder().configure(|settings| fake.configure(settings)).catalog("kie_only.toml").driven().spawn().await
}

/// Neither the provider's key nor its account message may be in what the client sees.
fn assert_no_secrets(text: &str) {
    assert!(!text.contains(kie::KEY), "the provider key leaked: {text}");
    assert!(!text.contains("access permissions"), "the provider's account message leaked: {text}");
}

#[tokio::test]
async fn a_kie_task_succeeds_after_polls_and_the_fake_saw_exact_requests() {
    let fake = FakeKie::start().await;
    fake.polls(3);
    let app = app(&fake).await;
    let (account, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"][0]["url"], fake.result_url("task_kie_1"), "{done}");
    assert_no_secrets(&done.to_string());

    let creates = fake.creates();
    assert_eq!(creates.len(), 1);
    let create = &creates[0];
    assert_eq!(create.method, "POST");
    assert_eq!(create.header("authorization"), Some(format!("Bearer {}", kie::KEY).as_str()));
    assert_eq!(create.header("content-type"), Some("application/json"));
    let body = create.json();
    assert_eq!(body["model"], "seedream/4.5-text-to-image");
    assert_eq!(
        body["input"],
        json!({
            "prompt": "A serene mountain lake at sunrise with reflections, photorealistic",
            "aspect_ratio": "16:9",
            "quality": "high"
        })
    );
    let polls = fake.polls_received();
    assert_eq!(polls.len(), 4, "three running answers, then success");
    for poll in &polls {
        assert_eq!(poll.method, "GET");
        assert_eq!(poll.query_param("taskId").as_deref(), Some("task_kie_1"));
        assert_eq!(poll.header("authorization"), Some(format!("Bearer {}", kie::KEY).as_str()));
    }
    app.assert_balance(&key, 88, 0).await;
    assert_eq!(app.ledger_kinds(account).await, ["grant", "hold", "capture"]);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_kie_failure_gives_its_reason_and_releases_the_credits() {
    let fake = FakeKie::start().await;
    fake.outcome(Outcome::Fail { code: "500", message: "Image generation failed: upstream model error" });
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "upstream_failed");
    let message = done["error"]["message"].as_str().expect("message");
    assert!(message.contains("Image generation failed: upstream model error"), "{message}");
    app.assert_balance(&key, 100, 0).await;

    // A failure that names the content filter is a content-policy failure.
    fake.outcome(Outcome::Fail { code: "400", message: "NSFW content detected" });
    let done = app.run_seed(&key).await;
    assert_eq!(done["error"]["code"], "content_policy", "{done}");
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn an_error_envelope_is_an_error_under_http_200_and_under_its_own_status() {
    let fake = FakeKie::start().await;
    // The create answers with the submit's refusal: the fast path, which a driven app has not.
    let app = spawn_app_only_on("kie_only.toml", |settings| fake.configure(settings)).await;
    let (_, key) = app.new_account(100).await;

    for step in [kie::error_under_200(422, "prompt is too long"), kie::error_with_status(422, "prompt is too long")] {
        fake.script("create", [step]);
        let response = app.create(&key, seed_request()).await;
        let (_, message) = assert_error(response, StatusCode::BAD_GATEWAY, "upstream_error").await;
        assert!(message.contains("prompt is too long"), "{message}");
    }
    let failed: Vec<(Value,)> =
        sqlx::query_as("SELECT to_jsonb(error) FROM tasks").fetch_all(app.pool()).await.expect("tasks");
    assert_eq!(failed.len(), 2);
    for (error,) in failed {
        assert_eq!(error["code"], "upstream_rejected", "{error}");
    }
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn account_problems_fail_the_task_with_a_neutral_message() {
    let fake = FakeKie::start().await;
    // Each problem takes the route out for the cool-down; none here, so every task makes a trial.
    let app = TestApp::builder()
        .configure(|settings| {
            fake.configure(settings);
            settings.tasks.breaker_cooldown = std::time::Duration::ZERO;
        })
        .catalog("kie_only.toml")
        .driven()
        .spawn()
        .await;
    let (_, key) = app.new_account(100).await;

    for step in [
        kie::error_under_200(401, "You do not have access permissions"),
        kie::error_with_status(402, "Insufficient credits: you do not have access permissions"),
        kie::error_under_200(433, "sub-key usage limit exceeded; you do not have access permissions"),
        kie::error_under_200(505, "feature disabled; you do not have access permissions"),
    ] {
        fake.script("create", [step]);
        let task = app.create_ok(&key, seed_request()).await;
        let done = app.wait_terminal(&key, task["task_id"].as_str().expect("id")).await;
        assert_eq!(done["status"], "failed", "{done}");
        assert_eq!(done["error"], json!({"code": "upstream_failed", "message": "The provider is unavailable."}));
        assert_no_secrets(&done.to_string());
    }
    assert_eq!(fake.creates().len(), 4, "account problems are not retried: one submit per task");
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn rate_limits_maintenance_and_5xx_are_retried_until_success() {
    let fake = FakeKie::start().await;
    fake.script("create", [kie::error_with_status(429, "rate limited"), kie::error_under_200(455, "maintenance")]);
    fake.script("poll", [Step::Text(502, "<html>bad gateway</html>"), kie::error_under_200(500, "server error")]);
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.creates().len(), 3);
    assert!(fake.polls_received().len() >= 5, "two failed polls, two running, one success");
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn an_upstream_that_hangs_past_the_timeout_is_retried() {
    let fake = FakeKie::start().await;
    fake.polls(0);
    fake.script("create", [Step::Hang(std::time::Duration::from_millis(1500))]);
    fake.script("poll", [Step::Hang(std::time::Duration::from_millis(1500))]);
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The first createTask timed out (its job is orphaned upstream); the second one served.
    assert_eq!(fake.creates().len(), 2);
    let url = done["output"]["images"][0]["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("{}/results/task_kie_", fake.base_url())), "{url}");
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn malformed_answers_are_retried() {
    let fake = FakeKie::start().await;
    fake.polls(0);
    fake.script("create", [Step::Text(200, "{\"code\":200,\"data\":")]);
    fake.script(
        "poll",
        [
            Step::Text(200, "<html>not json</html>"),
            Step::Json(
                200,
                json!({"code": 200, "msg": "success", "data": {"state": "success", "resultJson": "not json"}}),
            ),
        ],
    );
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.creates().len(), 2);
    assert_eq!(fake.polls_received().len(), 3);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn without_its_key_kie_is_inactive_and_the_fallback_route_serves() {
    let fake = FakeKie::start().await;
    let app = spawn_app_with(|settings| {
        fake.configure(settings);
        settings.providers.get_mut("kie").expect("kie").api_key = None;
    })
    .await;
    let (_, key) = app.new_account(100).await;
    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(fake.requests().is_empty(), "an inactive provider is never called");
    let models = app.get_json(&key, "/api/v1/models").await;
    assert!(!models.to_string().contains("KIE"), "{models}");
}
