//! The error envelope and the HTTP edges (SPEC §3): unknown routes, wrong methods, bodies that are
//! not JSON or too large, and the request id on every response.

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, bearer, spawn_app, TestApp};

async fn send(app: &TestApp, method: Method, path: &str) -> reqwest::Response {
    app.client.request(method, app.url(path)).send().await.expect("request")
}

#[tokio::test]
async fn unknown_routes_are_404_with_the_envelope() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/api/v1/nothing-here"),
        (Method::GET, "/console/nothing-here"),
        (Method::POST, "/api/v2/images/generations"),
        (Method::GET, "/files/..%2F..%2Fetc%2Fpasswd"),
    ] {
        let response = send(&app, method.clone(), path).await;
        assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    }
}

#[tokio::test]
async fn wrong_methods_are_405_with_the_envelope() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::DELETE, "/api/v1/models"),
        (Method::PUT, "/api/v1/models/seedream-4-5"),
        (Method::GET, "/api/v1/images/generations"),
        (Method::POST, "/api/v1/tasks"),
        (Method::POST, "/healthz"),
    ] {
        let response = send(&app, method.clone(), path).await;
        assert_error(response, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    }
}

#[tokio::test]
async fn bodies_that_are_not_json_are_415_and_hold_nothing() {
    let app = spawn_app().await;
    let (_, key) = app.new_account(100).await;
    let body = json!({"prompt": "a cat"}).to_string();
    for content_type in
        [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data"), None]
    {
        let response = app.create_raw(&key, content_type, body.clone()).await;
        assert_error(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    }
    // JSON with parameters or a +json type is JSON.
    let response = app.create_raw(&key, Some("application/json; charset=utf-8"), body).await;
    assert_eq!(response.status(), StatusCode::OK, "{}", response.text().await.unwrap_or_default());
    assert_eq!(app.count_tasks().await, 1, "only the JSON request created a task");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_hold_nothing() {
    let app = spawn_app().await;
    let (_, key) = app.new_account(100).await;
    let body = json!({"prompt": "a".repeat(2 * 1024 * 1024)}).to_string();
    let response = app.create_raw(&key, Some("application/json"), body).await;
    let (_, message) = assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert!(message.contains("1048576"), "the message names the limit: {message:?}");

    // Just under the limit is read (and then refused for its too-long prompt, not its size).
    let body = json!({"prompt": "a".repeat(1024 * 1024 - 64)}).to_string();
    let response = app.create_raw(&key, Some("application/json"), body).await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;

    assert_eq!(app.count_tasks().await, 0);
    let credits = app.credits(&key).await;
    assert_eq!((credits["balance"].as_i64(), credits["held"].as_i64()), (Some(100), Some(0)), "{credits}");
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_the_clients() {
    let app = spawn_app().await;
    let (_, key) = app.new_account(100).await;

    // Generated ids on success and on errors.
    let mut seen = Vec::new();
    for (path, authorized) in
        [("/healthz", false), ("/api/v1/models", false), ("/api/v1/billing/credits", true), ("/nope", false)]
    {
        let mut request = app.client.get(app.url(path));
        if authorized {
            request = request.header(AUTHORIZATION, bearer(&key));
        }
        let response = request.send().await.expect("GET");
        let id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let id = id.unwrap_or_else(|| panic!("{path}: no x-request-id"));
        assert!(!id.is_empty(), "{path}: empty x-request-id");
        seen.push(id);
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "request ids are unique: {seen:?}");

    // A client's id is echoed on success and in the error envelope.
    let ok = app.client.get(app.url("/healthz")).header("x-request-id", "my-id-123").send().await.expect("GET");
    assert_eq!(ok.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("my-id-123"));
    let errors = [
        app.client.get(app.url("/api/v1/tasks")).header("x-request-id", "my-id-123").send().await,
        app.client.get(app.url("/nope")).header("x-request-id", "my-id-123").send().await,
        app.client
            .post(app.url("/api/v1/images/generations"))
            .header("x-request-id", "my-id-123")
            .header(AUTHORIZATION, bearer(&key))
            .header(CONTENT_TYPE, "application/json")
            .body("{")
            .send()
            .await,
    ];
    for response in errors {
        let response = response.expect("request");
        assert_eq!(response.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("my-id-123"));
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["error"]["request_id"], "my-id-123", "{body}");
    }
}

/// Found by schemathesis: a NUL character reached PostgreSQL (which cannot store it) and became a 500.
#[tokio::test]
async fn nul_characters_are_a_400_wherever_they_come_in() {
    let app = crate::helpers::spawn_dashboard_app_with(|_| {}).await;
    let (account, key) = app.new_account(100).await;
    let admin = crate::helpers::session_token(account, aio_gateway::jwt::Role::Admin);
    for path in ["/api/v1/tasks?cursor=task_%29%1B%C2%BB%00%C3%BEN", "/api/v1/tasks/task_%00x"] {
        let response = app.get(&key, path).await;
        let status = response.status();
        assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND, "{path}: {status}");
        assert!(status.is_client_error());
    }
    let response = app.create(&key, json!({"prompt": "a fox \u{0}"})).await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    let response = app.get(&admin, "/api/v1/usage?model=x%00y").await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    let response = app
        .with_bearer(reqwest::Method::POST, "/api/v1/admin/accounts", &admin)
        .json(&json!({"name": "a\u{0}b"}))
        .send()
        .await
        .expect("POST");
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(app.count_tasks().await, 0);
}
