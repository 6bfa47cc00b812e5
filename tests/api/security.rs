//! The attacks of the security review (issue 16), each replayed against the gateway: bounded
//! callback URLs and deliveries, a receiver answering NUL bytes, sessions after revocation and
//! sign-out, a tenant trying to open a shared breaker, URL guard gaps, the delivery log as an SSRF
//! oracle, keys multiplying rate limits, forged request ids, and the smaller findings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aio_gateway::audit::Actor;
use aio_gateway::jwt::Role;
use reqwest::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{
    assert_error, assert_ledger_consistent, bearer, jwt_secret, session_token, spawn_dashboard_app_with, TestApp,
};
use crate::receiver::{Receiver, Reply};
use crate::webhooks::{loopback, TestHosts};

async fn driven_with_receiver(schedule: &'static str) -> (TestApp, Receiver, String) {
    let app = TestApp::builder().configure(loopback(schedule)).driven().spawn().await;
    let receiver = Receiver::start("127.0.0.1").await;
    let (_, key) = app.new_account(100).await;
    (app, receiver, key)
}

async fn task_with_callback(app: &TestApp, key: &str, callback_url: &str) -> String {
    let task = app.create_ok(key, json!({"prompt": "A quiet harbour", "callback_url": callback_url})).await;
    task["task_id"].as_str().expect("task_id").to_owned()
}

async fn post_retry(app: &TestApp, key: &str, task_id: &str) -> reqwest::Response {
    let path = format!("/api/v1/tasks/{task_id}/deliveries/retry");
    app.client.post(app.url(&path)).header(AUTHORIZATION, bearer(key)).send().await.expect("POST retry")
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(app.pool()).await.expect("count");
    n
}

// 1. Webhook deliveries cannot fill the disk.

#[tokio::test]
async fn a_callback_url_longer_than_the_cap_is_refused() {
    let (app, receiver, key) = driven_with_receiver("0s").await;
    // The review's 950 KB URL; 2 KiB is the default cap.
    let long = format!("{}?pad={}", receiver.url, "a".repeat(950_000));
    let (_, message) = assert_error(
        app.create(&key, json!({"prompt": "x", "callback_url": long})).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert!(message.contains("callback_url") && message.contains("2048"), "{message}");
    let just_over = format!("{}?pad={}", receiver.url, "a".repeat(2048));
    let response = app.create(&key, json!({"prompt": "x", "callback_url": just_over})).await;
    assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(app.count_tasks().await, 0);
}

#[tokio::test]
async fn manual_retries_are_one_pending_at_a_time_and_capped_per_task() {
    let (app, receiver, key) = driven_with_receiver("0s").await;
    let task_id = task_with_callback(&app, &key, &receiver.url).await;
    app.settle_all().await;

    assert_eq!(post_retry(&app, &key, &task_id).await.status(), StatusCode::ACCEPTED);
    // The review's repeated retries: the second one while the first is pending is refused.
    let again = post_retry(&app, &key, &task_id).await;
    let (_, message) = assert_error(again, StatusCode::CONFLICT, "conflict").await;
    assert!(message.contains("pending"), "{message}");

    // Each delivered re-send allows the next, up to the per-task cap (10 deliveries by default).
    let mut accepted = 1;
    for _ in 0..20 {
        app.settle_all().await;
        let response = post_retry(&app, &key, &task_id).await;
        if response.status() != StatusCode::ACCEPTED {
            let (_, message) = assert_error(response, StatusCode::CONFLICT, "conflict").await;
            assert!(message.contains("10"), "{message}");
            break;
        }
        accepted += 1;
    }
    assert_eq!(accepted, 9, "the settled delivery and 9 manual ones");
    let stored = count(&app, &format!("SELECT count(*) FROM webhook_deliveries WHERE task_id = '{task_id}'")).await;
    assert_eq!(stored, 10);
    // The URL and body are stored once, on the task's first delivery.
    let copies = count(
        &app,
        &format!(
            "SELECT count(*) FROM webhook_deliveries WHERE task_id = '{task_id}' AND (url <> '' OR length(body) > 0)"
        ),
    )
    .await;
    assert_eq!(copies, 1, "manual re-sends refer to the first delivery's URL and body");
    // Every re-send still carries the same bytes.
    let received = receiver.wait_for(10).await;
    assert!(received.iter().all(|r| r.body == received[0].body && r.webhook_id() == received[0].webhook_id()));
}

#[tokio::test]
async fn the_delivery_log_is_paged() {
    let (app, receiver, key) = driven_with_receiver("0s").await;
    let task_id = task_with_callback(&app, &key, &receiver.url).await;
    app.settle_all().await;
    for _ in 0..2 {
        assert_eq!(post_retry(&app, &key, &task_id).await.status(), StatusCode::ACCEPTED);
        app.settle_all().await;
    }
    let path = format!("/api/v1/tasks/{task_id}/deliveries");
    let first = app.get_json(&key, &format!("{path}?limit=2")).await;
    let data = first["data"].as_array().expect("data");
    assert_eq!(data.len(), 2, "{first}");
    assert!(data.iter().all(|d| d["attempts"].as_array().is_some_and(|a| a.len() == 1)), "{first}");
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = app.get_json(&key, &format!("{path}?limit=2&cursor={cursor}")).await;
    assert_eq!(second["data"].as_array().map(Vec::len), Some(1), "{second}");
    assert!(second["next_cursor"].is_null(), "{second}");
    assert_eq!(second["data"][0]["url"], receiver.url.as_str(), "the URL is the task's");
    assert_ne!(second["data"][0]["delivery_id"], data[1]["delivery_id"]);
    let bad = app.get(&key, &format!("{path}?limit=1000")).await;
    assert_error(bad, StatusCode::BAD_REQUEST, "invalid_request").await;
}

// 2. A receiver answering a NUL byte.

#[tokio::test]
async fn a_receiver_answering_nul_bytes_gets_its_attempts_counted_and_the_delivery_dies() {
    let (app, receiver, key) = driven_with_receiver("0s,0s").await;
    let mut answer = b"bad\0answer \xff\xfe end".to_vec();
    answer.extend_from_slice(&[0; 16]);
    receiver.script([Reply::Raw(500, answer.clone()), Reply::Raw(500, answer)]);
    let task_id = task_with_callback(&app, &key, &receiver.url).await;
    // Before the fix the attempt was never recorded and the delivery re-sent forever: this never settled.
    app.settle_all().await;
    let log = app.get_json(&key, &format!("/api/v1/tasks/{task_id}/deliveries")).await;
    let delivery = &log["data"][0];
    assert_eq!(delivery["status"], "dead", "{log}");
    let attempts = delivery["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{log}");
    // A loopback receiver is private: its answer is not kept at all (stored excerpts of public ones
    // lose their NUL bytes: `webhooks::delivery` unit tests).
    assert!(attempts.iter().all(|a| a["status_code"] == 500 && a["response_excerpt"].is_null()), "{log}");
    assert_eq!(receiver.received().len(), 2, "sent exactly as often as scheduled");
}

#[tokio::test]
async fn an_attempt_whose_details_the_database_refuses_still_counts() {
    let (app, receiver, key) = driven_with_receiver("0s,0s").await;
    receiver.script([Reply::Status(500), Reply::Status(500)]);
    // The database refuses the attempt's detail, as PostgreSQL refused a NUL byte in it.
    for statement in [
        "CREATE FUNCTION refuse_details() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.error LIKE 'HTTP %' THEN RAISE EXCEPTION 'refused detail'; END IF;
             RETURN NEW;
         END $$",
        "CREATE TRIGGER refuse_details BEFORE INSERT ON webhook_attempts FOR EACH ROW EXECUTE FUNCTION refuse_details()",
    ] {
        sqlx::query(statement).execute(app.pool()).await.expect("install the trigger");
    }
    let task_id = task_with_callback(&app, &key, &receiver.url).await;
    // Before the fix the attempt was never recorded and the delivery re-sent forever: this never settled.
    app.settle_all().await;
    let log = app.get_json(&key, &format!("/api/v1/tasks/{task_id}/deliveries")).await;
    let delivery = &log["data"][0];
    assert_eq!(delivery["status"], "dead", "{log}");
    let attempts = delivery["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{log}");
    assert!(attempts.iter().all(|a| a["error"] == "The attempt's details could not be recorded."), "{log}");
    assert_eq!(receiver.received().len(), 2, "sent exactly as often as scheduled");
}

// 4. Sessions end with their key and at sign-out; minting a key needs a fresh sign-in.

async fn sign_in(app: &TestApp, key: &str) -> String {
    let response =
        app.client.post(app.url("/api/v1/session")).json(&json!({"api_key": key})).send().await.expect("sign in");
    assert_eq!(response.status(), StatusCode::OK);
    let set_cookie = response.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).expect("Set-Cookie");
    set_cookie.split(';').next().expect("name=value").to_owned()
}

fn with_cookie(app: &TestApp, method: Method, path: &str, cookie: &str) -> reqwest_middleware::RequestBuilder {
    app.client.request(method, app.url(path)).header(COOKIE, cookie).header("sec-fetch-site", "same-origin")
}

#[tokio::test]
async fn a_session_ends_when_the_key_it_was_made_from_is_revoked() {
    let app = TestApp::builder().configure(|s| s.auth.key_cache_ttl = Duration::from_millis(1)).spawn().await;
    let (_, key) = app.new_account(100).await;
    let cookie = sign_in(&app, &key).await;
    let keys = crate::helpers::json_of(with_cookie(&app, Method::GET, "/api/v1/keys", &cookie)).await;
    let key_id = keys["data"][0]["key_id"].as_str().expect("key_id").to_owned();
    // Revoked by another session (another tab, or an admin): this session must end with it.
    let other = sign_in(&app, &key).await;
    let revoked = with_cookie(&app, Method::DELETE, &format!("/api/v1/keys/{key_id}"), &other).send().await;
    assert_eq!(revoked.expect("revoke").status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(20)).await;
    for path in ["/api/v1/session", "/api/v1/keys", "/api/v1/billing/credits"] {
        let response = with_cookie(&app, Method::GET, path, &cookie).send().await.expect("GET");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let minted = with_cookie(&app, Method::POST, "/api/v1/keys", &cookie).json(&json!({"name": "back door"})).send();
    assert_eq!(minted.await.expect("POST keys").status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_signed_out_session_token_no_longer_works() {
    let app = TestApp::builder().spawn().await;
    let (_, key) = app.new_account(100).await;
    let cookie = sign_in(&app, &key).await;
    let out = with_cookie(&app, Method::DELETE, "/api/v1/session", &cookie).send().await.expect("sign out");
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    // The copied token, replayed after sign-out.
    let replay = with_cookie(&app, Method::GET, "/api/v1/session", &cookie).send().await.expect("GET");
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
    let credits = with_cookie(&app, Method::GET, "/api/v1/billing/credits", &cookie).send().await.expect("GET");
    assert_eq!(credits.status(), StatusCode::UNAUTHORIZED);
}

/// An HS256 session token signed with the test secret, with these claims.
fn token_with(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(jwt_secret().as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).expect("sign")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[tokio::test]
async fn minting_a_key_needs_a_recent_sign_in() {
    let app = spawn_dashboard_app_with(|_| {}).await;
    let (account, _) = app.new_account(0).await;
    // A token stolen an hour ago, still within its lifetime.
    let old = token_with(json!({"sub": account.to_string(), "role": "user", "iat": now() - 3600, "exp": now() + 3600}));
    assert_eq!(app.with_bearer(Method::GET, "/api/v1/keys", &old).send().await.expect("GET").status(), StatusCode::OK);
    let response = app.with_bearer(Method::POST, "/api/v1/keys", &old).json(&json!({})).send().await.expect("POST");
    let (_, message) = assert_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    assert!(message.contains("sign in again"), "{message}");
    let fresh = session_token(account, Role::User);
    let response = app.with_bearer(Method::POST, "/api/v1/keys", &fresh).json(&json!({})).send().await.expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
}

// 5. One tenant cannot open a route's breaker for everyone.

#[tokio::test]
async fn huge_simulator_delays_are_clamped_and_cannot_open_the_shared_breaker() {
    let app = TestApp::builder().driven().spawn().await;
    let (_, attacker) = app.new_account(100).await;
    let (_, victim) = app.new_account(100).await;
    let mut attacks = Vec::new();
    for i in 0..4 {
        let task =
            app.create_ok(&attacker, json!({"prompt": format!("x{i} [simulate:delay=18446744073709551615]")})).await;
        attacks.push(task["task_id"].as_str().expect("task_id").to_owned());
    }
    app.run_pending().await;
    for task_id in &attacks {
        assert_eq!(app.get_task(&attacker, task_id).await["status"], "running", "the clamped delay is accepted");
    }
    let task = app.create_ok(&victim, json!({"prompt": "An ordinary request"})).await;
    let task_id = task["task_id"].as_str().expect("task_id");
    app.run_pending().await;
    assert_eq!(app.get_task(&victim, task_id).await["status"], "running", "the route is not open");
    assert_eq!(app.wait_terminal(&victim, task_id).await["status"], "succeeded");
    assert_ledger_consistent(app.pool()).await;
}

// 6. URL guard gaps.

#[tokio::test]
async fn embedded_ipv4_prefixes_are_refused_and_urls_are_stored_normalised() {
    let app = TestApp::builder().driven().spawn().await;
    let (_, key) = app.new_account(100).await;
    for url in [
        "https://[64:ff9b:1::7f00:1]/hook",
        "https://[64:ff9b:1::a00:1]/hook",
        "https://[::ffff:0:7f00:1]/hook",
        "https://[::ffff:0:a9fe:a9fe]/hook",
        "https://[2002:7f00:1::1]/hook",
        "https://[2002:a9fe:a9fe::1]/hook",
        "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",
    ] {
        let response = app.create(&key, json!({"prompt": "x", "callback_url": url})).await;
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    // Checked as example.com; a client library reading it as RFC 3986 would connect to 127.0.0.1.
    let task = app.create_ok(&key, json!({"prompt": "x", "callback_url": r"https://example.com\@127.0.0.1/"})).await;
    assert_eq!(task["callback_url"], "https://example.com/@127.0.0.1/", "{task}");
}

// 7. The delivery log is no SSRF oracle.

#[tokio::test]
async fn delivery_errors_do_not_tell_private_names_from_unknown_ones_and_private_answers_stay_unread() {
    let hosts = TestHosts(HashMap::from([("internal.test", "10.1.2.3".parse().expect("ip"))]));
    let app = TestApp::builder().resolver(Arc::new(hosts)).configure(loopback("0s")).driven().spawn().await;
    let receiver = Receiver::start("127.0.0.1").await;
    receiver.script([Reply::Status(500)]);
    let (_, key) = app.new_account(100).await;
    let private = task_with_callback(&app, &key, "http://internal.test/hook").await;
    let unknown = task_with_callback(&app, &key, "http://nowhere.test/hook").await;
    let opened = task_with_callback(&app, &key, &receiver.url).await;
    app.settle_all().await;
    let error_of = |log: &Value| log["data"][0]["attempts"][0]["error"].as_str().unwrap_or_default().to_owned();
    let private_log = app.get_json(&key, &format!("/api/v1/tasks/{private}/deliveries")).await;
    let unknown_log = app.get_json(&key, &format!("/api/v1/tasks/{unknown}/deliveries")).await;
    assert!(!error_of(&private_log).is_empty(), "{private_log}");
    assert_eq!(error_of(&private_log), error_of(&unknown_log));
    assert!(!error_of(&private_log).contains("internal.test"), "{private_log}");
    // Inside allowed_private_cidrs the status is logged, the answer is not.
    let opened_log = app.get_json(&key, &format!("/api/v1/tasks/{opened}/deliveries")).await;
    let attempt = &opened_log["data"][0]["attempts"][0];
    assert_eq!(attempt["status_code"], 500, "{opened_log}");
    assert!(attempt["response_excerpt"].is_null(), "{opened_log}");
}

// 8. Keys do not multiply rate limits.

#[tokio::test]
async fn an_account_has_at_most_the_configured_number_of_keys() {
    let app = spawn_dashboard_app_with(|_| {}).await;
    let (account, _) = app.new_account(0).await;
    let session = session_token(account, Role::User);
    let mut created = 1;
    for _ in 0..30 {
        let response = app.with_bearer(Method::POST, "/api/v1/keys", &session).json(&json!({})).send().await;
        let response = response.expect("POST");
        if response.status() != StatusCode::CREATED {
            assert_error(response, StatusCode::CONFLICT, "conflict").await;
            break;
        }
        created += 1;
    }
    assert_eq!(created, 20, "the default cap of active keys");
}

#[tokio::test]
async fn more_keys_do_not_mean_more_requests() {
    let app = TestApp::builder()
        .configure(|s| {
            s.rate_limit.requests_per_minute = std::num::NonZeroU32::new(60).expect("60");
            s.rate_limit.account_requests_per_minute = std::num::NonZeroU32::new(60).expect("60");
            s.rate_limit.burst = std::num::NonZeroU32::new(4).expect("4");
        })
        .driven()
        .spawn()
        .await;
    let (account, first) = app.new_account(10).await;
    let mut keys = vec![first];
    for i in 0..3 {
        let key = aio_gateway::accounts::create_key(&app.db, &Actor::cli(), account, Some(&format!("k{i}")), None)
            .await
            .expect("key");
        keys.push(key.api_key);
    }
    // Four keys, each well within its own burst of 4: the account's burst of 4 still bounds them all.
    let mut passed = 0;
    for key in &keys {
        for _ in 0..3 {
            let response = app.get(key, "/api/v1/billing/credits").await;
            if response.status() == StatusCode::OK {
                passed += 1;
            } else {
                assert_error(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
            }
        }
    }
    assert!((4..=5).contains(&passed), "{passed} of 12 passed");
}

// 9. Admin amounts.

#[tokio::test]
async fn an_admin_amount_of_i64_min_is_refused() {
    let app = spawn_dashboard_app_with(|_| {}).await;
    let (admin, _) = app.new_account(0).await;
    let (account, _) = app.new_account(10).await;
    let token = session_token(admin, Role::Admin);
    for amount in [i64::MIN, i64::MIN + 1, i64::MAX, -1_000_000_000_001] {
        let response = app
            .with_bearer(Method::POST, &format!("/api/v1/admin/accounts/{account}/credits"), &token)
            .json(&json!({"amount": amount, "reason": "overflow"}))
            .send()
            .await
            .expect("POST credits");
        assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    assert_ledger_consistent(app.pool()).await;
}

// 10. Request ids.

#[tokio::test]
async fn request_ids_that_could_forge_log_fields_are_replaced() {
    let app = TestApp::builder().driven().spawn().await;
    let long = "a".repeat(20_000);
    for sent in ["two words", "x key=value status=200", long.as_str(), "ü", ""] {
        let response = app.client.get(app.url("/healthz")).header("x-request-id", sent).send().await.expect("GET");
        let echoed = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(echoed.starts_with("req_") && echoed.len() < 64, "{sent:.40} came back as {echoed:.40}");
    }
    let fine = "trace-0123_ABC";
    let response = app.client.get(app.url("/healthz")).header("x-request-id", fine).send().await.expect("GET");
    assert_eq!(response.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some(fine));
}

// 11. The smaller findings.

#[tokio::test]
async fn a_session_token_not_valid_yet_is_refused() {
    let app = spawn_dashboard_app_with(|_| {}).await;
    let (account, _) = app.new_account(0).await;
    let future =
        token_with(json!({"sub": account.to_string(), "role": "user", "nbf": now() + 3600, "exp": now() + 7200}));
    let response = app.with_bearer(Method::GET, "/api/v1/keys", &future).send().await.expect("GET");
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test]
async fn an_oversized_provider_callback_gets_the_json_envelope() {
    let app = TestApp::builder().driven().spawn().await;
    let body = vec![b'a'; 2 * 1024 * 1024];
    let response = app
        .client
        .post(app.url("/api/v1/callbacks/kie/sometoken"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST callback");
    assert_error(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

// 3. Slowloris and connection exhaustion.

/// Reads what the server sends until it closes the connection; `None` if it is still open after
/// `bound` (the bound only keeps a broken server from hanging the suite).
async fn read_until_closed(stream: &mut tokio::net::TcpStream, bound: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    match tokio::time::timeout(bound, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

fn address_of(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_request_head_is_closed() {
    use tokio::io::AsyncWriteExt;
    let app =
        TestApp::builder().configure(|s| s.server.header_read_timeout = Duration::from_secs(1)).driven().spawn().await;
    let mut slow = tokio::net::TcpStream::connect(address_of(&app)).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ").await.expect("half a head");
    assert!(read_until_closed(&mut slow, Duration::from_secs(30)).await.is_some(), "the half-sent head was cut off");
    let mut silent = tokio::net::TcpStream::connect(address_of(&app)).await.expect("connect");
    assert!(read_until_closed(&mut silent, Duration::from_secs(30)).await.is_some(), "a silent connection is closed");
    // Others are served meanwhile and after.
    assert_eq!(app.client.get(app.url("/healthz")).send().await.expect("GET").status(), StatusCode::OK);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::builder()
        .configure(|s| {
            s.server.idle_timeout = Duration::from_secs(1);
            s.server.header_read_timeout = Duration::from_secs(60);
        })
        .driven()
        .spawn()
        .await;
    let mut idle = tokio::net::TcpStream::connect(address_of(&app)).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n").await.expect("one request, kept alive");
    let answer = read_until_closed(&mut idle, Duration::from_secs(30)).await.expect("closed once idle");
    assert!(answer.starts_with("HTTP/1.1 200"), "the request was answered first: {answer}");
}

#[tokio::test]
async fn a_request_body_that_never_arrives_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    let app =
        TestApp::builder().configure(|s| s.server.request_body_timeout = Duration::from_secs(1)).driven().spawn().await;
    let (_, key) = app.new_account(10).await;
    let mut slow = tokio::net::TcpStream::connect(address_of(&app)).await.expect("connect");
    let head = format!(
        "POST /api/v1/images/generations HTTP/1.1\r\nHost: gateway\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"prompt\": \"a",
        bearer(&key)
    );
    slow.write_all(head.as_bytes()).await.expect("the head and a little of the body");
    let answer = read_until_closed(&mut slow, Duration::from_secs(30)).await.expect("the connection is closed");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert_eq!(app.count_tasks().await, 0);
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_at_once() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::builder()
        .configure(|s| {
            s.server.max_connections = std::num::NonZeroUsize::new(8).expect("8");
            s.server.header_read_timeout = Duration::from_secs(60);
        })
        .driven()
        .spawn()
        .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = tokio::net::TcpStream::connect(address_of(&app)).await.expect("connect");
        stream.write_all(b"GET /healthz HTTP/1.1\r\n").await.expect("a head, never finished");
        held.push(stream);
    }
    // Let the server take them all before the ninth.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ninth = tokio::net::TcpStream::connect(address_of(&app)).await.expect("the kernel accepts it");
    let _ = ninth.write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n").await;
    let answer = read_until_closed(&mut ninth, Duration::from_secs(30)).await.expect("closed at once");
    assert!(answer.is_empty(), "no answer beyond the cap: {answer}");
    drop(held);
    // Slots free again once those are gone.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = app.client.get(app.url("/healthz")).send().await {
            assert_eq!(response.status(), StatusCode::OK);
            break;
        }
        assert!(tokio::time::Instant::now() < give_up, "the server never took connections again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_origin_with_another_scheme_is_cross_site() {
    let app = TestApp::builder()
        .configure(|s| s.server.public_base_url = "https://gateway.example.com".into())
        .driven()
        .spawn()
        .await;
    let (_, key) = app.new_account(100).await;
    let response =
        app.client.post(app.url("/api/v1/session")).json(&json!({"api_key": key})).send().await.expect("sign in");
    let set_cookie = response.headers().get(SET_COOKIE).and_then(|v| v.to_str().ok()).expect("Set-Cookie").to_owned();
    assert!(set_cookie.starts_with("__Host-aio_session=") && set_cookie.contains("Secure"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().expect("pair").to_owned();
    // The gateway is reached over https: a plain-http page on the same host is another origin.
    let create_from = |origin: String| {
        app.client
            .post(app.url("/api/v1/images/generations"))
            .header(COOKIE, &cookie)
            .header("origin", origin)
            .json(&json!({"prompt": "x"}))
            .send()
    };
    let forged = create_from(app.address.clone()).await.expect("POST");
    assert_error(forged, StatusCode::FORBIDDEN, "forbidden").await;
    let same = create_from(app.address.replacen("http://", "https://", 1)).await.expect("POST");
    assert!(same.status().is_success(), "{}", same.status());
}

#[tokio::test]
async fn callbacks_bring_a_poll_forward_at_most_once_per_spacing() {
    let app = TestApp::builder().driven().spawn().await;
    let (_, key) = app.new_account(100).await;
    let task = app.create_ok(&key, json!({"prompt": "x [simulate:delay=600000]"})).await;
    let task_id = task["task_id"].as_str().expect("task_id").to_owned();
    app.run_pending().await;
    assert_eq!(app.get_task(&key, &task_id).await["status"], "running");
    let later = "UPDATE tasks SET next_poll_at = now() + interval '1 hour' WHERE id = $1";
    let due = "SELECT count(*) FROM tasks WHERE id = $1 AND next_poll_at <= now()";
    let is_due = |sql: &'static str| {
        let pool = app.pool().clone();
        let id = task_id.clone();
        async move { sqlx::query_as::<_, (i64,)>(sql).bind(id).fetch_one(&pool).await.expect("query").0 == 1 }
    };
    sqlx::query(later).bind(&task_id).execute(app.pool()).await.expect("schedule");
    aio_gateway::tasks::callback_arrived(&app.db, &task_id).await.expect("callback");
    assert!(is_due(due).await, "the first callback is looked at now");
    // The poll it triggered happened; a flood of callbacks right after does not poll again now.
    sqlx::query(later).bind(&task_id).execute(app.pool()).await.expect("schedule");
    for _ in 0..20 {
        aio_gateway::tasks::callback_arrived(&app.db, &task_id).await.expect("callback");
    }
    assert!(!is_due(due).await, "not polled again at once");
    let soon = "SELECT count(*) FROM tasks WHERE id = $1 AND next_poll_at <= now() + interval '3 seconds'";
    assert!(is_due(soon).await, "but soon, not after the usual wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_key_can_go_to_a_private_file_instead_of_stdout() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("folder");
    let url = format!("sqlite://{}", dir.path().join("gateway.db").display());
    let key_file = dir.path().join("bootstrap-key");
    let file = key_file.to_str().expect("path");
    let env = [("AIO__BOOTSTRAP__ENABLED", "true"), ("AIO__BOOTSTRAP__KEY_FILE", file)];
    let mut gateway =
        crate::helpers::Gateway::start_with(&url, &dir.path().join("files"), &dir.path().join("log"), "all", &env);
    let client = crate::helpers::http_client();
    gateway.ready(&client).await;
    let key = std::fs::read_to_string(&key_file).expect("the key file");
    let mode = std::fs::metadata(&key_file).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let credits = client
        .get(format!("{}/api/v1/billing/credits", gateway.address))
        .header(AUTHORIZATION, bearer(key.trim()))
        .send()
        .await
        .expect("GET");
    assert_eq!(credits.status(), StatusCode::OK);
    let log = std::fs::read_to_string(dir.path().join("log")).expect("log");
    assert!(!log.contains(key.trim()), "the key is in no log");
    gateway.kill();
}
