//! The fal queue adapter against the fake fal (`fakes::fal`): the exact requests (model subpath on
//! submit, `{owner}/{app}/requests/{id}` after), 202-then-200 status, the job's error from the result,
//! and Ed25519-signed callbacks checked against the JWKS.

use std::time::Duration;

use serde_json::json;

use crate::fakes::fal::{self, FakeFal, Outcome, Signing};
use crate::fakes::Step;
use crate::helpers::{assert_ledger_consistent, spawn_app_only_on, TestApp};

async fn app(fake: &FakeFal) -> TestApp {
    TestApp::builder().configure(|settings| fake.configure(settings)).catalog("fal_only.toml").driven().spawn().await
}

#[tokio::test]
async fn a_fal_task_succeeds_after_queue_polls_and_the_fake_saw_exact_requests() {
    let fake = FakeFal::start().await;
    fake.polls(2);
    let app = app(&fake).await;
    let (account, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"], json!([{"url": fake.result_url("req-1")}]), "{done}");
    assert!(!done.to_string().contains(fal::KEY));

    let requests = fake.requests();
    let summary: Vec<(String, String)> = requests.iter().map(|r| (r.method.to_string(), r.path.clone())).collect();
    let status = ("GET".to_string(), "/fal-ai/bytedance/requests/req-1/status".to_string());
    assert_eq!(
        summary,
        [
            ("POST".to_string(), "/fal-ai/bytedance/seedream/v4.5/text-to-image".to_string()),
            status.clone(),
            status.clone(),
            status,
            ("GET".to_string(), "/fal-ai/bytedance/requests/req-1".to_string()),
        ]
    );
    assert!(requests.iter().all(|r| r.header("authorization") == Some(&format!("Key {}", fal::KEY))));
    assert_eq!(requests[0].query, "", "no fal_webhook while callbacks are off");
    assert_eq!(
        requests[0].json(),
        json!({
            "prompt": "A serene mountain lake at sunrise with reflections, photorealistic",
            "image_size": {"width": 4096, "height": 2304},
            "num_images": 1
        })
    );
    app.assert_balance(&key, 88, 0).await;
    assert_eq!(app.ledger_kinds(account).await, ["grant", "hold", "capture"]);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_fal_job_error_in_the_result_fails_the_task_with_its_reason() {
    let fake = FakeFal::start().await;
    fake.polls(1).outcome(Outcome::Fail("prompt could not be processed"));
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "upstream_failed");
    assert!(done["error"]["message"].as_str().unwrap_or_default().contains("prompt could not be processed"), "{done}");

    // An infrastructure failure after COMPLETED ends the job too.
    fake.outcome(Outcome::Success).polls(0);
    fake.script("result", [Step::Json(504, json!({"detail": "Request timed out", "error_type": "request_timeout"}))]);
    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["error"]["message"].as_str().unwrap_or_default().contains("Request timed out"), "{done}");
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn fal_429_5xx_and_malformed_answers_are_retried() {
    let fake = FakeFal::start().await;
    fake.polls(0);
    fake.script(
        "submit",
        [Step::Json(429, json!({"detail": "concurrency limit"})), Step::Text(200, "{\"request_id\":")],
    );
    fake.script("status", [Step::Text(502, "<html>bad gateway</html>"), Step::Text(200, "not json")]);
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let posts = fake.requests().into_iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 3);
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn an_ed25519_signed_fal_callback_triggers_settlement_and_bad_signatures_are_refused() {
    let fake = FakeFal::start().await;
    fake.polls(1000);
    let app = spawn_app_only_on("fal_only.toml", |settings| fake.configure_callbacks(settings)).await;
    let (_, key) = app.new_account(100).await;
    let task_id = app.running_seed_task(&key).await;
    let webhook = fake.requests()[0].query_param("fal_webhook").expect("?fal_webhook=");
    assert!(webhook.starts_with(&format!("{}/api/v1/callbacks/fal/", app.address)), "{webhook}");

    let forged =
        json!({"request_id": "req-1", "status": "OK", "payload": {"images": [{"url": "https://evil.example/x.png"}]}});
    assert_eq!(fake.send("req-1", forged.to_string(), Signing::Unsigned).await, 401);
    assert_eq!(fake.send("req-1", forged.to_string(), Signing::Stranger).await, 401);
    assert_eq!(app.get_task(&key, &task_id).await["status"], "running");

    assert_eq!(fake.finish_and_call_back("req-1", Signing::Valid).await, 200);
    let done = app.wait_terminal(&key, &task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"], json!([{"url": fake.result_url("req-1")}]), "{done}");
    assert_eq!(fake.jwks_fetches(), 1, "the keys are cached");
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_fal_upstream_that_hangs_past_the_timeout_is_retried() {
    let fake = FakeFal::start().await;
    fake.polls(0);
    fake.script("submit", [Step::Hang(Duration::from_millis(1500))]);
    fake.script("status", [Step::Hang(Duration::from_millis(1500))]);
    let app = app(&fake).await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let posts = fake.requests().into_iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 2, "the first submit timed out");
    // Which job serves depends on whether the timed-out request got as far as creating one upstream.
    let url = done["output"]["images"][0]["url"].as_str().expect("url");
    assert!(url.starts_with(fake.result_url("req-").trim_end_matches(".png")), "{url}");
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn duplicated_fal_callbacks_settle_the_task_exactly_once() {
    let fake = FakeFal::start().await;
    fake.polls(1000);
    let app = spawn_app_only_on("fal_only.toml", |settings| fake.configure_callbacks(settings)).await;
    let (account, key) = app.new_account(100).await;
    let task_id = app.running_seed_task(&key).await;

    // fal retries deliveries: the same signed callback twice at once, then once more after the end.
    let (first, second) = tokio::join!(
        fake.finish_and_call_back("req-1", Signing::Valid),
        fake.finish_and_call_back("req-1", Signing::Valid)
    );
    assert_eq!((first, second), (200, 200));
    let done = app.wait_terminal(&key, &task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"], json!([{"url": fake.result_url("req-1")}]), "{done}");
    assert_eq!(fake.finish_and_call_back("req-1", Signing::Valid).await, 200);
    assert_eq!(app.get_task(&key, &task_id).await, done, "a late duplicate changes nothing");

    app.assert_balance(&key, 88, 0).await;
    assert_eq!(app.ledger_kinds(account).await, ["grant", "hold", "capture"]);
    assert_ledger_consistent(app.pool()).await;
}
