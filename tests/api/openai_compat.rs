//! The OpenAI-compatible routes (`/v1/images/…`, `/v1/models`) in detail: billing exactly as the native
//! create (held, charged per successful image, released otherwise), the wait and what happens when it
//! runs out, `Prefer: respond-async`, the catalog's size mapping, uploads for edits, and OpenAI-shaped
//! errors. The official SDKs run against a gateway in `.ci/openai` (tests/openai/).

use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_ledger_consistent_on, bearer, TestApp};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";

async fn app(sync_timeout: Duration) -> TestApp {
    TestApp::builder().configure(|settings| settings.openai.sync_timeout = sync_timeout).spawn().await
}

async fn generate(app: &TestApp, key: &str, body: Value) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let response = app
        .client
        .post(app.url("/v1/images/generations"))
        .header(AUTHORIZATION, bearer(key))
        .json(&body)
        .send()
        .await
        .expect("POST /v1/images/generations");
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.json().await.expect("JSON"))
}

/// An OpenAI error: its status, `type` and `code`; returns the error object.
fn assert_openai_error(
    answer: &(StatusCode, reqwest::header::HeaderMap, Value),
    status: StatusCode,
    kind: &str,
    code: &str,
) -> Value {
    let (got, _, body) = answer;
    assert_eq!(*got, status, "{body}");
    let error = &body["error"];
    assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some(kind), Some(code)), "{body}");
    assert!(error["message"].is_string() && error.get("param").is_some(), "{body}");
    error.clone()
}

#[tokio::test]
async fn generations_hold_and_charge_per_image_like_a_native_create() {
    let app = app(Duration::from_secs(30)).await;
    let (_, key) = app.new_account(100).await;
    let (status, _, body) =
        generate(&app, &key, json!({"model": "seedream-4-5", "prompt": "Two foxes", "n": 2, "size": "1792x1024", "quality": "hd", "user": "u1"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{body}");
    for image in data {
        let url = image["url"].as_str().unwrap();
        assert!(url.starts_with(&format!("{}/files/", app.address)), "{url}");
    }
    assert!(body["created"].as_i64().unwrap() > 0);
    app.assert_balance(&key, 76, 0).await;
    let tasks = app.get_json(&key, "/api/v1/tasks").await;
    for task in tasks["data"].as_array().unwrap() {
        assert_eq!(task["input"]["aspect_ratio"], "16:9", "size through the catalog's [models.openai] table");
        assert_eq!(task["input"]["quality"], "high");
        assert_eq!(task["credits"]["state"], "charged");
    }

    // b64_json: the image itself.
    let (status, _, body) =
        generate(&app, &key, json!({"model": "seedream-4-5", "prompt": "A fox", "response_format": "b64_json"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let png = base64::engine::general_purpose::STANDARD.decode(body["data"][0]["b64_json"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(PNG));
    app.assert_balance(&key, 64, 0).await;
    assert_ledger_consistent_on(&app.db).await;
}

#[tokio::test]
async fn a_model_that_makes_several_images_gets_n_as_one_task() {
    let app = app(Duration::from_secs(30)).await;
    let (_, key) = app.new_account(100).await;
    // Seedream 4.0 takes up to 4 images per request: one task of n = 3, charged per image delivered.
    let body = json!({"model": "seedream-4", "prompt": "Three foxes [simulate:images=2]", "n": 3});
    let (status, _, body) = generate(&app, &key, body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{body}");
    let tasks = app.get_json(&key, "/api/v1/tasks").await;
    let tasks = tasks["data"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!((tasks[0]["input"]["n"].as_i64(), tasks[0]["credits"]["charged"].as_i64()), (Some(3), Some(20)));
    app.assert_balance(&key, 80, 0).await;
    assert_ledger_consistent_on(&app.db).await;
}

#[tokio::test]
async fn a_failed_image_is_not_charged_and_answers_a_server_error() {
    let app = app(Duration::from_secs(30)).await;
    let (_, key) = app.new_account(100).await;
    let answer = generate(&app, &key, json!({"prompt": "A fox [simulate:fail]"})).await;
    assert_openai_error(&answer, StatusCode::BAD_GATEWAY, "server_error", "upstream_failed");
    let answer = generate(&app, &key, json!({"prompt": "A fox [simulate:reject]"})).await;
    let error = assert_openai_error(&answer, StatusCode::BAD_REQUEST, "invalid_request_error", "upstream_rejected");
    assert_eq!(answer.1["x-should-retry"], "false", "{error}");
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent_on(&app.db).await;
}

#[tokio::test]
async fn when_the_wait_runs_out_the_error_names_the_task_which_goes_on_and_is_charged_only_if_it_succeeds() {
    let app = app(Duration::from_secs(1)).await;
    let (_, key) = app.new_account(100).await;
    let answer = generate(&app, &key, json!({"prompt": "Slow [simulate:delay=3000]"})).await;
    let error = assert_openai_error(&answer, StatusCode::GATEWAY_TIMEOUT, "timeout", "task_pending");
    assert_eq!(answer.1["x-should-retry"], "false", "a retry would create another task");
    let task_id = error["param"].as_str().unwrap().to_owned();
    assert!(error["message"].as_str().unwrap().contains(&task_id), "{error}");
    app.assert_balance(&key, 88, 12).await;
    assert_eq!(app.wait_terminal(&key, &task_id).await["status"], "succeeded");
    app.assert_balance(&key, 88, 0).await;

    let answer = generate(&app, &key, json!({"prompt": "Slow [simulate:delay=2000] [simulate:fail]"})).await;
    let error = assert_openai_error(&answer, StatusCode::GATEWAY_TIMEOUT, "timeout", "task_pending");
    assert_eq!(app.wait_terminal(&key, error["param"].as_str().unwrap()).await["status"], "failed");
    app.assert_balance(&key, 88, 0).await;
    assert_ledger_consistent_on(&app.db).await;
}

#[tokio::test]
async fn prefer_respond_async_answers_202_with_the_task() {
    let app = app(Duration::from_secs(30)).await;
    let (_, key) = app.new_account(100).await;
    let response = app
        .client
        .post(app.url("/v1/images/generations"))
        .header(AUTHORIZATION, bearer(&key))
        .header("prefer", "respond-async")
        .json(&json!({"model": "seedream-4-5", "prompt": "A fox", "size": "1024x1024"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let task: Value = response.json().await.unwrap();
    assert_eq!(location, format!("/api/v1/tasks/{}", task["task_id"].as_str().unwrap()));
    assert_eq!(task["input"]["aspect_ratio"], "1:1");
    assert_eq!(task["credits"]["state"], "held");
}

#[tokio::test]
async fn requests_that_do_not_fit_are_openai_errors_and_create_nothing() {
    let app = app(Duration::from_secs(30)).await;
    let (_, key) = app.new_account(100).await;
    let (_, broke) = app.new_account(0).await;

    let answer = generate(&app, &key, json!({"model": "seedream-4-5", "prompt": "x", "size": "1234x567"})).await;
    let error = assert_openai_error(&answer, StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_value");
    assert_eq!(error["param"], "size");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("1024x1024") && message.contains("2048x878") && message.contains("auto"), "{message}");

    for (body, param) in [
        (json!({"model": "no-such-model", "prompt": "x"}), "model"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "x", "n": 11}), "n"),
        (json!({"prompt": "x", "response_format": "png"}), "response_format"),
        (json!({"prompt": "x", "quality": "ultra"}), "quality"),
    ] {
        let answer = generate(&app, &key, body.clone()).await;
        let error = assert_openai_error(&answer, StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_value");
        assert_eq!(error["param"], param, "{body}");
    }
    let answer = generate(&app, &key, json!({"prompt": "x", "colour": "red"})).await;
    assert_openai_error(&answer, StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_value");

    // A well-formed key that no account has.
    let unknown = format!("aio_{}", "0".repeat(40));
    let answer = generate(&app, &unknown, json!({"prompt": "x"})).await;
    assert_openai_error(&answer, StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid_api_key");
    let answer = generate(&app, &broke, json!({"prompt": "x"})).await;
    assert_openai_error(&answer, StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", "insufficient_quota");
    assert_eq!(answer.1["x-should-retry"], "false");
    assert_eq!(app.count_tasks().await, 0);
}

#[tokio::test]
async fn when_credits_run_out_midway_the_tasks_already_created_are_released() {
    let app = app(Duration::from_secs(30)).await;
    let (_, key) = app.new_account(30).await;
    let answer = generate(&app, &key, json!({"prompt": "Three foxes", "n": 3})).await;
    assert_openai_error(&answer, StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", "insufficient_quota");
    crate::helpers::wait_all_terminal_on(&app.db).await;
    // Two were created and held, then cancelled (or, if one already succeeded, it stays charged: its
    // image exists). Nothing is held, and the ledger adds up.
    let tasks = app.get_json(&key, "/api/v1/tasks").await;
    let charged: i64 =
        tasks["data"].as_array().unwrap().iter().map(|t| t["credits"]["charged"].as_i64().unwrap()).sum();
    app.assert_balance(&key, 30 - charged, 0).await;
    assert_ledger_consistent_on(&app.db).await;
}

/// A multipart body by hand: `fields` as text parts, `files` as `(field, file name, bytes)`.
fn multipart(fields: &[(&str, &str)], files: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "aio-test-boundary-7d3f";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").bytes(),
        );
    }
    for (name, file, bytes) in files {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: image/png\r\n\r\n")
                .bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn edits_store_the_uploads_and_pass_them_as_the_models_input_images() {
    let app = app(Duration::from_secs(30)).await;
    let (_, key) = app.new_account(100).await;
    let upload = [PNG, b"an image".as_slice()].concat();
    let (content_type, body) = multipart(
        &[("model", "seedream-4-5"), ("prompt", "Make it blue")],
        &[("image[]", "a.png", &upload), ("image[]", "b.png", &upload)],
    );
    let response = app
        .client
        .post(app.url("/v1/images/edits"))
        .header(AUTHORIZATION, bearer(&key))
        .header(CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"].as_array().unwrap().len(), 1);

    let task = &app.get_json(&key, "/api/v1/tasks").await["data"][0];
    assert_eq!(task["sub_model"], "seedream/4.5-edit", "a model id means its edit sub-model here");
    let inputs = task["input"]["image_urls"].as_array().unwrap();
    assert_eq!(inputs.len(), 2);
    for url in inputs {
        let url = url.as_str().unwrap();
        // A signed link, like a result's (the task keeps the plain URL; every read signs it afresh).
        assert!(url.starts_with(&format!("{}/files/", app.address)) && url.contains(".png?exp="), "{url}");
        assert_eq!(app.client.get(url).send().await.unwrap().bytes().await.unwrap().to_vec(), upload);
    }
    app.assert_balance(&key, 88, 0).await;

    // Not an image, or no image at all: 400 and nothing created.
    for files in [vec![("image", "a.txt", b"hello".as_slice())], vec![]] {
        let (content_type, body) = multipart(&[("prompt", "x")], &files);
        let response = app
            .client
            .post(app.url("/v1/images/edits"))
            .header(AUTHORIZATION, bearer(&key))
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], "image", "{error}");
    }
    assert_eq!(app.count_tasks().await, 1);
}

#[tokio::test]
async fn models_are_listed_in_openais_shape() {
    let app = app(Duration::from_secs(30)).await;
    let (_, key) = app.new_account(0).await;
    let list = app.get_json(&key, "/v1/models").await;
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"seedream-4-5") && ids.contains(&"seedream/4.5-edit"), "{ids:?}");
    assert_eq!(list["data"][0]["object"], "model");
    let model = app.get_json(&key, "/v1/models/seedream-4-5").await;
    assert_eq!(model["owned_by"], "ByteDance");
    let missing = app.get(&key, "/v1/models/nope").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let unauthorized = app.client.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    let body: Value = unauthorized.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
}
