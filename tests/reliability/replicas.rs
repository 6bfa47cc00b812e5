//! Several replicas on shared storage (issue 18): two gateway processes behind HAProxy (round robin,
//! started here on free ports) on one PostgreSQL, Redis for the rate limits and an S3 server (moto)
//! for result files. 1,000 tasks are created through the proxy against the chaos KIE upstream, whose
//! callbacks go to the proxy too, so they land on either replica; one replica is SIGKILLed mid-run and
//! restarted. Then: every result is fetched through the proxy (and its link from each replica
//! directly), every task's webhook reached the receiver under one `webhook-id` only (the receiver
//! dedupes by it), and the books balance.

use std::collections::{HashMap, HashSet};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::time::Instant;

use crate::fakes::png_bytes;
use crate::faults::{client, free_port, gateway_env, start_gateway, wait_webhooks};
use crate::helpers::{assert_ledger_consistent, bearer, new_account, wait_all_terminal, TestDatabase};
use crate::receiver::Receiver;
use crate::services;
use crate::traffic::Traffic;
use crate::upstream::{fate, ChaosKie, Fate};

const TASKS: u64 = 1_000;
const ACCOUNTS: usize = 4;
const CLIENTS: usize = 16;
/// The Seedream 4.5 price in the catalog.
const PRICE: i64 = 12;

/// HAProxy in front of the replicas: round robin, a replica that stops answering `/readyz` is taken
/// out within a second and back in once it answers; a refused connection is retried on the other.
struct HaProxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    fn start(backends: &[u16]) -> HaProxy {
        let binary = which("haproxy").unwrap_or_else(|| {
            panic!("HAProxy is needed by the multi-replica test and was not found: run ./.ci/files (apt-get install haproxy)")
        });
        let dir = tempfile::tempdir().expect("haproxy dir");
        let port = free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, backend)| format!("    server replica{i} 127.0.0.1:{backend} check\n"))
            .collect();
        let config = format!(
            "global\n    maxconn 2000\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n    \
             retries 3\n    option redispatch 1\n\
             frontend gateway\n    bind 127.0.0.1:{port}\n    default_backend replicas\n\
             backend replicas\n    balance roundrobin\n    option httpchk GET /readyz\n    \
             default-server inter 300ms fall 1 rise 1\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new(&binary)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let mut proxy = HaProxy { child, port, _dir: dir };
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return proxy;
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("haproxy exited with {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("haproxy never listened on {port}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

/// One create through the proxy, retried with the same `Idempotency-Key` while there is no answer or
/// the proxy answers 502/503 (the replica behind it was killed); returns the task id.
async fn create(client: &reqwest::Client, proxy: &str, key: &str, receiver: &str, n: u64, traffic: &Traffic) -> String {
    let body = json!({
        "model": "seedream/4.5-text-to-image",
        "prompt": format!("reliability task {n}"),
        "callback_url": receiver,
    });
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = Instant::now();
        let answer = client
            .post(format!("{proxy}/api/v1/images/generations"))
            .header(AUTHORIZATION, bearer(key))
            .header("Idempotency-Key", format!("replicas-{n}"))
            .json(&body)
            .send()
            .await;
        let status = answer.as_ref().ok().map(|r| r.status().as_u16());
        let task: Value = match answer {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        traffic.record("create", sent, status, task["error"]["code"].as_str().map(str::to_owned));
        if status == Some(200) {
            return task["task_id"].as_str().expect("task_id").to_owned();
        }
        assert!(
            matches!(status, None | Some(502 | 503)) && Instant::now() < give_up,
            "create {n} answered {status:?}: {task}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_a_proxy_share_tasks_files_and_webhooks() {
    let database = TestDatabase::new(4).await;
    let redis = services::redis_url();
    let s3 = services::s3_url();
    let bucket = services::new_bucket().await;
    let pool = database.pool.clone();
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        accounts.push(new_account(&pool, TASKS as i64 * PRICE).await);
    }

    let traffic = Arc::new(Traffic::default());
    let upstream = ChaosKie::start(Arc::clone(&traffic)).await;
    let receiver = Receiver::start("127.0.0.1").await;
    let dir = tempfile::Builder::new()
        .prefix("aio-replicas-")
        .disable_cleanup(std::env::var_os("AIO_TEST_KEEP_LOGS").is_some())
        .tempdir()
        .expect("temporary directory");
    let ports = [free_port(), free_port()];
    let proxy = HaProxy::start(&ports);
    let mut env = gateway_env(upstream.base_url());
    env.retain(|(name, _)| *name != "AIO__RESULTS__REHOST");
    env.extend([
        // Links and provider callback URLs name the proxy, whichever replica makes them.
        ("AIO__SERVER__PUBLIC_BASE_URL", proxy.url()),
        ("AIO__RESULTS__REHOST", "true".into()),
        ("AIO__RATE_LIMIT__REDIS_URL", redis),
        ("AIO__FILES__STORE", "s3".into()),
        ("AIO__FILES__S3__ENDPOINT", s3.clone()),
        ("AIO__FILES__S3__BUCKET", bucket.clone()),
        ("AIO__FILES__S3__PREFIX", "results/".into()),
        ("AIO__FILES__S3__PATH_STYLE", "true".into()),
        ("AWS_ACCESS_KEY_ID", "aio-test-access-key".into()),
        ("AWS_SECRET_ACCESS_KEY", "aio-test-secret-key".into()),
    ]);
    let first = start_gateway(&database.url, dir.path(), "a-1", ports[0], &env).await;
    let second = start_gateway(&database.url, dir.path(), "b", ports[1], &env).await;

    let next = Arc::new(AtomicU64::new(0));
    let created: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, created, traffic) = (Arc::clone(&next), Arc::clone(&created), Arc::clone(&traffic));
            let (proxy, receiver, keys) =
                (proxy.url(), receiver.url.clone(), accounts.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>());
            tokio::spawn(async move {
                let client = client();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= TASKS {
                        return;
                    }
                    let account = n as usize % ACCOUNTS;
                    let task_id = create(&client, &proxy, &keys[account], &receiver, n, &traffic).await;
                    created.lock().expect("created").push((account, task_id));
                }
            })
        })
        .collect();

    // SIGKILL one replica at 40 % of the creates and start it again on its port.
    while next.load(Ordering::Relaxed) < TASKS * 4 / 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut first = first;
    first.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first = start_gateway(&database.url, dir.path(), "a-2", ports[0], &env).await;

    for running in clients {
        running.await.expect("a client");
    }
    wait_all_terminal(&pool).await;
    wait_webhooks(&pool).await;

    let created = created.lock().expect("created").clone();
    assert_eq!(created.len() as u64, TASKS);
    check_books(&pool, &accounts).await;
    check_results(&pool, &proxy.url(), &accounts, &created, &upstream, &ports).await;
    check_webhooks(&pool, &receiver).await;
    // Callbacks reached both replicas (each logs the ones it accepted).
    for log in ["a-1", "b"] {
        let text = std::fs::read_to_string(dir.path().join(format!("{log}.log"))).unwrap_or_default();
        assert!(text.contains("callback received"), "replica {log} took no provider callback");
    }
    drop((first, second, proxy));
}

/// The harness's ledger invariants, one task per create, and spent = successes × price.
async fn check_books(pool: &PgPool, accounts: &[(i64, String)]) {
    assert_ledger_consistent(pool).await;
    let (tasks,): (i64,) = sqlx::query_as("SELECT count(*) FROM tasks").fetch_one(pool).await.expect("count");
    assert_eq!(tasks as u64, TASKS, "one task per Idempotency-Key, retries and a killed replica included");
    for (account_id, _) in accounts {
        let (balance, held, granted, succeeded): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT a.balance, a.held,
                    (SELECT COALESCE(SUM(amount), 0)::bigint FROM ledger WHERE account_id = a.id AND kind = 'grant'),
                    (SELECT count(*) FROM tasks WHERE account_id = a.id AND status = 'succeeded')
             FROM accounts a WHERE a.id = $1",
        )
        .bind(account_id)
        .fetch_one(pool)
        .await
        .expect("read the account");
        assert_eq!(held, 0, "account {account_id}: {held} still held");
        assert_eq!(granted - balance, succeeded * PRICE, "account {account_id}: charged for exactly its successes");
    }
}

/// Every task ended as the upstream decided, and every success's image comes back through the proxy,
/// byte-identical to the upstream's, from the bucket; one link also works on each replica directly.
async fn check_results(
    pool: &PgPool,
    proxy: &str,
    accounts: &[(i64, String)],
    created: &[(usize, String)],
    upstream: &ChaosKie,
    ports: &[u16; 2],
) {
    let client = client();
    let expected = png_bytes(9);
    let succeeded_upstream = upstream.succeeded();
    let statuses: HashMap<String, (String, Option<String>, Value)> =
        sqlx::query_as::<_, (String, String, Option<String>, Value)>(
            "SELECT id, status, upstream_id, input FROM tasks",
        )
        .fetch_all(pool)
        .await
        .expect("tasks")
        .into_iter()
        .map(|(id, status, upstream_id, input)| (id, (status, upstream_id, input)))
        .collect();
    let mut fetched = 0;
    let mut a_link = None;
    for (account, task_id) in created {
        let (status, upstream_id, input) = &statuses[task_id];
        let n: u64 =
            input["prompt"].as_str().and_then(|p| p.rsplit(' ').next()).and_then(|n| n.parse().ok()).expect("n");
        if status != "succeeded" {
            assert_eq!(status, "failed", "task {task_id}");
            continue;
        }
        assert_eq!(fate(n), Fate::Succeed, "task {task_id} succeeded against its fate");
        assert!(succeeded_upstream.contains(upstream_id.as_deref().unwrap_or_default()), "task {task_id}");
        let task: Value = client
            .get(format!("{proxy}/api/v1/tasks/{task_id}"))
            .header(AUTHORIZATION, bearer(&accounts[*account].1))
            .send()
            .await
            .expect("GET the task")
            .json()
            .await
            .expect("task JSON");
        let link = task["output"]["images"][0]["url"].as_str().expect("a link").to_owned();
        assert!(link.starts_with(&format!("{proxy}/files/")), "{link}");
        let image = client.get(&link).send().await.expect("GET the image");
        assert_eq!(image.status(), 200, "{link}");
        assert_eq!(image.bytes().await.expect("bytes").as_ref(), expected.as_slice(), "{link}");
        fetched += 1;
        a_link.get_or_insert(link);
    }
    assert!(fetched as u64 > TASKS / 2, "only {fetched} successes");
    let link = a_link.expect("a link");
    for port in ports {
        let direct = link.replacen(proxy, &format!("http://127.0.0.1:{port}"), 1);
        assert_eq!(client.get(&direct).send().await.expect("GET").status(), 200, "{direct}");
    }
}

/// Each finished task's webhook arrived under exactly one `webhook-id` (after deduplication by it,
/// no task was delivered twice), and every delivery marked delivered arrived.
async fn check_webhooks(pool: &PgPool, receiver: &Receiver) {
    let received = receiver.received();
    let mut ids_by_task: HashMap<String, HashSet<String>> = HashMap::new();
    for delivery in &received {
        let body: Value = serde_json::from_slice(&delivery.body).expect("a JSON webhook");
        let task_id = body["task_id"].as_str().expect("task_id").to_owned();
        ids_by_task.entry(task_id).or_default().insert(delivery.webhook_id().to_owned());
    }
    for (task_id, ids) in &ids_by_task {
        assert_eq!(ids.len(), 1, "task {task_id} was delivered as several events: {ids:?}");
    }
    let delivered: Vec<(String, String)> =
        sqlx::query_as("SELECT task_id, webhook_id FROM webhook_deliveries WHERE status = 'delivered'")
            .fetch_all(pool)
            .await
            .expect("deliveries");
    assert_eq!(delivered.len() as u64, TASKS, "every task's webhook was delivered");
    for (task_id, webhook_id) in delivered {
        assert!(
            ids_by_task.get(&task_id).is_some_and(|ids| ids.contains(&webhook_id)),
            "{task_id}: {webhook_id} never arrived"
        );
    }
    let duplicates = received.len() - ids_by_task.len();
    eprintln!(
        "webhooks: {} received, {} distinct, {duplicates} resent (at least once, deduplicated)",
        received.len(),
        ids_by_task.len()
    );
}
