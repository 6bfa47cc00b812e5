//! The main flow end to end (SPEC §2.1–§2.4): create, poll, result, billing, listing, catalog; and
//! the three ways a task fails (upstream failure, refused submit, deadline).

use reqwest::header::{CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, assert_ledger_consistent, ledger_of, seed_request, spawn_app, spawn_app_with, TestApp,
};

/// Fetches a result image and returns its PNG dimensions, checking that it is served as a PNG.
async fn png_size(app: &TestApp, url: &str) -> (u32, u32) {
    assert!(url.starts_with(&format!("{}/files/", app.address)), "result URL {url} is served by this gateway");
    let response = app.client.get(url).send().await.expect("GET the result image");
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert_eq!(content_type, "image/png");
    let bytes = response.bytes().await.expect("image bytes");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("the result is a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).expect("the PNG decodes");
    (frame.width, frame.height)
}

fn task_id(task: &Value) -> String {
    task["task_id"].as_str().unwrap_or_else(|| panic!("no task_id in {task}")).to_owned()
}

#[tokio::test]
async fn seed_request_is_held_then_charged_and_serves_a_png() {
    let app = TestApp::builder().driven().spawn().await;
    let (account_id, key) = app.new_account(1000).await;

    let response = app.create(&key, seed_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let task: Value = response.json().await.expect("task JSON");
    let id = task_id(&task);
    assert!(id.starts_with("task_") && id.len() > 20, "task id {id}");
    assert_eq!(location, Some(format!("/api/v1/tasks/{id}")));
    assert!(matches!(task["status"].as_str(), Some("pending" | "running")), "fresh task: {task}");
    assert_eq!(task["credits"], crate::helpers::plain_credits(12, 0, "held"));
    assert_eq!(task["model"], "seedream-4-5");
    assert_eq!(task["sub_model"], "seedream/4.5-text-to-image");
    assert_eq!(
        task["input"],
        json!({
            "prompt": "A serene mountain lake at sunrise with reflections, photorealistic",
            "aspect_ratio": "16:9", "quality": "high", "image_urls": []
        })
    );
    assert!(task["output"].is_null() && task["error"].is_null() && task["callback_url"].is_null(), "{task}");
    assert!(task["completed_at"].is_null() && task["created_at"].is_string(), "{task}");

    let done = app.wait_terminal(&key, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["credits"], crate::helpers::plain_credits(12, 12, "charged"));
    assert!(done["error"].is_null() && done["completed_at"].is_string(), "{done}");
    let images = done["output"]["images"].as_array().expect("output.images");
    assert_eq!(images.len(), 1, "{done}");
    let url = images[0]["url"].as_str().expect("output.images[0].url");
    assert_eq!(png_size(&app, url).await, (256, 144), "16:9 result size");

    // The Location header leads to the same task.
    let via_location = app.get_json(&key, &format!("/api/v1/tasks/{id}")).await;
    assert_eq!(via_location, done);

    let credits = app.credits(&key).await;
    assert_eq!(credits["balance"], 988, "{credits}");
    assert_eq!(credits["held"], 0, "{credits}");
    assert_eq!(credits["currency"], "credits");
    assert_eq!(credits["usd_per_credit"], 0.01);
    let ledger = credits["ledger"].as_array().expect("ledger");
    let entries: Vec<(&str, i64, Value, i64)> = ledger
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default(),
                e["amount"].as_i64().unwrap_or(i64::MIN),
                e["task_id"].clone(),
                e["balance_after"].as_i64().unwrap_or(i64::MIN),
            )
        })
        .collect();
    assert_eq!(
        entries,
        vec![("capture", 0, json!(id), 988), ("hold", -12, json!(id), 988), ("grant", 1000, Value::Null, 1000)],
        "ledger newest first: {credits}"
    );
    assert!(ledger.iter().all(|e| e["id"].is_i64() && e["created_at"].is_string()), "{credits}");

    let alias = app.get_json(&key, "/billing/credits").await;
    assert_eq!(alias, credits, "/billing/credits answers like /api/v1/billing/credits");

    assert_eq!(ledger_of(app.pool(), account_id).await.len(), 3);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn edit_sub_model_with_an_input_image_succeeds() {
    let app = TestApp::builder().driven().spawn().await;
    let (_, key) = app.new_account(100).await;
    let task = app
        .create_ok(
            &key,
            json!({"model": "seedream/4.5-edit", "prompt": "Make it winter", "image_urls": ["https://example.com/in.png"]}),
        )
        .await;
    assert_eq!(task["model"], "seedream-4-5");
    assert_eq!(task["sub_model"], "seedream/4.5-edit");
    assert_eq!(task["input"]["image_urls"], json!(["https://example.com/in.png"]));

    let done = app.wait_terminal(&key, &task_id(&task)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["credits"]["state"], "charged");
    let url = done["output"]["images"][0]["url"].as_str().expect("result url");
    assert_eq!(png_size(&app, url).await, (256, 256), "default 1:1 result size");
    assert_eq!(app.credits(&key).await["balance"], 88);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn model_id_means_its_default_sub_model_and_defaults_are_filled() {
    let app = TestApp::builder().driven().spawn().await;
    let (_, key) = app.new_account(100).await;

    let by_model = app.create_ok(&key, json!({"model": "seedream-4-5", "prompt": "A red fox"})).await;
    assert_eq!(by_model["model"], "seedream-4-5");
    assert_eq!(by_model["sub_model"], "seedream/4.5-text-to-image");

    let no_model = app.create_ok(&key, json!({"prompt": "  A red fox in the snow  "})).await;
    assert_eq!(no_model["model"], "seedream-4-5");
    assert_eq!(no_model["sub_model"], "seedream/4.5-text-to-image", "default model from catalog.default_model");
    assert_eq!(
        no_model["input"],
        json!({"prompt": "A red fox in the snow", "aspect_ratio": "1:1", "quality": "basic", "image_urls": []}),
        "defaults filled in, prompt trimmed"
    );
    for task in [by_model, no_model] {
        let done = app.wait_terminal(&key, &task_id(&task)).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    assert_eq!(app.credits(&key).await["balance"], 76);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn task_list_is_newest_first_paginates_and_filters() {
    let app = TestApp::builder().driven().spawn().await;
    let (_, key) = app.new_account(1000).await;
    let prompts = ["one", "two [simulate:fail]", "three", "four [simulate:fail]", "five"];
    let mut ids = Vec::new();
    for prompt in prompts {
        ids.push(task_id(&app.create_ok(&key, json!({"prompt": prompt})).await));
    }
    for id in &ids {
        app.wait_terminal(&key, id).await;
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();

    let all = app.get_json(&key, "/api/v1/tasks").await;
    let listed: Vec<String> = all["data"].as_array().expect("data").iter().map(task_id).collect();
    assert_eq!(listed, newest_first, "default page, newest first");
    assert!(all["next_cursor"].is_null(), "one page only: {all}");
    assert_eq!(all["data"][0]["credits"]["price"], 12, "list items are task objects");

    // Pages of 2 cover every task exactly once, in order.
    let mut paged = Vec::new();
    let mut path = "/api/v1/tasks?limit=2".to_string();
    for _ in 0..10 {
        let page = app.get_json(&key, &path).await;
        let data = page["data"].as_array().expect("data");
        assert!(data.len() <= 2, "limit=2 gave {}", data.len());
        paged.extend(data.iter().map(task_id));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/tasks?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(paged, newest_first, "pagination covers all tasks once");

    let succeeded = app.get_json(&key, "/api/v1/tasks?status=succeeded").await;
    let succeeded: Vec<&Value> = succeeded["data"].as_array().expect("data").iter().collect();
    assert_eq!(succeeded.len(), 3);
    assert!(succeeded.iter().all(|t| t["status"] == "succeeded"));
    let failed = app.get_json(&key, "/api/v1/tasks?status=failed").await;
    let failed: Vec<String> = failed["data"].as_array().expect("data").iter().map(task_id).collect();
    assert_eq!(failed, vec![ids[3].clone(), ids[1].clone()]);
    let pending = app.get_json(&key, "/api/v1/tasks?status=pending").await;
    assert_eq!(pending["data"], json!([]));

    for query in ["limit=0", "limit=101", "limit=abc", "limit=-1", "status=bogus", "cursor=garbage", "colour=red"] {
        let response = app.get(&key, &format!("/api/v1/tasks?{query}")).await;
        let (_, message) = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        let field = query.split('=').next().unwrap_or_default();
        assert!(message.contains(field), "?{query}: message {message:?} names `{field}`");
    }
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn catalog_lists_the_model_with_its_parameters_and_summary() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/api/v1/models")).send().await.expect("GET /api/v1/models");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("body");
    let catalog: Value = serde_json::from_str(&text).expect("JSON");

    // No provider key: demo mode, every model of the catalog on the simulated provider.
    assert_eq!(catalog["mode"], "demo");
    let data = catalog["data"].as_array().expect("data");
    assert_eq!(data.len(), 11);
    let model = &data[0];
    assert_eq!(model["id"], "seedream-4-5");
    assert_eq!(model["name"], "Seedream 4.5");
    assert_eq!(model["vendor"], "ByteDance");
    assert_eq!(model["provider_label"], "ByteDance / Simulated");
    assert_eq!(model["endpoint"], "/api/v1/images/generations");
    assert_eq!(model["credits"], 12);
    assert_eq!(model["usd"], 0.12);
    assert_eq!(model["sub_models"], json!(["seedream/4.5-text-to-image", "seedream/4.5-edit"]), "default first");
    assert_eq!(model["input_types"], json!(["text", "image"]));
    assert_eq!(model["output"], "image");
    assert_eq!(model["runtime"], "async");
    assert_eq!(model["webhook"], true);
    let parameters = model["parameters"].as_array().expect("parameters");
    let aspect = parameters.iter().find(|p| p["name"] == "aspect_ratio").expect("aspect_ratio parameter");
    assert_eq!(aspect["values"], json!(["1:1", "4:3", "3:4", "16:9", "9:16", "2:3", "3:2", "21:9"]));
    assert_eq!(aspect["default"], "1:1");
    assert_eq!(aspect["required"], false);
    let prompt = parameters.iter().find(|p| p["name"] == "prompt").expect("prompt parameter");
    assert_eq!(prompt["required"], true);
    let quality = parameters.iter().find(|p| p["name"] == "quality").expect("quality parameter");
    assert_eq!(quality["values"], json!(["basic", "high"]));
    // Input images: only the edit sub-model takes them, and needs at least one.
    let images = parameters.iter().find(|p| p["name"] == "image_urls").expect("image_urls parameter");
    assert_eq!(images["accepted_by"], json!([{"sub_model": "seedream/4.5-edit", "min": 1, "max": 14}]));
    assert!(parameters.iter().filter(|p| p["name"] != "image_urls").all(|p| p.get("accepted_by").is_none()));
    // Demo mode offers every model: none is hidden.
    assert_eq!(catalog["hidden_models"], json!([]));
    for parameter in parameters {
        for field in ["name", "type", "required", "default", "description"] {
            assert!(parameter.get(field).is_some(), "parameter {parameter} has `{field}`");
        }
    }
    let example = model["example_request"].as_str().expect("example_request");
    assert!(example.starts_with("curl ") && example.contains("/api/v1/images/generations"), "{example}");
    assert_eq!(
        model["routes"],
        json!([{"provider_label": "Simulated", "simulated": true, "backend_node": "test-gateway"}])
    );

    let summary = &catalog["endpoint_summary"];
    assert_eq!(summary["models"], 11);
    // Demo mode: the simulated provider is no provider source.
    assert_eq!((summary["providers"].as_u64(), summary["sources"].as_u64()), (Some(0), Some(0)), "{summary}");
    assert_eq!(summary["webhook_coverage"], "5/11");
    assert_eq!(summary["credit_range"], json!({"min": 4, "max": 25}));
    assert_eq!(summary["lowest_cost_model"]["id"], "cogview-4");
    assert_eq!(summary["lowest_cost_model"]["credits"], 4);

    // Provider internals never leak.
    for secret in ["base_url", "api_key", "upstream_model"] {
        assert!(!text.contains(secret), "catalog exposes `{secret}`: {text}");
    }

    let one = app.client.get(app.url("/api/v1/models/seedream-4-5")).send().await.expect("GET one model");
    assert_eq!(one.status(), StatusCode::OK);
    let one: Value = one.json().await.expect("JSON");
    assert_eq!(&one, model, "one model answers like its catalog entry");

    let unknown = app.client.get(app.url("/api/v1/models/no-such-model")).send().await.expect("GET unknown model");
    assert_error(unknown, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    for (path, status) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let response = app.client.get(app.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["status"], status, "{path}");
    }
}

#[tokio::test]
async fn upstream_failure_fails_the_task_and_refunds() {
    let app = TestApp::builder().driven().spawn().await;
    let (account_id, key) = app.new_account(100).await;
    let task = app.create_ok(&key, json!({"prompt": "A cat [simulate:fail]"})).await;
    let done = app.wait_terminal(&key, &task_id(&task)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "upstream_failed", "{done}");
    assert!(done["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{done}");
    assert!(done["output"].is_null(), "{done}");
    assert_eq!(done["credits"], crate::helpers::plain_credits(12, 0, "refunded"));

    app.assert_balance(&key, 100, 0).await;
    assert_eq!(app.ledger_kinds(account_id).await, ["grant", "hold", "release"]);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn refused_submit_answers_502_and_charges_nothing() {
    let app = spawn_app().await;
    let (account_id, key) = app.new_account(100).await;
    let response = app.create(&key, json!({"prompt": "A cat [simulate:reject]"})).await;
    let (_, message) = assert_error(response, StatusCode::BAD_GATEWAY, "upstream_error").await;

    let listed = app.get_json(&key, "/api/v1/tasks").await;
    let data = listed["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "the refused task is stored: {listed}");
    let task = &data[0];
    let id = task_id(task);
    assert!(message.contains(&id), "the 502 message {message:?} names the task {id}");
    assert_eq!(task["status"], "failed");
    assert_eq!(task["error"]["code"], "upstream_rejected");
    assert_eq!(task["credits"], crate::helpers::plain_credits(12, 0, "refunded"));
    assert_eq!(app.get_task(&key, &id).await, *task);

    app.assert_balance(&key, 100, 0).await;
    assert_eq!(app.ledger_kinds(account_id).await, ["grant", "hold", "release"]);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_task_past_its_deadline_times_out_and_refunds() {
    let app = spawn_app_with(|settings| settings.tasks.deadline = std::time::Duration::from_secs(1)).await;
    let (_, key) = app.new_account(100).await;
    let task = app.create_ok(&key, json!({"prompt": "A slow cat [simulate:delay=60000]"})).await;
    let done = app.wait_terminal(&key, &task_id(&task)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "timeout", "{done}");
    assert_eq!(done["credits"], crate::helpers::plain_credits(12, 0, "refunded"));
    app.assert_balance(&key, 100, 0).await;
    assert_ledger_consistent(app.pool()).await;
}
