//! The embedded SQLite backend end to end: the seed flow over HTTP, one gateway per file, and moving a
//! populated SQLite database to PostgreSQL with `migrate --to`.

use std::process::{Command, Output};
use std::time::Duration;

use aio_gateway::audit::Actor;
use aio_gateway::config::parse_duration;
use aio_gateway::store::Db;
use aio_gateway::tasks;
use aio_gateway::webhooks::queue;
use aio_gateway::{accounts, ledger, on_db};
use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    assert_ledger_consistent_on, bearer, http_client, models_path, seed_request, spawn_app_on, wait_all_terminal_on,
    Backend, Gateway, TestApp, TestStore,
};
use crate::receiver::{Receiver, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_request_succeeds_on_sqlite() {
    let app = spawn_app_on(Backend::Sqlite, |_| {}).await;
    let (_, key) = app.new_account(1000).await;

    let task = app.create_ok(&key, seed_request()).await;
    assert_eq!(task["credits"], crate::helpers::plain_credits(12, 0, "held"));
    let task_id = task["task_id"].as_str().expect("task_id");

    let done = app.wait_terminal(&key, task_id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["credits"], crate::helpers::plain_credits(12, 12, "charged"));
    let image_url = done["output"]["images"][0]["url"].as_str().expect("an image URL");
    let image = http_client().get(image_url).send().await.expect("GET the image");
    assert_eq!(image.status(), StatusCode::OK);
    app.assert_balance(&key, 988, 0).await;
    let listed = app.get_json(&key, "/api/v1/tasks").await;
    assert_eq!(listed["data"][0]["task_id"], task_id, "{listed}");
    assert_ledger_consistent_on(&app.db).await;
    app.stop().await;
}

/// Waits (bounded) for a process to exit; returns its exit status.
async fn exited(gateway: &mut Gateway) -> std::process::ExitStatus {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = gateway.child.try_wait().expect("wait for the gateway") {
            return status;
        }
        assert!(tokio::time::Instant::now() < give_up, "the second gateway kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The quick start: `serve` on a SQLite file that does not exist yet (nor its folder) creates both and
/// the bootstrap account; a second `serve` on the same file refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_one_sqlite_file_refuses_to_start() {
    let dir = tempfile::tempdir().expect("folder");
    let url = format!("sqlite://{}", dir.path().join("new").join("aio-gateway.db").display());
    let client = http_client();
    let bootstrap = [("AIO__BOOTSTRAP__ENABLED", "true")];
    let mut first =
        Gateway::start_with(&url, &dir.path().join("files"), &dir.path().join("first.log"), "all", &bootstrap);
    first.ready(&client).await;
    let settings = aio_gateway::config::DatabaseSettings {
        url: url.clone(),
        max_connections: std::num::NonZeroU32::MIN,
        acquire_timeout: Duration::from_secs(30),
    };
    let db = aio_gateway::store::connect(&settings).await.expect("open the gateway's file");
    let created = accounts::list(&db, None, 10).await.expect("accounts");
    assert_eq!(created.iter().map(|a| (a.name.as_str(), a.balance)).collect::<Vec<_>>(), [("default", 1000)]);
    let second_log = dir.path().join("second.log");
    let mut second = Gateway::start(&url, &dir.path().join("files"), &second_log, "all");
    let status = exited(&mut second).await;
    assert!(!status.success(), "the second gateway exits with an error");
    let log = std::fs::read_to_string(&second_log).expect("read the log");
    assert!(log.contains("another gateway") && log.contains("PostgreSQL"), "{log}");

    // The first one still serves; once it is gone, the file is free again.
    assert_eq!(client.get(format!("{}/readyz", first.address)).send().await.expect("GET").status(), StatusCode::OK);
    first.kill();
    let mut third = Gateway::start(&url, &dir.path().join("files"), &dir.path().join("third.log"), "all");
    third.ready(&client).await;
}

/// The binary's `migrate --to`, with `DATABASE_URL` on the SQLite source; its JSON output.
fn migrate_to(source: &str, target: &str) -> (bool, Value, String) {
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_aio-gateway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml"),
            "--json",
            "migrate",
            "--to",
            target,
        ])
        .env("DATABASE_URL", source)
        .env("AIO__CATALOG__MODELS_PATH", models_path())
        .env_remove("RUST_LOG")
        .output()
        .expect("run migrate --to");
    let text = String::from_utf8_lossy(&stdout).trim().to_owned();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("one JSON object, got {text:?}: {e}"));
    (status.success(), value, String::from_utf8_lossy(&stderr).into_owned())
}

type Accounts = Vec<(i64, String, i64, i64)>;
type Ledger = Vec<(i64, i64, String, i64, Option<String>, i64)>;

async fn accounts_and_ledger(db: &Db) -> (Accounts, Ledger) {
    let accounts = on_db!(db, pool => sqlx::query_as("SELECT id, name, balance, held FROM accounts ORDER BY id")
        .fetch_all(pool)
        .await)
    .expect("accounts");
    let ledger = on_db!(db, pool => sqlx::query_as(
        "SELECT id, account_id, kind, amount, task_id, balance_after FROM ledger ORDER BY id",
    )
    .fetch_all(pool)
    .await)
    .expect("ledger");
    (accounts, ledger)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_to_moves_a_sqlite_gateway_to_postgres() {
    // A SQLite gateway with history: finished and failed tasks, a webhook, a grant, a revoked key.
    let served = spawn_app_on(Backend::Sqlite, |settings| {
        settings.database.max_connections = std::num::NonZeroU32::new(5).unwrap()
    })
    .await;
    let (account_id, key) = served.new_account(1000).await;
    let (_, other_key) = served.new_account(50).await;
    let mut task_ids = Vec::new();
    for (i, prompt) in ["a lake", "a cat [simulate:fail]", "a hill"].iter().enumerate() {
        let mut body = seed_request();
        body["prompt"] = json!(prompt);
        let response = served
            .client
            .post(served.url("/api/v1/images/generations"))
            .header(AUTHORIZATION, bearer(&key))
            .header("Idempotency-Key", format!("key-{i}"))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let task: Value = response.json().await.expect("task JSON");
        task_ids.push(task["task_id"].as_str().expect("task_id").to_owned());
    }
    let mut finished = Vec::new();
    for id in &task_ids {
        finished.push(served.wait_terminal(&key, id).await);
    }
    let source = served.stop().await;
    let first = tasks::get(&source.db, account_id, &task_ids[0]).await.expect("get").expect("the first task");
    let body = serde_json::to_vec(&tasks::TaskView::from(&first)).expect("a task object");
    let event = queue::Event { task_id: &first.id, account_id, url: "https://receiver.example.com/hook", body };
    queue::enqueue_retry(&source.db, &event, 10).await.expect("a webhook delivery");
    let mut tx = source.db.begin().await.expect("begin");
    ledger::grant(&mut tx, account_id, 7, "loyalty").await.expect("grant");
    tx.commit().await.expect("commit");
    let revoked = accounts::create_key(&source.db, &Actor::cli(), account_id, Some("old"), None).await.expect("key");
    assert!(accounts::revoke_key(&source.db, &Actor::cli(), &revoked.key_id).await.expect("revoke"));
    // One task still unfinished when the move happens: its hold moves with it.
    let open_id = tasks::new_task_id();
    let input = aio_gateway::tasks::TaskInput {
        prompt: "later".into(),
        aspect_ratio: None,
        quality: None,
        image_urls: vec![],
        n: None,
    };
    let open = tasks::NewTask {
        id: open_id.clone(),
        account_id,
        model: "seedream-4-5".into(),
        sub_model: "seedream/4.5-text-to-image".into(),
        input,
        price: 12,
        breakdown: None,
        key_id: None,
        callback_url: None,
        callback_events: None,
        provider: "simulated".into(),
        upstream_model: "seedream-4.5".into(),
        provider_label: "Simulated".into(),
        simulated: true,
        deadline: Duration::from_secs(900),
        lease: None,
        owner: "inst_test".into(),
        idempotency: None,
        callback_token: None,
        window: None,
        max_queued: 1000,
    };
    assert!(matches!(tasks::create(&source.db, open).await.expect("create"), tasks::Created::Task(_)));
    let before = accounts_and_ledger(&source.db).await;

    let target = TestStore::new(Backend::Postgres, 5).await;
    let (ok, output, stderr) = migrate_to(&source.url, &target.url);
    assert!(ok, "migrate --to failed: {output} {stderr}");
    assert_eq!(output["verified"], true, "{output}");
    assert_eq!(output["copied"]["tasks"], 4, "{output}");
    assert_eq!(output["copied"]["webhook_deliveries"], 1, "{output}");
    assert_eq!(output["copied"]["idempotency_keys"], 3, "{output}");
    assert_eq!(accounts_and_ledger(&target.db).await, before, "balances and ledgers are identical");
    assert_ledger_consistent_on(&target.db).await;

    // Copying again would mix two histories: refused.
    let (ok, output, _) = migrate_to(&source.url, &target.url);
    assert!(!ok && output["error"].as_str().is_some_and(|e| e.contains("not empty")), "{output}");

    // A gateway on PostgreSQL serves the moved tasks to the same keys, and goes on from there.
    let app = TestApp::serve(target, |_| {}).await;
    for (id, was) in task_ids.iter().zip(&finished) {
        let task = app.get_task(&key, id).await;
        // File links are signed on every read: the same files, fresh signatures.
        let unsigned = |output: &Value| -> Vec<String> {
            let images = output["images"].as_array().cloned().unwrap_or_default();
            images
                .iter()
                .map(|i| i["url"].as_str().unwrap_or_default().split('?').next().unwrap_or_default().to_owned())
                .collect()
        };
        assert_eq!(
            (&task["status"], &task["credits"], unsigned(&task["output"])),
            (&was["status"], &was["credits"], unsigned(&was["output"]))
        );
    }
    let open_task = app.get_task(&key, &open_id).await;
    assert_eq!(open_task["credits"]["state"], "held");
    let deliveries = app.get_json(&key, &format!("/api/v1/tasks/{}/deliveries", task_ids[0])).await;
    assert!(deliveries.to_string().contains("receiver.example.com"), "{deliveries}");
    let replay = app
        .client
        .post(app.url("/api/v1/images/generations"))
        .header(AUTHORIZATION, bearer(&key))
        .header("Idempotency-Key", "key-2")
        .json(&json!({"model": "seedream/4.5-text-to-image", "prompt": "a hill", "aspect_ratio": "16:9", "quality": "high"}))
        .send()
        .await
        .expect("POST");
    let replayed: Value = replay.json().await.expect("JSON");
    assert_eq!(replayed["task_id"], task_ids[2].as_str(), "idempotency keys moved too: {replayed}");
    let fresh = app.create(&other_key, seed_request()).await;
    let fresh: Value = fresh.json().await.expect("JSON");
    let fresh_id = fresh["task_id"].as_str().expect("a new task on PostgreSQL");
    assert_eq!(app.wait_terminal(&other_key, fresh_id).await["status"], "succeeded");
    let unfinished = app.wait_terminal(&key, &open_id).await;
    assert!(matches!(unfinished["status"].as_str(), Some("succeeded" | "failed")));
    let credits = app.credits(&other_key).await;
    assert_eq!(credits["balance"], 38);
    assert_ledger_consistent_on(&app.db).await;
    // Not waited for (dropping it only cancels): its webhook loop may be trying the (unreachable) receiver.
}

/// 200 creates at once over HTTP on an account that pays for 50: SQLite's one writer serialises the
/// holds, so exactly 50 tasks exist, the other 150 get 402, and every credit is accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_over_http_never_overspend_on_sqlite() {
    let app = spawn_app_on(Backend::Sqlite, |_| {}).await;
    let (_, key) = app.new_account(50 * 12).await;
    let creates = (0..200).map(|_| {
        let request = app
            .client
            .post(app.url("/api/v1/images/generations"))
            .header(AUTHORIZATION, bearer(&key))
            .json(&seed_request());
        async move { request.send().await.expect("POST").status() }
    });
    let statuses = futures::future::join_all(creates).await;
    let created = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::PAYMENT_REQUIRED).count();
    assert_eq!((created, refused), (50, 150), "{statuses:?}");
    wait_all_terminal_on(&app.db).await;
    app.assert_balance(&key, 0, 0).await;
    assert_ledger_consistent_on(&app.db).await;
    app.stop().await;
}

/// A settled task's webhook on SQLite: enqueued with the settlement, retried after a 500, signed with
/// the account's secret, and listed in the delivery log with both attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_delivered_and_retried_on_sqlite() {
    let app = spawn_app_on(Backend::Sqlite, |settings| {
        let webhooks = &mut settings.webhooks;
        webhooks.allow_http = true;
        webhooks.allowed_private_cidrs = vec!["127.0.0.0/8".parse().expect("cidr")];
        webhooks.retry_schedule = ["0s", "0s"].iter().map(|d| parse_duration(d).expect("duration")).collect();
        webhooks.tick = Duration::from_millis(50);
        webhooks.timeout = Duration::from_secs(1);
    })
    .await;
    let receiver = Receiver::start("127.0.0.1").await;
    receiver.script([Reply::Status(500)]);
    let (account_id, key) = app.new_account(100).await;
    let task = app.create_ok(&key, json!({"prompt": "A lighthouse at dusk", "callback_url": receiver.url})).await;
    let task_id = task["task_id"].as_str().expect("task_id");

    let received = receiver.wait_for(2).await;
    let secret = aio_gateway::webhooks::secrets::signing(&app.db, account_id).await.expect("secret").current;
    for delivery in &received {
        delivery.verify(&secret).expect("signed with the account's secret");
    }
    assert_eq!(received[0].webhook_id(), received[1].webhook_id(), "one event, retried");
    let body: Value = serde_json::from_slice(&received[1].body).expect("JSON body");
    assert_eq!((body["task_id"].as_str(), body["status"].as_str()), (Some(task_id), Some("succeeded")));

    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = app.get_json(&key, &format!("/api/v1/tasks/{task_id}/deliveries")).await;
        if log["data"][0]["status"] == "delivered" {
            let attempts = log["data"][0]["attempts"].as_array().expect("attempts");
            let codes: Vec<i64> = attempts.iter().filter_map(|a| a["status_code"].as_i64()).collect();
            assert_eq!(codes, [500, 200], "{log}");
            break;
        }
        assert!(tokio::time::Instant::now() < give_up, "the delivery was never marked delivered: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ledger_consistent_on(&app.db).await;
    app.stop().await;
}
