//! The audit log (issue 20), on both backends: every action that changes money or access is recorded
//! once, in its own transaction (a refused change leaves nothing), with the actor, the request id of
//! the answer and the values before and after, and never a key, secret, code or token; `GET
//! /api/v1/admin/audit` is for admins, with checked filters and pages.

use aio_gateway::audit::Actor;
use aio_gateway::{accounts, ledger, on_db};
use reqwest::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{assert_error, bearer, Backend, TestApp};

async fn spawn(backend: Backend) -> TestApp {
    // Each test has its own database: its first account (the admin) is 1.
    TestApp::builder()
        .backend(backend)
        .configure(|settings| settings.auth.session.admin_accounts = vec![1])
        .spawn()
        .await
}

/// Signs in with `key`; returns the `Cookie` header to send back, and the answer's request id.
async fn sign_in(app: &TestApp, key: &str) -> (String, String) {
    let response =
        app.client.post(app.url("/api/v1/session")).json(&json!({"api_key": key})).send().await.expect("sign in");
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = request_id(&response);
    let set_cookie = response.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).expect("Set-Cookie");
    (set_cookie.split(';').next().expect("name=value").to_owned(), request_id)
}

/// A request signed in by the console's cookie, from the console's own origin.
fn console(app: &TestApp, method: Method, path: &str, cookie: &str) -> reqwest_middleware::RequestBuilder {
    app.client.request(method, app.url(path)).header(COOKIE, cookie).header("sec-fetch-site", "same-origin")
}

fn request_id(response: &Response) -> String {
    response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).expect("x-request-id").to_owned()
}

/// Sends `request`, expects `status`; returns the body and the answer's request id.
async fn send(request: reqwest_middleware::RequestBuilder, status: StatusCode) -> (Value, String) {
    let response = request.send().await.expect("send");
    let id = request_id(&response);
    let actual = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(actual, status, "{text}");
    (serde_json::from_str(&text).unwrap_or(Value::Null), id)
}

/// The admin's view of the log with `query`.
async fn audit(app: &TestApp, cookie: &str, query: &str) -> Value {
    let (page, _) =
        send(console(app, Method::GET, &format!("/api/v1/admin/audit?{query}"), cookie), StatusCode::OK).await;
    page
}

/// The one entry of `action` (of `account_id`): there must be exactly one.
async fn only(app: &TestApp, cookie: &str, action: &str, account_id: i64) -> Value {
    let page = audit(app, cookie, &format!("action={action}&account_id={account_id}")).await;
    let data = page["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "one {action} of account {account_id}: {page}");
    data[0].clone()
}

fn assert_actor(entry: &Value, kind: &str, id: Option<&str>, key: Option<&str>) {
    assert_eq!(entry["actor"]["kind"], kind, "{entry}");
    assert_eq!(entry["actor"]["id"].as_str(), id, "{entry}");
    let prefix = key.map(|key| &key[..aio_gateway::auth::VISIBLE_PREFIX_CHARS]);
    assert_eq!(entry["actor"]["key_prefix"].as_str(), prefix, "{entry}");
}

async fn every_audited_action_is_recorded_once_without_secrets(backend: Backend) {
    let app = spawn(backend).await;
    // By the CLI (domain calls with the CLI's actor): an account and its key.
    let (admin, admin_key) = app.new_account(0).await;
    assert_eq!(admin, 1);
    let (cookie, signed_in) = sign_in(&app, &admin_key).await;

    let entry = only(&app, &cookie, "account.create", admin).await;
    assert_actor(&entry, "cli", None, None);
    assert_eq!((entry["request_id"].clone(), entry["before"].clone()), (Value::Null, Value::Null));
    assert_eq!(entry["after"], json!({"name": "test", "balance": 0}));
    let entry = only(&app, &cookie, "key.create", admin).await;
    assert_actor(&entry, "cli", None, None);
    assert_eq!(entry["after"]["status"], "active");
    assert_eq!(entry["after"]["prefix"].as_str(), Some(&admin_key[..aio_gateway::auth::VISIBLE_PREFIX_CHARS]));

    // The sign-in: by the key, in the request of the answer.
    let entry = only(&app, &cookie, "session.sign_in", admin).await;
    let admin_key_id = entry["actor"]["id"].as_str().expect("key id").to_owned();
    assert!(admin_key_id.starts_with("key_"), "{entry}");
    assert_actor(&entry, "key", Some(&admin_key_id), Some(&admin_key));
    assert_eq!(entry["request_id"], signed_in.as_str());
    assert_eq!(entry["after"], json!({"role": "admin"}));

    // The admin API: an account, a grant, an adjustment; a refused adjustment leaves nothing.
    let (account, created) = send(
        console(&app, Method::POST, "/api/v1/admin/accounts", &cookie).json(&json!({"name": "acme", "credits": 50})),
        StatusCode::CREATED,
    )
    .await;
    let acme = account["account_id"].as_i64().expect("id");
    let entry = only(&app, &cookie, "account.create", acme).await;
    assert_actor(&entry, "admin", Some("1"), Some(&admin_key));
    assert_eq!(entry["request_id"], created.as_str());
    assert_eq!(entry["target"], json!({"account_id": acme, "id": null}));
    assert_eq!(entry["after"], json!({"name": "acme", "balance": 50}));

    let credits = format!("/api/v1/admin/accounts/{acme}/credits");
    // A request id of the client's is kept, and recorded.
    let (_, granted) = send(
        console(&app, Method::POST, &credits, &cookie)
            .header("x-request-id", "ops-ticket-42")
            .json(&json!({"amount": 100, "reason": "invoice 7"})),
        StatusCode::OK,
    )
    .await;
    assert_eq!(granted, "ops-ticket-42");
    let (_, adjusted) = send(
        console(&app, Method::POST, &credits, &cookie).json(&json!({"amount": -30, "reason": "fix"})),
        StatusCode::OK,
    )
    .await;
    let refused = console(&app, Method::POST, &credits, &cookie).json(&json!({"amount": -1000, "reason": "too much"}));
    assert_error(refused.send().await.expect("POST"), StatusCode::CONFLICT, "conflict").await;
    let entry = only(&app, &cookie, "credits.grant", acme).await;
    assert_actor(&entry, "admin", Some("1"), Some(&admin_key));
    assert_eq!(entry["request_id"], granted.as_str());
    assert_eq!(entry["before"], json!({"balance": 50}));
    assert_eq!(entry["after"], json!({"balance": 150, "amount": 100, "reason": "invoice 7"}));
    let entry = only(&app, &cookie, "credits.adjust", acme).await;
    assert_eq!(entry["request_id"], adjusted.as_str());
    assert_eq!((entry["before"]["balance"].clone(), entry["after"]["balance"].clone()), (json!(150), json!(120)));

    // The account's own session: a key made and revoked, the webhook secret rotated.
    let user_key = accounts::create_key(&app.db, &Actor::cli(), acme, Some("first"), None).await.expect("key").api_key;
    let (user, _) = sign_in(&app, &user_key).await;
    let (new_key, made) =
        send(console(&app, Method::POST, "/api/v1/keys", &user).json(&json!({"name": "ci"})), StatusCode::CREATED)
            .await;
    let new_key_id = new_key["key_id"].as_str().expect("key id");
    let made_entries = audit(&app, &cookie, &format!("action=key.create&account_id={acme}")).await;
    let data = made_entries["data"].as_array().expect("data");
    assert_eq!(data.len(), 2, "the CLI's key and the session's: {made_entries}");
    let entry = &data[0];
    assert_actor(entry, "account", Some(&acme.to_string()), Some(&user_key));
    assert_eq!((entry["request_id"].as_str(), entry["target"]["id"].as_str()), (Some(made.as_str()), Some(new_key_id)));
    let (_, revoked) =
        send(console(&app, Method::DELETE, &format!("/api/v1/keys/{new_key_id}"), &user), StatusCode::NO_CONTENT).await;
    // Revoking again changes nothing, and records nothing.
    send(console(&app, Method::DELETE, &format!("/api/v1/keys/{new_key_id}"), &user), StatusCode::NO_CONTENT).await;
    let entry = only(&app, &cookie, "key.revoke", acme).await;
    assert_eq!(entry["request_id"], revoked.as_str());
    assert_eq!(
        (entry["before"].clone(), entry["after"].clone()),
        (json!({"status": "active"}), json!({"status": "revoked"}))
    );
    let (secret, rotated) =
        send(console(&app, Method::POST, "/api/v1/webhooks/secret/rotate", &user), StatusCode::OK).await;
    let entry = only(&app, &cookie, "webhook_secret.rotate", acme).await;
    assert_eq!(entry["request_id"], rotated.as_str());
    assert_actor(&entry, "account", Some(&acme.to_string()), Some(&user_key));

    // A redemption code, redeemed with the API key.
    let (batch, _) = send(
        console(&app, Method::POST, "/api/v1/admin/redemption-codes", &cookie).json(&json!({"credits": 5, "count": 1})),
        StatusCode::CREATED,
    )
    .await;
    let code = batch["codes"][0].as_str().expect("code").to_owned();
    let redeem = app.client.post(app.url("/api/v1/billing/redeem")).header(AUTHORIZATION, bearer(&user_key));
    let (_, redeemed) = send(redeem.json(&json!({"code": code})), StatusCode::OK).await;
    let entry = only(&app, &cookie, "credits.redeem", acme).await;
    assert_eq!(entry["actor"]["kind"], "key");
    assert_actor(&entry, "key", entry["actor"]["id"].as_str(), Some(&user_key));
    assert_eq!(
        (entry["request_id"].as_str(), entry["target"]["id"].as_str()),
        (Some(redeemed.as_str()), batch["batch_id"].as_str())
    );
    assert_eq!((entry["before"]["balance"].clone(), entry["after"]["balance"].clone()), (json!(120), json!(125)));

    // The CLI's own: a grant and a revocation, without a request.
    ledger::change(&app.db, &Actor::cli(), acme, 10, "by hand").await.expect("grant");
    let cli_grants = audit(&app, &cookie, &format!("action=credits.grant&account_id={acme}&actor=cli")).await;
    assert_eq!(cli_grants["data"].as_array().map(Vec::len), Some(1), "{cli_grants}");
    assert_eq!(cli_grants["data"][0]["request_id"], Value::Null);

    // Nowhere a key, secret, code or session token: not in the table, not in the answer.
    let all = console(&app, Method::GET, "/api/v1/admin/audit?limit=100", &cookie).send().await.expect("GET");
    let answer = all.text().await.expect("body");
    type Texts = (Option<String>, Option<String>, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Texts> = on_db!(&app.db, pool =>
        sqlx::query_as("SELECT actor_id, actor_key_prefix, target_id, CAST(before AS TEXT), CAST(after AS TEXT) FROM audit_log")
            .fetch_all(pool)
            .await)
    .expect("rows");
    let stored = format!("{rows:?}");
    let token = |cookie: &str| cookie.split_once('=').expect("name=value").1.to_owned();
    let secrets = [
        admin_key.clone(),
        user_key.clone(),
        new_key["api_key"].as_str().expect("new key").to_owned(),
        secret["secret"].as_str().expect("webhook secret").to_owned(),
        code.clone(),
        token(&cookie),
        token(&user),
    ];
    for text in [&answer, &stored] {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret in the audit log: {text}");
        }
    }
    // Everything done here, each once: 3 for the admin; for acme 1 + 2 + 2 (keys) + 1 + 1 + 1 + 1 + 1.
    let page: Value = serde_json::from_str(&answer).expect("JSON");
    let data = page["data"].as_array().expect("data");
    assert_eq!(data.len(), 13, "{page}");
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("aio_audit_entries_total{action=\"credits.grant\"}"), "the metric");
}

#[tokio::test]
async fn every_audited_action_is_recorded_once_without_secrets_on_postgres() {
    every_audited_action_is_recorded_once_without_secrets(Backend::Postgres).await;
}

#[tokio::test]
async fn every_audited_action_is_recorded_once_without_secrets_on_sqlite() {
    every_audited_action_is_recorded_once_without_secrets(Backend::Sqlite).await;
}

async fn the_log_is_for_admins_with_checked_filters_and_pages(backend: Backend) {
    let app = spawn(backend).await;
    let (admin, admin_key) = app.new_account(0).await;
    let (account, user_key) = app.new_account(0).await;
    for amount in 1..=5 {
        ledger::change(&app.db, &Actor::admin(admin, None), account, amount, "monthly").await.expect("grant");
    }
    let (cookie, _) = sign_in(&app, &admin_key).await;
    let (user, _) = sign_in(&app, &user_key).await;

    // Admins only.
    let refused = console(&app, Method::GET, "/api/v1/admin/audit", &user).send().await.expect("GET");
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden").await;
    let anonymous = app.client.get(app.url("/api/v1/admin/audit")).send().await.expect("GET");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Pages of two, newest first, each entry once.
    let mut seen = Vec::new();
    let mut query = format!("action=credits.grant&account_id={account}&actor=admin:{admin}&limit=2");
    loop {
        let page = audit(&app, &cookie, &query).await;
        for entry in page["data"].as_array().expect("data") {
            seen.push(entry["after"]["amount"].as_i64().expect("amount"));
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("action=credits.grant&account_id={account}&limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, [5, 4, 3, 2, 1]);

    // Filters: another actor, another account, a time range.
    let none = |page: Value| page["data"].as_array().map(Vec::len) == Some(0);
    assert!(none(audit(&app, &cookie, "action=credits.grant&actor=cli").await));
    assert!(none(audit(&app, &cookie, &format!("action=credits.grant&account_id={admin}")).await));
    assert!(none(audit(&app, &cookie, "action=credits.grant&since=2999-01-01T00:00:00Z").await));
    assert!(none(audit(&app, &cookie, "until=2000-01-01T00:00:00Z").await));
    let now =
        audit(&app, &cookie, "action=credits.grant&since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00%2B02:00").await;
    assert_eq!(now["data"].as_array().map(Vec::len), Some(5), "{now}");
    let sign_ins = audit(&app, &cookie, "actor=key").await;
    assert_eq!(sign_ins["data"].as_array().map(Vec::len), Some(2), "the two sign-ins: {sign_ins}");

    // Bad filters: 400 naming the parameter.
    for (query, named) in [
        ("action=credits", "`action`"),
        ("actor=root", "`actor`"),
        ("account_id=abc", "`account_id`"),
        ("account_id=0", "`account_id`"),
        ("since=yesterday", "`since`"),
        ("since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "`since`"),
        ("limit=0", "`limit`"),
        ("limit=101", "`limit`"),
        ("cursor=abc", "`cursor`"),
        ("colour=red", "colour"),
    ] {
        let response =
            console(&app, Method::GET, &format!("/api/v1/admin/audit?{query}"), &cookie).send().await.expect("GET");
        let (_, message) = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(message.contains(named), "{query}: {message}");
    }
}

#[tokio::test]
async fn the_log_is_for_admins_with_checked_filters_and_pages_on_postgres() {
    the_log_is_for_admins_with_checked_filters_and_pages(Backend::Postgres).await;
}

#[tokio::test]
async fn the_log_is_for_admins_with_checked_filters_and_pages_on_sqlite() {
    the_log_is_for_admins_with_checked_filters_and_pages(Backend::Sqlite).await;
}
