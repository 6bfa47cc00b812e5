//! The OpenAI-compatible adapter against the fake (`fakes::openai`): one synchronous request, the
//! task done in the submit step, `b64_json` stored and served under `/files/…`, `url` passed through.

use serde_json::json;

use crate::fakes::openai::{self, FakeOpenAi};
use crate::fakes::Step;
use crate::helpers::{assert_ledger_consistent, spawn_app_only_on, TestApp};

async fn app(fake: &FakeOpenAi) -> TestApp {
    TestApp::builder().configure(|settings| fake.configure(settings)).catalog("openai_only.toml").driven().spawn().await
}

#[tokio::test]
async fn a_b64_json_result_is_stored_and_served_under_files_after_one_request() {
    let fake = FakeOpenAi::start().await;
    let app = app(&fake).await;
    let (account, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(!done.to_string().contains(openai::KEY));
    let url = done["output"]["images"][0]["url"].as_str().expect("url");
    assert!(url.starts_with(&format!("{}/files/", app.address)) && url.contains(".png?exp="), "{url}");
    let served = app.client.get(url).send().await.expect("GET the file");
    assert_eq!(served.status(), reqwest::StatusCode::OK);
    assert_eq!(served.bytes().await.expect("bytes").to_vec(), openai::image());

    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "one synchronous request, no polling");
    let request = &requests[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/v1/images/generations"));
    assert_eq!(request.header("authorization"), Some(format!("Bearer {}", openai::KEY).as_str()));
    assert_eq!(
        request.json(),
        json!({
            "model": "gpt-image-2.6-sunburst",
            "prompt": "A serene mountain lake at sunrise with reflections, photorealistic",
            "n": 1,
            "size": "1536x1024",
            "quality": "high"
        })
    );
    app.assert_balance(&key, 88, 0).await;
    assert_eq!(app.ledger_kinds(account).await, ["grant", "hold", "capture"]);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_url_result_is_passed_through() {
    let fake = FakeOpenAi::start().await;
    fake.answer_urls(true);
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["output"]["images"], json!([{"url": fake.result_url()}]), "{done}");
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn openai_rate_limits_5xx_and_malformed_answers_are_retried() {
    let fake = FakeOpenAi::start().await;
    fake.script([
        openai::error(429, "Rate limit reached", "rate_limit_exceeded"),
        Step::Text(200, "{\"data\": [{\"b64_json\": "),
    ]);
    let app = spawn_app_only_on("openai_only.toml", |settings| {
        fake.configure(settings);
        settings.tasks.breaker_failures = 10;
    })
    .await;
    let (_, key) = app.new_account(100).await;
    fake.script([Step::Text(500, "<html>server error</html>")]);

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.requests().len(), 4);
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn content_policy_and_account_problems_end_the_task_without_leaking() {
    let fake = FakeOpenAi::start().await;
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    fake.script([openai::error(400, "Your request was rejected by the safety system.", "content_policy_violation")]);
    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "content_policy", "{done}");

    fake.script([openai::error(401, "Incorrect API key provided: sk-openai-test-key-5ecr3t", "invalid_api_key")]);
    let done = app.run_seed(&key).await;
    assert_eq!(done["error"], json!({"code": "upstream_failed", "message": "The provider is unavailable."}));
    assert!(!done.to_string().contains(openai::KEY));
    assert_eq!(fake.requests().len(), 2, "neither is retried");
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn an_openai_generation_that_hangs_past_the_timeout_is_retried() {
    let fake = FakeOpenAi::start().await;
    fake.answer_urls(true).script([Step::Hang(std::time::Duration::from_millis(1500))]);
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.requests().len(), 2, "the first request timed out");
    assert_eq!(done["output"]["images"], json!([{"url": fake.result_url()}]), "{done}");
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}
