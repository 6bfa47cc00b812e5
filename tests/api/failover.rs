//! Routing and failover, on a staging catalog (`catalog.allow_simulated_fallback`): Seedream 4.5 routes
//! to KIE (priority 0) and falls back to the simulated provider (priority 10). A KIE that answers 503
//! is failed over; after `breaker_failures` failures its circuit opens and it is skipped; after the
//! cool-down one trial closes it again.

use std::time::Duration;

use crate::fakes::kie::{self, FakeKie};
use crate::helpers::{assert_ledger_consistent, catalog, seed_request, spawn_app_with, TestApp};

/// Runs the seed request to the end; returns the provider that served it and its first image URL.
async fn served_by(app: &TestApp, key: &str) -> (String, String) {
    let task = app.create_ok(key, seed_request()).await;
    let task_id = task["task_id"].as_str().expect("task_id");
    let done = app.wait_terminal(key, task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    for internal in ["upstream_model", "upstream_id"] {
        assert!(done.get(internal).is_none(), "clients see the route's label only: {done}");
    }
    let (provider,): (String,) = sqlx::query_as("SELECT provider FROM tasks WHERE id = $1")
        .bind(task_id)
        .fetch_one(app.pool())
        .await
        .expect("task");
    let simulated = provider == "simulated";
    let label = if simulated { "Simulated" } else { "KIE" };
    assert_eq!(done["provider"], serde_json::json!({"label": label, "simulated": simulated}), "{done}");
    (provider, done["output"]["images"][0]["url"].as_str().expect("url").to_owned())
}

#[tokio::test]
async fn a_failing_route_is_failed_over_and_its_circuit_opens_and_closes() {
    let fake = FakeKie::start().await;
    fake.polls(0);
    fake.script("create", [kie::error_with_status(503, "busy"), kie::error_under_200(500, "server error")]);
    let app = spawn_app_with(|settings| {
        fake.configure(settings);
        settings.catalog.models_path = catalog("kie_with_simulated_fallback.toml");
        settings.catalog.allow_simulated_fallback = true;
        settings.tasks.breaker_failures = 2;
        settings.tasks.breaker_cooldown = Duration::from_secs(1);
    })
    .await;
    let (_, key) = app.new_account(100).await;

    // Two failures: each task fails over to the simulated route; the second opens KIE's circuit.
    for expected_creates in [1, 2] {
        let (provider, url) = served_by(&app, &key).await;
        assert_eq!(provider, "simulated");
        assert!(url.starts_with(&app.address), "{url}");
        assert_eq!(fake.creates().len(), expected_creates);
    }
    // Open: KIE is not even asked.
    assert_eq!(served_by(&app, &key).await.0, "simulated");
    assert_eq!(fake.creates().len(), 2);

    // After the cool-down, one trial; KIE is healthy again, so the circuit closes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (provider, url) = served_by(&app, &key).await;
    assert_eq!((provider.as_str(), url.as_str()), ("kie", fake.result_url("task_kie_1").as_str()));
    assert_eq!(served_by(&app, &key).await.0, "kie");
    assert_eq!(fake.creates().len(), 4);

    app.assert_balance(&key, 100 - 5 * 12, 0).await;
    assert_ledger_consistent(app.pool()).await;
}
