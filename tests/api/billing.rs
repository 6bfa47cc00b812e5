//! Top-up (issue 21) on both backends: packages, orders through the fake Stripe, Stripe's webhook
//! signed by the official `stripe` npm package (tests/billing/sign.mjs, installed by `.ci/billing`),
//! applied exactly once whatever the replays, duplicates, races and order of events; refunds and
//! disputes; redemption codes under a race.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use aio_gateway::audit::Actor;
use aio_gateway::config::{Package, Settings};
use aio_gateway::jwt::Role;
use aio_gateway::on_db;
use reqwest::header::AUTHORIZATION;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::fakes::stripe::{fixture, FakeStripe, SECRET_KEY, WEBHOOK_SECRET};
use crate::helpers::{
    assert_error, assert_ledger_consistent_on, bearer, jwt_secret, session_token, Backend, TestApp, JWT_SECRET_ENV,
};
use crate::storage::both;

both!(
    a_paid_order_credits_once,
    signatures_are_checked_as_stripe_specifies,
    a_refund_takes_back_what_is_unspent,
    a_code_is_redeemed_once_under_a_race,
);

/// 1000 credits for $5.00.
fn starter() -> Package {
    Package { id: "starter".into(), credits: 1000, amount: 500, currency: "usd".into(), label: "1,000 credits".into() }
}

fn configure(settings: &mut Settings, stripe: &FakeStripe) {
    settings.billing.packages = vec![
        starter(),
        Package {
            id: "pro".into(),
            credits: 12_000,
            amount: 5000,
            currency: "usd".into(),
            label: "12,000 credits".into(),
        },
    ];
    settings.billing.stripe.api_base = stripe.base_url().to_owned();
    settings.billing.stripe.secret_key = Some(SECRET_KEY.into());
    settings.billing.stripe.webhook_secrets = vec![WEBHOOK_SECRET.into()];
    // Admin routes take HS256 session tokens.
    jwt_secret();
    settings.auth.jwt.algorithm = aio_gateway::config::JwtAlgorithm::Hs256;
    settings.auth.jwt.secret_env = JWT_SECRET_ENV.into();
}

async fn spawn(backend: Backend, stripe: &FakeStripe) -> TestApp {
    TestApp::builder().backend(backend).configure(|s| configure(s, stripe)).spawn().await
}

/// One payload to sign: the secrets to sign it with (one `v1` each) and the timestamp (now when none).
struct ToSign<'a> {
    payload: &'a str,
    secrets: &'a [&'a str],
    timestamp: Option<i64>,
}

/// `Stripe-Signature` headers made by the official `stripe` package's `generateTestHeaderString`.
/// Fails loudly when Node.js or the package is missing: run `.ci/billing`.
fn sign_all(items: &[ToSign<'_>]) -> Vec<String> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/billing");
    assert!(
        folder.join("node_modules/stripe").is_dir(),
        "the official stripe npm package is not installed in tests/billing/node_modules: run .ci/billing"
    );
    let input: Vec<Value> = items
        .iter()
        .map(|item| json!({"payload": item.payload, "secrets": item.secrets, "timestamp": item.timestamp}))
        .collect();
    let mut child = Command::new("node")
        .arg("sign.mjs")
        .current_dir(&folder)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run node tests/billing/sign.mjs (Node.js is needed: run .ci/billing)");
    child.stdin.take().unwrap().write_all(serde_json::to_string(&input).unwrap().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "sign.mjs failed");
    serde_json::from_slice(&output.stdout).expect("sign.mjs prints a JSON array")
}

fn sign(payload: &str) -> String {
    sign_all(&[ToSign { payload, secrets: &[WEBHOOK_SECRET], timestamp: None }]).remove(0)
}

/// A Stripe event of `kind` about `object`, from Stripe's event fixture.
fn event(kind: &str, object: Value) -> String {
    let mut event = fixture("event");
    event["id"] = json!(format!("evt_{}", aio_gateway::ids::new_secret(24)));
    event["type"] = json!(kind);
    event["created"] = json!(chrono::Utc::now().timestamp());
    event["api_version"] = json!("2025-08-27.basil");
    event["data"] = json!({"object": object});
    event.to_string()
}

/// The session as Stripe reports it once paid.
fn paid(session: &Value, payment_intent: &str) -> Value {
    let mut session = session.clone();
    session["status"] = json!("complete");
    session["payment_status"] = json!("paid");
    session["payment_intent"] = json!(payment_intent);
    session
}

fn expired(session: &Value) -> Value {
    let mut session = session.clone();
    session["status"] = json!("expired");
    session
}

/// A charge of `payment_intent` with `refunded` of `amount` refunded, from Stripe's charge fixture.
fn refunded_charge(payment_intent: &str, amount: i64, refunded: i64) -> Value {
    let mut charge = fixture("charge");
    charge["payment_intent"] = json!(payment_intent);
    charge["amount"] = json!(amount);
    charge["amount_captured"] = json!(amount);
    charge["amount_refunded"] = json!(refunded);
    charge["refunded"] = json!(refunded == amount);
    charge
}

async fn deliver(app: &TestApp, payload: &str, signature: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/api/v1/billing/stripe/webhook"))
        .header("content-type", "application/json; charset=utf-8")
        .body(payload.to_owned());
    if let Some(signature) = signature {
        request = request.header("stripe-signature", signature);
    }
    request.send().await.unwrap()
}

/// Delivers a signed event; returns its outcome (`applied`, `duplicate`, `ignored`).
async fn deliver_ok(app: &TestApp, payload: &str) -> String {
    let response = deliver(app, payload, Some(&sign(payload))).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body["outcome"].as_str().unwrap().to_owned()
}

async fn order(app: &TestApp, key: &str, package: &str) -> Value {
    let response = app
        .client
        .post(app.url("/api/v1/billing/orders"))
        .header(AUTHORIZATION, bearer(key))
        .json(&json!({"package_id": package}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn order_status(app: &TestApp, key: &str, order_id: &str) -> Value {
    let orders = app.get_json(key, "/api/v1/billing/orders").await;
    orders["data"].as_array().unwrap().iter().find(|o| o["order_id"] == order_id).cloned().expect("the order is listed")
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let (n,): (i64,) = on_db!(&app.db, pool => sqlx::query_as(sql).fetch_one(pool).await).unwrap();
    n
}

async fn buy_and_pay(app: &TestApp, stripe: &FakeStripe, key: &str, payment_intent: &str) -> (String, Value) {
    let checkout = order(app, key, "starter").await;
    let session = stripe.session_of_url(checkout["checkout_url"].as_str().unwrap());
    let paid = paid(&session, payment_intent);
    assert_eq!(deliver_ok(app, &event("checkout.session.completed", paid.clone())).await, "applied");
    (checkout["order_id"].as_str().unwrap().to_owned(), paid)
}

async fn a_paid_order_credits_once(backend: Backend) {
    let stripe = FakeStripe::start().await;
    let app = spawn(backend, &stripe).await;
    let (account, key) = app.new_account(0).await;

    let packages = app.get_json(&key, "/api/v1/billing/packages").await;
    assert_eq!(
        packages["data"][0],
        json!({"id": "starter", "credits": 1000, "amount": 500, "currency": "usd", "label": "1,000 credits"})
    );

    let checkout = order(&app, &key, "starter").await;
    let order_id = checkout["order_id"].as_str().unwrap().to_owned();
    assert_eq!(checkout["status"], "pending");
    let url = checkout["checkout_url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/c/pay/cs_test_", stripe.base_url())), "{url}");

    // The session was created as Stripe takes it: form-encoded, secret key, the order as idempotency key.
    let request = stripe.requests().pop().unwrap();
    assert_eq!(request.header("authorization"), Some(format!("Bearer {SECRET_KEY}").as_str()));
    assert_eq!(request.header("idempotency-key"), Some(order_id.as_str()));
    let form: std::collections::HashMap<String, String> = form_urlencoded::parse(&request.body).into_owned().collect();
    assert_eq!(form["mode"], "payment");
    assert_eq!(form["line_items[0][price_data][unit_amount]"], "500");
    assert_eq!(form["line_items[0][price_data][currency]"], "usd");
    assert_eq!(form["line_items[0][quantity]"], "1");
    assert_eq!(form["client_reference_id"], order_id);
    assert_eq!(form["metadata[order_id]"], order_id);
    assert_eq!(form["success_url"], format!("{}/console#/billing?order={order_id}&result=paid", app.address));
    assert_eq!(form["cancel_url"], format!("{}/console#/billing?order={order_id}&result=cancelled", app.address));
    assert_eq!(order_status(&app, &key, &order_id).await["status"], "pending");

    // An unpaid completion (a delayed payment method) grants nothing yet.
    let session = stripe.session_of_url(url);
    let mut unpaid = paid(&session, "pi_3Delayed");
    unpaid["payment_status"] = json!("unpaid");
    assert_eq!(deliver_ok(&app, &event("checkout.session.completed", unpaid)).await, "ignored");
    app.assert_balance(&key, 0, 0).await;

    // Paid: credited once.
    let payload = event("checkout.session.completed", paid(&session, "pi_3PaidOnce"));
    let signature = sign(&payload);
    let first = deliver(&app, &payload, Some(&signature)).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.json::<Value>().await.unwrap()["outcome"], "applied");
    app.assert_balance(&key, 1000, 0).await;
    let listed = order_status(&app, &key, &order_id).await;
    assert_eq!((listed["status"].as_str(), listed["credits"].as_i64()), (Some("paid"), Some(1000)), "{listed}");

    // The very same request replayed, and the same event re-signed (a duplicate delivery): nothing more.
    let replay = deliver(&app, &payload, Some(&signature)).await;
    assert_eq!(replay.json::<Value>().await.unwrap()["outcome"], "duplicate");
    assert_eq!(deliver_ok(&app, &payload).await, "duplicate");
    // Another event about the same payment: applied, but the order was paid already.
    assert_eq!(
        deliver_ok(&app, &event("checkout.session.async_payment_succeeded", paid(&session, "pi_3PaidOnce"))).await,
        "applied"
    );
    // Out of order: the session's expiry arrives after its payment; the order stays paid.
    assert_eq!(deliver_ok(&app, &event("checkout.session.expired", expired(&session))).await, "applied");
    assert_eq!(order_status(&app, &key, &order_id).await["status"], "paid");
    app.assert_balance(&key, 1000, 0).await;

    // An event of a kind the gateway does not act on: 200, ignored.
    assert_eq!(
        deliver_ok(&app, &event("customer.created", json!({"id": "cus_1", "object": "customer"}))).await,
        "ignored"
    );

    // A second order expires unpaid.
    let second = order(&app, &key, "pro").await;
    let second_session = stripe.session_of_url(second["checkout_url"].as_str().unwrap());
    assert_eq!(deliver_ok(&app, &event("checkout.session.expired", expired(&second_session))).await, "applied");
    assert_eq!(order_status(&app, &key, second["order_id"].as_str().unwrap()).await["status"], "expired");

    // A third order: 20 concurrent deliveries of its payment event, and of another event about it.
    let third = order(&app, &key, "pro").await;
    let third_session = stripe.session_of_url(third["checkout_url"].as_str().unwrap());
    let payloads = [
        event("checkout.session.completed", paid(&third_session, "pi_3Raced")),
        event("checkout.session.async_payment_succeeded", paid(&third_session, "pi_3Raced")),
    ];
    let signatures: Vec<String> = sign_all(
        &payloads
            .iter()
            .map(|payload| ToSign { payload, secrets: &[WEBHOOK_SECRET], timestamp: None })
            .collect::<Vec<_>>(),
    );
    let deliveries = (0..20).map(|i| deliver(&app, &payloads[i % 2], Some(&signatures[i % 2])));
    let outcomes = futures::future::join_all(deliveries).await;
    let mut applied = 0;
    for response in outcomes {
        assert_eq!(response.status(), StatusCode::OK);
        let outcome = response.json::<Value>().await.unwrap()["outcome"].as_str().unwrap().to_owned();
        applied += usize::from(outcome == "applied");
    }
    assert_eq!(applied, 2, "each event id applies once");
    app.assert_balance(&key, 13_000, 0).await;
    let grants =
        count(&app, &format!("SELECT count(*) FROM ledger WHERE account_id = {account} AND kind = 'grant'")).await;
    assert_eq!(grants, 2, "one grant per paid order");
    let audited = format!(
        "SELECT count(*) FROM audit_log WHERE target_account_id = {account} AND action = 'credits.top_up'
           AND actor_kind = 'system' AND actor_id = 'stripe' AND target_id IS NOT NULL"
    );
    assert_eq!(count(&app, &audited).await, 2, "one audit entry per paid order");
    assert_eq!(order_status(&app, &key, third["order_id"].as_str().unwrap()).await["status"], "paid");
    assert_ledger_consistent_on(&app.db).await;
}

async fn signatures_are_checked_as_stripe_specifies(backend: Backend) {
    let stripe = FakeStripe::start().await;
    let app = spawn(backend, &stripe).await;
    let (_, key) = app.new_account(0).await;
    let checkout = order(&app, &key, "starter").await;
    let session = stripe.session_of_url(checkout["checkout_url"].as_str().unwrap());
    let payload = event("checkout.session.completed", paid(&session, "pi_3Signed"));
    let now = chrono::Utc::now().timestamp();
    let signed = sign_all(&[
        // Signed with another secret.
        ToSign { payload: &payload, secrets: &["whsec_someone_else"], timestamp: None },
        // Right secret, timestamp past the 300 s tolerance (a replay of an old delivery).
        ToSign { payload: &payload, secrets: &[WEBHOOK_SECRET], timestamp: Some(now - 301) },
        // Right secret, 200 s old: within the tolerance.
        ToSign { payload: &payload, secrets: &[WEBHOOK_SECRET], timestamp: Some(now - 200) },
    ]);
    let refusals = [
        (None, "missing"),
        (Some(signed[0].as_str()), "bad signature"),
        (Some(signed[1].as_str()), "stale timestamp"),
        (Some("t=abc,v1=00"), "malformed"),
    ];
    for (signature, case) in refusals {
        let response = deliver(&app, &payload, signature).await;
        let (_, message) = assert_error(response, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(message.contains("Stripe-Signature"), "{case}: {message}");
    }
    // The body changed after signing.
    let tampered = payload.replace("\"paid\"", "\"paid\" ");
    assert_error(deliver(&app, &tampered, Some(&signed[2])).await, StatusCode::BAD_REQUEST, "invalid_request").await;
    // Nothing changed.
    assert_eq!(count(&app, "SELECT count(*) FROM stripe_events").await, 0);
    app.assert_balance(&key, 0, 0).await;
    assert_eq!(order_status(&app, &key, checkout["order_id"].as_str().unwrap()).await["status"], "pending");

    // Within the tolerance: accepted.
    let accepted = deliver(&app, &payload, Some(&signed[2])).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    app.assert_balance(&key, 1000, 0).await;

    // During a secret roll Stripe signs with both secrets: several v1 values, one of them ours.
    let second = order(&app, &key, "starter").await;
    let session = stripe.session_of_url(second["checkout_url"].as_str().unwrap());
    let payload = event("checkout.session.completed", paid(&session, "pi_3Rolled"));
    let rolled =
        sign_all(&[ToSign { payload: &payload, secrets: &["whsec_expiring_old", WEBHOOK_SECRET], timestamp: None }]);
    assert_eq!(rolled[0].matches(",v1=").count(), 2, "{}", rolled[0]);
    let response = deliver(&app, &payload, Some(&rolled[0])).await;
    assert_eq!(response.status(), StatusCode::OK);
    app.assert_balance(&key, 2000, 0).await;
    assert_ledger_consistent_on(&app.db).await;
}

async fn a_refund_takes_back_what_is_unspent(backend: Backend) {
    let stripe = FakeStripe::start().await;
    let app = spawn(backend, &stripe).await;
    let (account, key) = app.new_account(0).await;
    let (order_id, _) = buy_and_pay(&app, &stripe, &key, "pi_3Refunded").await;
    app.assert_balance(&key, 1000, 0).await;
    // 700 of the 1000 credits are spent.
    aio_gateway::ledger::change(&app.db, &Actor::cli(), account, -700, "spent on images").await.unwrap();

    // A full refund takes back the 300 left; the 700 spent are owed and the account is flagged.
    let refund = event("charge.refunded", refunded_charge("pi_3Refunded", 500, 500));
    let signature = sign(&refund);
    assert_eq!(deliver(&app, &refund, Some(&signature)).await.status(), StatusCode::OK);
    app.assert_balance(&key, 0, 0).await;
    let listed = order_status(&app, &key, &order_id).await;
    assert_eq!(
        (listed["status"].as_str(), listed["reversed_credits"].as_i64(), listed["owed_credits"].as_i64()),
        (Some("refunded"), Some(300), Some(700)),
        "{listed}"
    );
    let (owed, flagged): (i64, bool) = on_db!(&app.db, pool => sqlx::query_as(
        "SELECT credits_owed, billing_flagged_at IS NOT NULL FROM accounts WHERE id = $1",
    )
    .bind(account)
    .fetch_one(pool)
    .await)
    .unwrap();
    assert_eq!((owed, flagged), (700, true));

    // The refund replayed, and a dispute of the same payment afterwards: nothing more is taken.
    assert_eq!(deliver(&app, &refund, Some(&signature)).await.json::<Value>().await.unwrap()["outcome"], "duplicate");
    let mut dispute = fixture("dispute");
    dispute["payment_intent"] = json!("pi_3Refunded");
    dispute["amount"] = json!(500);
    assert_eq!(deliver_ok(&app, &event("charge.dispute.created", dispute)).await, "applied");
    app.assert_balance(&key, 0, 0).await;
    let (owed,): (i64,) =
        on_db!(&app.db, pool => sqlx::query_as("SELECT credits_owed FROM accounts WHERE id = $1").bind(account).fetch_one(pool).await).unwrap();
    assert_eq!(owed, 700);

    // A second order, refunded in two halves: each takes back its share.
    let (second, _) = buy_and_pay(&app, &stripe, &key, "pi_3Halves").await;
    app.assert_balance(&key, 1000, 0).await;
    assert_eq!(deliver_ok(&app, &event("charge.refunded", refunded_charge("pi_3Halves", 500, 250))).await, "applied");
    app.assert_balance(&key, 500, 0).await;
    assert_eq!(deliver_ok(&app, &event("charge.refunded", refunded_charge("pi_3Halves", 500, 500))).await, "applied");
    app.assert_balance(&key, 0, 0).await;
    assert_eq!(order_status(&app, &key, &second).await["reversed_credits"], 1000);
    // Each refund that took credits is in the audit log once: 300, then 500 and 500.
    let audited =
        format!("SELECT count(*) FROM audit_log WHERE target_account_id = {account} AND action = 'credits.refund'");
    assert_eq!(count(&app, &audited).await, 3);

    // A refund of a payment of no order here is ignored.
    assert_eq!(
        deliver_ok(&app, &event("charge.refunded", refunded_charge("pi_3Elsewhere", 500, 500))).await,
        "ignored"
    );
    assert_ledger_consistent_on(&app.db).await;
}

async fn a_code_is_redeemed_once_under_a_race(backend: Backend) {
    let stripe = FakeStripe::start().await;
    let app = spawn(backend, &stripe).await;
    let (admin, _) = app.new_account(0).await;
    let admin_token = session_token(admin, Role::Admin);
    let users: Vec<(i64, String)> = futures::future::join_all((0..10).map(|_| app.new_account(0))).await;

    // A user may not make codes.
    let refused = app
        .with_bearer(Method::POST, "/api/v1/admin/redemption-codes", &session_token(users[0].0, Role::User))
        .json(&json!({"credits": 500, "count": 2}))
        .send()
        .await
        .unwrap();
    assert_error(refused, StatusCode::FORBIDDEN, "forbidden").await;

    let response = app
        .with_bearer(Method::POST, "/api/v1/admin/redemption-codes", &admin_token)
        .json(&json!({"credits": 500, "count": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let batch: Value = response.json().await.unwrap();
    let codes: Vec<String> =
        batch["codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(codes.len(), 3);
    // Stored hashed: no code appears in the database.
    let stored: Vec<(Vec<u8>,)> =
        on_db!(&app.db, pool => sqlx::query_as("SELECT hash FROM redemption_codes").fetch_all(pool).await).unwrap();
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|(hash,)| hash.len() == 32));

    // 50 concurrent redemptions of one code by ten accounts: exactly one grant.
    let redeem = |key: String, code: String| {
        let client = app.client.clone();
        let url = app.url("/api/v1/billing/redeem");
        async move {
            client
                .post(url)
                .header(AUTHORIZATION, bearer(&key))
                .json(&json!({"code": code}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let statuses = futures::future::join_all((0..50).map(|i| redeem(users[i % 10].1.clone(), codes[0].clone()))).await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let conflicts = statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count();
    assert_eq!((ok, conflicts), (1, 49), "{statuses:?}");
    let granted = count(&app, "SELECT count(*) FROM ledger WHERE kind = 'grant'").await;
    assert_eq!(granted, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM audit_log WHERE action = 'credits.redeem'").await, 1, "audited once");
    let total = count(&app, "SELECT CAST(SUM(balance) AS BIGINT) FROM accounts").await;
    assert_eq!(total, 500);

    // Typed loosely (lower case, spaces for dashes), another code works; an unknown one is 404.
    let loose = codes[1].to_lowercase().replace('-', " ");
    let response = app
        .client
        .post(app.url("/api/v1/billing/redeem"))
        .header(AUTHORIZATION, bearer(&users[0].1))
        .json(&json!({"code": loose}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let unknown = app
        .client
        .post(app.url("/api/v1/billing/redeem"))
        .header(AUTHORIZATION, bearer(&users[0].1))
        .json(&json!({"code": "AIO-2222-2222-2222-2222-2222"}))
        .send()
        .await
        .unwrap();
    assert_error(unknown, StatusCode::NOT_FOUND, "not_found").await;

    // An expired code is refused.
    let sql = format!(
        "UPDATE redemption_codes SET expires_at = {} WHERE redeemed_by IS NULL",
        app.db.dialect().now_plus_secs("-1")
    );
    on_db!(&app.db, pool => sqlx::query(&sql).execute(pool).await.map(|_| ())).unwrap();
    let response = app
        .client
        .post(app.url("/api/v1/billing/redeem"))
        .header(AUTHORIZATION, bearer(&users[1].1))
        .json(&json!({"code": codes[2]}))
        .send()
        .await
        .unwrap();
    let (_, message) = assert_error(response, StatusCode::CONFLICT, "conflict").await;
    assert!(message.contains("expired"), "{message}");
    assert_ledger_consistent_on(&app.db).await;

    // Admins see every account's orders; users only their own.
    order(&app, &users[2].1, "starter").await;
    order(&app, &users[3].1, "starter").await;
    let all = app.with_bearer(Method::GET, "/api/v1/admin/orders", &admin_token).send().await.unwrap();
    assert_eq!(all.json::<Value>().await.unwrap()["data"].as_array().unwrap().len(), 2);
    let own = app.get_json(&users[2].1, "/api/v1/billing/orders").await;
    assert_eq!(own["data"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_refused_clearly() {
    let stripe = FakeStripe::start().await;
    let app = spawn(Backend::Postgres, &stripe).await;
    let (_, key) = app.new_account(0).await;
    let post = |body: Value| {
        app.client.post(app.url("/api/v1/billing/orders")).header(AUTHORIZATION, bearer(&key)).json(&body).send()
    };
    let (_, message) =
        assert_error(post(json!({"package_id": "gold"})).await.unwrap(), StatusCode::BAD_REQUEST, "invalid_request")
            .await;
    assert!(message.contains("package_id"), "{message}");
    assert_error(post(json!({})).await.unwrap(), StatusCode::BAD_REQUEST, "invalid_request").await;
    // Stripe refuses: 502, and no order is kept.
    stripe.script([crate::fakes::Step::Json(
        400,
        json!({"error": {"message": "Invalid currency", "type": "invalid_request_error"}}),
    )]);
    assert_error(post(json!({"package_id": "starter"})).await.unwrap(), StatusCode::BAD_GATEWAY, "upstream_error")
        .await;
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 0);

    // Without STRIPE_SECRET_KEY there is no top-up.
    let unconfigured = TestApp::builder()
        .configure(|s| {
            configure(s, &stripe);
            s.billing.stripe.secret_key = None;
        })
        .spawn()
        .await;
    let (_, key) = unconfigured.new_account(0).await;
    let response = unconfigured
        .client
        .post(unconfigured.url("/api/v1/billing/orders"))
        .header(AUTHORIZATION, bearer(&key))
        .json(&json!({"package_id": "starter"}))
        .send()
        .await
        .unwrap();
    let (_, message) = assert_error(response, StatusCode::CONFLICT, "conflict").await;
    assert!(message.contains("STRIPE_SECRET_KEY") && !message.contains(SECRET_KEY), "{message}");
}
