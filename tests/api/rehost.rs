//! Result rehosting (`results.rehost`): a provider's result image is downloaded through the outbound
//! URL guard into the file store and served by the gateway, byte-identical; a download that fails
//! for now is retried on the next poll; an image the client could never get (too large, not an
//! allowed image type, refused by the guard) fails the task and costs nothing.

use std::time::Duration;

use aio_gateway::config::Settings;
use reqwest::header::CONTENT_TYPE;

use crate::fakes::kie::{self, FakeKie};
use crate::fakes::openai::{self, FakeOpenAi};
use crate::fakes::Step;
use crate::helpers::{assert_ledger_consistent, spawn_app_only_on, TestApp};

/// Rehosting on, with the outbound guard opened for the fake (http on 127.0.0.1) as a deployment
/// would list a private image host.
pub(crate) fn rehosting(settings: &mut Settings) {
    settings.results.rehost = true;
    settings.webhooks.allow_http = true;
    settings.webhooks.allowed_private_cidrs = vec!["127.0.0.0/8".parse().expect("cidr")];
}

/// Seedream 4.5 on the fake KIE only, jobs done at the first poll, then `configure`; driven (no loops).
pub(crate) async fn app(fake: &FakeKie, configure: impl FnOnce(&mut Settings)) -> TestApp {
    fake.polls(0);
    TestApp::builder()
        .catalog("kie_only.toml")
        .configure(|settings| {
            fake.configure(settings);
            configure(settings);
        })
        .driven()
        .spawn()
        .await
}

/// The task's one image URL must be the gateway's own, serving exactly the fake's image.
async fn assert_served_by_the_gateway(app: &TestApp, task: &serde_json::Value) {
    let url = task["output"]["images"][0]["url"].as_str().expect("an image URL");
    assert!(url.starts_with(&format!("{}/files/", app.address)) && url.contains(".png?exp="), "{url}");
    let response = app.client.get(url).send().await.expect("GET the image");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()), Some("image/png"));
    assert_eq!(response.bytes().await.expect("image bytes").as_ref(), kie::result_png().as_slice());
}

#[tokio::test]
async fn a_result_is_served_by_the_gateway_byte_identical_to_the_upstream_image() {
    let fake = FakeKie::start().await;
    let app = app(&fake, rehosting).await;
    let (account, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_served_by_the_gateway(&app, &done).await;
    assert!(!done.to_string().contains(fake.base_url()), "the upstream URL is not shown: {done}");
    assert_eq!(fake.downloads().len(), 1);
    app.assert_balance(&key, 88, 0).await;
    assert_eq!(app.ledger_kinds(account).await, ["grant", "hold", "capture"]);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_download_that_fails_for_now_is_retried_on_the_next_poll() {
    let fake = FakeKie::start().await;
    // A 503, then a download that outlasts results.timeout_secs, then the image.
    fake.script("result", [Step::Text(503, "busy"), Step::Hang(Duration::from_millis(1500))]);
    let app = app(&fake, |settings| {
        rehosting(settings);
        settings.results.timeout = Duration::from_secs(1);
    })
    .await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_served_by_the_gateway(&app, &done).await;
    assert_eq!(fake.downloads().len(), 3);
    assert!(fake.polls_received().len() >= 3, "each retry asked the provider again");
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

/// Runs the seed request, which must fail as undeliverable with `reason` in its message and cost
/// nothing.
async fn assert_undeliverable(app: &TestApp, reason: &str) {
    let (account, key) = app.new_account(100).await;
    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "upstream_failed", "{done}");
    let message = done["error"]["message"].as_str().expect("message");
    assert!(message.contains("could not be delivered") && message.contains(reason), "{message}");
    app.assert_balance(&key, 100, 0).await;
    assert_eq!(app.ledger_kinds(account).await, ["grant", "hold", "release"]);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn an_oversized_result_fails_the_task_and_costs_nothing() {
    let fake = FakeKie::start().await;
    let app = app(&fake, |settings| {
        rehosting(settings);
        settings.results.max_bytes = std::num::NonZeroU64::new(16).unwrap();
    })
    .await;
    assert_undeliverable(&app, "larger than 16 bytes").await;
    assert_eq!(fake.downloads().len(), 1, "a permanent refusal is not retried");
}

#[tokio::test]
async fn a_result_of_another_content_type_fails_the_task_and_costs_nothing() {
    let fake = FakeKie::start().await;
    fake.script("result", [Step::Text(200, "<html>sign in</html>")]);
    let app = app(&fake, rehosting).await;
    assert_undeliverable(&app, "`text/plain`, not an allowed image type").await;

    // An image type the operator did not allow is refused the same way.
    let fake = FakeKie::start().await;
    let app = crate::rehost::app(&fake, |settings| {
        rehosting(settings);
        settings.results.content_types = vec![aio_gateway::config::ImageType::Jpeg];
    })
    .await;
    assert_undeliverable(&app, "`image/png`, not an allowed image type").await;
}

#[tokio::test]
async fn a_result_url_the_outbound_guard_refuses_is_never_fetched() {
    let fake = FakeKie::start().await;
    // Rehosting with the default guard: http and loopback are refused.
    let app = app(&fake, |settings| settings.results.rehost = true).await;
    assert_undeliverable(&app, "must use https").await;
    assert!(fake.downloads().is_empty(), "the guard refused before any connection");
}

#[tokio::test]
async fn a_synchronous_providers_url_result_is_rehosted_within_the_submit_step() {
    let fake = FakeOpenAi::start().await;
    fake.answer_urls(true);
    // The first download fails for now; a synchronous job cannot be polled again, so the engine
    // retries the download itself.
    fake.script_results([Step::Text(503, "busy")]);
    let app = spawn_app_only_on("openai_only.toml", |settings| {
        fake.configure(settings);
        rehosting(settings);
    })
    .await;
    let (_, key) = app.new_account(100).await;

    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let url = done["output"]["images"][0]["url"].as_str().expect("an image URL");
    assert!(url.starts_with(&format!("{}/files/", app.address)), "{url}");
    let served = app.client.get(url).send().await.expect("GET the image").bytes().await.expect("bytes");
    assert_eq!(served.as_ref(), openai::image().as_slice());
    assert_eq!(fake.downloads().len(), 2);
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent(app.pool()).await;
}
