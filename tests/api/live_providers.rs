//! The gateway against the providers as they really answer (issue 14): demo mode and the simulated
//! provider never billing beside a real one, the serving route on every task, and the failure
//! semantics the providers' own documents call for — KIE's "recordInfo is null", safety flags,
//! accounts that cannot pay, models that are not there, fal's request errors, and answers that are
//! HTML, cut off, or an error under 200.

use std::collections::BTreeSet;
use std::time::Duration;

use aio_gateway::catalog;
use serde_json::{json, Value};

use crate::fakes::fal::{self, FakeFal};
use crate::fakes::kie::{self, FakeKie};
use crate::fakes::openai::{self, FakeOpenAi};
use crate::fakes::replicate::{self, FakeReplicate};
use crate::fakes::wavespeed::{self, FakeWaveSpeed};
use crate::fakes::Step;
use crate::helpers::{assert_ledger_consistent, models_path, seed_request, TestApp};

/// Runs `body` to its end on `app`; the final task object.
async fn run(app: &TestApp, key: &str, body: Value) -> Value {
    let response = app.create(key, body).await;
    let status = response.status();
    let task: Value = response.json().await.expect("JSON");
    assert!(status.is_success(), "never a 5xx for what the provider did: {status} {task}");
    app.wait_terminal(key, task["task_id"].as_str().expect("task_id")).await
}

/// The value of the sample `name{labels}` in a Prometheus scrape, 0 when absent.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.client.get(app.url("/metrics")).send().await.expect("GET /metrics").text().await.expect("text");
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

fn assert_released(task: &Value, code: &str) {
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["code"], code, "{task}");
    assert_eq!((&task["credits"]["charged"], &task["credits"]["state"]), (&json!(0), &json!("refunded")), "{task}");
    assert!(task["output"].is_null(), "nothing delivered: {task}");
}

#[tokio::test]
async fn with_no_provider_key_every_model_is_offered_as_simulated() {
    let app = TestApp::builder().driven().spawn().await;
    let models =
        app.client.get(app.url("/api/v1/models")).send().await.expect("GET").json::<Value>().await.expect("JSON");
    assert_eq!(models["mode"], "demo", "{models}");
    let data = models["data"].as_array().expect("data");
    assert_eq!(data.len(), 11, "the whole endpoint on a fresh machine");
    for model in data {
        assert_eq!(
            model["routes"],
            json!([{"provider_label": "Simulated", "simulated": true, "backend_node": "test-gateway"}]),
            "{model}"
        );
    }
    let summary = &models["endpoint_summary"];
    assert_eq!(summary["webhook_coverage"], "5/11");
    assert_eq!(summary["credit_range"], json!({"min": 4, "max": 25}));
    assert_eq!(summary["lowest_cost_model"]["id"], "cogview-4");

    // A model no real route would serve here runs, labelled as simulated on the task.
    let (_, key) = app.new_account(100).await;
    let done = run(&app, &key, json!({"model": "cogview-4", "prompt": "a poster"})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["provider"], json!({"label": "Simulated", "simulated": true}));
}

#[tokio::test]
async fn with_kie_configured_and_down_the_seed_request_never_succeeds_with_a_simulated_image() {
    // KIE's key is set but nothing listens at its address.
    let app = TestApp::builder()
        .configure(|settings| {
            let kie = settings.providers.get_mut("kie").expect("kie");
            kie.api_key = Some(kie::KEY.into());
            kie.timeout = Duration::from_millis(300);
            settings.tasks.deadline = Duration::from_secs(2);
        })
        .spawn()
        .await;
    let models =
        app.client.get(app.url("/api/v1/models")).send().await.expect("GET").json::<Value>().await.expect("JSON");
    assert_eq!(models["mode"], "live");
    let ids: BTreeSet<&str> =
        models["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, BTreeSet::from(["seedream-4", "seedream-4-5"]), "only what KIE serves");
    assert!(!models.to_string().contains("\"simulated\":true"), "{models}");

    let (account, key) = app.new_account(100).await;
    let done = run(&app, &key, seed_request()).await;
    assert_released(&done, "timeout");
    assert_eq!(done["provider"], json!({"label": "KIE", "simulated": false}));
    app.assert_balance(&key, 100, 0).await;
    assert_eq!(app.ledger_kinds(account).await, ["grant", "hold", "release"]);
    let (simulated_jobs,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM simulated_jobs").fetch_one(app.pool()).await.expect("count");
    assert_eq!(simulated_jobs, 0, "the simulated provider was never asked");
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn kie_record_null_right_after_creation_is_still_running_within_the_grace_period() {
    let fake = FakeKie::start().await;
    fake.polls(1).script("poll", [kie::record_null(), kie::record_null()]);
    let app = TestApp::builder().configure(|s| fake.configure(s)).catalog("kie_only.toml").driven().spawn().await;
    let (_, key) = app.new_account(100).await;
    let done = app.run_seed(&key).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.polls_received().len(), 4, "two null records, one running, then success");
    app.assert_balance(&key, 88, 0).await;

    // After the grace period the same answer means the job is lost: released, not retried forever.
    let fake = FakeKie::start().await;
    fake.script("poll", [kie::record_null()]);
    let app = TestApp::builder()
        .configure(|settings| {
            fake.configure(settings);
            settings.providers.get_mut("kie").expect("kie").record_grace = Duration::ZERO;
        })
        .catalog("kie_only.toml")
        .driven()
        .spawn()
        .await;
    let (_, key) = app.new_account(100).await;
    let done = app.run_seed(&key).await;
    assert_released(&done, "upstream_failed");
    assert_eq!(done["error"]["message"], "The provider lost the job.");
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_safety_flagged_image_fails_as_content_policy_and_is_neither_delivered_nor_charged() {
    let fal = FakeFal::start().await;
    fal.polls(0).outcome(fal::Outcome::Flagged);
    let app = TestApp::builder().configure(|s| fal.configure(s)).driven().spawn().await;
    let (account, key) = app.new_account(100).await;
    let done = run(&app, &key, json!({"model": "flux-dev", "prompt": "a beach"})).await;
    assert_released(&done, "content_policy");
    assert_eq!(app.ledger_kinds(account).await, ["grant", "hold", "release"]);
    assert!(!done.to_string().contains("fal.media"), "no image URL reaches the client: {done}");

    let wavespeed = FakeWaveSpeed::start().await;
    wavespeed.polls(0).outcome(wavespeed::Outcome::Flagged);
    let app = TestApp::builder().configure(|s| wavespeed.configure(s)).driven().spawn().await;
    let (_, key) = app.new_account(100).await;
    let done = run(&app, &key, json!({"model": "cogview-4", "prompt": "a poster"})).await;
    assert_released(&done, "content_policy");
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn an_account_that_cannot_pay_takes_the_route_out_and_the_task_fails_over() {
    // Seedream 4.0: KIE first, WaveSpeed as the fallback. KIE says our credits ran out (402).
    let (kie_fake, wavespeed) = (FakeKie::start().await, FakeWaveSpeed::start().await);
    kie_fake.script("create", [kie::error_under_200(402, "Insufficient credits")]);
    wavespeed.polls(0);
    let app = TestApp::builder()
        .configure(|settings| {
            kie_fake.configure(settings);
            wavespeed.configure(settings);
        })
        .driven()
        .spawn()
        .await;
    let series = "aio_upstream_account_problems_total{provider=\"kie\",status=\"402\"}";
    let before = metric(&app, series).await;
    let (_, key) = app.new_account(100).await;
    let done = run(&app, &key, json!({"model": "seedream-4", "prompt": "a lake"})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["provider"], json!({"label": "WaveSpeed", "simulated": false}));
    assert!(metric(&app, series).await >= before + 1.0, "counted");

    // The route rests: the next task goes straight to WaveSpeed, KIE is not asked again.
    let done = run(&app, &key, json!({"model": "seedream-4", "prompt": "a lake"})).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(kie_fake.creates().len(), 1);
    app.assert_balance(&key, 100 - 2 * 10, 0).await;
}

#[tokio::test]
async fn openai_insufficient_quota_ends_the_task_at_once_instead_of_retrying_to_the_deadline() {
    let fake = FakeOpenAi::start().await;
    fake.script([openai::insufficient_quota()]);
    let app = TestApp::builder().configure(|s| fake.configure(s)).driven().spawn().await;
    let (_, key) = app.new_account(100).await;
    let done = run(&app, &key, json!({"model": "gpt-image-2-6-sunburst", "prompt": "a fox"})).await;
    assert_released(&done, "upstream_failed");
    assert_eq!(done["error"]["message"], "The provider is unavailable.");
    assert!(!done.to_string().contains("quota"), "the provider's billing words stay in the log: {done}");
    assert_eq!(fake.requests().len(), 1, "asked once, not retried");
    app.assert_balance(&key, 100, 0).await;
}

#[tokio::test]
async fn a_model_the_provider_does_not_have_opens_the_route_breaker() {
    // The catalog's old, wrong CogView-4 path.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("models.toml");
    let text = std::fs::read_to_string(models_path()).expect("read");
    std::fs::write(&path, text.replace("\"z-ai/cogview-4\"", "\"zhipu/cogview-4\"")).expect("write");
    let fake = FakeWaveSpeed::start().await;
    let app = TestApp::builder()
        .configure(|settings| {
            fake.configure(settings);
            settings.catalog.models_path = path.clone();
        })
        .driven()
        .spawn()
        .await;
    let series = "aio_upstream_account_problems_total{provider=\"wavespeed\",status=\"404\"}";
    let before = metric(&app, series).await;
    let (_, key) = app.new_account(100).await;
    for _ in 0..2 {
        let done = run(&app, &key, json!({"model": "cogview-4", "prompt": "a poster"})).await;
        assert_released(&done, "upstream_failed");
    }
    assert_eq!(fake.submits().len(), 1, "the breaker is open: the second task does not reach WaveSpeed");
    assert!(metric(&app, series).await >= before + 1.0);
    app.assert_balance(&key, 100, 0).await;
}

#[tokio::test]
async fn a_fal_request_error_is_read_from_x_fal_error_type_and_releases_the_hold() {
    let fake = FakeFal::start().await;
    fake.polls(0).outcome(fal::Outcome::RequestError(504, "request_timeout"));
    let app = TestApp::builder().configure(|s| fake.configure(s)).driven().spawn().await;
    let (_, key) = app.new_account(100).await;
    let done = run(&app, &key, json!({"model": "qwen-image", "prompt": "a sign"})).await;
    assert_released(&done, "upstream_failed");
    app.assert_balance(&key, 100, 0).await;

    // A submit to an app fal does not have is the route's problem, not a lost job.
    let fake = FakeFal::start().await;
    fake.script("submit", [Step::Json(404, json!({"detail": "Not found"}))]);
    let app = TestApp::builder().configure(|s| fake.configure(s)).driven().spawn().await;
    let (_, key) = app.new_account(100).await;
    let done = run(&app, &key, json!({"model": "qwen-image", "prompt": "a sign"})).await;
    assert_released(&done, "upstream_failed");
    assert_eq!(done["error"]["message"], "The provider is unavailable.");
}

#[tokio::test]
async fn html_cut_off_json_and_errors_under_200_are_retried_never_a_5xx_never_a_charge_without_an_image() {
    let fake = FakeKie::start().await;
    fake.polls(0)
        .script(
            "create",
            [Step::Text(502, "<html><body>Bad gateway</body></html>"), kie::error_under_200(500, "server error")],
        )
        .script(
            "poll",
            [
                Step::Text(200, "{\"code\":200,\"msg\":\"success\",\"data\":{\"taskId\""),
                Step::Text(200, "<html>oops</html>"),
            ],
        );
    let app = TestApp::builder().configure(|s| fake.configure(s)).catalog("kie_only.toml").driven().spawn().await;
    let (account, key) = app.new_account(100).await;
    let done = run(&app, &key, seed_request()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(fake.creates().len(), 3, "two bad answers, then accepted");
    assert_eq!(app.ledger_kinds(account).await, ["grant", "hold", "capture"], "charged once, for the image");

    // Bad answers until the deadline: failed, released.
    let fake = FakeKie::start().await;
    fake.script("poll", (0..1000).map(|_| Step::Text(200, "<html>maintenance</html>")));
    let app = TestApp::builder()
        .configure(|settings| {
            fake.configure(settings);
            settings.tasks.deadline = Duration::from_secs(1);
        })
        .catalog("kie_only.toml")
        .spawn()
        .await;
    let (_, key) = app.new_account(100).await;
    let done = run(&app, &key, seed_request()).await;
    assert_released(&done, "timeout");
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}

/// Every route of the shipped catalog names a model its provider's fake serves — and each fake knows
/// only what the real provider serves (its list names the source) — so a wrong path fails here.
#[test]
fn every_shipped_route_names_a_model_the_provider_serves() {
    let models = catalog::read(&models_path()).expect("the shipped catalog");
    let mut routes = 0;
    for route in models.iter().flat_map(|m| &m.sub_models).flat_map(|s| &s.routes) {
        let model = route.upstream_model.as_str();
        let known = match route.provider.as_str() {
            "kie" => kie::MODELS.contains(&model),
            "wavespeed" => wavespeed::MODELS.contains(&model),
            "fal" => fal::MODELS.contains(&model),
            "replicate" => replicate::MODELS.contains(&model),
            "openai" => openai::MODELS.contains(&model),
            other => panic!("a route to `{other}`: the shipped catalog routes to real providers only"),
        };
        assert!(known, "`{}` does not serve `{model}`", route.provider);
        routes += 1;
    }
    assert_eq!(routes, 16);
    let text = std::fs::read_to_string(models_path()).expect("read");
    assert_eq!(text.matches("\nupstream_model = ").count(), text.matches("# Evidence: ").count(), "evidence per route");
}

/// The same end to end: every text-to-image sub-model of the shipped catalog, on the fakes of all
/// five providers, succeeds.
#[tokio::test]
async fn every_shipped_text_to_image_route_runs_on_the_fakes() {
    let (kie_fake, wavespeed_fake, fal_fake, replicate_fake, openai_fake) = (
        FakeKie::start().await,
        FakeWaveSpeed::start().await,
        FakeFal::start().await,
        FakeReplicate::start().await,
        FakeOpenAi::start().await,
    );
    kie_fake.polls(0);
    wavespeed_fake.polls(0);
    fal_fake.polls(0);
    replicate_fake.polls(0);
    let app = TestApp::builder()
        .configure(|settings| {
            kie_fake.configure(settings);
            wavespeed_fake.configure(settings);
            fal_fake.configure(settings);
            replicate_fake.configure(settings);
            openai_fake.configure(settings);
        })
        .driven()
        .spawn()
        .await;
    let (_, key) = app.new_account(10_000).await;
    let models = catalog::read(&models_path()).expect("the shipped catalog");
    let mut ran = 0;
    for sub in models.iter().flat_map(|m| &m.sub_models).filter(|s| s.min_image_urls == 0) {
        let done = run(&app, &key, json!({"model": sub.id, "prompt": "a lighthouse"})).await;
        assert_eq!(done["status"], "succeeded", "{}: {done}", sub.id);
        assert_eq!(done["provider"]["simulated"], false);
        ran += 1;
    }
    assert_eq!(ran, 11);
}
