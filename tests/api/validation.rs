//! Create-request validation (SPEC §2.1, §3, §8): every bad request is a 400 `invalid_request` whose
//! message names the field, and holds nothing — no task row, no ledger row, the balance unchanged.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, assert_ledger_consistent, ledger_of, TestApp};

const START: i64 = 100;

/// A gateway and an account holding `START` credits.
async fn setup() -> (TestApp, i64, String) {
    let app = TestApp::builder().driven().spawn().await;
    let (account_id, key) = app.new_account(START).await;
    (app, account_id, key)
}

/// The create is refused with 400 `invalid_request`; the message contains each of `mentions`.
async fn assert_refused(app: &TestApp, key: &str, body: Value, mentions: &[&str]) {
    let response = app.create(key, body.clone()).await;
    let (_, message) = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    for mention in mentions {
        assert!(message.contains(mention), "refusing {body}: message {message:?} should mention {mention:?}");
    }
}

/// Nothing was held or stored by the refused requests.
async fn assert_nothing_held(app: &TestApp, account_id: i64, key: &str) {
    assert_eq!(app.count_tasks().await, 0, "refused requests stored a task");
    assert_eq!(ledger_of(app.pool(), account_id).await, vec![("grant".to_string(), START, None)], "ledger");
    let credits = app.credits(key).await;
    assert_eq!((credits["balance"].as_i64(), credits["held"].as_i64()), (Some(START), Some(0)), "{credits}");
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn prompt_must_be_a_non_empty_string_within_the_limit() {
    let (app, account_id, key) = setup().await;
    assert_refused(&app, &key, json!({"model": "seedream-4-5"}), &["`prompt`"]).await;
    assert_refused(&app, &key, json!({"prompt": ""}), &["`prompt`"]).await;
    assert_refused(&app, &key, json!({"prompt": " \n\t  "}), &["`prompt`"]).await;
    assert_refused(&app, &key, json!({"prompt": 42}), &["`prompt`"]).await;
    assert_refused(&app, &key, json!({"prompt": null}), &["`prompt`"]).await;
    assert_refused(&app, &key, json!({"prompt": ["a cat"]}), &["`prompt`"]).await;
    assert_refused(&app, &key, json!({"prompt": "a".repeat(3001)}), &["`prompt`", "3000"]).await;
    assert_refused(&app, &key, json!({"prompt": "é".repeat(3001)}), &["`prompt`", "3000"]).await;
    assert_nothing_held(&app, account_id, &key).await;
}

#[tokio::test]
async fn a_prompt_of_exactly_the_limit_is_accepted() {
    let (app, _, key) = setup().await;
    // Counted in characters, not bytes: 3000 two-byte characters fit.
    let task = app.create_ok(&key, json!({"prompt": "é".repeat(3000)})).await;
    let done = app.wait_terminal(&key, task["task_id"].as_str().expect("task_id")).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn parameters_must_be_allowed_values() {
    let (app, account_id, key) = setup().await;
    assert_refused(
        &app,
        &key,
        json!({"prompt": "a cat", "aspect_ratio": "5:4"}),
        &["`aspect_ratio`", "5:4", "1:1, 4:3, 3:4, 16:9, 9:16, 2:3, 3:2, 21:9"],
    )
    .await;
    assert_refused(&app, &key, json!({"prompt": "a cat", "aspect_ratio": 1.5}), &["`aspect_ratio`"]).await;
    assert_refused(&app, &key, json!({"prompt": "a cat", "quality": "ultra"}), &["`quality`", "ultra", "basic, high"])
        .await;
    assert_refused(&app, &key, json!({"prompt": "a cat", "colour": "red"}), &["colour"]).await;
    assert_refused(&app, &key, json!({"prompt": "a cat", "model": "dall-e-9"}), &["`model`", "dall-e-9"]).await;
    assert_refused(&app, &key, json!({"prompt": "a cat", "model": 7}), &["`model`"]).await;
    assert_nothing_held(&app, account_id, &key).await;
}

#[tokio::test]
async fn image_urls_follow_the_sub_model_and_the_url_guard() {
    let (app, account_id, key) = setup().await;
    let edit = |urls: Value| json!({"model": "seedream/4.5-edit", "prompt": "Make it winter", "image_urls": urls});

    assert_refused(
        &app,
        &key,
        json!({"model": "seedream/4.5-text-to-image", "prompt": "a cat", "image_urls": ["https://example.com/in.png"]}),
        &["`image_urls`"],
    )
    .await;
    assert_refused(
        &app,
        &key,
        json!({"prompt": "a cat", "image_urls": ["https://example.com/in.png"]}),
        &["`image_urls`"],
    )
    .await;
    assert_refused(&app, &key, json!({"model": "seedream/4.5-edit", "prompt": "Make it winter"}), &["`image_urls`"])
        .await;
    assert_refused(&app, &key, edit(json!([])), &["`image_urls`"]).await;
    let fifteen: Vec<String> = (0..15).map(|i| format!("https://example.com/{i}.png")).collect();
    assert_refused(&app, &key, edit(json!(fifteen)), &["`image_urls`", "14"]).await;
    assert_refused(&app, &key, edit(json!("https://example.com/in.png")), &["`image_urls`"]).await;
    assert_refused(&app, &key, edit(json!([1])), &["`image_urls[0]`"]).await;

    for bad in [
        "ftp://example.com/in.png",
        "https://127.0.0.1/x.png",
        "http://169.254.169.254/",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.7/in.png",
        "https://localhost/in.png",
        "https://[::1]/in.png",
        "https://user:pw@example.com/a.png",
        "not a url",
    ] {
        assert_refused(&app, &key, edit(json!([bad])), &["`image_urls[0]`"]).await;
        assert_refused(&app, &key, edit(json!(["https://example.com/ok.png", bad])), &["`image_urls[1]`"]).await;
    }
    assert_nothing_held(&app, account_id, &key).await;
}

#[tokio::test]
async fn callback_url_must_be_public_https() {
    let (app, account_id, key) = setup().await;
    for bad in [
        "http://example.com/hook",
        "https://127.0.0.1/hook",
        "https://192.168.1.10/hook",
        "https://user:pw@example.com/hook",
        "not a url",
    ] {
        assert_refused(&app, &key, json!({"prompt": "a cat", "callback_url": bad}), &["`callback_url`"]).await;
    }
    assert_refused(&app, &key, json!({"prompt": "a cat", "callback_url": "http://example.com/hook"}), &["https"]).await;
    assert_nothing_held(&app, account_id, &key).await;
}

#[tokio::test]
async fn the_body_must_be_a_json_object() {
    let (app, account_id, key) = setup().await;
    assert_refused(&app, &key, json!([]), &[]).await;
    assert_refused(&app, &key, json!("a cat"), &[]).await;
    assert_refused(&app, &key, Value::Null, &[]).await;
    for raw in [r#"{"prompt": "a cat""#, "{prompt: 'a cat'}", ""] {
        let response = app.create_raw(&key, Some("application/json"), raw.to_owned()).await;
        let (_, message) = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(message.contains("JSON"), "malformed body {raw:?}: message {message:?} says it is not valid JSON");
    }
    assert_nothing_held(&app, account_id, &key).await;
}

#[tokio::test]
async fn trailing_characters_after_the_json_value_are_refused() {
    let (app, account_id, key) = setup().await;
    for raw in [r#"{"prompt": "a cat"} trailing"#, r#"{"prompt": "a cat"}{"prompt": "a dog"}"#] {
        let response = app.create_raw(&key, Some("application/json"), raw.to_owned()).await;
        let (_, message) = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(message.contains("JSON"), "malformed body {raw:?}: message {message:?} says it is not valid JSON");
    }
    assert_nothing_held(&app, account_id, &key).await;
}

#[tokio::test]
async fn a_json_array_is_not_a_request_even_with_one_element_per_field() {
    let (app, account_id, key) = setup().await;
    // Six elements, one per field of the request: serde's derive would read them positionally.
    assert_refused(&app, &key, json!([null, "a cat", null, null, null, null]), &[]).await;
    assert_refused(&app, &key, json!(["seedream-4-5", "a cat", "16:9", "high", null, null]), &[]).await;
    assert_nothing_held(&app, account_id, &key).await;
}
