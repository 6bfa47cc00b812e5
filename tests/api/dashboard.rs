//! The dashboard and admin API (SPEC §7): session tokens (JWT) and what they can do — the caller's own
//! keys and usage; accounts and credits for admins. Every invalid token is the same 401.

use std::time::Duration;

use aio_gateway::audit::Actor;
use aio_gateway::config::JwtAlgorithm;
use aio_gateway::jwt::{Claims, Role};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, assert_ledger_consistent, json_of, seed_request, session_token, spawn_app_with,
    spawn_dashboard_app_with, TestApp, JWT_SECRET,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).expect("read a JWT fixture")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims(account_id: i64, role: Role, exp: u64) -> Claims {
    Claims { sub: account_id.to_string(), role, exp, iat: None, iss: None, aud: None, jti: None, key_id: None }
}

fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &impl serde::Serialize) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).expect("sign")
}

fn hs256(secret: &str, claims: &impl serde::Serialize) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(secret.as_bytes()), claims)
}

/// An unsigned token: `{"alg":"none"}`.
fn unsigned(claims: &Claims) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&serde_json::to_value(claims).expect("claims")))
}

async fn status_of(app: &TestApp, path: &str, token: &str) -> StatusCode {
    app.with_bearer(Method::GET, path, token).send().await.expect("GET").status()
}

async fn assert_unauthorized(app: &TestApp, path: &str, token: &str, case: &str) -> String {
    let response = app.with_bearer(Method::GET, path, token).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await.1
}

#[tokio::test]
async fn hs256_tokens_are_checked_and_every_bad_one_is_the_same_401() {
    let app = spawn_dashboard_app_with(|s| {
        s.auth.jwt.issuer = "aio-tests".into();
        s.auth.jwt.audience = "aio-dashboard".into();
    })
    .await;
    let (account, api_key) = app.new_account(100).await;
    let valid = Claims {
        iss: Some("aio-tests".into()),
        aud: Some("aio-dashboard".into()),
        ..claims(account, Role::User, now() + 600)
    };
    assert_eq!(status_of(&app, "/api/v1/keys", &hs256(JWT_SECRET, &valid)).await, StatusCode::OK);

    let cases: Vec<(&str, String)> = vec![
        ("expired", hs256(JWT_SECRET, &Claims { exp: now() - 3600, ..valid.clone() })),
        ("alg none", unsigned(&valid)),
        ("wrong secret", hs256("another-secret-another-secret-another-secret", &valid)),
        ("wrong audience", hs256(JWT_SECRET, &Claims { aud: Some("elsewhere".into()), ..valid.clone() })),
        ("no audience", hs256(JWT_SECRET, &Claims { aud: None, ..valid.clone() })),
        ("wrong issuer", hs256(JWT_SECRET, &Claims { iss: Some("mallory".into()), ..valid.clone() })),
        (
            "no exp",
            hs256(
                JWT_SECRET,
                &json!({"sub": account.to_string(), "role": "user", "iss": "aio-tests", "aud": "aio-dashboard"}),
            ),
        ),
        ("HS384", sign(Algorithm::HS384, &EncodingKey::from_secret(JWT_SECRET.as_bytes()), &valid)),
        ("unknown account", hs256(JWT_SECRET, &Claims { sub: "999999".into(), ..valid.clone() })),
        ("sub not an id", hs256(JWT_SECRET, &Claims { sub: "root".into(), ..valid.clone() })),
        (
            "unknown role",
            hs256(
                JWT_SECRET,
                &json!({"sub": account.to_string(), "role": "owner", "exp": now() + 600, "iss": "aio-tests", "aud": "aio-dashboard"}),
            ),
        ),
        ("garbage", "not.a.token".into()),
        ("an API key", api_key.clone()),
    ];
    let mut messages = Vec::new();
    for (case, token) in &cases {
        messages.push(assert_unauthorized(&app, "/api/v1/keys", token, case).await);
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "one message for every case: {messages:?}");
    // A missing header too; and a session token is no API key.
    let response = app.client.get(app.url("/api/v1/usage")).send().await.expect("GET");
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let token = hs256(JWT_SECRET, &valid);
    assert_error(
        app.with_bearer(Method::GET, "/api/v1/billing/credits", &token).send().await.expect("GET"),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn users_get_403_on_admin_routes_and_admins_pass() {
    let app = spawn_dashboard_app_with(|_| {}).await;
    let (account, _) = app.new_account(100).await;
    let user = session_token(account, Role::User);
    let admin = session_token(account, Role::Admin);
    for (method, path) in [
        (Method::GET, "/api/v1/admin/accounts".to_string()),
        (Method::GET, format!("/api/v1/admin/accounts/{account}")),
    ] {
        let response = app.with_bearer(method.clone(), &path, &user).send().await.expect("request");
        let (_, message) = assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
        assert!(message.contains("admin"), "{message}");
        assert_eq!(app.with_bearer(method, &path, &admin).send().await.expect("request").status(), StatusCode::OK);
    }
    let response = app
        .with_bearer(Method::POST, &format!("/api/v1/admin/accounts/{account}/credits"), &user)
        .json(&json!({"amount": 5, "reason": "me"}))
        .send()
        .await
        .expect("POST");
    assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
}

/// A gateway whose sessions are `algorithm` tokens checked with the fixture public key `pem`, and an
/// account on it.
async fn spawn_public_key_app(algorithm: JwtAlgorithm, pem: &str) -> (TestApp, i64) {
    let app = spawn_app_with(|s| {
        s.auth.jwt.algorithm = algorithm;
        s.auth.jwt.public_key_path = format!("{FIXTURES}/{pem}").into();
    })
    .await;
    let (account, _) = app.new_account(100).await;
    (app, account)
}

#[tokio::test]
async fn rs256_is_pinned_against_hs256_confusion() {
    let (app, account) = spawn_public_key_app(JwtAlgorithm::Rs256, "rsa_public.pem").await;
    let valid = claims(account, Role::User, now() + 600);
    let private = EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).expect("RSA key");
    assert_eq!(status_of(&app, "/api/v1/keys", &sign(Algorithm::RS256, &private, &valid)).await, StatusCode::OK);
    // The classic confusion: HS256 "signed" with the server's public key as the HMAC secret.
    let public_pem = String::from_utf8(fixture("rsa_public.pem")).expect("PEM text");
    let confused = sign(Algorithm::HS256, &EncodingKey::from_secret(public_pem.as_bytes()), &valid);
    assert_unauthorized(&app, "/api/v1/keys", &confused, "HS256 with the public key").await;
    assert_unauthorized(&app, "/api/v1/keys", &sign(Algorithm::PS256, &private, &valid), "PS256").await;
    assert_unauthorized(&app, "/api/v1/keys", &unsigned(&valid), "none").await;
    let expired = sign(Algorithm::RS256, &private, &claims(account, Role::User, now() - 3600));
    assert_unauthorized(&app, "/api/v1/keys", &expired, "expired").await;
}

#[tokio::test]
async fn es256_tokens_work_when_configured() {
    let (app, account) = spawn_public_key_app(JwtAlgorithm::Es256, "ec_public.pem").await;
    let private = EncodingKey::from_ec_pem(&fixture("ec_private.pem")).expect("EC key");
    let token = sign(Algorithm::ES256, &private, &claims(account, Role::Admin, now() + 600));
    assert_eq!(status_of(&app, "/api/v1/admin/accounts", &token).await, StatusCode::OK);
    let rsa = EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).expect("RSA key");
    assert_unauthorized(
        &app,
        "/api/v1/keys",
        &sign(Algorithm::RS256, &rsa, &claims(account, Role::Admin, now() + 600)),
        "RS256",
    )
    .await;
}

#[tokio::test]
async fn keys_created_through_the_api_work_and_revoked_ones_stop_within_the_cache_ttl() {
    let app = spawn_dashboard_app_with(|s| s.auth.key_cache_ttl = std::time::Duration::from_secs(1)).await;
    let (account, _) = app.new_account(100).await;
    let (other_account, other_key) = app.new_account(100).await;
    let session = session_token(account, Role::User);

    let response = app
        .with_bearer(Method::POST, "/api/v1/keys", &session)
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.expect("JSON");
    let api_key = created["api_key"].as_str().expect("api_key").to_owned();
    let key_id = created["key_id"].as_str().expect("key_id").to_owned();
    assert!(
        api_key.starts_with("aio_") && api_key.starts_with(created["prefix"].as_str().expect("prefix")),
        "{created}"
    );
    assert_eq!(app.credits(&api_key).await["balance"], 100);

    // Listed by prefix, never in full.
    let listed: Value =
        app.with_bearer(Method::GET, "/api/v1/keys", &session).send().await.expect("GET").json().await.expect("JSON");
    let keys = listed["data"].as_array().expect("data");
    assert_eq!(keys.len(), 2, "{listed}");
    assert!(keys.iter().any(|k| k["key_id"] == key_id.as_str() && k["name"] == "ci"));
    assert!(!listed.to_string().contains(&api_key));

    // Bad input is a 400 that names the field.
    for (body, field) in [
        (json!({"name": "x".repeat(101)}), "name"),
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), "expires_at"),
        (json!({"expires_at": "tomorrow"}), "expires_at"),
        (json!({"nmae": "typo"}), "nmae"),
    ] {
        let response = app.with_bearer(Method::POST, "/api/v1/keys", &session).json(&body).send().await.expect("POST");
        let (_, message) = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(message.contains(field), "{message}");
    }

    // Another account's key cannot be revoked from here (404, like a missing one) and keeps working.
    let (other_key_id,): (String,) = sqlx::query_as("SELECT id FROM api_keys WHERE account_id = $1")
        .bind(other_account)
        .fetch_one(app.pool())
        .await
        .expect("other key id");
    let response = app
        .with_bearer(Method::DELETE, &format!("/api/v1/keys/{other_key_id}"), &session)
        .send()
        .await
        .expect("DELETE");
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(app.get(&other_key, "/api/v1/billing/credits").await.status(), StatusCode::OK);

    // Revoked through the API: refused (this process forgets it at once; others within the TTL).
    let response =
        app.with_bearer(Method::DELETE, &format!("/api/v1/keys/{key_id}"), &session).send().await.expect("DELETE");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_error(app.get(&api_key, "/api/v1/billing/credits").await, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let again =
        app.with_bearer(Method::DELETE, &format!("/api/v1/keys/{key_id}"), &session).send().await.expect("DELETE");
    assert_eq!(again.status(), StatusCode::NO_CONTENT, "revoking is idempotent");

    // Revoked elsewhere (another replica, the CLI): the cached key stops within the 1 s TTL.
    assert_eq!(app.get(&other_key, "/api/v1/billing/credits").await.status(), StatusCode::OK);
    assert!(aio_gateway::accounts::revoke_key(&app.db, &Actor::cli(), &other_key_id).await.expect("revoke"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_error(app.get(&other_key, "/api/v1/billing/credits").await, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn usage_filters_by_model_and_time_and_pages() {
    let app = spawn_dashboard_app_with(|_| {}).await;
    let (account, key) = app.new_account(1000).await;
    let session = session_token(account, Role::User);
    let text = app.create_ok(&key, seed_request()).await;
    let edit = app
        .create_ok(
            &key,
            json!({"model": "seedream/4.5-edit", "prompt": "winter", "image_urls": ["https://example.com/in.png"]}),
        )
        .await;
    let failing = app.create_ok(&key, json!({"prompt": "no [simulate:fail]"})).await;
    for task in [&text, &edit, &failing] {
        app.wait_terminal(&key, task["task_id"].as_str().expect("id")).await;
    }
    let usage = |query: String| {
        let request = app.with_bearer(Method::GET, &format!("/api/v1/usage{query}"), &session);
        async move {
            let response = request.send().await.expect("GET /api/v1/usage");
            let status = response.status();
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };

    let all = usage(String::new()).await;
    assert_eq!(
        all["summary"],
        json!({"tasks": 3, "succeeded": 2, "failed": 1, "unfinished": 0, "credits_charged": 24})
    );
    assert_eq!(all["tasks"]["data"].as_array().expect("tasks").len(), 3);
    for row in all["tasks"]["data"].as_array().expect("tasks") {
        assert_eq!(row["provider"], json!({"label": "Simulated", "simulated": true}), "usage names the route: {row}");
    }
    // grant, 3 holds, 2 captures, 1 release.
    assert_eq!(all["ledger"]["data"].as_array().expect("ledger").len(), 7);
    // A capture's amount is 0 (the hold took the credits); `captured` says what it spent. Only captures have it.
    for entry in all["ledger"]["data"].as_array().expect("ledger") {
        if entry["kind"] == "capture" {
            assert_eq!((entry["amount"].as_i64(), entry["captured"].as_i64()), (Some(0), Some(12)), "{entry}");
        } else {
            assert!(entry.get("captured").is_none(), "{entry}");
        }
    }

    let edits = usage("?model=seedream/4.5-edit".into()).await;
    assert_eq!(edits["summary"]["tasks"], 1);
    assert_eq!(edits["tasks"]["data"][0]["task_id"], edit["task_id"]);
    let kinds: Vec<&str> =
        edits["ledger"]["data"].as_array().expect("ledger").iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["capture", "hold"], "only the edit task's entries");
    assert_eq!(usage("?model=seedream-4-5".into()).await["summary"]["tasks"], 3);

    let future = usage("?from=2999-01-01T00:00:00Z".into()).await;
    assert_eq!(future["summary"]["tasks"], 0);
    assert!(future["ledger"]["data"].as_array().expect("ledger").is_empty());
    assert_eq!(usage("?from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z".into()).await["summary"]["tasks"], 3);

    // Pages of one, newest first, through both cursors.
    let mut seen = Vec::new();
    let mut query = "?limit=1".to_string();
    loop {
        let page = usage(query.clone()).await;
        seen.extend(page["tasks"]["data"].as_array().expect("tasks").iter().map(|t| t["task_id"].clone()));
        match page["tasks"]["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=1&tasks_cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, [failing["task_id"].clone(), edit["task_id"].clone(), text["task_id"].clone()]);
    let first = usage("?limit=4".into()).await;
    let cursor = first["ledger"]["next_cursor"].as_str().expect("a ledger cursor").to_owned();
    let rest = usage(format!("?limit=4&ledger_cursor={cursor}")).await;
    assert_eq!(rest["ledger"]["data"].as_array().expect("ledger").len(), 3);

    // The same time range on GET /api/v1/tasks (an API key's route), with its status filter.
    let tasks = |query: &str| {
        let request = app.with_bearer(Method::GET, &format!("/api/v1/tasks{query}"), &key);
        async move {
            let response = request.send().await.expect("GET /api/v1/tasks");
            let status = response.status();
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(status, StatusCode::OK, "{body}");
            body["data"].as_array().expect("data").iter().map(|t| t["task_id"].clone()).collect::<Vec<_>>()
        }
    };
    assert_eq!(tasks("?from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z").await.len(), 3);
    assert!(tasks("?from=2999-01-01T00:00:00Z").await.is_empty());
    assert!(tasks("?to=2000-01-01T00:00:00Z").await.is_empty());
    assert_eq!(tasks("?status=failed&from=2000-01-01T00:00:00Z").await, [failing["task_id"].clone()]);
    for (query, field) in [
        ("?from=yesterday", "from"),
        ("?to=2026-13-01T00:00:00Z", "to"),
        ("?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z", "from"),
    ] {
        let response = app.with_bearer(Method::GET, &format!("/api/v1/tasks{query}"), &key).send().await.expect("GET");
        let (_, message) = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(message.contains(field), "{query}: {message}");
    }

    for (query, field) in [
        ("?limit=0", "limit"),
        ("?from=yesterday", "from"),
        ("?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z", "from"),
        ("?tasks_cursor=nope", "tasks_cursor"),
        ("?ledger_cursor=x", "ledger_cursor"),
        ("?colour=red", "colour"),
    ] {
        let response =
            app.with_bearer(Method::GET, &format!("/api/v1/usage{query}"), &session).send().await.expect("GET");
        let (_, message) = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(message.contains(field), "{query}: {message}");
    }
}

async fn change_credits(app: &TestApp, admin: &str, account: i64, body: Value) -> reqwest::Response {
    app.with_bearer(Method::POST, &format!("/api/v1/admin/accounts/{account}/credits"), admin)
        .json(&body)
        .send()
        .await
        .expect("POST credits")
}

#[tokio::test]
async fn admins_manage_accounts_and_credits_through_the_ledger() {
    let app = spawn_dashboard_app_with(|_| {}).await;
    let (admin_account, _) = app.new_account(0).await;
    let admin = session_token(admin_account, Role::Admin);

    let response = app
        .with_bearer(Method::POST, "/api/v1/admin/accounts", &admin)
        .json(&json!({"name": "acme", "credits": 40}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    let acme: Value = response.json().await.expect("JSON");
    assert_eq!(
        (acme["name"].clone(), acme["balance"].clone(), acme["held"].clone()),
        (json!("acme"), json!(40), json!(0))
    );
    let id = acme["account_id"].as_i64().expect("account_id");
    let fetched: Value = json_of(app.with_bearer(Method::GET, &format!("/api/v1/admin/accounts/{id}"), &admin)).await;
    assert_eq!(fetched, acme);

    let granted: Value = change_credits(&app, &admin, id, json!({"amount": 60, "reason": "invoice 42"}))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(granted["account"]["balance"], 100);
    assert_eq!((granted["entry"]["kind"].clone(), granted["entry"]["amount"].clone()), (json!("grant"), json!(60)));
    assert_eq!(granted["entry"]["reason"], "invoice 42");
    let adjusted: Value = change_credits(&app, &admin, id, json!({"amount": -30, "reason": "refund reversed"}))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(adjusted["account"]["balance"], 70);
    assert_eq!((adjusted["entry"]["kind"].clone(), adjusted["entry"]["amount"].clone()), (json!("adjust"), json!(-30)));
    assert_eq!(adjusted["entry"]["balance_after"], 70);

    // Never below zero: a clear 409, and nothing is written.
    let response = change_credits(&app, &admin, id, json!({"amount": -71, "reason": "too much"})).await;
    let (_, message) = assert_error(response, StatusCode::CONFLICT, "conflict").await;
    assert!(message.contains("70") && message.contains("negative"), "{message}");
    assert_eq!(
        change_credits(&app, &admin, id, json!({"amount": -70, "reason": "close"})).await.status(),
        StatusCode::OK
    );

    for (body, field) in [
        (json!({"amount": 0, "reason": "nothing"}), "amount"),
        (json!({"amount": 5, "reason": "  "}), "reason"),
        (json!({"amount": 5}), "reason"),
        (json!({"amount": 1e30, "reason": "huge"}), "amount"),
        (json!({"amount": 2_000_000_000_000i64, "reason": "huge"}), "amount"),
        (json!({"amount": "5", "reason": "text"}), "amount"),
    ] {
        let (_, message) = assert_error(
            change_credits(&app, &admin, id, body.clone()).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        )
        .await;
        assert!(message.contains(field), "{body}: {message}");
    }
    assert_error(
        change_credits(&app, &admin, 999_999, json!({"amount": 5, "reason": "x"})).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let response = app.with_bearer(Method::GET, "/api/v1/admin/accounts/abc", &admin).send().await.expect("GET");
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;

    // The list pages by id.
    let page: Value = json_of(app.with_bearer(Method::GET, "/api/v1/admin/accounts?limit=1", &admin)).await;
    assert_eq!(page["data"].as_array().expect("data").len(), 1);
    let cursor = page["next_cursor"].as_str().expect("cursor");
    let next: Value =
        json_of(app.with_bearer(Method::GET, &format!("/api/v1/admin/accounts?limit=1&cursor={cursor}"), &admin)).await;
    assert_eq!(next["data"][0]["account_id"], id);

    let kinds: Vec<(String, i64, Option<String>)> = crate::helpers::ledger_of(app.pool(), id).await;
    let kinds: Vec<(&str, i64)> = kinds.iter().map(|(k, a, _)| (k.as_str(), *a)).collect();
    assert_eq!(kinds, [("grant", 40), ("grant", 60), ("adjust", -30), ("adjust", -70)]);
    assert_ledger_consistent(app.pool()).await;
}
