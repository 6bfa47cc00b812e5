//! The OpenAPI document: 3.1, every route of the router documented with its security and error
//! envelope, and every `$ref` resolving. (`.ci/schemathesis` checks it against the running server.)

use reqwest::StatusCode;
use serde_json::Value;

use crate::contract;
use crate::helpers::{json_of, spawn_app};

/// Every public route of the router, as `(method, path)`; the console's HTML page and assets
/// (`/`, `/console`, `/console/assets/{name}`) are not API and stay out of the document, and so do
/// OpenAI's routes (`/v1/…`: OpenAI's contract and error shape, docs/openai.md).
const ROUTES: [(&str, &str); 41] = [
    ("post", "/api/v1/images/generations"),
    ("post", "/api/v1/quotes"),
    ("get", "/api/v1/tasks"),
    ("get", "/api/v1/tasks/{task_id}"),
    ("post", "/api/v1/tasks/{task_id}/cancel"),
    ("get", "/api/v1/tasks/{task_id}/events"),
    ("get", "/api/v1/tasks/{task_id}/deliveries"),
    ("post", "/api/v1/tasks/{task_id}/deliveries/retry"),
    ("post", "/api/v1/callbacks/{provider}/{token}"),
    ("get", "/api/v1/billing/credits"),
    ("get", "/billing/credits"),
    ("get", "/api/v1/models"),
    ("get", "/api/v1/models/{model_id}"),
    ("get", "/files/{name}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/keys"),
    ("post", "/api/v1/keys"),
    ("delete", "/api/v1/keys/{key_id}"),
    ("patch", "/api/v1/keys/{key_id}"),
    ("get", "/api/v1/usage"),
    ("get", "/api/v1/admin/accounts"),
    ("post", "/api/v1/admin/accounts"),
    ("get", "/api/v1/admin/accounts/{account_id}"),
    ("patch", "/api/v1/admin/accounts/{account_id}"),
    ("post", "/api/v1/admin/accounts/{account_id}/credits"),
    ("get", "/api/v1/admin/audit"),
    ("post", "/api/v1/session"),
    ("get", "/api/v1/session"),
    ("delete", "/api/v1/session"),
    ("get", "/api/v1/webhooks/secret"),
    ("post", "/api/v1/webhooks/secret/rotate"),
    ("get", "/api/v1/billing/packages"),
    ("get", "/api/v1/billing/orders"),
    ("post", "/api/v1/billing/orders"),
    ("post", "/api/v1/billing/stripe/webhook"),
    ("post", "/api/v1/billing/redeem"),
    ("get", "/api/v1/admin/orders"),
    ("post", "/api/v1/admin/redemption-codes"),
];

fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => found.push(target),
                    _ => refs(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_covers_every_route_and_is_consistent() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/api/v1/openapi.json")).send().await.expect("GET the document");
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");

    let paths = doc["paths"].as_object().expect("paths");
    let documented: usize = paths.values().map(|item| item.as_object().map_or(0, |ops| ops.len())).sum();
    assert_eq!(
        documented,
        ROUTES.len(),
        "operations beyond the router's routes: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    let mut operation_ids = std::collections::BTreeSet::new();
    for (method, path) in ROUTES {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: operationId"));
        assert!(operation_ids.insert(id.to_owned()), "operationId {id} used twice");
        let responses = operation["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}: responses"));
        assert!(responses.keys().any(|status| status.starts_with('2')), "{method} {path}: no success response");
        for (status, response) in responses {
            // 2xx answers carry their own bodies; 3xx (`304 Not Modified`) none.
            if !status.starts_with('2') && !status.starts_with('3') {
                let schema = &response["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema, "#/components/schemas/ErrorEnvelope",
                    "{method} {path} {status}: the error envelope"
                );
            }
        }
        let security = operation["security"].to_string();
        let has = |code: &str| responses.contains_key(code);
        if security.contains("api_key") || security.contains("session") {
            assert!(has("401"), "{method} {path}: authenticated routes document 401");
        }
        if path.starts_with("/api/v1/admin") {
            assert!(
                security.contains("session") && has("403"),
                "{method} {path}: admin routes take a session and document 403"
            );
        }
    }
    // Schemas are named once: the ledger's entry and the audit log's are two.
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["Entry"]["properties"]["kind"].is_object(), "the ledger entry");
    assert!(schemas["AuditEntry"]["properties"]["action"].is_object(), "the audit entry");
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["api_key"]["scheme"], "bearer");
    assert_eq!(schemes["session"]["bearerFormat"], "JWT");

    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for target in found {
        let pointer = target.strip_prefix('#').unwrap_or_else(|| panic!("external $ref {target}"));
        assert!(doc.pointer(pointer).is_some(), "$ref {target} does not resolve");
    }
}

/// What generated clients rely on: enums from the server's types, `date-time` timestamps, `prompt`
/// required and never `null`, every image type the file route serves.
#[tokio::test]
async fn the_document_types_what_clients_parse() {
    let app = spawn_app().await;
    let doc = json_of(app.client.get(app.url("/api/v1/openapi.json"))).await;
    let schemas = &doc["components"]["schemas"];
    let strings = |value: &Value| -> Vec<String> {
        value.as_array().map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    };
    assert_eq!(
        strings(&schemas["TaskStatus"]["enum"]),
        ["queued", "pending", "running", "succeeded", "failed", "cancelled"]
    );
    assert_eq!(strings(&schemas["CreditsState"]["enum"]), ["held", "charged", "refunded"]);
    assert_eq!(strings(&schemas["EntryKind"]["enum"]), ["grant", "hold", "capture", "release", "adjust"]);
    assert_eq!(strings(&schemas["CallbackEvent"]["enum"]), ["completed", "started"]);
    assert_eq!(strings(&schemas["DeliveryStatus"]["enum"]), ["pending", "delivered", "dead"]);
    assert!(strings(&schemas["ErrorCode"]["enum"]).contains(&"insufficient_credits".to_owned()));
    assert_eq!(schemas["ErrorDetail"]["properties"]["code"]["$ref"], "#/components/schemas/ErrorCode");
    assert_eq!(schemas["CreditsView"]["properties"]["state"]["$ref"], "#/components/schemas/CreditsState");
    assert_eq!(schemas["Entry"]["properties"]["kind"]["$ref"], "#/components/schemas/EntryKind");

    for field in ["created_at", "updated_at", "completed_at"] {
        assert_eq!(schemas["TaskView"]["properties"][field]["format"], "date-time", "TaskView.{field}");
    }
    assert_eq!(schemas["Entry"]["properties"]["created_at"]["format"], "date-time");

    let create = &schemas["CreateRequest"];
    assert!(strings(&create["required"]).contains(&"prompt".to_owned()), "prompt is required: {create}");
    assert_eq!(create["properties"]["prompt"]["type"], "string", "prompt is a string, never null: {create}");

    let file = &doc["paths"]["/files/{name}"]["get"]["responses"];
    for status in ["200", "206"] {
        let types: Vec<&String> = file[status]["content"].as_object().expect("content").keys().collect();
        assert_eq!(types, ["image/png", "image/jpeg", "image/webp"], "/files/{{name}} {status}");
    }
    let create = &doc["paths"]["/api/v1/images/generations"]["post"]["responses"];
    assert!(create["200"]["headers"]["Location"].is_object());
    assert!(create["200"]["headers"]["x-request-id"].is_object());
    assert!(create["429"]["headers"]["Retry-After"].is_object());
    assert!(create["503"]["headers"]["Retry-After"].is_object());
}

/// The check every test's answers go through (tests/api/contract.rs) fails on what does not fit, and
/// says where.
#[test]
fn the_answer_check_names_route_status_and_field() {
    let task = "/api/v1/tasks/task_01J0000000000000000000000";
    let json = Some("application/json");
    let error = contract::check("get", task, 200, json, br#"{"task_id": 7}"#).expect_err("a wrong task");
    assert!(error.contains("GET /api/v1/tasks/{task_id}") && error.contains("200"), "{error}");
    assert!(error.contains("task_id"), "{error}");
    let error = contract::check("get", task, 418, json, b"{}").expect_err("an undeclared status");
    assert!(error.contains("418 is not declared"), "{error}");
    let error = contract::check("get", "/files/a.png", 200, Some("image/gif"), b"GIF8").expect_err("a wrong type");
    assert!(error.contains("image/gif is not declared"), "{error}");
    let error = contract::check("put", "/api/v1/tasks", 200, json, b"{}").expect_err("an undocumented method");
    assert!(error.contains("no PUT operation"), "{error}");
    let envelope = br#"{"error": {"code": "not_found", "message": "No route matches this path.", "request_id": "r"}}"#;
    contract::check("get", "/api/v1/nothing-here", 404, json, envelope).expect("the fallback's 404");
    let wrong = br#"{"error": {"code": "no_such_code", "message": "m", "request_id": "r"}}"#;
    let error = contract::check("get", task, 404, json, wrong).expect_err("an unknown error code");
    assert!(error.contains("/error/code"), "{error}");
}
