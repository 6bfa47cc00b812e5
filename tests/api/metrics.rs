//! Prometheus metrics: after a flow the counters have moved, with route patterns (never ids) and the
//! model, provider and outcome as labels; `server.metrics_listen` moves `/metrics` off the main port.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{assert_error, seed_request, spawn_app, spawn_app_with, TestApp};

async fn scrape(app: &TestApp, url: &str) -> String {
    let response = app.client.get(url).send().await.expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().expect("content-type").to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.expect("metrics text")
}

/// The value of the sample `name{labels}` (labels exactly as rendered), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Metrics are process-wide and the tests run in parallel: values are compared before and after,
/// and only ever checked to have grown by at least this test's share.
#[tokio::test]
async fn counters_move_after_a_flow() {
    let app = TestApp::builder().driven().spawn().await;
    let (_, key) = app.new_account(1000).await;
    let metrics_url = app.url("/metrics");
    let before = scrape(&app, &metrics_url).await;

    let ok = app.create_ok(&key, seed_request()).await;
    let failing = app.create_ok(&key, json!({"prompt": "a fox [simulate:fail]"})).await;
    for task in [&ok, &failing] {
        app.wait_terminal(&key, task["task_id"].as_str().expect("task_id")).await;
    }
    assert_error(app.get(&key, "/api/v1/tasks/task_nope").await, StatusCode::NOT_FOUND, "not_found").await;
    assert_error(app.get(&key, "/no/such/route/123").await, StatusCode::NOT_FOUND, "not_found").await;
    let after = scrape(&app, &metrics_url).await;

    let grew = |series: &str, by: f64| {
        let (b, a) = (sample(&before, series), sample(&after, series));
        assert!(a >= b + by, "{series}: {b} → {a}, expected +{by}\n{after}");
    };
    let model = "seedream/4.5-text-to-image";
    grew(r#"aio_http_requests_total{route="/api/v1/images/generations",method="POST",status="200"}"#, 2.0);
    grew(r#"aio_http_requests_total{route="/api/v1/tasks/{task_id}",method="GET",status="404"}"#, 1.0);
    grew(r#"aio_http_requests_total{route="unmatched",method="GET",status="404"}"#, 1.0);
    grew(r#"aio_http_request_duration_seconds_count{route="/api/v1/tasks/{task_id}",method="GET",status="200"}"#, 2.0);
    grew(&format!(r#"aio_tasks_created_total{{model="{model}",provider="simulated"}}"#), 2.0);
    grew(&format!(r#"aio_tasks_settled_total{{model="{model}",provider="simulated",outcome="succeeded"}}"#), 1.0);
    grew(&format!(r#"aio_tasks_settled_total{{model="{model}",provider="simulated",outcome="upstream_failed"}}"#), 1.0);
    grew(&format!(r#"aio_credits_held_total{{model="{model}"}}"#), 24.0);
    grew(&format!(r#"aio_credits_captured_total{{model="{model}"}}"#), 12.0);
    grew(&format!(r#"aio_credits_released_total{{model="{model}"}}"#), 12.0);
    grew(r#"aio_upstream_request_duration_seconds_count{provider="simulated",call="submit"}"#, 2.0);
    grew(r#"aio_upstream_request_duration_seconds_count{provider="simulated",call="poll"}"#, 2.0);
    for gauge in [
        r#"aio_tasks{status="pending"}"#,
        r#"aio_tasks{status="running"}"#,
        r#"aio_db_pool_connections{state="in_use"}"#,
    ] {
        assert!(after.lines().any(|line| line.starts_with(gauge)), "{gauge} missing:\n{after}");
    }
    // No task id or key ever becomes a label.
    assert!(!after.contains("task_0") && !after.contains("task_nope") && !after.contains(&key), "{after}");
}

#[tokio::test]
async fn a_rejected_submit_counts_as_a_permanent_upstream_error() {
    let app = spawn_app().await;
    let (_, key) = app.new_account(1000).await;
    let series = r#"aio_upstream_errors_total{provider="simulated",call="submit",kind="permanent"}"#;
    let before = sample(&scrape(&app, &app.url("/metrics")).await, series);
    let response = app.create(&key, json!({"prompt": "no [simulate:reject]"})).await;
    assert_error(response, StatusCode::BAD_GATEWAY, "upstream_error").await;
    let after = sample(&scrape(&app, &app.url("/metrics")).await, series);
    assert!(after >= before + 1.0, "{series}: {before} → {after}");
}

#[tokio::test]
async fn metrics_listen_serves_metrics_apart_from_the_api() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let port = probe.local_addr().expect("address").port();
    drop(probe);
    let app = spawn_app_with(|settings| settings.server.metrics_listen = Some(([127, 0, 0, 1], port).into())).await;
    assert_error(app.client.get(app.url("/metrics")).send().await.expect("GET"), StatusCode::NOT_FOUND, "not_found")
        .await;
    let text = scrape(&app, &format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(text.contains("aio_db_pool_connections"), "{text}");
}
