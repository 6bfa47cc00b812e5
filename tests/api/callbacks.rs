//! Inbound provider callbacks (`POST /api/v1/callbacks/{provider}/{token}`), against the fake KIE:
//! a callback only makes the gateway look (it confirms with recordInfo before settling), and no
//! forged, unknown, duplicate, late or early callback settles a task twice or wrongly.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::fakes::kie::{self, FakeKie, Outcome, Signing};
use crate::helpers::{assert_ledger_consistent, seed_request, spawn_app_only_on, TestApp};

const HMAC_KEY: &str = "kie-webhook-hmac-key";

async fn app(fake: &FakeKie, hmac_key: Option<&str>) -> TestApp {
    spawn_app_only_on("kie_only.toml", |settings| fake.configure_callbacks(settings, hmac_key)).await
}

/// Waits (bounded; not a timing assertion) until the fake has answered `count` recordInfo polls.
async fn wait_for_polls(fake: &FakeKie, count: usize) {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while fake.polls_received().len() < count {
        assert!(tokio::time::Instant::now() < give_up, "the gateway never polled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_signed_callback_is_confirmed_by_a_poll_and_settles_once() {
    let fake = FakeKie::start().await;
    fake.polls(1000);
    let app = app(&fake, Some(HMAC_KEY)).await;
    let (_, key) = app.new_account(100).await;
    let task_id = app.running_seed_task(&key).await;

    // The callback URL: this gateway's, per task, with a token of which only the hash is stored.
    let url = fake.callback_url("task_kie_1").expect("createTask carried callBackUrl");
    let prefix = format!("{}/api/v1/callbacks/kie/", app.address);
    let token = url.strip_prefix(&prefix).unwrap_or_else(|| panic!("{url} is not under {prefix}"));
    assert!(token.len() >= 32 && !token.contains(&task_id), "{token}");
    let (hash,): (Vec<u8>,) = sqlx::query_as("SELECT callback_token_hash FROM tasks WHERE id = $1")
        .bind(&task_id)
        .fetch_one(app.pool())
        .await
        .expect("the task");
    assert_eq!(hash, Sha256::digest(token.as_bytes()).to_vec());
    assert!(fake.polls_received().is_empty(), "with callbacks on, polling waits (60 s in this test)");

    assert_eq!(fake.finish_and_call_back("task_kie_1", Signing::With(HMAC_KEY)).await, 200);
    let done = app.wait_terminal(&key, &task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"][0]["url"], fake.result_url("task_kie_1"));
    assert_eq!(fake.polls_received().len(), 1, "one poll confirmed the callback");

    // Duplicates and a late failure (correctly signed: KIE does not sign the body) change nothing.
    assert_eq!(fake.call_back("task_kie_1", Signing::With(HMAC_KEY)).await, 200);
    let late_failure = json!({"code": 200, "msg": "success",
        "data": kie::record("task_kie_1", "fail", None, Some(("500", "late failure")))});
    assert_eq!(fake.call_back_with("task_kie_1", late_failure, Signing::With(HMAC_KEY)).await, 200);
    assert_eq!(app.get_task(&key, &task_id).await, done);
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn forged_and_unknown_callbacks_are_refused() {
    let fake = FakeKie::start().await;
    fake.polls(1000);
    let app = app(&fake, Some(HMAC_KEY)).await;
    let (_, key) = app.new_account(100).await;
    let task_id = app.running_seed_task(&key).await;
    fake.finish("task_kie_1");

    assert_eq!(fake.call_back("task_kie_1", Signing::With("not-the-key")).await, 401);
    assert_eq!(fake.call_back("task_kie_1", Signing::Unsigned).await, 401);
    let url = fake.callback_url("task_kie_1").expect("callBackUrl");
    let token = url.rsplit('/').next().expect("token");
    for path in ["/api/v1/callbacks/kie/not-a-token".to_string(), format!("/api/v1/callbacks/simulated/{token}")] {
        let response = app.client.post(app.url(&path)).json(&json!({})).send().await.expect("POST");
        assert_eq!(response.status(), 404, "{path}");
    }
    assert!(fake.polls_received().is_empty(), "refused callbacks trigger nothing");
    assert_eq!(app.get_task(&key, &task_id).await["status"], "running");
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn an_unsigned_forged_success_is_checked_with_the_provider_and_ignored() {
    let fake = FakeKie::start().await;
    fake.polls(1000);
    let app = app(&fake, None).await;
    let (_, key) = app.new_account(100).await;
    let task_id = app.running_seed_task(&key).await;

    let forged_result = json!({"resultUrls": ["https://evil.example/x.png"]}).to_string();
    let forged: Value =
        json!({"code": 200, "msg": "success", "data": kie::record("task_kie_1", "success", Some(forged_result), None)});
    assert_eq!(fake.call_back_with("task_kie_1", forged, Signing::Unsigned).await, 200);
    wait_for_polls(&fake, 1).await;
    // KIE says the job is still generating: the task keeps running.
    assert_eq!(app.get_task(&key, &task_id).await["status"], "running");

    // Now the job really ends, and KIE calls back.
    assert_eq!(fake.finish_and_call_back("task_kie_1", Signing::Unsigned).await, 200);
    let done = app.wait_terminal(&key, &task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"]["images"][0]["url"], fake.result_url("task_kie_1"), "never the forged URL");
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_callback_before_the_submit_answer_is_not_lost() {
    let fake = FakeKie::start().await;
    fake.call_back_before_answering(Signing::With(HMAC_KEY));
    let app = app(&fake, Some(HMAC_KEY)).await;
    let (_, key) = app.new_account(100).await;

    let task = app.create_ok(&key, seed_request()).await;
    let done = app.wait_terminal(&key, task["task_id"].as_str().expect("task_id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.polls_received().len(), 1, "polled at once after the submit, not after 60 s");
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_trusted_callback_payload_settles_without_a_poll() {
    let fake = FakeKie::start().await;
    fake.polls(1000).outcome(Outcome::Fail { code: "500", message: "the model crashed" });
    let app = spawn_app_only_on("kie_only.toml", |settings| {
        fake.configure_callbacks(settings, Some(HMAC_KEY));
        settings.providers.get_mut("kie").expect("kie").trust_callback_payload = true;
    })
    .await;
    let (_, key) = app.new_account(100).await;
    let task_id = app.running_seed_task(&key).await;

    assert_eq!(fake.finish_and_call_back("task_kie_1", Signing::With(HMAC_KEY)).await, 200);
    let done = app.wait_terminal(&key, &task_id).await;
    assert_eq!(done["error"]["code"], "upstream_failed", "{done}");
    assert!(done["error"]["message"].as_str().unwrap_or_default().contains("the model crashed"), "{done}");
    assert!(fake.polls_received().is_empty());
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}
