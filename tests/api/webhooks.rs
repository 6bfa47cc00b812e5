//! Outgoing webhooks (SPEC §4) against a real receiver on loopback: the signed task object, retries on
//! a shortened schedule, the dead state, 410, redirects, `Retry-After`, the delivery log, manual
//! retry, secret rotation, a restart between attempts, and the resolver that refuses a host name
//! resolving to a private address. Timing is only ever asserted as a lower bound.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aio_gateway::audit::Actor;
use aio_gateway::config::{parse_duration, Settings};
use aio_gateway::webhooks::secrets;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{assert_error, assert_ledger_consistent, bearer, spawn_app_with, TestApp};
use crate::receiver::{Receiver, Reply};

/// Webhooks to loopback receivers: http allowed, 127.0.0.0/8 opened, a fast loop, a short timeout, and
/// this retry schedule (comma-separated, as in the environment).
pub fn loopback(schedule: &str) -> impl FnOnce(&mut Settings) + '_ {
    move |settings| {
        let webhooks = &mut settings.webhooks;
        webhooks.allow_http = true;
        webhooks.allowed_private_cidrs = vec!["127.0.0.0/8".parse().expect("cidr")];
        webhooks.retry_schedule = schedule.split(',').map(|d| parse_duration(d).expect("duration")).collect();
        webhooks.tick = Duration::from_millis(50);
        webhooks.timeout = Duration::from_secs(1);
    }
}

/// A gateway with [`loopback`] webhooks, a receiver on 127.0.0.1 that answers with `script` first, and
/// an account with 100 credits.
struct Setup {
    app: TestApp,
    receiver: Receiver,
    account_id: i64,
    key: String,
}

async fn setup(schedule: &str, script: impl IntoIterator<Item = Reply>) -> Setup {
    setup_on(spawn_app_with(loopback(schedule)).await, script).await
}

/// [`setup`] on a driven gateway (no loops): for what does not depend on time.
async fn setup_driven(schedule: &str, script: impl IntoIterator<Item = Reply>) -> Setup {
    setup_on(TestApp::builder().configure(loopback(schedule)).driven().spawn().await, script).await
}

async fn setup_on(app: TestApp, script: impl IntoIterator<Item = Reply>) -> Setup {
    let receiver = Receiver::start("127.0.0.1").await;
    receiver.script(script);
    let (account_id, key) = app.new_account(100).await;
    Setup { app, receiver, account_id, key }
}

async fn post_retry(app: &TestApp, key: &str, task_id: &str) -> reqwest::Response {
    let path = format!("{}/retry", deliveries_path(task_id));
    app.client.post(app.url(&path)).header(AUTHORIZATION, bearer(key)).send().await.expect("POST …/deliveries/retry")
}

async fn create_with_callback(app: &TestApp, key: &str, prompt: &str, callback_url: &str) -> String {
    let task = app.create_ok(key, json!({"prompt": prompt, "callback_url": callback_url})).await;
    assert_eq!(task["callback_url"], callback_url, "{task}");
    task["task_id"].as_str().expect("task_id").to_owned()
}

async fn secret_of(app: &TestApp, account_id: i64) -> String {
    secrets::signing(&app.db, account_id).await.expect("the account's webhook secret").current
}

fn deliveries_path(task_id: &str) -> String {
    format!("/api/v1/tasks/{task_id}/deliveries")
}

/// The delivery log of a task, once it has `count` deliveries and none is pending (a driven app is
/// driven there). The 30 s bound only stops a hang.
async fn finished_deliveries(app: &TestApp, key: &str, task_id: &str, count: usize) -> Vec<Value> {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if app.is_driven() {
            app.run_pending().await;
        }
        let log = app.get_json(key, &deliveries_path(task_id)).await;
        let data = log["data"].as_array().expect("data").clone();
        if data.len() >= count && data.iter().all(|d| d["status"] != "pending") {
            return data;
        }
        assert!(tokio::time::Instant::now() < give_up, "deliveries of {task_id} did not finish: {log}");
        if app.is_driven() {
            app.advance().await;
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn attempt_codes(delivery: &Value) -> Vec<Value> {
    delivery["attempts"].as_array().expect("attempts").iter().map(|a| a["status_code"].clone()).collect()
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs() as i64
}

#[tokio::test]
async fn succeeded_and_failed_tasks_deliver_their_task_object_signed() {
    let Setup { app, receiver, account_id, key, .. } = setup_driven("0s", []).await;
    let succeeded = create_with_callback(&app, &key, "A lighthouse at dusk", &receiver.url).await;
    let failed = create_with_callback(&app, &key, "A storm at sea [simulate:fail]", &receiver.url).await;
    app.settle_all().await;

    let received = receiver.wait_for(2).await;
    let secret = secret_of(&app, account_id).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    for (task_id, status) in [(&succeeded, "succeeded"), (&failed, "failed")] {
        let request = received
            .iter()
            .find(|r| serde_json::from_slice::<Value>(&r.body).expect("JSON body")["task_id"] == task_id.as_str())
            .unwrap_or_else(|| panic!("no webhook for {task_id}"));
        // Exactly the task object the API shows, but for the links' expiry: each is signed when it is
        // made (the webhook at settlement), and the two may fall in different seconds.
        let shown = app.get(&key, &format!("/api/v1/tasks/{task_id}")).await.bytes().await.expect("task body");
        let unsigned = |bytes: &[u8]| {
            let mut task: Value = serde_json::from_slice(bytes).expect("JSON");
            for image in task["output"]["images"].as_array_mut().into_iter().flatten() {
                let url = image["url"].as_str().expect("url").split('?').next().expect("path").to_owned();
                image["url"] = Value::String(url);
            }
            task
        };
        assert_eq!(unsigned(&request.body), unsigned(&shown), "the webhook body is the task object");
        let body: Value = serde_json::from_slice(&request.body).expect("JSON");
        assert_eq!(body["status"], status, "{body}");
        assert_eq!(body["callback_url"], receiver.url.as_str());
        assert_eq!(body["provider"], json!({"label": "Simulated", "simulated": true}), "the serving route");

        request.verify(&secret).unwrap_or_else(|e| panic!("{task_id}: the signature does not verify: {e}"));
        assert_eq!(request.signatures().len(), 1, "one secret, one signature");
        let id = request.webhook_id();
        assert!(id.starts_with("msg_") && !id.contains('.') && id.len() > 20, "webhook-id {id}");
        assert!((request.timestamp() - unix_now()).abs() < 60, "webhook-timestamp is now, in seconds");
        assert!(request.header("content-type").starts_with("application/json"));
        assert!(request.verify(&aio_gateway::webhooks::signing::generate_secret()).is_err(), "another secret fails");

        let log = finished_deliveries(&app, &key, task_id, 1).await;
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(log[0]["status"], "delivered");
        assert_eq!(log[0]["trigger"], "settled");
        assert_eq!(log[0]["webhook_id"], id);
        assert_eq!(attempt_codes(&log[0]), [json!(200)]);
        assert!(log[0]["next_attempt_at"].is_null(), "{}", log[0]);
    }
    assert_ne!(received[0].webhook_id(), received[1].webhook_id(), "one webhook-id per event");

    // Webhooks move no money: the success is charged, the failure refunded, nothing else.
    let credits = app.credits(&key).await;
    assert_eq!((credits["balance"].as_i64(), credits["held"].as_i64()), (Some(88), Some(0)), "{credits}");
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn retries_keep_the_webhook_id_follow_the_schedule_and_record_every_attempt() {
    let Setup { app, receiver, account_id, key, .. } =
        setup("0s,1s,2s", [Reply::Hang(Duration::from_secs(3)), Reply::Status(500)]).await;
    let task_id = create_with_callback(&app, &key, "A quiet harbour", &receiver.url).await;

    let received = receiver.wait_for(3).await;
    let secret = secret_of(&app, account_id).await;
    for request in &received {
        request.verify(&secret).expect("every attempt is signed");
        assert_eq!(request.webhook_id(), received[0].webhook_id(), "webhook-id is stable across retries");
        assert_eq!(request.body, received[0].body, "every attempt sends the same bytes");
    }
    assert!(received[0].timestamp() <= received[1].timestamp() && received[1].timestamp() <= received[2].timestamp());
    assert!(received[2].timestamp() > received[0].timestamp(), "each attempt has its own timestamp");
    // Lower bounds only: the scheduled delay less its 20 % jitter.
    assert!(received[1].at - received[0].at >= Duration::from_millis(800), "{:?}", received[1].at - received[0].at);
    assert!(received[2].at - received[1].at >= Duration::from_millis(1600), "{:?}", received[2].at - received[1].at);

    let log = finished_deliveries(&app, &key, &task_id, 1).await;
    assert_eq!(log[0]["status"], "delivered", "{}", log[0]);
    assert_eq!(attempt_codes(&log[0]), [Value::Null, json!(500), json!(200)]);
    let attempts = log[0]["attempts"].as_array().expect("attempts");
    assert!(attempts[0]["error"].as_str().is_some_and(|e| e.contains("timed out")), "{}", attempts[0]);
    assert!(attempts[0]["latency_ms"].as_i64() >= Some(900), "the timeout is 1 s: {}", attempts[0]);
    assert!(attempts[0]["response_excerpt"].is_null());
    assert_eq!(attempts[1]["error"], "HTTP 500 Internal Server Error");
    // The receiver is a private address (opened by allowed_private_cidrs): its answers are not kept.
    assert!(attempts[1]["response_excerpt"].is_null(), "{}", attempts[1]);
    assert!(attempts[2]["error"].is_null() && attempts[2]["response_excerpt"].is_null(), "{}", attempts[2]);
    for attempt in attempts {
        assert!(attempt["attempted_at"].is_string() && attempt["latency_ms"].as_i64() >= Some(0), "{attempt}");
    }
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_delivery_is_dead_after_its_last_scheduled_attempt() {
    let Setup { app, receiver, key, .. } =
        setup_driven("0s,1s", [Reply::Status(500), Reply::Status(502), Reply::Status(500)]).await;
    let task_id = create_with_callback(&app, &key, "A desert road", &receiver.url).await;

    let log = finished_deliveries(&app, &key, &task_id, 1).await;
    assert_eq!(log[0]["status"], "dead", "{}", log[0]);
    assert_eq!(attempt_codes(&log[0]), [json!(500), json!(502)], "two delays, two attempts");
    assert!(log[0]["next_attempt_at"].is_null());
    assert_eq!(receiver.received().len(), 2);
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_410_ends_the_delivery_at_once() {
    let Setup { app, receiver, key, .. } = setup_driven("0s,1s,1s", [Reply::Status(410)]).await;
    let task_id = create_with_callback(&app, &key, "A frozen lake", &receiver.url).await;

    let log = finished_deliveries(&app, &key, &task_id, 1).await;
    assert_eq!(log[0]["status"], "dead", "{}", log[0]);
    assert_eq!(attempt_codes(&log[0]), [json!(410)]);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = Receiver::start("127.0.0.1").await;
    let Setup { app, receiver, key, .. } = setup_driven("0s", [Reply::Redirect(target.url.clone())]).await;
    let task_id = create_with_callback(&app, &key, "A mountain pass", &receiver.url).await;

    let log = finished_deliveries(&app, &key, &task_id, 1).await;
    assert_eq!(log[0]["status"], "dead", "a 3xx is a failed attempt: {}", log[0]);
    assert_eq!(attempt_codes(&log[0]), [json!(302)]);
    let error = log[0]["attempts"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("redirects are not followed"), "{error}");
    assert_eq!(receiver.received().len(), 1);
    assert!(target.received().is_empty(), "the redirect target (a private address) got nothing");
}

#[tokio::test]
async fn retry_after_is_honoured_within_bounds() {
    let in_an_hour = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
    let script = [Reply::RetryAfter(503, "2".into()), Reply::RetryAfter(429, in_an_hour)];
    let Setup { app, receiver, key, .. } = setup("0s,1s,1s", script).await;
    let task_id = create_with_callback(&app, &key, "A bamboo forest", &receiver.url).await;

    let received = receiver.wait_for(3).await;
    // Asked for 2 s: more than the schedule's 1 s (+20 % at most) and within twice it, so honoured.
    let waited = received[1].at - received[0].at;
    assert!(waited >= Duration::from_millis(1500), "Retry-After: 2 was honoured: waited {waited:?}");
    // Asked for an hour (as an HTTP date): clamped to twice the scheduled second, so the third
    // attempt came long before (within wait_for's bound) and delivered.
    let log = finished_deliveries(&app, &key, &task_id, 1).await;
    assert_eq!(log[0]["status"], "delivered", "{}", log[0]);
    assert_eq!(attempt_codes(&log[0]), [json!(503), json!(429), json!(200)]);
}

#[tokio::test]
async fn the_delivery_log_is_the_owners_and_a_manual_retry_resends_the_event() {
    let Setup { app, receiver, account_id, key, .. } = setup("0s", [Reply::Status(500)]).await;
    let (_, other_key) = app.new_account(100).await;
    let task_id = create_with_callback(&app, &key, "An old library", &receiver.url).await;

    let log = finished_deliveries(&app, &key, &task_id, 1).await;
    let first = &log[0];
    assert_eq!(first["status"], "dead", "{first}");
    assert_eq!(first["task_id"], task_id.as_str());
    assert_eq!(first["url"], receiver.url.as_str());
    assert!(first["delivery_id"].as_str().is_some_and(|id| id.starts_with("dlv_")), "{first}");
    let attempt = &first["attempts"][0];
    assert_eq!(attempt["status_code"], 500);
    assert_eq!(attempt["error"], "HTTP 500 Internal Server Error");
    assert!(attempt["response_excerpt"].is_null(), "a private receiver's answer is not kept: {attempt}");
    assert!(attempt["latency_ms"].is_i64() && attempt["attempted_at"].is_string(), "{attempt}");

    // Another account's task is not found, on both routes, exactly like a missing one.
    assert_error(app.get(&other_key, &deliveries_path(&task_id)).await, StatusCode::NOT_FOUND, "not_found").await;
    assert_error(post_retry(&app, &other_key, &task_id).await, StatusCode::NOT_FOUND, "not_found").await;
    let missing = deliveries_path("task_01M8BTWSJ3R2SJAAFWFF8FZYZ3");
    assert_error(app.get(&key, &missing).await, StatusCode::NOT_FOUND, "not_found").await;

    // The owner re-sends it: a new delivery, due now, of the same event (same webhook-id, same bytes).
    let response = post_retry(&app, &key, &task_id).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let retried: Value = response.json().await.expect("delivery JSON");
    assert_eq!(retried["trigger"], "manual", "{retried}");
    assert_eq!(retried["status"], "pending", "{retried}");
    assert_eq!(retried["webhook_id"], first["webhook_id"], "{retried}");
    assert_ne!(retried["delivery_id"], first["delivery_id"], "{retried}");
    assert_eq!(retried["attempts"], json!([]));

    let received = receiver.wait_for(2).await;
    assert_eq!(received[1].webhook_id(), received[0].webhook_id());
    assert_eq!(received[1].body, received[0].body);
    received[1].verify(&secret_of(&app, account_id).await).expect("the re-send is signed");
    let log = finished_deliveries(&app, &key, &task_id, 2).await;
    let states: Vec<(&Value, &Value)> = log.iter().map(|d| (&d["trigger"], &d["status"])).collect();
    assert_eq!(states, [(&json!("settled"), &json!("dead")), (&json!("manual"), &json!("delivered"))]);

    // Nothing to re-send: a task without a callback_url, and one that has not finished.
    let plain = app.create_ok(&key, json!({"prompt": "No callback"})).await;
    let plain_id = plain["task_id"].as_str().expect("task_id");
    app.wait_terminal(&key, plain_id).await;
    let (_, message) = assert_error(post_retry(&app, &key, plain_id).await, StatusCode::CONFLICT, "conflict").await;
    assert!(message.contains("callback_url"), "{message}");
    let slow = create_with_callback(&app, &key, "A slow one [simulate:delay=60000]", &receiver.url).await;
    let (_, message) = assert_error(post_retry(&app, &key, &slow).await, StatusCode::CONFLICT, "conflict").await;
    assert!(message.contains("not finished"), "{message}");
    assert_eq!(app.get_json(&key, &deliveries_path(&slow)).await, json!({"data": [], "next_cursor": null}));
    assert_ledger_consistent(app.pool()).await;
}

#[tokio::test]
async fn a_rotation_signs_with_both_secrets_during_the_overlap_then_with_the_new_one() {
    let Setup { app, receiver, account_id, key, .. } = setup_driven("0s", []).await;
    let old = secret_of(&app, account_id).await;
    let new = secrets::rotate(&app.db, &Actor::cli(), account_id, Duration::from_secs(3600)).await.expect("rotate");
    assert_ne!(old, new);
    assert_eq!(secret_of(&app, account_id).await, new, "the new secret is the current one");

    let task_id = create_with_callback(&app, &key, "Two keys", &receiver.url).await;
    app.settle_all().await;
    let during = receiver.wait_for(1).await.remove(0);
    let signatures = during.signatures();
    assert_eq!(signatures.len(), 2, "one signature per active secret: {signatures:?}");
    during.verify_signature(&new, &signatures[0]).expect("the first signature is the new secret's");
    during.verify_signature(&old, &signatures[1]).expect("the second signature is the previous secret's");
    assert!(
        during.verify_signature(&old, &signatures[0]).is_err()
            && during.verify_signature(&new, &signatures[1]).is_err()
    );
    during.verify(&old).expect("a receiver still on the old secret accepts it");
    during.verify(&new).expect("a receiver on the new secret accepts it");

    // The overlap ends (as if its hour had passed): only the new secret signs.
    sqlx::query("UPDATE webhook_secrets SET previous_expires_at = now() WHERE account_id = $1")
        .bind(account_id)
        .execute(app.pool())
        .await
        .expect("end the overlap");
    assert_eq!(post_retry(&app, &key, &task_id).await.status(), StatusCode::ACCEPTED);
    app.settle_all().await;
    let after = receiver.wait_for(2).await.remove(1);
    assert_eq!(after.signatures().len(), 1, "{:?}", after.signatures());
    after.verify(&new).expect("signed with the new secret");
    assert!(after.verify(&old).is_err(), "the previous secret no longer signs");
}

#[tokio::test]
async fn a_pending_delivery_survives_a_restart() {
    let Setup { app, receiver, account_id, key, .. } = setup("0s,3s", [Reply::Status(503)]).await;
    let task_id = create_with_callback(&app, &key, "Across a restart", &receiver.url).await;

    // The first attempt failed and is recorded; the next is due in about 3 s.
    receiver.wait_for(1).await;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.get_json(&key, &deliveries_path(&task_id)).await["data"][0]["attempts"].as_array().map_or(0, Vec::len) < 1
    {
        assert!(tokio::time::Instant::now() < give_up, "the first attempt was never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let app = app.restart().await;
    let restarted = tokio::time::Instant::now();
    let received = receiver.wait_for(2).await;
    assert!(received[1].at > restarted, "the second attempt came from the new gateway");
    assert_eq!(received[1].webhook_id(), received[0].webhook_id());
    assert_eq!(received[1].body, received[0].body);
    received[1].verify(&secret_of(&app, account_id).await).expect("signed");
    let log = finished_deliveries(&app, &key, &task_id, 1).await;
    assert_eq!(log[0]["status"], "delivered", "{}", log[0]);
    assert_eq!(attempt_codes(&log[0]), [json!(503), json!(200)]);
    assert_ledger_consistent(app.pool()).await;
}

/// Test host names: each maps to one address; anything else is unknown (never real DNS).
pub struct TestHosts(pub HashMap<&'static str, IpAddr>);

impl Resolve for TestHosts {
    fn resolve(&self, name: Name) -> Resolving {
        let found = self.0.get(name.as_str()).copied();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let ip = found.ok_or_else(|| format!("unknown test host {host}"))?;
            Ok(Box::new(std::iter::once(SocketAddr::new(ip, 0))) as Addrs)
        })
    }
}

#[tokio::test]
async fn a_host_name_resolving_to_a_private_address_is_refused_at_connect_time() {
    let hosts = TestHosts(HashMap::from([
        ("rebind.test", "127.0.0.1".parse().expect("ip")),
        ("allowed.test", "127.0.0.2".parse().expect("ip")),
    ]));
    // Only 127.0.0.2 is opened: rebind.test passes validation (a name) and must be stopped when
    // the gateway connects.
    let app = TestApp::builder()
        .resolver(Arc::new(hosts))
        .configure(|settings| {
            loopback("0s")(settings);
            settings.webhooks.allowed_private_cidrs = vec!["127.0.0.2/32".parse().expect("cidr")];
        })
        .driven()
        .spawn()
        .await;
    let refused = Receiver::start("127.0.0.1").await;
    let allowed = Receiver::start("127.0.0.2").await;
    let (_, key) = app.new_account(100).await;

    let literal = app.create(&key, json!({"prompt": "x", "callback_url": refused.url})).await;
    assert_error(literal, StatusCode::BAD_REQUEST, "invalid_request").await;

    let rebind =
        create_with_callback(&app, &key, "Rebinding", &format!("http://rebind.test:{}/hook", refused.port)).await;
    let fine = create_with_callback(&app, &key, "Opened", &format!("http://allowed.test:{}/hook", allowed.port)).await;

    let log = finished_deliveries(&app, &key, &rebind, 1).await;
    assert_eq!(log[0]["status"], "dead", "{}", log[0]);
    let attempt = &log[0]["attempts"][0];
    assert!(attempt["status_code"].is_null(), "{attempt}");
    let error = attempt["error"].as_str().unwrap_or_default();
    assert!(error.contains("outbound URL guard") && !error.contains("rebind.test"), "{error}");
    assert!(refused.received().is_empty(), "nothing reached 127.0.0.1");

    let log = finished_deliveries(&app, &key, &fine, 1).await;
    assert_eq!(log[0]["status"], "delivered", "{}", log[0]);
    assert_eq!(allowed.wait_for(1).await.len(), 1);
    assert_ledger_consistent(app.pool()).await;
}

/// `callback_events` and `webhooks.body_version = 2`: a `task.started` event when the provider accepts
/// the task, then `task.completed`, each `{"type", "timestamp", "data": <task>}`, signed like any
/// delivery; a cancelled task's `task.completed` says `cancelled`.
#[tokio::test]
async fn callback_events_send_started_and_completed_in_the_version_2_body() {
    let app = TestApp::builder()
        .configure(loopback("0s"))
        .configure(|settings| settings.webhooks.body_version = aio_gateway::config::BodyVersion::V2)
        .driven()
        .spawn()
        .await;
    let Setup { app, receiver, account_id, key } = setup_on(app, []).await;
    let both =
        json!({"prompt": "A lighthouse", "callback_url": receiver.url, "callback_events": ["started", "completed"]});
    let task_id = app.create_ok(&key, both).await["task_id"].as_str().expect("task_id").to_owned();
    app.settle_all().await;
    let received = receiver.wait_for(2).await;
    let secret = secret_of(&app, account_id).await;
    let bodies: Vec<Value> = received.iter().map(|r| serde_json::from_slice(&r.body).expect("JSON")).collect();
    assert_eq!(bodies[0]["type"], "task.started", "{}", bodies[0]);
    assert_eq!(
        (bodies[0]["data"]["task_id"].as_str(), bodies[0]["data"]["status"].as_str()),
        (Some(task_id.as_str()), Some("running"))
    );
    assert_eq!(bodies[1]["type"], "task.completed", "{}", bodies[1]);
    assert_eq!(bodies[1]["data"]["status"], "succeeded");
    assert!(bodies.iter().all(|b| b["timestamp"].is_string()));
    for request in &received {
        request.verify(&secret).expect("signed");
    }
    let log = finished_deliveries(&app, &key, &task_id, 2).await;
    let triggers: Vec<&str> = log.iter().map(|d| d["trigger"].as_str().expect("trigger")).collect();
    assert_eq!(triggers, ["started", "settled"]);
    // A manual re-send is of the task's end, never of its start.
    let retried = post_retry(&app, &key, &task_id).await;
    assert_eq!(retried.status(), StatusCode::ACCEPTED);
    let retry: Value = retried.json().await.expect("JSON");
    assert_eq!(retry["webhook_id"], log[1]["webhook_id"]);
    // It carries the end's URL and bytes (the re-send stores none of its own), and the `started`
    // delivery does not count against `webhooks.max_deliveries_per_task`.
    let log = finished_deliveries(&app, &key, &task_id, 3).await;
    let resent = receiver.wait_for(3).await;
    assert_eq!(resent[2].body, resent[1].body, "the re-send is the completed event");
    let settled_and_manual = log.iter().filter(|d| d["trigger"] != "started").count();
    assert_eq!(settled_and_manual, 2, "{log:?}");

    // Only the end, the default: a cancelled task reports `cancelled`.
    let default = json!({"prompt": "A storm", "callback_url": receiver.url});
    let cancelled = app.create_ok(&key, default).await["task_id"].as_str().expect("task_id").to_owned();
    assert_eq!(app.cancel(&key, &cancelled).await.status(), StatusCode::OK);
    app.settle_all().await;
    let received = receiver.wait_for(4).await;
    let last: Value = serde_json::from_slice(&received[3].body).expect("JSON");
    assert_eq!(
        (last["type"].as_str(), last["data"]["status"].as_str()),
        (Some("task.completed"), Some("cancelled")),
        "{last}"
    );
    assert_eq!(finished_deliveries(&app, &key, &cancelled, 1).await.len(), 1, "no started event unless asked");
}

#[tokio::test]
async fn callback_events_only_started_keeps_the_version_1_body_and_bad_values_are_refused() {
    let Setup { app, receiver, key, .. } = setup_driven("0s", []).await;
    let started = json!({"prompt": "A lighthouse", "callback_url": receiver.url, "callback_events": ["started"]});
    let task_id = app.create_ok(&key, started).await["task_id"].as_str().expect("task_id").to_owned();
    app.settle_all().await;
    let received = receiver.wait_for(1).await;
    let body: Value = serde_json::from_slice(&received[0].body).expect("JSON");
    assert_eq!(
        (body["task_id"].as_str(), body["status"].as_str()),
        (Some(task_id.as_str()), Some("running")),
        "the bare task object: {body}"
    );
    assert_eq!(finished_deliveries(&app, &key, &task_id, 1).await.len(), 1, "no completed event: not asked for");

    for (body, field) in [
        (json!({"prompt": "x", "callback_url": receiver.url, "callback_events": ["progress"]}), "`callback_events[0]`"),
        (json!({"prompt": "x", "callback_url": receiver.url, "callback_events": ["done"]}), "`callback_events[0]`"),
        (json!({"prompt": "x", "callback_url": receiver.url, "callback_events": []}), "`callback_events`"),
        (json!({"prompt": "x", "callback_events": ["started"]}), "`callback_events`"),
    ] {
        let (_, message) =
            assert_error(app.create(&key, body.clone()).await, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(message.starts_with(field), "{body}: {message}");
    }
}
