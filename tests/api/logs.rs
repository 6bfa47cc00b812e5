//! Logs of the real binary (JSON, debug level) through a whole flow: one span per request with its
//! route, status, latency and account; and never an API key, a session token or a secret.

use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{bearer, http_client, json_of, new_account, session_token, Gateway, TestDatabase, JWT_SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_request_spans_and_never_a_key_token_or_secret() {
    let database = TestDatabase::new(5).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = dir.path().join("gateway.log");
    let client = http_client();
    let (account_id, key) = new_account(&database.pool, 1000).await;
    let env = [
        ("AIO__LOG__FORMAT", "json"),
        ("AIO__LOG__LEVEL", "debug"),
        ("AIO_JWT_SECRET", JWT_SECRET),
        ("AIO__PROVIDERS__SIMULATED__DELAY_MS", "100"),
    ];
    let mut gateway = Gateway::start_with(&database.url, &dir.path().join("files"), &log, "all", &env);
    gateway.ready(&client).await;
    // Signed with the secret the gateway reads from AIO_JWT_SECRET.
    let token = session_token(account_id, aio_gateway::jwt::Role::Admin);
    let url = |path: &str| format!("{}{path}", gateway.address);

    // The flow: a task to the end, a key made and used and revoked, an admin call, some refusals.
    let task_id = gateway.create(&client, &key, "A lake").await;
    loop {
        let task: Value =
            json_of(client.get(url(&format!("/api/v1/tasks/{task_id}"))).header(AUTHORIZATION, bearer(&key))).await;
        if task["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let created: Value =
        json_of(client.post(url("/api/v1/keys")).header(AUTHORIZATION, bearer(&token)).json(&json!({"name": "log"})))
            .await;
    let new_key = created["api_key"].as_str().expect("api_key").to_owned();
    let response =
        client.get(url("/api/v1/billing/credits")).header(AUTHORIZATION, bearer(&new_key)).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::OK);
    let key_id = created["key_id"].as_str().expect("key_id");
    client
        .delete(url(&format!("/api/v1/keys/{key_id}")))
        .header(AUTHORIZATION, bearer(&token))
        .send()
        .await
        .expect("DELETE");
    let response =
        client.get(url("/api/v1/billing/credits")).header(AUTHORIZATION, bearer(&new_key)).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    client.get(url("/api/v1/admin/accounts")).header(AUTHORIZATION, bearer(&token)).send().await.expect("GET");
    client.get(url("/api/v1/keys")).header(AUTHORIZATION, format!("Bearer {token}x")).send().await.expect("GET");
    // A provider callback's token is a per-task secret: its path is logged without it.
    let callback_token = format!("cbt{}", ulid::Ulid::new());
    client
        .post(url(&format!("/api/v1/callbacks/simulated/{callback_token}")))
        .json(&json!({}))
        .send()
        .await
        .expect("POST");
    gateway.kill();

    let text = std::fs::read_to_string(&log).expect("read the log");
    for (what, secret) in [
        ("API key", key.as_str()),
        ("API key made by the API", &new_key),
        ("session token", &token),
        ("JWT secret", JWT_SECRET),
        ("callback token", &callback_token),
    ] {
        assert!(!text.contains(secret), "the {what} appears in the log");
    }
    // Not even the key's secret part, or a token's signature.
    assert!(!text.contains(&key[12..]), "part of the API key appears in the log");
    let signature = token.rsplit('.').next().expect("signature");
    assert!(!text.contains(signature), "the token's signature appears in the log");
    assert!(!text.to_ascii_lowercase().contains("bearer "), "an Authorization header appears in the log");

    // Each request ends with one event in its span: route pattern, status, latency, account.
    let finished: Vec<Value> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["fields"]["message"] == "request finished")
        .collect();
    let task_get = finished
        .iter()
        .find(|event| event["span"]["route"] == "/api/v1/tasks/{task_id}")
        .unwrap_or_else(|| panic!("no finished GET task request in the log:\n{text}"));
    assert_eq!(task_get["fields"]["status"], 200, "{task_get}");
    assert!(task_get["fields"]["latency_ms"].is_number(), "{task_get}");
    assert_eq!(task_get["span"]["account_id"], account_id, "{task_get}");
    assert!(task_get["span"]["request_id"].as_str().is_some_and(|id| id.starts_with("req_")), "{task_get}");
    assert!(finished
        .iter()
        .any(|event| event["span"]["route"] == "/api/v1/admin/accounts" && event["fields"]["status"] == 200));
    assert!(finished.iter().any(|event| event["fields"]["status"] == 401));
    // The engine's steps have their task span.
    assert!(text.lines().any(|line| line.contains("task settled") && line.contains(&task_id)), "no task span:\n{text}");
}
