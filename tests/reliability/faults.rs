//! 2,000+ tasks over ten accounts through two gateway processes at once, against an upstream that
//! fails, hangs, rate-limits and sends duplicate, late and forged callbacks; more creates than the
//! accounts can pay for; one gateway SIGKILLed and restarted; PostgreSQL restarted. Then the books
//! must balance to the credit, and nothing may have succeeded that the upstream did not complete.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aio_gateway::config::DatabaseSettings;
use aio_gateway::store;
use reqwest::header::AUTHORIZATION;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::time::Instant;

use crate::fakes::kie::KEY;
use crate::helpers::{assert_ledger_consistent, bearer, catalog, new_account, wait_all_terminal, Gateway};
use crate::receiver::{Receiver, Reply};
use crate::services::Cluster;
use crate::traffic::Traffic;
use crate::upstream::{fate, ChaosKie, Fate, HMAC_KEY};

const ACCOUNTS: usize = 10;
/// Create requests per account; each account can pay for `AFFORDABLE` at a time.
const ATTEMPTS_PER_ACCOUNT: u64 = 300;
const AFFORDABLE: i64 = 200;
/// The Seedream 4.5 price in the catalog.
const PRICE: i64 = 12;
const CLIENTS: usize = 24;
const DEADLINE_SECS: &str = "15";

pub(crate) fn free_port() -> u16 {
    let probe = TcpListener::bind("127.0.0.1:0").expect("find a free port");
    probe.local_addr().expect("probe address").port()
}

/// The settings both gateways share: the KIE-only catalog pointed at the chaos upstream (signed
/// callbacks, polling as the fallback every second), a short deadline, quick webhook retries to the
/// loopback receiver, a breaker that rests briefly, and no rate limit.
pub(crate) fn gateway_env(upstream: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AIO__CATALOG__MODELS_PATH", catalog("kie_only.toml").display().to_string()),
        ("KIE_API_KEY", KEY.into()),
        ("KIE_WEBHOOK_HMAC_KEY", HMAC_KEY.into()),
        ("AIO__PROVIDERS__KIE__BASE_URL", upstream.into()),
        ("AIO__PROVIDERS__KIE__TIMEOUT_SECS", "3".into()),
        ("AIO__PROVIDERS__KIE__CALLBACK_POLL_SECS", "1".into()),
        ("AIO__TASKS__DEADLINE_SECS", DEADLINE_SECS.into()),
        ("AIO__TASKS__BREAKER_COOLDOWN_SECS", "1".into()),
        // Outputs keep the upstream's URL, which names its job: that ties each success to the upstream
        // job that produced it (rehosting has its own tests).
        ("AIO__RESULTS__REHOST", "false".into()),
        ("AIO__DATABASE__MAX_CONNECTIONS", "8".into()),
        ("AIO__DATABASE__ACQUIRE_TIMEOUT_SECS", "2".into()),
        ("AIO__WEBHOOKS__ALLOW_HTTP", "true".into()),
        ("AIO__WEBHOOKS__ALLOWED_PRIVATE_CIDRS", "127.0.0.0/8".into()),
        ("AIO__WEBHOOKS__RETRY_SCHEDULE", "0s,500ms,1s,2s,4s,8s,16s".into()),
        ("AIO__WEBHOOKS__TICK_MS", "100".into()),
        ("AIO__RATE_LIMIT__REQUESTS_PER_MINUTE", "100000000".into()),
        ("AIO__RATE_LIMIT__BURST", "1000000".into()),
    ]
}

/// A gateway process (role `all`) on `port`, logging to `{dir}/{name}.log`.
pub(crate) async fn start_gateway(
    database_url: &str,
    dir: &Path,
    name: &str,
    port: u16,
    env: &[(&'static str, String)],
) -> Gateway {
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let listen = format!("127.0.0.1:{port}");
    env.push(("AIO__SERVER__LISTEN", &listen));
    let mut gateway =
        Gateway::start_with(database_url, &dir.join("files"), &dir.join(format!("{name}.log")), "all", &env);
    gateway.address = format!("http://{listen}");
    gateway.ready(&client()).await;
    gateway
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("HTTP client")
}

/// What the clients saw, per account.
#[derive(Default)]
struct Outcomes {
    created: Mutex<Vec<(usize, String)>>,
    refused_402: Vec<AtomicU64>,
}

/// One create attempt, retried (same `Idempotency-Key`, then the other gateway) while the answer is
/// a 503 or no answer at all, as a well-behaved client would.
#[allow(clippy::too_many_arguments)]
async fn create(
    client: &reqwest::Client,
    traffic: &Traffic,
    outcomes: &Outcomes,
    addresses: &[String; 2],
    keys: &[String],
    receiver: &str,
    attempt: u64,
) {
    let account = (attempt % ACCOUNTS as u64) as usize;
    let body = json!({
        "model": "seedream/4.5-text-to-image",
        "prompt": format!("reliability task {attempt}"),
        "callback_url": receiver,
    });
    let give_up = Instant::now() + Duration::from_secs(90);
    let mut gateway = (attempt % 2) as usize;
    loop {
        let sent = Instant::now();
        let answer = client
            .post(format!("{}/api/v1/images/generations", addresses[gateway]))
            .header(AUTHORIZATION, bearer(&keys[account]))
            .header("Idempotency-Key", format!("reliability-{attempt}"))
            .json(&body)
            .send()
            .await;
        let (status, answer) = match answer {
            Ok(response) => (Some(response.status().as_u16()), response.json::<Value>().await.unwrap_or_default()),
            Err(_) => (None, Value::Null),
        };
        traffic.record("create", sent, status, answer["error"]["code"].as_str().map(str::to_owned));
        match status {
            Some(200) => {
                let task_id = answer["task_id"].as_str().expect("task_id").to_owned();
                let sent = Instant::now();
                let polled = client
                    .get(format!("{}/api/v1/tasks/{task_id}", addresses[gateway]))
                    .header(AUTHORIZATION, bearer(&keys[account]))
                    .send()
                    .await;
                let status = polled.as_ref().ok().map(|r| r.status().as_u16());
                let code = match polled {
                    Ok(r) => r.json::<Value>().await.ok().and_then(|b| b["error"]["code"].as_str().map(str::to_owned)),
                    Err(_) => None,
                };
                traffic.record("get task", sent, status, code);
                outcomes.created.lock().expect("created").push((account, task_id));
                return;
            }
            Some(402) => {
                outcomes.refused_402[account].fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(503) | None if Instant::now() < give_up => {
                gateway = 1 - gateway;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Anything else is judged with the rest of the traffic at the end.
            _ => return,
        }
    }
}

/// Waits until both gateways read from the database again.
async fn wait_ready(client: &reqwest::Client, addresses: &[String; 2]) {
    let give_up = Instant::now() + Duration::from_secs(60);
    for address in addresses {
        loop {
            let ready = client.get(format!("{address}/readyz")).send().await.map(|r| r.status().is_success());
            if matches!(ready, Ok(true)) {
                break;
            }
            assert!(Instant::now() < give_up, "{address} never became ready after PostgreSQL restarted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_survives_crashes_restarts_and_a_hostile_upstream() {
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await.expect("start PostgreSQL"));
    let database_url = cluster.url("aio_reliability");
    let settings = DatabaseSettings {
        url: database_url.clone(),
        max_connections: std::num::NonZeroU32::new(4).unwrap(),
        acquire_timeout: std::time::Duration::from_secs(10),
    };
    let db = store::connect(&settings).await.expect("connect to the private cluster");
    store::migrate(&db).await.expect("migrate");
    let aio_gateway::store::Db::Pg(pool) = db else { panic!("a postgres:// URL opens PostgreSQL") };
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        accounts.push(new_account(&pool, AFFORDABLE * PRICE).await);
    }
    let keys: Vec<String> = accounts.iter().map(|(_, key)| key.clone()).collect();

    let traffic = Arc::new(Traffic::default());
    let upstream = ChaosKie::start(Arc::clone(&traffic)).await;
    let receiver = Receiver::start("127.0.0.1").await;
    // The first deliveries fail: they must be retried.
    receiver.script(vec![Reply::Status(500); 25]);
    // The gateways' logs are kept for a post-mortem with AIO_TEST_KEEP_LOGS=1.
    let dir = tempfile::Builder::new()
        .prefix("aio-reliability-")
        .disable_cleanup(std::env::var_os("AIO_TEST_KEEP_LOGS").is_some())
        .tempdir()
        .expect("temporary directory");
    let env = gateway_env(upstream.base_url());
    let ports = [free_port(), free_port()];
    let addresses = ports.map(|port| format!("http://127.0.0.1:{port}"));
    let first = start_gateway(&database_url, dir.path(), "a-1", ports[0], &env).await;
    let second = start_gateway(&database_url, dir.path(), "b", ports[1], &env).await;

    // The clients: every create attempt once, spread over both gateways.
    let total = ACCOUNTS as u64 * ATTEMPTS_PER_ACCOUNT;
    let next = Arc::new(AtomicU64::new(0));
    let outcomes = Arc::new(Outcomes {
        created: Mutex::default(),
        refused_402: (0..ACCOUNTS).map(|_| AtomicU64::new(0)).collect(),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, traffic, outcomes, addresses, keys) =
                (Arc::clone(&next), Arc::clone(&traffic), Arc::clone(&outcomes), addresses.clone(), keys.clone());
            let receiver = receiver.url.clone();
            tokio::spawn(async move {
                let client = client();
                loop {
                    let attempt = next.fetch_add(1, Ordering::Relaxed);
                    if attempt >= total {
                        return;
                    }
                    create(&client, &traffic, &outcomes, &addresses, &keys, &receiver, attempt).await;
                }
            })
        })
        .collect();

    // The faults, at fixed points of progress: SIGKILL one gateway and start it again, then restart
    // PostgreSQL under load (down for 5 s).
    let progress = |share: u64| {
        let next = Arc::clone(&next);
        async move {
            while next.load(Ordering::Relaxed) < total * share / 10 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    progress(3).await;
    let mut first = first;
    first.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = start_gateway(&database_url, dir.path(), "a-2", ports[0], &env).await;

    progress(6).await;
    traffic.outage_began();
    let stopping = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || stopping.stop()).await.expect("stop PostgreSQL");
    // Longer than the gateways' pool acquire timeout (2 s): requests must get their 503.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let starting = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || starting.pg_ctl_start()).await.expect("start PostgreSQL");
    wait_ready(&client(), &addresses).await;
    traffic.outage_ended();

    for running in clients {
        running.await.expect("a client");
    }
    wait_all_terminal(&pool).await;
    wait_webhooks(&pool).await;

    check_books(&pool, &accounts, &outcomes).await;
    check_results(&pool, &upstream).await;
    check_traffic(&traffic);
    check_webhooks(&pool, &receiver).await;
    drop((first, second));
}

/// Waits (bounded) until no webhook delivery is still scheduled; the check afterwards accepts
/// scheduled ones, so this only makes the delivered ones count.
pub(crate) async fn wait_webhooks(pool: &PgPool) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while Instant::now() < give_up {
        let (pending,): (i64,) = sqlx::query_as("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
            .fetch_one(pool)
            .await
            .expect("count deliveries");
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every account: balance = sum(ledger) ≥ 0, nothing held, one hold and one capture or release per
/// task (the harness's invariants), and spent = succeeded tasks × price; and each account had more
/// creates than it could pay for.
async fn check_books(pool: &PgPool, accounts: &[(i64, String)], outcomes: &Outcomes) {
    assert_ledger_consistent(pool).await;
    let (tasks,): (i64,) = sqlx::query_as("SELECT count(*) FROM tasks").fetch_one(pool).await.expect("count tasks");
    assert!(tasks >= 2000, "only {tasks} tasks were created");
    for (index, (account_id, _)) in accounts.iter().enumerate() {
        let (balance, held, granted, succeeded, captured): (i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT a.balance, a.held,
                    (SELECT COALESCE(SUM(amount), 0)::bigint FROM ledger WHERE account_id = a.id AND kind = 'grant'),
                    (SELECT count(*) FROM tasks WHERE account_id = a.id AND status = 'succeeded'),
                    (SELECT COALESCE(SUM(t.price), 0)::bigint FROM ledger l JOIN tasks t ON t.id = l.task_id
                     WHERE l.account_id = a.id AND l.kind = 'capture')
             FROM accounts a WHERE a.id = $1",
        )
        .bind(account_id)
        .fetch_one(pool)
        .await
        .expect("read the account");
        assert_eq!(held, 0, "account {account_id}: {held} still held");
        assert!(balance >= 0, "account {account_id}: available {balance}");
        assert_eq!(captured, succeeded * PRICE, "account {account_id}: captured {captured} for {succeeded} successes");
        assert_eq!(
            granted - balance,
            captured,
            "account {account_id}: spent {} but captured {captured}",
            granted - balance
        );
        let refused = outcomes.refused_402[index].load(Ordering::Relaxed);
        assert!(refused > 0, "account {account_id} was never refused: the creates did not exceed its credits");
    }
    let created = outcomes.created.lock().expect("created").len() as i64;
    assert!(created <= tasks, "clients saw {created} tasks, the database has {tasks}");
}

/// How a task ended, as stored.
#[derive(sqlx::FromRow)]
struct Ended {
    id: String,
    status: String,
    input: Value,
    upstream_id: Option<String>,
    output: Option<Value>,
    error: Option<Value>,
}

/// A task succeeded only if the upstream reported its job as succeeded, and each task ended as its
/// fate says: failures and hung jobs fail (hung ones by the deadline), forged successes change nothing.
async fn check_results(pool: &PgPool, upstream: &ChaosKie) {
    let rows: Vec<Ended> = sqlx::query_as("SELECT id, status, input, upstream_id, output, error FROM tasks")
        .fetch_all(pool)
        .await
        .expect("read tasks");
    let succeeded_upstream = upstream.succeeded();
    let jobs = upstream.job_numbers();
    let mut by_fate: HashMap<(Fate, String), usize> = HashMap::new();
    for Ended { id, status, input, upstream_id, output, error } in &rows {
        let n: u64 =
            input["prompt"].as_str().and_then(|p| p.rsplit(' ').next()).and_then(|n| n.parse().ok()).expect("prompt");
        *by_fate.entry((fate(n), status.clone())).or_default() += 1;
        match status.as_str() {
            "succeeded" => {
                let upstream_id = upstream_id.as_deref().expect("a succeeded task has an upstream id");
                assert!(
                    succeeded_upstream.contains(upstream_id),
                    "task {id} succeeded but upstream never completed {upstream_id}"
                );
                assert_eq!(jobs.get(upstream_id), Some(&n), "task {id} took job {upstream_id} of another task");
                let output = output.as_ref().map(Value::to_string).unwrap_or_default();
                assert!(output.contains(upstream_id) && !output.contains("evil.example"), "task {id}: output {output}");
            }
            "failed" => {
                let code = error.as_ref().and_then(|e| e["code"].as_str()).unwrap_or_default();
                if fate(n) == Fate::Stuck {
                    assert_eq!(code, "timeout", "task {id} (hung upstream) failed with {error:?}");
                }
            }
            other => panic!("task {id} is {other}"),
        }
        assert!(fate(n) == Fate::Succeed || status == "failed", "task {id} (fate {:?}) is {status}", fate(n));
    }
    // The faults really happened.
    for fate in [Fate::Fail, Fate::Stuck] {
        assert!(by_fate.get(&(fate, "failed".into())).copied().unwrap_or(0) > 0, "no {fate:?} task: {by_fate:?}");
    }
    let succeeded = by_fate.get(&(Fate::Succeed, "succeeded".into())).copied().unwrap_or(0);
    assert!(succeeded > rows.len() / 2, "too few successes to mean anything: {by_fate:?}");
}

/// The only 5xx answers were 503 `unavailable` while PostgreSQL was down; forged callbacks were
/// never accepted; the outage was seen.
fn check_traffic(traffic: &Traffic) {
    let exchanges = traffic.exchanges();
    let mut seen: HashMap<(&str, Option<u16>), usize> = HashMap::new();
    for exchange in &exchanges {
        *seen.entry((exchange.what, exchange.status)).or_default() += 1;
    }
    for exchange in &exchanges {
        if exchange.status.is_some_and(|s| s >= 500) {
            assert!(
                exchange.status == Some(503)
                    && exchange.code.as_deref() == Some("unavailable")
                    && traffic.during_outage(exchange),
                "a 5xx outside the database outage or not `unavailable`: {exchange:?}; all answers: {seen:?}"
            );
        }
        if exchange.what == "forged callback" {
            assert!(
                matches!(exchange.status, None | Some(401 | 404 | 503)),
                "a forged callback was answered {:?}; all answers: {seen:?}",
                exchange.status
            );
        }
        if exchange.what == "create" {
            assert!(matches!(exchange.status, None | Some(200 | 402 | 503)), "create answered {exchange:?}; {seen:?}");
        }
        if exchange.what == "get task" {
            assert!(matches!(exchange.status, None | Some(200 | 503)), "get task answered {exchange:?}; {seen:?}");
        }
    }
    let outage_503 = exchanges.iter().filter(|e| e.status == Some(503) && traffic.during_outage(e)).count();
    assert!(outage_503 > 0, "no request saw the outage: {seen:?}");
    for kind in [("callback", Some(200)), ("forged callback", Some(401))] {
        assert!(seen.contains_key(&kind), "no {kind:?} answer: {seen:?}");
    }
}

/// Every terminal task's webhook was delivered or is still scheduled (none dead), exactly one per
/// task, and the receiver got each delivered one.
async fn check_webhooks(pool: &PgPool, receiver: &Receiver) {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT t.id,
                count(d.id) FILTER (WHERE d.status = 'delivered'),
                count(d.id) FILTER (WHERE d.status = 'pending'),
                count(d.id) FILTER (WHERE d.status = 'dead')
         FROM tasks t LEFT JOIN webhook_deliveries d ON d.task_id = t.id AND d.trigger = 'settled'
         WHERE t.status IN ('succeeded', 'failed') AND t.callback_url IS NOT NULL
         GROUP BY t.id",
    )
    .fetch_all(pool)
    .await
    .expect("read deliveries");
    assert!(!rows.is_empty());
    for (task_id, delivered, pending, dead) in &rows {
        assert_eq!(
            (delivered + pending, *dead),
            (1, 0),
            "task {task_id}: {delivered} delivered, {pending} scheduled, {dead} dead"
        );
    }
    let delivered: Vec<(String,)> =
        sqlx::query_as("SELECT webhook_id FROM webhook_deliveries WHERE status = 'delivered'")
            .fetch_all(pool)
            .await
            .expect("read deliveries");
    let received: HashSet<String> = receiver.received().iter().map(|r| r.webhook_id().to_owned()).collect();
    for (webhook_id,) in delivered {
        assert!(received.contains(&webhook_id), "delivery {webhook_id} is marked delivered but never arrived");
    }
}
