//! The OpenAPI document: 3.1, every route of the router documented with its security and error
//! envelope, and every `$ref` resolving. (`.ci/schemathesis` checks it against the running server.)

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;

/// Every public route of the router, as `(method, path)`; the console's HTML page and assets
/// (`/`, `/console`, `/console/assets/{name}`) are not API and stay out of the document, and so do
/// OpenAI's routes (`/v1/…`: OpenAI's contract and error shape, docs/openai.md).
const ROUTES: [(&str, &str); 37] = [
    ("post", "/api/v1/images/generations"),
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
    ("get", "/api/v1/usage"),
    ("get", "/api/v1/admin/accounts"),
    ("post", "/api/v1/admin/accounts"),
    ("get", "/api/v1/admin/accounts/{account_id}"),
    ("post", "/api/v1/admin/accounts/{account_id}/credits"),
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
