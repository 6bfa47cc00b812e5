//! The WaveSpeed adapter against the fake WaveSpeed (`fakes::wavespeed`): the exact requests, how
//! each answer settles the task, and its `v3` hex-signed callbacks.

use std::time::Duration;

use serde_json::json;

use crate::fakes::wavespeed::{self, FakeWaveSpeed, Outcome, Signing};
use crate::fakes::Step;
use crate::helpers::{assert_ledger_consistent, seed_request, spawn_app_only_on, TestApp};

async fn app(fake: &FakeWaveSpeed) -> TestApp {
    TestApp::builder()
        .configure(|settings| fake.configure(settings))
        .catalog("wavespeed_only.toml")
        .driven()
        .spawn()
        .await
}

fn assert_no_secrets(text: &str) {
    assert!(!text.contains(wavespeed::KEY), "the provider key leaked: {text}");
    assert!(!text.contains(wavespeed::SECRET), "the webhook secret leaked: {text}");
}

#[tokio::test]
async fn a_wavespeed_task_succeeds_after_polls_and_the_fake_saw_exact_requests() {
    let fake = FakeWaveSpeed::start().await;
    fake.polls(3);
    let app = app(&fake).await;
    let (account, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"], json!([{"url": fake.result_url("pred_1")}]), "{done}");
    assert_no_secrets(&done.to_string());

    let submits = fake.submits();
    assert_eq!(submits.len(), 1);
    let submit = &submits[0];
    assert_eq!(submit.path, "/api/v3/bytedance/seedream-v4.5");
    assert_eq!(submit.query, "", "no webhook while callbacks are off");
    assert_eq!(submit.header("authorization"), Some(format!("Bearer {}", wavespeed::KEY).as_str()));
    assert_eq!(submit.header("content-type"), Some("application/json"));
    assert_eq!(
        submit.json(),
        json!({"prompt": "A serene mountain lake at sunrise with reflections, photorealistic", "size": "4096*2304"})
    );
    let polls = fake.polls_received();
    assert_eq!(polls.len(), 4, "three processing answers, then completed");
    for poll in &polls {
        assert_eq!(poll.method, "GET");
        assert_eq!(poll.path, "/api/v3/predictions/pred_1/result");
        assert_eq!(poll.header("authorization"), Some(format!("Bearer {}", wavespeed::KEY).as_str()));
    }
    app.assert_balance(&key, 88, 0).await;
    assert_eq!(app.ledger_kinds(account).await, ["grant", "hold", "capture"]);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_wavespeed_failure_gives_its_reason_and_releases_the_credits() {
    let fake = FakeWaveSpeed::start().await;
    fake.polls(1).outcome(Outcome::Fail("Inference failed: out of memory"));
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "upstream_failed");
    assert!(
        done["error"]["message"].as_str().unwrap_or_default().contains("Inference failed: out of memory"),
        "{done}"
    );

    fake.outcome(Outcome::Fail("NSFW content detected in the output"));
    let done = app.run_seed(&key).await;
    assert_eq!(done["error"]["code"], "content_policy", "{done}");
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn wavespeed_429_and_5xx_are_retried_until_success() {
    let fake = FakeWaveSpeed::start().await;
    fake.polls(0);
    fake.script("submit", [wavespeed::error(429, "rate limited"), wavespeed::error(500, "internal error")]);
    fake.script("poll", [Step::Text(502, "<html>bad gateway</html>"), wavespeed::error(503, "busy")]);
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.submits().len(), 3);
    assert_eq!(fake.polls_received().len(), 3, "two failed polls, then completed");
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn wavespeed_rejections_and_account_problems_end_the_task_without_leaking() {
    let fake = FakeWaveSpeed::start().await;
    // The create answers with the submit's refusal: the fast path, which a driven app has not.
    let app = spawn_app_only_on("wavespeed_only.toml", |settings| fake.configure(settings)).await;
    let (_, key) = app.new_account(100).await;

    // A rejection that quotes the key: the reason reaches the client, the key does not.
    let quoting = format!("size is invalid (request by {})", wavespeed::KEY);
    fake.script("submit", [Step::Json(200, json!({"code": 400, "message": quoting, "data": null}))]);
    let response = app.create(&key, seed_request()).await;
    let (_, message) = crate::helpers::assert_error(response, reqwest::StatusCode::BAD_GATEWAY, "upstream_error").await;
    assert!(message.contains("size is invalid (request by [redacted])"), "{message}");
    assert_no_secrets(&message);

    fake.script("submit", [wavespeed::error(401, "Invalid API key wavespeed-test-key-5ecr3t")]);
    let done = app.run_seed(&key).await;
    assert_eq!(done["error"], json!({"code": "upstream_failed", "message": "The provider is unavailable."}));
    assert_no_secrets(&done.to_string());
    assert_eq!(fake.submits().len(), 2, "neither is retried");
    let errors: Vec<(String,)> =
        sqlx::query_as("SELECT error::text FROM tasks").fetch_all(app.pool()).await.expect("tasks");
    assert!(errors.iter().all(|(error,)| !error.contains(wavespeed::KEY)), "{errors:?}");
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn malformed_wavespeed_answers_are_retried() {
    let fake = FakeWaveSpeed::start().await;
    fake.polls(0);
    fake.script("submit", [Step::Text(200, "{\"code\":200,\"data\":")]);
    fake.script(
        "poll",
        [Step::Text(200, "<html>not json</html>"), Step::Json(200, json!({"code": 200, "data": {"status": 7}}))],
    );
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.submits().len(), 2);
    assert_eq!(fake.polls_received().len(), 3);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_signed_wavespeed_callback_settles_and_unsigned_or_forged_ones_are_refused() {
    let fake = FakeWaveSpeed::start().await;
    fake.polls(1000);
    let app = spawn_app_only_on("wavespeed_only.toml", |settings| {
        fake.configure_callbacks(settings, Some(wavespeed::SECRET));
    })
    .await;
    let (_, key) = app.new_account(100).await;
    let task_id = app.running_seed_task(&key).await;

    // The webhook rides as a query parameter and points at this gateway's callback route.
    let submit = &fake.submits()[0];
    let webhook = submit.query_param("webhook").expect("?webhook=");
    assert!(webhook.starts_with(&format!("{}/api/v1/callbacks/wavespeed/", app.address)), "{webhook}");
    assert!(!webhook.contains(&task_id), "{webhook}");

    let forged = json!({"id": "pred_1", "status": "completed", "outputs": ["https://evil.example/x.png"]});
    assert_eq!(fake.send("pred_1", forged.to_string(), Signing::Unsigned).await, 401);
    assert_eq!(fake.send("pred_1", forged.to_string(), Signing::With("whsec_another-secret")).await, 401);
    assert_eq!(app.get_task(&key, &task_id).await["status"], "running");

    assert_eq!(fake.finish_and_call_back("pred_1", Signing::With(wavespeed::SECRET)).await, 200);
    let done = app.wait_terminal(&key, &task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"], json!([{"url": fake.result_url("pred_1")}]), "{done}");

    // A duplicate delivery is taken and changes nothing.
    assert_eq!(fake.finish_and_call_back("pred_1", Signing::With(wavespeed::SECRET)).await, 200);
    assert_eq!(app.get_task(&key, &task_id).await, done);
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_wavespeed_upstream_that_hangs_past_the_timeout_is_retried() {
    let fake = FakeWaveSpeed::start().await;
    fake.polls(0);
    fake.script("submit", [Step::Hang(Duration::from_millis(1500))]);
    fake.script("poll", [Step::Hang(Duration::from_millis(1500))]);
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // The first submit timed out (its job is orphaned upstream); the second one served.
    assert_eq!(fake.submits().len(), 2);
    // Which job serves depends on whether the timed-out request got as far as creating one upstream.
    let url = done["output"]["images"][0]["url"].as_str().expect("url");
    assert!(url.starts_with(fake.result_url("pred_").trim_end_matches(".png")), "{url}");
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_wavespeed_callback_before_the_submit_answer_is_not_lost_and_settles_once() {
    let fake = FakeWaveSpeed::start().await;
    fake.call_back_before_answering(Signing::With(wavespeed::SECRET));
    let app = spawn_app_only_on("wavespeed_only.toml", |settings| {
        fake.configure_callbacks(settings, Some(wavespeed::SECRET));
    })
    .await;
    let (account, key) = app.new_account(100).await;

    let task = app.create_ok(&key, seed_request()).await;
    let task_id = task["task_id"].as_str().expect("task_id");
    let done = app.wait_terminal(&key, task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"], json!([{"url": fake.result_url("pred_1")}]), "{done}");
    assert_eq!(fake.polls_received().len(), 1, "polled at once after the submit, not after 60 s");

    // The same callback again, after the settlement: taken, nothing changes.
    let body = json!({"id": "pred_1", "status": "completed", "outputs": [fake.result_url("pred_1")]}).to_string();
    assert_eq!(fake.send("pred_1", body, Signing::With(wavespeed::SECRET)).await, 200);
    assert_eq!(app.get_task(&key, task_id).await, done);
    app.assert_balance(&key, 88, 0).await;
    assert_eq!(app.ledger_kinds(account).await, ["grant", "hold", "capture"]);
    assert_ledger_consistent(app.pool()).await;
}
